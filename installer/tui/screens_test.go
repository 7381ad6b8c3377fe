package tui

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"
	"github.com/charmbracelet/x/exp/golden"
	"github.com/charmbracelet/x/exp/teatest/v2"
	"golang.org/x/crypto/ssh"

	"castellan/installer"
	"castellan/installer/engine"
	prof "castellan/installer/profile"
	"castellan/installer/state"
	"castellan/installer/tui/common"
	"castellan/installer/tui/internal/termshot"
	"castellan/installer/tui/pages/history"
	"castellan/installer/tui/pages/plan"
	profilepage "castellan/installer/tui/pages/profile"
	"castellan/installer/tui/pages/progress"
)

// These tests drive the root model through teatest (a real bubbletea
// program on a pipe) and compare the screen it shows, 80x24, with golden
// files (go test -update rewrites them). The plan, progress and history
// screens are fed recorded engine types (plans, an event stream, run
// records) as their messages: they are views of those. The real verbs
// against real sshd nodes are driven in terminal_test.go.

// readmeShots are the golden screens the README shows too (as text and
// PNG, written when CASTELLAN_TUI_SCREENSHOTS names a directory): the real
// terminal test cannot catch a run mid-upload, nor a plan with the changes
// of phases still on their way.
var readmeShots = map[string]string{
	"TestPlanScreens/planned":           "plan-keys-and-disks",
	"TestProgressScreens/running":       "progress-running",
	"TestProgressScreens/failure_first": "progress-failed",
}

// t0 is the clock of every golden screen.
var t0 = time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)

func testOptions(dir string) Options {
	return Options{Dir: dir, Static: true, Now: func() time.Time { return t0.Add(42 * time.Second) }}
}

// start runs m in a test program of w x h cells.
func launch(t *testing.T, m *Model, w, h int) *teatest.TestModel {
	t.Helper()
	tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(w, h))
	t.Cleanup(func() { _ = tm.Quit() })
	return tm
}

// waitFor waits until the program has drawn every one of the words.
func waitFor(t *testing.T, tm *teatest.TestModel, words ...string) {
	t.Helper()
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool {
		s := ansi.Strip(string(b))
		for _, w := range words {
			if !strings.Contains(s, w) {
				return false
			}
		}
		return true
	}, teatest.WithDuration(10*time.Second), teatest.WithCheckInterval(20*time.Millisecond))
}

// screen quits the program and returns its last screen as text, checking
// that it fills w x h exactly.
func screen(t *testing.T, tm *teatest.TestModel, w, h int) string {
	t.Helper()
	if err := tm.Quit(); err != nil {
		t.Fatal(err)
	}
	m := tm.FinalModel(t, teatest.WithFinalTimeout(10*time.Second)).(*Model)
	styled := m.View().Content
	out := ansi.Strip(styled)
	if name, ok := readmeShots[t.Name()]; ok && os.Getenv("CASTELLAN_TUI_SCREENSHOTS") != "" {
		dir := os.Getenv("CASTELLAN_TUI_SCREENSHOTS")
		png, err := termshot.Render([]byte(styled), w, h)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".txt"), []byte(out+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(out, "\n")
	if len(lines) != h {
		t.Errorf("the screen has %d lines, want %d", len(lines), h)
	}
	for i, l := range lines {
		if ansi.StringWidth(l) > w {
			t.Errorf("line %d is %d cells wide, more than %d: %q", i+1, ansi.StringWidth(l), w, l)
		}
	}
	return out
}

func press(code rune) tea.KeyPressMsg { return tea.KeyPressMsg{Code: code} }

func keys(tm *teatest.TestModel, ks ...any) {
	for _, k := range ks {
		switch k := k.(type) {
		case string:
			tm.Type(k)
		case rune:
			tm.Send(press(k))
		case tea.Msg:
			tm.Send(k)
		}
	}
}

const commented = `# The staging cluster.
apiVersion: castellan/v1alpha1
kind: Cluster
metadata:
  name: staging                   # a DNS label
spec:
  ssh:
    user: ops                     # passwordless sudo
    keyFile: id_test
    knownHosts: known_hosts       # pinned out of band
  nodes:
    - name: server-1
      address: 192.0.2.11
      role: server                # control plane
    - name: agent-1
      address: 192.0.2.21
      role: agent
      dataDisks:
        - device: /dev/vdb
  identity: {tpm: insecure-skip}
  state:
    repo: state
`

// privateKey is a new ed25519 key in OpenSSH's PEM format.
func privateKey(t *testing.T) string {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(k, "")
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(block))
}

