package mesh

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"castellan/installer/testenv"
)

// testNet is an underlay made of network namespaces this test creates: a
// switch namespace with a bridge, one namespace per node and one for the
// installer, each plugged into the bridge with a veth (eth0). Torn down by
// t.Cleanup. Traffic stays inside these namespaces.
type testNet struct {
	t         *testing.T
	id        string
	prefix    netip.Prefix
	sw        string
	nodes     []*testNode
	installer *testNode
}

type testNode struct {
	name string
	ns   string
	h    netns.NsHandle
	addr netip.Addr // underlay
	root string     // file system root of the node's files
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root (network namespaces, nftables, tun)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		testenv.Missing(t, "needs ip(8): make test-deps installs iproute2")
	}
}

func requireNFT(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		testenv.Missing(t, "needs nft(8): make test-deps installs nftables")
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func run(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

func newTestNet(t *testing.T, nodes int) *testNet {
	t.Helper()
	requireRoot(t)
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	tn := &testNet{t: t, id: randHex(3), prefix: netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", 200+int(b[0])%50, b[1]))}
	tn.sw = "cm" + tn.id + "-sw"
	t.Cleanup(tn.teardown)
	run(t, "ip", "netns", "add", tn.sw)
	run(t, "ip", "-n", tn.sw, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", tn.sw, "link", "set", "br0", "up")
	mk := func(name string, host int) *testNode {
		n := &testNode{name: name, ns: "cm" + tn.id + "-" + name}
		a := tn.prefix.Addr().As4()
		a[3] = byte(host)
		n.addr = netip.AddrFrom4(a)
		run(t, "ip", "netns", "add", n.ns)
		peer := fmt.Sprintf("v%d", host)
		run(t, "ip", "-n", n.ns, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", tn.sw)
		run(t, "ip", "-n", tn.sw, "link", "set", peer, "master", "br0", "up")
		run(t, "ip", "-n", n.ns, "addr", "add", netip.PrefixFrom(n.addr, 24).String(), "dev", "eth0")
		run(t, "ip", "-n", n.ns, "link", "set", "eth0", "up")
		run(t, "ip", "-n", n.ns, "link", "set", "lo", "up")
		h, err := netns.GetFromName(n.ns)
		if err != nil {
			t.Fatal(err)
		}
		n.h = h
		n.root = t.TempDir()
		return n
	}
	for i := range nodes {
		tn.nodes = append(tn.nodes, mk(fmt.Sprintf("n%d", i+1), 11+i))
	}
	tn.installer = mk("inst", 100)
	return tn
}

func (tn *testNet) teardown() {
	for _, n := range append(tn.nodes, tn.installer) {
		if n == nil {
			continue
		}
		n.h.Close()
		_ = exec.Command("ip", "netns", "del", n.ns).Run()
	}
	_ = exec.Command("ip", "netns", "del", tn.sw).Run()
}

// node is the mesh's node side acting in n's namespace and directory.
func (n *testNode) node() *Node {
	return &Node{Root: n.root, NetNS: n.h}
}

// listen opens a TCP listener on port in n's namespace that accepts and
// answers "hello from NAME" to every connection; closed by t.Cleanup.
func (n *testNode) listen(t testing.TB, port int) {
	t.Helper()
	var l net.Listener
	err := n.node().inNS(func() error {
		var err error
		l, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hello from " + n.name + "\n"))
			c.Close()
		}
	}()
}

// dial connects from n's namespace to addr:port and reads the greeting.
func (n *testNode) dial(addr netip.Addr, port int, timeout time.Duration) (string, error) {
	var c net.Conn
	err := n.node().inNS(func() error {
		var err error
		d := net.Dialer{Timeout: timeout}
		c, err = d.DialContext(context.Background(), "tcp", netip.AddrPortFrom(addr, uint16(port)).String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 64)
	k, err := c.Read(buf)
	return strings.TrimSpace(string(buf[:k])), err
}

// listenUDP echoes every datagram received on port in n's namespace.
func (n *testNode) listenUDP(t testing.TB, port int) {
	t.Helper()
	var c net.PacketConn
	err := n.node().inNS(func() error {
		var err error
		c, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			k, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteTo(buf[:k], from)
		}
	}()
}

// udpEcho sends a datagram from n's namespace (from local port src, 0: any)
// to addr:port and waits for the echo.
func (n *testNode) udpEcho(addr netip.Addr, src, port int, timeout time.Duration) error {
	var c net.PacketConn
	err := n.node().inNS(func() error {
		var err error
		c, err = net.ListenPacket("udp", fmt.Sprintf(":%d", src))
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.WriteTo([]byte("ping"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, uint16(port)))); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 16)
	_, _, err = c.ReadFrom(buf)
	return err
}
