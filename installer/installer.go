// Package installer is castellan's application layer: it loads the profile,
// opens the state repo, connects to the nodes, runs the phases through the
// engine and commits the run. The CLI and the TUI are thin layers over it.
package installer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"castellan/installer/agent"
	"castellan/installer/buildinfo"
	"castellan/installer/engine"
	"castellan/installer/profile"
	"castellan/installer/ssh"
	"castellan/installer/state"
	"castellan/phases/preflight"
)

// Phases returns castellan's phases in the order they run.
func Phases() []engine.Phase {
	return []engine.Phase{
		preflight.Phase{},
	}
}

// AgentRegistry returns the node-side operations of every phase.
func AgentRegistry() *agent.Registry {
	r := agent.NewRegistry()
	preflight.RegisterAgentOps(r)
	return r
}

// InputError is bad input: a profile, flag or revision problem found before
// any node was touched. The CLI exits with code 2 for it.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

func inputErr(err error) error {
	if err == nil {
		return nil
	}
	return &InputError{Err: err}
}

// pushTimeout bounds the push of the state repo at the end of a run.
const pushTimeout = 2 * time.Minute

// ErrAborted is returned when the user declined the plan.
var ErrAborted = errors.New("aborted: nothing was changed")

// Options configure one command.
type Options struct {
	// ProfilePath is the profile file (-f).
	ProfilePath string
	// Profile, when set, is the profile already loaded from ProfilePath
	// (so that what the caller showed is what runs).
	Profile *profile.Profile
	// Only and Nodes restrict the run to some phases and nodes.
	Only  []string
	Nodes []string
	// AcceptNewHostKeys records unknown host keys (never changed ones).
	AcceptNewHostKeys bool
	// AgentBinaries are castellan binaries for the nodes' architectures;
	// the running executable is used when it fits.
	AgentBinaries []string
	// IdentityFile is the age identity for the state repo's secrets.
	IdentityFile string
	Parallelism  int
	// Confirm is asked with the plan before anything changes; nil means the
	// caller confirmed already (--yes).
	Confirm func([]engine.Plan) (bool, error)
	Sink    engine.Sink
	Logger  *slog.Logger
	// Dial replaces the TCP dialer (tests dial inside network namespaces).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Notice receives messages for the user outside the event stream.
	Notice io.Writer
}

