package state

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/object"

	"castellan/installer/engine"
)

func testKeys(t *testing.T) *Keys {
	t.Helper()
	k, err := LoadKeys(nil, filepath.Join(t.TempDir(), "identity.txt"), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Notices) != 1 || !strings.Contains(k.Notices[0], "created a local age identity") {
		t.Fatalf("notices = %v", k.Notices)
	}
	return k
}

func commitRun(t *testing.T, r *Repo, profile string, outcome engine.Outcome, rendered map[string][]byte, phases ...string) *Record {
	return commitRunOn(t, r, []string{"n1"}, profile, outcome, rendered, phases...)
}

func commitRunOn(t *testing.T, r *Repo, nodes []string, profile string, outcome engine.Outcome, rendered map[string][]byte, phases ...string) *Record {
	t.Helper()
	n, err := r.NextRunNumber()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 23, 12, 0, n, 0, time.UTC)
	rec := &Record{Number: n, Command: "apply", Who: "tester", Version: "test", Started: now, Finished: now.Add(time.Second),
		Nodes: nodes, Outcome: outcome}
	for _, p := range phases {
		rec.Phases = append(rec.Phases, engine.PhaseResult{Name: p, Outcome: engine.OutcomeOK})
	}
	if _, err := r.Commit(Snapshot{Record: rec, Profile: []byte(profile), Rendered: rendered, Nodes: nodes}); err != nil {
		t.Fatal(err)
	}
	return rec
}

