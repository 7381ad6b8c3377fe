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

// Load reads and validates the profile.
func Load(o Options) (*profile.Profile, error) {
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

// session is what one command holds open: profile, state repo, connections.
type session struct {
	o       Options
	p       *profile.Profile
	repo    *state.Repo
	pool    *ssh.Pool
	access  *nodeAccess
	targets []profile.Node
	phases  []engine.Phase
	eng     *engine.Engine
}

func open(o Options, p *profile.Profile, locked bool) (*session, error) {
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
	keys, err := state.LoadKeys(p.Spec.State.Recipients, o.IdentityFile)
	if err != nil {
		return nil, fmt.Errorf("state repo keys: %w", err)
	}
	for _, n := range keys.Notices {
		o.notice("warning: %s", n)
	}
	if s.repo, err = state.Open(p.Resolve(p.Spec.State.Repo), keys); err != nil {
		return nil, err
	}
	if locked {
		if err := s.repo.Lock(); err != nil {
			return nil, err
		}
		if did, err := s.repo.Recover(); err != nil {
			s.repo.Unlock()
			return nil, err
		} else if did {
			o.notice("note: committed files an interrupted run had left in %s", s.repo.Dir())
		}
	}
	cfg := sshConfig(p, o)
	if s.pool, err = ssh.NewPool(cfg); err != nil {
		s.close()
		return nil, inputErr(fmt.Errorf("ssh: %w", err))
	}
	s.access = &nodeAccess{pool: s.pool, hosts: map[string]ssh.Host{}, bins: newBinaries(o.AgentBinaries), probes: map[string]agent.Status{}}
	for _, n := range p.Spec.Nodes {
		s.access.hosts[n.Name] = ssh.Host{Name: n.Name, Address: n.Address, Port: n.Port}
	}
	return s, nil
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

func (s *session) newRun(id string) *engine.Run {
	return engine.NewRun(engine.RunConfig{ID: id, Profile: s.p, Nodes: s.targets, Access: s.access, Secrets: s.repo})
}

// Plan shows what apply would change, touching no node.
func Plan(ctx context.Context, o Options) ([]engine.Plan, error) {
	p, err := Load(o)
	if err != nil {
		return nil, err
	}
	s, err := open(o, p, false)
	if err != nil {
		return nil, err
	}
	defer s.close()
	return s.eng.PlanAll(ctx, s.newRun("plan"), s.phases)
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
	s, err := open(o, p, true)
	if err != nil {
		return nil, err
	}
	defer s.close()
	number, err := s.repo.NextRunNumber()
	if err != nil {
		return nil, err
	}
	run := s.newRun(fmt.Sprint(number))
	if o.Confirm != nil {
		plans, err := s.eng.PlanAll(ctx, s.newRun(fmt.Sprint(number)), s.phases)
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
	}
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
	res := s.eng.Apply(ctx, interrupt, run, s.phases)
	rec.Finished = time.Now().UTC()
	rec.Duration = rec.Finished.Sub(rec.Started)
	rec.Outcome, rec.Error, rec.Phases = res.Outcome, res.Error, res.Phases
	rec.Facts = run.AllFacts()
	for _, k := range s.pool.AcceptedHostKeys() {
		rec.AcceptedHostKeys = append(rec.AcceptedHostKeys, fmt.Sprintf("%s (%s) %s %s", k.Host, k.Addr, k.KeyType, k.Fingerprint))
	}
	knownHosts, err := os.ReadFile(p.Resolve(p.Spec.SSH.KnownHosts))
	if err != nil {
		knownHosts = nil // not created: no key was accepted
	}
	var ran []string
	for _, ph := range res.Phases {
		if ph.Outcome != engine.OutcomeSkipped {
			ran = append(ran, ph.Name)
		}
	}
	hash, err := s.repo.Commit(state.Snapshot{Record: rec, Profile: p.Raw, KnownHosts: knownHosts, Rendered: run.Rendered(), Phases: ran})
	if err != nil {
		return nil, fmt.Errorf("committing run %d to the state repo (the nodes were changed; rerun to record it): %w", number, err)
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

func sha256hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