func (o *Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

func (o *Options) notice(format string, a ...any) {
	if o.Notice != nil {
		fmt.Fprintf(o.Notice, format+"\n", a...)
	}
}

// Load reads and validates the profile (or returns Options.Profile).
func Load(o Options) (*profile.Profile, error) {
	if o.Profile != nil {
		return o.Profile, nil
	}
	if o.ProfilePath == "" {
		return nil, inputErr(errors.New("no profile: give one with -f PROFILE (castellan profile init writes a starter)"))
	}
	p, err := profile.Load(o.ProfilePath, profile.ValidateOptions{AcceptNewHostKeys: o.AcceptNewHostKeys})
	return p, inputErr(err)
}

// Result is a finished run.
type Result struct {
	Record   *state.Record
	Commit   string
	StateDir string
}

// session is what one command holds open: profile, connections, and (for
// apply) the state repo.
type session struct {
	o       Options
	p       *profile.Profile
	repo    *state.Repo // nil until openState
	pool    *ssh.Pool
	access  *nodeAccess
	targets []profile.Node
	phases  []engine.Phase
	eng     *engine.Engine
}

// open checks the run's targets and phases and prepares the connections. It
// writes nothing anywhere.
func open(o Options, p *profile.Profile) (*session, error) {
	s := &session{o: o, p: p}
	targets, err := selectNodes(p, o.Nodes)
	if err != nil {
		return nil, inputErr(err)
	}
	s.targets = targets
	s.eng = &engine.Engine{Phases: Phases(), Parallelism: o.Parallelism, Sink: o.Sink, Logger: o.logger()}
	if s.phases, err = s.eng.Select(o.Only); err != nil {
		return nil, inputErr(err)
	}
	if s.pool, err = ssh.NewPool(sshConfig(p, o)); err != nil {
		return nil, inputErr(fmt.Errorf("ssh: %w", err))
	}
	s.access = &nodeAccess{pool: s.pool, hosts: map[string]ssh.Host{}, bins: newBinaries(o.AgentBinaries), probes: map[string]agent.Status{}}
	for _, n := range p.Spec.Nodes {
		s.access.hosts[n.Name] = ssh.Host{Name: n.Name, Address: n.Address, Port: n.Port}
	}
	return s, nil
}

func (s *session) stateDir() string { return s.p.Resolve(s.p.Spec.State.Repo) }

// openState opens the state repo for a run: created (with the local age
// identity, if the profile names no recipients) when missing, locked,
// leftovers of an interrupted run committed, secrets re-encrypted if the
// recipients changed. All of that happens before any node is touched.
func (s *session) openState() error {
	keys, err := state.LoadKeys(s.p.Spec.State.Recipients, s.o.IdentityFile, true)
	if err != nil {
		return fmt.Errorf("state repo keys: %w", err)
	}
	for _, n := range keys.Notices {
		s.o.notice("warning: %s", n)
	}
	repo, err := state.Open(s.stateDir(), keys)
	if err != nil {
		return err
	}
	if err := repo.Lock(); err != nil {
		return err
	}
	s.repo = repo
	if did, err := repo.Recover(); err != nil {
		return err
	} else if did {
		s.o.notice("note: committed what an interrupted run had left in %s", repo.Dir())
	}
	return repo.Rekey()
}

// readState opens an existing state repo read-only, for planning; nil when
// there is none yet (or its secrets cannot be read here: planning reads no
// secret today, so that is a note, not an error).
func (s *session) readState() *state.Repo {
	ok, err := state.Exists(s.stateDir())
	if err != nil || !ok {
		return nil
	}
	keys, err := state.LoadKeys(s.p.Spec.State.Recipients, s.o.IdentityFile, false)
	if err != nil {
		s.o.notice("note: %v", err)
		keys = nil
	}
	repo, err := state.Open(s.stateDir(), keys)
	if err != nil {
		s.o.notice("note: %v", err)
		return nil
	}
	return repo
}

// planSecrets lets a plan read secrets but never store one.
type planSecrets struct{ repo *state.Repo }

func (p planSecrets) Get(name string) ([]byte, bool, error) {
	if p.repo == nil {
		return nil, false, nil
	}
	return p.repo.Get(name)
}

func (planSecrets) Put(name string, _ []byte) error {
	return fmt.Errorf("storing secret %s: a plan stores nothing", name)
}

func (s *session) close() {
	if s.pool != nil {
		s.pool.Close()
	}
	if s.repo != nil {
		s.repo.Unlock()
	}
}

func sshConfig(p *profile.Profile, o Options) ssh.Config {
	sp := p.Spec.SSH
	cfg := ssh.Config{
		User:              sp.User,
		UseAgent:          sp.Agent,
		KnownHostsFile:    p.Resolve(sp.KnownHosts),
		AcceptNewHostKeys: o.AcceptNewHostKeys,
		Sudo:              profile.On(sp.Sudo),
		DialTimeout:       sp.ConnectTimeout.Duration,
		CommandTimeout:    sp.CommandTimeout.Duration,
		Dial:              o.Dial,
		Logger:            o.logger(),
	}
	if sp.KeyFile != "" {
		cfg.KeyFiles = []string{p.Resolve(sp.KeyFile)}
	}
	if b := sp.Bastion; b != nil {
		cfg.Bastion = &ssh.Bastion{Name: "bastion " + b.Address, Address: b.Address, Port: b.Port, User: b.User, UseAgent: sp.Agent}
		if b.KeyFile != "" {
			cfg.Bastion.KeyFiles = []string{p.Resolve(b.KeyFile)}
		}
	}
	return cfg
}

func selectNodes(p *profile.Profile, names []string) ([]profile.Node, error) {
	if len(names) == 0 {
		return p.Spec.Nodes, nil
	}
	var out []profile.Node
	for _, n := range p.Spec.Nodes {
		if slices.Contains(names, n.Name) {
			out = append(out, n)
		}
	}
	for _, name := range names {
		if _, ok := p.Node(name); !ok {
			var all []string
			for _, n := range p.Spec.Nodes {
				all = append(all, n.Name)
			}
			return nil, fmt.Errorf("unknown node %q; the profile's nodes are: %s", name, strings.Join(all, ", "))
		}
	}
	return out, nil
}

func (s *session) newRun(id string, secrets engine.Secrets) *engine.Run {
	return engine.NewRun(engine.RunConfig{ID: id, Profile: s.p, Nodes: s.targets, Access: s.access, Secrets: secrets})
}

// Plan shows what apply would change. It changes nothing: not the nodes, not
// the state repo, not known_hosts (new host keys are never accepted here).
func Plan(ctx context.Context, o Options) ([]engine.Plan, error) {
	o.AcceptNewHostKeys = false
	p, err := Load(o)
	if err != nil {
		return nil, err
	}
	s, err := open(o, p)
	if err != nil {
		return nil, err
	}
	defer s.close()
	return s.eng.PlanAll(ctx, s.newRun("plan", planSecrets{s.readState()}), s.phases)
}

// Apply runs the profile's phases against its nodes and commits the run.
// interrupt stops the run between steps; ctx aborts at once. A failed run
// is committed too and returned with an error.
func Apply(ctx, interrupt context.Context, o Options) (*Result, error) {
	p, err := Load(o)
	if err != nil {
		return nil, err
	}
	return apply(ctx, interrupt, o, p, "apply", 0)
}

func apply(ctx, interrupt context.Context, o Options, p *profile.Profile, command string, rollbackOf int) (*Result, error) {
	s, err := open(o, p)
	if err != nil {
		return nil, err
	}
	defer s.close()
	// With an existing state repo, take its lock before planning, so the
	// plan a person confirms is not raced by another apply. A first run
	// creates the repo only once the plan is confirmed.
	exists, err := state.Exists(s.stateDir())
	if err != nil {
		return nil, err
	}
	if exists {
		if err := s.openState(); err != nil {
			return nil, err
		}
	}
	var confirmed []engine.Plan
	if o.Confirm != nil {
		plans, err := s.eng.PlanAll(ctx, s.newRun("plan", planSecrets{s.repo}), s.phases)
		if err != nil {
			return nil, fmt.Errorf("planning: %w", err)
		}
		ok, err := o.Confirm(plans)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, ErrAborted
		}
		confirmed = plans
	}
	if s.repo == nil {
		if err := s.openState(); err != nil {
			return nil, err
		}
	}
	number, err := s.repo.NextRunNumber()
	if err != nil {
		return nil, err
	}
	run := s.newRun(fmt.Sprint(number), s.repo)
	rec := &state.Record{
		Number: number, Command: command, RollbackOf: rollbackOf,
		Who: state.Who(), Version: buildinfo.Version(), Started: time.Now().UTC(),
		ProfileSHA256: sha256hex(p.Raw), Nodes: run.NodeNames(), OnlyPhases: o.Only,
	}
	host, _ := os.Hostname()
	rec.Host = host
	if p.Spec.Identity.TPM == profile.TPMInsecureSkip {
		rec.Warnings = append(rec.Warnings, "spec.identity.tpm is insecure-skip: nodes without a TPM are accepted and their identities are not bound to hardware")
	}
	res := s.eng.Apply(ctx, interrupt, run, s.phases, confirmed)
	rec.Finished = time.Now().UTC()
	rec.Duration = rec.Finished.Sub(rec.Started)
	rec.Outcome, rec.Error, rec.Phases = res.Outcome, res.Error, res.Phases
	rec.Facts = run.AllFacts()
	// Host keys accepted as new are only trusted in memory until written
	// (ssh.Pool.TrustHostKeys); this confirmed run writes them now.
	if err := s.pool.TrustHostKeys(s.pool.PendingHostKeys()...); err != nil {
		rec.Warnings = append(rec.Warnings, err.Error())
		o.notice("warning: %v", err)
	}
	for _, k := range s.pool.AcceptedHostKeys() {
		rec.AcceptedHostKeys = append(rec.AcceptedHostKeys, fmt.Sprintf("%s (%s) %s %s", k.Host, k.Addr, k.KeyType, k.Fingerprint))
	}
	hash, err := s.repo.Commit(state.Snapshot{Record: rec, Profile: p.Raw, KnownHosts: s.knownHosts(), Rendered: run.Rendered(), Nodes: rec.Nodes})
	if err != nil {
		return nil, fmt.Errorf("committing run %d to the state repo (the next run commits what was written): %w", number, err)
	}
	out := &Result{Record: rec, Commit: hash.String()[:12], StateDir: s.repo.Dir()}
	if r := p.Spec.State.Remote; r != nil {
		// The run is over; a wedged remote must not hold the process forever.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pushTimeout)
		defer cancel()
		err := s.repo.Push(pctx, state.Remote{URL: r.URL, KeyFile: p.Resolve(r.KeyFile), KnownHostsFile: p.Resolve(r.KnownHosts)})
		if err != nil {
			o.notice("warning: run %d is committed locally but was not pushed: %v", number, err)
		}
	}
	if rec.Failed() {
		return out, fmt.Errorf("run %d %s: %s", number, rec.Outcome, rec.Error)
	}
	return out, nil
}

// knownHosts is what the run trusted: the known_hosts lines of the profile's
// nodes and bastion, not every host the file may hold (it may be the user's
// own ~/.ssh/known_hosts). nil leaves the committed file as it was.
func (s *session) knownHosts() []byte {
	data, err := os.ReadFile(s.p.Resolve(s.p.Spec.SSH.KnownHosts))
	if err != nil {
		return nil
	}
	var hosts []ssh.Host
	for _, h := range s.access.hosts {
		hosts = append(hosts, h)
	}
	if b := s.p.Spec.SSH.Bastion; b != nil {
		hosts = append(hosts, ssh.Host{Address: b.Address, Port: b.Port})
	}
	return ssh.SelectKnownHosts(data, hosts)
}

func sha256hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
