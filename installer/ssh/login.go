package ssh

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"sync"
)

// Stages the wrapper reports (see wrapperScript).
const (
	stageOK        = "ok"
	stageSudo      = "sudo"
	stageNoSudo    = "nosudo"
	stageNoSudoBin = "nosudobin"
)

// newMarker is a per-call random marker: nothing a login shell prints can
// contain it by chance.
func newMarker() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "castellan-" + hex.EncodeToString(b)
}

// maxNoise bounds the login noise kept per stream.
const maxNoise = 4 << 10

// maxStageLine bounds a stage line (marker, stage and the login shell's
// path).
const maxStageLine = 4 << 10

// markerFilter passes on what follows the wrapper's "MARK ok" line and
// keeps (bounded) what came before: the login environment's output. The
// stage lines before it are recorded, not kept as noise.
type markerFilter struct {
	mu      sync.Mutex // Write runs in the session's copy goroutine
	prefix  []byte     // "MARK "
	out     io.Writer
	passing bool
	pending []byte
	noise   []byte
	nNoise  int64
	stages  []string
	shell   string // from the first stage line
}

func newMarkerFilter(marker string, out io.Writer) *markerFilter {
	return &markerFilter{prefix: []byte(marker + " "), out: out}
}

func (f *markerFilter) addNoise(b []byte) {
	f.nNoise += int64(len(b))
	if room := maxNoise - len(f.noise); room > 0 {
		f.noise = append(f.noise, b[:min(room, len(b))]...)
	}
}

func (f *markerFilter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.passing {
		return f.out.Write(p)
	}
	buf := append(f.pending, p...)
	f.pending = nil
	for {
		i := bytes.Index(buf, f.prefix)
		if i < 0 {
			keep := min(len(buf), len(f.prefix)-1)
			f.addNoise(buf[:len(buf)-keep])
			f.pending = append(f.pending[:0], buf[len(buf)-keep:]...)
			return len(p), nil
		}
		f.addNoise(buf[:i])
		rest := buf[i+len(f.prefix):]
		j := bytes.IndexByte(rest, '\n')
		if j < 0 {
			if len(rest) > maxStageLine {
				// Not one of ours after all (ours are short).
				f.addNoise(buf[i:])
				return len(p), nil
			}
			f.pending = append(f.pending[:0], buf[i:]...)
			return len(p), nil
		}
		stage, shell, _ := strings.Cut(string(rest[:j]), " ")
		f.stages = append(f.stages, stage)
		if f.shell == "" {
			f.shell = shell
		}
		buf = rest[j+1:]
		if stage == stageOK {
			f.passing = true
			if len(buf) > 0 {
				if _, err := f.out.Write(buf); err != nil {
					return 0, err
				}
			}
			return len(p), nil
		}
	}
}

// finish treats what is left unmatched as noise.
func (f *markerFilter) finish() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.passing && len(f.pending) > 0 {
		f.addNoise(f.pending)
		f.pending = nil
	}
}

// state is a snapshot: whether the command started, the last stage, the
// login shell, and the noise kept and counted.
func (f *markerFilter) state() (started bool, stage, shell string, noise []byte, n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.passing, f.lastStage(), f.shell, bytes.Clone(f.noise), f.nNoise
}

func (f *markerFilter) lastStage() string {
	if len(f.stages) == 0 {
		return ""
	}
	return f.stages[len(f.stages)-1]
}

// markerReader reads what follows the "MARK ok" line of r (an SFTP
// server's output, say), the login noise before it filtered out.
type markerReader struct {
	r   io.Reader
	f   *markerFilter
	buf bytes.Buffer
}

func newMarkerReader(marker string, r io.Reader) *markerReader {
	m := &markerReader{r: r}
	m.f = newMarkerFilter(marker, &m.buf)
	return m
}

func (m *markerReader) Read(p []byte) (int, error) {
	for m.buf.Len() == 0 {
		if started, _, _, _, _ := m.f.state(); started {
			return m.r.Read(p)
		}
		chunk := make([]byte, 32<<10)
		n, err := m.r.Read(chunk)
		if n > 0 {
			_, _ = m.f.Write(chunk[:n])
		}
		if err != nil {
			if m.buf.Len() > 0 {
				break
			}
			m.f.finish()
			return 0, err
		}
	}
	return m.buf.Read(p)
}

// LoginNoise is what a node's login environment (the login shell's startup
// files, motd, sudo's warnings) printed around castellan's command.
// castellan drops it from the command's output; callers show it as a
// warning, since it costs time on every command and may hide real problems.
type LoginNoise struct {
	Host, User string
	// Shell is the user's login shell ($SHELL on the node), when known.
	Shell string
	// Stdout and Stderr are the first 4 KiB printed on each stream before
	// the command started; Bytes counts all of it.
	Stdout, Stderr []byte
	Bytes          int64
}

// StartupFiles names the files the login shell reads for a command run over
// SSH (non-interactive), where such output usually comes from.
func (n *LoginNoise) StartupFiles() string {
	return startupFiles(n.Shell)
}

func startupFiles(shell string) string {
	switch path.Base(shell) {
	case "bash":
		return "~/.bashrc (and /etc/bash.bashrc), which bash reads for commands run over SSH"
	case "zsh":
		return "~/.zshenv (and /etc/zsh/zshenv), which zsh reads for every command"
	case "fish":
		return "~/.config/fish/config.fish (and /etc/fish/config.fish), which fish reads for every command"
	case "tcsh", "csh":
		return "~/.tcshrc or ~/.cshrc (and /etc/csh.cshrc), which csh reads for every command"
	case "":
		return "the login shell's startup files"
	}
	return "the startup files of " + shell
}

// Warning is a one-line warning naming the host, the shell, the files to
// look at and (quoted, shortened) what was printed.
func (n *LoginNoise) Warning() string {
	text := strings.Join(strings.Fields(string(n.Stdout)+" "+string(n.Stderr)), " ")
	if len(text) > 160 {
		text = text[:160] + "..."
	}
	shell := ""
	if n.Shell != "" {
		shell = " (login shell " + n.Shell + ")"
	}
	return fmt.Sprintf("ssh: on %s, the login environment of %q%s printed %d bytes before each command: %s; "+
		"castellan ignores it, but it costs time on every command: look at %s, and print only in interactive shells",
		n.Host, n.User, shell, n.Bytes, strconv.Quote(text), n.StartupFiles())
}

// noiseOf builds the LoginNoise of one call, or nil when there was none.
func noiseOf(host, user string, out, errf *markerFilter) *LoginNoise {
	_, _, shell, outNoise, nOut := out.state()
	_, _, _, errNoise, nErr := errf.state()
	if nOut+nErr == 0 {
		return nil
	}
	return &LoginNoise{Host: host, User: user, Shell: shell, Stdout: outNoise, Stderr: errNoise, Bytes: nOut + nErr}
}
