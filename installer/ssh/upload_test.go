package ssh_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	castssh "castellan/installer/ssh"
	"castellan/installer/ssh/sshtest"
)

// randomFile writes size pseudo-random bytes and returns the path and hex
// sha256.
func randomFile(t *testing.T, size int64) (string, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "payload")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	rng := rand.NewChaCha8([32]byte{1, 2, 3})
	if _, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(rng, size)); err != nil {
		t.Fatal(err)
	}
	return p, hex.EncodeToString(h.Sum(nil))
}

func fileSHA256(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func noTempFiles(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".castellan-") {
			t.Fatalf("temporary file left behind: %s", e.Name())
		}
	}
}

func TestUploadLarge(t *testing.T) {
	t.Parallel()
	size := int64(200 << 20)
	if testing.Short() {
		size = 20 << 20
	}
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	c := connect(t, lab.Config(), lab.Nodes[0].Host())
	src, sum := randomFile(t, size)
	dir := lab.UserDir("large")
	dst := filepath.Join(dir, "payload.bin")

	var calls atomic.Int64
	var last atomic.Int64
	start := time.Now()
	err := c.Upload(testCtx(t), castssh.Upload{
		SrcPath: src, Dst: dst, Mode: 0o600,
		Progress: func(done, total int64) {
			if total != size || done < last.Load() {
				t.Errorf("progress(%d, %d) after %d", done, total, last.Load())
			}
			last.Store(done)
			calls.Add(1)
		},
	})
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("uploaded %d MB in %s: %.1f MB/s (sha256 verified on the node, %d progress calls)",
		size>>20, elapsed.Round(time.Millisecond), float64(size)/1e6/elapsed.Seconds(), calls.Load())
	if got := fileSHA256(t, dst); got != sum {
		t.Fatalf("sha256 on disk %s, want %s", got, sum)
	}
	if last.Load() != size || calls.Load() < 2 {
		t.Fatalf("progress ended at %d after %d calls", last.Load(), calls.Load())
	}
	st, _ := os.Stat(dst)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	noTempFiles(t, dir)
}

