package ssh

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Cmd is a command to run on a host, as an argv vector. Argv[0] is looked up
// in the remote PATH; values are passed byte-exact (no shell expansion),
// whatever the login shell of the user (see the package doc).
type Cmd struct {
	Argv []string
	// Sudo runs the command as root: directly when the login user is root
	// (uid 0), else through `sudo -n` when Config.Sudo allows it, else not
	// at all (a *SudoError). It is decided on the node, by the command's
	// own remote exec.
	Sudo bool
	// Stdin, when set, is copied to the command's standard input; it must
	// reach EOF. Secrets belong here, never in Argv.
	Stdin io.Reader
	// Stdout and Stderr stream the output; when nil it is collected into
	// Result. What the login environment prints before the command starts
	// never reaches them (see Result.LoginNoise).
	Stdout, Stderr io.Writer
	// Timeout overrides Config.CommandTimeout (negative: none).
	Timeout time.Duration
}

// Result is the outcome of a command that ran.
type Result struct {
	ExitCode int
	Stdout   []byte // nil when Cmd.Stdout was set
	Stderr   []byte // nil when Cmd.Stderr was set
	Duration time.Duration
	// LoginNoise is what the node's login environment (the login shell's
	// startup files, sudo) printed before the command started, dropped from
	// Stdout and Stderr; nil when it printed nothing.
	LoginNoise *LoginNoise
}

// killGrace is how long a timed-out command gets between SIGTERM and SIGKILL.
const killGrace = 2 * time.Second

// Run runs cmd and waits for it, in one remote exec. A command that ran and
// exited non-zero returns its Result and an *ExitError. Errors before the
// command started: *LoginShellError (the login shell did not run it),
// *SudoError (it could not become root); others: *CommandTimeoutError,
// *ConnectionLostError, or the context's error.
func (c *Client) Run(ctx context.Context, cmd Cmd) (Result, error) {
	mode := execMode{privileged: cmd.Sudo, sudo: c.cfg.Sudo}
	marker := newMarker()
	line, err := execRequest(marker, cmd.Argv, mode)
	if err != nil {
		return Result{}, errorf("ssh: command %q for %s: %w", cmd.Argv, c.name, err)
	}
	shown := display(cmd.Argv)
	if cmd.Sudo {
		shown += " (as root)"
	}
	timeout := cmd.Timeout
	if timeout == 0 {
		timeout = c.cfg.CommandTimeout
	}
	rr, err := c.run(ctx, line, marker, shown, cmd.Stdin, cmd.Stdout, cmd.Stderr, timeout)
	res := rr.Result
	if err != nil {
		return res, err
	}
	if !rr.started {
		return res, c.notStarted(ctx, rr, shown)
	}
	if res.ExitCode == 0 {
		return res, nil
	}
	return res, &ExitError{Host: c.name, Command: shown, ExitCode: res.ExitCode, Stderr: string(rr.stderrTail)}
}

// CheckLogin checks that castellan can use the node's login environment:
// that the login shell runs its commands and, when privileged is set, that
// they can run as root. It costs one remote exec; callers that run a
// command anyway need not call it, as the first command returns the same
// errors: *LoginShellError or *SudoError, with the cause and the fix.
func (c *Client) CheckLogin(ctx context.Context, privileged bool) error {
	_, err := c.Run(ctx, Cmd{Argv: []string{"true"}, Sudo: privileged, Timeout: time.Minute})
	return err
}

// LoginNoise returns the first login noise seen on this connection (what
// the login environment printed around castellan's commands), or nil.
func (c *Client) LoginNoise() *LoginNoise {
	c.noiseMu.Lock()
	defer c.noiseMu.Unlock()
	return c.noise
}

func (c *Client) noteNoise(n *LoginNoise) {
	if n == nil {
		return
	}
	c.noiseMu.Lock()
	defer c.noiseMu.Unlock()
	if c.noise == nil {
		c.noise = n
		c.log.Warn("login environment prints around commands", "shell", n.Shell, "bytes", n.Bytes, "warning", n.Warning())
	}
}

// notStarted builds the error for a command the wrapper never started,
// from the last stage it reported.
func (c *Client) notStarted(ctx context.Context, rr runResult, shown string) error {
	switch rr.stage {
	case stageNoSudo:
		return &SudoError{Host: c.name, User: c.user, Command: shown, Reason: SudoDisabled}
	case stageNoSudoBin:
		return &SudoError{Host: c.name, User: c.user, Command: shown, Reason: SudoNotInstalled}
	case stageSudo:
		return c.sudoRefused(ctx, shown, string(rr.stderrNoise))
	}
	out := string(rr.stdoutNoise)
	if e := string(rr.stderrNoise); e != "" {
		out = strings.TrimSpace(out + " " + e)
	}
	return &LoginShellError{Host: c.name, User: c.user, Command: shown, ExitCode: rr.ExitCode, Output: out}
}

// sudoDiagnosis tells why `sudo -n` refused, by trying it again with and
// without a terminal (script(1) from util-linux gives it one): if it works
// with one, requiretty is the cause. It only runs after sudo refused.
// script(1) with stdin at EOF now and then never returns (seen about once
// in 30 runs here; util-linux issues 2562 and 3409 describe such hangs), so
// each try is bounded by timeout(1) and one that timed out (124) is tried
// once more.
const sudoDiagnosis = `if sudo -n -- true </dev/null >/dev/null 2>&1; then echo works; ` +
	`elif command -v script >/dev/null 2>&1 && { timeout 15 script -qec 'sudo -n -- true' /dev/null </dev/null >/dev/null 2>&1 || ` +
	`{ [ $? -eq 124 ] && timeout 15 script -qec 'sudo -n -- true' /dev/null </dev/null >/dev/null 2>&1; }; }; then echo tty; ` +
	`else echo refused; fi`

