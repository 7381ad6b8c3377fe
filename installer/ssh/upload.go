package ssh

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// Upload describes a file to place on a host.
type Upload struct {
	// Src is the content; SrcPath a local file to read instead.
	Src     io.Reader
	SrcPath string
	// Size is the number of bytes Src yields, for progress and as a check
	// (0: unknown, or taken from SrcPath).
	Size int64
	// Dst is the absolute destination path. Its directory must exist.
	Dst string
	// Mode of the destination file (default 0644).
	Mode os.FileMode
	// Owner and Group, by name or number (default: unchanged, i.e. the
	// connecting user, or root with Sudo).
	Owner, Group string
	// SHA256 is the expected hex digest of the content. When empty it is
	// computed while sending. Either way the file is hashed on the node
	// (sha256sum) before it is renamed into place.
	SHA256 string
	// Sudo writes the file as root: the SFTP server runs as root, like a
	// privileged Cmd (directly for a root login, else through `sudo -n`).
	Sudo bool
	// Progress, when set, is called with the bytes sent so far and the total
	// (0 when unknown).
	Progress func(done, total int64)
}

// sftpServerPaths are where sftp-server is looked for on a node.
const sftpServerPaths = "/usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/lib/ssh/sftp-server /usr/libexec/sftp-server"

// sftpServerArgv finds the sftp-server binary at the usual paths and execs
// it (the wrapper runs it as root when privileged); exit code 127 when
// there is none. -u 077: files are created 0600 and get their final mode
// only once verified.
var sftpServerArgv = []string{"sh", "-c",
	`for p in ` + sftpServerPaths + `; do if [ -x "$p" ]; then exec "$p" -u 077; fi; done; ` +
		`echo "castellan: no sftp-server found at ` + sftpServerPaths + `" >&2; exit 127`}

// sftpOptions: concurrent writes of large packets keep the channel window
// full (OpenSSH's sftp-server accepts messages up to 256 KiB).
func sftpOptions() []sftp.ClientOption {
	return []sftp.ClientOption{
		sftp.UseConcurrentWrites(true),
		sftp.MaxConcurrentRequestsPerFile(64),
		sftp.MaxPacketUnchecked(sftpPacketSize),
	}
}

const sftpPacketSize = 128 << 10

