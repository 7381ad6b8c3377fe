// Package state keeps a cluster's history in a git repository (go-git): each
// run is one commit holding the profile, every rendered file, the run record
// and age-encrypted secrets, so any earlier state can be diffed and rolled
// back. Nothing in its history is ever rewritten.
//
// Layout of the repository:
//
//	profile.yaml                 the profile the run applied, byte for byte
//	known_hosts                  the host keys the run trusted
//	rendered/NODE/PHASE/...      files rendered for a node (NODE "cluster" for cluster-wide ones)
//	secrets/NAME.age             secrets, age-encrypted to recipients.txt
//	recipients.txt               who can read the secrets
//	data/PHASE/...               what phases keep between runs (never secret)
//	runs/NNNNNN.json             the record of run NNNNNN
//
// Life of a run: the installer takes the run lock (LockDir) and opens the
// repo read-only (Open) while it plans; nothing is written until the plan
// is confirmed. Then it creates the repo if needed (Create), commits what an
// earlier run left (Recover: a run that died is committed as died, under its
// own number), re-encrypts secrets if the recipients changed (Rekey, all or
// nothing), writes the new run's record (BeginRun, so a killed run is never
// lost and its number never reused), runs, and commits (Commit).
package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"castellan/installer/engine"
)

// Paths inside the state repo.
const (
	ProfileFile    = "profile.yaml"
	KnownHostsFile = "known_hosts"
	RenderedDir    = "rendered"
	dataDir        = "data"
	secretsDir     = "secrets"
	runsDir        = "runs"
	recipientsFile = "recipients.txt"
	readmeFile     = "README.md"
	ignoreFile     = ".gitignore"
	rekeyDir       = "castellan-rekey" // inside .git: the journal of a re-encryption
	branch         = "main"
)

// Commit trailers that make runs findable in plain `git log` too.
const (
	trailerRun      = "Castellan-Run"
	trailerOutcome  = "Castellan-Outcome"
	trailerCommand  = "Castellan-Command"
	trailerRollback = "Castellan-Rollback-Of"
)

// Repo is an open state repository.
type Repo struct {
	dir  string
	git  *git.Repository
	keys *Keys
}

// ErrNotStateRepo is returned for a directory that is not a castellan state
// repo (and which castellan therefore never writes to).
var ErrNotStateRepo = errors.New("not a castellan state repo")

// readmeHeading starts the README.md of every state repo; it is how a state
// repo is recognised.
const readmeHeading = "# castellan state\n"

// Open opens an existing state repo without writing anything. keys may be
// nil for read-only use (history, diff); secrets then cannot be read. It
// fails with ErrNotStateRepo when dir holds no castellan state repo.
func Open(dir string, keys *Keys) (*Repo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("state repo path %s: %w", dir, err)
	}
	g, err := git.PlainOpen(abs)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		return nil, fmt.Errorf("%s: %w (no runs yet?)", abs, ErrNotStateRepo)
	}
	if err != nil {
		return nil, fmt.Errorf("opening state repo %s: %w", abs, err)
	}
	r := &Repo{dir: abs, git: g, keys: keys}
	if err := r.checkOurs(); err != nil {
		return nil, err
	}
	return r, nil
}

// checkOurs makes sure the repository is castellan's: its README.md (in
// HEAD) starts with castellan's heading.
func (r *Repo) checkOurs() error {
	head, err := r.git.Head()
	if err != nil {
		return fmt.Errorf("%s is a git repository without commits, %w: choose an empty or new directory for spec.state.repo", r.dir, ErrNotStateRepo)
	}
	c, err := r.git.CommitObject(head.Hash())
	if err != nil {
		return fmt.Errorf("state repo %s: HEAD: %w", r.dir, err)
	}
	data, err := fileIn(c, readmeFile)
	if err != nil || !bytes.HasPrefix(data, []byte(readmeHeading)) {
		return fmt.Errorf("%s is a git repository that castellan did not create, %w: castellan never writes into another repository; choose an empty or new directory for spec.state.repo", r.dir, ErrNotStateRepo)
	}
	return nil
}

