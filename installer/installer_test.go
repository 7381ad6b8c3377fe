package installer

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"castellan/installer/agent"
	"castellan/installer/engine"
	castssh "castellan/installer/ssh"
	"castellan/installer/ssh/sshtest"
	"castellan/installer/state"
	"castellan/phases/identity"
)

// The nodes of these tests are real OpenSSH sshd processes in network
// namespaces (sshtest). They share the test machine's file system, except
// for the directories each node gets of its own: the agent's directory, the
// agent's verification stamps (/run/castellan), the identity directory
// (/var/lib/castellan/identity), and /run/systemd, where each node shows the
// marker systemd creates at boot
// (/run/systemd/system, what sd_booted(3) checks), so that preflight's
// "systemd is running" check passes on a test host without systemd as PID 1.
// Everything else preflight checks is the test machine's own. That systemd
// really runs is proven on the VM lab (make e2e).

// builtBin says castellanBin ran: TestMain removes what it built, and
// builds nothing when no test asked (go test -list, a run of unit tests).
var builtBin atomic.Bool

// castellanBin is the real castellan binary and the node agent it ships
// (cmd/castellan-agent), built once for these tests, as make build builds
// them: the agent first, embedded into castellan. Tests that ship castellan
// itself as the agent (the fallback of a castellan built without the
// embedded agent) say so.
var castellanBin = sync.OnceValues(func() (string, error) {
	builtBin.Store(true)
	dir, err := os.MkdirTemp("", "castellan-bin-")
	if err != nil {
		return "", err
	}
	for _, b := range []struct{ out, pkg string }{
		{filepath.Join(dir, "castellan-agent"), "castellan/cmd/castellan-agent"},
		{filepath.Join(dir, "castellan"), "castellan/cmd/castellan"},
	} {
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	return filepath.Join(dir, "castellan"), nil
})

func TestMain(m *testing.M) {
	if spec := os.Getenv(floorSpecEnv); spec != "" && len(os.Args) > 1 && os.Args[1] == "-test.run=^$" {
		os.Exit(runFloor(spec))
	}
	code := m.Run()
	if builtBin.Load() {
		if bin, err := castellanBin(); err == nil {
			os.RemoveAll(filepath.Dir(bin))
		}
	}
	os.Exit(code)
}

func buildCastellan(t testing.TB) string {
	t.Helper()
	bin, err := castellanBin()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// buildAgent is the node agent castellan ships (cmd/castellan-agent).
func buildAgent(t testing.TB) string {
	return filepath.Join(filepath.Dir(buildCastellan(t)), "castellan-agent")
}

// newLab starts n sshd nodes, each with its own agent directory, identity
// directory, a systemd boot marker and a cgroup v2 hierarchy (kubelet's requirement,
// which preflight checks; the test host may boot with cgroup v1).
func newLab(t testing.TB, n int) *sshtest.Lab {
	t.Helper()
	lab := sshtest.New(t, sshtest.Options{Nodes: n, PrivateDirs: []string{agent.BinDir, "/run/castellan", identity.DefaultDir, "/run/systemd"}, CgroupV2: true})
	for _, node := range lab.Nodes {
		if err := os.MkdirAll(filepath.Join(node.PrivatePath("/run/systemd"), "system"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return lab
}

// testCluster writes a profile for the lab's nodes (the first a server) and
// returns its path. knownHosts "" pins every node's keys.
func testCluster(t testing.TB, lab *sshtest.Lab, knownHosts string, extra string) string {
	t.Helper()
	dir := t.TempDir()
	if knownHosts == "" {
		knownHosts = lab.WriteKnownHosts(sshtest.KnownHostsOptions{})
	}
	var nodes strings.Builder
	for i, n := range lab.Nodes {
		role := "agent"
		if i == 0 {
			role = "server"
		}
		fmt.Fprintf(&nodes, "    - {name: %s, address: %s, port: %d, role: %s}\n", n.Name, n.Address, n.Port, role)
	}
	body := fmt.Sprintf(`apiVersion: castellan/v1alpha1
kind: Cluster
metadata: {name: test}
spec:
  ssh:
    user: %s
    keyFile: %s
    knownHosts: %s
  nodes:
%s  identity: {tpm: insecure-skip}
  mesh: {enabled: false}
%s`, lab.User, lab.KeyFile, knownHosts, nodes.String(), extra)
	p := filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(state.IdentityEnv, filepath.Join(dir, "age-identity.txt"))
	return p
}

func testConfig(t testing.TB, lab *sshtest.Lab, sink engine.Sink) *Config {
	if sink == nil {
		sink = &engine.Recorder{}
	}
	return &Config{
		AgentBinaries: []string{buildAgent(t)},
		Sink:          sink,
		Logger:        lab.Logger(),
		Dial:          lab.Dial,
	}
}

// applyYes applies without asking, as --yes does.
func applyYes(t testing.TB, cfg *Config, prof string) (*Result, error) {
	t.Helper()
	a := NewApply(cfg)
	a.ProfilePath = prof
	return a.Run(context.Background())
}

func uploadsIn(events []engine.Event) map[string]int64 {
	out := map[string]int64{}
	for _, e := range events {
		if e.Kind == engine.KindProgress && e.Step == "upload agent" {
			out[e.Node] = e.Total
		}
	}
	return out
}

// TestApplyOverRealSSH: the first apply ships the agent to every node and
// gathers facts through it; the run is committed; a second apply, asked
// first as a person would be, changes nothing, uploads nothing, and costs
// one remote exec per node for its plan and its run together.
func TestApplyOverRealSSH(t *testing.T) {
	lab := newLab(t, 2)
	prof := testCluster(t, lab, "", "")
	rec := &engine.Recorder{}
	res, err := applyYes(t, testConfig(t, lab, rec), prof)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	up := uploadsIn(rec.Events())
	fi, _ := os.Stat(buildAgent(t))
	for _, n := range lab.Nodes {
		if up[n.Name] != fi.Size() {
			t.Errorf("%s: uploaded %d bytes, the binary has %d", n.Name, up[n.Name], fi.Size())
		}
		f, ok := res.Record.NodeFacts(n.Name)
		if !ok || f.Kernel == "" || f.CPUs == 0 || !f.Systemd {
			t.Errorf("%s: facts missing from the run record: %+v", n.Name, f)
		}
	}
	if r := res.Record; r.Number != 1 || r.Command != "apply" || len(r.Phases) != len(Phases()) || r.Outcome != engine.OutcomeOK {
		t.Errorf("record = %+v", r)
	}

	rec2 := &engine.Recorder{}
	a := NewApply(testConfig(t, lab, rec2))
	a.ProfilePath = prof
	pending, err := a.Prepare(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if pending.Err() != nil || pending.Changes() != 0 {
		t.Fatalf("second plan: %d changes, %v", pending.Changes(), pending.Err())
	}
	access := pending.access
	res2, err := pending.Apply(context.Background())
	if err != nil {
		t.Fatalf("second Apply: %v", err)
	}
	if up := uploadsIn(rec2.Events()); len(up) > 0 {
		t.Errorf("second apply uploaded the agent again: %v", up)
	}
	if res2.Record.Outcome != engine.OutcomeUnchanged {
		t.Errorf("second apply outcome = %s, want unchanged", res2.Record.Outcome)
	}
	for _, n := range lab.Nodes {
		if got := access.execCount(n.Name); got != 1 {
			t.Errorf("%s: %d remote execs for a no-op plan and apply, want 1", n.Name, got)
		}
	}
	h := NewHistory(&Config{})
	h.StateDir = res2.StateDir
	hist, open, err := h.Run()
	if err != nil || len(hist) != 2 || open != nil {
		t.Fatalf("history = %d entries (%v), %v", len(hist), open, err)
	}
}

// TestAgentIsCheckedBeforeItRuns: the launcher runs the agent as root only
// when every directory on its path and the binary are root's alone and the
// binary is the one shipped; it refuses otherwise, naming the path and the
// fix.
func TestAgentIsCheckedBeforeItRuns(t *testing.T) {
	lab := newLab(t, 1)
	node := lab.Nodes[0]
	c, err := sshConnect(t, lab)
	if err != nil {
		t.Fatal(err)
	}
	b, err := agent.LocalBinary(buildAgent(t), "amd64")
	if err != nil {
		t.Fatal(err)
	}
	exec := func(op string, in any) (agent.Status, agent.Response, error) {
		data, _ := json.Marshal(in)
		return agent.Exec(context.Background(), c, "n0", b, op, data)
	}
	st, _, err := exec(agent.Ping.Name, agent.PingRequest{})
	if err != nil || st.Installed || st.Arch != "amd64" {
		t.Fatalf("before install: %+v %v", st, err)
	}
	if err := agent.Install(context.Background(), c, b, nil); err != nil {
		t.Fatal(err)
	}
	st, resp, err := exec(agent.Ping.Name, agent.PingRequest{Echo: "it's $(me)\n"})
	var pong agent.PingResult
	if err != nil || !st.Installed || resp.Decode("n0", "ping", &pong) != nil || pong.Echo != "it's $(me)\n" || pong.UID != 0 {
		t.Fatalf("ping = %+v %+v %v", st, pong, err)
	}
	_, resp, _ = exec("no.such.op", nil)
	var ae *agent.Error
	if err := resp.Decode("n0", "no.such.op", nil); !errors.As(err, &ae) || ae.Code != "unknown-op" || ae.Node != "n0" {
		t.Errorf("unknown op: %v", err)
	}

	bin := filepath.Join(node.PrivatePath(agent.BinDir), filepath.Base(b.RemotePath()))
	dir := node.PrivatePath(agent.BinDir)
	tests := []struct {
		name   string
		break_ func() error
		fix    func() error
		want   string
	}{
		{"binary writable by others", func() error { return os.Chmod(bin, 0o757) }, func() error { return os.Chmod(bin, 0o755) },
			"mode 757 lets group or others write; others could replace the agent"},
		{"directory owned by a user", func() error { return os.Chown(dir, 1000, 1000) }, func() error { return os.Chown(dir, 0, 0) },
			"owned by uid 1000, not root"},
		{"content changed", func() error { return appendByte(bin) }, func() error { return os.Truncate(bin, b.Size) },
			"is not the binary castellan shipped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.break_(); err != nil {
				t.Fatal(err)
			}
			_, _, err := exec(agent.Ping.Name, agent.PingRequest{})
			var ue *agent.UnsafeAgentError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "refusing to run the castellan agent as root") {
				t.Errorf("got %v, want an UnsafeAgentError saying %q", err, tt.want)
			}
			if err := tt.fix(); err != nil {
				t.Fatal(err)
			}
			if _, _, err := exec(agent.Ping.Name, agent.PingRequest{}); err != nil {
				t.Errorf("after the fix: %v", err)
			}
		})
	}
}

func appendByte(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte{0}); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// TestUnknownHostKeyStopsThePlan: an unknown key stops the node with its
// fingerprint; the error is reported once.
func TestUnknownHostKeyStopsThePlan(t *testing.T) {
	lab := newLab(t, 1)
	kh := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(kh, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	prof := testCluster(t, lab, kh, "")
	rec := &engine.Recorder{}
	p := NewPlan(testConfig(t, lab, rec))
	p.ProfilePath = prof
	_, err := p.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "is unavailable") {
		t.Fatalf("plan with an unknown key: %v", err)
	}
	full := 0
	for _, e := range rec.Events() {
		if strings.Contains(e.Message, "SHA256:") && strings.Contains(e.Message, "is unknown") {
			full++
		}
	}
	if full != 1 {
		t.Errorf("the host key error was printed %d times, want once", full)
	}
}

// TestNewHostKeysAreTrustedOnlyOnceConfirmed: with --accept-new-host-keys
// an unknown key is a planned change ("trust new host key SHA256:... of
// NODE"); a declined apply writes it nowhere; a confirmed one writes it to
// known_hosts, records it in the run and commits it.
func TestNewHostKeysAreTrustedOnlyOnceConfirmed(t *testing.T) {
	lab := newLab(t, 1)
	kh := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(kh, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	prof := testCluster(t, lab, kh, "")
	p, _ := LoadProfile(prof, true)
	prepare := func() *Pending {
		a := NewApply(testConfig(t, lab, nil))
		a.ProfilePath, a.AcceptNewHostKeys = prof, true
		pending, err := a.Prepare(context.Background(), true)
		if err != nil {
			t.Fatal(err)
		}
		return pending
	}
	pending := prepare()
	var trust *engine.Change
	for _, c := range pending.Plans()[0].Changes {
		if c.Action == "trust-host-key" {
			trust = &c
		}
	}
	if trust == nil || !strings.HasPrefix(trust.Target, "SHA256:") || !strings.Contains(trust.Summary, "trust new host key") || !strings.Contains(trust.Summary, trust.Target) {
		t.Fatalf("plan = %+v", pending.Plans())
	}
	pending.Close() // declined
	if data, _ := os.ReadFile(kh); len(data) != 0 {
		t.Fatalf("a declined apply wrote known_hosts: %q", data)
	}
	if _, err := os.Stat(p.Resolve(p.Spec.State.Repo)); !os.IsNotExist(err) {
		t.Fatalf("a declined apply created the state repo: %v", err)
	}

	res, err := prepare().Apply(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Record.TrustedHostKeys) != 1 || !strings.Contains(res.Record.TrustedHostKeys[0], trust.Target) {
		t.Errorf("trusted keys in the record: %v", res.Record.TrustedHostKeys)
	}
	written, _ := os.ReadFile(kh)
	committed, _ := os.ReadFile(filepath.Join(res.StateDir, state.KnownHostsFile))
	if !strings.Contains(string(written), lab.Nodes[0].Address) || string(committed) != string(written) {
		t.Errorf("known_hosts %q, committed %q", written, committed)
	}
	// Pinned now: a plan without the flag connects and changes nothing.
	pl := NewPlan(testConfig(t, lab, nil))
	pl.ProfilePath = prof
	plans, err := pl.Run(context.Background())
	if err != nil || len(plans) != len(Phases()) {
		t.Errorf("plan after trusting: %+v %v", plans, err)
	}
	for _, p := range plans {
		if !p.Empty() {
			t.Errorf("plan after trusting: %s: %+v", p.Phase, p.Changes)
		}
	}
}

// TestCLIHeadlessJSON runs the real binary inside the lab's client namespace:
// exit code, JSON lines (kind and sequence number on each) and history. It
// ships castellan itself as the agent (what a castellan built without the
// embedded castellan-agent does): `castellan agent OP` serves the same
// operations.
func TestCLIHeadlessJSON(t *testing.T) {
	lab := newLab(t, 1)
	prof := testCluster(t, lab, "", "")
	bin := buildCastellan(t)
	cmd := exec.Command("ip", "netns", "exec", lab.ClientNS, bin, "apply", "-f", prof, "--yes", "-o", "json", "--agent-binary", bin)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var seq float64
	var sawRunStart, sawResult bool
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON line: %q", l)
		}
		if _, ok := m["result"]; ok {
			sawResult = true
			continue
		}
		if m["kind"] == nil || m["seq"].(float64) != seq+1 {
			t.Errorf("event without kind or out of sequence (after %v): %s", seq, l)
		}
		seq = m["seq"].(float64)
		if m["kind"] == "run" && m["status"] == "started" {
			sawRunStart = true
		}
	}
	if !sawRunStart || !sawResult {
		t.Errorf("JSON stream lacks the run start or the result:\n%s", out)
	}
	hist, err := exec.Command(bin, "history", "-f", prof).CombinedOutput()
	if err != nil || !strings.Contains(string(hist), "apply") {
		t.Errorf("history: %v\n%s", err, hist)
	}
}

func TestBadInputExitsBeforeConnecting(t *testing.T) {
	bin := buildCastellan(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.yaml")
	os.WriteFile(p, []byte("apiVersion: castellan/v1alpha1\nkind: Cluster\nmetadata: {name: x}\nspec:\n  ssh: {user: a, keyFile: nope, knownHosts: nope}\n  nodes: [{name: a, address: 192.0.2.1, role: server}]\n"), 0o600)
	out, err := exec.Command(bin, "apply", "-f", p, "--yes").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want 2\n%s", err, out)
	}
	if !strings.Contains(string(out), "bad.yaml:5:") || !strings.Contains(string(out), "spec.ssh.keyFile") {
		t.Errorf("error does not name file:line and field:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
		t.Error("a state repo was created for a bad profile")
	}
}

// TestForeignStateDirectoryIsRefused: spec.state.repo naming a folder that
// holds other files, or another git repository, is bad input, and nothing
// in it changes.
func TestForeignStateDirectoryIsRefused(t *testing.T) {
	lab := newLab(t, 1)
	mine := t.TempDir()
	os.WriteFile(filepath.Join(mine, "README.md"), []byte("my notes\n"), 0o644)
	prof := testCluster(t, lab, "", "  state: {repo: "+mine+"}\n")
	_, err := applyYes(t, testConfig(t, lab, nil), prof)
	if !errors.As(err, new(*InputError)) || !errors.Is(err, state.ErrNotStateRepo) || !strings.Contains(err.Error(), "already holds files (README.md)") {
		t.Fatalf("apply into a foreign folder: %v", err)
	}
	entries, _ := os.ReadDir(mine)
	if got, _ := os.ReadFile(filepath.Join(mine, "README.md")); len(entries) != 1 || string(got) != "my notes\n" {
		t.Errorf("the folder changed: %v %q", entries, got)
	}
}

// TestRollback: rolling back applies an earlier run's profile as a new run,
// committed as a rollback, and the state's profile is that run's again.
func TestRollback(t *testing.T) {
	lab := newLab(t, 1)
	prof := testCluster(t, lab, "", "")
	first, _ := os.ReadFile(prof)
	if _, err := applyYes(t, testConfig(t, lab, nil), prof); err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(first), "role: server}", "role: server, labels: {tier: gold}}", 1)
	if err := os.WriteFile(prof, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	res2, err := applyYes(t, testConfig(t, lab, nil), prof)
	if err != nil {
		t.Fatal(err)
	}
	d := NewDiff(&Config{})
	d.StateDir, d.From, d.To = res2.StateDir, "1", "2"
	diff, err := d.Run()
	if err != nil || !strings.Contains(diff, "+    - {name: n0") || !strings.Contains(diff, "tier: gold") {
		t.Errorf("diff 1 2: %v\n%s", err, diff)
	}

	var notes strings.Builder
	cfg := testConfig(t, lab, nil)
	cfg.Notice = &notes
	r := NewRollback(cfg)
	r.ProfilePath, r.To = prof, "1"
	res3, err := r.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if r := res3.Record; r.Number != 3 || r.Command != "rollback" || r.RollbackOf != 1 {
		t.Errorf("rollback record = %+v", r)
	}
	got, err := os.ReadFile(filepath.Join(res3.StateDir, state.ProfileFile))
	if err != nil || string(got) != string(first) {
		t.Errorf("state profile after rollback is not run 1's: %v", err)
	}
	if !strings.Contains(notes.String(), "differs from the profile of run 1") {
		t.Errorf("no note that the profile file differs: %q", notes.String())
	}
	h := NewHistory(&Config{})
	h.StateDir = res3.StateDir
	hist, _, err := h.Run()
	if err != nil || len(hist) != 3 || hist[0].Record.Command != "rollback" {
		t.Errorf("history after rollback: %v %v", hist, err)
	}
	r.To = "42"
	if _, err := r.Run(context.Background()); err == nil || !errors.As(err, new(*InputError)) {
		t.Errorf("rollback to run 42: %v", err)
	}
}

// TestDeclinedApplyChangesNothing: neither plan nor an apply that is
// prepared and then declined creates the state repo or the age identity,
// touches known_hosts, or installs the agent; a second apply prepared at the
// same time is refused by the lock.
func TestDeclinedApplyChangesNothing(t *testing.T) {
	lab := newLab(t, 1)
	prof := testCluster(t, lab, "", "")
	p, err := LoadProfile(prof, false)
	if err != nil {
		t.Fatal(err)
	}
	kh := p.Resolve(p.Spec.SSH.KnownHosts)
	before, _ := os.ReadFile(kh)

	pl := NewPlan(testConfig(t, lab, nil))
	pl.ProfilePath = prof
	plans, err := pl.Run(context.Background())
	if err != nil || len(plans) != len(Phases()) || len(plans[0].Changes) != 1 || plans[0].Changes[0].Action != "install-agent" {
		t.Fatalf("plan = %+v, %v", plans, err)
	}
	a := NewApply(testConfig(t, lab, nil))
	a.ProfilePath = prof
	pending, err := a.Prepare(context.Background(), true)
	if err != nil || len(pending.Plans()) != len(plans) || pending.Plans()[0].Changes[0].Action != "install-agent" {
		t.Fatalf("prepare: %v", err)
	}
	// Two first applies: the second waits for the lock (refused).
	if _, err := a.Prepare(context.Background(), true); !errors.Is(err, state.ErrLocked) {
		t.Errorf("a second apply while the first waits for confirmation: %v", err)
	}
	pending.Close()
	if _, err := os.Stat(p.Resolve(p.Spec.State.Repo)); !os.IsNotExist(err) {
		t.Errorf("the state repo exists after plan and a declined apply: %v", err)
	}
	if _, err := os.Stat(os.Getenv(state.IdentityEnv)); !os.IsNotExist(err) {
		t.Errorf("the age identity was created: %v", err)
	}
	if after, _ := os.ReadFile(kh); string(after) != string(before) {
		t.Error("known_hosts changed")
	}
	for _, dir := range []string{agent.BinDir, identity.DefaultDir} {
		if entries, err := os.ReadDir(lab.Nodes[0].PrivatePath(dir)); err != nil || len(entries) != 0 {
			t.Errorf("the node's %s is not empty: %v %v", dir, entries, err)
		}
	}
}

// TestFailedPlanIsCommitted: an interactive apply whose plan fails asks
// nothing, applies nothing, and is committed as a failed run, as with --yes.
func TestFailedPlanIsCommitted(t *testing.T) {
	lab := newLab(t, 1)
	prof := testCluster(t, lab, "", "")
	if _, err := applyYes(t, testConfig(t, lab, nil), prof); err != nil {
		t.Fatal(err)
	}
	body, _ := os.ReadFile(prof)
	withDisk := strings.Replace(string(body), "role: server}", "role: server, dataDisks: [{device: /dev/vdz}]}", 1)
	os.WriteFile(prof, []byte(withDisk), 0o600)
	a := NewApply(testConfig(t, lab, nil))
	a.ProfilePath = prof
	pending, err := a.Prepare(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if pending.Err() == nil {
		t.Fatal("the plan did not fail on a missing disk")
	}
	res, err := pending.Apply(context.Background())
	if !errors.As(err, new(*RunError)) || res == nil {
		t.Fatalf("apply of a failed plan: %v", err)
	}
	r := res.Record
	if r.Number != 2 || r.Outcome != engine.OutcomeFailed || !strings.Contains(r.NodeErrors["n0"], "data disk /dev/vdz does not exist") || !strings.Contains(r.Error, "nothing was applied") {
		t.Errorf("record = %+v", r)
	}
}

// TestKilledApplyIsRecordedAsDied: the real binary is killed with SIGKILL
// while it uploads the agent; history shows the run as died, the next apply
// commits it under its own number and takes the next one, and completes.
func TestKilledApplyIsRecordedAsDied(t *testing.T) {
	lab := newLab(t, 1)
	prof := testCluster(t, lab, "", "")
	bin := buildCastellan(t)
	cmd := exec.Command("ip", "netns", "exec", lab.ClientNS, bin, "apply", "-f", prof, "--yes", "-o", "json", "--agent-binary", bin)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.Contains(sc.Text(), `"kind":"progress"`) {
			break
		}
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, out)
	_ = cmd.Wait()

	hist, err := exec.Command(bin, "history", "-f", prof).CombinedOutput()
	if err != nil || !strings.Contains(string(hist), "died") || !strings.Contains(string(hist), "(not yet)") {
		t.Errorf("history before the rerun: %v\n%s", err, hist)
	}
	res, err := applyYes(t, testConfig(t, lab, nil), prof)
	if err != nil || res.Record.Number != 2 {
		t.Fatalf("rerun: %+v %v", res, err)
	}
	h := NewHistory(&Config{})
	h.StateDir = res.StateDir
	entries, open, err := h.Run()
	if err != nil || open != nil || len(entries) != 2 || entries[1].Record.Outcome != engine.OutcomeDied || entries[1].Record.Number != 1 {
		t.Errorf("history after the rerun: %+v %v %v", entries, open, err)
	}
}

// TestInterruptedRunIsCommittedAndARerunContinues: a run stopped by Ctrl-C is
// committed as interrupted, and the next run does the rest.
func TestInterruptedRunIsCommittedAndARerunContinues(t *testing.T) {
	lab := newLab(t, 2)
	prof := testCluster(t, lab, "", "")
	// The interrupt arrives while the first node's agent upload runs.
	interrupt, stop := context.WithCancel(context.Background())
	defer stop()
	cfg := testConfig(t, lab, engine.SinkFunc(func(e engine.Event) {
		if e.Kind == engine.KindProgress && e.Step == "upload agent" {
			stop()
		}
	}))
	cfg.Parallelism = 1
	cfg.Interrupt = interrupt
	res, err := applyYes(t, cfg, prof)
	if res == nil || res.Record.Outcome != engine.OutcomeInterrupted || !errors.As(err, new(*RunError)) {
		t.Fatalf("interrupted apply: %+v, %v", res, err)
	}
	// n0 finishes the step it was in (its upload) and stops before the
	// next; n1 never starts.
	nodes := res.Record.Phases[0].Nodes
	if nodes["n0"] != engine.OutcomeInterrupted || nodes["n1"] != engine.OutcomeInterrupted {
		t.Errorf("node outcomes = %v", nodes)
	}
	rec := &engine.Recorder{}
	res2, err := applyYes(t, testConfig(t, lab, rec), prof)
	if err != nil || res2.Record.Number != 2 {
		t.Fatalf("rerun: %+v %v", res2, err)
	}
	if up := uploadsIn(rec.Events()); len(up) != 1 || up["n1"] == 0 {
		t.Errorf("the rerun uploaded to %v; want only n1, which the interrupted run never reached", up)
	}
}

// sshConnect opens one privileged connection to the lab's first node.
func sshConnect(t *testing.T, lab *sshtest.Lab) (*castssh.Client, error) {
	t.Helper()
	cfg := lab.Config()
	cfg.Sudo = true
	c, err := castssh.Connect(context.Background(), cfg, lab.Nodes[0].Host())
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}
