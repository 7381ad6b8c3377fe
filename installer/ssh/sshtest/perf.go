package sshtest

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ProcessClass sorts a command name (comm, at most 15 bytes) into what a
// lab node runs for an exec: "sshd"; "sudo"; "agent" (castellan's agent,
// castellan-HASH); "shell" (login shells, the launcher's shell and the
// tools it runs); "" for the client side (castellan itself, ip, time,
// perf, a test binary); "other" for the rest.
func ProcessClass(comm string) string {
	switch {
	case comm == "sshd" || strings.HasPrefix(comm, "sshd-"):
		return "sshd"
	case comm == "sudo":
		return "sudo"
	case strings.HasPrefix(comm, "castellan-"):
		return "agent"
	case comm == "castellan" || comm == "ip" || comm == "time" || comm == "perf" || strings.HasSuffix(comm, ".test"):
		return ""
	}
	switch comm {
	case "sh", "dash", "bash", "zsh", "mksh", "ksh", "ksh93", "fish", "tcsh", "csh",
		"stat", "sha256sum", "uname", "readlink", "id", "cat", "mkdir", "chmod", "mv", "printf", "sftp-server":
		return "shell"
	}
	return "other"
}

// nodeCPUByProcess runs argv once under `perf record -a -G cgroup` (the
// cpu-clock event on every CPU, 1000 samples per second each, counted only
// for the processes in cgroup, a path from the root of the hierarchy that
// holds perf_event; perf-record(1)) with its data file in dir, and returns
// the sampled CPU time by ProcessClass (perf-report(1) sorted by comm).
// Each figure is good to a few percent.
// Errors: perf missing or refused (perf_event_paranoid, no permission),
// argv failing, or a report with no process of the nodes in it.
func nodeCPUByProcess(dir, cgroup string, argv ...string) (map[string]time.Duration, error) {
	if _, err := exec.LookPath("perf"); err != nil {
		return nil, errors.New("perf is not installed (Debian package linux-perf; make bench installs it)")
	}
	data := filepath.Join(dir, "perf.data")
	rec := exec.Command("perf", append([]string{"record", "-a", "-F", "1000", "-e", "cpu-clock", "-G", cgroup, "-o", data, "--"}, argv...)...)
	if out, err := rec.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("perf record %v: %v\n%s", argv, err, out)
	}
	rep := exec.Command("perf", "report", "-i", data, "--sort", "comm", "-F", "period,comm", "--stdio", "-g", "none")
	out, err := rep.Output()
	if err != nil {
		return nil, fmt.Errorf("perf report: %w", err)
	}
	return ParsePerfByComm(string(out))
}

// ParsePerfByComm reads the "PERIOD COMM" lines of `perf report --sort comm
// -F period,comm --stdio` (for cpu-clock the period is nanoseconds; lines
// starting with # are comments) into CPU time by ProcessClass. A line that
// is not a period and a name is an error.
func ParsePerfByComm(report string) (map[string]time.Duration, error) {
	by := map[string]time.Duration{}
	for _, line := range strings.Split(report, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		ns, err := strconv.ParseInt(fields[0], 10, 64)
		// Bounded (a week of CPU a line) so sums cannot overflow.
		if err != nil || ns < 0 || ns > int64(7*24*time.Hour) || len(fields) < 2 {
			return nil, fmt.Errorf("perf report line %q: want PERIOD COMM", line)
		}
		if class := ProcessClass(strings.Join(fields[1:], " ")); class != "" {
			by[class] += time.Duration(ns)
		}
	}
	if len(by) == 0 {
		return nil, errors.New("perf report sampled no process of the nodes")
	}
	return by, nil
}
