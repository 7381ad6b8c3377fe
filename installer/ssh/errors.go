package ssh

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Every error of this package says "ssh: " once, at the start of its
// message: typed errors put it there, wrapped errors drop their own
// (trimSSH).

// HostKeyError reports a host key that known_hosts does not vouch for. It is
// never retried.
type HostKeyError struct {
	Host           string // name used in messages
	Addr           string // host:port dialed
	KeyType        string // type of the key the host offered, e.g. ssh-ed25519
	Fingerprint    string // SHA256:... of the offered key
	KnownHostsFile string
	// Changed: known_hosts holds other keys for this host (see Known), or
	// (Pinned) the host showed another key earlier in this run. Such a key
	// is never accepted automatically.
	Changed bool
	// Known lists the entries known_hosts holds for the host, as
	// "line N: type SHA256:...", and KnownLines their line numbers.
	Known      []string
	KnownLines []int
	// Pinned: the key differs from the one this run accepted for the host
	// earlier (AcceptNewHostKeys), which is not written to known_hosts yet.
	Pinned bool
	// Revoked: the offered key is marked @revoked in known_hosts.
	Revoked bool
	// NoCommonAlgorithm: the host offers none of the key types known_hosts
	// holds for it (KeyType and Fingerprint are then empty).
	NoCommonAlgorithm bool
	// TrustedCAs lists the @cert-authority entries of known_hosts for this
	// host ("line N: type SHA256:..."): the host showed a plain key, or a
	// certificate none of them vouches for (CertProblem says why).
	TrustedCAs  []string
	CertProblem string
	// Line is the known_hosts line that would trust the offered key.
	Line string
}

func (e *HostKeyError) Error() string {
	var b strings.Builder
	host, port := splitHostPort(e.Addr)
	hostArg := host
	if port != "22" {
		hostArg = "[" + host + "]:" + port
	}
	cert := ""
	if e.CertProblem != "" {
		cert = " (its certificate was not accepted: " + e.CertProblem + ")"
	}
	switch {
	case e.Revoked:
		fmt.Fprintf(&b, "ssh: host key of %s (%s) is REVOKED in %s: the host offered %s %s, which is marked @revoked. Refusing to connect.",
			e.Host, e.Addr, e.KnownHostsFile, e.KeyType, e.Fingerprint)
	case e.Pinned:
		fmt.Fprintf(&b, "ssh: HOST KEY CHANGED for %s (%s) during this run: it showed %s earlier (accepted as new, not written to %s yet) "+
			"and now offers %s %s. This can mean a man-in-the-middle attack. Refusing to connect; nothing was written to %s.",
			e.Host, e.Addr, strings.Join(e.Known, "; "), e.KnownHostsFile, e.KeyType, e.Fingerprint, e.KnownHostsFile)
	case e.NoCommonAlgorithm:
		fmt.Fprintf(&b, "ssh: HOST KEY CHANGED for %s (%s): %s holds only %s for it, and the host offers none of these key types. "+
			"This can mean a man-in-the-middle attack, or that the host was rebuilt. A changed key is never accepted automatically "+
			"(not even with --accept-new-host-keys). After verifying the host's keys out-of-band, %s "+
			"and add the new key's line (for example from `ssh-keyscan -p %s %s`, after comparing its fingerprint).",
			e.Host, e.Addr, e.KnownHostsFile, strings.Join(e.Known, "; "), e.removeAdvice(hostArg), port, host)
	case e.Changed:
		fmt.Fprintf(&b, "ssh: HOST KEY CHANGED for %s (%s): the host offered %s %s%s, but %s holds %s. "+
			"This can mean a man-in-the-middle attack, or that the host was rebuilt. A changed key is never accepted automatically "+
			"(not even with --accept-new-host-keys). After verifying the new key out-of-band (on the host's console: "+
			"`ssh-keygen -lf /etc/ssh/ssh_host_%s_key.pub`), %s and add this line:\n  %s",
			e.Host, e.Addr, e.KeyType, e.Fingerprint, cert, e.KnownHostsFile, strings.Join(e.Known, "; "),
			keyFileSuffix(e.KeyType), e.removeAdvice(hostArg), e.Line)
	case len(e.TrustedCAs) > 0:
		fmt.Fprintf(&b, "ssh: host key of %s (%s) is unknown: %s trusts only certificate authorities for it (%s), "+
			"and the host offered the plain key %s %s%s. Either give the host a certificate signed by that CA "+
			"(sshd_config HostCertificate), or, after checking this fingerprint out-of-band (on the host's console: "+
			"`ssh-keygen -lf /etc/ssh/ssh_host_%s_key.pub`), add this line to %s (keep the @cert-authority line):\n  %s\n"+
			"or rerun with --accept-new-host-keys to accept unknown keys on first contact.",
			e.Host, e.Addr, e.KnownHostsFile, strings.Join(e.TrustedCAs, "; "), e.KeyType, e.Fingerprint, cert,
			keyFileSuffix(e.KeyType), e.KnownHostsFile, e.Line)
	default:
		fmt.Fprintf(&b, "ssh: host key of %s (%s) is unknown: the host offered %s %s, and %s has no entry for it. "+
			"Check this fingerprint out-of-band (on the host's console: `ssh-keygen -lf /etc/ssh/ssh_host_%s_key.pub`), then either add this line to %s:\n  %s\n"+
			"(or the output of `ssh-keyscan -t %s -p %s %s`, after checking it with `ssh-keygen -lf -`), "+
			"or rerun with --accept-new-host-keys to accept unknown keys on first contact.",
			e.Host, e.Addr, e.KeyType, e.Fingerprint, e.KnownHostsFile,
			keyFileSuffix(e.KeyType), e.KnownHostsFile, e.Line, keyFileSuffix(e.KeyType), port, host)
	}
	return b.String()
}

