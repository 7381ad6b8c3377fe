package installer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/facts"
	castssh "castellan/installer/ssh"
	"castellan/installer/ssh/sshtest"
	"castellan/installer/state"
	"castellan/phases/preflight"
)

// castellanBin is the real castellan binary, built once for these tests: it is
// what gets shipped to the nodes as the agent.
var castellanBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "castellan-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "castellan")
	cmd := exec.Command("go", "build", "-o", bin, "castellan/cmd/castellan")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func TestMain(m *testing.M) {
	code := m.Run()
	if bin, err := castellanBin(); err == nil {
		os.RemoveAll(filepath.Dir(bin))
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

func testOptions(t testing.TB, lab *sshtest.Lab, profilePath string, rec *engine.Recorder) Options {
	return Options{
		ProfilePath:   profilePath,
		AgentBinaries: []string{buildCastellan(t)},
		Sink:          rec,
		Logger:        lab.Logger(),
		Dial:          lab.Dial,
	}
}

func uploadsIn(events []engine.Event) map[string]int64 {
	out := map[string]int64{}
	for _, e := range events {
		if e.Status == engine.StatusProgress && e.Step == "upload agent" {
			out[e.Node] = e.Total
		}
	}
	return out
}

// hostPreflightProblems is what preflight must report on this machine: the
// lab's nodes are sshd processes on the test host, so their facts are the
// host's.
func hostPreflightProblems(t *testing.T) []string {
	t.Helper()
	var want []string
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		want = append(want, "systemd is not running")
	}
	var st unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type != unix.CGROUP2_SUPER_MAGIC {
		want = append(want, "the node runs cgroup v1")
	}
	if swaps, _ := os.ReadFile("/proc/swaps"); strings.Count(string(swaps), "\n") > 1 {
		want = append(want, "swap is on")
	}
	return want
}

// TestApplyPreflightOverRealSSH: the first apply ships the agent to every
// node and gathers facts through it; the run is committed; the second apply
// uploads nothing.
func TestApplyPreflightOverRealSSH(t *testing.T) {
	lab := sshtest.New(t, sshtest.Options{Nodes: 2, PrivateDirs: []string{agent.BinDir}})
	prof := testCluster(t, lab, "", "")
	wantProblems := hostPreflightProblems(t)

	rec := &engine.Recorder{}
	res, err := Apply(context.Background(), context.Background(), testOptions(t, lab, prof, rec))
	if res == nil {
		t.Fatalf("Apply: %v", err)
	}
	if len(wantProblems) == 0 && err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for _, p := range wantProblems {
		if err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("Apply error %v, want it to say %q", err, p)
		}
	}
	up := uploadsIn(rec.Events())
	bin := buildCastellan(t)
	fi, _ := os.Stat(bin)
	for _, n := range lab.Nodes {
		if up[n.Name] != fi.Size() {
			t.Errorf("%s: uploaded %d bytes, the binary has %d", n.Name, up[n.Name], fi.Size())
		}
		f, ok := res.Record.Facts[n.Name]
		if !ok || f.Kernel == "" || f.CPUs == 0 {
			t.Errorf("%s: facts missing from the run record: %+v", n.Name, f)
		}
	}
	if res.Record.Number != 1 || res.Record.Command != "apply" || len(res.Record.Phases) != 1 {
		t.Errorf("record = %+v", res.Record)
	}

	// The second apply finds the agent in place: nothing to install.
	rec2 := &engine.Recorder{}
	res2, err2 := Apply(context.Background(), context.Background(), testOptions(t, lab, prof, rec2))
	if res2 == nil {
		t.Fatalf("second Apply: %v", err2)
	}
	if up := uploadsIn(rec2.Events()); len(up) > 0 {
		t.Errorf("second apply uploaded the agent again: %v", up)
	}
	if len(wantProblems) == 0 && res2.Record.Outcome != engine.OutcomeUnchanged {
		t.Errorf("second apply outcome = %s, want unchanged", res2.Record.Outcome)
	}
	hist, err := History(res2.StateDir)
	if err != nil || len(hist) != 2 {
		t.Fatalf("history = %d entries, %v", len(hist), err)
	}
}