// Check tells, without writing, whether a run may use dir as its state repo:
// nil when it is a castellan state repo, or does not exist, or is an empty
// directory (Create makes it one). A directory holding anything else, or
// another git repository, is refused: castellan would otherwise write its
// files into it and commit onto the user's branch.
func Check(dir string) error {
	ok, err := Exists(dir)
	if err != nil {
		return err
	}
	if ok {
		_, err := Open(dir, nil)
		return err
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state repo %s: %w", dir, err)
	}
	if len(entries) > 0 {
		names := make([]string, 0, 3)
		for _, e := range entries[:min(3, len(entries))] {
			names = append(names, e.Name())
		}
		return fmt.Errorf("%s already holds files (%s), %w: choose an empty or new directory for spec.state.repo", dir, strings.Join(names, ", "), ErrNotStateRepo)
	}
	return nil
}

// Create creates the state repo at dir (with a first commit that explains
// the layout), or opens it when it exists. The caller must hold the run lock
// (LockDir); once the directory exists it is added to the lock. dir must
// pass Check.
func Create(dir string, keys *Keys, lock *Lock) (*Repo, error) {
	if err := Check(dir); err != nil {
		return nil, err
	}
	if ok, err := Exists(dir); err != nil {
		return nil, err
	} else if ok {
		if !lock.Holds(dir) {
			if err := lock.Also(dir); err != nil {
				return nil, err
			}
		}
		return Open(dir, keys)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("state repo path %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("creating state repo %s: %w", abs, err)
	}
	if err := lock.Also(abs); err != nil {
		return nil, err
	}
	r := &Repo{dir: abs, keys: keys}
	return r, r.create()
}

// SetKeys replaces the keys the repo reads and writes secrets with (once the
// run may create a local identity).
func (r *Repo) SetKeys(keys *Keys) { r.keys = keys }

// Exists reports whether dir holds a git repository (Open tells whether it
// is castellan's).
func Exists(dir string) (bool, error) {
	_, err := os.Stat(filepath.Join(dir, ".git", "HEAD"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("state repo %s: %w", dir, err)
	}
	return true, nil
}

// Dir is the repo's directory.
func (r *Repo) Dir() string { return r.dir }

func (r *Repo) create() error {
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return fmt.Errorf("creating state repo %s: %w", r.dir, err)
	}
	g, err := git.PlainInitWithOptions(r.dir, &git.PlainInitOptions{
		InitOptions: git.InitOptions{DefaultBranch: plumbing.NewBranchReferenceName(branch)},
	})
	if err != nil {
		return fmt.Errorf("creating state repo %s: %w", r.dir, err)
	}
	r.git = g
	readme := readmeHeading + "\nEvery castellan run on this cluster is one commit here. " +
		"See `castellan history`, `castellan diff` and `castellan rollback`.\n" +
		"Do not edit by hand: castellan commits what it finds left uncommitted as a recovery.\n" +
		"Secrets under secrets/ are age-encrypted to the recipients in recipients.txt.\n"
	if err := r.writeFile(readmeFile, []byte(readme)); err != nil {
		return err
	}
	if err := r.ensureIgnore(); err != nil {
		return err
	}
	_, err = r.commitAll("castellan: create the state repo", nil)
	return err
}

// gitignore keeps everything but castellan's own paths out of the repo, so a
// stray file in the directory (an identity, a kubeconfig, an editor backup)
// is never committed or pushed.
const gitignore = `# castellan commits only its own paths.
/*
!/.gitignore
!/README.md
!/profile.yaml
!/known_hosts
!/recipients.txt
!/rendered/
!/data/
!/runs/
!/secrets/
/runs/*
!/runs/*.json
/secrets/**
!/secrets/**/
!/secrets/**/*.age
`

func (r *Repo) ensureIgnore() error {
	have, err := os.ReadFile(filepath.Join(r.dir, ignoreFile))
	if err == nil && string(have) == gitignore {
		return nil
	}
	return r.writeFile(ignoreFile, []byte(gitignore))
}

// Recover commits whatever an interrupted run left in the worktree (a secret
// written before the crash, for example) so that nothing is lost and the
// history stays consistent, after finishing or discarding a re-encryption
// that was cut off. A run record left behind is committed as that run; a
// record still saying "running" belongs to a run that died, and is committed
// as died. It reports whether there was anything. The caller holds the lock.
func (r *Repo) Recover() (bool, error) {
	if err := r.finishRekey(); err != nil {
		return false, err
	}
	if err := r.ensureIgnore(); err != nil {
		return false, err
	}
	clean, err := r.clean()
	if err != nil || clean {
		return false, err
	}
	const note = "The previous run stopped before it could commit; these files were in the worktree."
	if rec, err := r.uncommittedRecord(); err != nil {
		return false, err
	} else if rec != nil {
		if rec.Outcome == engine.OutcomeRunning {
			rec.Outcome = engine.OutcomeDied
			rec.Error = "the run ended without recording its end (the process was killed or its machine stopped); what it had written is committed with this record, and the next run continued from it"
			if fi, err := os.Stat(filepath.Join(r.dir, recordPath(rec.Number))); err == nil {
				rec.Finished = fi.ModTime().UTC()
			}
			if err := r.writeRecord(rec); err != nil {
				return false, err
			}
		}
		_, err = r.commitAll(commitMessage(rec)+"Castellan-Recovered: true\n", rec)
		return err == nil, err
	}
	_, err = r.commitAll("castellan: recover changes left by an interrupted run\n\n"+note+"\n", nil)
	return err == nil, err
}

// Uncommitted returns the record of a run that started but is not committed
// (it is running, or it died and no run has recovered it yet), or nil.
func (r *Repo) Uncommitted() (*Record, error) { return r.uncommittedRecord() }

// BeginRun writes the record of a run that starts now (its outcome
// "running"), durably, before any node is touched: if the process is killed,
// the next run finds it and commits it as died, and its number is never
// given to another run. The caller holds the lock and has called Recover.
func (r *Repo) BeginRun(rec *Record) error {
	run := *rec
	run.Outcome = engine.OutcomeRunning
	return r.writeRecord(&run)
}

func (r *Repo) writeRecord(rec *Record) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding run record: %w", err)
	}
	return r.writeFile(recordPath(rec.Number), append(data, '\n'))
}

