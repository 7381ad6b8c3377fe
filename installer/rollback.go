package installer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"castellan/installer/profile"
	"castellan/installer/state"
)

// Rollback applies the profile an earlier run applied, as a new run committed
// as a rollback; history is never rewritten. Relative paths in that profile
// (key files, known_hosts) resolve against the directory of the current
// profile, whose files it uses.
type Rollback struct {
	cfg *Config
	// ProfilePath is the current profile (-f); Profile, when set, is that
	// profile already loaded.
	ProfilePath string
	Profile     *profile.Profile
	// To is the run number (or state repo revision) to roll back to.
	To string
	// AcceptNewHostKeys as for Apply.
	AcceptNewHostKeys bool
}

// NewRollback returns the rollback verb.
func NewRollback(cfg *Config) *Rollback { return &Rollback{cfg: cfg} }

// Prepare finds the earlier run's profile and prepares applying it, as
// Apply.Prepare does (nothing is written until Pending.Apply).
func (r *Rollback) Prepare(ctx context.Context, plan bool) (*Pending, error) {
	cur := r.Profile
	if cur == nil {
		var err error
		if cur, err = LoadProfile(r.ProfilePath, r.AcceptNewHostKeys); err != nil {
			return nil, err
		}
	}
	dir := cur.Resolve(cur.Spec.State.Repo)
	repo, err := openExisting(dir)
	if err != nil {
		return nil, err
	}
	c, err := repo.Resolve(r.To)
	if err != nil {
		return nil, inputErr(err)
	}
	n := state.RunOf(c)
	if n == 0 {
		return nil, inputErr(fmt.Errorf("%s is not a run; give a run number from castellan history", r.To))
	}
	raw, err := repo.FileAt(c.Hash.String(), state.ProfileFile)
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("%s@run%d", filepath.Base(r.ProfilePath), n)
	old, err := profile.LoadBytes(ctx, name, cur.Dir, raw, profile.ValidateOptions{AcceptNewHostKeys: r.AcceptNewHostKeys})
	if err != nil {
		return nil, inputErr(fmt.Errorf("the profile of run %d does not load here (relative paths resolve against %s): %w", n, cur.Dir, err))
	}
	if old.Resolve(old.Spec.State.Repo) != dir {
		return nil, inputErr(fmt.Errorf("run %d used the state repo %s, the current profile %s; roll back from a profile that uses the same state repo", n, old.Resolve(old.Spec.State.Repo), dir))
	}
	if !bytes.Equal(old.Raw, cur.Raw) {
		r.cfg.notice("note: %s differs from the profile of run %d that is being applied; after the rollback, update it from the state repo (git -C %s show HEAD:%s) or the next apply undoes the rollback", r.ProfilePath, n, dir, state.ProfileFile)
	}
	t, err := newTarget(r.cfg, old, nil, nil)
	if err != nil {
		return nil, err
	}
	return prepare(ctx, t, pendingRun{command: "rollback", rollbackOf: n, acceptNew: r.AcceptNewHostKeys}, plan)
}

// Run rolls back without asking (--yes).
func (r *Rollback) Run(ctx context.Context) (*Result, error) {
	p, err := r.Prepare(ctx, false)
	if err != nil {
		return nil, err
	}
	return p.Apply(ctx)
}

// openExisting opens the state repo at dir read-only; a directory without
// one is bad input.
func openExisting(dir string) (*state.Repo, error) {
	r, err := state.Open(dir, nil)
	if errors.Is(err, state.ErrNotStateRepo) {
		return nil, inputErr(err)
	}
	return r, err
}