// TestAgentRoundTrip calls an operation on a real node through sudo.
func TestAgentRoundTrip(t *testing.T) {
	lab := sshtest.New(t, sshtest.Options{Nodes: 1, PrivateDirs: []string{agent.BinDir}})
	cfg := lab.Config()
	cfg.Sudo = true
	c, err := castssh.Connect(context.Background(), cfg, lab.Nodes[0].Host())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := agent.LocalBinary(buildCastellan(t), "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Install(context.Background(), c, b, nil); err != nil {
		t.Fatal(err)
	}
	var pong agent.PingResult
	if err := agent.Call(context.Background(), c, "n0", b.RemotePath(), "ping", map[string]string{"echo": "it's $(me)\n"}, &pong); err != nil {
		t.Fatal(err)
	}
	if pong.Echo != "it's $(me)\n" || pong.UID != 0 {
		t.Errorf("ping = %+v", pong)
	}
	var f facts.Node
	if err := agent.Call(context.Background(), c, "n0", b.RemotePath(), preflight.FactsOp, preflight.FactsRequest{}, &f); err != nil || f.Kernel == "" {
		t.Errorf("facts = %+v, %v", f, err)
	}
	err = agent.Call(context.Background(), c, "n0", b.RemotePath(), "no.such.op", nil, nil)
	var ae *agent.Error
	if !errors.As(err, &ae) || ae.Code != "unknown-op" || ae.Node != "n0" {
		t.Errorf("unknown op: %v", err)
	}
	err = agent.Call(context.Background(), c, "n0", b.RemotePath(), "ping", map[string]int{"bogus": 1}, nil)
	if !errors.As(err, &ae) || ae.Code != "bad-input" {
		t.Errorf("bad input: %v", err)
	}
}

