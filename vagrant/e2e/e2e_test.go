//go:build e2e

// Package e2e drives the real castellan binary against the Vagrant lab's VMs
// and checks the result on the nodes over SSH. It runs inside the lab's
// network namespace (vagrant/e2e.sh); CASTELLAN_BIN and CASTELLAN_LAB_DIR
// say where the binary and the lab are.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"castellan/installer/engine"
	"castellan/installer/profile"
	castssh "castellan/installer/ssh"
	"castellan/installer/state"
)

// lab is a private copy of the lab directory: the lab's profile, key and
// known_hosts, with a fresh state repo.
type lab struct {
	dir     string
	profile string
	bin     string
	p       *profile.Profile
	pool    *castssh.Pool
}

func setup(t *testing.T) *lab {
	t.Helper()
	bin, src := os.Getenv("CASTELLAN_BIN"), os.Getenv("CASTELLAN_LAB_DIR")
	if bin == "" || src == "" {
		t.Fatal("run through vagrant/e2e.sh (CASTELLAN_BIN and CASTELLAN_LAB_DIR unset)")
	}
	dir := t.TempDir()
	for _, f := range []string{"profile.yaml", "id_ed25519", "known_hosts"} {
		writeFile(t, filepath.Join(dir, f), readFile(t, filepath.Join(src, f)))
	}
	l := &lab{dir: dir, profile: filepath.Join(dir, "profile.yaml"), bin: bin}
	var err error
	if l.p, err = profile.Load(l.profile, profile.ValidateOptions{}); err != nil {
		t.Fatal(err)
	}
	l.pool, err = castssh.NewPool(castssh.Config{
		User: l.p.Spec.SSH.User, KeyFiles: []string{l.p.Resolve(l.p.Spec.SSH.KeyFile)},
		KnownHostsFile: l.p.Resolve(l.p.Spec.SSH.KnownHosts), Sudo: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.pool.Close() })
	t.Setenv("CASTELLAN_AGE_IDENTITY", filepath.Join(dir, "age-identity.txt"))
	return l
}

// run runs castellan with args and returns its JSON events, final result and exit code.
type outcome struct {
	events []engine.Event
	result *state.Record
	code   int
	stderr string
}

func (l *lab) castellan(t *testing.T, args ...string) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, l.bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	var o outcome
	o.stderr = stderr.String()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		o.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("castellan %v: %v", args, err)
	}
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var res struct {
			Result *state.Record `json:"result"`
		}
		if json.Unmarshal(line, &res) == nil && res.Result != nil {
			o.result = res.Result
			continue
		}
		var e engine.Event
		if err := json.Unmarshal(line, &e); err == nil && e.Status != "" {
			o.events = append(o.events, e)
		}
	}
	t.Logf("castellan %s: exit %d in %s", strings.Join(args, " "), o.code, time.Since(start).Round(100*time.Millisecond))
	return o
}

