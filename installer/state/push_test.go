package state

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"golang.org/x/crypto/ssh"

	"castellan/installer/engine"
	"castellan/installer/ssh/sshtest"
	"castellan/installer/testenv"
)

// pushLab is a loopback sshd (go-git dials by itself: it cannot enter a
// network namespace) and helpers to look at bare repos as the lab user
// with the real git.
type pushLab struct {
	*sshtest.Lab
	node *sshtest.Node
	cred *syscall.Credential
}

func newPushLab(t *testing.T) *pushLab {
	t.Helper()
	sshtest.Require(t)
	for _, tool := range []string{"git", "git-receive-pack"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, "pushing over SSH needs %s on the PATH (apt-get install -y git): %v", tool, err)
		}
	}
	lab := sshtest.New(t, sshtest.Options{Nodes: 1, Loopback: true})
	u, err := user.Lookup(lab.User)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &pushLab{Lab: lab, node: lab.Nodes[0], cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
}

// git runs the real git as the lab user (who owns the bare repos: git
// refuses repos of other users), isolated from any git config.
func (l *pushLab) git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := l.gitErr(dir, args...)
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return out
}

func (l *pushLab) gitErr(dir string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_AUTHOR_NAME=someone", "GIT_AUTHOR_EMAIL=someone@example.org",
		"GIT_COMMITTER_NAME=someone", "GIT_COMMITTER_EMAIL=someone@example.org"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: l.cred}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// bare makes an empty bare repo owned by the lab user, as `git init --bare`
// on a server does (its HEAD names git's default branch, not main).
func (l *pushLab) bare(t *testing.T, name string) string {
	t.Helper()
	dir := l.UserDir(name)
	l.git(t, dir, "init", "--bare", "-q", ".")
	return dir
}

// url is the ssh:// URL of a repo on the node.
func (l *pushLab) url(repo string) string {
	return fmt.Sprintf("ssh://%s@127.0.0.1:%d%s", l.User, l.node.Port, repo)
}

// refs lists the refs of a repo as `git for-each-ref` prints them.
func (l *pushLab) refs(t *testing.T, repo string) string {
	t.Helper()
	return l.git(t, repo, "for-each-ref", "--format=%(refname) %(objectname)")
}

