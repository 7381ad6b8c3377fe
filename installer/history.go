package installer

import (
	"errors"
	"fmt"
	"os"

	"castellan/installer/engine"
	"castellan/installer/profile"
	"castellan/installer/state"
)

// History lists the runs recorded in a state repo, newest first.
type History struct {
	cfg *Config
	// ProfilePath finds the state repo (its spec.state.repo); StateDir, when
	// set, names it directly. Exactly one is needed.
	ProfilePath string
	StateDir    string
}

// NewHistory returns the history verb.
func NewHistory(cfg *Config) *History { return &History{cfg: cfg} }

// Run returns the committed runs, newest first, and the record of a run that
// started but is not committed (running now, or killed: Outcome says which),
// or nil.
func (h *History) Run() ([]state.Entry, *state.Record, error) {
	dir, err := stateDirOf(h.ProfilePath, h.StateDir)
	if err != nil {
		return nil, nil, err
	}
	r, err := openExisting(dir)
	if err != nil {
		return nil, nil, err
	}
	entries, err := r.History()
	if err != nil {
		return nil, nil, err
	}
	open, err := r.Uncommitted()
	if err != nil || open == nil {
		return entries, nil, err
	}
	// The lock tells a running run from one that died.
	if l, err := state.LockDir(dir); err == nil {
		l.Unlock()
		open.Outcome = engine.OutcomeDied
	} else if !errors.Is(err, state.ErrLocked) {
		return nil, nil, err
	}
	return entries, open, nil
}

// stateDirOf finds the state repo: stateFlag when given, else the profile's.
func stateDirOf(profilePath, stateFlag string) (string, error) {
	switch {
	case stateFlag != "" && profilePath != "":
		return "", inputErr(errors.New("give either -f PROFILE or --state DIR, not both"))
	case stateFlag != "":
		fi, err := os.Stat(stateFlag)
		if err != nil {
			return "", inputErr(fmt.Errorf("--state %s: %w", stateFlag, err))
		}
		if !fi.IsDir() {
			return "", inputErr(fmt.Errorf("--state %s is not a directory: give the state repo's directory", stateFlag))
		}
		return stateFlag, nil
	case profilePath == "":
		return "", inputErr(errors.New("no state repo: give -f PROFILE or --state DIR"))
	}
	// The state repo may hold the only copy of keys that are gone; read the
	// profile without checking files, just to find the repo.
	p, err := profile.Load(profilePath, profile.ValidateOptions{SkipFileChecks: true})
	if err != nil {
		return "", inputErr(err)
	}
	return p.Resolve(p.Spec.State.Repo), nil
}
