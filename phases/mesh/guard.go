package mesh

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"castellan/installer/agent"
)

// Guard bounds (seconds).
const (
	MinGuardSeconds     = 5
	MaxGuardSeconds     = 900
	DefaultGuardSeconds = 60
)

// ErrCodeReverted is the agent error code of a confirmation that came too
// late: the guard had restored the previous rules.
const ErrCodeReverted = "reverted"

// lockGuard takes the guard's lock (flock(2) on GuardLock); the returned
// function releases it.
func (n *Node) lockGuard() (func(), error) {
	p := n.path(GuardLock)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", GuardLock, err)
	}
	return func() { f.Close() }, nil
}

func (n *Node) writeGuard(g *GuardState) error {
	data, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		return err
	}
	_, err = n.writeFile(GuardFile, append(data, '\n'), 0o600, -1)
	return err
}

// ApplyFirewall replaces the live table with req.Ruleset under a revert
// guard: first a detached guard process is started, then the table is
// replaced atomically (one nf_tables transaction). Unless Confirm comes with
// the same token within req.GuardSeconds, the guard restores the previously
// confirmed ruleset (or removes the table when there was none) by itself,
// whatever happens to the installer or its connection. Nothing is persisted
// for the next boot before the confirmation: a reboot in between loads the
// previously confirmed rules.
//
// When the live table already is the confirmed ruleset, nothing happens
// (Unchanged). Calling it again with the token of a pending guard returns
// that guard's apply.
func (n *Node) ApplyFirewall(ctx context.Context, req FirewallRequest) (FirewallResult, error) {
	rs := req.Ruleset.Normalize()
	if err := rs.Check(); err != nil {
		return FirewallResult{}, err
	}
	if req.Token == "" || len(req.Token) > 128 {
		return FirewallResult{}, errors.New("a guard token of 1-128 characters is required")
	}
	if req.GuardSeconds < MinGuardSeconds || req.GuardSeconds > MaxGuardSeconds {
		return FirewallResult{}, fmt.Errorf("guard of %d s: want %d-%d s", req.GuardSeconds, MinGuardSeconds, MaxGuardSeconds)
	}
	unlock, err := n.lockGuard()
	if err != nil {
		return FirewallResult{}, err
	}
	defer unlock()
	conn, err := n.nft()
	if err != nil {
		return FirewallResult{}, err
	}
	g, err := n.readGuard()
	if err != nil {
		return FirewallResult{}, err
	}
	if g != nil && g.State == GuardPending {
		if g.Token == req.Token {
			return FirewallResult{Applied: g.Applied, Deadline: g.Deadline}, nil
		}
		if n.now().Before(g.Deadline.Add(5 * time.Second)) {
			return FirewallResult{}, fmt.Errorf("another guarded firewall apply (token %s) is pending until %s: wait for its confirmation or revert", g.Token, g.Deadline.Format(time.RFC3339))
		}
		// Its guard died (killed, or the node is short of memory): revert
		// on its behalf before going on.
		if err := n.revertLocked(g, "the guard of this apply did not act by its deadline"); err != nil {
			return FirewallResult{}, err
		}
	}
	live, err := TableDigest(conn)
	if err != nil {
		return FirewallResult{}, err
	}
	conf, err := n.readConfirmed()
	if err != nil {
		return FirewallResult{}, err
	}
	if conf != nil && conf.Applied.Spec == rs.Hash() && conf.Applied.Digest == live && live != "" {
		return FirewallResult{Applied: conf.Applied, Unchanged: true}, nil
	}
	ng := &GuardState{Token: req.Token, State: GuardPending, Deadline: n.now().Add(time.Duration(req.GuardSeconds) * time.Second).UTC(),
		Applied: Applied{Spec: rs.Hash()}, Ruleset: rs}
	if conf != nil {
		ng.Previous = conf.Applied
		prev := conf.Ruleset
		ng.PreviousRuleset = &prev
	}
	if err := n.writeGuard(ng); err != nil {
		return FirewallResult{}, fmt.Errorf("recording the guard: %w", err)
	}
	pid, err := n.startGuard(GuardRequest{Token: req.Token})
	if err != nil {
		ng.State, ng.RevertReason, ng.Reverted = GuardReverted, "the guard could not start; nothing was applied", n.now().UTC()
		_ = n.writeGuard(ng)
		return FirewallResult{}, fmt.Errorf("starting the revert guard (nothing applied): %w", err)
	}
	ng.PID = pid
	if err := applyRuleset(conn, rs); err != nil {
		ng.State, ng.RevertReason, ng.Reverted = GuardReverted, "applying failed; the kernel kept the previous rules", n.now().UTC()
		_ = n.writeGuard(ng)
		return FirewallResult{}, err
	}
	if ng.Applied.Digest, err = TableDigest(conn); err != nil {
		return FirewallResult{}, err
	}
	if err := n.writeGuard(ng); err != nil {
		return FirewallResult{}, err
	}
	return FirewallResult{Applied: ng.Applied, Deadline: ng.Deadline}, ctx.Err()
}

