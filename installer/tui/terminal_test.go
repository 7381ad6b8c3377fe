package tui_test

import (
	"bytes"
	"castellan/installer/testenv"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"castellan/installer/agent"
	"castellan/installer/engine"
	prof "castellan/installer/profile"
	"castellan/installer/ssh/sshtest"
	"castellan/installer/state"
	"castellan/installer/tui/internal/termshot"

	"golang.org/x/crypto/ssh"
)

// The real-terminal test: the real castellan binary in a tmux pane of
// 80x24, inside the client network namespace of real sshd nodes
// (sshtest), driven only by keys (send-keys) and read only from the screen
// (capture-pane): create a profile for the nodes, view the plan, run the
// apply to completion, open the history. With CASTELLAN_TUI_SCREENSHOTS=DIR
// it also writes each screen there as text and PNG (the README's
// screenshots: make tui-screenshots).

// repoRoot is the module's top directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// requireTmux installs tmux through the project's script when it is
// missing; when it cannot be had, the test fails under CI=true (or
// CASTELLAN_REQUIRE_REAL_PEERS=1) and is skipped otherwise.
func requireTmux(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("tmux"); err == nil {
		return p
	}
	out, err := exec.Command(filepath.Join(repoRoot(t), "vagrant", "scripts", "ensure-packages.sh"), "tmux").CombinedOutput()
	if p, lerr := exec.LookPath("tmux"); lerr == nil {
		return p
	}
	msg := fmt.Sprintf("tmux is missing and could not be installed (vagrant/scripts/ensure-packages.sh tmux: %v)\n%s", err, out)
	testenv.Missing(t, "%s", msg)
	return ""
}

// pane is a tmux session of its own (its own server socket) running one
// command.
type pane struct {
	t      *testing.T
	tmux   string
	socket string
	shots  string
}

