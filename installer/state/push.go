package state

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
)

// Remote says where and how to push the state repo.
type Remote struct {
	// URL is an SSH URL (ssh://user@host:port/path or user@host:path).
	URL string
	// KeyFile is the private key to authenticate with.
	KeyFile string
	// KnownHostsFile verifies the remote's host key; it is required.
	KnownHostsFile string
}

const remoteName = "castellan"

// Push pushes the main branch to the remote over SSH, verifying its host key
// against KnownHostsFile. The remote's history is never rewritten: a
// non-fast-forward is an error that says to reconcile by hand.
func (r *Repo) Push(ctx context.Context, rm Remote) error {
	if rm.KnownHostsFile == "" {
		return errors.New("pushing the state repo: a known_hosts file for the remote is required")
	}
	user := sshUser(rm.URL)
	auth, err := gitssh.NewPublicKeysFromFile(user, rm.KeyFile, "")
	if err != nil {
		return fmt.Errorf("pushing the state repo: key %s: %w", rm.KeyFile, err)
	}
	db, err := gitssh.NewKnownHostsDb(rm.KnownHostsFile)
	if err != nil {
		return fmt.Errorf("pushing the state repo: known_hosts %s: %w", rm.KnownHostsFile, err)
	}
	auth.HostKeyCallback = db.HostKeyCallback()
	if err := r.setRemote(rm.URL); err != nil {
		return err
	}
	err = r.git.PushContext(ctx, &git.PushOptions{
		RemoteName: remoteName,
		RefSpecs:   []config.RefSpec{config.RefSpec("refs/heads/" + branch + ":refs/heads/" + branch)},
		Auth:       auth,
	})
	switch {
	case err == nil, errors.Is(err, git.NoErrAlreadyUpToDate):
		return nil
	case errors.Is(err, git.ErrNonFastForwardUpdate) || strings.Contains(err.Error(), "non-fast-forward"):
		return fmt.Errorf("pushing the state repo to %s: the remote has runs this repo does not; fetch and reconcile by hand, castellan never overwrites history: %w", rm.URL, err)
	default:
		return fmt.Errorf("pushing the state repo to %s: %w", rm.URL, err)
	}
}

func (r *Repo) setRemote(u string) error {
	if rem, err := r.git.Remote(remoteName); err == nil {
		if len(rem.Config().URLs) == 1 && rem.Config().URLs[0] == u {
			return nil
		}
		if err := r.git.DeleteRemote(remoteName); err != nil {
			return fmt.Errorf("updating remote: %w", err)
		}
	}
	if _, err := r.git.CreateRemote(&config.RemoteConfig{Name: remoteName, URLs: []string{u}}); err != nil {
		return fmt.Errorf("configuring remote %s: %w", u, err)
	}
	return nil
}

// sshUser is the user part of an SSH URL, "git" when it has none.
func sshUser(u string) string {
	if p, err := url.Parse(u); err == nil && p.Scheme != "" && p.User != nil {
		return p.User.Username()
	}
	if at := strings.Index(u, "@"); at > 0 && !strings.Contains(u[:at], "/") {
		return u[:at]
	}
	return "git"
}
