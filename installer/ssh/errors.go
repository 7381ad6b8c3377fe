package ssh

import (
	"fmt"
	"net"
	"strings"
	"time"
)

// HostKeyError reports a host key that known_hosts does not vouch for. It is
// never retried.
type HostKeyError struct {
	Host           string // name used in messages
	Addr           string // host:port dialed
	KeyType        string // type of the key the host offered, e.g. ssh-ed25519
	Fingerprint    string // SHA256:... of the offered key
	KnownHostsFile string
	// Changed: known_hosts holds other keys for this host (see Known). Such a
	// key is never accepted automatically.
	Changed bool
	// Known lists the entries known_hosts holds for the host, as
	// "line N: type SHA256:..." (set when Changed) or "type SHA256:..."
	// (NoCommonAlgorithm).
	Known []string
	// Revoked: the offered key is marked @revoked in known_hosts.
	Revoked bool
	// NoCommonAlgorithm: the host offers none of the key types known_hosts
	// holds for it (KeyType and Fingerprint are then empty).
	NoCommonAlgorithm bool
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
	switch {
	case e.Revoked:
		fmt.Fprintf(&b, "ssh: host key of %s (%s) is REVOKED in %s: the host offered %s %s, which is marked @revoked. Refusing to connect.",
			e.Host, e.Addr, e.KnownHostsFile, e.KeyType, e.Fingerprint)
	case e.NoCommonAlgorithm:
		fmt.Fprintf(&b, "ssh: HOST KEY CHANGED for %s (%s): %s holds only %s for it, and the host offers none of these key types. "+
			"This can mean a man-in-the-middle attack, or that the host was rebuilt. A changed key is never accepted automatically "+
			"(not even with --accept-new-host-keys). After verifying the host's keys out-of-band, remove the old entries with "+
			"`ssh-keygen -R %s -f %s` and add the new key's line (for example from `ssh-keyscan -p %s %s`, after comparing its fingerprint).",
			e.Host, e.Addr, e.KnownHostsFile, strings.Join(e.Known, "; "), shellQuote(hostArg), shellQuote(e.KnownHostsFile), port, host)
	case e.Changed:
		fmt.Fprintf(&b, "ssh: HOST KEY CHANGED for %s (%s): the host offered %s %s, but %s holds %s. "+
			"This can mean a man-in-the-middle attack, or that the host was rebuilt. A changed key is never accepted automatically "+
			"(not even with --accept-new-host-keys). After verifying the new key out-of-band (on the host's console: "+
			"`ssh-keygen -lf /etc/ssh/ssh_host_%s_key.pub`), remove the old entry with `ssh-keygen -R %s -f %s` and add this line:\n  %s",
			e.Host, e.Addr, e.KeyType, e.Fingerprint, e.KnownHostsFile, strings.Join(e.Known, "; "),
			keyFileSuffix(e.KeyType), shellQuote(hostArg), shellQuote(e.KnownHostsFile), e.Line)
	default:
		fmt.Fprintf(&b, "ssh: host key of %s (%s) is unknown: the host offered %s %s, and %s has no entry for it. "+
			"Check this fingerprint out-of-band (on the host's console: `ssh-keygen -lf /etc/ssh/ssh_host_%s_key.pub`), then either add this line to %s:\n  %s\n"+
			"(or the output of `ssh-keyscan -t %s -p %s %s`, after checking it with `ssh-keygen -lf -`), "+
			"or rerun with --accept-new-host-keys to record unknown keys on first contact.",
			e.Host, e.Addr, e.KeyType, e.Fingerprint, e.KnownHostsFile,
			keyFileSuffix(e.KeyType), e.KnownHostsFile, e.Line, keyFileSuffix(e.KeyType), port, host)
	}
	return b.String()
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

// AuthError reports that the host refused all offered credentials. It is
// never retried.
type AuthError struct {
	Host, Addr, User string
	Offered          string // what was offered (key files, agent), never key material
	Err              error
}

func (e *AuthError) Error() string {
	return fmt.Sprintf("ssh: authentication as %q on %s (%s) failed (offered %s): %v; "+
		"check that the matching public key is in the authorized_keys of %q on that host",
		e.User, e.Host, e.Addr, e.Offered, e.Err, e.User)
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
		via = " through bastion " + e.Via
	}
	return fmt.Sprintf("ssh: cannot reach %s (%s)%s after %d attempt(s): %v", e.Host, e.Addr, via, e.Attempts, e.Err)
}

func (e *DialError) Unwrap() error { return e.Err }

// SudoPasswordError reports that sudo asked for a password. castellan runs
// privileged commands non-interactively and needs NOPASSWD.
type SudoPasswordError struct {
	Host, User string
	Command    string
	Message    string // what sudo said
}

func (e *SudoPasswordError) Error() string {
	msg := strings.TrimSpace(e.Message)
	if msg == "" {
		msg = "sudo -n failed"
	}
	return fmt.Sprintf("ssh: on %s, sudo for user %q requires a password (%s) while running %s; "+
		"castellan runs privileged commands non-interactively: configure passwordless sudo for that user, "+
		"for example a file /etc/sudoers.d/castellan containing `%s ALL=(ALL) NOPASSWD: ALL` (check it with `visudo -cf`)",
		e.Host, e.User, msg, e.Command, e.User)
}

// ConnectionLostError reports that the connection to a host died while a
// command or transfer was using it. A Pool redials on the next use.
type ConnectionLostError struct {
	Host, Addr string
	Command    string // the command or operation that was running
	Err        error  // why the connection is gone, when known
}

func (e *ConnectionLostError) Error() string {
	return fmt.Sprintf("ssh: connection to %s (%s) lost while running %s: %v", e.Host, e.Addr, e.Command, e.Err)
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
