// Package ssh is castellan's transport: every command and every file that
// reaches a node goes through it. It is built on golang.org/x/crypto/ssh.
//
// # Connections
//
// One connection per node for the whole run (see Pool), kept alive with
// keepalive@openssh.com requests that also detect a dead peer; through a
// bastion with ProxyJump semantics. Handshake failures are classified by
// the state the handshake reached (TCP, host key verified, authentication
// begun, keys offered), never by message text: only network errors are
// retried (then *DialError); the peer's decisions are returned at once:
// *HostKeyError, *AuthError (how many keys were offered, and whether sshd
// cut it short at MaxAuthTries), *ForwardingError (the bastion's sshd
// forbids forwarding), *NegotiationError; local problems too:
// *KeyFileError, *KnownHostsFileError. Key files are offered before the
// agent's other keys; an encrypted key file is used through the ssh-agent's
// signer for its public key. CheckKeyFile checks a key file offline.
//
// # Host keys
//
// Host keys are always checked against a known_hosts file, read line by
// line the way OpenSSH reads it (ReadKnownHosts): hashed names, wildcards,
// negations, [host]:port, @revoked, and @cert-authority (a host certificate
// signed by a trusted CA is accepted; a plain key where only a CA is
// trusted is unknown, not changed). A line that cannot be parsed is skipped
// with a warning naming file:line (Pool.KnownHostsWarnings), never an
// error for the whole file. The host key algorithms offered are the ones
// known_hosts holds for the host, so a host pinned by its ed25519 key is
// not refused because the server would have preferred ecdsa.
//
// Unknown keys are refused unless Config.AcceptNewHostKeys is set. Then
// nothing is written during a connection: an unknown key is accepted in
// memory for the Pool only and pinned (every later connection of the pool
// to that address must present the same key), listed by
// Pool.PendingHostKeys and Pool.PendingHostKey (the bastion's too), and
// written to known_hosts only by Pool.TrustHostKeys, once the user
// confirmed: appended in one write, hashed when the file's entries are (or
// with Config.HashKnownHosts). A changed key is always refused, also when
// the file changed between accepting and trusting. SelectKnownHosts picks
// the lines (keys, CA and revocation lines) a run relied on, to commit.
//
// # Commands
//
// Commands are argv vectors, never strings built from user values. sshd
// runs every exec request through the user's login shell; the request is
// `exec /bin/sh -c WRAPPER sh MARK MODE INNER ARGV...`, quoted so that any
// login shell passes it on byte-exact: sh, dash, bash, ksh, mksh, zsh,
// fish and csh/tcsh. The wrapper (wrapperScript) prints a per-call random
// marker before it execs the command, so whatever the login shell's
// startup files, motd or sudo print is dropped from the command's output,
// and reported (Result.LoginNoise, Client.LoginNoise, Pool.LoginNoise) with
// the shell and the files it reads. A login shell that never runs the
// command (nologin, an rc file that exits) is a *LoginShellError.
//
// Privileged commands and uploads (Cmd.Sudo, Upload.Sudo) decide on the
// node, in the same exec: a root login (uid 0) runs them directly, never
// through sudo; otherwise `sudo -n` when Config.Sudo allows it. Anything
// else is a *SudoError with the cause and the fix: sudo off, not
// installed, refused (password required or not allowed), or requiretty
// (found by retrying sudo with a terminal from script(1), only after it
// refused). Client.CheckLogin checks all this on demand; the first command
// returns the same errors, so a run needs no extra exec for it.
//
// Uploads go over SFTP (sftp-server started through the same wrapper, so a
// noisy login shell cannot corrupt the stream) to a temporary name, are
// verified with sha256sum on the node, get their owner and mode, and are
// renamed into place atomically.
package ssh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"
)

// Defaults applied to a zero Config field.
const (
	DefaultDialTimeout       = 15 * time.Second
	DefaultCommandTimeout    = 10 * time.Minute
	DefaultKeepaliveInterval = 15 * time.Second
	DefaultKeepaliveCountMax = 3
	DefaultDialRetries       = 3
	DefaultRetryBackoff      = 500 * time.Millisecond
	maxRetryBackoff          = 10 * time.Second
)

