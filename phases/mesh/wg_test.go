package mesh

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"castellan/installer/testenv"
)

func requireTun(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		testenv.Missing(t, "needs /dev/net/tun for userspace WireGuard: %v", err)
	}
}

// startWireGuard runs a userspace WireGuard device (wireguard-go) named name
// in n's namespace, as a process of its own; stopped by t.Cleanup. The name
// is unique per test: the UAPI socket directory is shared by all namespaces.
func (n *testNode) startWireGuard(t *testing.T, name string) {
	t.Helper()
	requireTun(t)
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "MESH_TEST_WG="+name)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := n.node().inNS(cmd.Start); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		_ = os.Remove("/var/run/wireguard/" + name + ".sock")
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("wireguard-go %s: %q %v: %s", name, line, err, stderr.String())
	}
}

// meshOf is a test mesh: userspace WireGuard devices on tn's nodes, keys
// made by EnsureKey, addresses 10.99.0.(i+1)/24.
type meshOf struct {
	tn     *testNet
	ifaces []string
	keys   []string
	addrs  []netip.Addr
}

func newMesh(t *testing.T, tn *testNet) *meshOf {
	m := &meshOf{tn: tn}
	for i, n := range tn.nodes {
		name := fmt.Sprintf("cm%sw%d", tn.id, i+1)
		n.startWireGuard(t, name)
		k, err := n.node().EnsureKey(context.Background(), KeyRequest{})
		if err != nil || !k.Created {
			t.Fatalf("%s: ensure key: %+v %v", n.name, k, err)
		}
		m.ifaces = append(m.ifaces, name)
		m.keys = append(m.keys, k.PublicKey)
		m.addrs = append(m.addrs, netip.AddrFrom4([4]byte{10, 99, 0, byte(i + 1)}))
	}
	return m
}

// config is node i's configuration with the given peers (indexes).
func (m *meshOf) config(i int, peers ...int) DeviceConfig {
	c := DeviceConfig{Interface: m.ifaces[i], Address: netip.PrefixFrom(m.addrs[i], 24), ListenPort: 51871, KeepaliveSeconds: DefaultKeepaliveSeconds}
	for _, p := range peers {
		c.Peers = append(c.Peers, Peer{Name: m.tn.nodes[p].name, PublicKey: m.keys[p], Address: m.addrs[p], Endpoint: netip.AddrPortFrom(m.tn.nodes[p].addr, 51871)})
	}
	return c
}

func others(n, i int) []int {
	var out []int
	for j := range n {
		if j != i {
			out = append(out, j)
		}
	}
	return out
}

