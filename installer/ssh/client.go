package ssh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// Client is one SSH connection to one host, reused for every command and
// upload. It is safe for concurrent use.
type Client struct {
	cfg     Config
	host    Host
	addr    string
	name    string
	user    string
	log     *slog.Logger
	conn    *ssh.Client
	bastion *Client // the connection this one is tunnelled through, if any
	owns    bool    // Close also closes bastion

	accepted []AcceptedKey

	dead     chan struct{} // closed when the connection is gone
	deadOnce sync.Once
	deadErr  error // why; written before dead is closed
	closed   atomic.Bool

	noiseMu sync.Mutex
	noise   *LoginNoise // the first login noise seen on this connection
}

// connector dials clients. It holds what is shared by all the connections of
// a run: the host key checker and the parsed credentials.
type connector struct {
	cfg         Config
	hk          *hostKeyChecker
	creds       *credentials
	bastionCred *credentials
}

func newConnector(cfg Config) (*connector, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	hk, err := newHostKeyChecker(cfg.KnownHostsFile, cfg.AcceptNewHostKeys, cfg.HashKnownHosts, cfg.Logger)
	if err != nil {
		return nil, err
	}
	cr, err := loadCredentials(cfg.User, cfg.KeyFiles, cfg.UseAgent, cfg.AgentSocket)
	if err != nil {
		return nil, err
	}
	k := &connector{cfg: cfg, hk: hk, creds: cr}
	if b := cfg.Bastion; b != nil {
		k.bastionCred, err = loadCredentials(b.User, b.KeyFiles, b.UseAgent, b.AgentSocket)
		if err != nil {
			return nil, err
		}
	}
	return k, nil
}

// Connect opens a connection to h (through cfg.Bastion if set). Network
// errors are retried as configured (then *DialError); the peer's decisions
// are returned at once: *HostKeyError, *AuthError, *ForwardingError (the
// bastion refuses to forward), *NegotiationError; local problems too:
// *KeyFileError, *KnownHostsFileError. Unknown host keys accepted with
// Config.AcceptNewHostKeys are trusted for this connection only (see
// Client.AcceptedHostKeys); use a Pool to write them to known_hosts.
func Connect(ctx context.Context, cfg Config, h Host) (*Client, error) {
	k, err := newConnector(cfg)
	if err != nil {
		return nil, err
	}
	var via viaFunc
	var bastion *Client // the latest bastion connection, owned by the client
	if k.cfg.Bastion != nil {
		via = func(ctx context.Context) (*Client, error) {
			if bastion != nil && bastion.Alive() {
				return bastion, nil
			}
			if bastion != nil {
				bastion.Close()
			}
			b, err := k.dialBastion(ctx)
			if err != nil {
				return nil, err
			}
			bastion = b
			return b, nil
		}
	}
	c, err := k.dial(ctx, h, k.creds, via)
	if err != nil {
		if bastion != nil {
			bastion.Close()
		}
		return nil, err
	}
	if c.bastion != nil {
		c.owns = true
		c.accepted = append(slices.Clone(c.bastion.accepted), c.accepted...)
	}
	return c, nil
}

// viaFunc returns a live bastion connection, dialing it if needed.
type viaFunc func(ctx context.Context) (*Client, error)

// dialBastion connects to the bastion. Its errors name it (its Host is
// "bastion NAME").
func (k *connector) dialBastion(ctx context.Context) (*Client, error) {
	return k.dial(ctx, k.cfg.Bastion.host(), k.bastionCred, nil)
}

// dial connects with retries on network errors. With a bastion, each
// attempt asks via for a live bastion connection (so a bastion that died is
// redialed); errors reaching the bastion itself are final here, as they were
// already retried.
func (k *connector) dial(ctx context.Context, h Host, cr *credentials, via viaFunc) (*Client, error) {
	log := k.cfg.Logger.With("host", h.String(), "addr", h.Addr())
	backoff := k.cfg.RetryBackoff
	for attempt := 1; ; attempt++ {
		var b *Client
		if via != nil {
			var err error
			if b, err = via(ctx); err != nil {
				return nil, err
			}
		}
		c, err := k.dialOnce(ctx, h, cr, b, log)
		if err == nil {
			if attempt > 1 {
				log.Info("ssh connected after retries", "attempts", attempt)
			}
			return c, nil
		}
		var ne *netError
		if !errors.As(err, &ne) {
			return nil, err
		}
		if ctx.Err() != nil || attempt > k.cfg.DialRetries {
			de := &DialError{Host: h.String(), Addr: h.Addr(), Attempts: attempt, Err: ne.err}
			if b != nil {
				de.Via = b.name
			}
			return nil, de
		}
		wait := backoff + rand.N(backoff/4+1)
		log.Warn("ssh connection attempt failed, retrying", "attempt", attempt, "retry_in", wait, "err", ne.err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, &DialError{Host: h.String(), Addr: h.Addr(), Attempts: attempt, Err: fmt.Errorf("%w (last error: %s)", ctx.Err(), trimSSH(ne.err))}
		case <-t.C:
		}
		backoff = min(backoff*2, maxRetryBackoff)
	}
}

