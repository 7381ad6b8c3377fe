// Package preflight is the first phase: it trusts new host keys the user
// accepted, ships the castellan agent to each node, gathers the node's facts
// through it (OS, kernel, CPU and memory, disks and their signatures, TPM,
// WireGuard, time sync, free space, ports) and fails early, per node, with
// what is missing and why it matters. The facts are published for later
// phases (facts.Key) and recorded in the run record.
package preflight

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/facts"
)

// Name of the phase.
const Name = "preflight"

// Actions of the phase's changes.
const (
	ActionTrustHostKey = "trust-host-key"
	ActionInstallAgent = "install-agent"
)

// Steps the phase reports.
const (
	StepFacts       = "facts"
	StepAgent       = "agent"
	StepUploadAgent = "upload agent"
)

// Facts is the node operation that gathers a node's facts. It only reads.
var Facts = agent.Op[FactsRequest, facts.Node]{
	Name:     "preflight.facts",
	ReadOnly: true,
	Do: func(_ context.Context, in FactsRequest, _ *slog.Logger) (facts.Node, error) {
		return Gather(in), nil
	},
}

// Phase is the preflight phase.
type Phase struct{}

// Name implements engine.Phase.
func (Phase) Name() string { return Name }

// Ops implements engine.Phase.
func (Phase) Ops() []agent.Handler { return []agent.Handler{Facts} }

// Observe implements engine.Observer: the facts request of node.
func (Phase) Observe(v *engine.View, node string) ([]agent.Request, error) {
	req, err := factsRequest(v, node)
	if err != nil {
		return nil, err
	}
	r, err := Facts.Request(req)
	return []agent.Request{r}, err
}

func factsRequest(v *engine.View, node string) (FactsRequest, error) {
	n, ok := v.Node(node)
	if !ok {
		return FactsRequest{}, fmt.Errorf("node %s is not in the run", node)
	}
	return requirementsFor(v.Profile(), n).request(), nil
}

// Plan lists the host keys to trust and the nodes that lack this castellan's
// agent, and checks the facts of the nodes that have it. A node that fails
// its checks fails the plan.
func (Phase) Plan(ctx context.Context, v *engine.View) (engine.Plan, error) {
	changes := make([][]engine.Change, len(v.Nodes()))
	index := map[string]int{}
	for i, n := range v.NodeNames() {
		index[n] = i
	}
	err := v.ForEachNode(ctx, v.NodeNames(), StepFacts, func(ctx context.Context, node string) error {
		var cs []engine.Change
		if k, ok := v.PendingHostKey(node); ok {
			cs = append(cs, trustChange(node, k))
		}
		st, err := v.Agent(ctx, node)
		if err != nil {
			return err
		}
		if st.LoginNoise != "" {
			v.Warn(node, "%s", st.LoginNoise)
		}
		if !st.Installed {
			cs = append(cs, engine.NewChange(node, ActionInstallAgent, st.Path,
				fmt.Sprintf("install the castellan agent (%s) at %s, then gather and check facts", bytesHuman(uint64(st.Size)), st.Path), nil))
		} else if err := gatherAndCheck(ctx, v, v, node); err != nil {
			return err
		}
		changes[index[node]] = cs
		return nil
	})
	var plan engine.Plan
	// The bastion's key, once a node was reached through it.
	if k, ok := v.PendingHostKey(""); ok {
		plan.Changes = append(plan.Changes, trustChange("", k))
	}
	for _, cs := range changes {
		plan.Changes = append(plan.Changes, cs...)
	}
	return plan, err
}

func trustChange(node string, k engine.HostKey) engine.Change {
	return engine.NewChange(node, ActionTrustHostKey, k.Fingerprint,
		fmt.Sprintf("trust new host key %s %s of %s (%s), and record it", k.KeyType, k.Fingerprint, k.Host, k.Addr), k)
}

// Apply trusts the accepted host keys, installs the agent where it is
// missing, then gathers and checks facts.
func (Phase) Apply(ctx context.Context, r *engine.Run, p engine.Plan) error {
	for _, c := range p.ForNode("") {
		if c.Action == ActionTrustHostKey {
			if err := r.TrustHostKey(ctx, ""); err != nil {
				return fmt.Errorf("trusting the bastion's host key: %w", err)
			}
		}
	}
	return r.ForEachNode(ctx, p.Nodes(), StepAgent, func(ctx context.Context, node string) error {
		installed := false
		for _, c := range p.ForNode(node) {
			if err := r.Checkpoint(); err != nil {
				return err
			}
			switch c.Action {
			case ActionTrustHostKey:
				if err := r.TrustHostKey(ctx, node); err != nil {
					return fmt.Errorf("trusting the host key of %s: %w", node, err)
				}
			case ActionInstallAgent:
				err := r.InstallAgent(ctx, node, func(done, total int64) {
					r.Progress(node, StepUploadAgent, done, total)
				})
				if err != nil {
					return err
				}
				installed = true
			default:
				return fmt.Errorf("preflight: unknown action %q", c.Action)
			}
		}
		if !installed {
			return nil
		}
		if err := r.Checkpoint(); err != nil {
			return err
		}
		return gatherAndCheck(ctx, r.View, r, node)
	})
}

// gatherAndCheck asks node for its facts (through c: a View answers from
// the run's observation), publishes them and checks them against the
// profile.
func gatherAndCheck(ctx context.Context, v *engine.View, c engine.Caller, node string) error {
	n, ok := v.Node(node)
	if !ok {
		return fmt.Errorf("node %s is not in the profile", node)
	}
	req := requirementsFor(v.Profile(), n)
	f, timing, err := engine.CallTimed(ctx, c, node, Facts, req.request())
	if err != nil {
		return fmt.Errorf("gathering facts: %w", err)
	}
	// The clock offset needs T1 and T4, the installer's clock when the exec
	// that answered was sent and when its answer came back (clock.go). The
	// request does not carry T1: the observation is keyed by the request, and
	// a time in it would make the plan's request differ from the one observed;
	// the engine times the exec instead.
	measureClock(&f.Clock, timing.Sent, timing.Elapsed)
	if err := engine.Publish(v, facts.Key, node, f); err != nil {
		return err
	}
	v.Info(node, "%s, kernel %s, %s, %d CPU, %s RAM, TPM %s, %d disk(s)", osName(f.OS), f.Kernel, f.Arch, f.CPUs, bytesHuman(f.MemoryB), tpmSummary(f.TPM), len(f.Disks))
	for _, p := range f.Problems {
		v.Warn(node, "could not read a fact: %s", p)
	}
	var errs []string
	for _, p := range check(req, f) {
		if p.Severity == SeverityWarning {
			v.Warn(node, "%s", p.Msg)
			continue
		}
		errs = append(errs, p.Msg)
	}
	if len(errs) > 0 {
		return errors.New("preflight: " + strings.Join(errs, "; "))
	}
	return nil
}

func tpmSummary(t facts.TPM) string {
	if !t.Present {
		return "absent"
	}
	return t.Version
}

// request is the facts request for what r requires.
func (r requirements) request() FactsRequest {
	return FactsRequest{Ports: r.ports, SpacePaths: spacePaths, Devices: r.devices}
}
