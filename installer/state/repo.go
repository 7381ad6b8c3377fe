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
//	runs/NNNNNN.json             the record of run NNNNNN
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
	"github.com/gofrs/flock"
)

// Paths inside the state repo.
const (
	ProfileFile    = "profile.yaml"
	KnownHostsFile = "known_hosts"
	RenderedDir    = "rendered"
	secretsDir     = "secrets"
	runsDir        = "runs"
	recipientsFile = "recipients.txt"
	readmeFile     = "README.md"
	ignoreFile     = ".gitignore"
	lockFile       = "castellan.lock" // inside .git, never committed
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
	lock *flock.Flock
}

// ErrLocked is returned when another castellan holds the repo's lock.
var ErrLocked = errors.New("state repo is locked")

// Open opens the state repo at dir, creating it (with a first commit that
// explains the layout) when it does not exist. keys may be nil for read-only
// use (history, diff); secrets then cannot be read or written.
func Open(dir string, keys *Keys) (*Repo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("state repo path %s: %w", dir, err)
	}
	r := &Repo{dir: abs, keys: keys}
	r.git, err = git.PlainOpen(abs)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		return r, r.create()
	}
	if err != nil {
		return nil, fmt.Errorf("opening state repo %s: %w", abs, err)
	}
	return r, nil
}

// Exists reports whether dir holds a state repo (a git repository).
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
	readme := "# castellan state\n\nEvery castellan run on this cluster is one commit here. " +
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

// Lock takes the repo's run lock, so that two applies never run on one
// state repo at once. The lock is an flock: it dies with the process.
func (r *Repo) Lock() error {
	path := filepath.Join(r.dir, ".git", lockFile)
	fl := flock.New(path)
	ok, err := fl.TryLock()
	if err != nil {
		return fmt.Errorf("locking state repo: %w", err)
	}
	if !ok {
		holder, _ := os.ReadFile(path)
		return fmt.Errorf("%w: %s is in use by another castellan run (%s); wait for it to finish", ErrLocked, r.dir, strings.TrimSpace(string(holder)))
	}
	host, _ := os.Hostname()
	info := fmt.Sprintf("pid %d on %s since %s", os.Getpid(), host, time.Now().UTC().Format(time.RFC3339))
	if err := os.WriteFile(path, []byte(info+"\n"), 0o600); err != nil {
		fl.Unlock()
		return fmt.Errorf("locking state repo: %w", err)
	}
	r.lock = fl
	return nil
}

// Unlock releases the run lock.
func (r *Repo) Unlock() {
	if r.lock != nil {
		r.lock.Unlock()
		r.lock = nil
	}
}

// Recover commits whatever an interrupted run left in the worktree (a secret
// written before the crash, for example) so that nothing is lost and the
// history stays consistent. It reports whether there was anything.
func (r *Repo) Recover() (bool, error) {
	if err := r.ensureIgnore(); err != nil {
		return false, err
	}
	clean, err := r.clean()
	if err != nil || clean {
		return false, err
	}
	const note = "The previous run stopped before it could commit; these files were in the worktree."
	// A run that wrote its record but failed to commit is committed as that
	// run, so history has no gap.
	if rec, err := r.uncommittedRecord(); err != nil {
		return false, err
	} else if rec != nil {
		_, err = r.commitAll(commitMessage(rec)+"Castellan-Recovered: true\n", rec)
		return err == nil, err
	}
	_, err = r.commitAll("castellan: recover changes left by an interrupted run\n\n"+note+"\n", nil)
	return err == nil, err
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

// Rekey re-encrypts every secret when the recipients changed. Apply calls
// it before any node is touched, so a secret that cannot be re-encrypted
// stops the run early instead of failing its commit.
func (r *Repo) Rekey() error {
	if r.keys == nil {
		return nil
	}
	want := strings.Join(r.keys.RecipientStrings, "\n") + "\n"
	have, err := os.ReadFile(filepath.Join(r.dir, recipientsFile))
	if err == nil && string(have) == want {
		return nil
	}
	root := filepath.Join(r.dir, secretsDir)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".age") {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		name := strings.TrimSuffix(filepath.ToSlash(rel), ".age")
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
		return r.writeFile(filepath.Join(secretsDir, rel), out)
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return r.writeFile(recipientsFile, []byte(want))
}

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
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("encoding run record: %w", err)
	}
	if err := r.writeFile(recordPath(rec.Number), append(data, '\n')); err != nil {
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
	case strings.HasPrefix(p, RenderedDir+"/"):
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