// startGuard starts the detached guard process in the node's network
// namespace, in a session of its own (no SIGHUP when the SSH session that
// started it ends).
func (n *Node) startGuard(req GuardRequest) (int, error) {
	argv := n.GuardCommand
	if argv == nil {
		exe, err := os.Executable()
		if err != nil {
			return 0, err
		}
		argv = []string{exe, "agent", OpGuard.Name}
	}
	in, err := json.Marshal(req)
	if err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(n.path("/run/castellan/mesh/guard.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), n.GuardEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := n.inNS(cmd.Start); err != nil {
		return 0, err
	}
	pid := cmd.Process.Pid
	go func() { _ = cmd.Wait() }() // reap it if this process outlives it (tests)
	return pid, nil
}

// RunGuard is the detached guard: it waits until the guard's deadline and,
// unless the apply was confirmed (or reverted) meanwhile, restores the
// previous rules and records why. It checks the record every 200 ms, so it
// ends soon after a confirmation.
func (n *Node) RunGuard(ctx context.Context, req GuardRequest) (GuardState, error) {
	for {
		g, err := n.readGuard()
		if err != nil {
			return GuardState{}, err
		}
		if g == nil || g.Token != req.Token {
			return GuardState{}, fmt.Errorf("no guard with token %s", req.Token)
		}
		if g.State != GuardPending {
			return *g, nil
		}
		if !n.now().Before(g.Deadline) {
			break
		}
		select {
		case <-ctx.Done():
			// Asked to stop early (SIGTERM): revert now rather than leave
			// unconfirmed rules in place.
			res, err := n.Revert(context.WithoutCancel(ctx), ConfirmRequest{Token: req.Token, Reason: "the guard was stopped before a confirmation came"})
			return res.Guard, err
		case <-time.After(200 * time.Millisecond):
		}
	}
	res, err := n.Revert(ctx, ConfirmRequest{Token: req.Token, Reason: "no confirmation came within the guard's bound"})
	return res.Guard, err
}

// Confirm ends a guarded apply: the rules stay, and they are persisted for
// the next boot (FirewallFiles, the unit enabled through its
// sysinit.target.wants link) and recorded as confirmed. It fails with
// ErrCodeReverted when the guard had already restored the previous rules,
// and when the live table is not what the guarded apply put there.
func (n *Node) Confirm(_ context.Context, req ConfirmRequest) (ConfirmResult, error) {
	unlock, err := n.lockGuard()
	if err != nil {
		return ConfirmResult{}, err
	}
	defer unlock()
	g, err := n.readGuard()
	if err != nil {
		return ConfirmResult{}, err
	}
	if g == nil || g.Token != req.Token {
		return ConfirmResult{}, fmt.Errorf("no guarded firewall apply with token %s on this node", req.Token)
	}
	switch g.State {
	case GuardReverted:
		return ConfirmResult{Guard: *g}, &agent.CodedError{Code: ErrCodeReverted, Err: fmt.Errorf("too late: the previous rules were restored at %s (%s)", g.Reverted.Format(time.RFC3339), g.RevertReason)}
	case GuardPending:
		conn, err := n.nft()
		if err != nil {
			return ConfirmResult{}, err
		}
		live, err := TableDigest(conn)
		if err != nil {
			return ConfirmResult{}, err
		}
		if live != g.Applied.Digest {
			return ConfirmResult{Guard: *g}, fmt.Errorf("the live table (digest %.16s) is not the one this apply put in place (%.16s): not confirming", live, g.Applied.Digest)
		}
		g.State = GuardConfirmed
		if err := n.writeGuard(g); err != nil {
			return ConfirmResult{}, err
		}
	}
	res := ConfirmResult{Guard: *g}
	changed, err := n.persistFirewall(g.Ruleset, g.Applied)
	res.Changed = changed
	return res, err
}

func (n *Node) persistFirewall(rs Ruleset, a Applied) ([]string, error) {
	var changed []string
	rec, err := json.MarshalIndent(confirmedRecord{Applied: a, Ruleset: rs}, "", "  ")
	if err != nil {
		return nil, err
	}
	files := FirewallFiles(rs)
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{FirewallFile, files[FirewallFile], 0o644}, {FirewallUnit, files[FirewallUnit], 0o644}, {ConfirmedFile, append(rec, '\n'), 0o600}} {
		wrote, err := n.writeFile(f.path, f.data, f.mode, -1)
		if err != nil {
			return changed, fmt.Errorf("writing %s: %w", f.path, err)
		}
		if wrote {
			changed = append(changed, "file "+f.path+" written")
		}
	}
	link := n.path(FirewallUnitLink)
	if target, err := os.Readlink(link); err != nil || target != FirewallUnit {
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return changed, err
		}
		_ = os.Remove(link)
		if err := os.Symlink(FirewallUnit, link); err != nil {
			return changed, fmt.Errorf("enabling %s: %w", filepath.Base(FirewallUnit), err)
		}
		changed = append(changed, "unit "+filepath.Base(FirewallUnit)+" enabled")
	}
	return changed, nil
}