// classify turns a failed handshake into the error to return, by the state
// the handshake reached, never by message text: before the host key was
// verified, anything but a refused key or an algorithm mismatch is the
// network (retried); after it, a network error is still the network, and
// anything else is the server's decision about our credentials (an
// *AuthError, never retried: repeated failures trip lockouts).
func (k *connector) classify(ctx, dctx context.Context, h Host, cr *credentials, err error, refused *HostKeyError, verified bool, tr *authTrace) error {
	addr := h.Addr()
	var kfe *KeyFileError
	switch {
	case refused != nil:
		return refused
	case errors.As(err, &kfe):
		return kfe
	}
	if he := k.hk.noCommonAlgorithm(h.String(), addr, err); he != nil {
		return he
	}
	var ne *ssh.AlgorithmNegotiationError
	if errors.As(err, &ne) {
		return &NegotiationError{Host: h.String(), Addr: addr, Err: ne}
	}
	if ctx.Err() != nil {
		return errorf("ssh: connecting to %s (%s): %w", h, addr, ctx.Err())
	}
	if dctx.Err() != nil {
		stage := "TCP connected, no SSH answer in time"
		switch {
		case tr.began.Load():
			stage = "during authentication"
		case verified:
			stage = "after the host key was verified"
		}
		return &netError{fmt.Errorf("ssh handshake timed out after %s (%s)", k.cfg.DialTimeout, stage)}
	}
	if verified && !isNetworkError(err) {
		offered, avail := int(tr.offered.Load()), int(tr.available.Load())
		return &AuthError{
			Host: h.String(), Addr: addr, User: cr.user, Offered: cr.describe(),
			KeysOffered: offered, KeysAvailable: avail, CutShort: offered < avail, Err: err,
		}
	}
	return &netError{err}
}

// isNetworkError: the connection broke (reset, closed, timed out), as
// opposed to the peer deciding something.
func isNetworkError(err error) bool {
	var ne net.Error
	var errno syscall.Errno
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.As(err, &ne) || errors.As(err, &errno)
}

// netError marks an error worth retrying: the network, not the peer's
// decision, made the attempt fail.
type netError struct{ err error }

func (e *netError) Error() string { return e.err.Error() }
func (e *netError) Unwrap() error { return e.err }