// openSFTP starts an SFTP server on a new session: sftp-server executed
// through the wrapper (as root when privileged: root or sudo is decided on
// the node, like for Run), whose output is read after the wrapper's marker
// (a noisy login shell cannot corrupt the SFTP stream), or the sftp
// subsystem as a fallback for unprivileged transfers.
func (c *Client) openSFTP(ctx context.Context, privileged bool, op string) (*sftp.Client, func(), error) {
	if !c.Alive() {
		return nil, nil, &ConnectionLostError{Host: c.name, Addr: c.addr, Command: op, Err: c.deadErr}
	}
	marker := newMarker()
	line, err := execRequest(marker, sftpServerArgv, execMode{privileged: privileged, sudo: c.cfg.Sudo})
	if err != nil {
		return nil, nil, errorf("ssh: %s on %s: %w", op, c.name, err)
	}
	sess, err := c.conn.NewSession()
	if err != nil {
		if lerr := c.lost(op, time.Second); lerr != nil {
			return nil, nil, lerr
		}
		return nil, nil, errorf("ssh: opening a session on %s for %s: %w", c.name, op, err)
	}
	stdin, err := sess.StdinPipe()
	if err != nil {
		sess.Close()
		return nil, nil, errorf("ssh: sftp on %s: %w", c.name, err)
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		sess.Close()
		return nil, nil, errorf("ssh: sftp on %s: %w", c.name, err)
	}
	stderr := &tailBuffer{max: 4096}
	errF := newMarkerFilter(marker, stderr)
	sess.Stderr = errF
	if err := sess.Start(line); err != nil {
		sess.Close()
		if lerr := c.lost(op, time.Second); lerr != nil {
			return nil, nil, lerr
		}
		return nil, nil, errorf("ssh: starting sftp-server on %s: %w", c.name, err)
	}
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	out := newMarkerReader(marker, stdout)
	sc, err := sftp.NewClientPipe(out, stdin, sftpOptions()...)
	if err == nil {
		c.noteNoise(noiseOf(c.name, c.user, out.f, errF))
		return sc, func() {
			stop()
			sc.Close()
			sess.Close()
		}, nil
	}
	stop()
	// Find out why the server did not start.
	code := -1
	waited := make(chan error, 1)
	go func() { waited <- sess.Wait() }()
	select {
	case werr := <-waited:
		var ee *ssh.ExitError
		if errors.As(werr, &ee) {
			code = ee.ExitStatus()
		}
		// The SFTP client can fail writing its first packet to a wrapper
		// that already exited, before it read anything: the wrapper's stage
		// lines (sudo ...) are then still unread, and a refused sudo would
		// look like a broken login shell. The session is over: read them.
		drainWrapper(out)
	case <-time.After(5 * time.Second):
	}
	sess.Close()
	if lerr := c.lost(op, 100*time.Millisecond); lerr != nil {
		return nil, nil, lerr
	}
	if ctx.Err() != nil {
		return nil, nil, errorf("ssh: %s on %s: %w", op, c.name, ctx.Err())
	}
	out.f.finish()
	errF.finish()
	c.noteNoise(noiseOf(c.name, c.user, out.f, errF))
	if started, stage, _, outNoise, _ := out.f.state(); !started {
		rr := runResult{stage: stage, stdoutNoise: outNoise}
		_, _, _, rr.stderrNoise, _ = errF.state()
		rr.ExitCode = code
		return nil, nil, c.notStarted(ctx, rr, op)
	}
	if code == 127 && !privileged {
		sc, err := sftp.NewClient(c.conn, sftpOptions()...)
		if err != nil {
			return nil, nil, errorf("ssh: sftp subsystem on %s: %w", c.name, err)
		}
		stop := context.AfterFunc(ctx, func() { sc.Close() })
		return sc, func() {
			stop()
			sc.Close()
		}, nil
	}
	return nil, nil, errorf("ssh: starting sftp-server on %s (exit code %d): %w: %s",
		c.name, code, err, strings.TrimSpace(string(stderr.bytes())))
}

// drainWrapper reads what is left of a finished wrapper's standard output
// through its marker filter (at most 1 MiB), so that its stage lines and
// login noise are known.
func drainWrapper(out *markerReader) {
	_, _ = io.Copy(io.Discard, io.LimitReader(out, 1<<20))
}

// progressReader hashes and counts what is read from r and reports progress.
type progressReader struct {
	r        io.Reader
	h        hash.Hash
	n        int64
	total    int64
	reported int64
	progress func(done, total int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.h.Write(b[:n])
		p.n += int64(n)
		if p.progress != nil && p.n-p.reported >= 1<<20 {
			p.reported = p.n
			p.progress(p.n, p.total)
		}
	}
	return n, err
}