// knownHosts writes a known_hosts file with the given lines.
func knownHosts(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPushOverSSH(t *testing.T) {
	l := newPushLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	r := newRepo(t, filepath.Join(t.TempDir(), "state"), testKeys(t))
	commitRun(t, r, "v: 1\n", engine.OutcomeOK, map[string][]byte{"n1/mesh/wg.conf": []byte("peer a\n")}, "mesh")
	bare := l.bare(t, "state.git")
	// One key type only, as `ssh-keyscan -t ed25519` gives, while the
	// node's sshd offers all three: go-git must ask for the one it can
	// verify.
	rm := Remote{URL: l.url(bare), KeyFile: l.KeyFile, KnownHostsFile: knownHosts(t, l.node.KnownHostsLine(sshtest.Ed25519, false))}

	// First push creates main on the remote.
	if err := r.Push(ctx, rm); err != nil {
		t.Fatalf("first push: %v", err)
	}
	assertRemoteMain(t, l, r, bare)
	if log := l.git(t, bare, "log", "--format=%s", "main"); !strings.Contains(log, "run 1: apply") || !strings.Contains(log, "create the state repo") {
		t.Fatalf("remote log after the first push:\n%s", log)
	}
	l.git(t, bare, "fsck", "--strict")

	// A second run is a fast-forward.
	commitRun(t, r, "v: 2\n", engine.OutcomeOK, map[string][]byte{"n1/mesh/wg.conf": []byte("peer a\npeer b\n")}, "mesh")
	if err := r.Push(ctx, rm); err != nil {
		t.Fatalf("fast-forward push: %v", err)
	}
	assertRemoteMain(t, l, r, bare)
	if n := strings.Count(l.git(t, bare, "log", "--format=%s", "main"), "\n"); n != 3 {
		t.Fatalf("remote has %d commits, want 3", n)
	}
	// Nothing new: still fine, nothing changes.
	if err := r.Push(ctx, rm); err != nil {
		t.Fatalf("push with nothing new: %v", err)
	}
	assertRemoteMain(t, l, r, bare)

	// Other known_hosts forms of the right key work too: hashed, another
	// key type, all key types.
	for name, kh := range map[string]string{
		"hashed ecdsa": knownHosts(t, l.node.KnownHostsLine(sshtest.ECDSA, true)),
		"rsa":          knownHosts(t, l.node.KnownHostsLine(sshtest.RSA, false)),
		"all":          l.WriteKnownHosts(sshtest.KnownHostsOptions{}),
	} {
		rm2 := rm
		rm2.KnownHostsFile = kh
		if err := r.Push(ctx, rm2); err != nil {
			t.Errorf("push with known_hosts %s: %v", name, err)
		}
	}

	// Someone else pushes to the remote: it now has a commit this repo
	// lacks. Push refuses, and the remote keeps its history.
	clone := filepath.Join(l.UserDir("clone"), "work")
	l.git(t, filepath.Dir(clone), "clone", "-q", "-b", "main", bare, clone)
	if err := os.WriteFile(filepath.Join(clone, "NOTE"), []byte("by hand\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(clone, "NOTE"), int(l.cred.Uid), int(l.cred.Gid)); err != nil {
		t.Fatal(err)
	}
	l.git(t, clone, "add", "-f", "NOTE")
	l.git(t, clone, "commit", "-q", "-m", "edited by hand")
	l.git(t, clone, "push", "-q", "origin", "main")
	diverged := strings.TrimSpace(l.git(t, bare, "rev-parse", "main"))
	commitRun(t, r, "v: 3\n", engine.OutcomeOK, nil)
	err := r.Push(ctx, rm)
	if err == nil {
		t.Fatal("push over a diverged remote succeeded")
	}
	for _, want := range []string{"non-fast-forward", "castellan never overwrites history", rm.URL} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("non-fast-forward error lacks %q: %v", want, err)
		}
	}
	if got := strings.TrimSpace(l.git(t, bare, "rev-parse", "main")); got != diverged {
		t.Fatalf("remote main moved from %s to %s", diverged, got)
	}
	if log := l.git(t, bare, "log", "--format=%s", "main"); strings.Contains(log, "run 3") || !strings.Contains(log, "edited by hand") {
		t.Fatalf("remote history changed:\n%s", log)
	}
	l.git(t, bare, "fsck", "--strict")
}

// assertRemoteMain checks that the remote's main is the repo's HEAD.
func assertRemoteMain(t *testing.T, l *pushLab, r *Repo, bare string) {
	t.Helper()
	head, err := r.Head()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(l.git(t, bare, "rev-parse", "refs/heads/main")); got != head.String() {
		t.Fatalf("remote main = %s, want %s", got, head)
	}
}