func (k *connector) dialOnce(ctx context.Context, h Host, cr *credentials, via *Client, log *slog.Logger) (*Client, error) {
	addr := h.Addr()
	dctx, cancel := context.WithTimeout(ctx, k.cfg.DialTimeout)
	defer cancel()

	var conn net.Conn
	var err error
	if via != nil {
		conn, err = via.conn.DialContext(dctx, "tcp", addr)
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) && (oce.Reason == ssh.Prohibited || oce.Reason == ssh.UnknownChannelType) {
			// The bastion's policy, not the network: retrying cannot help.
			return nil, &ForwardingError{Bastion: via.name, Host: h.String(), Addr: addr, Err: oce}
		}
	} else {
		conn, err = k.cfg.Dial(dctx, "tcp", addr)
		if err == nil {
			conn = withQuickAck(conn)
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, errorf("ssh: connecting to %s (%s): %w", h, addr, ctx.Err())
		}
		return nil, &netError{err}
	}
	// Bound the handshake by the dial timeout and the caller's context. (The
	// channel of a bastion connection has no deadlines: close it instead.)
	stop := context.AfterFunc(dctx, func() { conn.Close() })
	defer stop()

	tr := &authTrace{}
	auth, release, err := cr.authMethods(tr)
	if err != nil {
		conn.Close()
		return nil, err
	}
	defer release()

	var refused *HostKeyError
	var accepted []AcceptedKey
	var verified bool
	ccfg := &ssh.ClientConfig{
		User:              cr.user,
		Auth:              auth,
		HostKeyCallback:   k.hk.callback(h.String(), &refused, &accepted, &verified),
		HostKeyAlgorithms: k.hk.algorithms(lookupName(addr)),
		ClientVersion:     "SSH-2.0-castellan",
		Timeout:           k.cfg.DialTimeout,
	}
	sconn, chans, reqs, err := ssh.NewClientConn(conn, addr, ccfg)
	if err != nil {
		conn.Close()
		return nil, k.classify(ctx, dctx, h, cr, err, refused, verified, tr)
	}
	if !stop() {
		sconn.Close()
		return nil, &netError{fmt.Errorf("ssh handshake timed out after %s", k.cfg.DialTimeout)}
	}
	c := &Client{
		cfg:      k.cfg,
		host:     h,
		addr:     addr,
		name:     h.String(),
		user:     cr.user,
		log:      log,
		conn:     ssh.NewClient(sconn, chans, reqs),
		bastion:  via,
		accepted: accepted,
		dead:     make(chan struct{}),
	}
	go func() {
		err := c.conn.Wait()
		if err == nil || errors.Is(err, io.EOF) {
			err = errors.New("connection closed by the peer (EOF)")
		}
		c.markDead(err)
	}()
	if via != nil {
		go func() {
			select {
			case <-via.dead:
				c.markDead(fmt.Errorf("the connection to %s was lost: %w", bastionLabel(via.name), via.deathCause()))
			case <-c.dead:
			}
		}()
	}
	if k.cfg.KeepaliveInterval > 0 {
		go c.keepalive(k.cfg.KeepaliveInterval, k.cfg.KeepaliveCountMax)
	}
	log.Debug("ssh connected", "user", cr.user, "server_version", string(sconn.ServerVersion()))
	return c, nil
}

// markDead records why the connection is gone and closes it.
func (c *Client) markDead(err error) {
	c.deadOnce.Do(func() {
		if c.closed.Load() {
			err = errors.New("client closed")
		}
		c.deadErr = err
		close(c.dead)
		c.conn.Close()
		if !c.closed.Load() {
			c.log.Warn("ssh connection lost", "err", err)
		}
	})
}

func (c *Client) deathCause() error {
	select {
	case <-c.dead:
		return c.deadErr
	default:
		return nil
	}
}

// keepalive sends keepalive@openssh.com requests; countMax unanswered ones in
// a row mean the peer is dead, and the connection is closed so that every
// session using it fails at once.
func (c *Client) keepalive(interval time.Duration, countMax int) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var outstanding atomic.Int32
	for {
		select {
		case <-c.dead:
			return
		case <-t.C:
		}
		if n := outstanding.Load(); int(n) >= countMax {
			c.markDead(fmt.Errorf("no answer to %d keepalives over %s", n, time.Duration(n)*interval))
			return
		}
		outstanding.Add(1)
		go func() {
			if _, _, err := c.conn.SendRequest("keepalive@openssh.com", true, nil); err != nil {
				c.markDead(fmt.Errorf("keepalive: %w", err))
				return
			}
			outstanding.Store(0)
		}()
	}
}

// Alive reports whether the connection is still usable.
func (c *Client) Alive() bool {
	select {
	case <-c.dead:
		return false
	default:
		return true
	}
}

// Host is the host this client is connected to.
func (c *Client) Host() Host { return c.host }

// AcceptedHostKeys lists the host keys recorded into known_hosts while this
// client (and its bastion) connected, because AcceptNewHostKeys was set.
func (c *Client) AcceptedHostKeys() []AcceptedKey { return slices.Clone(c.accepted) }

// Close closes the connection (and the bastion connection when Connect
// opened it for this client).
func (c *Client) Close() error {
	c.closed.Store(true)
	err := c.conn.Close()
	c.markDead(errors.New("client closed"))
	if c.owns && c.bastion != nil {
		c.bastion.Close()
	}
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// lost builds the error for an operation that failed because the
// connection died, or returns nil if the connection still looks alive after
// a short grace period (the transport may notice a moment later than the
// session).
func (c *Client) lost(op string, grace time.Duration) error {
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-c.dead:
	case <-t.C:
		return nil
	}
	return &ConnectionLostError{Host: c.name, Addr: c.addr, Command: op, Err: c.deadErr}
}