// Revert restores the previous rules now (a failed check: no need to wait
// for the guard). Reverting an apply that was already reverted is a no-op;
// a confirmed one cannot be reverted.
func (n *Node) Revert(_ context.Context, req ConfirmRequest) (ConfirmResult, error) {
	unlock, err := n.lockGuard()
	if err != nil {
		return ConfirmResult{}, err
	}
	defer unlock()
	g, err := n.readGuard()
	if err != nil {
		return ConfirmResult{}, err
	}
	if g == nil || g.Token != req.Token {
		return ConfirmResult{}, fmt.Errorf("no guarded firewall apply with token %s on this node", req.Token)
	}
	switch g.State {
	case GuardConfirmed:
		return ConfirmResult{Guard: *g}, errors.New("this apply was confirmed: apply another ruleset instead")
	case GuardReverted:
		return ConfirmResult{Guard: *g}, nil
	}
	reason := req.Reason
	if reason == "" {
		reason = "reverted on request"
	}
	err = n.revertLocked(g, reason)
	return ConfirmResult{Guard: *g}, err
}

func (n *Node) revertLocked(g *GuardState, reason string) error {
	c, err := n.nft()
	if err != nil {
		return err
	}
	if g.PreviousRuleset != nil {
		err = applyRuleset(c, *g.PreviousRuleset)
	} else {
		err = deleteTable(c)
	}
	if err != nil {
		return fmt.Errorf("restoring the previous rules: %w", err)
	}
	g.State, g.Reverted, g.RevertReason = GuardReverted, n.now().UTC(), reason
	return n.writeGuard(g)
}
