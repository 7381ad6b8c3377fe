//go:build e2e

package e2e

// The mesh on real VMs (issue 19). It needs the mesh phase wired into
// installer/phases.go together with the identity phase that it verifies keys
// against; until then it fails at its first apply, saying so.
//
// The lab has three VMs. "A fourth node added by a rerun" is played by the
// third: the first apply leaves agent-2 out of the profile, the next one
// adds it, and every peer must be updated.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"castellan/installer/engine"
	"castellan/installer/meshaddr"
	castssh "castellan/installer/ssh"
)

const meshIface = "wg-castellan"

// meshAddrs reads the mesh addresses the run recorded.
func meshAddrs(t *testing.T, o outcome) map[string]meshaddr.Node {
	t.Helper()
	out := map[string]meshaddr.Node{}
	if o.result == nil {
		t.Fatal("no run record")
	}
	for node, raw := range o.result.Outputs[meshaddr.Key.String()] {
		var n meshaddr.Node
		if err := json.Unmarshal(raw, &n); err != nil {
			t.Fatal(err)
		}
		out[node] = n
	}
	return out
}

// tryOn runs argv on node over a fresh SSH connection (a new TCP
// connection: what the firewall decides on), returning its output.
func (l *lab) tryOn(node string, timeout time.Duration, argv ...string) (string, error) {
	n, _ := l.p.Node(node)
	pool, err := castssh.NewPool(castssh.Config{
		User: l.p.Spec.SSH.User, KeyFiles: []string{l.p.Resolve(l.p.Spec.SSH.KeyFile)},
		KnownHostsFile: l.p.Resolve(l.p.Spec.SSH.KnownHosts), Sudo: true,
	})
	if err != nil {
		return "", err
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res, err := pool.Run(ctx, castssh.Host{Name: n.Name, Address: n.Address, Port: n.Port}, castssh.Cmd{Argv: argv, Sudo: true})
	return strings.TrimSpace(string(res.Stdout)), err
}

// capture runs tcpdump on the lab's private bridge (inside the lab's
// namespace, where this test runs) until stop is called, and returns the
// packets between the given addresses summarised by protocol and port.
func capture(t *testing.T, addrs map[string]string) (stop func() map[string]int) {
	t.Helper()
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Fatal("tcpdump is missing in the lab: vagrant/scripts/ensure-packages.sh tcpdump")
	}
	out, err := exec.Command("virsh", "net-info", "castellan-private").Output()
	if err != nil {
		t.Fatalf("virsh net-info castellan-private: %v", err)
	}
	m := regexp.MustCompile(`(?m)^Bridge:\s+(\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no bridge in %s", out)
	}
	file := filepath.Join(t.TempDir(), "capture.txt")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("tcpdump", "-i", string(m[1]), "-nn", "-l", "-q", "-t", "ip or ip6")
	cmd.Stdout = f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	return func() map[string]int {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		f.Close()
		// "IP 192.168.56.11.51871 > 192.168.56.12.51871: UDP, length 148"
		line := regexp.MustCompile(`^IP6? (\S+)\.(\d+) > (\S+)\.(\d+): (\w+)`)
		icmp := regexp.MustCompile(`^IP6? (\S+) > (\S+): (ICMP\S*)`)
		name := map[string]string{}
		for n, a := range addrs {
			name[a] = n
		}
		sum := map[string]int{}
		data, _ := os.ReadFile(file)
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		for sc.Scan() {
			var src, dst, proto, port string
			if m := line.FindStringSubmatch(sc.Text()); m != nil {
				src, dst, proto = m[1], m[3], m[5]
				a, _ := strconv.Atoi(m[2])
				b, _ := strconv.Atoi(m[4])
				port = strconv.Itoa(min(a, b)) // the service side is the lower port
			} else if m := icmp.FindStringSubmatch(sc.Text()); m != nil {
				src, dst, proto = m[1], m[2], m[3]
			} else {
				continue
			}
			if name[src] == "" || name[dst] == "" {
				continue
			}
			sum[fmt.Sprintf("%s %s", proto, port)]++
		}
		return sum
	}
}

func TestMesh(t *testing.T) {
	l := setup(t)
	var nodes []string
	addrs := map[string]string{}
	for _, n := range l.p.Spec.Nodes {
		nodes = append(nodes, n.Name)
		addrs[n.Name] = n.Address
	}
	if len(nodes) < 3 {
		t.Fatalf("the mesh test needs 3 nodes, the lab has %d", len(nodes))
	}
	// A fresh state repo: the nodes must not hold disks an earlier test
	// encrypted (castellan would refuse them, rightly: their recovery
	// passphrases are not in this state repo).
	for _, n := range nodes {
		resetDiskEncryption(t, l, n)
	}
	full := readFile(t, l.profile)
	// First without the last node: it is "added by a rerun" below.
	last := l.p.Spec.Nodes[len(nodes)-1]
	re := regexp.MustCompile(`(?ms)^    - name: ` + regexp.QuoteMeta(last.Name) + `\n.*?(?:\n    - |\n  state:)`)
	without := re.ReplaceAllStringFunc(string(full), func(s string) string {
		if strings.HasSuffix(s, "\n  state:") {
			return "\n  state:"
		}
		return "\n    - "
	})
	writeFile(t, l.profile, []byte(without))
	o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
	if o.code != 0 || o.result == nil || o.result.Outcome != engine.OutcomeOK {
		t.Fatalf("apply without %s: exit %d %s", last.Name, o.code, o.brief())
	}

	writeFile(t, l.profile, full)
	o = l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
	if o.code != 0 || o.result == nil || o.result.Outcome != engine.OutcomeOK {
		t.Fatalf("apply adding %s: exit %d %s", last.Name, o.code, o.brief())
	}
	mesh := meshAddrs(t, o)
	for _, n := range nodes {
		if !mesh[n].Address.IsValid() {
			t.Fatalf("%s has no mesh address in the record: %v", n, mesh)
		}
	}
	t.Run("every peer was updated with the added node", func(t *testing.T) {
		for _, n := range nodes[:len(nodes)-1] {
			peers := l.on(t, n, "wg", "show", meshIface, "peers")
			if !strings.Contains(peers, mesh[last.Name].PublicKey) {
				t.Errorf("%s lacks %s as a peer: %s", n, last.Name, peers)
			}
		}
	})

	stop := capture(t, addrs)
	t.Run("every node pings every other over the mesh", func(t *testing.T) {
		for _, a := range nodes {
			for _, b := range nodes {
				if a == b {
					continue
				}
				if out, err := l.tryOn(a, 30*time.Second, "ping", "-c", "3", "-W", "2", "-I", meshIface, mesh[b].Address.String()); err != nil {
					t.Errorf("%s -> %s (%s): %v\n%s", a, b, mesh[b].Address, err, out)
				}
			}
		}
	})
	t.Run("another underlay port is closed between nodes, open over the mesh", func(t *testing.T) {
		a, b := nodes[0], nodes[1]
		probe := func(addr netip.Addr) (string, error) {
			return l.tryOn(a, 30*time.Second, "timeout", "5", "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/22 && head -c 7 <&3", addr))
		}
		if out, err := probe(netip.MustParseAddr(addrs[b])); err == nil && strings.HasPrefix(out, "SSH-2.0") {
			t.Errorf("%s reached %s's sshd on the underlay: %q", a, b, out)
		}
		if out, err := probe(mesh[b].Address); err != nil || !strings.HasPrefix(out, "SSH-2.0") {
			t.Errorf("%s did not reach %s's sshd over the mesh: %q %v", a, b, out, err)
		}
	})
	sum := stop()
	t.Run("the underlay carries only WireGuard and SSH between nodes", func(t *testing.T) {
		var keys []string
		for k := range sum {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		t.Logf("capture on the private bridge, packets between nodes (and the installer) by protocol and port:")
		for _, k := range keys {
			t.Logf("  %-12s %d", k, sum[k])
		}
		for _, k := range keys {
			if k != fmt.Sprintf("UDP %d", l.p.Spec.Mesh.Port) && k != "tcp 22" && k != "TCP 22" {
				t.Errorf("%d packet(s) of %s between nodes on the underlay", sum[k], k)
			}
		}
		if sum[fmt.Sprintf("UDP %d", l.p.Spec.Mesh.Port)] == 0 {
			t.Errorf("no WireGuard packets seen: the capture saw nothing")
		}
	})

	t.Run("a rerun is a no-op", func(t *testing.T) {
		o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
		if o.code != 0 || o.result == nil || o.result.Outcome != engine.OutcomeUnchanged {
			t.Errorf("rerun: exit %d %s", o.code, o.brief())
		}
	})

	t.Run("a rebooted node comes back into the mesh", func(t *testing.T) {
		n := nodes[1]
		_, _ = l.tryOn(n, 10*time.Second, "sh", "-c", "nohup sh -c 'sleep 1; systemctl reboot' >/dev/null 2>&1 &")
		time.Sleep(20 * time.Second)
		deadline := time.Now().Add(10 * time.Minute)
		for {
			if _, err := l.tryOn(n, 20*time.Second, "true"); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not come back over SSH", n)
			}
			time.Sleep(5 * time.Second)
		}
		if out, err := l.tryOn(n, 30*time.Second, "nft", "list", "table", "inet", "castellan"); err != nil || !strings.Contains(out, "peers4") {
			t.Errorf("%s booted without the firewall: %v %s", n, err, out)
		}
		if out, err := l.tryOn(nodes[0], 60*time.Second, "ping", "-c", "3", "-W", "5", "-I", meshIface, mesh[n].Address.String()); err != nil {
			t.Errorf("%s not reachable over the mesh after its reboot: %v %s", n, err, out)
		}
	})

	t.Run("rules that cut the installer off are reverted by themselves", func(t *testing.T) {
		n := nodes[2]
		sum := sha256File(t, agentBinary(t, l.bin))
		agentPath := "/var/lib/castellan/bin/castellan-" + sum[:16]
		na, _ := l.p.Node(n)
		req := map[string]any{
			"ruleset": map[string]any{"interface": meshIface, "port": l.p.Spec.Mesh.Port, "sshPort": 22,
				"sshFrom": []string{"192.0.2.1/32"}, "peers": []string{}},
			"token": "e2e-cut-off", "guardSeconds": 30,
		}
		in, _ := json.Marshal(req)
		// Detached: the rules cut this very connection too.
		cmd := fmt.Sprintf("echo '%s' | nohup %s agent mesh.firewall >/run/castellan-e2e-fw.out 2>&1 &", in, agentPath)
		if _, err := l.tryOn(n, 20*time.Second, "sh", "-c", cmd); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second)
		if _, err := l.tryOn(n, 10*time.Second, "true"); err == nil {
			t.Fatalf("the cut-off rules did not cut the installer off (%s); the test proves nothing", na.Address)
		}
		start := time.Now()
		for {
			if _, err := l.tryOn(n, 10*time.Second, "true"); err == nil {
				break
			}
			if time.Since(start) > 2*time.Minute {
				t.Fatal("the installer is still cut off two minutes later: the guard did not revert")
			}
			time.Sleep(2 * time.Second)
		}
		t.Logf("SSH came back %s after the cut-off was noticed (guard bound 30 s)", time.Since(start).Round(time.Second))
		if out, _ := l.tryOn(n, 10*time.Second, "cat", "/run/castellan/mesh/guard.json"); !strings.Contains(out, `"reverted"`) {
			t.Errorf("guard record: %s", out)
		}
	})
}
