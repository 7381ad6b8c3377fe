package state

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"

	"castellan/installer/engine"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestCheckRefusesForeignDirectories: a folder holding anything, or another
// git repository, is never made into a state repo; nothing in it changes.
func TestCheckRefusesForeignDirectories(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  string
	}{
		{"a folder with files", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string]string{"README.md": "my notes\n", ".gitignore": "*.o\n"})
		}, "already holds files (.gitignore, README.md), not a castellan state repo"},
		{"another git repository", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string]string{"README.md": "my project\n"})
			gitCLI(t, dir, "init", "-q", "-b", "main")
			gitCLI(t, dir, "add", "README.md")
			gitCLI(t, dir, "-c", "user.name=me", "-c", "user.email=me@example.org", "commit", "-q", "-m", "mine")
		}, "is a git repository that castellan did not create"},
		{"an empty git repository", func(t *testing.T, dir string) {
			gitCLI(t, dir, "init", "-q", "-b", "main")
		}, "is a git repository without commits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, dir)
			before := snapshotDir(t, dir)
			err := Check(dir)
			if !errors.Is(err, ErrNotStateRepo) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Check = %v, want %q", err, tt.want)
			}
			// The message says it once, and says what to do.
			if n := strings.Count(err.Error(), ErrNotStateRepo.Error()); n != 1 || !strings.Contains(err.Error(), "choose an empty or new directory") {
				t.Errorf("Check = %q: want %q once (got %d) and what to do", err, ErrNotStateRepo, n)
			}
			lock, err := LockDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer lock.Unlock()
			if _, err := Create(dir, testKeys(t), lock); !errors.Is(err, ErrNotStateRepo) {
				t.Fatalf("Create = %v", err)
			}
			if after := snapshotDir(t, dir); after != before {
				t.Errorf("the directory changed:\n%s\nbecame\n%s", before, after)
			}
		})
	}
	// An empty directory and a missing one are fine.
	empty := t.TempDir()
	if err := Check(empty); err != nil {
		t.Errorf("Check(empty dir) = %v", err)
	}
	if err := Check(filepath.Join(empty, "new")); err != nil {
		t.Errorf("Check(missing dir) = %v", err)
	}
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// snapshotDir lists every file under dir with its size and content hash.
func snapshotDir(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, "%s %d %x\n", rel, len(data), data)
		} else {
			fmt.Fprintf(&b, "%s %s\n", rel, fi.Mode().Type())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// runHolderEnv makes the test binary start a run (record written, a secret
// stored) and wait to be killed.
const runHolderEnv = "CASTELLAN_TEST_RUN_HOLDER"

func runHolder(spec string) {
	dir, identity, _ := strings.Cut(spec, "|")
	fail := func(err error) {
		fmt.Println(err)
		os.Exit(1)
	}
	keys, err := LoadKeys(nil, identity, false)
	if err != nil {
		fail(err)
	}
	lock, err := LockDir(dir)
	if err != nil {
		fail(err)
	}
	r, err := Create(dir, keys, lock)
	if err != nil {
		fail(err)
	}
	if _, err := r.Recover(); err != nil {
		fail(err)
	}
	n, err := r.NextRunNumber()
	if err != nil {
		fail(err)
	}
	if err := r.BeginRun(&Record{Number: n, Command: "apply", Started: time.Now().UTC(), Nodes: []string{"n1"}}); err != nil {
		fail(err)
	}
	if err := r.Put("rke2/token", []byte("written-before-the-kill")); err != nil {
		fail(err)
	}
	fmt.Println("running")
	time.Sleep(time.Hour)
}

// TestKilledRunAppearsAsDied: a run killed with SIGKILL after it began is
// committed by the next run as died, under its own number, with what it had
// written; the next run takes the next number.
func TestKilledRunAppearsAsDied(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	identity := filepath.Join(t.TempDir(), "identity.txt")
	keys, err := LoadKeys(nil, identity, true)
	if err != nil {
		t.Fatal(err)
	}
	r, lock := newRepoLocked(t, dir, keys)
	commitRun(t, r, "p\n", engine.OutcomeOK, nil)
	lock.Unlock()

	holder := exec.Command(os.Args[0], "-test.run=^$")
	holder.Env = append(os.Environ(), runHolderEnv+"="+dir+"|"+identity)
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "running\n" {
		t.Fatalf("run holder said %q, %v", line, err)
	}
	if err := holder.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = holder.Wait()

	// What history shows before anyone recovers: the run is uncommitted.
	ro, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := ro.Uncommitted(); err != nil || rec == nil || rec.Number != 2 || rec.Outcome != engine.OutcomeRunning {
		t.Fatalf("uncommitted record = %+v, %v", rec, err)
	}

	r2 := newRepo(t, dir, r.keys)
	if did, err := r2.Recover(); err != nil || !did {
		t.Fatalf("Recover = %v, %v", did, err)
	}
	hist, err := r2.History()
	if err != nil || len(hist) != 2 {
		t.Fatalf("history = %+v, %v", hist, err)
	}
	died := hist[0].Record
	if died.Number != 2 || died.Outcome != engine.OutcomeDied || !strings.Contains(died.Error, "killed") {
		t.Errorf("run 2 = %+v", died)
	}
	if v, ok, err := r2.Get("rke2/token"); err != nil || !ok || string(v) != "written-before-the-kill" {
		t.Errorf("the died run's secret = %q %v %v", v, ok, err)
	}
	if n, _ := r2.NextRunNumber(); n != 3 {
		t.Errorf("next run number = %d, want 3", n)
	}
	if st := gitCLI(t, dir, "status", "--porcelain"); st != "" {
		t.Errorf("worktree not clean after recovery:\n%s", st)
	}
}

// TestRekeyIsAllOrNothing: a re-encryption cut off before its journal is
// complete leaves every secret as it was; one cut off after leaves every
// secret re-encrypted once recovered. Never a mix.
func TestRekeyIsAllOrNothing(t *testing.T) {
	oldID, _ := age.GenerateX25519Identity()
	newID, _ := age.GenerateX25519Identity()
	keysFor := func(recipient *age.X25519Identity, ids ...age.Identity) *Keys {
		return &Keys{Recipients: []age.Recipient{recipient.Recipient()}, RecipientStrings: []string{recipient.Recipient().String()}, Identities: ids}
	}
	names := []string{"a/one", "a/two", "b/three", "b/deep/four"}
	setup := func(t *testing.T) (*Repo, string) {
		dir := filepath.Join(t.TempDir(), "state")
		r := newRepo(t, dir, keysFor(oldID, oldID))
		if err := r.Rekey(); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if err := r.Put(n, []byte("value of "+n)); err != nil {
				t.Fatal(err)
			}
		}
		commitRun(t, r, "p\n", engine.OutcomeOK, nil)
		r.SetKeys(keysFor(newID, oldID, newID))
		if err := r.stageRekey(); err != nil {
			t.Fatal(err)
		}
		return r, dir
	}
	readableBy := func(t *testing.T, dir string, id age.Identity) int {
		r, err := Open(dir, &Keys{Identities: []age.Identity{id}})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, name := range names {
			if _, ok, err := r.Get(name); ok && err == nil {
				n++
			}
		}
		return n
	}

	t.Run("journal incomplete", func(t *testing.T) {
		r, dir := setup(t)
		if err := os.Remove(filepath.Join(dir, ".git", rekeyDir, ".complete")); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Recover(); err != nil {
			t.Fatal(err)
		}
		if got := readableBy(t, dir, oldID); got != len(names) {
			t.Errorf("%d secrets readable by the old identity, want all", got)
		}
		if got := readableBy(t, dir, newID); got != 0 {
			t.Errorf("%d secrets readable by the new identity alone, want none", got)
		}
	})
	t.Run("journal complete, half moved", func(t *testing.T) {
		r, dir := setup(t)
		journal := filepath.Join(dir, ".git", rekeyDir)
		moved := 0
		_ = filepath.Walk(journal, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() && strings.HasSuffix(p, ".age") && moved < 2 {
				rel, _ := filepath.Rel(journal, p)
				moved++
				return os.Rename(p, filepath.Join(dir, rel))
			}
			return err
		})
		if moved != 2 {
			t.Fatalf("moved %d", moved)
		}
		if _, err := r.Recover(); err != nil {
			t.Fatal(err)
		}
		if got := readableBy(t, dir, newID); got != len(names) {
			t.Errorf("%d secrets readable by the new identity, want all", got)
		}
		if got := readableBy(t, dir, oldID); got != 0 {
			t.Errorf("%d secrets still readable by the old identity alone, want none", got)
		}
		if rs, _ := os.ReadFile(filepath.Join(dir, recipientsFile)); strings.TrimSpace(string(rs)) != newID.Recipient().String() {
			t.Errorf("recipients.txt = %q", rs)
		}
		if _, err := os.Stat(journal); !os.IsNotExist(err) {
			t.Errorf("journal left behind: %v", err)
		}
	})
}

