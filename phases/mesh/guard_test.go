package mesh

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"castellan/installer/agent"
)

// guardedNode is n's node side whose revert guard is this test binary,
// started as a process of its own in n's namespace.
func guardedNode(n *testNode) *Node {
	exe, _ := os.Executable()
	nd := n.node()
	nd.GuardCommand = []string{exe}
	nd.GuardEnv = []string{"MESH_TEST_GUARD_ROOT=" + n.root}
	return nd
}

func waitFor(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestGuardRevertsRulesThatCutTheInstallerOff: a confirmed ruleset, then one
// that locks the installer out, never confirmed: the guard process restores
// the confirmed rules by itself within its bound, the installer's SSH
// answers again, and the late confirmation is refused as reverted.
func TestGuardRevertsRulesThatCutTheInstallerOff(t *testing.T) {
	requireNFT(t)
	tn := newTestNet(t, 2)
	n1, inst := tn.nodes[0], tn.installer
	n1.listen(t, 22)
	node := guardedNode(n1)
	ctx := context.Background()
	canSSH := func() bool {
		got, err := inst.dial(n1.addr, 22, 500*time.Millisecond)
		return err == nil && strings.HasPrefix(got, "hello")
	}

	good := testRuleset(tn, 0, "wgtest0")
	res, err := node.ApplyFirewall(ctx, FirewallRequest{Ruleset: good, Token: "run-1", GuardSeconds: MinGuardSeconds})
	if err != nil {
		t.Fatal(err)
	}
	if !canSSH() {
		t.Fatal("the good ruleset cut the installer off")
	}
	conf, err := node.Confirm(ctx, ConfirmRequest{Token: "run-1"})
	if err != nil || conf.Guard.State != GuardConfirmed {
		t.Fatalf("confirm: %+v %v", conf, err)
	}
	for _, f := range []string{FirewallFile, FirewallUnit, ConfirmedFile} {
		if _, err := os.Stat(node.path(f)); err != nil {
			t.Errorf("not persisted after the confirmation: %v", err)
		}
	}
	if target, err := os.Readlink(node.path(FirewallUnitLink)); err != nil || target != FirewallUnit {
		t.Errorf("unit not enabled: %q %v", target, err)
	}
	persisted, _ := os.ReadFile(node.path(FirewallFile))
	// The same ruleset again: nothing to do, no guard.
	if again, err := node.ApplyFirewall(ctx, FirewallRequest{Ruleset: good, Token: "run-2", GuardSeconds: MinGuardSeconds}); err != nil || !again.Unchanged {
		t.Errorf("reapplying the confirmed ruleset: %+v %v", again, err)
	}

	bad := good
	bad.SSHFrom = []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32")} // not where the installer is
	start := time.Now()
	res, err = node.ApplyFirewall(ctx, FirewallRequest{Ruleset: bad, Token: "run-3", GuardSeconds: MinGuardSeconds})
	if err != nil {
		t.Fatal(err)
	}
	g, _ := node.readGuard()
	if g == nil || g.PID == 0 || g.PID == os.Getpid() {
		t.Fatalf("no guard process recorded: %+v", g)
	}
	if canSSH() {
		t.Fatal("the bad ruleset did not cut the installer off (the test proves nothing)")
	}
	waitFor(t, time.Duration(MinGuardSeconds+5)*time.Second, "the installer's SSH is still cut off", canSSH)
	t.Logf("the guard restored the previous rules %s after the apply (bound %d s)", time.Since(start).Round(100*time.Millisecond), MinGuardSeconds)
	c, _ := node.nft()
	if live, _ := TableDigest(c); live != conf.Guard.Applied.Digest {
		t.Errorf("after the revert the table is not the confirmed one")
	}
	g, _ = node.readGuard()
	if g.State != GuardReverted || !strings.Contains(g.RevertReason, "no confirmation") {
		t.Errorf("guard record %+v", g)
	}
	waitFor(t, 3*time.Second, "the guard process is still running", func() bool { return syscall.Kill(g.PID, 0) != nil })
	_, err = node.Confirm(ctx, ConfirmRequest{Token: "run-3"})
	var ce *agent.CodedError
	if !errors.As(err, &ce) || ce.Code != ErrCodeReverted {
		t.Errorf("a late confirmation: %v, want code %s", err, ErrCodeReverted)
	}
	if after, _ := os.ReadFile(node.path(FirewallFile)); string(after) != string(persisted) {
		t.Errorf("the unconfirmed ruleset was persisted for the next boot")
	}
	if res.Deadline.Sub(start) > time.Duration(MinGuardSeconds+1)*time.Second {
		t.Errorf("deadline %s", res.Deadline)
	}
}

// TestGuardFirstApplyRevertsToNoTable: without a confirmed ruleset before,
// the revert removes the table; an explicit revert acts at once.
func TestGuardFirstApplyRevertsToNoTable(t *testing.T) {
	requireNFT(t)
	tn := newTestNet(t, 2)
	n2 := tn.nodes[1]
	node := guardedNode(n2)
	ctx := context.Background()
	rs := testRuleset(tn, 1, "wgtest0")
	if _, err := node.ApplyFirewall(ctx, FirewallRequest{Ruleset: rs, Token: "t1", GuardSeconds: 60}); err != nil {
		t.Fatal(err)
	}
	c, _ := node.nft()
	if d, _ := TableDigest(c); d == "" {
		t.Fatal("no table after apply")
	}
	// Another apply while this one is pending is refused.
	if _, err := node.ApplyFirewall(ctx, FirewallRequest{Ruleset: rs, Token: "t2", GuardSeconds: 60}); err == nil || !strings.Contains(err.Error(), "pending") {
		t.Errorf("a second guarded apply: %v", err)
	}
	r, err := node.Revert(ctx, ConfirmRequest{Token: "t1", Reason: "the mesh check failed"})
	if err != nil || r.Guard.State != GuardReverted {
		t.Fatalf("revert: %+v %v", r, err)
	}
	if d, _ := TableDigest(c); d != "" {
		t.Errorf("a revert of the first apply left a table")
	}
	g, _ := node.readGuard()
	waitFor(t, 3*time.Second, "the guard did not end after the revert", func() bool { return syscall.Kill(g.PID, 0) != nil })
	if _, err := os.Stat(node.path(FirewallFile)); err == nil {
		t.Errorf("a reverted apply was persisted")
	}
}
