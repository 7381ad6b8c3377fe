package diskcrypt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// Cmd is one command the node side runs (cryptsetup, systemd-cryptenroll,
// wipefs, mkfs.ext4, systemctl). Secrets are never in Argv: Stdin and Files
// carry them.
type Cmd struct {
	Argv []string
	// Stdin is written to the command's standard input through a pipe (nil:
	// /dev/null).
	Stdin []byte
	// Files are passed as file descriptors 3, 4, ...: each a pipe, or, with
	// Seekable, an anonymous memory file (memfd_create(2): no path on any
	// filesystem, gone when the last descriptor closes), for a command that
	// seeks in what it reads. The command names them /proc/self/fd/N.
	Files []Input
}

// Input is the content of an extra file descriptor.
type Input struct {
	Data     []byte
	Seekable bool
}

// Runner runs commands on the node. ExecRunner runs them for real; unit
// tests of the code around it use a fake that records them.
type Runner interface {
	Run(ctx context.Context, c Cmd) (stdout []byte, err error)
}

// ExecRunner runs commands with os/exec, with a minimal environment
// (PATH and LANG=C, so messages are in English and parseable).
type ExecRunner struct{}

// CommandError is a command that failed: its argv, exit status and
// standard error (cryptsetup, systemd and util-linux never echo a key).
type CommandError struct {
	Argv   []string
	Err    error
	Stderr string
}

func (e *CommandError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if len(msg) > 2000 {
		msg = msg[:2000] + "..."
	}
	if msg == "" {
		return fmt.Sprintf("%s: %v", strings.Join(e.Argv, " "), e.Err)
	}
	return fmt.Sprintf("%s: %v: %s", strings.Join(e.Argv, " "), e.Err, msg)
}

func (e *CommandError) Unwrap() error { return e.Err }

// ExitCode is the command's exit status, or -1 when it did not exit.
func (e *CommandError) ExitCode() int {
	var ee *exec.ExitError
	if errors.As(e.Err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// Run implements Runner.
func (ExecRunner) Run(ctx context.Context, c Cmd) ([]byte, error) {
	if len(c.Argv) == 0 {
		return nil, errors.New("no command")
	}
	cmd := exec.CommandContext(ctx, c.Argv[0], c.Argv[1:]...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", "LC_ALL=C"}
	if c.Stdin != nil {
		cmd.Stdin = bytes.NewReader(c.Stdin) // os/exec copies it through a pipe
	}
	var closers []*os.File
	defer func() {
		for _, f := range closers {
			f.Close()
		}
	}()
	for _, in := range c.Files {
		f, err := inputFile(in, &closers)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.Argv[0], err)
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &CommandError{Argv: c.Argv, Err: err, Stderr: stderr.String()}
	}
	return stdout.Bytes(), nil
}

// inputFile makes the descriptor for in: a memfd, or the read end of a pipe
// fed by a goroutine. Files to close after the command are added to closers.
func inputFile(in Input, closers *[]*os.File) (*os.File, error) {
	if in.Seekable {
		fd, err := unix.MemfdCreate("castellan-key", unix.MFD_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("memfd_create: %w", err)
		}
		f := os.NewFile(uintptr(fd), "memfd:castellan-key")
		*closers = append(*closers, f)
		if err := f.Chmod(0o400); err != nil {
			return nil, fmt.Errorf("memfd: %w", err)
		}
		if _, err := f.Write(in.Data); err != nil {
			return nil, fmt.Errorf("memfd: %w", err)
		}
		if _, err := f.Seek(0, 0); err != nil {
			return nil, fmt.Errorf("memfd: %w", err)
		}
		return f, nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	*closers = append(*closers, r)
	go func() {
		_, _ = w.Write(in.Data)
		w.Close()
	}()
	return r, nil
}