// removeAdvice says how to remove the old entries: ssh-keygen -R, unless
// known_hosts also has @cert-authority lines for the host (then the line
// numbers: only the stale keys go).
func (e *HostKeyError) removeAdvice(hostArg string) string {
	if len(e.TrustedCAs) > 0 && len(e.KnownLines) > 0 {
		lines := make([]string, len(e.KnownLines))
		for i, n := range e.KnownLines {
			lines[i] = strconv.Itoa(n)
		}
		return fmt.Sprintf("delete line(s) %s of %s (and only those: its @cert-authority lines for the host stay)",
			strings.Join(lines, ", "), shellQuote(e.KnownHostsFile))
	}
	return fmt.Sprintf("remove the old entries with `ssh-keygen -R %s -f %s`", shellQuote(hostArg), shellQuote(e.KnownHostsFile))
}

// keyFileSuffix maps a key type to the name OpenSSH uses for host key files.
func keyFileSuffix(keyType string) string {
	switch {
	case strings.Contains(keyType, "ed25519"):
		return "ed25519"
	case strings.Contains(keyType, "ecdsa"):
		return "ecdsa"
	case strings.Contains(keyType, "rsa"):
		return "rsa"
	}
	return "*"
}

func splitHostPort(addr string) (string, string) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, "22"
	}
	return h, p
}

// AuthError reports that the host refused the credentials offered. It is
// never retried: repeated failures trip lockouts such as fail2ban.
type AuthError struct {
	Host, Addr, User string
	Offered          string // what was offered (key files, agent), never key material
	// KeysOffered is how many keys the server was asked about before it
	// refused or closed the connection; KeysAvailable how many there were.
	KeysOffered, KeysAvailable int
	// CutShort: the server closed the connection before every key was
	// offered (sshd's MaxAuthTries, 6 by default, counts each key).
	CutShort bool
	Err      error
}

func (e *AuthError) Error() string {
	if e.CutShort {
		return fmt.Sprintf("ssh: authentication as %q on %s (%s) failed: the server closed the connection after %d of %d keys were offered (%s): "+
			"sshd counts every key offered against its MaxAuthTries (6 by default). Give the key file authorized for %q "+
			"(castellan offers it first), or keep fewer keys in ssh-agent (%s)",
			e.User, e.Host, e.Addr, e.KeysOffered, e.KeysAvailable, e.Offered, e.User, trimSSH(e.Err))
	}
	return fmt.Sprintf("ssh: authentication as %q on %s (%s) failed: the server refused the %d key(s) offered (%s): "+
		"check that the matching public key is in the authorized_keys of %q on that host, or give the key file that is (%s)",
		e.User, e.Host, e.Addr, e.KeysOffered, e.Offered, e.User, trimSSH(e.Err))
}

func (e *AuthError) Unwrap() error { return e.Err }

// DialError reports that a host could not be reached (network errors, after
// the configured retries).
type DialError struct {
	Host, Addr string
	Via        string // bastion name when dialing through one
	Attempts   int
	Err        error
}

func (e *DialError) Error() string {
	via := ""
	if e.Via != "" {
		via = " through " + bastionLabel(e.Via)
	}
	return fmt.Sprintf("ssh: cannot reach %s (%s)%s after %d attempt(s): %s", e.Host, e.Addr, via, e.Attempts, trimSSH(e.Err))
}

func (e *DialError) Unwrap() error { return e.Err }

// ForwardingError reports that the bastion refused to open the connection
// to a node by policy (SSH_OPEN_ADMINISTRATIVELY_PROHIBITED, RFC 4254
// section 5.1): its sshd has AllowTcpForwarding no (or DisableForwarding,
// or a PermitOpen list without the node). It is never retried.
type ForwardingError struct {
	Bastion    string
	Host, Addr string
	Err        *ssh.OpenChannelError
}