// TestPushHostKeyChecked: a known_hosts with another key for the remote, or
// without the remote, or missing, stops the push before anything is sent.
func TestPushHostKeyChecked(t *testing.T) {
	l := newPushLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := newRepo(t, filepath.Join(t.TempDir(), "state"), testKeys(t))
	commitRun(t, r, "v: 1\n", engine.OutcomeOK, nil)
	bare := l.bare(t, "state.git")

	k, err := sshtest.GenerateKey(sshtest.Ed25519, 0)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ssh.NewPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	host := fmt.Sprintf("[127.0.0.1]:%d", l.node.Port)
	wrong := host + " " + other.Type() + " " + base64.StdEncoding.EncodeToString(other.Marshal())
	otherHost := strings.Replace(l.node.KnownHostsLine(sshtest.Ed25519, false), host, "[127.0.0.1]:1", 1)

	for _, tc := range []struct {
		name, knownHosts string
		want             []string
	}{
		{"changed key", knownHosts(t, wrong), []string{"host key", "does not match", host}},
		{"changed key among others", knownHosts(t, wrong, l.node.KnownHostsLine(sshtest.RSA, false)), []string{"host key", "does not match"}},
		{"unknown host", knownHosts(t, otherHost), []string{"host key", "not in", host}},
		{"missing file", filepath.Join(t.TempDir(), "nope"), []string{"known_hosts"}},
		{"no file", "", []string{"known_hosts file for the remote is required"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := r.Push(ctx, Remote{URL: l.url(bare), KeyFile: l.KeyFile, KnownHostsFile: tc.knownHosts})
			if err == nil {
				t.Fatal("push succeeded")
			}
			t.Logf("error: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if refs := l.refs(t, bare); refs != "" {
				t.Fatalf("the remote got refs:\n%s", refs)
			}
		})
	}
}

// TestPushHonoursContext: a remote that accepts TCP but never speaks SSH
// (a wedged sshd) does not hold Push past its context.
func TestPushHonoursContext(t *testing.T) {
	l := newPushLab(t)
	r := newRepo(t, filepath.Join(t.TempDir(), "state"), testKeys(t))
	commitRun(t, r, "v: 1\n", engine.OutcomeOK, nil)
	bare := l.bare(t, "state.git")
	rm := Remote{URL: l.url(bare), KeyFile: l.KeyFile, KnownHostsFile: l.WriteKnownHosts(sshtest.KnownHostsOptions{})}

	resume, err := l.node.PauseListener()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	err = r.Push(ctx, rm)
	elapsed := time.Since(start)
	if err := resume(); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), rm.URL) {
		t.Fatalf("push to a wedged remote: %v, want the deadline with the remote's URL", err)
	}
	// A hang detector, not a speed target: a Push that ignored its context
	// would wait on the wedged remote until the test binary's timeout.
	if elapsed > time.Minute {
		t.Fatalf("push returned %s after its deadline: it waited on the wedged remote instead of its context", elapsed-2*time.Second)
	}
	t.Logf("push returned %s after its deadline", (elapsed - 2*time.Second).Round(time.Millisecond))
	if refs := l.refs(t, bare); refs != "" {
		t.Fatalf("the remote got refs:\n%s", refs)
	}
	// Once the remote answers again, a push goes through.
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	if err := r.Push(ctx2, rm); err != nil {
		t.Fatalf("push after the remote came back: %v", err)
	}
	assertRemoteMain(t, l, r, bare)
}

// stubSSHConfig stands in for ~/.ssh/config.
type stubSSHConfig map[string]map[string]string

func (c stubSSHConfig) Get(alias, key string) string { return c[alias][key] }

// TestPushThroughSSHConfigAlias: with a host alias from ~/.ssh/config (as
// many git remotes are written), the key of the real host is checked, and
// asked for by type.
func TestPushThroughSSHConfigAlias(t *testing.T) {
	l := newPushLab(t)
	orig := gitssh.DefaultSSHConfig
	gitssh.DefaultSSHConfig = stubSSHConfig{"state-remote": {"Hostname": "127.0.0.1", "Port": strconv.Itoa(l.node.Port)}}
	t.Cleanup(func() { gitssh.DefaultSSHConfig = orig })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := newRepo(t, filepath.Join(t.TempDir(), "state"), testKeys(t))
	commitRun(t, r, "v: 1\n", engine.OutcomeOK, nil)
	bare := l.bare(t, "state.git")
	rm := Remote{URL: l.User + "@state-remote:" + bare, KeyFile: l.KeyFile, KnownHostsFile: knownHosts(t, l.node.KnownHostsLine(sshtest.Ed25519, false))}
	if err := r.Push(ctx, rm); err != nil {
		t.Fatal(err)
	}
	assertRemoteMain(t, l, r, bare)
}
