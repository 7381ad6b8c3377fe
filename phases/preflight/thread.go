package preflight

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// onSpareThread runs fn on an OS thread of its own that is not the
// process's main thread and that ends when fn returns, so fn may move its
// thread into new namespaces (unshare(2)) and nothing else sees them. The
// main thread is avoided because /proc/self shows its namespaces, and the
// Go runtime never ends it: a namespace changed there would outlive fn.
func onSpareThread(fn func()) {
	spareThread(fn, func() bool { return unix.Gettid() == unix.Getpid() })
}

// spareThread is onSpareThread with the test for the thread to avoid.
func spareThread(fn func(), avoid func() bool) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if avoid() {
			// Hold this thread while fn runs on another, then give it back.
			spareThread(fn, avoid)
			runtime.UnlockOSThread()
			return
		}
		fn()
		// Not unlocked: the runtime ends the thread with this goroutine.
	}()
	<-done
}