func (l *lab) on(t *testing.T, node string, argv ...string) string {
	t.Helper()
	n, ok := l.p.Node(node)
	if !ok {
		t.Fatalf("no node %s", node)
	}
	out, err := l.pool.Run(context.Background(), castssh.Host{Name: n.Name, Address: n.Address, Port: n.Port}, castssh.Cmd{Argv: argv, Sudo: true})
	if err != nil {
		t.Fatalf("%s: %v: %v", node, argv, err)
	}
	return strings.TrimSpace(string(out.Stdout))
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

func uploads(o outcome) map[string]bool {
	out := map[string]bool{}
	for _, e := range o.events {
		if e.Status == engine.StatusProgress && e.Step == "upload agent" {
			out[e.Node] = true
		}
	}
	return out
}

func TestLab(t *testing.T) {
	l := setup(t)
	nodes := []string{}
	for _, n := range l.p.Spec.Nodes {
		nodes = append(nodes, n.Name)
	}
	// Start from nodes castellan has never touched (the lab may be reused).
	for _, n := range nodes {
		l.on(t, n, "rm", "-rf", "/var/lib/castellan")
	}
	sum := sha256File(t, l.bin)
	agentPath := "/var/lib/castellan/bin/castellan-" + sum[:16]

	t.Run("plan touches nothing", func(t *testing.T) {
		o := l.castellan(t, "plan", "-f", l.profile, "-o", "json")
		if o.code != 0 {
			t.Fatalf("plan exit %d: %s", o.code, o.stderr)
		}
		for _, n := range nodes {
			if out := l.on(t, n, "sh", "-c", "test -e /var/lib/castellan && echo exists || echo absent"); out != "absent" {
				t.Errorf("%s: plan created /var/lib/castellan", n)
			}
		}
	})

	t.Run("first apply installs the agent and passes preflight", func(t *testing.T) {
		o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
		if o.code != 0 || o.result == nil {
			t.Fatalf("apply exit %d: %s\n%v", o.code, o.stderr, o.events)
		}
		if o.result.Outcome != engine.OutcomeOK {
			t.Fatalf("outcome %s: %s", o.result.Outcome, o.result.Error)
		}
		up := uploads(o)
		for _, n := range nodes {
			if !up[n] {
				t.Errorf("%s: no agent upload reported", n)
			}
			// The agent is root-owned, executable, and is exactly our binary.
			if got := l.on(t, n, "stat", "-c", "%U:%G %a", agentPath); got != "root:root 755" {
				t.Errorf("%s: agent %s is %q", n, agentPath, got)
			}
			if got := l.on(t, n, "sha256sum", agentPath); !strings.HasPrefix(got, sum) {
				t.Errorf("%s: agent checksum %q, want %s", n, got, sum)
			}
			// Facts were gathered by the agent on the VM itself.
			f, ok := o.result.NodeFacts(n)
			if !ok {
				t.Fatalf("%s: no facts in the run record", n)
			}
			if !f.TPM.Present || f.TPM.Version != "2.0" || !f.WireGuard.Available || !f.Systemd {
				t.Errorf("%s: facts %+v %+v systemd=%v", n, f.TPM, f.WireGuard, f.Systemd)
			}
			disk, ok := f.Disk("/dev/vdb")
			if !ok || disk.Signature != "" || disk.Mounted || disk.SizeB == 0 {
				t.Errorf("%s: data disk facts %+v (found %v)", n, disk, ok)
			}
			if hn := l.on(t, n, "hostname"); f.Hostname != hn {
				t.Errorf("%s: facts hostname %q, node says %q", n, f.Hostname, hn)
			}
		}
	})

	t.Run("agent answers over SSH", func(t *testing.T) {
		out := l.on(t, nodes[0], "sh", "-c", `echo '{"echo":"it'"'"'s me"}' | `+agentPath+` agent agent.ping`)
		var resp struct {
			OK     bool `json:"ok"`
			Result struct {
				Echo string `json:"echo"`
				UID  int    `json:"uid"`
			} `json:"result"`
		}
		if err := json.Unmarshal([]byte(out), &resp); err != nil || !resp.OK || resp.Result.Echo != "it's me" || resp.Result.UID != 0 {
			t.Errorf("ping = %s (%v)", out, err)
		}
	})

	t.Run("second apply is a no-op", func(t *testing.T) {
		mtime := l.on(t, nodes[0], "stat", "-c", "%Y", agentPath)
		o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
		if o.code != 0 || o.result == nil || o.result.Outcome != engine.OutcomeUnchanged {
			t.Fatalf("second apply exit %d, result %+v: %s", o.code, o.result, o.stderr)
		}
		if up := uploads(o); len(up) > 0 {
			t.Errorf("second apply uploaded again to %v", up)
		}
		if got := l.on(t, nodes[0], "stat", "-c", "%Y", agentPath); got != mtime {
			t.Errorf("agent rewritten: mtime %s -> %s", mtime, got)
		}
	})

	t.Run("history, diff and rollback", func(t *testing.T) {
		// A third run with a changed profile, then roll back to run 1.
		raw := readFile(t, l.profile)
		changed := strings.Replace(string(raw), "role: server", "role: server\n      labels: {castellan.dev/e2e: changed}", 1)
		writeFile(t, l.profile, []byte(changed))
		if o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json"); o.code != 0 {
			t.Fatalf("third apply exit %d: %s", o.code, o.stderr)
		}
		diff, err := exec.Command(l.bin, "diff", "1", "3", "-f", l.profile).CombinedOutput()
		if err != nil || !strings.Contains(string(diff), "+      labels: {castellan.dev/e2e: changed}") {
			t.Errorf("diff 1 3: %v\n%s", err, diff)
		}
		o := l.castellan(t, "rollback", "--to", "1", "-f", l.profile, "--yes", "-o", "json")
		if o.code != 0 || o.result == nil || o.result.Command != "rollback" || o.result.RollbackOf != 1 {
			t.Fatalf("rollback exit %d result %+v: %s", o.code, o.result, o.stderr)
		}
		repo := filepath.Join(l.dir, "state")
		head, err := exec.Command("git", "-C", repo, "show", "HEAD:profile.yaml").Output()
		if err != nil || !bytes.Equal(head, raw) {
			t.Errorf("after rollback the state's profile is not run 1's (%v)", err)
		}
		hist, err := exec.Command(l.bin, "history", "--state", repo).CombinedOutput()
		if err != nil {
			t.Fatalf("history: %v\n%s", err, hist)
		}
		for _, want := range []string{"rollback->1", "unchanged"} {
			if !strings.Contains(string(hist), want) {
				t.Errorf("history lacks %q:\n%s", want, hist)
			}
		}
		t.Logf("history:\n%s", hist)
	})

	t.Run("a missing data disk fails preflight and changes nothing", func(t *testing.T) {
		raw := readFile(t, filepath.Join(os.Getenv("CASTELLAN_LAB_DIR"), "profile.yaml"))
		bad := strings.Replace(string(raw), "device: /dev/vdb", "device: /dev/vdz", 1)
		writeFile(t, l.profile, []byte(bad))
		before := map[string]string{}
		for _, n := range nodes {
			before[n] = l.on(t, n, "sh", "-c", "ls -la --time-style=+%s /var/lib/castellan/bin; lsblk -no NAME,FSTYPE,MOUNTPOINT /dev/vdb")
		}
		o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
		if o.code != 1 || o.result == nil || o.result.Outcome != engine.OutcomeFailed {
			t.Fatalf("exit %d result %+v", o.code, o.result)
		}
		if !strings.Contains(o.result.Error, "data disk /dev/vdz does not exist") {
			t.Errorf("error = %q", o.result.Error)
		}
		for _, n := range nodes {
			if after := l.on(t, n, "sh", "-c", "ls -la --time-style=+%s /var/lib/castellan/bin; lsblk -no NAME,FSTYPE,MOUNTPOINT /dev/vdb"); after != before[n] {
				t.Errorf("%s changed:\nbefore %s\nafter  %s", n, before[n], after)
			}
		}
	})

	t.Run("a changed host key is refused", func(t *testing.T) {
		// Pin server-1 to another node's key: that is what a changed key looks like.
		kh := readFile(t, filepath.Join(l.dir, "known_hosts"))
		n0, n1 := l.p.Spec.Nodes[0], l.p.Spec.Nodes[1]
		var forged []string
		for _, line := range strings.Split(strings.TrimSpace(string(kh)), "\n") {
			if strings.HasPrefix(line, n1.Address+" ") {
				forged = append(forged, line, strings.Replace(line, n1.Address, n0.Address, 1))
			} else if !strings.HasPrefix(line, n0.Address+" ") {
				forged = append(forged, line)
			}
		}
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "id_ed25519"), readFile(t, filepath.Join(l.dir, "id_ed25519")))
		writeFile(t, filepath.Join(dir, "known_hosts"), []byte(strings.Join(forged, "\n")+"\n"))
		writeFile(t, filepath.Join(dir, "profile.yaml"), readFile(t, filepath.Join(os.Getenv("CASTELLAN_LAB_DIR"), "profile.yaml")))
		// Even with --accept-new-host-keys: a changed key is never accepted.
		o := l.castellan(t, "apply", "-f", filepath.Join(dir, "profile.yaml"), "--yes", "--accept-new-host-keys", "-o", "json")
		if o.code != 1 || o.result == nil || !strings.Contains(o.result.Error, "HOST KEY CHANGED for server-1") || !strings.Contains(o.result.Error, "SHA256:") {
			t.Errorf("apply with a changed host key: exit %d, result %+v\n%s", o.code, o.result, o.stderr)
		}
		if after := readFile(t, filepath.Join(dir, "known_hosts")); string(after) != strings.Join(forged, "\n")+"\n" {
			t.Errorf("known_hosts was changed:\n%s", after)
		}
	})
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