// profileDir writes the commented profile and the files it names.
func profileDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{"cluster.yaml": commented, "id_test": privateKey(t), "known_hosts": "", "notes.yaml": "a: b\n", "other.yml": "kind: Cluster\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestStartScreen(t *testing.T) {
	dir := profileDir(t)
	tm := launch(t, New(t.Context(), testOptions(dir)), 80, 24)
	waitFor(t, tm, "Create a new profile")
	golden.RequireEqual(t, strings.ReplaceAll(screen(t, tm, 80, 24), dir, "/work/lab"))
}

func TestProfileScreens(t *testing.T) {
	dir := profileDir(t)
	opts := testOptions(dir)
	opts.ProfilePath = filepath.Join(dir, "cluster.yaml")
	t.Run("open", func(t *testing.T) {
		tm := launch(t, New(t.Context(), opts), 80, 24)
		waitFor(t, tm, "server-1", "valid")
		golden.RequireEqual(t, screen(t, tm, 80, 24))
	})
	t.Run("error as you type", func(t *testing.T) {
		tm := launch(t, New(t.Context(), opts), 80, 24)
		waitFor(t, tm, "server-1")
		// name: append "_2", which is not a DNS label
		keys(tm, tea.KeyEnter, "_2")
		waitFor(t, tm, "expected a DNS label")
		golden.RequireEqual(t, screen(t, tm, 80, 24))
	})
	t.Run("node editor", func(t *testing.T) {
		tm := launch(t, New(t.Context(), opts), 80, 24)
		waitFor(t, tm, "server-1")
		// down to agent-1 (name, user, key, agent, known hosts, port,
		// bastion, server-1, agent-1), open it, clear its address.
		keys(tm, "jjjjjjjj", tea.KeyEnter, 'j', tea.KeyEnter, tea.KeyPressMsg{Code: 'u', Mod: tea.ModCtrl})
		waitFor(t, tm, "Node 2 of 2", "required: an IP address")
		golden.RequireEqual(t, screen(t, tm, 80, 24))
	})
}

// TestSaveKeepsCommentsAndRoundTrips: editing an existing profile and
// saving changes only the edited values; comments and order stay, and the
// saved file loads to exactly what the editor showed.
func TestSaveKeepsCommentsAndRoundTrips(t *testing.T) {
	dir := profileDir(t)
	opts := testOptions(dir)
	opts.ProfilePath = filepath.Join(dir, "cluster.yaml")
	m := New(t.Context(), opts)
	tm := launch(t, m, 80, 24)
	waitFor(t, tm, "server-1")
	// user: ops -> admin; remove server-1's neighbour agent-1; add a node.
	keys(tm, 'j', tea.KeyEnter, tea.KeyPressMsg{Code: 'u', Mod: tea.ModCtrl}, "admin", tea.KeyEnter,
		"jjjjjjj", 'd', 'y',
		'a', "192.0.2.31", tea.KeyEnter, tea.KeyEsc, // a new agent node
		's')
	waitFor(t, tm, "saved cluster.yaml")
	screen(t, tm, 80, 24)
	saved, err := os.ReadFile(opts.ProfilePath)
	if err != nil {
		t.Fatal(err)
	}
	golden.RequireEqual(t, saved)
	checkLoads(t, opts.ProfilePath, m)
}

// checkLoads: the saved file passes the loader and reads back as the
// editor's values.
func checkLoads(t *testing.T, path string, m *Model) {
	t.Helper()
	if _, err := prof.Load(path, prof.ValidateOptions{}); err != nil {
		t.Fatalf("the saved profile does not load: %v", err)
	}
	raw, _ := os.ReadFile(path)
	back, err := prof.Written(raw)
	if err != nil {
		t.Fatal(err)
	}
	edited := profilePage(t, m).Cluster()
	if !reflect.DeepEqual(back, edited) {
		t.Errorf("the saved profile reads back as\n%+v\nthe editor had\n%+v", back.Spec, edited.Spec)
	}
	again, err := prof.Update(raw, back)
	if err != nil || !bytes.Equal(again, raw) {
		t.Errorf("writing the loaded values again changes the file (%v)", err)
	}
}

