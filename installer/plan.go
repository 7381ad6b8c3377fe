package installer

import (
	"context"

	"castellan/installer/engine"
	"castellan/installer/profile"
)

// Plan shows what apply would change, per phase and node. It changes
// nothing: not the nodes, not the state repo, not known_hosts (with
// AcceptNewHostKeys, unknown host keys are shown as keys to trust, never
// written).
type Plan struct {
	cfg *Config
	// ProfilePath is the profile file (-f); Profile, when set, is that
	// profile already loaded.
	ProfilePath string
	Profile     *profile.Profile
	// Only and Nodes restrict the plan to some phases and nodes (nil: all;
	// empty: an error).
	Only, Nodes []string
	// AcceptNewHostKeys plans to trust host keys known_hosts does not hold.
	AcceptNewHostKeys bool
	// ReEnrol and AcceptBootState are apply's flags of the same names: the
	// plan shows what apply with them would do (and nothing is recorded).
	ReEnrol, AcceptBootState []string
}

// NewPlan returns the plan verb.
func NewPlan(cfg *Config) *Plan { return &Plan{cfg: cfg} }

// Run plans every selected phase. A phase that could not plan is reported in
// the event stream and returned as an *engine.PlanError (joined); the other
// phases' plans are returned all the same.
func (p *Plan) Run(ctx context.Context) ([]engine.Plan, error) {
	prof := p.Profile
	if prof == nil {
		var err error
		if prof, err = LoadProfile(p.ProfilePath, p.AcceptNewHostKeys); err != nil {
			return nil, err
		}
	}
	t, err := newTarget(p.cfg, prof, p.Only, p.Nodes)
	if err != nil {
		return nil, err
	}
	if err := t.reEnrol(p.ReEnrol); err != nil {
		return nil, err
	}
	if err := t.acceptBootState(p.AcceptBootState); err != nil {
		return nil, err
	}
	repo, err := t.readState(false)
	if err != nil {
		return nil, err
	}
	pool, access, err := t.connect(p.AcceptNewHostKeys)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	s := t.session("plan", access, &storeRef{repo: repo})
	return t.eng.PlanAll(ctx, s, t.phases)
}
