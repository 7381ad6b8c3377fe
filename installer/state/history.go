package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// Entry is one run in the history.
type Entry struct {
	Hash   plumbing.Hash
	Record *Record
	// Subject is the commit's first line.
	Subject string
}

// History lists the runs, newest first. Commits that are not runs (the
// repo's creation, recoveries) are left out.
func (r *Repo) History() ([]Entry, error) {
	head, err := r.git.Head()
	if err != nil {
		return nil, fmt.Errorf("state repo HEAD: %w", err)
	}
	iter, err := r.git.Log(&git.LogOptions{From: head.Hash()})
	if err != nil {
		return nil, fmt.Errorf("reading state history: %w", err)
	}
	var out []Entry
	err = iter.ForEach(func(c *object.Commit) error {
		n, ok := trailerInt(c.Message, trailerRun)
		if !ok {
			return nil
		}
		rec, err := recordAt(c, n)
		if err != nil {
			return err
		}
		out = append(out, Entry{Hash: c.Hash, Record: rec, Subject: firstLine(c.Message)})
		return nil
	})
	return out, err
}

func trailerInt(msg, key string) (int, bool) {
	for _, line := range strings.Split(msg, "\n") {
		if v, ok := strings.CutPrefix(line, key+": "); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			return n, err == nil
		}
	}
	return 0, false
}

func recordAt(c *object.Commit, n int) (*Record, error) {
	data, err := fileIn(c, path.Join(runsDir, fmt.Sprintf("%06d.json", n)))
	if err != nil {
		return nil, err
	}
	var rec Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("run record %d in %s: %w", n, c.Hash, err)
	}
	return &rec, nil
}

func fileIn(c *object.Commit, name string) ([]byte, error) {
	f, err := c.File(name)
	if err != nil {
		return nil, fmt.Errorf("%s at %s: %w", name, c.Hash.String()[:12], err)
	}
	rd, err := f.Reader()
	if err != nil {
		return nil, fmt.Errorf("%s at %s: %w", name, c.Hash.String()[:12], err)
	}
	defer rd.Close()
	return io.ReadAll(rd)
}

// ErrUnknownRevision is returned for a revision that names no run or commit.
var ErrUnknownRevision = errors.New("unknown revision")

// Resolve finds a commit by run number ("3"), or by git revision (a hash or
// prefix, HEAD, HEAD~2).
func (r *Repo) Resolve(rev string) (*object.Commit, error) {
	if n, err := strconv.Atoi(rev); err == nil && len(rev) < 7 {
		hist, err := r.History()
		if err != nil {
			return nil, err
		}
		for _, e := range hist {
			if e.Record.Number == n {
				return r.git.CommitObject(e.Hash)
			}
		}
		return nil, fmt.Errorf("%w %q: there is no run %d; see castellan history", ErrUnknownRevision, rev, n)
	}
	h, err := r.git.ResolveRevision(plumbing.Revision(rev))
	if err != nil {
		return nil, fmt.Errorf("%w %q: give a run number from castellan history, or a commit of %s", ErrUnknownRevision, rev, r.dir)
	}
	return r.git.CommitObject(*h)
}

// RunOf returns the run number a commit records (0 for other commits).
func RunOf(c *object.Commit) int {
	n, _ := trailerInt(c.Message, trailerRun)
	return n
}

// FileAt returns a file as it was at a revision.
func (r *Repo) FileAt(rev, name string) ([]byte, error) {
	c, err := r.Resolve(rev)
	if err != nil {
		return nil, err
	}
	return fileIn(c, name)
}

// Diff is a unified diff of the state between two revisions: profile,
// known_hosts and rendered files in full; secrets by name only (their
// ciphertext says nothing); run records left out (see history).
func (r *Repo) Diff(from, to string) (string, error) {
	a, err := r.Resolve(from)
	if err != nil {
		return "", err
	}
	b, err := r.Resolve(to)
	if err != nil {
		return "", err
	}
	ta, err := a.Tree()
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", from, err)
	}
	tb, err := b.Tree()
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", to, err)
	}
	changes, err := ta.Diff(tb)
	if err != nil {
		return "", fmt.Errorf("diffing %s..%s: %w", from, to, err)
	}
	var shown object.Changes
	var secrets []string
	for _, ch := range changes {
		name := ch.To.Name
		if name == "" {
			name = ch.From.Name
		}
		switch {
		case strings.HasPrefix(name, runsDir+"/"):
		case strings.HasPrefix(name, secretsDir+"/"):
			action, _ := ch.Action()
			secrets = append(secrets, fmt.Sprintf("secret %s: %s", strings.TrimSuffix(strings.TrimPrefix(name, secretsDir+"/"), ".age"), strings.ToLower(action.String())))
		default:
			shown = append(shown, ch)
		}
	}
	var out strings.Builder
	if len(shown) > 0 {
		patch, err := shown.Patch()
		if err != nil {
			return "", fmt.Errorf("diffing %s..%s: %w", from, to, err)
		}
		out.WriteString(patch.String())
	}
	for _, s := range secrets {
		out.WriteString(s + "\n")
	}
	return out.String(), nil
}