// TestCreateProfile: a new profile typed from the start page is written as
// a person would write it, and loads.
func TestCreateProfile(t *testing.T) {
	dir := profileDir(t)
	m := New(t.Context(), testOptions(dir))
	tm := launch(t, m, 80, 24)
	waitFor(t, tm, "Create a new profile")
	clear := tea.KeyPressMsg{Code: 'u', Mod: tea.ModCtrl}
	keys(tm, 'n', clear, "lab.yaml", tea.KeyEnter)
	waitFor(t, tm, "lab.yaml (modified)")
	keys(tm,
		tea.KeyEnter, clear, "lab", tea.KeyEnter, // name
		'j', tea.KeyEnter, clear, "admin", tea.KeyEnter, // user
		'j', tea.KeyEnter, clear, "id_test", tea.KeyEnter, // key file
		'a', "192.0.2.11", tea.KeyEnter, 'k', tea.KeyEnter, clear, "server-1", tea.KeyEnter, tea.KeyEsc,
		'a', "192.0.2.21", tea.KeyEnter, 'k', tea.KeyEnter, clear, "agent-1", tea.KeyEnter,
		"jjjj", tea.KeyEnter, "/dev/vdb", tea.KeyEnter, tea.KeyEsc,
	)
	// From "+ add a node": TPM identity to insecure-skip, mesh off.
	keys(tm, 'j', ' ', "jjj", ' ', 's')
	waitFor(t, tm, "saved lab.yaml")
	golden.RequireEqual(t, screen(t, tm, 80, 24))
	path := filepath.Join(dir, "lab.yaml")
	saved, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("file", func(t *testing.T) { golden.RequireEqual(t, saved) })
	checkLoads(t, path, m)
}

// plans is a plan with every kind of change the plan page singles out.
func plans() []engine.Plan {
	return []engine.Plan{
		{Phase: "preflight", Changes: []engine.Change{
			{Node: "server-1", Action: "trust-host-key", Target: "SHA256:Vb3p7l5Xq6mX0m3ZkK2vJ8r1nQ9gS4tY7uW2eR5yT0c", Summary: "trust new host key ssh-ed25519 SHA256:Vb3p7l5Xq6mX0m3ZkK2vJ8r1nQ9gS4tY7uW2eR5yT0c of server-1 (10.77.0.2:22), and record it"},
			{Node: "server-1", Action: "install-agent", Target: "/var/lib/castellan/bin/castellan-5d41402abc4b2a76", Summary: "install the castellan agent (11.2 MiB) at /var/lib/castellan/bin/castellan-5d41402abc4b2a76, then gather and check facts"},
			{Node: "agent-1", Action: "install-agent", Target: "/var/lib/castellan/bin/castellan-5d41402abc4b2a76", Summary: "install the castellan agent (11.2 MiB) at /var/lib/castellan/bin/castellan-5d41402abc4b2a76, then gather and check facts"},
		}},
		{Phase: "diskcrypt", Changes: []engine.Change{
			{Node: "agent-1", Action: "format-luks2", Target: "/dev/vdb", Summary: "encrypt /dev/vdb with LUKS2 bound to the TPM (PCR 7), mount at /var/lib/castellan/data/vdb", Detail: "/dev/vdb holds: ext4 filesystem \"scratch\", 10.0 GiB, 2.1 GiB used (allowFormat: true)"},
		}, Notes: []string{"server-1 has no data disks"}},
		{Phase: "mesh"},
	}
}

func planPage(t *testing.T, m *Model) *plan.Page {
	t.Helper()
	p := plan.New(m.common, []string{"preflight", "diskcrypt", "mesh"}, []string{"server-1", "agent-1"}, "")
	m.stack = append(m.stack, m.page)
	m.page, m.runPage = p, p
	return p
}

