package ssh

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Pool keeps one connection per host for the whole run. Connections (and
// the shared bastion connection) are dialed lazily on first use and redialed
// when they died, so a rerun after a ConnectionLostError succeeds. It is safe
// for concurrent use.
type Pool struct {
	k *connector

	mu      sync.Mutex
	closed  bool
	entries map[string]*poolEntry
	bastion poolEntry
}

var errPoolClosed = errors.New("ssh: pool is closed")

type poolEntry struct {
	mu sync.Mutex
	c  *Client
}

// NewPool validates cfg, reads the key files and known_hosts, and returns an
// empty pool.
func NewPool(cfg Config) (*Pool, error) {
	k, err := newConnector(cfg)
	if err != nil {
		return nil, err
	}
	return &Pool{k: k, entries: make(map[string]*poolEntry)}, nil
}

func poolKey(h Host) string { return h.String() + "\x00" + h.Addr() }

// Client returns the live connection to h, dialing it if needed. Concurrent
// callers for the same host share one dial.
func (p *Pool) Client(ctx context.Context, h Host) (*Client, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errPoolClosed
	}
	e := p.entries[poolKey(h)]
	if e == nil {
		e = &poolEntry{}
		p.entries[poolKey(h)] = e
	}
	p.mu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.c != nil && e.c.Alive() {
		return e.c, nil
	}
	if e.c != nil {
		p.k.cfg.Logger.Info("ssh reconnecting", "host", h.String(), "reason", e.c.deathCause())
		e.c.Close()
		e.c = nil
	}
	var via viaFunc
	if p.k.cfg.Bastion != nil {
		via = p.bastionClient
	}
	c, err := p.k.dial(ctx, h, p.k.creds, via)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return nil, errPoolClosed
	}
	e.c = c
	return c, nil
}

func (p *Pool) bastionClient(ctx context.Context) (*Client, error) {
	e := &p.bastion
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.c != nil && e.c.Alive() {
		return e.c, nil
	}
	if e.c != nil {
		e.c.Close()
		e.c = nil
	}
	c, err := p.k.dialBastion(ctx)
	if err != nil {
		return nil, err
	}
	e.c = c
	return c, nil
}

// Run runs cmd on h over the pooled connection.
func (p *Pool) Run(ctx context.Context, h Host, cmd Cmd) (Result, error) {
	c, err := p.Client(ctx, h)
	if err != nil {
		return Result{}, err
	}
	return c.Run(ctx, cmd)
}

// Upload uploads u to h over the pooled connection.
func (p *Pool) Upload(ctx context.Context, h Host, u Upload) error {
	c, err := p.Client(ctx, h)
	if err != nil {
		return err
	}
	return c.Upload(ctx, u)
}

// PendingHostKeys lists the host keys (nodes and bastion) that known_hosts
// did not know and this pool accepted in memory because
// Config.AcceptNewHostKeys is set, in the order first seen. They are
// trusted by this pool only (pinned: a later connection to the same
// address must show the same key) and written nowhere until TrustHostKeys.
func (p *Pool) PendingHostKeys() []AcceptedKey { return p.k.hk.pendingKeys() }

// PendingHostKey returns the key accepted in memory for h (a node or the
// bastion: Config.Bastion's Host), if any.
func (p *Pool) PendingHostKey(h Host) (AcceptedKey, bool) {
	return p.k.hk.pendingKey(KnownHostsName(h))
}

// BastionHost is the Host of Config.Bastion (ok false without one), for
// PendingHostKey.
func (p *Pool) BastionHost() (Host, bool) {
	if p.k.cfg.Bastion == nil {
		return Host{}, false
	}
	return p.k.cfg.Bastion.host(), true
}

// TrustHostKeys writes keys, which must come from PendingHostKeys, to
// Config.KnownHostsFile (created if missing), as the user confirmed them.
// The file is read again first: a key it already holds is not written
// twice, and a key for a host that the file now pins to another key is
// refused with a *HostKeyError (Changed), writing nothing. The new lines
// (hashed when the file's entries are, or with Config.HashKnownHosts) are
// appended with one write; if it fails, the file is cut back to its
// previous size and a *KnownHostsFileError (Op "write") is returned.
// Trusted keys leave PendingHostKeys for AcceptedHostKeys.
func (p *Pool) TrustHostKeys(keys ...AcceptedKey) error { return p.k.hk.trust(keys) }

// AcceptedHostKeys lists the host keys this pool wrote to known_hosts with
// TrustHostKeys (nodes and bastion), for the caller to record.
func (p *Pool) AcceptedHostKeys() []AcceptedKey { return p.k.hk.trustedKeys() }

// KnownHostsWarnings lists the lines of known_hosts that were skipped
// because they cannot be parsed (file:line and why), for the caller to
// show. They never stop a run.
func (p *Pool) KnownHostsWarnings() []KnownHostsWarning { return p.k.hk.knownHostsWarnings() }

// LoginNoise returns, for every host this pool has a connection to, the
// login noise first seen on it (see Result.LoginNoise), by host name.
func (p *Pool) LoginNoise() map[string]*LoginNoise {
	p.mu.Lock()
	entries := make([]*poolEntry, 0, len(p.entries))
	for _, e := range p.entries {
		entries = append(entries, e)
	}
	p.mu.Unlock()
	out := map[string]*LoginNoise{}
	for _, e := range entries {
		e.mu.Lock()
		if e.c != nil {
			if n := e.c.LoginNoise(); n != nil {
				out[e.c.name] = n
			}
		}
		e.mu.Unlock()
	}
	return out
}

// Close closes every connection. The pool cannot be used afterwards.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	entries := p.entries
	p.entries = nil
	p.mu.Unlock()
	var errs []error
	for _, e := range entries {
		e.mu.Lock()
		if e.c != nil {
			if err := e.c.Close(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", e.c.name, err))
			}
		}
		e.mu.Unlock()
	}
	p.bastion.mu.Lock()
	if p.bastion.c != nil {
		p.bastion.c.Close()
	}
	p.bastion.mu.Unlock()
	return errors.Join(errs...)
}
