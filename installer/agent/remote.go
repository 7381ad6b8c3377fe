package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"castellan/installer/ssh"
)

// BinDir is where agent binaries live on a node. Each is named after its
// checksum, so finding the right agent is a stat, not a hash of the whole
// binary at every run (see the launcher for how its content is verified).
const BinDir = "/var/lib/castellan/bin"

// Binary is a binary that can run as the agent on nodes of Arch (it answers
// `BINARY agent OP`): castellan-agent, or castellan itself.
type Binary struct {
	// Path is the local file; Data, when set, is the content instead (an
	// agent embedded in castellan).
	Path   string
	Data   []byte
	SHA256 string // hex
	Size   int64  // bytes
	// Arch is the Go architecture (amd64, arm64).
	Arch string
}

// EmbeddedBinary is an agent binary held in memory.
func EmbeddedBinary(data []byte, arch string) Binary {
	sum := sha256.Sum256(data)
	return Binary{Path: "(embedded castellan-agent-linux-" + arch + ")", Data: data, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data)), Arch: arch}
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

// Status is what every exec learns about the node's agent.
type Status struct {
	// Installed: this binary is on the node, safe and unmodified.
	Installed bool
	// Arch is the node's Go architecture (from uname -m).
	Arch string
}

// UnsafeAgentError reports an agent that castellan refuses to run as root:
// a path on its way is not root-owned or is writable by others, or its
// content is not what was shipped.
type UnsafeAgentError struct {
	Node   string
	Path   string // the file or directory at fault
	Reason string // "owner uid 1000", "mode 775", "symbolic link", "content sha256 ..."
	Fix    string
}

func (e *UnsafeAgentError) Error() string {
	return fmt.Sprintf("%s: refusing to run the castellan agent as root: %s: %s; %s", e.Node, e.Path, e.Reason, e.Fix)
}

// launcher runs as root (through sudo, or directly for root logins) and is
// the only way castellan starts its agent. Arguments: the agent's path, its
// expected sha256, the name of its verification stamp, the operation. It
// prints one status line, then (when the agent is there and safe) execs it,
// in the same remote exec:
//
//	castellan-agent missing MACHINE          the agent is not on the node
//	castellan-agent unsafe PATH REASON       refused: see UnsafeAgentError
//	castellan-agent ok                       followed by the agent's response
//
// Safety: every directory from / down to the agent and the agent itself must
// be owned by root and writable by nobody else, so only root can have
// changed it; a symbolic link on the way is resolved first and the resolved
// path is checked. Content: the sha256 of the binary must be the one
// castellan shipped. Hashing tens of MB at every run costs ~50 ms of CPU per
// node, so a successful check is remembered in a stamp under /run/castellan
// (created by root in a directory only root can write: tmpfs, gone at
// reboot) holding the file's device, inode, size, mtime and ctime: any write
// to the file changes its ctime, which only root could forge (by setting the
// clock), and root can change the agent anyway. A stamp that does not match
// means hashing again.
//
// Cost on a no-op run (the agent verified before): one stat(1) for the whole
// path, shell builtins for the rest, then the agent itself.
const launcher = `set -u
bin=$1 want=$2 stamp=/run/castellan/verified-$3 op=$4
unsafe() { echo "castellan-agent unsafe $1 $2"; exit 0; }
if [ ! -e "$bin" ] && [ ! -L "$bin" ]; then
	echo "castellan-agent missing $(uname -m)"
	exit 0
fi
check() {
	set -- "$1"
	d=${1%/*}
	while [ -n "$d" ]; do set -- "$@" "$d"; d=${d%/*}; done
	set -- "$@" /
	stat -c '%u:%a:%d.%i.%s.%Y.%Z:%F:%n' -- "$@" || unsafe "$1" cannot-stat
}
lines=$(check "$bin")
case $lines in *":symbolic link:"*)
	real=$(readlink -f -- "$bin") || unsafe "$bin" unresolvable
	lines=$(check "$real") ;;
esac
case $lines in "castellan-agent unsafe "*) echo "$lines"; exit 0 ;; esac
id=
while IFS=: read -r uid mode inode kind name; do
	[ "$kind" = "symbolic link" ] && unsafe "$name" symbolic-link
	[ "$uid" = 0 ] || unsafe "$name" "owner-uid-$uid"
	[ $(( 0$mode & 022 )) -eq 0 ] || unsafe "$name" "mode-$mode"
	if [ -z "$id" ]; then
		case $kind in "regular file" | "regular empty file") ;; *) unsafe "$name" not-a-regular-file ;; esac
		id="$want $inode" real=$name
	fi
done <<EOF
$lines
EOF
have=
if [ -O /run/castellan ] && [ -f "$stamp" ]; then IFS= read -r have <"$stamp" || have=; fi
if [ "$have" != "$id" ]; then
	sum=$(sha256sum -- "$real") || unsafe "$real" unreadable
	sum=${sum%% *}
	[ "$sum" = "$want" ] || unsafe "$real" "content-sha256-$sum"
	(umask 077 && mkdir -p /run/castellan && chmod 700 /run/castellan &&
		printf '%s\n' "$id" >"$stamp.$$" && mv -f "$stamp.$$" "$stamp") 2>/dev/null || :
fi
echo "castellan-agent ok"
exec "$real" agent "$op"
`

