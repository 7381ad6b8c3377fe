package mesh

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testRuleset(tn *testNet, self int, iface string) Ruleset {
	rs := Ruleset{Interface: iface, Port: 51871, SSHPort: 22, SSHFrom: []netip.Prefix{netip.PrefixFrom(tn.installer.addr, 32)}}
	for i, n := range tn.nodes {
		if i != self {
			rs.Peers = append(rs.Peers, n.addr)
		}
	}
	return rs
}

// TestFirewallClosesTheUnderlay applies a node's ruleset for real (nf_tables
// in a test namespace) and proves with real connections that between nodes
// only the mesh's UDP port passes, SSH only from the installer, and that a
// connection a peer opened before the rules does not survive them.
func TestFirewallClosesTheUnderlay(t *testing.T) {
	requireNFT(t)
	tn := newTestNet(t, 3)
	n1, n2, inst := tn.nodes[0], tn.nodes[1], tn.installer
	n1.listen(t, 22)
	n1.listen(t, 8080)
	n1.listenUDP(t, 51871)
	n1.listenUDP(t, 51872)
	n2.listen(t, 8080)
	inst.listen(t, 8080)
	const short = 700 * time.Millisecond

	// Before: everything is open; a connection n2 -> n1:8080 is kept open.
	var early net.Conn
	if err := n2.node().inNS(func() error {
		var err error
		early, err = net.DialTimeout("tcp", netip.AddrPortFrom(n1.addr, 8080).String(), time.Second)
		return err
	}); err != nil {
		t.Fatalf("before the rules: %v", err)
	}
	defer early.Close()
	rd := bufio.NewReader(early)
	if _, err := rd.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	var sshEarly net.Conn
	if err := inst.node().inNS(func() error {
		var err error
		sshEarly, err = net.DialTimeout("tcp", netip.AddrPortFrom(n1.addr, 22).String(), time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sshEarly.Close()

	c, err := n1.node().nft()
	if err != nil {
		t.Fatal(err)
	}
	rs := testRuleset(tn, 0, "wgtest0")
	start := time.Now()
	if err := applyRuleset(c, rs); err != nil {
		t.Fatal(err)
	}
	t.Logf("ruleset applied in %s", time.Since(start))

	tcp := []struct {
		from *testNode
		to   netip.Addr
		port int
		ok   bool
		why  string
	}{
		{inst, n1.addr, 22, true, "SSH from the installer"},
		{n2, n1.addr, 22, false, "SSH from another node on the underlay"},
		{n2, n1.addr, 8080, false, "another port from a node"},
		{inst, n1.addr, 8080, false, "another port from the installer"},
		{n1, n2.addr, 8080, false, "out to a peer's underlay, not the mesh port"},
		{n1, inst.addr, 8080, true, "out to a non-node (the installer's side)"},
	}
	for _, c := range tcp {
		got, err := c.from.dial(c.to, c.port, short)
		if ok := err == nil && strings.HasPrefix(got, "hello"); ok != c.ok {
			t.Errorf("%s: %s -> %s:%d: ok=%v (%q, %v), want %v", c.why, c.from.name, c.to, c.port, ok, got, err, c.ok)
		}
	}
	if err := n2.udpEcho(n1.addr, 51871, 51871, short); err != nil {
		t.Errorf("the mesh port from a peer: %v", err)
	}
	if err := inst.udpEcho(n1.addr, 51871, 51871, short); err == nil {
		t.Errorf("the mesh port from a non-node passed")
	}
	if err := n2.udpEcho(n1.addr, 51871, 51872, short); err == nil {
		t.Errorf("another UDP port from a peer passed")
	}
	// The connection n2 opened before: its next packets are checked like new
	// ones, so it is dead; the installer's SSH connection lives on.
	_ = early.SetDeadline(time.Now().Add(short))
	_, _ = early.Write([]byte("still there?\n"))
	if _, err := rd.ReadString('\n'); err == nil {
		t.Errorf("a connection a peer opened before the rules still carries data")
	}
	_ = sshEarly.SetDeadline(time.Now().Add(short))
	if _, err := bufio.NewReader(sshEarly).ReadString('\n'); err != nil {
		t.Errorf("the installer's SSH connection did not survive the rules: %v", err)
	}
}

// TestRulesetTextMatchesNetlink: the nft script (what the boot unit loads)
// and the netlink batch (what apply does) give the same table, expression
// for expression; applying twice gives the same digest; another ruleset
// another one.
func TestRulesetTextMatchesNetlink(t *testing.T) {
	requireNFT(t)
	tn := newTestNet(t, 2)
	n1, n2 := tn.nodes[0], tn.nodes[1]
	cases := map[string]Ruleset{
		"lab":     testRuleset(tn, 0, "wg-castellan"),
		"sources": {Interface: "wg0", Port: 51900, SSHPort: 2222, SSHFrom: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.2.3.0/20"), netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::/48"), netip.MustParsePrefix("2001:db8:1::5/128"), netip.MustParsePrefix("0.0.0.0/0")}, Peers: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}},
		"nopeers": {Interface: "wg-castellan", Port: 51871, SSHPort: 22, SSHFrom: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}},
	}
	digests := map[string]string{}
	for name, rs := range cases {
		t.Run(name, func(t *testing.T) {
			c1, _ := n1.node().nft()
			if err := applyRuleset(c1, rs); err != nil {
				t.Fatal(err)
			}
			d1, err := TableDigest(c1)
			if err != nil || d1 == "" {
				t.Fatalf("digest %q %v", d1, err)
			}
			if err := applyRuleset(c1, rs); err != nil {
				t.Fatal(err)
			}
			if again, _ := TableDigest(c1); again != d1 {
				t.Errorf("applying again changed the digest")
			}
			f := filepath.Join(t.TempDir(), "firewall.nft")
			if err := os.WriteFile(f, rs.RenderNFT(), 0o644); err != nil {
				t.Fatal(err)
			}
			// Twice: the script replaces the table whether or not it exists.
			run(t, "ip", "netns", "exec", n2.ns, "nft", "-f", f)
			run(t, "ip", "netns", "exec", n2.ns, "nft", "-f", f)
			c2, _ := n2.node().nft()
			d2, err := TableDigest(c2)
			if err != nil {
				t.Fatal(err)
			}
			if d1 != d2 {
				t.Errorf("nft -f and netlink give different tables:\n%s\nnft list ruleset after netlink:\n%s\nafter nft -f:\n%s", rs.RenderNFT(),
					run(t, "ip", "netns", "exec", n1.ns, "nft", "list", "ruleset"), run(t, "ip", "netns", "exec", n2.ns, "nft", "list", "ruleset"))
			}
			digests[name] = d1
		})
	}
	if digests["lab"] == digests["nopeers"] || digests["lab"] == "" {
		t.Errorf("different rulesets, same digest: %v", digests)
	}
	c1, _ := n1.node().nft()
	if err := deleteTable(c1); err != nil {
		t.Fatal(err)
	}
	if d, err := TableDigest(c1); d != "" || err != nil {
		t.Errorf("after delete: digest %q %v", d, err)
	}
	if err := deleteTable(c1); err != nil {
		t.Errorf("deleting an absent table: %v", err)
	}
}