func (e *ForwardingError) Error() string {
	return fmt.Sprintf("ssh: %s refused to forward a connection to %s (%s) (%s: %q): "+
		"castellan reaches nodes through the bastion with TCP forwarding (like ssh -J): "+
		"set `AllowTcpForwarding yes` in the bastion's sshd_config (without DisableForwarding, and with a PermitOpen, if any, that includes %s)",
		bastionLabel(e.Bastion), e.Host, e.Addr, e.Err.Reason, e.Err.Message, e.Addr)
}

func (e *ForwardingError) Unwrap() error { return e.Err }

// NegotiationError reports that the host and castellan share no key
// exchange, cipher or MAC algorithm. It is never retried.
type NegotiationError struct {
	Host, Addr string
	Err        *ssh.AlgorithmNegotiationError
}

func (e *NegotiationError) Error() string {
	return fmt.Sprintf("ssh: %s (%s) and castellan share no %s algorithm: the host offers %s, castellan supports %s; "+
		"enable one of castellan's in the host's sshd_config",
		e.Host, e.Addr, e.Err.What, strings.Join(e.Err.RequestedAlgorithms, ","), strings.Join(e.Err.SupportedAlgorithms, ","))
}

func (e *NegotiationError) Unwrap() error { return e.Err }

// SudoReason says why a privileged command could not become root.
type SudoReason int

const (
	// SudoRefused: `sudo -n` refused: it wants a password, or the user
	// may not run commands as root.
	SudoRefused SudoReason = iota + 1
	// SudoRequiresTTY: sudoers has requiretty for the user; castellan's
	// commands have no terminal (their data travels on stdin and stdout).
	SudoRequiresTTY
	// SudoDisabled: the login user is not root and Config.Sudo is off.
	SudoDisabled
	// SudoNotInstalled: the login user is not root and the node has no
	// sudo.
	SudoNotInstalled
)

func (r SudoReason) String() string {
	switch r {
	case SudoRefused:
		return "refused"
	case SudoRequiresTTY:
		return "requiretty"
	case SudoDisabled:
		return "disabled"
	case SudoNotInstalled:
		return "not-installed"
	}
	return "unknown"
}

// SudoError reports that a privileged command could not run as root. Root
// or sudo is decided on the node by the command's own remote exec, so this
// comes from the first privileged command; it says how to fix it.
type SudoError struct {
	Host, User string
	Command    string
	Reason     SudoReason
	Message    string // what sudo said, if anything
}

func (e *SudoError) Error() string {
	said := ""
	if m := strings.TrimSpace(e.Message); m != "" {
		said = " (sudo said: " + strconv.Quote(m) + ")"
	}
	switch e.Reason {
	case SudoRequiresTTY:
		return fmt.Sprintf("ssh: on %s, sudo refuses to run %s for %q without a terminal: sudoers has requiretty for that user%s; "+
			"castellan's commands have no terminal (their data travels on stdin and stdout): "+
			"add `Defaults:%s !requiretty` to a file in /etc/sudoers.d (check it with `visudo -cf FILE`), or log in as root",
			e.Host, e.Command, e.User, said, e.User)
	case SudoDisabled:
		return fmt.Sprintf("ssh: on %s, %s must run as root, but %q is not root and sudo is turned off (spec.ssh.sudo: false): "+
			"log in as root, or turn sudo on", e.Host, e.Command, e.User)
	case SudoNotInstalled:
		return fmt.Sprintf("ssh: on %s, %s must run as root, but %q is not root and the node has no sudo: "+
			"install sudo and allow %q passwordless sudo (`%s ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/castellan), or log in as root",
			e.Host, e.Command, e.User, e.User, e.User)
	}
	return fmt.Sprintf("ssh: on %s, `sudo -n` refused to run %s as root for %q%s: castellan runs privileged commands without a password prompt: "+
		"allow it with a file /etc/sudoers.d/castellan containing `%s ALL=(ALL) NOPASSWD: ALL` (check it with `visudo -cf FILE`), or log in as root",
		e.Host, e.Command, e.User, said, e.User)
}

// LoginShellError reports that the login environment never ran castellan's
// command: the user's login shell refused or failed (nologin, /bin/false, a
// startup file that exits or starts another program), so castellan's
// wrapper never started.
type LoginShellError struct {
	Host, User string
	Command    string
	ExitCode   int    // of the login shell; -1 if unknown
	Output     string // what it printed (shortened)
}