// sudoRefused classifies a refusal of sudo by the node's state, not by
// sudo's (localised) message, which is kept for the user.
func (c *Client) sudoRefused(ctx context.Context, shown, said string) error {
	e := &SudoError{Host: c.name, User: c.user, Command: shown, Reason: SudoRefused, Message: said}
	out, err := c.Output(ctx, Cmd{Argv: []string{"sh", "-c", sudoDiagnosis}, Timeout: time.Minute})
	if err == nil && out == "tty" {
		e.Reason = SudoRequiresTTY
	}
	return e
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Clone(t.b)
}

type runResult struct {
	Result
	started                  bool   // the wrapper reported "ok": the command ran
	stage                    string // the last stage the wrapper reported
	stderrTail               []byte
	stdoutNoise, stderrNoise []byte
}

// run executes one exec request through the wrapper and classifies how it
// ended.
func (c *Client) run(ctx context.Context, line, marker, shown string, stdin io.Reader, stdout, stderr io.Writer, timeout time.Duration) (runResult, error) {
	var res runResult
	if err := ctx.Err(); err != nil {
		return res, errorf("ssh: %s on %s: %w", shown, c.name, err)
	}
	if !c.Alive() {
		return res, &ConnectionLostError{Host: c.name, Addr: c.addr, Command: shown, Err: c.deadErr}
	}
	sess, err := c.conn.NewSession()
	if err != nil {
		if lerr := c.lost(shown, time.Second); lerr != nil {
			return res, lerr
		}
		return res, errorf("ssh: opening a session on %s for %s: %w", c.name, shown, err)
	}
	defer sess.Close()

	var outBuf, errBuf bytes.Buffer
	tail := &tailBuffer{max: 2048}
	sess.Stdin = stdin
	outW := io.Writer(&outBuf)
	if stdout != nil {
		outW = stdout
	}
	errW := io.MultiWriter(&errBuf, tail)
	if stderr != nil {
		errW = io.MultiWriter(stderr, tail)
	}
	outF, errF := newMarkerFilter(marker, outW), newMarkerFilter(marker, errW)
	sess.Stdout, sess.Stderr = outF, errF

	start := time.Now()
	c.log.Debug("ssh run", "cmd", shown)
	if err := sess.Start(line); err != nil {
		if lerr := c.lost(shown, time.Second); lerr != nil {
			return res, lerr
		}
		return res, errorf("ssh: starting %s on %s: %w", shown, c.name, err)
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()

	var timer <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		timer = t.C
	}
	select {
	case err = <-done:
	case <-timer:
		c.abort(sess, done)
		c.log.Warn("ssh command timed out", "cmd", shown, "timeout", timeout)
		return res, &CommandTimeoutError{Host: c.name, Command: shown, Timeout: timeout}
	case <-ctx.Done():
		c.abort(sess, done)
		return res, errorf("ssh: %s on %s: %w", shown, c.name, ctx.Err())
	}
	res.Duration = time.Since(start)
	outF.finish()
	errF.finish()
	res.started, res.stage, _, res.stdoutNoise, _ = outF.state()
	_, _, _, res.stderrNoise, _ = errF.state()
	res.LoginNoise = noiseOf(c.name, c.user, outF, errF)
	c.noteNoise(res.LoginNoise)
	if stdout == nil {
		res.Stdout = outBuf.Bytes()
	}
	if stderr == nil {
		res.Stderr = errBuf.Bytes()
	}
	res.stderrTail = tail.bytes()

	var exitErr *ssh.ExitError
	switch {
	case err == nil:
		return res, nil
	case errors.As(err, &exitErr):
		if sig := exitErr.Signal(); sig != "" {
			res.ExitCode = -1
			if !res.started {
				return res, nil
			}
			return res, &ExitError{Host: c.name, Command: shown, ExitCode: -1, Signal: sig, Stderr: string(res.stderrTail)}
		}
		res.ExitCode = exitErr.ExitStatus()
		return res, nil
	}
	if lerr := c.lost(shown, time.Second); lerr != nil {
		return res, lerr
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return res, errorf("ssh: %s on %s ended without an exit status: %w", shown, c.name, err)
	}
	return res, errorf("ssh: %s on %s: %w", shown, c.name, err)
}

// abort stops a running command: SIGTERM, then SIGKILL after a grace
// period, then the session is closed.
func (c *Client) abort(sess *ssh.Session, done <-chan error) {
	_ = sess.Signal(ssh.SIGTERM)
	t := time.NewTimer(killGrace)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	_ = sess.Signal(ssh.SIGKILL)
	sess.Close()
	select {
	case <-done:
	case <-time.After(killGrace):
	}
}

// Output runs cmd and returns its trimmed standard output; a convenience for
// probes.
func (c *Client) Output(ctx context.Context, cmd Cmd) (string, error) {
	cmd.Stdout = nil
	res, err := c.Run(ctx, cmd)
	return strings.TrimSpace(string(res.Stdout)), err
}
