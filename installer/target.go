package installer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"castellan/installer/engine"
	"castellan/installer/profile"
	"castellan/installer/ssh"
	"castellan/installer/state"
)

// LoadProfile reads and validates the profile at path. Errors are
// *InputError: they name file:line:column and what to do.
func LoadProfile(path string, acceptNewHostKeys bool) (*profile.Profile, error) {
	if path == "" {
		return nil, inputErr(errors.New("no profile: give one with -f PROFILE (castellan profile init writes a starter)"))
	}
	p, err := profile.LoadContext(context.Background(), path, profile.ValidateOptions{AcceptNewHostKeys: acceptNewHostKeys})
	return p, inputErr(err)
}

// target is what a verb acts on: a profile, the nodes and phases selected.
type target struct {
	cfg     *Config
	profile *profile.Profile
	nodes   []profile.Node
	eng     *engine.Engine
	phases  []engine.Phase
	// inputs are what the command line asked of phases (engine.Inputs).
	inputs engine.Inputs
}

// newTarget selects nodes and phases (nil: all; an empty selection is an
// error).
func newTarget(cfg *Config, p *profile.Profile, only, nodes []string) (*target, error) {
	t := &target{cfg: cfg, profile: p, eng: &engine.Engine{Phases: Phases()}}
	var err error
	if t.nodes, err = selectNodes(p, nodes); err != nil {
		return nil, inputErr(err)
	}
	if t.phases, err = t.eng.Select(only); err != nil {
		return nil, inputErr(err)
	}
	return t, nil
}

func selectNodes(p *profile.Profile, names []string) ([]profile.Node, error) {
	all := make([]string, len(p.Spec.Nodes))
	for i, n := range p.Spec.Nodes {
		all[i] = n.Name
	}
	if names == nil {
		return p.Spec.Nodes, nil
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no node selected; the profile's nodes are: %s", strings.Join(all, ", "))
	}
	for _, name := range names {
		if strings.TrimSpace(name) == "" {
			return nil, fmt.Errorf("empty node name; the profile's nodes are: %s", strings.Join(all, ", "))
		}
		if _, ok := p.Node(name); !ok {
			return nil, fmt.Errorf("unknown node %q; the profile's nodes are: %s", name, strings.Join(all, ", "))
		}
	}
	var out []profile.Node
	for _, n := range p.Spec.Nodes {
		if slices.Contains(names, n.Name) {
			out = append(out, n)
		}
	}
	return out, nil
}

func (t *target) stateDir() string { return t.profile.Resolve(t.profile.Spec.State.Repo) }

// connect prepares the connections to every node of the profile (dialed
// lazily, one per node). With acceptNew, unknown host keys are accepted in
// memory and only written to known_hosts when a confirmed run trusts them.
func (t *target) connect(acceptNew bool) (*ssh.Pool, *nodeAccess, error) {
	pool, err := ssh.NewPool(sshConfig(t.profile, t.cfg, acceptNew))
	if err != nil {
		return nil, nil, inputErr(err)
	}
	for _, w := range pool.KnownHostsWarnings() {
		t.cfg.notice("warning: %s", w)
	}
	hosts := map[string]ssh.Host{}
	for _, n := range t.profile.Spec.Nodes {
		hosts[n.Name] = ssh.Host{Name: n.Name, Address: n.Address, Port: n.Port}
	}
	return pool, newNodeAccess(pool, hosts, newBinaries(t.cfg.AgentBinaries)), nil
}

func sshConfig(p *profile.Profile, cfg *Config, acceptNew bool) ssh.Config {
	sp := p.Spec.SSH
	c := ssh.Config{
		User:              sp.User,
		UseAgent:          sp.Agent,
		KnownHostsFile:    p.Resolve(sp.KnownHosts),
		AcceptNewHostKeys: acceptNew,
		Sudo:              profile.On(sp.Sudo),
		DialTimeout:       sp.ConnectTimeout.Duration,
		CommandTimeout:    sp.CommandTimeout.Duration,
		Dial:              cfg.Dial,
		Logger:            cfg.logger(),
	}
	if sp.KeyFile != "" {
		c.KeyFiles = []string{p.Resolve(sp.KeyFile)}
	}
	if b := sp.Bastion; b != nil {
		c.Bastion = &ssh.Bastion{Address: b.Address, Port: b.Port, User: b.User, UseAgent: sp.Agent}
		if b.KeyFile != "" {
			c.Bastion.KeyFiles = []string{p.Resolve(b.KeyFile)}
		}
	}
	return c
}

// readState opens the profile's state repo read-only when it exists; nil
// when there is none yet. A directory that is not a castellan state repo is
// bad input. Secrets are readable when this machine has the identity;
// otherwise reading one fails and the user is told why.
func (t *target) readState(create bool) (*state.Repo, error) {
	dir := t.stateDir()
	if err := state.Check(dir); err != nil {
		return nil, inputErr(fmt.Errorf("spec.state.repo: %w", err))
	}
	ok, err := state.Exists(dir)
	if err != nil || !ok {
		return nil, err
	}
	keys, err := state.LoadKeys(t.profile.Spec.State.Recipients, t.cfg.IdentityFile, create)
	if err != nil {
		t.cfg.notice("note: %v", err)
		keys = nil
	}
	return state.Open(dir, keys)
}

// storeRef is the engine's view of the state repo: empty while there is
// none, read-only until the run is confirmed.
type storeRef struct {
	repo     *state.Repo
	writable bool
}

func (s *storeRef) Secret(name string) ([]byte, bool, error) {
	if s.repo == nil {
		return nil, false, nil
	}
	return s.repo.Secret(name)
}

func (s *storeRef) Data(name string) ([]byte, bool, error) {
	if s.repo == nil {
		return nil, false, nil
	}
	return s.repo.Data(name)
}

func (s *storeRef) PutSecret(name string, value []byte) error {
	if !s.writable {
		return fmt.Errorf("storing secret %s: nothing is stored before the run is confirmed", name)
	}
	return s.repo.PutSecret(name, value)
}

func (s *storeRef) PutData(name string, value []byte) error {
	if !s.writable {
		return fmt.Errorf("storing %s: nothing is stored before the run is confirmed", name)
	}
	return s.repo.PutData(name, value)
}

func (t *target) session(id string, access engine.NodeAccess, store engine.Store) *engine.Session {
	return engine.NewSession(engine.SessionConfig{
		ID: id, Profile: t.profile, Nodes: t.nodes, Access: access, Store: store,
		Sink: t.cfg.sink(), Logger: t.cfg.logger(), Parallelism: t.cfg.Parallelism, Interrupt: t.cfg.Interrupt,
		Inputs: t.inputs,
	})
}

func nodeNames(nodes []profile.Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Name
	}
	return out
}