// gitCLI runs the real git on the repo: what castellan writes must be a
// repository that plain git reads.
func gitCLI(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := exec.Command("git", append([]string{"-C", dir}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func TestCommitHistoryDiff(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	r := newRepo(t, dir, testKeys(t))
	commitRun(t, r, "v: 1\n", engine.OutcomeOK, map[string][]byte{
		"n1/mesh/wg.conf":    []byte("peer a\n"),
		"n1/rke2/config.yml": []byte("x: 1\n"),
	}, "mesh", "rke2")
	commitRun(t, r, "v: 2\n", engine.OutcomeFailed, map[string][]byte{"n1/mesh/wg.conf": []byte("peer a\npeer b\n")}, "mesh")

	hist, err := r.History()
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 2 || hist[0].Record.Number != 2 || hist[1].Record.Number != 1 {
		t.Fatalf("history = %+v", hist)
	}
	if !hist[0].Record.Failed() || !strings.Contains(hist[0].Subject, "run 2: apply failed") {
		t.Errorf("failed run not recorded as failed: %q", hist[0].Subject)
	}
	// Only the re-run phase's files were replaced; rke2's stay.
	if data, err := r.FileAt("2", "rendered/n1/rke2/config.yml"); err != nil || string(data) != "x: 1\n" {
		t.Errorf("rke2 file at run 2 = %q, %v", data, err)
	}
	diff, err := r.Diff("1", "2")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"-v: 1", "+v: 2", "+peer b", "rendered/n1/mesh/wg.conf"} {
		if !strings.Contains(diff, want) {
			t.Errorf("diff lacks %q:\n%s", want, diff)
		}
	}
	if strings.Contains(diff, "runs/") {
		t.Errorf("diff shows run records:\n%s", diff)
	}
	// Revisions by hash and by git syntax resolve too.
	c, err := r.Resolve("HEAD~1")
	if err != nil || RunOf(c) != 1 {
		t.Errorf("Resolve(HEAD~1) = run %d, %v", RunOf(c), err)
	}
	if _, err := r.Resolve("7"); !errors.Is(err, ErrUnknownRevision) {
		t.Errorf("Resolve(7) err = %v", err)
	}
	// The real git agrees.
	gitCLI(t, dir, "fsck", "--strict")
	if log := gitCLI(t, dir, "log", "--format=%s"); !strings.Contains(log, "run 2: apply failed") || !strings.Contains(log, "create the state repo") {
		t.Errorf("git log:\n%s", log)
	}
	if tr := gitCLI(t, dir, "log", "-1", "--format=%(trailers:key=Castellan-Run,valueonly)"); strings.TrimSpace(tr) != "2" {
		t.Errorf("trailer = %q", tr)
	}
}

func TestSecretsNeverInPlaintext(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	keys := testKeys(t)
	r := newRepo(t, dir, keys)
	secrets := map[string]string{
		"rke2/token":              "K10-super-secret-token-5f1e2d",
		"diskcrypt/n1/vdb":        "recovery-passphrase-correct-horse",
		"pki/ca.key":              "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIDEADBEEF\n-----END EC PRIVATE KEY-----\n",
		"keycloak/admin-password": "Adm1n-P4ss!",
	}
	for name, v := range secrets {
		if err := r.Put(name, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	commitRun(t, r, "v: 1\n", engine.OutcomeOK, nil, "preflight")
	// Re-encrypting to a new recipient set, and a second run.
	keys2, err := LoadKeys([]string{keys.RecipientStrings[0], mustRecipient(t)}, "", false)
	if err != nil {
		t.Fatal(err)
	}
	keys2.Identities = keys.Identities
	r.keys = keys2
	commitRun(t, r, "v: 2\n", engine.OutcomeOK, nil, "preflight")

	for name, v := range secrets {
		got, ok, err := r.Get(name)
		if err != nil || !ok || string(got) != v {
			t.Errorf("Get(%s) = %q, %v, %v", name, got, ok, err)
		}
	}
	// Scan every blob of every commit, and the worktree files.
	g, err := git.PlainOpen(dir)
	if err != nil {
		t.Fatal(err)
	}
	blobs, err := g.BlobObjects()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = blobs.ForEach(func(b *object.Blob) error {
		n++
		rd, err := b.Reader()
		if err != nil {
			return err
		}
		defer rd.Close()
		var buf bytes.Buffer
		if _, err := buf.ReadFrom(rd); err != nil {
			return err
		}
		for name, v := range secrets {
			for _, part := range strings.Split(v, "\n") {
				if len(part) > 6 && bytes.Contains(buf.Bytes(), []byte(part)) {
					t.Errorf("blob %s holds secret %s in plaintext", b.Hash, name)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 8 {
		t.Errorf("scanned only %d blobs", n)
	}
	if out := gitCLI(t, dir, "log", "-p", "--all"); strings.Contains(out, "super-secret") {
		t.Error("git log -p shows a secret")
	}
}

func mustRecipient(t *testing.T) string {
	t.Helper()
	k, err := LoadKeys(nil, filepath.Join(t.TempDir(), "other.txt"), true)
	if err != nil {
		t.Fatal(err)
	}
	return k.RecipientStrings[0]
}

func TestPutUnchangedIsNoop(t *testing.T) {
	r := newRepo(t, filepath.Join(t.TempDir(), "state"), testKeys(t))
	if err := r.Put("a", []byte("v")); err != nil {
		t.Fatal(err)
	}
	commitRun(t, r, "p\n", engine.OutcomeOK, nil)
	if err := r.Put("a", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if clean, err := r.clean(); err != nil || !clean {
		t.Errorf("storing an unchanged secret changed the worktree (clean=%v, %v)", clean, err)
	}
	if err := r.Put("../escape", []byte("v")); err == nil {
		t.Error("a secret name with .. was accepted")
	}
}

// newRepo creates a state repo under the run lock, as a run does; the lock
// is held until the test ends.
func newRepo(t *testing.T, dir string, keys *Keys) *Repo {
	t.Helper()
	r, lock := newRepoLocked(t, dir, keys)
	t.Cleanup(lock.Unlock)
	return r
}

func newRepoLocked(t *testing.T, dir string, keys *Keys) (*Repo, *Lock) {
	t.Helper()
	lock, err := LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Create(dir, keys, lock)
	if err != nil {
		lock.Unlock()
		t.Fatal(err)
	}
	return r, lock
}

func TestLock(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "state")
	// Before the repo exists, its parent is locked: a second first run waits.
	a, err := LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LockDir(dir); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), fmt.Sprintf("process %d", os.Getpid())) {
		t.Fatalf("second LockDir while the repo does not exist: %v", err)
	}
	if _, err := Create(dir, nil, a); err != nil {
		t.Fatal(err)
	}
	// Now the repo's own directory is locked too: a run starting after the
	// creation waits as well.
	if _, err := LockDir(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("LockDir of the created repo while its creator runs: %v", err)
	}
	a.Unlock()
	b, err := LockDir(dir)
	if err != nil {
		t.Fatalf("LockDir after Unlock: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".git", "castellan.lock")); err == nil {
		t.Error("the lock wrote a file")
	}
	b.Unlock()
}

// lockHolderEnv makes the test binary a process that takes the lock of the
// directory it names, says so, and holds it until its stdin closes.
const lockHolderEnv = "CASTELLAN_TEST_LOCK_HOLDER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(runHolderEnv); spec != "" {
		runHolder(spec)
	}
	if dir := os.Getenv(lockHolderEnv); dir != "" {
		l, err := LockDir(dir)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("locked")
		_, _ = io.Copy(io.Discard, os.Stdin)
		l.Unlock()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestLockHeldByAnotherProcess: the lock works across processes, and dies
// with its holder (no stale lock after a crash). The holder is killed with
// SIGKILL and waited for, so nothing depends on scheduling.
func TestLockHeldByAnotherProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	_, lock := newRepoLocked(t, dir, nil)
	lock.Unlock()

	holder := exec.Command(os.Args[0], "-test.run=^$")
	holder.Env = append(os.Environ(), lockHolderEnv+"="+dir)
	stdin, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("holder said %q, %v", line, err)
	}
	_, err = LockDir(dir)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), fmt.Sprintf("process %d", holder.Process.Pid)) {
		t.Fatalf("LockDir while another process holds it: %v", err)
	}
	if err := holder.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = holder.Wait()
	l2, err := LockDir(dir)
	if err != nil {
		t.Fatalf("LockDir after the holder died: %v", err)
	}
	l2.Unlock()
}

func TestRecoverCommitsLeftovers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	r := newRepo(t, dir, testKeys(t))
	// A run stored a secret and then died before committing.
	if err := r.Put("rke2/token", []byte("tok")); err != nil {
		t.Fatal(err)
	}
	r2, err := Open(dir, r.keys)
	if err != nil {
		t.Fatal(err)
	}
	did, err := r2.Recover()
	if err != nil || !did {
		t.Fatalf("Recover = %v, %v", did, err)
	}
	if v, ok, err := r2.Get("rke2/token"); err != nil || !ok || string(v) != "tok" {
		t.Errorf("secret after recovery = %q %v %v", v, ok, err)
	}
	if log := gitCLI(t, dir, "log", "--format=%s", "-1"); !strings.Contains(log, "recover") {
		t.Errorf("last commit = %q", log)
	}
	if did, _ := r2.Recover(); did {
		t.Error("Recover on a clean repo committed")
	}
}

// TestRenderedFilesOfOtherNodesStay: a run on some nodes replaces only those
// nodes' files of the phases it rendered.
func TestRenderedFilesOfOtherNodesStay(t *testing.T) {
	r := newRepo(t, filepath.Join(t.TempDir(), "state"), testKeys(t))
	commitRunOn(t, r, []string{"a", "b"}, "p\n", engine.OutcomeOK, map[string][]byte{
		"a/mesh/wg.conf": []byte("a1"), "a/mesh/old.conf": []byte("gone soon"),
		"b/mesh/wg.conf": []byte("b1"), "cluster/mesh/peers": []byte("c1"), "a/rke2/config": []byte("r1"),
	})
	commitRunOn(t, r, []string{"a"}, "p\n", engine.OutcomeOK, map[string][]byte{"a/mesh/wg.conf": []byte("a2"), "cluster/mesh/peers": []byte("c2")})
	want := map[string]string{
		"rendered/a/mesh/wg.conf": "a2", "rendered/b/mesh/wg.conf": "b1", "rendered/cluster/mesh/peers": "c2", "rendered/a/rke2/config": "r1",
	}
	for f, v := range want {
		if got, err := r.FileAt("2", f); err != nil || string(got) != v {
			t.Errorf("%s at run 2 = %q, %v; want %q", f, got, err, v)
		}
	}
	if _, err := r.FileAt("2", "rendered/a/mesh/old.conf"); err == nil {
		t.Error("a file node a's mesh no longer renders is still there")
	}
	if _, err := r.Commit(Snapshot{Record: &Record{Number: 3}, Rendered: map[string][]byte{"../escape": nil}}); err == nil {
		t.Error("a rendered path outside rendered/ was accepted")
	}
}

// TestOnlyManagedPathsAreCommitted: a stray file beside the state (a
// plaintext key, a backup) is never committed.
func TestOnlyManagedPathsAreCommitted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	r := newRepo(t, dir, testKeys(t))
	for _, f := range []string{"kubeconfig", "profile.yaml~", "secrets/plain.txt", "rendered/a/mesh/x"} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o700)
		if err := os.WriteFile(filepath.Join(dir, f), []byte("stray"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Put("ok/token", []byte("v")); err != nil {
		t.Fatal(err)
	}
	commitRun(t, r, "p\n", engine.OutcomeOK, nil)
	files := gitCLI(t, dir, "ls-files")
	for _, stray := range []string{"kubeconfig", "profile.yaml~", "secrets/plain.txt"} {
		if strings.Contains(files, stray) {
			t.Errorf("%s was committed:\n%s", stray, files)
		}
	}
	for _, managed := range []string{"secrets/ok/token.age", "rendered/a/mesh/x", "profile.yaml", "runs/000001.json", ".gitignore"} {
		if !strings.Contains(files, managed) {
			t.Errorf("%s was not committed:\n%s", managed, files)
		}
	}
}

// TestRecoverCommitsALeftoverRunAsThatRun: a run whose commit failed is
// committed by the next Recover under its own number, so history has no gap.
func TestRecoverCommitsALeftoverRunAsThatRun(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	r := newRepo(t, dir, testKeys(t))
	commitRun(t, r, "p\n", engine.OutcomeOK, nil)
	rec := &Record{Number: 2, Command: "apply", Outcome: engine.OutcomeFailed, Error: "boom", Nodes: []string{"n1"}}
	data, _ := json.Marshal(rec)
	if err := r.writeFile(recordPath(2), data); err != nil {
		t.Fatal(err)
	}
	if did, err := r.Recover(); err != nil || !did {
		t.Fatalf("Recover = %v, %v", did, err)
	}
	hist, err := r.History()
	if err != nil || len(hist) != 2 || hist[0].Record.Number != 2 || hist[0].Record.Error != "boom" {
		t.Fatalf("history after recovery = %+v, %v", hist, err)
	}
	if tr := gitCLI(t, dir, "log", "-1", "--format=%(trailers:key=Castellan-Recovered,valueonly)"); strings.TrimSpace(tr) != "true" {
		t.Errorf("recovered trailer = %q", tr)
	}
	if n, _ := r.NextRunNumber(); n != 3 {
		t.Errorf("next run = %d", n)
	}
}