func TestUploadChecksumMismatch(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	c := connect(t, lab.Config(), lab.Nodes[0].Host())
	dir := lab.UserDir("sum")
	dst := filepath.Join(dir, "config")
	if err := os.WriteFile(dst, []byte("old content\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wrong := strings.Repeat("ab", 32)
	err := c.Upload(testCtx(t), castssh.Upload{Src: strings.NewReader("new content\n"), Dst: dst, SHA256: wrong})
	var ce *castssh.ChecksumError
	if !errors.As(err, &ce) || ce.Want != wrong {
		t.Fatalf("want *ChecksumError, got %T: %v", err, err)
	}
	t.Logf("message: %v", err)
	if b, _ := os.ReadFile(dst); string(b) != "old content\n" {
		t.Fatalf("destination touched: %q", b)
	}
	noTempFiles(t, dir)

	// A correct checksum replaces it atomically.
	sum := sha256.Sum256([]byte("new content\n"))
	if err := c.Upload(testCtx(t), castssh.Upload{Src: strings.NewReader("new content\n"), Dst: dst, SHA256: hex.EncodeToString(sum[:])}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "new content\n" {
		t.Fatalf("destination %q", b)
	}
	// A bad digest string is refused before anything is sent.
	if err := c.Upload(testCtx(t), castssh.Upload{Src: strings.NewReader("x"), Dst: dst, SHA256: "nothex"}); err == nil {
		t.Fatal("bad digest accepted")
	}
	// A short source is refused (Size is a check).
	err = c.Upload(testCtx(t), castssh.Upload{Src: strings.NewReader("abc"), Size: 10, Dst: dst})
	if err == nil || !strings.Contains(err.Error(), "expected 10") {
		t.Fatalf("short source: %v", err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "new content\n" {
		t.Fatalf("destination touched by a failed upload: %q", b)
	}
	noTempFiles(t, dir)
}

func TestUploadSudo(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	c := connect(t, lab.Config(), lab.Nodes[0].Host())
	// A root-owned directory the user cannot write to.
	dir := filepath.Join(lab.Dir, "etc-like")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "secret.conf")
	content := []byte("token: not-really-secret\n")

	if err := c.Upload(testCtx(t), castssh.Upload{Src: bytes.NewReader(content), Dst: dst, Mode: 0o600}); err == nil {
		t.Fatal("unprivileged upload into a root-owned directory succeeded")
	}
	if err := c.Upload(testCtx(t), castssh.Upload{Src: bytes.NewReader(content), Dst: dst, Mode: 0o640, Sudo: true}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if sys.Uid != 0 || sys.Gid != 0 || st.Mode().Perm() != 0o640 {
		t.Fatalf("got uid %d gid %d mode %v, want root:root 0640", sys.Uid, sys.Gid, st.Mode())
	}
	if b, _ := os.ReadFile(dst); !bytes.Equal(b, content) {
		t.Fatalf("content %q", b)
	}
	// Owner and group by name, with set-gid kept after chown.
	dst2 := filepath.Join(dir, "owned")
	if err := c.Upload(testCtx(t), castssh.Upload{Src: bytes.NewReader(content), Dst: dst2, Mode: 0o2750, Owner: lab.User, Group: "root", Sudo: true}); err != nil {
		t.Fatal(err)
	}
	st, _ = os.Stat(dst2)
	sys = st.Sys().(*syscall.Stat_t)
	if int(sys.Uid) != labUID(t, lab) || sys.Gid != 0 || st.Mode()&(os.ModePerm|os.ModeSetgid) != 0o750|os.ModeSetgid {
		t.Fatalf("got uid %d gid %d mode %v", sys.Uid, sys.Gid, st.Mode())
	}
	noTempFiles(t, dir)
}

func TestUploadHostilePath(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	c := connect(t, lab.Config(), lab.Nodes[0].Host())
	base := lab.UserDir("hostile")
	for _, sudo := range []bool{false, true} {
		name := `we'ird "name" $(touch pwned) ` + "`touch pwned2`" + ` ;&|<>*?[a] \ -x`
		if sudo {
			name += " sudo"
		}
		dir := filepath.Join(base, "d $(id) 'q'")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, labUID(t, lab), 0); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, name)
		if err := c.Upload(testCtx(t), castssh.Upload{Src: strings.NewReader("payload"), Dst: dst, Sudo: sudo}); err != nil {
			t.Fatalf("sudo=%v: %v", sudo, err)
		}
		if b, err := os.ReadFile(dst); err != nil || string(b) != "payload" {
			t.Fatalf("sudo=%v: file at the exact path: %q, %v", sudo, b, err)
		}
		noTempFiles(t, dir)
	}
	for _, p := range []string{"pwned", "pwned2"} {
		for _, d := range []string{"/", lab.Dir, base} {
			if _, err := os.Stat(filepath.Join(d, p)); err == nil {
				t.Fatalf("a shell ran part of the path: %s/%s exists", d, p)
			}
		}
	}
}

func labUID(t *testing.T, lab *sshtest.Lab) int {
	t.Helper()
	u, err := user.Lookup(lab.User)
	if err != nil {
		t.Fatal(err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		t.Fatal(err)
	}
	return uid
}

// corruptingReader yields data; when the uploader has read all of it, it
// appends a byte to the upload's temporary file on the node (whose file
// system the test shares), past every offset the uploader writes to: the
// data on the node is no longer what was sent.
type corruptingReader struct {
	r    io.Reader
	dir  string
	size int64
	done bool
	err  error
}

func (c *corruptingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err == io.EOF && !c.done {
		c.done = true
		tmps, _ := filepath.Glob(filepath.Join(c.dir, ".castellan-*.tmp"))
		if len(tmps) != 1 {
			c.err = errors.New("no temporary upload file to corrupt")
			return n, err
		}
		f, ferr := os.OpenFile(tmps[0], os.O_WRONLY, 0)
		if ferr != nil {
			c.err = ferr
			return n, err
		}
		_, c.err = f.WriteAt([]byte{'!'}, c.size)
		f.Close()
	}
	return n, err
}

// TestUploadCorruptedOnNode: the data that reached the node differs from
// what was sent: the node-side sha256 check refuses it, the destination is
// untouched and no temporary file stays (issue 14: this check was never
// exercised).
func TestUploadCorruptedOnNode(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	c := connect(t, lab.Config(), lab.Nodes[0].Host())
	data := bytes.Repeat([]byte("castellan agent "), 64<<10) // 1 MiB
	sum := sha256.Sum256(data)
	for _, sudo := range []bool{false, true} {
		dir := lab.UserDir("corrupt-" + strconv.FormatBool(sudo))
		dst := filepath.Join(dir, "agent")
		if err := os.WriteFile(dst, []byte("old agent\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"", hex.EncodeToString(sum[:])} {
			src := &corruptingReader{r: bytes.NewReader(data), dir: dir, size: int64(len(data))}
			err := c.Upload(testCtx(t), castssh.Upload{Src: src, Size: int64(len(data)), Dst: dst, SHA256: want, Sudo: sudo})
			if src.err != nil {
				t.Fatalf("corrupting: %v", src.err)
			}
			var ce *castssh.ChecksumError
			if !errors.As(err, &ce) || ce.Where != "remote" || ce.Want != hex.EncodeToString(sum[:]) || ce.Got == ce.Want {
				t.Fatalf("sudo=%v, SHA256 %q: want a remote *ChecksumError, got %T: %v", sudo, want, err, err)
			}
			if b, _ := os.ReadFile(dst); string(b) != "old agent\n" {
				t.Fatalf("destination replaced by corrupted data (%d bytes)", len(b))
			}
			noTempFiles(t, dir)
			assertMessage(t, err)
		}
	}
}
