// Package preflight is the first phase: it ships the castellan agent to each
// node, gathers the node's facts through it (OS, kernel, CPU and memory,
// disks and their signatures, TPM, WireGuard, time sync, free space, ports)
// and fails early, per node, with what is missing and why it matters. The
// facts travel to later phases through the run and into the run record.
package preflight

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/facts"
)

// Name of the phase.
const Name = "preflight"

// FactsOp is the agent operation that gathers facts.
const FactsOp = "preflight.facts"

// Phase is the preflight phase.
type Phase struct{}

// Name implements engine.Phase.
func (Phase) Name() string { return Name }

// RegisterAgentOps registers preflight's node side.
func RegisterAgentOps(r *agent.Registry) {
	r.Register(FactsOp, func(_ context.Context, in json.RawMessage, _ *slog.Logger) (any, error) {
		req, err := agent.Decode[FactsRequest](in)
		if err != nil {
			return nil, err
		}
		return Gather(req), nil
	})
}

// Plan installs nothing: it lists the nodes that lack this castellan's agent,
// and gathers and checks the facts of the nodes that have it. A node that
// fails its checks fails the plan.
func (Phase) Plan(ctx context.Context, r *engine.Run) (engine.Plan, error) {
	var mu sync.Mutex
	missing := map[string]engine.AgentState{}
	err := r.ForEachNode(ctx, r.NodeNames(), "facts", func(ctx context.Context, node string) error {
		st, err := r.Access.Agent(ctx, node)
		if err != nil {
			return err
		}
		if !st.Installed {
			mu.Lock()
			missing[node] = st
			mu.Unlock()
			return nil
		}
		return gatherAndCheck(ctx, r, node)
	})
	var plan engine.Plan
	for _, node := range r.NodeNames() {
		if st, ok := missing[node]; ok {
			plan.Changes = append(plan.Changes, engine.Change{
				Node:    node,
				Summary: fmt.Sprintf("install the castellan agent (%s) at %s, then gather and check facts", bytesHuman(uint64(st.Size)), st.Path),
			})
		}
	}
	return plan, err
}

// Apply installs the agent where it is missing, then gathers and checks facts.
func (Phase) Apply(ctx context.Context, r *engine.Run, p engine.Plan) error {
	return r.ForEachNode(ctx, p.Nodes(), "agent", func(ctx context.Context, node string) error {
		err := r.Access.InstallAgent(ctx, node, func(done, total int64) {
			r.Progress(node, "upload agent", done, total)
		})
		if err != nil {
			return err
		}
		if err := r.Checkpoint(); err != nil {
			return err
		}
		return gatherAndCheck(ctx, r, node)
	})
}

func gatherAndCheck(ctx context.Context, r *engine.Run, node string) error {
	n, ok := r.Profile.Node(node)
	if !ok {
		return fmt.Errorf("node %s is not in the profile", node)
	}
	req := requirementsFor(r.Profile, n)
	var f facts.Node
	sent := time.Now()
	if err := r.Access.Call(ctx, node, FactsOp, req.request(sent), &f); err != nil {
		return fmt.Errorf("gathering facts: %w", err)
	}
	measureClock(&f.Clock, sent, time.Since(sent))
	r.SetFacts(node, f)
	r.Info(node, "%s, kernel %s, %s, %d CPU, %s RAM, TPM %s, %d disk(s)", osName(f.OS), f.Kernel, f.Arch, f.CPUs, bytesHuman(f.MemoryB), tpmSummary(f.TPM), len(f.Disks))
	for _, p := range f.Problems {
		r.Warn(node, "could not read a fact: %s", p)
	}
	var errs []string
	for _, p := range check(req, f) {
		if p.Severity == SeverityWarning {
			r.Warn(node, "%s", p.Msg)
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
