package installer

import (
	"errors"

	"castellan/installer/state"
)

// Diff shows what changed in the state between two revisions of the state
// repo: profile, known_hosts, rendered files and data in full, secrets by name.
type Diff struct {
	cfg *Config
	// ProfilePath or StateDir find the state repo, as for History.
	ProfilePath string
	StateDir    string
	// From and To are run numbers or git revisions; To defaults to the latest.
	From, To string
}

// NewDiff returns the diff verb.
func NewDiff(cfg *Config) *Diff { return &Diff{cfg: cfg} }

// Run returns a unified diff ("" when nothing differs).
func (d *Diff) Run() (string, error) {
	dir, err := stateDirOf(d.ProfilePath, d.StateDir)
	if err != nil {
		return "", err
	}
	r, err := openExisting(dir)
	if err != nil {
		return "", err
	}
	to := d.To
	if to == "" {
		to = "HEAD"
	}
	out, err := r.Diff(d.From, to)
	if errors.Is(err, state.ErrUnknownRevision) {
		return "", inputErr(err)
	}
	return out, err
}
