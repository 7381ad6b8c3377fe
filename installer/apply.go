package installer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"castellan/installer/buildinfo"
	"castellan/installer/engine"
	"castellan/installer/nodeid"
	"castellan/installer/pki"
	"castellan/installer/profile"
	"castellan/installer/ssh"
	"castellan/installer/state"
)

// pushTimeout bounds the push of the state repo at the end of a run.
const pushTimeout = 2 * time.Minute

// Apply brings the nodes to the profile and commits the run to the state
// repo. It works in two steps, so that a person (the CLI's prompt, the TUI)
// can look at the plan in between while nothing is held but the state
// repo's lock: Prepare plans and writes nothing; Pending.Apply runs.
type Apply struct {
	cfg *Config
	// ProfilePath is the profile file (-f); Profile, when set, is that
	// profile already loaded (what the caller showed is what runs).
	ProfilePath string
	Profile     *profile.Profile
	// Only and Nodes restrict the run to some phases and nodes (nil: all;
	// empty: an error).
	Only, Nodes []string
	// AcceptNewHostKeys plans to trust host keys known_hosts does not hold
	// yet (never changed ones); they are written once the run is confirmed,
	// and recorded.
	AcceptNewHostKeys bool
	// ReEnrol names nodes to re-enrol explicitly (--re-enrol): the identity
	// phase accepts their new TPM (a changed endorsement key), gives them a
	// new identity and revokes the old certificate. Each must be a node the
	// run targets, and the identity phase must run.
	ReEnrol []string
	// AcceptBootState names nodes whose changed boot state the identity
	// phase accepts explicitly (--accept-boot-state): their attested PCRs
	// become their new baseline, and the run records it. Each must be a
	// node the run targets, and the identity phase must run.
	AcceptBootState []string
}

// NewApply returns the apply verb.
func NewApply(cfg *Config) *Apply { return &Apply{cfg: cfg} }

// Result is a finished run.
type Result struct {
	Record   *state.Record
	Commit   string // the state repo commit, abbreviated
	StateDir string
}

// Prepare loads the profile, takes the state repo's run lock, connects and,
// when plan is set, plans every selected phase (for a person to confirm). It
// writes nothing anywhere: not the nodes, not the state repo (which it does
// not create), not known_hosts, not the age identity. The returned Pending
// holds the lock and the connections until Apply or Close.
func (a *Apply) Prepare(ctx context.Context, plan bool) (*Pending, error) {
	prof := a.Profile
	if prof == nil {
		var err error
		if prof, err = LoadProfile(a.ProfilePath, a.AcceptNewHostKeys); err != nil {
			return nil, err
		}
	}
	t, err := newTarget(a.cfg, prof, a.Only, a.Nodes)
	if err != nil {
		return nil, err
	}
	if err := t.reEnrol(a.ReEnrol); err != nil {
		return nil, err
	}
	if err := t.acceptBootState(a.AcceptBootState); err != nil {
		return nil, err
	}
	return prepare(ctx, t, pendingRun{command: "apply", only: a.Only, acceptNew: a.AcceptNewHostKeys}, plan)
}

// Run applies without asking (--yes): each phase is planned right before it
// is applied.
func (a *Apply) Run(ctx context.Context) (*Result, error) {
	p, err := a.Prepare(ctx, false)
	if err != nil {
		return nil, err
	}
	return p.Apply(ctx)
}

// pendingRun says what kind of run a Pending becomes.
type pendingRun struct {
	command    string // apply, rollback
	rollbackOf int
	only       []string
	acceptNew  bool
}

// Pending is a prepared run waiting for a decision: Apply runs it, Close
// declines it. Either releases the lock and the connections.
type Pending struct {
	t       *target
	run     pendingRun
	lock    *state.Lock
	store   *storeRef
	pool    *ssh.Pool
	access  *nodeAccess
	session *engine.Session

	planned bool
	plans   []engine.Plan
	planErr error
	once    sync.Once
}

func prepare(ctx context.Context, t *target, run pendingRun, plan bool) (*Pending, error) {
	if err := state.Check(t.stateDir()); err != nil {
		return nil, inputErr(fmt.Errorf("spec.state.repo: %w", err))
	}
	lock, err := state.LockDir(t.stateDir())
	if err != nil {
		return nil, err
	}
	p := &Pending{t: t, run: run, lock: lock, planned: plan}
	repo, err := t.readState(false)
	if err != nil {
		lock.Unlock()
		return nil, err
	}
	p.store = &storeRef{repo: repo}
	p.pool, p.access, err = t.connect(run.acceptNew)
	if err != nil {
		lock.Unlock()
		return nil, err
	}
	p.access.recordTrusted = true
	p.session = t.session(run.command, p.access, p.store)
	if plan {
		p.plans, p.planErr = t.eng.PlanAll(ctx, p.session, t.phases)
		if ctx.Err() != nil || errors.Is(p.planErr, engine.ErrInterrupted) {
			p.Close()
			return nil, fmt.Errorf("planning: %w", engine.ErrInterrupted)
		}
	}
	return p, nil
}