// Exec runs operation op of binary b on the node through the launcher, in one
// remote exec as root, with input as its JSON stdin. It returns what the exec
// learned of the agent and, when the agent ran, its Response (errors of the
// operation are in the Response). A missing agent is Status{Installed:
// false} with no error; an unsafe one is an *UnsafeAgentError; transport
// failures are the ssh package's errors.
func Exec(ctx context.Context, c Runner, node string, b Binary, op string, input []byte) (Status, Response, error) {
	res, runErr := c.Run(ctx, ssh.Cmd{
		Argv:  []string{"sh", "-c", launcher, "castellan-launcher", b.RemotePath(), b.SHA256, b.SHA256[:16], op},
		Sudo:  true,
		Stdin: bytes.NewReader(input),
	})
	st, rest, perr := parseStatus(res.Stdout)
	if perr != nil {
		if runErr != nil {
			return Status{}, Response{}, runErr
		}
		return Status{}, Response{}, fmt.Errorf("%s: starting the agent: %w", node, perr)
	}
	if st.unsafe != nil {
		st.unsafe.Node = node
		return Status{Arch: st.Arch}, Response{}, st.unsafe
	}
	if !st.Installed {
		return st.Status, Response{}, nil
	}
	st.Arch = b.Arch // the agent for Arch ran: the node is of that architecture
	resp, derr := DecodeResponse(rest)
	if derr != nil {
		if runErr != nil {
			return st.Status, Response{}, fmt.Errorf("%s: agent %s: %w", node, op, runErr)
		}
		return st.Status, Response{}, fmt.Errorf("%s: agent %s: %w", node, op, derr)
	}
	return st.Status, resp, nil
}

type launchStatus struct {
	Status
	unsafe *UnsafeAgentError
}

// parseStatus finds the launcher's status line in stdout and returns it with
// what follows it (the agent's output).
func parseStatus(stdout []byte) (launchStatus, []byte, error) {
	var st launchStatus
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	sc.Buffer(make([]byte, 64<<10), MaxResponse)
	offset := 0
	for sc.Scan() {
		line := sc.Text()
		offset += len(line) + 1
		fields := strings.Fields(line)
		if len(fields) < 2 || fields[0] != "castellan-agent" {
			continue
		}
		switch {
		case fields[1] == "ok" && len(fields) == 2:
			st.Installed = true
		case fields[1] == "missing" && len(fields) == 3:
			arch, err := GoArch(fields[2])
			if err != nil {
				return st, nil, err
			}
			st.Arch = arch
		case fields[1] == "unsafe" && len(fields) == 4:
			st.unsafe = unsafeError(fields[2], fields[3])
		default:
			return st, nil, fmt.Errorf("unexpected launcher output %q", line)
		}
		return st, stdout[min(offset, len(stdout)):], nil
	}
	return st, nil, errors.New("the launcher printed no status (is /bin/sh a POSIX shell and are coreutils installed?)")
}

func unsafeError(p, reason string) *UnsafeAgentError {
	e := &UnsafeAgentError{Path: p}
	switch {
	case strings.HasPrefix(reason, "owner-uid-"):
		e.Reason = "owned by uid " + strings.TrimPrefix(reason, "owner-uid-") + ", not root"
		e.Fix = fmt.Sprintf("whoever owns it could replace the agent; check why, then `chown root:root %s`", p)
	case strings.HasPrefix(reason, "mode-"):
		e.Reason = "mode " + strings.TrimPrefix(reason, "mode-") + " lets group or others write"
		e.Fix = fmt.Sprintf("others could replace the agent; check why, then `chmod go-w %s`", p)
	case reason == "symbolic-link":
		e.Reason = "a symbolic link on the agent's path"
		e.Fix = "castellan resolves links before checking; report this as a bug"
	case strings.HasPrefix(reason, "content-sha256-"):
		e.Reason = "its content (sha256 " + strings.TrimPrefix(reason, "content-sha256-") + ") is not the binary castellan shipped"
		e.Fix = fmt.Sprintf("something changed the agent after it was installed: investigate, then remove it (`rm %s`) and rerun to install it again", p)
	default:
		e.Reason = reason
		e.Fix = "check the node's " + BinDir
	}
	return e
}

// GoArch maps `uname -m` to a Go architecture.
func GoArch(machine string) (string, error) {
	switch machine {
	case "x86_64", "amd64":
		return "amd64", nil
	case "aarch64", "arm64":
		return "arm64", nil
	}
	return "", fmt.Errorf("unsupported node architecture %q (castellan runs on x86_64 and aarch64)", machine)
}

// Install uploads b to the node (root-owned, mode 0755, checksum verified on
// the node, renamed into place atomically), points BinDir/castellan at it and
// removes older agents and cut-off uploads. Progress reports bytes.
func Install(ctx context.Context, c Runner, b Binary, progress func(done, total int64)) error {
	if _, err := c.Run(ctx, ssh.Cmd{Argv: []string{"install", "-d", "-m", "0755", "-o", "root", "-g", "root", path.Dir(BinDir), BinDir}, Sudo: true}); err != nil {
		return fmt.Errorf("creating %s: %w", BinDir, err)
	}
	up := ssh.Upload{SrcPath: b.Path}
	if b.Data != nil {
		up = ssh.Upload{Src: bytes.NewReader(b.Data)}
	}
	up.Size, up.SHA256 = b.Size, b.SHA256
	up.Dst, up.Mode, up.Owner, up.Group, up.Sudo, up.Progress = b.RemotePath(), 0o755, "root", "root", true, progress
	if err := c.Upload(ctx, up); err != nil {
		return fmt.Errorf("uploading the agent: %w", err)
	}
	cleanup := `cd "$1" && ln -sfn "$2" castellan && for f in castellan-* .castellan-*.tmp; do [ "$f" = "$2" ] || rm -f -- "$f"; done`
	if _, err := c.Run(ctx, ssh.Cmd{Argv: []string{"sh", "-c", cleanup, "sh", BinDir, b.fileName()}, Sudo: true}); err != nil {
		return fmt.Errorf("removing older agents: %w", err)
	}
	return nil
}