// uncommittedRecord returns the newest run record in the worktree that HEAD
// does not have, or nil.
func (r *Repo) uncommittedRecord() (*Record, error) {
	n, err := r.NextRunNumber()
	if err != nil || n == 1 {
		return nil, err
	}
	head, err := r.git.Head()
	if err != nil {
		return nil, fmt.Errorf("state repo HEAD: %w", err)
	}
	c, err := r.git.CommitObject(head.Hash())
	if err != nil {
		return nil, fmt.Errorf("state repo HEAD: %w", err)
	}
	if _, err := c.File(filepath.ToSlash(recordPath(n - 1))); err == nil {
		return nil, nil // committed
	}
	data, err := os.ReadFile(filepath.Join(r.dir, recordPath(n-1)))
	if err != nil {
		return nil, fmt.Errorf("reading run record %d: %w", n-1, err)
	}
	var rec Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, nil // a torn write: recover the files without claiming a run
	}
	return &rec, nil
}

func (r *Repo) clean() (bool, error) {
	wt, err := r.git.Worktree()
	if err != nil {
		return false, fmt.Errorf("state repo worktree: %w", err)
	}
	st, err := wt.Status()
	if err != nil {
		return false, fmt.Errorf("state repo status: %w", err)
	}
	return st.IsClean(), nil
}