func TestPlanScreens(t *testing.T) {
	t.Run("planned", func(t *testing.T) {
		m := New(t.Context(), testOptions(t.TempDir()))
		planPage(t, m)
		tm := launch(t, m, 80, 24)
		tm.Send(prepared(plans(), nil))
		waitFor(t, tm, "host key(s) to trust")
		golden.RequireEqual(t, screen(t, tm, 80, 24))
	})
	t.Run("asks before applying", func(t *testing.T) {
		m := New(t.Context(), testOptions(t.TempDir()))
		planPage(t, m)
		tm := launch(t, m, 80, 24)
		tm.Send(prepared(plans(), nil))
		keys(tm, 'a')
		waitFor(t, tm, "Apply these 4 change(s) now?")
		golden.RequireEqual(t, screen(t, tm, 80, 24))
	})
	t.Run("planning", func(t *testing.T) {
		m := New(t.Context(), testOptions(t.TempDir()))
		planPage(t, m)
		tm := launch(t, m, 80, 24)
		tm.Send(eventsMsg(planningEvents()))
		waitFor(t, tm, "facts")
		golden.RequireEqual(t, screen(t, tm, 80, 24))
	})
	t.Run("failed plan comes first", func(t *testing.T) {
		m := New(t.Context(), testOptions(t.TempDir()))
		planPage(t, m)
		tm := launch(t, m, 80, 24)
		evs := append(planningEvents(), ev(engine.Event{Kind: engine.KindStep, Phase: "preflight", Node: "agent-1", Step: "facts", Status: engine.StatusFailed,
			Message: "preflight: the node has 1 CPU, RKE2 needs 2; 900 MiB of memory, an agent needs 2 GiB"}))
		tm.Send(eventsMsg(evs))
		tm.Send(prepared(plans()[:1], errors.Join(&engine.PlanError{Phase: "preflight", Err: errors.New("failed on 1 node(s): agent-1")})))
		tm.Send(runDone(7, engine.OutcomeFailed, nil))
		waitFor(t, tm, "recorded as run 7")
		golden.RequireEqual(t, screen(t, tm, 80, 24))
	})
}

func prepared(p []engine.Plan, err error) tea.Msg {
	return preparedMsg(p, err)
}

var seq uint64

// ev stamps an event as the engine does.
func ev(e engine.Event) engine.Event {
	seq++
	e.Seq, e.Time, e.Run = seq, t0.Add(time.Duration(seq)*100*time.Millisecond), "1"
	return e
}

func planningEvents() []engine.Event {
	seq = 0
	return []engine.Event{
		ev(engine.Event{Kind: engine.KindRun, Status: engine.StatusStarted, Message: "planning 3 phase(s) on 2 node(s)"}),
		ev(engine.Event{Kind: engine.KindStep, Node: "server-1", Step: "observe", Status: engine.StatusStarted}),
		ev(engine.Event{Kind: engine.KindStep, Node: "agent-1", Step: "observe", Status: engine.StatusStarted}),
		ev(engine.Event{Kind: engine.KindStep, Node: "server-1", Step: "observe", Status: engine.StatusDone, Elapsed: 310 * time.Millisecond}),
		ev(engine.Event{Kind: engine.KindStep, Node: "agent-1", Step: "observe", Status: engine.StatusDone, Elapsed: 350 * time.Millisecond}),
		ev(engine.Event{Kind: engine.KindStep, Phase: "preflight", Node: "server-1", Step: "facts", Status: engine.StatusStarted}),
		ev(engine.Event{Kind: engine.KindStep, Phase: "preflight", Node: "agent-1", Step: "facts", Status: engine.StatusStarted}),
		ev(engine.Event{Kind: engine.KindStep, Phase: "preflight", Node: "server-1", Step: "facts", Status: engine.StatusDone, Elapsed: 20 * time.Millisecond}),
	}
}

func runDone(n int, o engine.Outcome, err error) tea.Msg {
	rec := &state.Record{Number: n, Command: "apply", Outcome: o, Duration: 9300 * time.Millisecond, Nodes: []string{"server-1", "agent-1"},
		TrustedHostKeys: []string{"server-1 (10.77.0.2:22) ssh-ed25519 SHA256:Vb3p7l5Xq6mX0m3ZkK2vJ8r1nQ9gS4tY7uW2eR5yT0c"}}
	return runDoneMsg(&installer.Result{Record: rec, Commit: "4f2a9c1d0b3e", StateDir: "/work/lab/state"}, err)
}