// Plans are the plans to confirm (nil when Prepare did not plan).
func (p *Pending) Plans() []engine.Plan { return p.plans }

// Err is why planning failed (a phase could not plan); Apply then commits
// the failed plan as a failed run and changes no node.
func (p *Pending) Err() error { return p.planErr }

// Changes counts the planned changes.
func (p *Pending) Changes() int {
	n := 0
	for _, pl := range p.plans {
		n += len(pl.Changes)
	}
	return n
}

// Close declines the run: it releases the lock and the connections, having
// written nothing.
func (p *Pending) Close() {
	p.once.Do(func() {
		p.pool.Close()
		p.lock.Unlock()
	})
}

// Apply runs the prepared run: it creates the state repo if needed (and a
// local age identity when the profile names no recipients), commits what an
// earlier run left, re-encrypts secrets if the recipients changed, records
// the run's start, applies the phases (checking each against the confirmed
// plan while nothing has changed yet), and commits the run, failed or not.
// A prepared run whose planning failed is committed as failed without
// applying anything. A failed run returns its Result with a *RunError; a
// run committed but not pushed, with a *PushError.
func (p *Pending) Apply(ctx context.Context) (*Result, error) {
	defer p.Close()
	t, cfg := p.t, p.t.cfg
	keys, err := state.LoadKeys(t.profile.Spec.State.Recipients, cfg.IdentityFile, true)
	if err != nil {
		return nil, fmt.Errorf("state repo keys: %w", err)
	}
	for _, n := range keys.Notices {
		cfg.notice("warning: %s", n)
	}
	repo, err := state.Create(t.stateDir(), keys, p.lock)
	if err != nil {
		return nil, err
	}
	if did, err := repo.Recover(); err != nil {
		return nil, err
	} else if did {
		cfg.notice("note: committed what an earlier run had left in %s (see castellan history)", repo.Dir())
	}
	if err := repo.Rekey(); err != nil {
		return nil, err
	}
	p.store.repo, p.store.writable = repo, true

	number, err := repo.NextRunNumber()
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	rec := &state.Record{
		Number: number, Command: p.run.command, RollbackOf: p.run.rollbackOf,
		Who: state.Who(), Host: host, Version: buildinfo.Version(), Started: time.Now().UTC(),
		ProfileSHA256: sha256hex(t.profile.Raw), Nodes: nodeNames(t.nodes), OnlyPhases: p.run.only,
	}
	if t.profile.Spec.Identity.TPM == profile.TPMInsecureSkip {
		rec.Warnings = append(rec.Warnings, "spec.identity.tpm is insecure-skip: nodes without a TPM are accepted and their identities are not bound to hardware")
	}
	if err := repo.BeginRun(rec); err != nil {
		return nil, err
	}
	p.session.SetID(strconv.Itoa(number))

	var res engine.Result
	if p.planned && p.planErr != nil {
		res = p.failedPlan()
	} else {
		var confirmed []engine.Plan
		if p.planned {
			confirmed = p.plans
		}
		res = t.eng.Apply(ctx, p.session, t.phases, confirmed)
	}
	rec.Finished = time.Now().UTC()
	rec.Duration = rec.Finished.Sub(rec.Started)
	rec.Outcome, rec.Error, rec.Phases, rec.NodeErrors = res.Outcome, res.Error, res.Phases, res.NodeErrors
	rec.Outputs = p.session.Outputs()
	rec.Warnings = append(rec.Warnings, softwareKeyWarnings(p.session, t.nodes)...)
	for _, k := range p.access.trustedKeys() {
		rec.TrustedHostKeys = append(rec.TrustedHostKeys, fmt.Sprintf("%s (%s) %s %s", k.Host, k.Addr, k.KeyType, k.Fingerprint))
	}
	hash, err := repo.Commit(state.Snapshot{Record: rec, Profile: t.profile.Raw, KnownHosts: p.knownHosts(), Rendered: p.session.Rendered(), Nodes: rec.Nodes})
	if err != nil {
		return nil, fmt.Errorf("committing run %d to the state repo (the next run commits what was written): %w", number, err)
	}
	out := &Result{Record: rec, Commit: hash.String()[:12], StateDir: repo.Dir()}
	var pushErr error
	if r := t.profile.Spec.State.Remote; r != nil {
		pctx, cancel := context.WithTimeout(ctx, pushTimeout)
		defer cancel()
		err := repo.Push(pctx, state.Remote{URL: r.URL, KeyFile: resolveOptional(t.profile, r.KeyFile), UseAgent: t.profile.Spec.SSH.Agent, KnownHostsFile: t.profile.Resolve(r.KnownHosts)})
		if err != nil {
			pushErr = &PushError{Run: number, Err: err}
		}
	}
	if rec.Failed() {
		if pushErr != nil {
			cfg.notice("warning: %v", pushErr)
		}
		return out, &RunError{Run: number, Outcome: string(rec.Outcome), Err: rec.Error}
	}
	if pushErr != nil {
		return out, pushErr
	}
	return out, nil
}