// TestDataIsStoredPerPhase: phases' plain data round-trips and is committed
// under data/.
func TestDataIsStoredPerPhase(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	r := newRepo(t, dir, testKeys(t))
	if err := r.PutData("mesh/addresses.json", []byte(`{"n1":"10.99.0.1"}`)); err != nil {
		t.Fatal(err)
	}
	got, ok, err := r.Data("mesh/addresses.json")
	if err != nil || !ok || string(got) != `{"n1":"10.99.0.1"}` {
		t.Errorf("Data = %q %v %v", got, ok, err)
	}
	if _, ok, err := r.Data("mesh/none"); ok || err != nil {
		t.Errorf("missing data: %v %v", ok, err)
	}
	for _, bad := range []string{"../x", "/etc/passwd", "Mesh/X", ""} {
		if err := r.PutData(bad, []byte("x")); err == nil {
			t.Errorf("PutData(%q) accepted", bad)
		}
	}
	commitRun(t, r, "p\n", engine.OutcomeOK, nil)
	if files := gitCLI(t, dir, "ls-files"); !strings.Contains(files, "data/mesh/addresses.json") {
		t.Errorf("data not committed:\n%s", files)
	}
}

// TestGitignoreIsPinned: the .gitignore that keeps stray files out of the
// state repo is exactly the golden one.
func TestGitignoreIsPinned(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	newRepo(t, dir, testKeys(t))
	got, err := os.ReadFile(filepath.Join(dir, ignoreFile))
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "gitignore.golden")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf(".gitignore differs from %s (go test -update rewrites it):\n%s", golden, got)
	}
}
