package state

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrLocked is returned when another castellan holds the repo's lock.
var ErrLocked = errors.New("state repo is locked")

// Lock is the run lock of a state repo: an flock(2) on its directory, so it
// writes nothing and dies with its holder. While the repo does not exist
// yet, the nearest existing parent directory is locked instead, so that two
// first applies do not both create it; once a run creates the repo it locks
// the repo's directory too (Also), so that a run starting after the
// creation waits as well.
type Lock struct {
	dir   string
	files []*os.File
}

// LockDir takes the run lock for the state repo at dir without waiting. It
// returns an error wrapping ErrLocked, naming the holder's process when
// /proc/locks tells it, when another process holds it.
func LockDir(dir string) (*Lock, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("state repo path %s: %w", dir, err)
	}
	l := &Lock{dir: abs}
	p := abs
	for {
		fi, err := os.Stat(p)
		if err == nil && fi.IsDir() {
			break
		}
		if err == nil {
			return nil, fmt.Errorf("state repo %s: %s is not a directory", abs, p)
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("state repo %s: %w", abs, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return nil, fmt.Errorf("state repo %s: no existing directory to lock", abs)
		}
		p = parent
	}
	if err := l.Also(p); err != nil {
		return nil, err
	}
	return l, nil
}

// Also locks another directory under the same lock (the repo's own, once a
// run created it).
func (l *Lock) Also(dir string) error {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("locking state repo %s: %w", l.dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := lockHolder(f)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%w: %s is in use by another castellan run%s; wait for it to finish", ErrLocked, l.dir, holder)
		}
		return fmt.Errorf("locking state repo %s: %w", l.dir, err)
	}
	l.files = append(l.files, f)
	return nil
}

// Unlock releases the lock.
func (l *Lock) Unlock() {
	if l == nil {
		return
	}
	for _, f := range l.files {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}
	l.files = nil
}

// Holds reports whether the lock covers dir itself.
func (l *Lock) Holds(dir string) bool {
	if l == nil {
		return false
	}
	st, err := os.Stat(dir)
	if err != nil {
		return false
	}
	for _, f := range l.files {
		if fi, err := f.Stat(); err == nil && os.SameFile(fi, st) {
			return true
		}
	}
	return false
}

// lockHolder names the process holding an flock on f, from /proc/locks
// (proc(5): "ID: FLOCK ADVISORY WRITE PID MAJOR:MINOR:INODE START END").
func lockHolder(f *os.File) string {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return ""
	}
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	locks, err := os.Open("/proc/locks")
	if err != nil {
		return ""
	}
	defer locks.Close()
	sc := bufio.NewScanner(locks)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[5] != want {
			continue
		}
		pid, err := strconv.Atoi(fields[4])
		if err != nil || pid <= 0 {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		name := strings.ReplaceAll(strings.TrimRight(string(cmd), "\x00"), "\x00", " ")
		if len(name) > 80 {
			name = name[:80] + "..."
		}
		if name == "" {
			return fmt.Sprintf(" (process %d)", pid)
		}
		return fmt.Sprintf(" (process %d: %s)", pid, name)
	}
	return ""
}