// failedPlan is the result of a run whose planning failed: nothing applied.
func (p *Pending) failedPlan() engine.Result {
	res := engine.Result{Outcome: engine.OutcomeFailed, NodeErrors: p.session.NodeErrors()}
	failed := map[string]string{}
	var pe *engine.PlanError
	for _, err := range unwrapAll(p.planErr) {
		if errors.As(err, &pe) {
			failed[pe.Phase] = p.session.Describe(pe.Err)
		}
	}
	for _, ph := range p.t.phases {
		pr := engine.PhaseResult{Name: ph.Name(), Outcome: engine.OutcomeSkipped}
		if msg, ok := failed[ph.Name()]; ok {
			pr.Outcome, pr.Error = engine.OutcomeFailed, "could not plan: "+msg
			if res.Error == "" {
				res.Error = fmt.Sprintf("phase %s %s; nothing was applied", ph.Name(), pr.Error)
			}
		}
		res.Phases = append(res.Phases, pr)
	}
	if res.Error == "" {
		res.Error = fmt.Sprintf("planning failed: %v; nothing was applied", p.planErr)
	}
	return res
}

func unwrapAll(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// knownHosts is what the run trusted: the known_hosts lines of the profile's
// nodes and bastion, not every host the file may hold (it may be the user's
// own ~/.ssh/known_hosts). nil leaves the committed file as it was.
func (p *Pending) knownHosts() []byte {
	prof := p.t.profile
	data, err := os.ReadFile(prof.Resolve(prof.Spec.SSH.KnownHosts))
	if err != nil {
		return nil
	}
	hosts := make([]ssh.Host, 0, len(prof.Spec.Nodes)+1)
	for _, h := range p.access.hosts {
		hosts = append(hosts, h)
	}
	if b := prof.Spec.SSH.Bastion; b != nil {
		hosts = append(hosts, ssh.Host{Address: b.Address, Port: b.Port})
	}
	return ssh.SelectKnownHosts(data, hosts)
}

func resolveOptional(p *profile.Profile, path string) string {
	if path == "" {
		return ""
	}
	return p.Resolve(path)
}

func sha256hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// reEnrol hands the identity phase the nodes to re-enrol explicitly.
func (t *target) reEnrol(nodes []string) error {
	return t.identityInput("--re-enrol", nodeid.ReEnrol, nodes)
}

// acceptBootState hands the identity phase the nodes whose changed boot
// state is accepted explicitly.
func (t *target) acceptBootState(nodes []string) error {
	return t.identityInput("--accept-boot-state", nodeid.AcceptBootState, nodes)
}

// identityInput checks a flag naming nodes for the identity phase (each in
// the profile and targeted, the phase selected) and sets it as the input.
func (t *target) identityInput(flag string, in engine.Input[[]string], nodes []string) error {
	if len(nodes) == 0 {
		return nil
	}
	if !slices.Contains(engine.PhaseNames(t.phases), nodeid.Phase) {
		return inputErr(fmt.Errorf("%s needs the %s phase, which --only leaves out", flag, nodeid.Phase))
	}
	var errs []error // every node named wrongly, not only the first
	for _, n := range nodes {
		if _, ok := t.profile.Node(n); !ok {
			errs = append(errs, fmt.Errorf("%s %s: no such node in the profile", flag, n))
		} else if !slices.ContainsFunc(t.nodes, func(pn profile.Node) bool { return pn.Name == n }) {
			errs = append(errs, fmt.Errorf("%s %s: the node is not among the nodes this run targets (--nodes)", flag, n))
		}
	}
	if len(errs) > 0 {
		return inputErr(errors.Join(errs...))
	}
	engine.SetInput(&t.inputs, in, slices.Clone(nodes))
	return nil
}

// softwareKeyWarnings names the nodes whose identity this run found or made
// with a software key (insecure-skip): every summary of the run shows them.
func softwareKeyWarnings(s *engine.Session, nodes []profile.Node) []string {
	v := s.View("")
	var out []string
	for _, n := range nodes {
		if e, ok := engine.Lookup(v, nodeid.EnrolmentKey, n.Name); ok && e.Protection == pki.SoftwareKey {
			out = append(out, fmt.Sprintf("node %s holds a SOFTWARE key (spec.identity.tpm: insecure-skip): its identity is not bound to hardware", n.Name))
		}
	}
	return out
}