// writeFile writes a file into the worktree durably (temp file, fsync, rename).
func (r *Repo) writeFile(rel string, data []byte) error {
	p := filepath.Join(r.dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("state repo: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return fmt.Errorf("state repo: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("state repo: writing %s: %w", rel, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("state repo: writing %s: %w", rel, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("state repo: writing %s: %w", rel, err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("state repo: writing %s: %w", rel, err)
	}
	return nil
}

// Get returns a secret (engine.Secrets).
func (r *Repo) Get(name string) ([]byte, bool, error) {
	rel, err := secretPath(name)
	if err != nil {
		return nil, false, err
	}
	cipher, err := os.ReadFile(filepath.Join(r.dir, rel))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading secret %s: %w", name, err)
	}
	if r.keys == nil {
		return nil, false, fmt.Errorf("reading secret %s: the state repo was opened without keys", name)
	}
	plain, err := r.keys.decrypt(name, cipher)
	return plain, err == nil, err
}

// Put stores a secret age-encrypted (engine.Secrets). It is written to disk
// at once, so a crash before the run's commit loses nothing (Recover commits
// it). Storing an unchanged value changes nothing.
func (r *Repo) Put(name string, value []byte) error {
	if r.keys == nil {
		return fmt.Errorf("storing secret %s: the state repo was opened without keys", name)
	}
	rel, err := secretPath(name)
	if err != nil {
		return err
	}
	if old, ok, err := r.Get(name); err == nil && ok && bytes.Equal(old, value) {
		return nil
	}
	cipher, err := r.keys.encrypt(value)
	if err != nil {
		return fmt.Errorf("storing secret %s: %w", name, err)
	}
	return r.writeFile(rel, cipher)
}

// Rekey re-encrypts every secret when the recipients changed, all or
// nothing: the re-encrypted secrets and the new recipients.txt are first
// written to a journal inside .git and marked complete, then moved into
// place; Recover finishes a journal that is complete and discards one that
// is not, so a crash never leaves secrets encrypted to mixed recipients.
// Apply calls it before any node is touched, so a secret that cannot be
// re-encrypted stops the run early.
func (r *Repo) Rekey() error {
	if err := r.stageRekey(); err != nil {
		return err
	}
	return r.finishRekey()
}

// stageRekey writes the journal of a re-encryption, when the recipients
// changed, and marks it complete.
func (r *Repo) stageRekey() error {
	if r.keys == nil {
		return nil
	}
	want := strings.Join(r.keys.RecipientStrings, "\n") + "\n"
	have, err := os.ReadFile(filepath.Join(r.dir, recipientsFile))
	if err == nil && string(have) == want {
		return nil
	}
	journal := filepath.Join(r.dir, ".git", rekeyDir)
	if err := os.RemoveAll(journal); err != nil {
		return fmt.Errorf("state repo: %w", err)
	}
	root := filepath.Join(r.dir, secretsDir)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".age") {
			return err
		}
		rel, _ := filepath.Rel(r.dir, p)
		name := strings.TrimSuffix(strings.TrimPrefix(filepath.ToSlash(rel), secretsDir+"/"), ".age")
		cipher, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		plain, err := r.keys.decrypt(name, cipher)
		if err != nil {
			return fmt.Errorf("re-encrypting to the new recipients: %w", err)
		}
		out, err := r.keys.encrypt(plain)
		if err != nil {
			return err
		}
		return writeDurable(filepath.Join(journal, rel), out)
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		_ = os.RemoveAll(journal)
		return err
	}
	if err := writeDurable(filepath.Join(journal, recipientsFile), []byte(want)); err != nil {
		return err
	}
	return writeDurable(filepath.Join(journal, ".complete"), nil)
}

// finishRekey moves a complete journal's files into place, or discards an
// incomplete one.
func (r *Repo) finishRekey() error {
	journal := filepath.Join(r.dir, ".git", rekeyDir)
	if _, err := os.Stat(journal); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if _, err := os.Stat(filepath.Join(journal, ".complete")); err != nil {
		return os.RemoveAll(journal)
	}
	err := filepath.WalkDir(journal, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == ".complete" {
			return err
		}
		rel, _ := filepath.Rel(journal, p)
		dst := filepath.Join(r.dir, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		return os.Rename(p, dst)
	})
	if err != nil {
		return fmt.Errorf("state repo: finishing the re-encryption of secrets: %w", err)
	}
	return os.RemoveAll(journal)
}

// writeDurable writes a file and fsyncs it and its directory.
func writeDurable(p string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("state repo: %w", err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("state repo: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("state repo: writing %s: %w", p, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("state repo: writing %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("state repo: writing %s: %w", p, err)
	}
	return syncDir(filepath.Dir(p))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("state repo: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("state repo: syncing %s: %w", dir, err)
	}
	return nil
}

// Data returns what a phase stored under name ("PHASE/NAME"; engine.Store).
func (r *Repo) Data(name string) ([]byte, bool, error) {
	rel, err := dataPath(name)
	if err != nil {
		return nil, false, err
	}
	data, err := os.ReadFile(filepath.Join(r.dir, rel))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading state data %s: %w", name, err)
	}
	return data, true, nil
}

// PutData stores a phase's data in plain text (engine.Store): written at
// once, committed with the run. It must never be a secret.
func (r *Repo) PutData(name string, value []byte) error {
	rel, err := dataPath(name)
	if err != nil {
		return err
	}
	return r.writeFile(rel, value)
}

// Secret reads a secret (engine.Store).
func (r *Repo) Secret(name string) ([]byte, bool, error) { return r.Get(name) }

// PutSecret stores a secret (engine.Store).
func (r *Repo) PutSecret(name string, value []byte) error { return r.Put(name, value) }

// NextRunNumber is the number the next run will get.
func (r *Repo) NextRunNumber() (int, error) {
	entries, err := os.ReadDir(filepath.Join(r.dir, runsDir))
	if errors.Is(err, fs.ErrNotExist) {
		return 1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading run records: %w", err)
	}
	last := 0
	for _, e := range entries {
		if n, err := strconv.Atoi(strings.TrimSuffix(e.Name(), ".json")); err == nil && n > last {
			last = n
		}
	}
	return last + 1, nil
}

// Snapshot is what one run commits.
type Snapshot struct {
	Record  *Record
	Profile []byte
	// KnownHosts replaces known_hosts when not nil.
	KnownHosts []byte
	// Rendered maps NODE/PHASE/FILE to content. For each phase that rendered
	// anything, its subtrees of the run's Nodes (and of "cluster") are
	// replaced as a whole, so files a phase no longer renders go; other
	// nodes' and phases' files stay as they were.
	Rendered map[string][]byte
	Nodes    []string
}

// Commit records one run as one commit: failed and interrupted runs too, so
// the history is complete.
func (r *Repo) Commit(s Snapshot) (plumbing.Hash, error) {
	rec := s.Record
	if err := r.Rekey(); err != nil {
		return plumbing.ZeroHash, err
	}
	if err := r.writeFile(ProfileFile, s.Profile); err != nil {
		return plumbing.ZeroHash, err
	}
	if s.KnownHosts != nil {
		if err := r.writeFile(KnownHostsFile, s.KnownHosts); err != nil {
			return plumbing.ZeroHash, err
		}
	}
	if err := r.replaceRendered(s.Nodes, s.Rendered); err != nil {
		return plumbing.ZeroHash, err
	}
	if err := r.writeRecord(rec); err != nil {
		return plumbing.ZeroHash, err
	}
	return r.commitAll(commitMessage(rec), rec)
}

func recordPath(n int) string { return filepath.Join(runsDir, fmt.Sprintf("%06d.json", n)) }

func (r *Repo) replaceRendered(nodes []string, files map[string][]byte) error {
	root := filepath.Join(r.dir, RenderedDir)
	phases := map[string]bool{}
	for p := range files {
		parts := strings.SplitN(filepath.ToSlash(filepath.Clean(filepath.FromSlash(p))), "/", 3)
		if len(parts) < 3 || parts[0] == ".." || filepath.IsAbs(p) {
			return fmt.Errorf("state repo: rendered path %q is not NODE/PHASE/FILE inside rendered/", p)
		}
		phases[parts[1]] = true
	}
	for _, n := range append(slices.Clone(nodes), "cluster") {
		for ph := range phases {
			if err := os.RemoveAll(filepath.Join(root, n, ph)); err != nil {
				return fmt.Errorf("state repo: %w", err)
			}
		}
	}
	for p, content := range files {
		if err := r.writeFile(filepath.Join(RenderedDir, filepath.Clean(filepath.FromSlash(p))), content); err != nil {
			return err
		}
	}
	return nil
}

func commitMessage(rec *Record) string {
	var b strings.Builder
	verb := rec.Command
	if rec.Command == "rollback" {
		verb = fmt.Sprintf("rollback to run %d", rec.RollbackOf)
	}
	fmt.Fprintf(&b, "run %d: %s %s (%s on %d node(s))\n\n", rec.Number, verb, rec.Outcome, summarizePhases(rec), len(rec.Nodes))
	if rec.Error != "" {
		fmt.Fprintf(&b, "%s\n\n", firstLine(rec.Error))
	}
	for _, w := range rec.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	if len(rec.Warnings) > 0 {
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "%s: %d\n%s: %s\n%s: %s\n", trailerRun, rec.Number, trailerOutcome, rec.Outcome, trailerCommand, rec.Command)
	if rec.Command == "rollback" {
		fmt.Fprintf(&b, "%s: %d\n", trailerRollback, rec.RollbackOf)
	}
	return b.String()
}

func summarizePhases(rec *Record) string {
	var changed []string
	for _, p := range rec.Phases {
		if p.Outcome != "unchanged" && p.Outcome != "skipped" {
			changed = append(changed, p.Name)
		}
	}
	if len(changed) == 0 {
		return "no changes"
	}
	return strings.Join(changed, ", ")
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func (r *Repo) commitAll(msg string, rec *Record) (plumbing.Hash, error) {
	wt, err := r.git.Worktree()
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("state repo worktree: %w", err)
	}
	st, err := wt.Status()
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("state repo status: %w", err)
	}
	// Stage castellan's own paths only, whatever else lies in the directory.
	for path, fs := range st {
		if !managed(path) {
			continue
		}
		if fs.Worktree == git.Deleted {
			_, err = wt.Remove(path)
		} else {
			_, err = wt.Add(path)
		}
		if err != nil {
			return plumbing.ZeroHash, fmt.Errorf("staging %s: %w", path, err)
		}
	}
	sig := signature()
	if rec != nil {
		sig.When = rec.Finished
	}
	h, err := wt.Commit(msg, &git.CommitOptions{Author: sig, AllowEmptyCommits: true})
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("committing state: %w", err)
	}
	return h, nil
}

