package ssh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Cmd is a command to run on a host, as an argv vector. Argv[0] is looked up
// in the remote PATH; values are passed byte-exact (no shell expansion).
type Cmd struct {
	Argv []string
	// Sudo runs the command as root through `sudo -n --`.
	Sudo bool
	// Stdin, when set, is copied to the command's standard input; it must
	// reach EOF. Secrets belong here, never in Argv.
	Stdin io.Reader
	// Stdout and Stderr stream the output; when nil it is collected into
	// Result.
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
}

// killGrace is how long a timed-out command gets between SIGTERM and SIGKILL.
const killGrace = 2 * time.Second

// Run runs cmd and waits for it. A command that ran and exited non-zero
// returns its Result and an *ExitError. Other errors: *CommandTimeoutError,
// *SudoPasswordError, *ConnectionLostError, or the context's error.
func (c *Client) Run(ctx context.Context, cmd Cmd) (Result, error) {
	sudo := cmd.Sudo || c.cfg.Sudo
	line, err := commandLine(cmd.Argv, sudo)
	if err != nil {
		return Result{}, fmt.Errorf("ssh: command %q for %s: %w", cmd.Argv, c.name, err)
	}
	shown := display(cmd.Argv)
	if sudo {
		shown = display(append([]string{"sudo"}, cmd.Argv...))
	}
	timeout := cmd.Timeout
	if timeout == 0 {
		timeout = c.cfg.CommandTimeout
	}
	rr, err := c.run(ctx, line, shown, cmd.Stdin, cmd.Stdout, cmd.Stderr, timeout)
	res := rr.Result
	if err != nil {
		return res, err
	}
	if res.ExitCode == 0 {
		if sudo {
			c.sudoOK.Store(true)
		}
		return res, nil
	}
	if sudo && res.ExitCode == 1 && !c.sudoOK.Load() {
		if perr := c.probeSudo(ctx, shown); perr != nil {
			return res, perr
		}
	}
	return res, &ExitError{Host: c.name, Command: shown, ExitCode: res.ExitCode, Stderr: string(rr.stderrTail)}
}

// probeSudo checks whether `sudo -n` works for the user; it returns a
// *SudoPasswordError if sudo wants a password.
func (c *Client) probeSudo(ctx context.Context, shown string) error {
	res, err := c.run(ctx, "exec sudo -n -- true", "`sudo -n true`", nil, nil, nil, time.Minute)
	if err != nil {
		return err
	}
	if res.ExitCode == 0 {
		c.sudoOK.Store(true)
		return nil
	}
	return &SudoPasswordError{Host: c.name, User: c.user, Command: shown, Message: string(res.Stderr)}
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
	stderrTail []byte
}

// run executes one exec request and classifies how it ended.
func (c *Client) run(ctx context.Context, line, shown string, stdin io.Reader, stdout, stderr io.Writer, timeout time.Duration) (runResult, error) {
	var res runResult
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("ssh: %s on %s: %w", shown, c.name, err)
	}
	if !c.Alive() {
		return res, &ConnectionLostError{Host: c.name, Addr: c.addr, Command: shown, Err: c.deadErr}
	}
	sess, err := c.conn.NewSession()
	if err != nil {
		if lerr := c.lost(shown, time.Second); lerr != nil {
			return res, lerr
		}
		return res, fmt.Errorf("ssh: opening a session on %s for %s: %w", c.name, shown, err)
	}
	defer sess.Close()

	var outBuf, errBuf bytes.Buffer
	tail := &tailBuffer{max: 2048}
	sess.Stdin = stdin
	if stdout != nil {
		sess.Stdout = stdout
	} else {
		sess.Stdout = &outBuf
	}
	if stderr != nil {
		sess.Stderr = io.MultiWriter(stderr, tail)
	} else {
		sess.Stderr = io.MultiWriter(&errBuf, tail)
	}

	start := time.Now()
	c.log.Debug("ssh run", "cmd", shown)
	if err := sess.Start(line); err != nil {
		if lerr := c.lost(shown, time.Second); lerr != nil {
			return res, lerr
		}
		return res, fmt.Errorf("ssh: starting %s on %s: %w", shown, c.name, err)
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
		return res, fmt.Errorf("ssh: %s on %s: %w", shown, c.name, ctx.Err())
	}
	res.Duration = time.Since(start)
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
		return res, fmt.Errorf("ssh: %s on %s ended without an exit status: %w", shown, c.name, err)
	}
	return res, fmt.Errorf("ssh: %s on %s: %w", shown, c.name, err)
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