func progressPage(t *testing.T, m *Model) *progress.Page {
	t.Helper()
	p := progress.New(m.common, "apply", []string{"preflight", "diskcrypt", "mesh"}, []string{"server-1", "agent-1", "agent-2"})
	m.stack = append(m.stack, m.page)
	m.page, m.runPage = p, p
	return p
}

// runEvents is an apply in the middle of uploading the agent.
func runEvents() []engine.Event {
	seq = 0
	evs := []engine.Event{
		ev(engine.Event{Kind: engine.KindRun, Status: engine.StatusStarted, Message: "3 phase(s) on 3 node(s)"}),
	}
	for _, n := range []string{"server-1", "agent-1", "agent-2"} {
		evs = append(evs, ev(engine.Event{Kind: engine.KindStep, Node: n, Step: "observe", Status: engine.StatusDone, Elapsed: 300 * time.Millisecond}))
	}
	evs = append(evs,
		ev(engine.Event{Kind: engine.KindPhase, Phase: "preflight", Status: engine.StatusStarted}),
		ev(engine.Event{Kind: engine.KindChange, Phase: "preflight", Node: "server-1", Step: "apply", Status: engine.StatusPlanned, Message: "install the castellan agent (11.2 MiB)"}),
		ev(engine.Event{Kind: engine.KindStep, Phase: "preflight", Node: "server-1", Step: "agent", Status: engine.StatusStarted}),
		ev(engine.Event{Kind: engine.KindStep, Phase: "preflight", Node: "agent-1", Step: "agent", Status: engine.StatusStarted}),
		ev(engine.Event{Kind: engine.KindProgress, Phase: "preflight", Node: "server-1", Step: "upload agent", Status: engine.StatusProgress, Done: 11744051, Total: 11744051}),
		ev(engine.Event{Kind: engine.KindMessage, Phase: "preflight", Node: "server-1", Status: engine.StatusInfo, Message: "Debian GNU/Linux 12 (bookworm), kernel 6.1.0-28-amd64, amd64, 2 CPU, 3.8 GiB RAM, TPM 2.0, 2 disk(s)"}),
		ev(engine.Event{Kind: engine.KindStep, Phase: "preflight", Node: "server-1", Step: "agent", Status: engine.StatusDone, Elapsed: 2100 * time.Millisecond}),
		ev(engine.Event{Kind: engine.KindProgress, Phase: "preflight", Node: "agent-1", Step: "upload agent", Status: engine.StatusProgress, Done: 5 << 20, Total: 11744051}),
	)
	return evs
}

func TestProgressScreens(t *testing.T) {
	t.Run("running", func(t *testing.T) {
		m := New(t.Context(), testOptions(t.TempDir()))
		progressPage(t, m)
		tm := launch(t, m, 80, 24)
		tm.Send(eventsMsg(runEvents()))
		waitFor(t, tm, "upload agent", "5.0 MiB")
		golden.RequireEqual(t, screen(t, tm, 80, 24))
	})
	t.Run("ctrl-c asks, then stops", func(t *testing.T) {
		m := New(t.Context(), testOptions(t.TempDir()))
		progressPage(t, m)
		stopped := make(chan struct{})
		m.stop = func() { close(stopped) }
		tm := launch(t, m, 80, 24)
		tm.Send(eventsMsg(runEvents()))
		keys(tm, tea.KeyPressMsg{Code: 'c', Mod: tea.ModCtrl})
		waitFor(t, tm, "Stop the run after the steps running now?")
		select {
		case <-stopped:
			t.Fatal("the first Ctrl-C stopped the run without asking")
		default:
		}
		keys(tm, 'y')
		waitFor(t, tm, "stopping between steps")
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			t.Fatal("yes did not stop the run")
		}
		golden.RequireEqual(t, screen(t, tm, 80, 24))
	})
	t.Run("failure first", func(t *testing.T) {
		m := New(t.Context(), testOptions(t.TempDir()))
		progressPage(t, m)
		tm := launch(t, m, 80, 24)
		evs := append(runEvents(),
			ev(engine.Event{Kind: engine.KindStep, Phase: "preflight", Node: "agent-1", Step: "agent", Status: engine.StatusFailed,
				Message: "uploading the agent to agent-1: sftp: write /var/lib/castellan/bin/.castellan-5d41402abc4b2a76.tmp: no space left on device (2.1 MiB free, 11.2 MiB needed): free space on / and rerun"}),
			ev(engine.Event{Kind: engine.KindPhase, Phase: "preflight", Status: engine.StatusFailed, Message: "failed on 1 node(s): agent-1", Ref: 12}),
			ev(engine.Event{Kind: engine.KindRun, Status: engine.StatusFailed, Message: "phase preflight failed (reported above)", Ref: 12, Elapsed: 9300 * time.Millisecond}),
		)
		tm.Send(eventsMsg(evs))
		tm.Send(runDone(3, engine.OutcomeFailed, &installer.RunError{Run: 3, Outcome: "failed"}))
		waitFor(t, tm, "FAILED")
		golden.RequireEqual(t, screen(t, tm, 80, 24))
	})
}