// managed reports whether a path (slash-separated, relative to the repo) is
// one castellan commits; .gitignore says the same for people using git.
func managed(p string) bool {
	switch p {
	case ignoreFile, readmeFile, ProfileFile, KnownHostsFile, recipientsFile:
		return true
	}
	switch {
	case strings.HasPrefix(p, RenderedDir+"/"), strings.HasPrefix(p, dataDir+"/"):
		return true
	case strings.HasPrefix(p, runsDir+"/"):
		return strings.HasSuffix(p, ".json")
	case strings.HasPrefix(p, secretsDir+"/"):
		return strings.HasSuffix(p, ".age")
	}
	return false
}

// Who names the person running castellan: git's user.name/email when set
// globally, else user@host.
func Who() string {
	s := signature()
	return fmt.Sprintf("%s <%s>", s.Name, s.Email)
}

func signature() *object.Signature {
	sig := &object.Signature{When: time.Now()}
	if cfg, err := config.LoadConfig(config.GlobalScope); err == nil {
		sig.Name, sig.Email = cfg.User.Name, cfg.User.Email
	}
	host, _ := os.Hostname()
	name := "castellan"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if sig.Name == "" {
		sig.Name = name
	}
	if sig.Email == "" {
		sig.Email = name + "@" + host
	}
	return sig
}

// Head returns the current commit's hash.
func (r *Repo) Head() (plumbing.Hash, error) {
	ref, err := r.git.Head()
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("state repo HEAD: %w", err)
	}
	return ref.Hash(), nil
}

// SecretNames lists the stored secrets (names only).
func (r *Repo) SecretNames() ([]string, error) {
	var out []string
	root := filepath.Join(r.dir, secretsDir)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, strings.TrimSuffix(filepath.ToSlash(rel), ".age"))
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	slices.Sort(out)
	return out, err
}
