package localfile

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRead pins what Read returns for each kind of path, with the exact
// message a user sees. Every case must finish at once: a FIFO with no writer
// or /dev/zero would hang or exhaust memory if Read opened and read them.
func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	small := write("small", []byte("hello\n"))
	big := write("big", bytes.Repeat([]byte("x"), 2048))
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(small, link); err != nil {
		t.Fatal(err)
	}
	fifoLink := filepath.Join(dir, "fifo-link")
	if err := os.Symlink(fifo, fifoLink); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	tests := []struct {
		name, path string
		max        int64
		want       string // content, or the error message
		is         error
	}{
		{name: "regular file", path: small, max: 1024, want: "hello\n"},
		{name: "exactly the limit", path: small, max: 6, want: "hello\n"},
		{name: "symlink to a regular file", path: link, max: 1024, want: "hello\n"},
		{name: "too large", path: big, max: 1024, want: big + ": is 2 KiB, more than the 1 KiB castellan reads; is this the right file?", is: ErrTooLarge},
		{name: "one byte too large", path: small, max: 5, want: small + ": is 6 bytes, more than the 5 bytes castellan reads; is this the right file?", is: ErrTooLarge},
		{name: "missing", path: filepath.Join(dir, "nope"), max: 1024, want: filepath.Join(dir, "nope") + ": no such file or directory", is: fs.ErrNotExist},
		{name: "directory", path: dir, max: 1024, want: dir + ": is a directory, not a regular file", is: ErrNotRegular},
		{name: "FIFO without a writer", path: fifo, max: 1024, want: fifo + ": is a named pipe (FIFO), not a regular file", is: ErrNotRegular},
		{name: "symlink to a FIFO", path: fifoLink, max: 1024, want: fifoLink + ": is a named pipe (FIFO), not a regular file", is: ErrNotRegular},
		{name: "socket", path: sock, max: 1024, want: sock + ": is a socket, not a regular file", is: ErrNotRegular},
		{name: "/dev/zero", path: "/dev/zero", max: 1024, want: "/dev/zero: is a character device, not a regular file", is: ErrNotRegular},
		{name: "/dev/null", path: "/dev/null", max: 1024, want: "/dev/null: is a character device, not a regular file", is: ErrNotRegular},
		// /proc files report size 0 but hold more: the limit applies to what is read.
		{name: "proc file larger than its stat size", path: "/proc/self/maps", max: 16, want: "/proc/self/maps: is larger than 16 bytes; is this the right file?", is: ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, err := Read(ctx, tt.path, tt.max)
			if tt.is == nil {
				if err != nil || string(got) != tt.want {
					t.Fatalf("Read = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Read = %q; want error %q", got, tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tt.want)
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
			var le *Error
			if !errors.As(err, &le) || le.Path != tt.path {
				t.Errorf("error is not an *Error for %s: %#v", tt.path, err)
			}
		})
	}
}

// TestReadDevStdinPipe: /dev/stdin that is a pipe is refused, not read.
func TestReadDevStdinPipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	p := "/proc/self/fd/" + strconv.Itoa(int(r.Fd()))
	_, err = Read(context.Background(), p, 1024)
	if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), "named pipe (FIFO)") {
		t.Fatalf("Read(pipe) = %v; want a FIFO refusal", err)
	}
}

func TestReadContextDone(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Read(ctx, p, 10)
	if !errors.Is(err, context.Canceled) || err.Error() != p+": reading it was stopped: context canceled" {
		t.Fatalf("Read with a cancelled context = %v", err)
	}
	ctx, cancel = context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := Read(ctx, p, 10); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "took too long") {
		t.Fatalf("Read past its deadline = %v", err)
	}
}

// TestWithContextAbandonsBlockedCall uses a fake blocking operation (a
// channel standing in for a read on a hung network file system, which this
// machine cannot produce): the caller gets its error when ctx ends, and what
// the operation opened afterwards is released.
func TestWithContextAbandonsBlockedCall(t *testing.T) {
	release := make(chan struct{})
	abandoned := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := withContext(ctx, "/hung/file", func() error {
		<-release
		return nil
	}, func() { close(abandoned) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("withContext = %v; want the deadline", err)
	}
	close(release)
	select {
	case <-abandoned:
	case <-time.After(10 * time.Second):
		t.Fatal("the abandoned operation's result was not released")
	}
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bin")
	if err := os.WriteFile(p, bytes.Repeat([]byte("b"), 4096), 0o700); err != nil {
		t.Fatal(err)
	}
	f, info, err := Open(context.Background(), p, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if info.Size() != 4096 {
		t.Errorf("size %d", info.Size())
	}
	n, err := io.Copy(io.Discard, Reader(context.Background(), f))
	if err != nil || n != 4096 {
		t.Errorf("read %d, %v", n, err)
	}
	if _, _, err := Open(context.Background(), p, 1024); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Open over the limit = %v", err)
	}
	if _, _, err := Open(context.Background(), dir, 1024); !errors.Is(err, ErrNotRegular) {
		t.Errorf("Open(dir) = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := Reader(ctx, bytes.NewReader([]byte("abc")))
	cancel()
	if _, err := r.Read(make([]byte, 1)); !errors.Is(err, context.Canceled) {
		t.Errorf("Reader after cancel = %v", err)
	}
}

func TestStat(t *testing.T) {
	dir := t.TempDir()
	st, err := Stat(context.Background(), dir)
	if err != nil || !st.IsDir() {
		t.Fatalf("Stat(dir) = %v, %v", st, err)
	}
	if _, err := Stat(context.Background(), filepath.Join(dir, "x")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat(missing) = %v", err)
	}
}

func TestSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0 bytes", 1023: "1023 bytes", 1024: "1 KiB", 1536: "1.5 KiB", 4 << 20: "4 MiB", 3 << 30: "3 GiB"} {
		if got := Size(n); got != want {
			t.Errorf("Size(%d) = %q, want %q", n, got, want)
		}
	}
}
