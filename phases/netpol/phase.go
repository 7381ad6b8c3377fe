package netpol

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/kube"
	"castellan/installer/profile"
)

// Name is the phase's name.
const Name = "netpol"

// RenderedFile is the name of the file the phase renders for the cluster:
// the state repo keeps it as rendered/cluster/netpol/networkpolicies.yaml,
// and Decode reads it back to roll back to that run's objects.
const RenderedFile = "networkpolicies.yaml"

// Phase applies spec.netpol to the cluster: the engine's thin wrapper
// around Compile, Applier.Plan and Applier.Apply. It has no node operations.
type Phase struct {
	// Config, when set, replaces the cluster access of the profile's
	// spec.cluster (tests; later the rke2 phase's published kubeconfig).
	Config func(p *profile.Profile) (*rest.Config, error)
}

// Name implements engine.Phase.
func (Phase) Name() string { return Name }

// Ops implements engine.Phase: the phase talks to the API server, not to nodes.
func (Phase) Ops() []agent.Handler { return nil }

// changeData is what Apply needs of one planned change.
type changeData struct {
	Desired         *networkingv1.NetworkPolicy `json:"desired,omitempty"`
	UID             types.UID                   `json:"uid,omitempty"`
	ResourceVersion string                      `json:"resourceVersion,omitempty"`
}

func (ph Phase) applier(p *profile.Profile) (*Applier, error) {
	get := ph.Config
	if get == nil {
		get = kube.FromProfile
	}
	cfg, err := get(p)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cluster access: %w", err)
	}
	return &Applier{Client: cs, Cluster: p.Metadata.Name}, nil
}

// declares reports whether the profile declares any policy.
func declares(p *profile.Profile) bool {
	return len(p.Workloads()) > 0 || len(p.Spec.NetPol.Namespaces) > 0
}

// Plan implements engine.Phase: the changes Applier.Plan finds against the
// live objects, one engine change per object (Action create, update or
// delete; Target NAMESPACE/NAME; Detail the YAML diff), and the notes of
// what castellan changed from the declarations (the cluster DNS opening).
// Without spec.cluster a profile that declares nothing plans nothing; one
// that declares openings is an error.
func (ph Phase) Plan(ctx context.Context, v *engine.View) (engine.Plan, error) {
	p := v.Profile()
	plan := engine.Plan{Phase: Name}
	c, err := Compile(InputFrom(p))
	if err != nil {
		return plan, err
	}
	a, err := ph.applier(p)
	if errors.Is(err, kube.ErrNoAccess) && !declares(p) {
		plan.Notes = append(plan.Notes, "spec.netpol declares nothing and spec.cluster names no kubeconfig: no policy to apply")
		return plan, nil
	}
	if err != nil {
		return plan, err
	}
	np, err := a.Plan(ctx, c.Policies)
	if err != nil {
		return plan, err
	}
	for _, ch := range np.Changes {
		d := changeData{Desired: ch.Desired}
		if ch.Live != nil {
			d.UID, d.ResourceVersion = ch.Live.UID, ch.Live.ResourceVersion
		}
		ec := engine.NewChange("", string(ch.Action), ch.Namespace+"/"+ch.Name, fmt.Sprintf("%s NetworkPolicy %s/%s", ch.Action, ch.Namespace, ch.Name), d)
		ec.Detail = ch.Diff
		plan.Changes = append(plan.Changes, ec)
	}
	for _, w := range c.Workloads {
		for _, op := range w.Openings {
			if op.Note != "" {
				plan.Notes = append(plan.Notes, fmt.Sprintf("%s/%s %s %s: %s", w.Namespace, w.Name, op.Direction, op.Name, op.Note))
			}
		}
	}
	return plan, nil
}

// Apply implements engine.Phase: it makes the planned changes in the
// planned order (Applier.Apply) and renders the compiled objects for the
// state repo. Every step is safe to repeat: server-side apply is
// idempotent, and a delete of an object already gone or changed fails its
// precondition, so the next run plans again.
func (ph Phase) Apply(ctx context.Context, r *engine.Run, plan engine.Plan) error {
	p := r.Profile()
	c, err := Compile(InputFrom(p))
	if err != nil {
		return err
	}
	var rendered bytes.Buffer
	if err := Render(&rendered, c.Policies); err != nil {
		return err
	}
	r.Render("", RenderedFile, rendered.Bytes())
	if plan.Empty() {
		return nil
	}
	a, err := ph.applier(p)
	if err != nil {
		return err
	}
	var np Plan
	for _, ec := range plan.Changes {
		d, err := engine.ChangeData[changeData](ec)
		if err != nil {
			return err
		}
		ch := Change{Action: Action(ec.Action), Desired: d.Desired}
		ns, name, ok := strings.Cut(ec.Target, "/")
		if !ok || ns == "" || name == "" {
			return fmt.Errorf("change %s %s: target is not NAMESPACE/NAME", ec.Action, ec.Target)
		}
		ch.Namespace, ch.Name = ns, name
		if ch.Action == Delete {
			ch.Live = &networkingv1.NetworkPolicy{}
			ch.Live.Namespace, ch.Live.Name, ch.Live.UID, ch.Live.ResourceVersion = ns, name, d.UID, d.ResourceVersion
		}
		np.Changes = append(np.Changes, ch)
	}
	done, err := a.Apply(ctx, &np)
	for _, ch := range done {
		r.Info("", "%s", ch)
	}
	return err
}