func historyEntries() []state.Entry {
	mk := func(n int, cmd string, rb int, o engine.Outcome, phase engine.Outcome, took time.Duration) state.Entry {
		var h [20]byte
		h[0], h[19] = byte(n), 0xab
		return state.Entry{Hash: h, Record: &state.Record{Number: n, Command: cmd, RollbackOf: rb, Outcome: o, Who: "ops", Host: "jump", Version: "v0.4.0",
			Started: t0.Add(time.Duration(n) * time.Hour), Duration: took, Nodes: []string{"server-1", "agent-1"},
			Phases: []engine.PhaseResult{{Name: "preflight", Outcome: phase}}}}
	}
	e3 := mk(3, "apply", 0, engine.OutcomeFailed, engine.OutcomeFailed, 4*time.Second)
	e3.Record.Error = "phase preflight: failed on 1 node(s): agent-1"
	return []state.Entry{
		mk(4, "rollback", 2, engine.OutcomeUnchanged, engine.OutcomeUnchanged, 1200*time.Millisecond),
		e3,
		mk(2, "apply", 0, engine.OutcomeUnchanged, engine.OutcomeUnchanged, 900*time.Millisecond),
		mk(1, "apply", 0, engine.OutcomeOK, engine.OutcomeOK, 9300*time.Millisecond),
	}
}

func TestHistoryScreens(t *testing.T) {
	setup := func(t *testing.T) (*Model, *teatest.TestModel) {
		m := New(t.Context(), testOptions(t.TempDir()))
		p := history.New(m.common, "/work/lab/cluster.yaml")
		m.stack, m.page = append(m.stack, m.page), p
		tm := launch(t, m, 80, 24)
		tm.Send(historyLoaded(historyEntries()))
		waitFor(t, tm, "rollback")
		return m, tm
	}
	t.Run("runs", func(t *testing.T) {
		_, tm := setup(t)
		keys(tm, 'j')
		waitFor(t, tm, "error: phase preflight")
		golden.RequireEqual(t, screen(t, tm, 80, 24))
	})
	t.Run("diff against now", func(t *testing.T) {
		_, tm := setup(t)
		keys(tm, 'j', 'j', 'j')
		tm.Send(diffLoaded(1, "--- a/profile.yaml (run 1)\n+++ b/profile.yaml (now)\n@@ -5,3 +5,3 @@\n   ssh:\n-    user: vagrant\n+    user: ops\n     keyFile: id_test\n"))
		waitFor(t, tm, "user: ops")
		golden.RequireEqual(t, screen(t, tm, 80, 24))
	})
	t.Run("rollback asks", func(t *testing.T) {
		_, tm := setup(t)
		keys(tm, 'j', 'j', 'j', 'r')
		waitFor(t, tm, "Roll back to run 1?")
		golden.RequireEqual(t, screen(t, tm, 80, 24))
	})
}

