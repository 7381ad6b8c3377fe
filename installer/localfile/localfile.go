// Package localfile reads files that users name (a profile, an SSH private
// key, a known_hosts file, certificates, an age identity, agent binaries) on
// the installer's machine, so that a wrong name can neither hang castellan
// nor exhaust its memory.
//
// Only regular files are read (symbolic links are followed). A named pipe
// (FIFO), socket, directory or device (/dev/zero, /dev/stdin when it is a
// terminal or pipe, /dev/tty) is refused from its file type alone, before any
// byte is read and without blocking: the type is checked with stat(2) before
// the file is opened and again with fstat(2) on the descriptor, which is
// opened with O_NONBLOCK and O_NOCTTY, so swapping the file for a FIFO between
// the two checks cannot block the open either (open(2), fifo(7)). Every read is
// bounded by a byte limit and by a context.
package localfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
)

// ErrNotRegular is matched (errors.Is) by the error for a path that is not a
// regular file: a directory, FIFO, socket or device.
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge is matched (errors.Is) by the error for a file larger than the
// limit the caller gave.
var ErrTooLarge = errors.New("file too large")

// Error is a failed read of a local file. Its message is "PATH: REASON",
// where REASON is plain text meant for the user, e.g.
// "/tmp/key: is a named pipe (FIFO), not a regular file" or
// "/dev/zero: is a character device, not a regular file".
type Error struct {
	// Path is the path as the caller gave it.
	Path string
	// Err is the cause; errors.Is matches ErrNotRegular, ErrTooLarge,
	// fs.ErrNotExist, fs.ErrPermission, context.Canceled and
	// context.DeadlineExceeded through it.
	Err error
}

func (e *Error) Error() string { return e.Path + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// notRegular says what a path is instead of a regular file.
type notRegular struct{ kind string }

func (e *notRegular) Error() string        { return "is " + e.kind + ", not a regular file" }
func (e *notRegular) Is(target error) bool { return target == ErrNotRegular }

// tooLarge says how large the file is against the limit.
type tooLarge struct {
	size  int64 // -1 when only "more than limit" is known
	limit int64
}

func (e *tooLarge) Error() string {
	if e.size < 0 {
		return fmt.Sprintf("is larger than %s; is this the right file?", Size(e.limit))
	}
	size := Size(e.size)
	if size == Size(e.limit) { // 16 MiB and a few bytes
		size = fmt.Sprintf("%d bytes", e.size)
	}
	return fmt.Sprintf("is %s, more than the %s castellan reads; is this the right file?", size, Size(e.limit))
}
func (e *tooLarge) Is(target error) bool { return target == ErrTooLarge }

// timedOut wraps the context's error with what was being done.
type timedOut struct{ err error }

func (e *timedOut) Error() string {
	if errors.Is(e.err, context.DeadlineExceeded) {
		return "reading it took too long (a hung network file system?): " + e.err.Error()
	}
	return "reading it was stopped: " + e.err.Error()
}
func (e *timedOut) Unwrap() error { return e.err }

// Size formats a byte count for messages: "512 bytes", "64 KiB", "1.5 MiB".
func Size(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d bytes", n)
	case n < 1<<20:
		return trimUnit(float64(n)/(1<<10), "KiB")
	case n < 1<<30:
		return trimUnit(float64(n)/(1<<20), "MiB")
	}
	return trimUnit(float64(n)/(1<<30), "GiB")
}

func trimUnit(v float64, unit string) string {
	s := fmt.Sprintf("%.1f", v)
	if len(s) > 2 && s[len(s)-2:] == ".0" {
		s = s[:len(s)-2]
	}
	return s + " " + unit
}

// kindOf names a file type for messages, or "" for a regular file.
func kindOf(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return ""
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "not a regular file (" + m.Type().String() + ")"
}

