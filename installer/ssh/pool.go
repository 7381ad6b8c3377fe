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
		return nil, errors.New("ssh: pool is closed")
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
		return nil, errors.New("ssh: pool is closed")
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

// AcceptedHostKeys lists every host key recorded into known_hosts by this
// pool (nodes and bastion), for the caller to commit.
func (p *Pool) AcceptedHostKeys() []AcceptedKey { return p.k.hk.allAccepted() }

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