// TestResize: every page fills any size exactly, and never overflows it.
func TestResize(t *testing.T) {
	dir := profileDir(t)
	opts := testOptions(dir)
	opts.ProfilePath = filepath.Join(dir, "cluster.yaml")
	m := New(t.Context(), opts)
	tm := launch(t, m, 80, 24)
	waitFor(t, tm, "server-1")
	for _, size := range [][2]int{{60, 16}, {132, 40}, {80, 24}, {40, 12}} {
		tm.Send(tea.WindowSizeMsg{Width: size[0], Height: size[1]})
	}
	tm.Send(tea.WindowSizeMsg{Width: 100, Height: 30})
	screen(t, tm, 100, 30)
	for _, size := range [][2]int{{60, 16}, {132, 40}, {80, 24}, {40, 12}} {
		for _, page := range []func(*testing.T, *Model){
			func(t *testing.T, m *Model) { planPage(t, m).Update(prepared(plans(), nil)) },
			func(t *testing.T, m *Model) { progressPage(t, m).Update(eventsMsg(runEvents())) },
		} {
			m := New(context.Background(), testOptions(t.TempDir()))
			page(t, m)
			m.Update(tea.WindowSizeMsg{Width: size[0], Height: size[1]})
			lines := strings.Split(ansi.Strip(m.View().Content), "\n")
			if len(lines) != size[1] {
				t.Errorf("%dx%d: %d lines", size[0], size[1], len(lines))
			}
			for _, l := range lines {
				if ansi.StringWidth(l) > size[0] {
					t.Errorf("%dx%d: a line of %d cells: %q", size[0], size[1], ansi.StringWidth(l), l)
				}
			}
		}
	}
}

// TestNoColor: with NO_COLOR the terminal gets no colour at all (bold and
// reverse stay); without it, it does.
func TestNoColor(t *testing.T) {
	run := func(env ...string) string {
		dir := profileDir(t)
		opts := testOptions(dir)
		opts.ProfilePath = filepath.Join(dir, "cluster.yaml")
		m := New(t.Context(), opts)
		tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(80, 24),
			teatest.WithProgramOptions(tea.WithEnvironment(append([]string{"TERM=xterm-256color", "TTY_FORCE=1"}, env...))))
		var out string
		teatest.WaitFor(t, tm.Output(), func(b []byte) bool {
			out = string(b)
			return strings.Contains(ansi.Strip(out), "valid")
		}, teatest.WithDuration(10*time.Second))
		_ = tm.Quit()
		return out
	}
	colour := func(s string) bool {
		for _, sgr := range []string{"[31m", "[32m", "[34m", "[35m", ";31m", ";32m", ";34m", ";35m", "38;5;", "38;2;"} {
			if strings.Contains(s, sgr) {
				return true
			}
		}
		return false
	}
	if out := run(); !colour(out) {
		t.Fatalf("no colour even without NO_COLOR: the test cannot tell\n%q", out[:min(len(out), 3000)])
	}
	out := run("NO_COLOR=1")
	if colour(out) {
		t.Errorf("NO_COLOR=1, yet the output has colours")
	}
	if !strings.Contains(out, "[1m") && !strings.Contains(out, ";1m") && !strings.Contains(out, "[7m") {
		t.Errorf("NO_COLOR=1 dropped bold and reverse too")
	}
}

func preparedMsg(p []engine.Plan, err error) tea.Msg {
	return common.PreparedMsg{Plans: p, PlanErr: err}
}

func eventsMsg(evs []engine.Event) tea.Msg { return common.EventsMsg{Events: evs} }

func runDoneMsg(res *installer.Result, err error) tea.Msg {
	return common.RunDoneMsg{Result: res, Err: err}
}

func historyLoaded(es []state.Entry) tea.Msg { return common.HistoryLoadedMsg{Entries: es} }

func diffLoaded(run int, d string) tea.Msg { return common.DiffLoadedMsg{Run: run, Diff: d} }

func profilePage(t *testing.T, m *Model) *profilepage.Page {
	t.Helper()
	if p, ok := m.page.(*profilepage.Page); ok {
		return p
	}
	for _, p := range m.stack {
		if p, ok := p.(*profilepage.Page); ok {
			return p
		}
	}
	t.Fatal("no profile page")
	return nil
}