// Config describes how to reach and authenticate to nodes. The zero values of
// the durations and counters mean "use the default".
type Config struct {
	// User is the login user on the nodes.
	User string
	// KeyFiles are private key files (OpenSSH, PKCS#1/8 PEM), offered
	// first. An encrypted one needs UseAgent with its key loaded in the
	// agent (castellan never prompts): the agent signs for it.
	KeyFiles []string
	// UseAgent also offers the keys held by the ssh-agent at AgentSocket
	// (default: $SSH_AUTH_SOCK).
	UseAgent    bool
	AgentSocket string

	// KnownHostsFile is the known_hosts file every host key (bastion
	// included) is checked against. Required. Entries are matched on the
	// address dialed (Host.Address, or "[addr]:port" for a port other than 22).
	KnownHostsFile string
	// AcceptNewHostKeys accepts keys of hosts that known_hosts does not
	// know yet, in memory and pinned for the Pool, until Pool.TrustHostKeys
	// writes them (trust on first use, after confirmation). KnownHostsFile
	// may then be missing: it is created when keys are trusted. A key that
	// differs from a known one is never accepted.
	AcceptNewHostKeys bool
	// HashKnownHosts writes trusted entries with a hashed host name (they
	// are hashed anyway when the file's entries are).
	HashKnownHosts bool

	// Sudo allows `sudo -n` for privileged commands and uploads (Cmd.Sudo,
	// Upload.Sudo) when the login user is not root. Root logins never use
	// sudo; with Sudo off, a non-root user's privileged command is a
	// *SudoError. It does not make other commands privileged.
	Sudo bool

	// Bastion, when set, is the jump host every node is reached through
	// (ProxyJump semantics: the TCP connection to the node is a channel of the
	// bastion's SSH connection).
	Bastion *Bastion

	// DialTimeout bounds one connection attempt: TCP connect, SSH handshake
	// and authentication.
	DialTimeout time.Duration
	// CommandTimeout is the default timeout of a command (Cmd.Timeout
	// overrides it). A negative value means no timeout.
	CommandTimeout time.Duration
	// KeepaliveInterval is the period of keepalive@openssh.com requests; the
	// connection is declared dead after KeepaliveCountMax unanswered ones.
	// A negative interval disables keepalives.
	KeepaliveInterval time.Duration
	KeepaliveCountMax int
	// DialRetries is how many times a failed connection attempt is retried,
	// with exponential backoff starting at RetryBackoff. Only network errors
	// are retried, never authentication or host key errors. Zero means
	// DefaultDialRetries; a negative value disables retries.
	DialRetries  int
	RetryBackoff time.Duration

	// Dial opens the TCP connection to a node (or to the bastion). Default: a
	// net.Dialer. Tests plug in a dialer that creates its socket inside a
	// network namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// Logger receives structured logs (never secrets). Default: discard.
	Logger *slog.Logger
}

// Bastion is a jump host. Its host key is checked against the same
// known_hosts file as the nodes'.
type Bastion struct {
	Name    string // for messages; defaults to Address
	Address string
	Port    int // default 22
	User    string
	// KeyFiles, UseAgent and AgentSocket: the bastion's own credentials.
	KeyFiles    []string
	UseAgent    bool
	AgentSocket string
}

// Host is a node to connect to.
type Host struct {
	Name    string // for messages and as the pool key; defaults to Address
	Address string // IP address or DNS name dialed and looked up in known_hosts
	Port    int    // default 22
}

// Addr is the host:port that is dialed and looked up in known_hosts.
func (h Host) Addr() string {
	a := h.Address
	if a == "" {
		a = h.Name
	}
	p := h.Port
	if p == 0 {
		p = 22
	}
	return net.JoinHostPort(a, strconv.Itoa(p))
}

// String is the name used in messages.
func (h Host) String() string {
	if h.Name != "" {
		return h.Name
	}
	return h.Addr()
}

func (b *Bastion) host() Host {
	name := b.Name
	if name == "" {
		name = b.Address
	}
	return Host{Name: bastionLabel(name), Address: b.Address, Port: b.Port}
}

// withDefaults validates cfg and fills in defaults.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.User == "" {
		return cfg, errors.New("ssh: config: User is required")
	}
	if len(cfg.KeyFiles) == 0 && !cfg.UseAgent {
		return cfg, errors.New("ssh: config: no credentials: give KeyFiles or UseAgent")
	}
	if cfg.KnownHostsFile == "" {
		return cfg, errors.New("ssh: config: KnownHostsFile is required (host keys are always verified)")
	}
	if b := cfg.Bastion; b != nil {
		if b.Address == "" {
			return cfg, errors.New("ssh: config: Bastion.Address is required")
		}
		if b.User == "" {
			return cfg, errors.New("ssh: config: Bastion.User is required")
		}
		if len(b.KeyFiles) == 0 && !b.UseAgent {
			return cfg, errors.New("ssh: config: no credentials for the bastion: give Bastion.KeyFiles or Bastion.UseAgent")
		}
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.CommandTimeout == 0 {
		cfg.CommandTimeout = DefaultCommandTimeout
	}
	if cfg.KeepaliveInterval == 0 {
		cfg.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if cfg.KeepaliveCountMax <= 0 {
		cfg.KeepaliveCountMax = DefaultKeepaliveCountMax
	}
	switch {
	case cfg.DialRetries == 0:
		cfg.DialRetries = DefaultDialRetries
	case cfg.DialRetries < 0:
		cfg.DialRetries = 0
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = DefaultRetryBackoff
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.UseAgent && cfg.AgentSocket == "" {
		cfg.AgentSocket = os.Getenv("SSH_AUTH_SOCK")
		if cfg.AgentSocket == "" {
			return cfg, errors.New("ssh: config: UseAgent is set but SSH_AUTH_SOCK is empty (is ssh-agent running?)")
		}
	}
	if b := cfg.Bastion; b != nil && b.UseAgent && b.AgentSocket == "" {
		bb := *b
		bb.AgentSocket = os.Getenv("SSH_AUTH_SOCK")
		if bb.AgentSocket == "" {
			return cfg, fmt.Errorf("ssh: config: Bastion.UseAgent is set but SSH_AUTH_SOCK is empty (is ssh-agent running?)")
		}
		cfg.Bastion = &bb
	}
	return cfg, nil
}
