package installer

import (
	"context"
	"fmt"
	"time"

	"castellan/installer/engine"
	"castellan/installer/profile"
	"castellan/installer/report"
)

// Verify reports, for every node and the cluster, whether the live state
// matches the profile and what the state repo records (castellan verify):
// each phase's plan (a change it would make is drift) and the checks a plan
// does not make, which phases add through engine.Verifier (certificate
// expiry and revocation, a fresh TPM quote against the pinned boot state,
// WireGuard handshake ages, ...).
//
// It writes nothing anywhere: it does not create or commit to the state
// repo (its results are not recorded: the report is its output), takes no
// run lock (a timer never holds up an apply), writes no known_hosts line
// (a node whose host key is unknown is a failed check), ships no agent
// (a node without it is drift) and runs only read-only node operations, in
// one agent exec per node: the cost of a no-op plan.
type Verify struct {
	cfg *Config
	// ProfilePath is the profile file (-f); Profile, when set, is that
	// profile already loaded.
	ProfilePath string
	Profile     *profile.Profile
	// Only and Nodes restrict the verification to some phases and nodes
	// (nil: all; empty: an error).
	Only, Nodes []string

	// access is the last Run's node access (tests count its execs).
	access *nodeAccess
}

// NewVerify returns the verify verb.
func NewVerify(cfg *Config) *Verify { return &Verify{cfg: cfg} }

// Run verifies. The error is for what stopped it before any node was
// checked (bad input: *InputError; an unreadable state repo); what a check
// found, failures included, is in the report.
func (v *Verify) Run(ctx context.Context) (*report.Verification, error) {
	prof := v.Profile
	if prof == nil {
		var err error
		if prof, err = LoadProfile(v.ProfilePath, false); err != nil {
			return nil, err
		}
	}
	t, err := newTarget(v.cfg, prof, v.Only, v.Nodes)
	if err != nil {
		return nil, err
	}
	started := time.Now().UTC()
	repo, err := t.readState(false)
	if err != nil {
		return nil, err
	}
	out := &report.Verification{Cluster: prof.Metadata.Name, Started: started}
	var open string
	if repo != nil {
		if c, err := repo.Resolve("HEAD"); err == nil {
			out.StateCommit = c.Hash.String()[:12]
		}
		if rec, err := repo.Uncommitted(); err == nil && rec != nil {
			open = fmt.Sprintf("run %d started at %s and is not committed (running now, or it died: castellan history says which): the state repo may hold what it wrote so far", rec.Number, rec.Started.Format(time.RFC3339))
		}
	}
	pool, access, err := t.connect(false)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	v.access = access
	s := t.session("verify", access, &storeRef{repo: repo})
	out.VerifyResult = t.eng.Verify(ctx, s, t.phases)
	if repo == nil {
		out.Checks = append([]engine.Check{{Name: "state", Status: engine.CheckDrift, Message: fmt.Sprintf("there is no state repo at %s: nothing was applied yet", t.stateDir())}}, out.Checks...)
		out.Status = engine.CheckDrift
		if out.Count(engine.CheckFailed) > 0 {
			out.Status = engine.CheckFailed
		}
	}
	if open != "" {
		out.Checks = append([]engine.Check{{Name: "state", Status: engine.CheckWarning, Message: open}}, out.Checks...)
	}
	return out, nil
}
