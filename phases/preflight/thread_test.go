package preflight

import (
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadGone waits up to a second for thread id of this process to end.
func threadGone(id int) bool {
	for range 100 {
		if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", id)); err != nil {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// TestOnSpareThread: fn never runs on the main thread, and its thread ends
// with it. Goroutines land on the main thread now and then, so it is tried
// a few hundred times.
func TestOnSpareThread(t *testing.T) {
	for range 300 {
		var tid int
		onSpareThread(func() { tid = unix.Gettid() })
		if tid == os.Getpid() || tid == 0 {
			t.Fatalf("fn ran on thread %d (main: %d)", tid, os.Getpid())
		}
		if !threadGone(tid) {
			t.Fatalf("thread %d still exists after fn returned", tid)
		}
	}
}

// TestSpareThreadAvoids: when the first thread it lands on is one to avoid,
// fn runs on another, and the avoided thread lives on. (Goroutines do land
// on the main thread: without onSpareThread's test of it, fn ran there in
// about one call in thirty here, and that thread never ends.)
func TestSpareThreadAvoids(t *testing.T) {
	avoided, fnTID := 0, 0
	spareThread(func() { fnTID = unix.Gettid() }, func() bool {
		tid := unix.Gettid()
		if tid == unix.Getpid() {
			return true // as onSpareThread: the main thread never ends
		}
		if avoided == 0 {
			avoided = tid
			return true
		}
		return false
	})
	if avoided == 0 || fnTID == 0 || fnTID == avoided {
		t.Fatalf("avoided thread %d, fn ran on %d", avoided, fnTID)
	}
	if !threadGone(fnTID) {
		t.Errorf("fn's thread %d still exists", fnTID)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", avoided)); err != nil {
		t.Errorf("the avoided thread %d ended: %v", avoided, err)
	}
}
