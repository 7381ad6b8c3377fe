package installer

import (
	"castellan/installer/profile"
)

// Validate checks a profile without connecting to anything: every problem
// is reported with file:line:column.
type Validate struct {
	cfg *Config
	// ProfilePath is the profile file (-f).
	ProfilePath string
	// AcceptNewHostKeys allows a known_hosts file that does not exist yet.
	AcceptNewHostKeys bool
}

// NewValidate returns the validate verb.
func NewValidate(cfg *Config) *Validate { return &Validate{cfg: cfg} }

// Run loads and validates the profile; errors are *InputError.
func (v *Validate) Run() (*profile.Profile, error) {
	return LoadProfile(v.ProfilePath, v.AcceptNewHostKeys)
}