// TestUnknownHostKey: an unknown key stops the run with its fingerprint;
// --accept-new-host-keys records it and the run commits it.
func TestUnknownHostKey(t *testing.T) {
	lab := sshtest.New(t, sshtest.Options{Nodes: 1, PrivateDirs: []string{agent.BinDir}})
	kh := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(kh, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	prof := testCluster(t, lab, kh, "")
	_, err := Plan(context.Background(), testOptions(t, lab, prof, &engine.Recorder{}))
	var hk *castssh.HostKeyError
	if !errors.As(err, &hk) || hk.Changed || !strings.Contains(err.Error(), "SHA256:") {
		t.Fatalf("plan with an unknown key: %v", err)
	}

	o := testOptions(t, lab, prof, &engine.Recorder{})
	o.AcceptNewHostKeys = true
	res, _ := Apply(context.Background(), context.Background(), o)
	if res == nil || len(res.Record.AcceptedHostKeys) != 1 || !strings.Contains(res.Record.AcceptedHostKeys[0], "SHA256:") {
		t.Fatalf("accepted keys not recorded: %+v", res)
	}
	committed, err := os.ReadFile(filepath.Join(res.StateDir, state.KnownHostsFile))
	if err != nil || !strings.Contains(string(committed), lab.Nodes[0].Address) {
		t.Errorf("known_hosts not committed: %q, %v", committed, err)
	}
	// Now pinned: a plan without the flag connects.
	if _, err := Plan(context.Background(), testOptions(t, lab, prof, &engine.Recorder{})); err != nil && errors.As(err, &hk) {
		t.Errorf("plan after accepting: %v", err)
	}
}

// TestCLIHeadlessJSON runs the real binary inside the lab's client namespace:
// exit code, JSON lines and history.
func TestCLIHeadlessJSON(t *testing.T) {
	lab := sshtest.New(t, sshtest.Options{Nodes: 1, PrivateDirs: []string{agent.BinDir}})
	prof := testCluster(t, lab, "", "")
	bin := buildCastellan(t)
	cmd := exec.Command("ip", "netns", "exec", lab.ClientNS, bin, "apply", "-f", prof, "--yes", "-o", "json", "--agent-binary", bin)
	out, err := cmd.Output()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	wantCode := 0
	if len(hostPreflightProblems(t)) > 0 {
		wantCode = 1
	}
	if code != wantCode {
		t.Errorf("exit code %d, want %d", code, wantCode)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var sawRunStart, sawResult bool
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON line: %q", l)
		}
		if m["status"] == "started" && m["phase"] == nil {
			sawRunStart = true
		}
		if _, ok := m["result"]; ok {
			sawResult = true
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

// TestRollback: rolling back applies an earlier run's profile as a new run,
// committed as a rollback, and the state's profile is that run's again.
func TestRollback(t *testing.T) {
	lab := sshtest.New(t, sshtest.Options{Nodes: 1, PrivateDirs: []string{agent.BinDir}})
	prof := testCluster(t, lab, "", "")
	first, _ := os.ReadFile(prof)
	if res, _ := Apply(context.Background(), context.Background(), testOptions(t, lab, prof, &engine.Recorder{})); res == nil {
		t.Fatal("first apply did not run")
	}
	changed := strings.Replace(string(first), "role: server}", "role: server, labels: {tier: gold}}", 1)
	if err := os.WriteFile(prof, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	res2, _ := Apply(context.Background(), context.Background(), testOptions(t, lab, prof, &engine.Recorder{}))
	if res2 == nil {
		t.Fatal("second apply did not run")
	}
	diff, err := Diff(res2.StateDir, "1", "2")
	if err != nil || !strings.Contains(diff, "+    - {name: n0") || !strings.Contains(diff, "tier: gold") {
		t.Errorf("diff 1 2: %v\n%s", err, diff)
	}

	var notes strings.Builder
	o := testOptions(t, lab, prof, &engine.Recorder{})
	o.Notice = &notes
	res3, _ := Rollback(context.Background(), context.Background(), o, "1")
	if res3 == nil {
		t.Fatal("rollback did not run")
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
	hist, err := History(res3.StateDir)
	if err != nil || len(hist) != 3 || hist[0].Record.Command != "rollback" {
		t.Errorf("history after rollback: %v %v", hist, err)
	}
	// Unknown runs are bad input.
	if _, err := Rollback(context.Background(), context.Background(), o, "42"); err == nil || !errors.As(err, new(*InputError)) {
		t.Errorf("rollback to run 42: %v", err)
	}
}

// TestPlanChangesNothing: neither plan nor a declined apply creates the state
// repo or the age identity, touches known_hosts, or installs the agent.
func TestPlanChangesNothing(t *testing.T) {
	lab := sshtest.New(t, sshtest.Options{Nodes: 1, PrivateDirs: []string{agent.BinDir}})
	prof := testCluster(t, lab, "", "")
	p, err := Load(Options{ProfilePath: prof})
	if err != nil {
		t.Fatal(err)
	}
	kh := p.Resolve(p.Spec.SSH.KnownHosts)
	before, _ := os.ReadFile(kh)

	plans, err := Plan(context.Background(), testOptions(t, lab, prof, &engine.Recorder{}))
	if err != nil || len(plans) != 1 || len(plans[0].Changes) != 1 || !strings.Contains(plans[0].Changes[0].Summary, "install the castellan agent") {
		t.Fatalf("plan = %+v, %v", plans, err)
	}
	o := testOptions(t, lab, prof, &engine.Recorder{})
	var shown []engine.Plan
	o.Confirm = func(p []engine.Plan) (bool, error) { shown = p; return false, nil }
	if _, err := Apply(context.Background(), context.Background(), o); !errors.Is(err, ErrAborted) || len(shown) != 1 {
		t.Fatalf("declined apply: %v (shown %v)", err, shown)
	}
	if _, err := os.Stat(p.Resolve(p.Spec.State.Repo)); !os.IsNotExist(err) {
		t.Errorf("the state repo exists after plan and a declined apply: %v", err)
	}
	if _, err := os.Stat(os.Getenv(state.IdentityEnv)); !os.IsNotExist(err) {
		t.Errorf("the age identity was created: %v", err)
	}
	if after, _ := os.ReadFile(kh); string(after) != string(before) {
		t.Error("known_hosts changed")
	}
	// Look from inside the node (its own mount namespace holds its agent dir).
	c, err := castssh.Connect(context.Background(), lab.Config(), lab.Nodes[0].Host())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out, err := c.Output(context.Background(), castssh.Cmd{Argv: []string{"ls", "-A", agent.BinDir}})
	if err != nil || out != "" {
		t.Errorf("the node's agent directory is not empty: %q %v", out, err)
	}
}

// TestInterruptedRunIsCommittedAndARerunContinues: a run stopped by Ctrl-C is
// committed as interrupted, and the next run does the work.
func TestInterruptedRunIsCommittedAndARerunContinues(t *testing.T) {
	lab := sshtest.New(t, sshtest.Options{Nodes: 2, PrivateDirs: []string{agent.BinDir}})
	prof := testCluster(t, lab, "", "")
	// The interrupt arrives while the first node's agent upload runs.
	interrupt, stop := context.WithCancel(context.Background())
	defer stop()
	o := testOptions(t, lab, prof, nil)
	o.Parallelism = 1
	o.Sink = engine.SinkFunc(func(e engine.Event) {
		if e.Status == engine.StatusProgress && e.Step == "upload agent" {
			stop()
		}
	})
	res, err := Apply(context.Background(), interrupt, o)
	if res == nil || res.Record.Outcome != engine.OutcomeInterrupted || err == nil {
		t.Fatalf("interrupted apply: %+v, %v", res, err)
	}
	// n0 finishes the step it was in (and may stop before its next one);
	// n1 never starts.
	nodes := res.Record.Phases[0].Nodes
	if nodes["n0"] == engine.OutcomeFailed || nodes["n1"] != engine.OutcomeInterrupted {
		t.Errorf("node outcomes = %v", nodes)
	}
	rec := &engine.Recorder{}
	res2, err := Apply(context.Background(), context.Background(), testOptions(t, lab, prof, rec))
	if res2 == nil || res2.Record.Number != 2 {
		t.Fatalf("rerun: %+v", res2)
	}
	up := uploadsIn(rec.Events())
	if problems := hostPreflightProblems(t); len(problems) > 0 {
		// On this host n0's facts fail preflight's checks, which fails the
		// phase before anything is applied: n1 must not get the agent either.
		if err == nil || !strings.Contains(err.Error(), problems[0]) || len(up) != 0 {
			t.Errorf("rerun on a host that fails preflight: err %v, uploads %v", err, up)
		}
	} else if len(up) != 1 || up["n1"] == 0 {
		t.Errorf("the rerun uploaded to %v; want only n1, which the interrupted run never reached", up)
	}
	hist, _ := History(res2.StateDir)
	if len(hist) != 2 || hist[1].Record.Outcome != engine.OutcomeInterrupted {
		t.Errorf("history = %+v", hist)
	}
}
