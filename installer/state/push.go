package state

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing/transport"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"github.com/skeema/knownhosts"
	gossh "golang.org/x/crypto/ssh"
)

// Remote says where and how to push the state repo.
type Remote struct {
	// URL is an SSH URL (ssh://user@host:port/path or user@host:path).
	URL string
	// KeyFile is the private key to authenticate with; when empty, the keys
	// of the ssh-agent at $SSH_AUTH_SOCK are used (UseAgent must be set).
	KeyFile  string
	UseAgent bool
	// KnownHostsFile verifies the remote's host key; it is required.
	KnownHostsFile string
}

const remoteName = "castellan"

// Push pushes the main branch to the remote over SSH, verifying its host key
// against KnownHostsFile. The remote's history is never rewritten: a
// non-fast-forward is an error that says to reconcile by hand.
//
// When ctx ends, Push returns at once; a connection stuck in its SSH
// handshake (which go-git runs without a context) is abandoned.
func (r *Repo) Push(ctx context.Context, rm Remote) error {
	if rm.KnownHostsFile == "" {
		return errors.New("pushing the state repo: a known_hosts file for the remote is required")
	}
	if rm.KeyFile == "" && !rm.UseAgent {
		return errors.New("pushing the state repo: a key file for the remote (or the ssh-agent) is required")
	}
	ep, err := transport.NewEndpoint(rm.URL)
	if err != nil {
		return fmt.Errorf("pushing the state repo: remote URL %q: %w", rm.URL, err)
	}
	if ep.Protocol != "ssh" {
		return fmt.Errorf("pushing the state repo: remote URL %q: not an SSH URL (ssh://user@host:port/path or user@host:path)", rm.URL)
	}
	user := ep.User
	if user == "" {
		user = gitssh.DefaultUsername
	}
	hostPort := dialedAddr(ep)

	auth, err := pushAuth(user, rm)
	if err != nil {
		return err
	}
	// go-git would fall back to ~/.ssh/known_hosts for a missing file.
	if _, err := os.Stat(rm.KnownHostsFile); err != nil {
		return fmt.Errorf("pushing the state repo: known_hosts: %w", err)
	}
	db, err := gitssh.NewKnownHostsDb(rm.KnownHostsFile)
	if err != nil {
		return fmt.Errorf("pushing the state repo: known_hosts %s: %w", rm.KnownHostsFile, err)
	}
	// Ask the server for a key of a type known_hosts has for it: by
	// default it would send its preferred one, which known_hosts may lack
	// (a "key mismatch" for a host whose other key is known).
	auth.setHostKeys(db.HostKeyCallback(), db.HostKeyAlgorithms(hostPort))
	if err := r.setRemote(rm.URL); err != nil {
		return fmt.Errorf("pushing the state repo: %w", err)
	}

	done := make(chan error, 1)
	go func() {
		done <- r.git.PushContext(ctx, &git.PushOptions{
			RemoteName: remoteName,
			RefSpecs:   []config.RefSpec{config.RefSpec("refs/heads/" + branch + ":refs/heads/" + branch)},
			Auth:       auth.AuthMethod,
		})
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	host := knownhosts.Normalize(hostPort)
	switch {
	case err == nil, errors.Is(err, git.NoErrAlreadyUpToDate):
		return nil
	case knownhosts.IsHostKeyChanged(err):
		return fmt.Errorf("pushing the state repo to %s: the host key of %s does not match the one in %s: "+
			"the remote was reinstalled or someone is in between; check the key out of band and update the file by hand: %w",
			rm.URL, host, rm.KnownHostsFile, err)
	case knownhosts.IsHostUnknown(err):
		return fmt.Errorf("pushing the state repo to %s: the host key of %s is not in %s: "+
			"check the key out of band and add it: %w", rm.URL, host, rm.KnownHostsFile, err)
	case errors.Is(err, git.ErrNonFastForwardUpdate) || strings.Contains(err.Error(), "non-fast-forward"):
		return fmt.Errorf("pushing the state repo to %s: the remote has runs this repo does not; fetch and reconcile by hand, castellan never overwrites history: %w", rm.URL, err)
	default:
		return fmt.Errorf("pushing the state repo to %s: %w", rm.URL, err)
	}
}

// hostKeyAuth is a go-git SSH auth method whose host key checking we set.
type hostKeyAuth struct {
	gitssh.AuthMethod
	setHostKeys func(cb gossh.HostKeyCallback, algos []string)
}

// pushAuth authenticates with the key file, or with the ssh-agent.
func pushAuth(user string, rm Remote) (hostKeyAuth, error) {
	if rm.KeyFile != "" {
		a, err := gitssh.NewPublicKeysFromFile(user, rm.KeyFile, "")
		if err != nil {
			return hostKeyAuth{}, fmt.Errorf("pushing the state repo: key %s: %w", rm.KeyFile, err)
		}
		return hostKeyAuth{a, func(cb gossh.HostKeyCallback, algos []string) { a.HostKeyCallback, a.HostKeyAlgorithms = cb, algos }}, nil
	}
	if os.Getenv("SSH_AUTH_SOCK") == "" {
		return hostKeyAuth{}, errors.New("pushing the state repo: no key file for the remote and SSH_AUTH_SOCK is empty (is ssh-agent running?)")
	}
	a, err := gitssh.NewSSHAgentAuth(user)
	if err != nil {
		return hostKeyAuth{}, fmt.Errorf("pushing the state repo: ssh-agent: %w", err)
	}
	return hostKeyAuth{a, func(cb gossh.HostKeyCallback, algos []string) { a.HostKeyCallback, a.HostKeyAlgorithms = cb, algos }}, nil
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

// dialedAddr is the host:port go-git's ssh transport dials for ep, and so
// the name it checks in known_hosts: like it, it honours a HostName (and
// Port) set for the host in ~/.ssh/config.
func dialedAddr(ep *transport.Endpoint) string {
	host, port := ep.Host, ep.Port
	if cfg := gitssh.DefaultSSHConfig; cfg != nil {
		if h := cfg.Get(ep.Host, "Hostname"); h != "" {
			host = h
			if p, err := strconv.Atoi(cfg.Get(ep.Host, "Port")); err == nil {
				port = p
			}
		}
	}
	if port <= 0 {
		port = gitssh.DefaultPort
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}
