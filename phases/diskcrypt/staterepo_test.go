package diskcrypt

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/object"

	"castellan/installer/engine"
	"castellan/installer/state"
)

// TestStateRepoHoldsNoPlaintextSecret encrypts a disk, rotates its recovery
// passphrase and re-enrols its TPM with the real state repo (go-git, age),
// commits each run, and scans every blob of every commit (and the run's
// events, and the node's files, its disk image included) for the
// passphrases and the header area in plaintext.
func TestStateRepoHoldsNoPlaintextSecret(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is missing")
	}
	dir := filepath.Join(t.TempDir(), "state")
	keys, err := state.LoadKeys(nil, filepath.Join(t.TempDir(), "age-identity.txt"), true)
	if err != nil {
		t.Fatal(err)
	}
	lock, err := state.LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lock.Unlock)
	repo, err := state.Create(dir, keys, lock)
	if err != nil {
		t.Fatal(err)
	}
	f := newFlow(t, repo)
	commit := func(res engine.Result) {
		t.Helper()
		n, err := repo.NextRunNumber()
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		rec := &state.Record{Number: n, Command: "apply", Who: "test", Version: "test", Started: now, Finished: now,
			Nodes: []string{"server-1"}, Outcome: res.Outcome, Phases: res.Phases}
		if _, err := repo.Commit(state.Snapshot{Record: rec, Profile: []byte(flowProfile), Nodes: []string{"server-1"}}); err != nil {
			t.Fatal(err)
		}
	}
	commit(f.apply())
	f.checkDone([]int{7}, 1)
	uuid := f.uuid()
	f.prof.Spec.DiskEncryption.RecoveryGeneration = 2
	commit(f.apply())
	f.prof.Spec.DiskEncryption.PCRs = []int{0, 7}
	commit(f.apply())
	f.checkDone([]int{0, 7}, 2)

	var secrets [][]byte
	for _, name := range []string{recoverySecret("server-1", uuid, 1), recoverySecret("server-1", uuid, 2)} {
		secrets = append(secrets, f.secret(name))
	}
	hdr := f.secret(headerSecret("server-1", uuid))
	// A slice of the keyslots area (random bytes) stands for the header.
	secrets = append(secrets, hdr[MetadataSize*2:MetadataSize*2+64])
	names, _ := repo.SecretNames()
	for _, want := range []string{"diskcrypt/server-1/" + uuid + "/recovery-1", "diskcrypt/server-1/" + uuid + "/recovery-2", "diskcrypt/server-1/" + uuid + "/header"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("secret %s missing from %v", want, names)
		}
	}
	g, err := git.PlainOpen(dir)
	if err != nil {
		t.Fatal(err)
	}
	blobs, err := g.BlobObjects()
	if err != nil {
		t.Fatal(err)
	}
	scanned := 0
	err = blobs.ForEach(func(b *object.Blob) error {
		scanned++
		rd, err := b.Reader()
		if err != nil {
			return err
		}
		defer rd.Close()
		var buf bytes.Buffer
		if _, err := buf.ReadFrom(rd); err != nil {
			return err
		}
		for i, s := range secrets {
			if bytes.Contains(buf.Bytes(), s) {
				t.Errorf("blob %s holds secret %d in plaintext", b.Hash, i)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if scanned < 6 {
		t.Errorf("scanned only %d blobs", scanned)
	}
	f.noPlaintext(secrets[:2]...) // the header is on the disk, of course
}