func (e *LoginShellError) Error() string {
	out := ""
	if t := strings.TrimSpace(e.Output); t != "" {
		if len(t) > 200 {
			t = t[:200] + "..."
		}
		out = ", printing " + strconv.Quote(t)
	}
	return fmt.Sprintf("ssh: on %s, the login shell of %q did not run %s: it exited with code %d before castellan's command started%s; "+
		"castellan runs every command as `exec /bin/sh -c ...` through the login shell: give %q a shell that runs commands "+
		"(`chsh -s /bin/bash %s`; nologin and false refuse every command), whose startup files neither exit nor start another program "+
		"when the session is not interactive",
		e.Host, e.User, e.Command, e.ExitCode, out, e.User, e.User)
}

// ConnectionLostError reports that the connection to a host died while a
// command or transfer was using it. A Pool redials on the next use.
type ConnectionLostError struct {
	Host, Addr string
	Command    string // the command or operation that was running
	Err        error  // why the connection is gone, when known
}

func (e *ConnectionLostError) Error() string {
	return fmt.Sprintf("ssh: connection to %s (%s) lost while running %s: %s", e.Host, e.Addr, e.Command, trimSSH(e.Err))
}

func (e *ConnectionLostError) Unwrap() error { return e.Err }

// CommandTimeoutError reports a command that ran longer than its timeout; the
// remote process was signalled and the session closed.
type CommandTimeoutError struct {
	Host    string
	Command string
	Timeout time.Duration
}

func (e *CommandTimeoutError) Error() string {
	return fmt.Sprintf("ssh: command %s on %s timed out after %s (remote process signalled, session closed)", e.Command, e.Host, e.Timeout)
}

// ExitError reports a command that ran and exited non-zero (or was killed by
// a signal). The Result returned with it is complete.
type ExitError struct {
	Host     string
	Command  string
	ExitCode int    // -1 when killed by a signal
	Signal   string // e.g. "KILL"
	Stderr   string // tail of the command's standard error
}

func (e *ExitError) Error() string {
	how := fmt.Sprintf("exit code %d", e.ExitCode)
	if e.Signal != "" {
		how = "signal " + e.Signal
	}
	s := fmt.Sprintf("ssh: command %s on %s failed with %s", e.Command, e.Host, how)
	if t := strings.TrimSpace(e.Stderr); t != "" {
		s += ": " + t
	}
	return s
}

// ChecksumError reports an upload whose content does not have the expected
// SHA-256. The destination is left untouched.
type ChecksumError struct {
	Host, Path string
	Want, Got  string
	Where      string // "source" (the data read locally) or "remote" (sha256sum on the node)
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("ssh: upload to %s:%s refused: sha256 of the %s is %s, expected %s; destination left untouched",
		e.Host, e.Path, e.Where, e.Got, e.Want)
}

// KnownHostsFileError reports a known_hosts file castellan cannot use: a
// local file problem (missing, a directory, unreadable, not known_hosts,
// not writable), never a problem with a host.
type KnownHostsFileError struct {
	Path string
	Line int    // 1-based line it concerns, 0 for the whole file
	Op   string // "read" or "write"
	Err  error
}

func (e *KnownHostsFileError) Error() string {
	where := e.Path
	if e.Line > 0 {
		where = fmt.Sprintf("%s:%d", e.Path, e.Line)
	}
	if e.Op == "write" {
		return fmt.Sprintf("ssh: writing known_hosts %s: %s (a local file problem: check the file, its directory and the disk)", where, trimSSH(e.Err))
	}
	return fmt.Sprintf("ssh: known_hosts %s: %s", where, trimSSH(e.Err))
}

func (e *KnownHostsFileError) Unwrap() error { return e.Err }

// bastionLabel names a bastion in messages once: "bastion NAME", unless the
// name already says bastion.
func bastionLabel(name string) string {
	if strings.HasPrefix(strings.ToLower(name), "bastion") {
		return name
	}
	return "bastion " + name
}

// trimSSH is err's message without the "ssh: " that x/crypto and this
// package put in front of theirs, for messages that already start with it.
func trimSSH(err error) string {
	if err == nil {
		return "unknown error"
	}
	s := err.Error()
	for {
		t := strings.TrimPrefix(s, "ssh: ")
		if t == s {
			break
		}
		s = t
	}
	return strings.ReplaceAll(s, ": ssh: ", ": ")
}

// errorf is fmt.Errorf for this package's own messages: format starts with
// "ssh: ", and the wrapped errors' own "ssh: " prefixes are dropped from the
// text (the chain is kept for errors.Is and errors.As).
func errorf(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &cleanError{msg: "ssh: " + trimSSH(err), err: err}
}

type cleanError struct {
	msg string
	err error
}

func (e *cleanError) Error() string { return e.msg }
func (e *cleanError) Unwrap() []error {
	switch u := e.err.(type) {
	case interface{ Unwrap() []error }:
		return u.Unwrap()
	case interface{ Unwrap() error }:
		if w := u.Unwrap(); w != nil {
			return []error{w}
		}
	}
	return nil
}
