package sshtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// stateDir records the labs alive on this machine, so that a lab left behind
// by a killed test process can be swept. It is on tmpfs, like /run/netns.
const stateDir = "/run/castellan-sshtest"

type labState struct {
	ID         string
	PID        int
	PIDStart   string // start time of PID (field 22 of /proc/PID/stat), against PID reuse
	Namespaces []string
	Users      []string
	Sudoers    string
	Dir        string
	// PrivateDirs the lab's nodes mount over; Created: the mountpoints (and
	// parents) that had to be created on the host, removed when no lab
	// needs them any more.
	PrivateDirs []string
	Created     []string
}

func (l *Lab) state() labState {
	return labState{
		ID: l.ID, PID: os.Getpid(), PIDStart: procStart(os.Getpid()),
		Namespaces: l.namespaces(), Users: l.users(),
		Sudoers: filepath.Join("/etc/sudoers.d", l.sudoersName()), Dir: l.Dir,
		PrivateDirs: l.private, Created: l.created,
	}
}

// lockState serializes changes to mountpoints shared by labs (also across
// test processes).
func lockState() (unlock func(), err error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(stateDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// makeMountpoints creates the missing mountpoints of PrivateDirs, recording
// them in the lab's state first.
func (l *Lab) makeMountpoints() error {
	if len(l.private) == 0 {
		return nil
	}
	unlock, err := lockState()
	if err != nil {
		return err
	}
	defer unlock()
	for _, d := range l.private {
		var missing []string
		for p := d; p != "/"; p = filepath.Dir(p) {
			if _, err := os.Lstat(p); err == nil {
				break
			}
			missing = append([]string{p}, missing...)
		}
		l.created = append(l.created, missing...)
	}
	if err := writeStateFile(l.statePth, l.state()); err != nil {
		return err
	}
	for _, d := range l.private {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// releaseMountpoints removes the mountpoints st created, deepest first,
// unless another lab's PrivateDirs still need one: that lab then inherits
// the duty to remove it.
func releaseMountpoints(st labState) error {
	if len(st.Created) == 0 {
		return nil
	}
	unlock, err := lockState()
	if err != nil {
		return err
	}
	defer unlock()
	others := map[string]*labState{}
	ents, _ := os.ReadDir(stateDir)
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") || e.Name() == st.ID+".json" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(stateDir, e.Name()))
		if err != nil {
			continue
		}
		var o labState
		if json.Unmarshal(b, &o) == nil {
			others[filepath.Join(stateDir, e.Name())] = &o
		}
	}
	var errs []error
	created := append([]string(nil), st.Created...)
	sort.Slice(created, func(i, j int) bool { return len(created[i]) > len(created[j]) })
	for _, d := range created {
		inherited := false
		for p, o := range others {
			for _, pd := range o.PrivateDirs {
				if pd == d || strings.HasPrefix(pd, d+"/") {
					o.Created = append(o.Created, d)
					if err := writeStateFile(p, *o); err != nil {
						errs = append(errs, err)
					}
					inherited = true
					break
				}
			}
			if inherited {
				break
			}
		}
		if !inherited {
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("removing mountpoint %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

func writeStateFile(p string, st labState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func writeState(t testing.TB, st labState) string {
	t.Helper()
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	p := filepath.Join(stateDir, st.ID+".json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	return p
}

// sweepStale removes labs whose test process is gone.
func sweepStale(t testing.TB) {
	entries, err := os.ReadDir(stateDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		p := filepath.Join(stateDir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var st labState
		if json.Unmarshal(b, &st) != nil {
			continue
		}
		if st.PIDStart != "" && procStart(st.PID) == st.PIDStart {
			continue // its owner is alive
		}
		t.Logf("sshtest: sweeping lab %s left behind by process %d", st.ID, st.PID)
		if err := removeLab(st); err != nil {
			t.Logf("sshtest: sweeping lab %s: %v", st.ID, err)
			continue
		}
		os.Remove(p)
	}
}

// removeLab kills every process in the lab's namespaces, deletes them, kills
// the lab's loopback sshds, and removes the users, the sudoers drop-in and
// the lab directory.
func removeLab(st labState) error {
	var errs []error
	inodes := map[uint64]bool{}
	var present []string
	for _, ns := range st.Namespaces {
		var s syscall.Stat_t
		if err := syscall.Stat(filepath.Join("/run/netns", ns), &s); err == nil {
			inodes[s.Ino] = true
			present = append(present, ns)
		}
	}
	if len(inodes) > 0 {
		deadline := time.Now().Add(10 * time.Second)
		for {
			pids := pidsInNetns(inodes)
			if len(pids) == 0 {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("processes still alive in the lab namespaces: %v", pids))
				break
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(20 * time.Millisecond)
		}
		var b strings.Builder
		for _, ns := range present {
			fmt.Fprintf(&b, "netns del %s\n", ns)
		}
		if err := ipBatch("", b.String()); err != nil {
			errs = append(errs, err)
		}
	}
	if err := killLoopbackSSHDs(st.Dir); err != nil {
		errs = append(errs, err)
	}
	for _, u := range st.Users {
		if err := exec.Command("id", "-u", u).Run(); err != nil {
			continue // not there
		}
		if out, err := exec.Command("userdel", u).CombinedOutput(); err != nil {
			if out2, err2 := exec.Command("userdel", "-f", u).CombinedOutput(); err2 != nil {
				errs = append(errs, fmt.Errorf("userdel %s: %v: %s %s", u, err2, out, out2))
			}
		}
	}
	if st.Sudoers != "" {
		if err := os.Remove(st.Sudoers); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := releaseMountpoints(st); err != nil {
		errs = append(errs, err)
	}
	if st.Dir != "" && strings.HasPrefix(filepath.Base(st.Dir), "cst-") {
		if err := os.RemoveAll(st.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killLoopbackSSHDs kills the sshds that run with a config in the lab
// directory dir outside the lab's network namespaces (loopback nodes), found
// by their command line, so that a lab left behind by a killed test process
// can be swept too. Each is the init of its own PID namespace: the kernel
// kills its connections with it.
func killLoopbackSSHDs(dir string) error {
	if dir == "" || !strings.HasPrefix(filepath.Base(dir), "cst-") {
		return nil
	}
	needle := []byte(filepath.Clean(dir) + "/")
	// A dying process loses its command line before its PID namespace is
	// emptied: remember what was found and wait until it is a zombie.
	found := map[int]string{} // pid: start time
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, pid := range procPIDs() {
			if _, ok := found[pid]; ok {
				continue
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err == nil && bytes.Contains(b, needle) {
				found[pid] = procStart(pid)
			}
		}
		var alive []int
		for pid, start := range found {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				continue // gone
			}
			if f := statFields(b); len(f) < 20 || f[0] == "Z" || f[19] != start {
				continue // dead, waiting to be reaped, or the PID reused
			}
			alive = append(alive, pid)
		}
		if len(alive) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("loopback sshds of %s still alive: %v", dir, alive)
		}
		for _, pid := range alive {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procStart returns the start time of pid, or "" if it does not exist.
func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	f := statFields(b)
	if len(f) < 20 {
		return ""
	}
	return f[19] // field 22 overall
}

// statFields splits /proc/PID/stat after the command name, which may hold
// spaces: the result starts with field 3 (state).
func statFields(b []byte) []string {
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

func procPIDs() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pidsInNetns lists processes whose network namespace is one of inodes.
func pidsInNetns(inodes map[uint64]bool) []int {
	var out []int
	for _, pid := range procPIDs() {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			continue
		}
		// "net:[4026532...]"
		link = strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]")
		ino, err := strconv.ParseUint(link, 10, 64)
		if err == nil && inodes[ino] {
			out = append(out, pid)
		}
	}
	return out
}

// children maps the direct children of pid.
func children(pid int) ([]int, map[int][]int) {
	tree := map[int][]int{}
	for _, p := range procPIDs() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		f := statFields(b)
		if len(f) < 2 {
			continue
		}
		if pp, err := strconv.Atoi(f[1]); err == nil {
			tree[pp] = append(tree[pp], p)
		}
	}
	return tree[pid], tree
}

// signalDescendants sends sig to every descendant of pid (not pid itself).
func signalDescendants(pid int, sig syscall.Signal) error {
	_, tree := children(pid)
	var all []int
	var walk func(int)
	walk = func(p int) {
		for _, c := range tree[p] {
			all = append(all, c)
			walk(c)
		}
	}
	walk(pid)
	if len(all) == 0 {
		return fmt.Errorf("sshtest: no connection processes under sshd %d", pid)
	}
	for _, p := range all {
		_ = syscall.Kill(p, sig)
	}
	return nil
}