func (p *pane) run(args ...string) string {
	p.t.Helper()
	out, err := exec.Command(p.tmux, append([]string{"-L", p.socket}, args...)...).CombinedOutput()
	if err != nil {
		p.t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// keys sends keys as tmux names them (Enter, Escape, C-u, Space) or
// literal text (prefixed with "=").
func (p *pane) keys(keys ...string) {
	p.t.Helper()
	for _, k := range keys {
		if text, ok := strings.CutPrefix(k, "="); ok {
			p.run("send-keys", "-t", "tui", "-l", text)
		} else {
			p.run("send-keys", "-t", "tui", k)
		}
		// A person's pace: each key is read alone. After Escape, longer: a
		// key that follows a lone ESC at once reads as Alt+key.
		pause := 40 * time.Millisecond
		if k == "Escape" {
			pause = 400 * time.Millisecond
		}
		time.Sleep(pause)
	}
}

func (p *pane) capture(escapes bool) string {
	args := []string{"capture-pane", "-p", "-t", "tui"}
	if escapes {
		args = append(args, "-e")
	}
	return p.run(args...)
}

// waitFor waits until the screen shows every one of the words.
func (p *pane) waitFor(timeout time.Duration, words ...string) string {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		screen := p.capture(false)
		missing := ""
		for _, w := range words {
			if !strings.Contains(screen, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return screen
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("after %s the screen lacks %q:\n%s", timeout, missing, screen)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// shot writes the screen as name.txt and name.png when screenshots are
// asked for.
func (p *pane) shot(name string, mask func(string) string) {
	p.t.Helper()
	if p.shots == "" {
		return
	}
	text := mask(strings.TrimRight(p.capture(false), "\n") + "\n")
	if err := os.WriteFile(filepath.Join(p.shots, name+".txt"), []byte(text), 0o644); err != nil {
		p.t.Fatal(err)
	}
	png, err := termshot.Render([]byte(mask(p.capture(true))), 80, 24)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.shots, name+".png"), png, 0o644); err != nil {
		p.t.Fatal(err)
	}
}

func buildCastellan(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "castellan")
	cmd := exec.Command("go", "build", "-o", bin, "castellan/cmd/castellan")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// identityDir is where the identity phase keeps a node's identity
// (phases/identity.DefaultDir): each test node gets its own.
const identityDir = "/var/lib/castellan/identity"

func TestTerminal(t *testing.T) {
	sshtest.Require(t)
	tmux := requireTmux(t)
	bin := buildCastellan(t)
	lab := sshtest.New(t, sshtest.Options{Nodes: 2, PrivateDirs: []string{agent.BinDir, identityDir, "/run/systemd"}, CgroupV2: true})
	for _, n := range lab.Nodes {
		if err := os.MkdirAll(filepath.Join(n.PrivatePath("/run/systemd"), "system"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	shots := os.Getenv("CASTELLAN_TUI_SCREENSHOTS")
	if shots != "" {
		if err := os.MkdirAll(shots, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := &pane{t: t, tmux: tmux, socket: "castellan-tui-" + lab.ID, shots: shots}
	t.Cleanup(func() { _ = exec.Command(tmux, "-L", p.socket, "kill-server").Run() })
	ageIdentity := filepath.Join(dir, "age-identity.txt")
	// The pane's command: castellan in the nodes' client namespace; when it
	// ends, its exit code stays on the screen.
	script := fmt.Sprintf("cd %s && ip netns exec %s %s --accept-new-host-keys; echo castellan exited $?; sleep 600", dir, lab.ClientNS, bin)
	p.run("new-session", "-d", "-s", "tui", "-x", "80", "-y", "24",
		"-e", "CASTELLAN_AGE_IDENTITY="+ageIdentity, "-e", "TERM=xterm-256color", "sh", "-c", script)
	p.run("set-option", "-t", "tui", "status", "off")
	// Masks for the screenshots: the test's temporary paths and the lab's
	// random names.
	mask := func(s string) string {
		s = strings.ReplaceAll(s, dir, "/home/ops/lab")
		s = strings.ReplaceAll(s, lab.KeyFile, "~/.ssh/id_ed25519")
		return s
	}

	p.waitFor(10*time.Second, "Create a new profile")
	p.shot("start", mask)

	// A new profile, typed.
	p.keys("n", "Enter")
	p.waitFor(5*time.Second, "cluster.yaml (modified)")
	p.keys("Enter", "C-u", "=lab", "Enter") // name
	p.keys("j", "Enter", "C-u", "="+lab.User, "Enter")
	p.keys("j", "Enter", "C-u", "="+lab.KeyFile, "Enter")
	for i, n := range lab.Nodes {
		name := "agent-1"
		if i == 0 {
			name = "server-1"
		}
		p.keys("a", "="+n.Address, "Enter", "j", "Enter", fmt.Sprintf("=%d", n.Port), "Enter")
		p.keys("k", "k", "Enter", "C-u", "="+name, "Enter", "Escape") // the first node is a server, the next agents
	}
	// TPM identity: insecure-skip (the test nodes have none); mesh off.
	p.keys("j", "Space", "j", "j", "j", "Space", "g")
	screen := p.waitFor(5*time.Second, "✓ valid", "server-1", "agent-1")
	if !strings.Contains(screen, lab.Nodes[0].Address) {
		t.Fatalf("the nodes table lacks %s:\n%s", lab.Nodes[0].Address, screen)
	}
	p.shot("profile", mask)

	// Save and plan: the agent to install on each node; host keys to trust
	// with their fingerprints, once the ssh package defers trusting them to
	// the confirmed run (until then it records them when it connects, and
	// the plan has none).
	p.keys("p")
	screen = p.waitFor(60*time.Second, "change(s) on 2 node(s)", "install the castellan agent")
	if strings.Contains(screen, "host key(s) to trust") {
		if fp := sshFingerprint(t, lab.Nodes[0]); !strings.Contains(screen, "trust host key "+fp) {
			t.Errorf("the plan does not show %s's host key %s:\n%s", lab.Nodes[0].Name, fp, screen)
		}
	}
	p.shot("plan", mask)
	saved := filepath.Join(dir, "cluster.yaml")
	if _, err := prof.Load(saved, prof.ValidateOptions{AcceptNewHostKeys: true}); err != nil {
		t.Fatalf("the profile the TUI saved does not load: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
		t.Fatal("planning created the state repo: nothing may be written before the confirmation")
	}

	// Apply: one more question, then the run to its end.
	p.keys("a")
	p.waitFor(5*time.Second, "Apply these")
	p.keys("y")
	p.waitFor(120*time.Second, "run 1 OK")
	p.shot("progress", mask)
	kh, err := os.ReadFile(filepath.Join(dir, "known_hosts"))
	if err != nil || bytes.Count(kh, []byte("\n")) < len(lab.Nodes) {
		t.Errorf("known_hosts after the run: %v\n%s", err, kh)
	}

	// History: the run, then its diff against now.
	p.keys("h")
	p.waitFor(10*time.Second, "RUN", "✓ ok", "preflight")
	p.shot("history", mask)
	p.keys("Enter")
	p.waitFor(10*time.Second, "No differences")
	p.keys("Escape", "q")
	p.waitFor(10*time.Second, "castellan exited 0")

	repo, err := state.Open(filepath.Join(dir, "state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := repo.History()
	if err != nil || len(entries) != 1 || entries[0].Record.Outcome != engine.OutcomeOK {
		t.Fatalf("state repo history: %v %+v", err, entries)
	}
}

// sshFingerprint is the SHA256 fingerprint of a node's ed25519 host key.
func sshFingerprint(t *testing.T, n *sshtest.Node) string {
	t.Helper()
	k, ok := n.HostKeys[sshtest.Ed25519]
	if !ok {
		t.Fatalf("%s has no ed25519 host key", n.Name)
	}
	return ssh.FingerprintSHA256(k)
}
