package preflight

import (
	"castellan/installer/testenv"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// needRoot skips a test that needs root (loop devices, namespaces,
// mounts), or fails under make test (CASTELLAN_REQUIRE_REAL_PEERS=1), which
// runs as root.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	testenv.Missing(t, "this test needs root (loop devices, namespaces, mounts)")
}

// loopDevice attaches img to a free loop device and returns its path; with
// parts, the partitions of its partition table are added (partx: the loop
// driver here does not scan them itself). The test detaches it.
func loopDevice(t *testing.T, img string, parts ...bool) string {
	t.Helper()
	needRoot(t)
	needCommand(t, "losetup")
	dev := strings.TrimSpace(run(t, "losetup", "--find", "--show", img))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v %s", dev, err, out)
		}
	})
	if len(parts) > 0 && parts[0] {
		needCommand(t, "partx")
		run(t, "partx", "--update", dev) // --update: also drops partitions a detached loop device kept
		t.Cleanup(func() {
			if out, err := exec.Command("partx", "--delete", dev).CombinedOutput(); err != nil {
				t.Errorf("partx --delete %s: %v %s", dev, err, out)
			}
		})
	}
	return dev
}

// inThreadNamespaces runs fn on an OS thread of its own (onSpareThread)
// that first leaves the test's namespaces named by flags (unix.CLONE_NEWNS,
// CLONE_NEWNET); mounts are made private to it. The thread ends with fn and
// its namespaces with it: nothing fn mounts or binds outlives it, even when
// the test fails.
func inThreadNamespaces(t *testing.T, flags int, fn func()) {
	t.Helper()
	needRoot(t)
	var panicked any
	onSpareThread(func() {
		defer func() { panicked = recover() }()
		if err := unix.Unshare(flags); err != nil {
			panic("unshare: " + err.Error())
		}
		if flags&unix.CLONE_NEWNS != 0 {
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				panic("making mounts private: " + err.Error())
			}
		}
		if flags&unix.CLONE_NEWNET != 0 {
			setLinkUp("lo")
		}
		fn()
	})
	if panicked != nil {
		t.Fatal(panicked)
	}
}

// setLinkUp brings a network interface up (SIOCSIFFLAGS), in the calling
// thread's network namespace.
func setLinkUp(name string) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		panic(err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		panic(err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		panic(err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		panic(err)
	}
}

// mountinfoOfThisProcess is the test process's mount table, to prove a
// test left it as it found it.
func mountinfoOfThisProcess(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
