package sshtest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// cpuAccount is a cgroup that sums the CPU time of every process of a lab's
// nodes: each sshd is moved into it as it starts, and what it runs for its
// connections (the login shell, sudo, castellan's agent) inherits it. It is
// what benchmarks read as "node-side CPU" (cgroups(7): cpuacct.usage in
// cgroup v1, cpu.stat usage_usec in v2).
type cpuAccount struct {
	dir string
	v2  bool
	// perfName is the cgroup's path from the root of the hierarchy that
	// holds perf_event (what `perf record -G` takes), "" when no hierarchy
	// has perf_event; perfDir is that cgroup when the hierarchy is not
	// dir's own ("" when it is), which needs the same processes too.
	perfDir, perfName string
}

// cgroupRoots are where a cpuacct (v1) or cpu (v2) hierarchy may be mounted.
var cgroupRoots = []struct {
	path string
	v2   bool
}{
	{"/sys/fs/cgroup/cpuacct", false},
	{"/sys/fs/cgroup/cpu,cpuacct", false},
	{"/sys/fs/cgroup", true},
	{"/sys/fs/cgroup/unified", true},
}

func newCPUAccount(id string) (*cpuAccount, error) {
	for _, r := range cgroupRoots {
		probe := "cpuacct.usage"
		if r.v2 {
			probe = "cpu.stat"
		}
		if _, err := os.Stat(filepath.Join(r.path, probe)); err != nil {
			continue
		}
		sweepCgroups(r.path)
		dir := filepath.Join(r.path, "castellan-sshtest-"+id)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, fmt.Errorf("creating the CPU accounting cgroup: %w", err)
		}
		a := &cpuAccount{dir: dir, v2: r.v2}
		if root := perfEventRoot(); root != "" {
			a.perfName = "castellan-sshtest-" + id
			if root != r.path {
				sweepCgroups(root)
				if err := os.Mkdir(filepath.Join(root, a.perfName), 0o755); err != nil {
					a.remove()
					return nil, fmt.Errorf("creating the perf_event cgroup: %w", err)
				}
				a.perfDir = filepath.Join(root, a.perfName)
			}
		}
		return a, nil
	}
	return nil, errors.New("no cgroup hierarchy with CPU accounting (cpuacct or cpu) is mounted under /sys/fs/cgroup")
}

// sweepCgroups removes empty accounting cgroups that killed test processes
// left behind (rmdir refuses a cgroup that still holds a process).
func sweepCgroups(root string) {
	dirs, _ := filepath.Glob(filepath.Join(root, "castellan-sshtest-*"))
	for _, d := range dirs {
		_ = os.Remove(d)
	}
}

// perfEventRoot is where the hierarchy that holds the perf_event
// controller is mounted, found as perf itself finds it
// (tools/lib/api/fs/cgroup.c): a cgroup v1 mount with the perf_event
// option, or else the cgroup2 mount (perf_event is implicitly enabled
// there). "" when neither is mounted.
func perfEventRoot() string {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return ""
	}
	v2 := ""
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line) // device mountpoint type options dump pass (fstab(5))
		if len(f) < 4 {
			continue
		}
		switch {
		case f[2] == "cgroup" && slices.Contains(strings.Split(f[3], ","), "perf_event"):
			return f[1]
		case f[2] == "cgroup2" && v2 == "":
			v2 = f[1]
		}
	}
	return v2
}

func (a *cpuAccount) add(pid int) error {
	for _, dir := range []string{a.dir, a.perfDir} {
		if dir == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("moving sshd %d into %s: %w", pid, dir, err)
		}
	}
	return nil
}

// usage is the CPU time (user and system) of every process that ran in the
// cgroup since it was made.
func (a *cpuAccount) usage() (time.Duration, error) {
	if !a.v2 {
		data, err := os.ReadFile(filepath.Join(a.dir, "cpuacct.usage"))
		if err != nil {
			return 0, err
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
		return time.Duration(ns), err
	}
	data, err := os.ReadFile(filepath.Join(a.dir, "cpu.stat"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return time.Duration(us) * time.Microsecond, err
		}
	}
	return 0, fmt.Errorf("%s/cpu.stat has no usage_usec", a.dir)
}

// remove deletes the cgroups once their processes are gone.
func (a *cpuAccount) remove() {
	for _, dir := range []string{a.dir, a.perfDir} {
		if dir == "" {
			continue
		}
		for range 50 {
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// NodeCPU is the CPU time every process of the lab's nodes used so far
// (sshd, login shells, sudo, whatever they ran), with Options.CPUAccounting.
func (l *Lab) NodeCPU() (time.Duration, error) {
	if l.cpu == nil {
		return 0, errors.New("sshtest: the lab was made without Options.CPUAccounting")
	}
	return l.cpu.usage()
}

// NodeCPUByProcess runs argv once under perf and returns the CPU time the
// lab's nodes used meanwhile (the processes in the lab's cgroup, not the
// rest of the host) by ProcessClass; see nodeCPUByProcess.
// Errors: the lab was made without Options.CPUAccounting, no cgroup
// hierarchy has perf_event, and those of nodeCPUByProcess.
func (l *Lab) NodeCPUByProcess(dir string, argv ...string) (map[string]time.Duration, error) {
	if l.cpu == nil {
		return nil, errors.New("sshtest: the lab was made without Options.CPUAccounting")
	}
	if l.cpu.perfName == "" {
		return nil, errors.New("sshtest: no cgroup hierarchy with perf_event is mounted (cgroup2, or v1 with -o perf_event), so perf cannot tell the nodes from the host")
	}
	return nodeCPUByProcess(dir, l.cpu.perfName, argv...)
}