// Read returns the content of the regular file at path, following symbolic
// links.
//
// It fails, with an *Error naming path, when:
//   - path does not exist or cannot be opened (errors.Is fs.ErrNotExist,
//     fs.ErrPermission, ...);
//   - path is not a regular file (errors.Is ErrNotRegular): nothing is read,
//     so a FIFO never blocks and /dev/zero is never read;
//   - the file holds more than maxBytes bytes (errors.Is ErrTooLarge), checked
//     on its size and again on what is read (a file that grows, or a /proc file
//     whose size reads as 0); at most maxBytes+1 bytes are ever read;
//   - ctx is done before the read finishes (errors.Is ctx.Err()).
//
// When ctx ends while a system call is blocked (e.g. on a hung network file
// system), Read returns at once; the blocked call is left to a goroutine that
// closes the file and drops the data when the call returns. maxBytes must be
// positive.
func Read(ctx context.Context, path string, maxBytes int64) ([]byte, error) {
	var data []byte
	err := withContext(ctx, path, func() error {
		f, err := open(path, maxBytes)
		if err != nil {
			return err
		}
		defer f.Close()
		var buf bytes.Buffer
		if st, err := f.Stat(); err == nil {
			buf.Grow(int(min(st.Size(), maxBytes)) + bytes.MinRead)
		}
		if _, err := buf.ReadFrom(io.LimitReader(f, maxBytes+1)); err != nil {
			return err
		}
		if int64(buf.Len()) > maxBytes {
			return &tooLarge{size: -1, limit: maxBytes}
		}
		data = buf.Bytes()
		return nil
	}, nil)
	if err != nil {
		return nil, err
	}
	return data, nil
}

// Open opens the regular file at path for reading, after the same checks as
// Read (regular file, at most maxBytes bytes at open time, ctx), and returns it
// with its fs.FileInfo. It is for content too large to hold in memory, such as
// agent binaries: the caller reads and closes the file. Reads from a regular
// file do not block on a writer, but a read on a hung network file system
// can: wrap the file with Reader to stop between reads when ctx ends, and
// bound what is read with io.LimitReader if the file may grow.
func Open(ctx context.Context, path string, maxBytes int64) (*os.File, fs.FileInfo, error) {
	var (
		file *os.File
		info fs.FileInfo
	)
	err := withContext(ctx, path, func() error {
		f, err := open(path, maxBytes)
		if err != nil {
			return err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return err
		}
		file, info = f, st
		return nil
	}, func() { file.Close() })
	if err != nil {
		return nil, nil, err
	}
	return file, info, nil
}

// Stat returns the fs.FileInfo of path (following symbolic links), giving up
// when ctx is done. Use it for directories a profile names; errors are an
// *Error naming path.
func Stat(ctx context.Context, path string) (fs.FileInfo, error) {
	var info fs.FileInfo
	err := withContext(ctx, path, func() error {
		st, err := os.Stat(path)
		info = st
		return err
	}, nil)
	if err != nil {
		return nil, err
	}
	return info, nil
}

// Reader returns r, read until ctx is done: each Read first checks ctx and
// returns its error (wrapped) once it has ended.
func Reader(ctx context.Context, r io.Reader) io.Reader { return &ctxReader{ctx, r} }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, &timedOut{context.Cause(c.ctx)}
	}
	return c.r.Read(p)
}

// open checks path's type and size, opens it without blocking, and checks
// the opened file again.
func open(path string, maxBytes int64) (*os.File, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("internal error: read limit %d", maxBytes)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := check(st, maxBytes); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|openFlags, 0)
	if err != nil {
		return nil, err
	}
	st, err = f.Stat()
	if err == nil {
		err = check(st, maxBytes)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func check(st fs.FileInfo, maxBytes int64) error {
	if k := kindOf(st.Mode()); k != "" {
		return &notRegular{k}
	}
	if st.Size() > maxBytes {
		return &tooLarge{size: st.Size(), limit: maxBytes}
	}
	return nil
}

// withContext runs fn, returning early when ctx ends; errors become *Error.
// When the caller has left before fn returned, abandon (if not nil) runs
// after a successful fn to release what it opened.
func withContext(ctx context.Context, path string, fn func() error, abandon func()) error {
	wrap := func(err error) error {
		if err == nil {
			return nil
		}
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is said once, by Error
		}
		return &Error{Path: path, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return wrap(&timedOut{context.Cause(ctx)})
	}
	if ctx.Done() == nil {
		return wrap(fn())
	}
	var (
		mu   sync.Mutex
		left bool
		done = make(chan error, 1)
	)
	go func() {
		err := fn()
		mu.Lock()
		defer mu.Unlock()
		if left {
			if err == nil && abandon != nil {
				abandon()
			}
			return
		}
		done <- err
	}()
	select {
	case err := <-done:
		return wrap(err)
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		select {
		case err := <-done: // finished meanwhile: keep the result
			return wrap(err)
		default:
			left = true
			return wrap(&timedOut{context.Cause(ctx)})
		}
	}
}
