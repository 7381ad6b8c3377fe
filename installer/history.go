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

// StateDir finds the state repo: --state when given, else the profile's.
func StateDir(o Options, stateFlag string) (string, error) {
	if stateFlag != "" {
		return stateFlag, nil
	}
	if o.ProfilePath == "" {
		return "", inputErr(errors.New("no state repo: give -f PROFILE or --state DIR"))
	}
	// The state repo may hold the only copy of keys that are gone; read the
	// profile without checking files, just to find the repo.
	p, err := profile.Load(o.ProfilePath, profile.ValidateOptions{SkipFileChecks: true})
	if err != nil {
		return "", inputErr(err)
	}
	return p.Resolve(p.Spec.State.Repo), nil
}

func openExisting(dir string) (*state.Repo, error) {
	ok, err := state.Exists(dir)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, inputErr(fmt.Errorf("%s is not a castellan state repo (no runs yet?)", dir))
	}
	return state.Open(dir, nil)
}

// History lists the runs in the state repo at dir, newest first.
func History(dir string) ([]state.Entry, error) {
	r, err := openExisting(dir)
	if err != nil {
		return nil, err
	}
	return r.History()
}

// Diff is the change of state between two revisions (run numbers or git
// revisions); to defaults to the latest run.
func Diff(dir, from, to string) (string, error) {
	r, err := openExisting(dir)
	if err != nil {
		return "", err
	}
	if to == "" {
		to = "HEAD"
	}
	d, err := r.Diff(from, to)
	if errors.Is(err, state.ErrUnknownRevision) {
		return "", inputErr(err)
	}
	return d, err
}

// Rollback applies the profile of an earlier run as a new run, committed as
// a rollback. Relative paths in that profile resolve against the directory of
// the current profile (o.ProfilePath), whose key files it uses.
func Rollback(ctx, interrupt context.Context, o Options, to string) (*Result, error) {
	cur, err := Load(o)
	if err != nil {
		return nil, err
	}
	dir := cur.Resolve(cur.Spec.State.Repo)
	r, err := openExisting(dir)
	if err != nil {
		return nil, err
	}
	c, err := r.Resolve(to)
	if err != nil {
		return nil, inputErr(err)
	}
	n := state.RunOf(c)
	if n == 0 {
		return nil, inputErr(fmt.Errorf("%s is not a run; give a run number from castellan history", to))
	}
	raw, err := r.FileAt(c.Hash.String(), state.ProfileFile)
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("%s@run%d", filepath.Base(o.ProfilePath), n)
	old, err := profile.Parse(name, raw)
	if err != nil {
		return nil, inputErr(fmt.Errorf("the profile of run %d no longer loads: %w", n, err))
	}
	old.Dir = cur.Dir
	if err := old.Validate(profile.ValidateOptions{AcceptNewHostKeys: o.AcceptNewHostKeys}); err != nil {
		return nil, inputErr(fmt.Errorf("the profile of run %d is not valid here: %w", n, err))
	}
	if old.Resolve(old.Spec.State.Repo) != dir {
		return nil, inputErr(fmt.Errorf("run %d used the state repo %s, the current profile %s; roll back from a profile that uses the same state repo", n, old.Resolve(old.Spec.State.Repo), dir))
	}
	if !bytes.Equal(old.Raw, cur.Raw) {
		o.notice("note: %s differs from the profile of run %d that is being applied; after the rollback, update it from the state repo (git -C %s show HEAD:%s) or the next apply undoes the rollback", o.ProfilePath, n, dir, state.ProfileFile)
	}
	return apply(ctx, interrupt, o, old, "rollback", n)
}