// TestMeshCarriesTraffic: three userspace WireGuard peers in namespaces,
// configured by Configure through wgctrl, ping each other and carry TCP over
// their mesh addresses; a rerun changes nothing; removing a peer changes
// only that peer; with the firewall on, a port that is closed on the
// underlay answers over the mesh.
func TestMeshCarriesTraffic(t *testing.T) {
	requireNFT(t)
	tn := newTestNet(t, 3)
	m := newMesh(t, tn)
	ctx := context.Background()
	start := time.Now()
	for i, n := range tn.nodes {
		res, err := n.node().Configure(ctx, m.config(i, others(3, i)...))
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		if len(res.Changed) < 4 {
			t.Errorf("%s: first configure changed only %v", n.name, res.Changed)
		}
	}
	t.Logf("3 nodes configured in %s", time.Since(start))
	for i, n := range tn.nodes {
		var targets []netip.Addr
		for _, j := range others(3, i) {
			targets = append(targets, m.addrs[j])
		}
		start := time.Now()
		pr, err := n.node().Probe(ctx, ProbeRequest{Targets: targets})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range pr.Results {
			if !r.OK {
				t.Errorf("%s cannot ping %s over the mesh: %s", n.name, r.Target, r.Error)
			}
		}
		t.Logf("%s pinged %d peers over the mesh in %s (first echo includes the handshake): %+v", n.name, len(targets), time.Since(start).Round(time.Millisecond), pr.Results)
	}
	tn.nodes[1].listen(t, 8080)
	if got, err := tn.nodes[0].dial(m.addrs[1], 8080, 2*time.Second); err != nil || got != "hello from n2" {
		t.Errorf("TCP over the mesh: %q %v", got, err)
	}

	// Observe sees what was configured.
	o, err := tn.nodes[0].node().Observe(ctx, ObserveRequest{Interface: m.ifaces[0]})
	if err != nil || o.Device == nil {
		t.Fatalf("observe: %+v %v", o, err)
	}
	if o.Device.PublicKey != m.keys[0] || o.Key.PublicKey != m.keys[0] || len(o.Device.Peers) != 2 || o.Device.ListenPort != 51871 || !o.Device.Up {
		t.Errorf("observed device %+v key %+v", o.Device, o.Key)
	}
	if !slices.Contains(o.Device.Addresses, netip.MustParsePrefix("10.99.0.1/24")) {
		t.Errorf("addresses %v", o.Device.Addresses)
	}
	for _, p := range o.Device.Peers {
		if p.LastHandshake.IsZero() || time.Since(p.LastHandshake) > time.Minute {
			t.Errorf("peer %s: no recent handshake (%v)", p.PublicKey, p.LastHandshake)
		}
	}
	if o.Files[NetdevFile] == "" || o.Files[NetworkFile] == "" {
		t.Errorf("files not persisted: %v", o.Files)
	}
	if o.Files[NetdevFile] != hashBytes(m.config(0, 1, 2).Files()[NetdevFile]) {
		t.Errorf("persisted .netdev differs from the rendered one")
	}

	// A rerun changes nothing.
	for i, n := range tn.nodes {
		res, err := n.node().Configure(ctx, m.config(i, others(3, i)...))
		if err != nil || len(res.Changed) != 0 {
			t.Errorf("%s: rerun changed %v (%v)", n.name, res.Changed, err)
		}
	}
	// n3 leaves: n1 and n2 each lose exactly that peer.
	for i := range 2 {
		res, err := tn.nodes[i].node().Configure(ctx, m.config(i, 1-i))
		want := []string{"peer " + m.keys[2] + " removed", "file " + NetdevFile + " written"}
		if err != nil || !slices.Equal(res.Changed, want) {
			t.Errorf("n%d: removing n3 changed %v (%v), want %v", i+1, res.Changed, err, want)
		}
	}
	if pr, _ := tn.nodes[0].node().Probe(ctx, ProbeRequest{Targets: []netip.Addr{m.addrs[1], m.addrs[2]}, TimeoutMillis: 1500}); !pr.Results[0].OK || pr.Results[1].OK {
		t.Errorf("after removing n3: %+v", pr.Results)
	}
	// Back in, with the firewall on every node.
	for i, n := range tn.nodes {
		if _, err := n.node().Configure(ctx, m.config(i, others(3, i)...)); err != nil {
			t.Fatal(err)
		}
		c, _ := n.node().nft()
		if err := applyRuleset(c, testRuleset(tn, i, m.ifaces[i])); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tn.nodes[0].dial(tn.nodes[1].addr, 8080, 700*time.Millisecond); err == nil {
		t.Errorf("port 8080 answered on the underlay with the firewall on")
	}
	if got, err := tn.nodes[0].dial(m.addrs[1], 8080, 2*time.Second); err != nil || got != "hello from n2" {
		t.Errorf("port 8080 over the mesh with the firewall on: %q %v", got, err)
	}
	if pr, _ := tn.nodes[2].node().Probe(ctx, ProbeRequest{Targets: []netip.Addr{m.addrs[0], m.addrs[1]}}); !pr.Results[0].OK || !pr.Results[1].OK {
		t.Errorf("mesh pings with the firewall on: %+v", pr.Results)
	}
}
