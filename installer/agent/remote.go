package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"castellan/installer/ssh"
)

// BinDir is where agent binaries live on a node. Each is named after its
// checksum, so "is the right agent there" is a directory listing, not a hash
// of 60 MB on every node at every run.
const BinDir = "/var/lib/castellan/bin"

// Binary is a castellan binary that can run as the agent on nodes of Arch.
type Binary struct {
	Path   string
	SHA256 string
	Size   int64
	// Arch is the Go architecture (amd64, arm64).
	Arch string
}

// LocalBinary hashes the binary at path.
func LocalBinary(path, arch string) (Binary, error) {
	f, err := os.Open(path)
	if err != nil {
		return Binary{}, fmt.Errorf("agent binary: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return Binary{}, fmt.Errorf("agent binary %s: %w", path, err)
	}
	return Binary{Path: path, SHA256: hex.EncodeToString(h.Sum(nil)), Size: n, Arch: arch}, nil
}

// RemotePath is where this binary lives on a node.
func (b Binary) RemotePath() string { return path.Join(BinDir, b.fileName()) }

func (b Binary) fileName() string { return "castellan-" + b.SHA256[:16] }

// Runner is what the agent needs of a connection (an *ssh.Client).
type Runner interface {
	Run(ctx context.Context, cmd ssh.Cmd) (ssh.Result, error)
	Upload(ctx context.Context, u ssh.Upload) error
}

// Status is what one probe learns about a node.
type Status struct {
	// Arch is the node's Go architecture, from uname -m.
	Arch string
	// Installed lists the agent binaries present in BinDir.
	Installed []string
}

// Has reports whether b is installed.
func (s Status) Has(b Binary) bool {
	for _, n := range s.Installed {
		if n == b.fileName() {
			return true
		}
	}
	return false
}

// Probe learns the node's architecture and which agents it has, with one
// unprivileged command.
func Probe(ctx context.Context, c Runner) (Status, error) {
	res, err := c.Run(ctx, ssh.Cmd{Argv: []string{"sh", "-c", `uname -m && { ls -1 "$1" 2>/dev/null; true; }`, "sh", BinDir}, Sudo: false})
	if err != nil {
		return Status{}, fmt.Errorf("probing node: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(res.Stdout)), "\n")
	arch, err := goArch(strings.TrimSpace(lines[0]))
	if err != nil {
		return Status{}, err
	}
	st := Status{Arch: arch}
	for _, l := range lines[1:] {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "castellan-") {
			st.Installed = append(st.Installed, l)
		}
	}
	return st, nil
}

func goArch(machine string) (string, error) {
	switch machine {
	case "x86_64", "amd64":
		return "amd64", nil
	case "aarch64", "arm64":
		return "arm64", nil
	}
	return "", fmt.Errorf("unsupported node architecture %q (castellan runs on x86_64 and aarch64)", machine)
}

// Install uploads b to the node (root-owned, mode 0755, checksum verified,
// renamed into place atomically), points BinDir/castellan at it and removes
// older agents. Progress reports bytes.
func Install(ctx context.Context, c Runner, b Binary, progress func(done, total int64)) error {
	if _, err := c.Run(ctx, ssh.Cmd{Argv: []string{"install", "-d", "-m", "0755", "-o", "root", "-g", "root", path.Dir(BinDir), BinDir}, Sudo: true}); err != nil {
		return fmt.Errorf("creating %s: %w", BinDir, err)
	}
	err := c.Upload(ctx, ssh.Upload{
		SrcPath: b.Path, Size: b.Size, SHA256: b.SHA256,
		Dst: b.RemotePath(), Mode: 0o755, Owner: "root", Group: "root", Sudo: true,
		Progress: progress,
	})
	if err != nil {
		return fmt.Errorf("uploading the agent: %w", err)
	}
	// Older agents go, and so do temp files of uploads that were cut off.
	cleanup := `cd "$1" && ln -sfn "$2" castellan && for f in castellan-* .castellan-*.tmp; do [ "$f" = "$2" ] || rm -f -- "$f"; done`
	if _, err := c.Run(ctx, ssh.Cmd{Argv: []string{"sh", "-c", cleanup, "sh", BinDir, b.fileName()}, Sudo: true}); err != nil {
		return fmt.Errorf("removing older agents: %w", err)
	}
	return nil
}

// Call runs operation op of the agent at remotePath on the node with in as
// JSON input and decodes the result into out (nil to discard it). A failed
// operation returns an *Error naming the node and the operation.
func Call(ctx context.Context, c Runner, node, remotePath, op string, in, out any) error {
	input, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("agent %s on %s: encoding input: %w", op, node, err)
	}
	res, runErr := c.Run(ctx, ssh.Cmd{Argv: []string{remotePath, "agent", op}, Sudo: true, Stdin: bytes.NewReader(input)})
	resp, perr := parseResponse(res.Stdout)
	if perr != nil {
		if runErr != nil {
			return fmt.Errorf("agent %s on %s: %w", op, node, runErr)
		}
		return fmt.Errorf("agent %s on %s: %w", op, node, perr)
	}
	if !resp.OK {
		e := resp.Error
		if e == nil {
			e = &Error{Code: "failed", Message: "the agent reported failure without an error"}
		}
		e.Node, e.Op = node, op
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(resp.Result, out); err != nil {
		return fmt.Errorf("agent %s on %s: decoding result: %w", op, node, err)
	}
	return nil
}

// parseResponse reads the agent's one-line JSON response.
func parseResponse(stdout []byte) (Response, error) {
	line := bytes.TrimSpace(stdout)
	if i := bytes.LastIndexByte(line, '\n'); i >= 0 {
		line = line[i+1:]
	}
	if len(line) == 0 {
		return Response{}, errors.New("the agent gave no response")
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return Response{}, fmt.Errorf("the agent's response is not JSON: %w", err)
	}
	return resp, nil
}