// Upload writes a file on the host: to a temporary name in the destination
// directory, synced and closed, verified with sha256sum on the node, given
// its owner and mode, then renamed over Dst atomically (posix-rename). On
// any failure the temporary file is removed and Dst is untouched.
func (c *Client) Upload(ctx context.Context, u Upload) (err error) {
	sudo := u.Sudo
	dst := u.Dst
	if !path.IsAbs(dst) || strings.HasSuffix(dst, "/") || strings.IndexByte(dst, 0) >= 0 {
		return errorf("ssh: upload to %s: destination %q must be an absolute file path", c.name, dst)
	}
	dst = path.Clean(dst)
	op := fmt.Sprintf("upload to %q", dst)
	want := strings.ToLower(u.SHA256)
	if want != "" {
		if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
			return errorf("ssh: %s on %s: SHA256 %q is not a hex SHA-256 digest", op, c.name, u.SHA256)
		}
	}
	mode := u.Mode
	if mode == 0 {
		mode = 0o644
	}

	src, total := u.Src, u.Size
	switch {
	case src != nil && u.SrcPath != "":
		return errorf("ssh: %s on %s: give Src or SrcPath, not both", op, c.name)
	case u.SrcPath != "":
		f, err := os.Open(u.SrcPath)
		if err != nil {
			return errorf("ssh: %s on %s: %w", op, c.name, err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return errorf("ssh: %s on %s: %w", op, c.name, err)
		}
		if total == 0 {
			total = st.Size()
		}
		src = f
	case src == nil:
		return errorf("ssh: %s on %s: no source (Src or SrcPath)", op, c.name)
	}

	sc, closeSFTP, err := c.openSFTP(ctx, sudo, op)
	if err != nil {
		return err
	}
	defer closeSFTP()
	// Any SFTP failure may be the connection dying: say so if it is.
	fail := func(step string, err error) error {
		var status *sftp.StatusError
		if !errors.As(err, &status) && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, os.ErrPermission) {
			// No answer from the server: see whether the connection died.
			if lerr := c.lost(op, 500*time.Millisecond); lerr != nil {
				return lerr
			}
		}
		if ctx.Err() != nil {
			return errorf("ssh: %s on %s: %w", op, c.name, ctx.Err())
		}
		return errorf("ssh: %s on %s: %s: %w", op, c.name, step, err)
	}

	dir := path.Dir(dst)
	if st, err := sc.Stat(dir); err != nil {
		return fail("destination directory "+dir, err)
	} else if !st.IsDir() {
		return errorf("ssh: %s on %s: %s is not a directory", op, c.name, dir)
	}
	tmp := path.Join(dir, ".castellan-"+randomHex(8)+".tmp")
	f, err := sc.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return fail("creating "+tmp, err)
	}
	keep := false
	defer func() {
		if !keep {
			if rerr := sc.Remove(tmp); rerr != nil && c.Alive() {
				c.log.Warn("removing temporary upload file", "path", tmp, "err", rerr)
			}
		}
	}()
	// Restrict the file before any byte is written (the subsystem fallback
	// does not honour -u 077).
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fail("chmod "+tmp, err)
	}

	start := time.Now()
	pr := &progressReader{r: src, h: sha256.New(), total: total, progress: u.Progress}
	n, err := f.ReadFromWithConcurrency(pr, 0)
	if err != nil {
		f.Close()
		return fail("writing "+tmp, err)
	}
	if total > 0 && n != total {
		f.Close()
		return errorf("ssh: %s on %s: source gave %d bytes, expected %d", op, c.name, n, total)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fail("fsync "+tmp, err)
	}
	if err := f.Close(); err != nil {
		return fail("closing "+tmp, err)
	}
	elapsed := time.Since(start)
	local := hex.EncodeToString(pr.h.Sum(nil))
	if want != "" && local != want {
		return &ChecksumError{Host: c.name, Path: dst, Want: want, Got: local, Where: "source"}
	}
	if want == "" {
		want = local
	}

	out, err := c.Output(ctx, Cmd{Argv: []string{"sha256sum", "--", tmp}, Sudo: sudo})
	if err != nil {
		return errorf("ssh: %s on %s: verifying: %w", op, c.name, err)
	}
	got := strings.TrimPrefix(strings.Fields(out + " ")[0], `\`)
	if got != want {
		return &ChecksumError{Host: c.name, Path: dst, Want: want, Got: got, Where: "remote"}
	}

	if u.Owner != "" || u.Group != "" {
		spec := u.Owner
		if u.Group != "" {
			spec += ":" + u.Group
		}
		if _, err := c.Run(ctx, Cmd{Argv: []string{"chown", "--", spec, tmp}, Sudo: sudo}); err != nil {
			return errorf("ssh: %s on %s: setting owner: %w", op, c.name, err)
		}
	}
	// After chown, which clears set-id bits.
	if err := sc.Chmod(tmp, mode); err != nil {
		return fail("chmod "+tmp, err)
	}
	if err := sc.PosixRename(tmp, dst); err != nil {
		return fail("renaming into place", err)
	}
	keep = true
	if u.Progress != nil {
		u.Progress(n, total)
	}
	c.log.Debug("ssh upload", "dst", dst, "bytes", n, "seconds", elapsed.Seconds(),
		"MBps", float64(n)/1e6/max(elapsed.Seconds(), 1e-9), "sudo", sudo)
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
