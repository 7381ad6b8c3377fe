package sshtest_test

import (
	"bytes"
	"castellan/installer/testenv"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	castssh "castellan/installer/ssh"
	"castellan/installer/ssh/sshtest"

	"golang.org/x/crypto/ssh"
)

func TestLabTopologyAndTeardown(t *testing.T) {
	t.Parallel()
	var lab *sshtest.Lab
	var labDir string
	var namespaces []string
	var users []string
	t.Run("lab", func(t *testing.T) {
		lab = sshtest.New(t, sshtest.Options{Nodes: 2, HiddenNodes: 1})
		labDir = lab.Dir
		users = []string{lab.User, lab.PasswordUser}
		for _, n := range lab.AllNodes() {
			namespaces = append(namespaces, n.NS)
		}
		namespaces = append(namespaces, lab.ClientNS)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()

		// Direct nodes and the bastion answer from the client namespace.
		for _, n := range append(lab.Nodes, lab.Bastion) {
			c, err := lab.Dial(ctx, "tcp", n.Host().Addr())
			if err != nil {
				t.Fatalf("dial %s: %v", n.Name, err)
			}
			c.Close()
		}
		// The hidden node does not: no route from the client namespace.
		hidden := lab.Hidden[0]
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := lab.Dial(dctx, "tcp", hidden.Host().Addr())
		dcancel()
		if err == nil {
			c.Close()
			t.Fatalf("hidden node %s is reachable from the client namespace", hidden.Address)
		}
		t.Logf("hidden node unreachable directly, as expected: %v", err)
		// But it is from the bastion's namespace.
		if out, err := lab.Exec(ctx, lab.Bastion.NS, "ssh-keyscan", "-T", "5", "-t", "ed25519", hidden.Address); err != nil || !strings.Contains(string(out), "ssh-ed25519") {
			t.Fatalf("keyscan of the hidden node in the bastion namespace: %s, %v", out, err)
		}
		cfg := lab.Config()
		cfg.Bastion = nil
		pool, err := castssh.NewPool(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		for _, n := range lab.Nodes {
			out, err := clientOutput(ctx, pool, n.Host(), "id", "-un")
			if err != nil || out != lab.User {
				t.Fatalf("%s: id -un = %q, %v", n.Name, out, err)
			}
		}
		// The bastion itself reaches the hidden node's sshd.
		out, err := clientOutput(ctx, pool, lab.Bastion.Host(), "/usr/bin/ssh-keyscan", "-T", "5", "-t", "ed25519", hidden.Address)
		if err != nil || !strings.Contains(out, "ssh-ed25519") {
			t.Fatalf("keyscan of the hidden node from the bastion: %q, %v", out, err)
		}
	})
	// After the subtest's cleanup, nothing is left.
	for _, ns := range namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			t.Errorf("namespace %s left behind", ns)
		}
	}
	for _, u := range users {
		if exec.Command("id", u).Run() == nil {
			t.Errorf("user %s left behind", u)
		}
	}
	if _, err := os.Stat(labDir); err == nil {
		t.Errorf("lab directory %s left behind", labDir)
	}
}

func clientOutput(ctx context.Context, p *castssh.Pool, h castssh.Host, argv ...string) (string, error) {
	c, err := p.Client(ctx, h)
	if err != nil {
		return "", err
	}
	return c.Output(ctx, castssh.Cmd{Argv: argv})
}

func TestScale50(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	lab := sshtest.New(t, sshtest.Options{Nodes: 50})
	t.Logf("50-node lab set up in %s", lab.SetupTime)
	cfg := lab.Config()
	cfg.Logger = nil
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	if err := sshtest.ConnectAndRun(ctx, cfg, sshtest.Hosts(lab.Nodes), castssh.Cmd{Argv: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	t.Logf("connected to 50 nodes and ran one command on each in %s", time.Since(start).Round(time.Millisecond))
}

// TestPrivateDirs: each node has its own copy of a private directory; the
// mountpoint created on the host outlives the lab that created it while
// another lab uses it, and is gone once neither does.
func TestPrivateDirs(t *testing.T) {
	t.Parallel()
	root := "/var/lib/castellan-sshtest-" + fmt.Sprint(os.Getpid())
	dir := root + "/bin"
	if _, err := os.Stat(root); err == nil {
		t.Fatalf("%s exists already", root)
	}
	write := func(t *testing.T, lab *sshtest.Lab, n *sshtest.Node, content string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := castssh.Connect(ctx, lab.Config(), n.Host())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Upload(ctx, castssh.Upload{Src: strings.NewReader(content), Dst: dir + "/f", Sudo: true}); err != nil {
			t.Fatal(err)
		}
		out, err := c.Output(ctx, castssh.Cmd{Argv: []string{"cat", dir + "/f"}})
		if err != nil || out != content {
			t.Fatalf("%s reads %q, %v", n.Name, out, err)
		}
	}
	t.Run("labs", func(t *testing.T) {
		var labB *sshtest.Lab
		t.Run("A", func(ta *testing.T) {
			labA := sshtest.New(ta, sshtest.Options{Nodes: 2, PrivateDirs: []string{dir}})
			labB = sshtest.New(t, sshtest.Options{Nodes: 1, PrivateDirs: []string{dir}})
			for i, n := range labA.Nodes {
				write(ta, labA, n, fmt.Sprintf("node %d", i))
			}
			// A node's mount table is its own: no mount of the lab's
			// (or any) network namespaces under /run/netns.
			if host, _ := os.ReadFile("/proc/self/mountinfo"); !strings.Contains(string(host), " /run/netns/"+labA.Nodes[1].NS+" ") {
				ta.Fatalf("the host has no mount of %s under /run/netns: the check below would prove nothing", labA.Nodes[1].NS)
			}
			c, err := castssh.Connect(context.Background(), labA.Config(), labA.Nodes[0].Host())
			if err != nil {
				ta.Fatal(err)
			}
			defer c.Close()
			mi, err := c.Output(context.Background(), castssh.Cmd{Argv: []string{"cat", "/proc/self/mountinfo"}})
			if err != nil || !strings.Contains(mi, " / / ") || strings.Contains(mi, " /run/netns/") {
				ta.Fatalf("%s's mount table (%v):\n%s", labA.Nodes[0].Name, err, mi)
			}
			for i, n := range labA.Nodes {
				b, err := os.ReadFile(filepath.Join(n.PrivatePath(dir), "f"))
				if err != nil || string(b) != fmt.Sprintf("node %d", i) {
					ta.Fatalf("%s's private copy: %q, %v", n.Name, b, err)
				}
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				ta.Fatalf("the host's %s is not empty: %v", dir, ents)
			}
		})
		// A created the mountpoint and is gone; B still uses it.
		if _, err := os.Stat(dir); err != nil {
			t.Fatalf("mountpoint removed while lab B uses it: %v", err)
		}
		write(t, labB, labB.Nodes[0], "lab B")
	})
	if _, err := os.Stat(root); err == nil {
		t.Fatalf("%s left behind", root)
	}
}

// TestLoopbackNodes: loopback nodes listen on 127.0.0.1 in the host's
// network namespace, each on its own port; Lab.Dial, the castellan client
// and the OpenSSH client with the lab's known_hosts reach them; teardown
// ends their sshd and everything their connections run.
func TestLoopbackNodes(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("ssh"); err != nil {
		sshtest.Require(t)
		testenv.Missing(t, "the ssh client is missing: %v", err)
	}
	var addrs []string
	var sleeper int
	var users []string
	t.Run("lab", func(t *testing.T) {
		lab := sshtest.New(t, sshtest.Options{Nodes: 2, Loopback: true})
		users = []string{lab.User, lab.PasswordUser}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		ports := map[int]bool{}
		for _, n := range lab.Nodes {
			if !n.Loopback || n.NS != "" || n.Address != "127.0.0.1" || n.Port <= 0 || n.Port == 22 || ports[n.Port] {
				t.Fatalf("node %s: loopback=%v ns=%q address %s port %d", n.Name, n.Loopback, n.NS, n.Address, n.Port)
			}
			ports[n.Port] = true
			addrs = append(addrs, n.Host().Addr())
			want := fmt.Sprintf("[127.0.0.1]:%d ssh-ed25519 ", n.Port)
			if line := n.KnownHostsLine(sshtest.Ed25519, false); !strings.HasPrefix(line, want) {
				t.Fatalf("known_hosts line %q, want prefix %q", line, want)
			}
			// From the host's network namespace, as any client dials.
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", n.Host().Addr())
			if err != nil {
				t.Fatalf("plain dial of %s: %v", n.Name, err)
			}
			c.Close()
			c, err = lab.Dial(ctx, "tcp", n.Host().Addr())
			if err != nil {
				t.Fatalf("lab dial of %s: %v", n.Name, err)
			}
			c.Close()
		}
		pool, err := castssh.NewPool(lab.Config())
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		for _, n := range lab.Nodes {
			out, err := clientOutput(ctx, pool, n.Host(), "id", "-un")
			if err != nil || out != lab.User {
				t.Fatalf("%s: id -un = %q, %v", n.Name, out, err)
			}
		}
		// OpenSSH itself accepts the known_hosts the lab writes, with
		// strict checking and one key type only.
		n := lab.Nodes[0]
		kh := lab.WriteKnownHosts(sshtest.KnownHostsOptions{Nodes: []*sshtest.Node{n}, KeyTypes: []string{sshtest.ECDSA}, Hashed: true})
		out, err := exec.CommandContext(ctx, "ssh", "-F", "none", "-i", lab.KeyFile, "-p", fmt.Sprint(n.Port),
			"-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
			"-o", "UserKnownHostsFile="+kh, "-o", "GlobalKnownHostsFile=/dev/null",
			lab.User+"@127.0.0.1", "echo", "hello").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "hello" {
			t.Fatalf("ssh to %s: %q, %v", n.Name, out, err)
		}
		// A connection that runs something long: teardown must end it.
		c, err := pool.Client(ctx, n.Host())
		if err != nil {
			t.Fatal(err)
		}
		go c.Output(context.Background(), castssh.Cmd{Argv: []string{"sleep", "600"}}) //nolint:errcheck // ended by teardown
		for deadline := time.Now().Add(10 * time.Second); sleeper == 0; time.Sleep(20 * time.Millisecond) {
			for _, p := range n.Processes() {
				if len(p.Cmdline) > 0 && p.Cmdline[0] == "sleep" {
					sleeper = p.PID
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("sleep not seen under %s's sshd: %v", n.Name, n.Processes())
			}
		}
	})
	for _, a := range addrs {
		if c, err := net.DialTimeout("tcp", a, 2*time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after teardown", a)
		}
	}
	if sleeper != 0 {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", sleeper)); err == nil {
			t.Errorf("process %d started over a connection is still alive after teardown", sleeper)
		}
	}
	for _, u := range users {
		if exec.Command("id", u).Run() == nil {
			t.Errorf("user %s left behind", u)
		}
	}
}

// TestUsersAndNodeVariants: added users (a bash user with a startup file,
// a uid-0 root login) log in and are gone after teardown with their sudo
// rules; HideSudo leaves the node without a usable sudo; HostCA nodes serve
// certificates signed by the lab's CA; RotateHostKeys gives a node new keys.
func TestUsersAndNodeVariants(t *testing.T) {
	t.Parallel()
	var users []string
	var sudoers string
	t.Run("lab", func(t *testing.T) {
		lab := sshtest.New(t, sshtest.Options{Nodes: 1, HideSudo: true, HostCA: true})
		node := lab.Nodes[0]
		sudoers = filepath.Join("/etc/sudoers.d", "cst-"+lab.ID)
		bash := lab.AddUser(sshtest.UserOptions{Shell: "/bin/bash", Files: map[string]string{".bashrc": "echo hi\n"}, Sudo: sshtest.SudoNopasswd})
		root := lab.AddUser(sshtest.UserOptions{Root: true})
		users = []string{lab.User, lab.PasswordUser, bash.Name, root.Name}
		if b, err := os.ReadFile(filepath.Join(bash.Home, ".bashrc")); err != nil || string(b) != "echo hi\n" {
			t.Fatalf(".bashrc: %q, %v", b, err)
		}
		if out, _ := exec.Command("id", "-u", root.Name).Output(); strings.TrimSpace(string(out)) != "0" {
			t.Fatalf("root login %s has uid %q", root.Name, out)
		}
		if b, _ := os.ReadFile(sudoers); !strings.Contains(string(b), bash.Name+" ALL=(ALL:ALL) NOPASSWD: ALL") {
			t.Fatalf("sudoers drop-in lacks the rule for %s:\n%s", bash.Name, b)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cfg := lab.Config()
		cfg.User = root.Name
		cfg.KnownHostsFile = lab.WriteKnownHosts(sshtest.KnownHostsOptions{})
		pool, err := castssh.NewPool(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		out, err := clientOutput(ctx, pool, node.Host(), "sh", "-c", "id -u; command -v sudo || echo no sudo")
		if err != nil || out != "0\nno sudo" {
			t.Fatalf("root login on a node without sudo: %q, %v", out, err)
		}

		cert, err := node.ServedHostKey(ssh.CertAlgoED25519v01)
		if c, ok := cert.(*ssh.Certificate); err != nil || !ok || !bytes.Equal(c.SignatureKey.Marshal(), lab.HostCA.PublicKey().Marshal()) {
			t.Fatalf("served certificate: %v, %v", cert, err)
		}
		old := node.HostKeys[sshtest.Ed25519]
		if err := node.RotateHostKeys(); err != nil {
			t.Fatal(err)
		}
		got, err := node.ServedHostKey(ssh.KeyAlgoED25519)
		if err != nil || bytes.Equal(got.Marshal(), old.Marshal()) || !bytes.Equal(got.Marshal(), node.HostKeys[sshtest.Ed25519].Marshal()) {
			t.Fatalf("after RotateHostKeys the node serves %v (%v)", got, err)
		}
	})
	for _, u := range users {
		if exec.Command("id", u).Run() == nil {
			t.Errorf("user %s left behind", u)
		}
	}
	if _, err := os.Stat(sudoers); err == nil {
		t.Errorf("sudoers drop-in %s left behind", sudoers)
	}
}

// TestNodeCPU: with CPUAccounting, the CPU the nodes burn for a connection
// (here, a busy loop run over SSH) shows in NodeCPU.
func TestNodeCPU(t *testing.T) {
	lab := sshtest.New(t, sshtest.Options{Nodes: 1, CPUAccounting: true})
	before, err := lab.NodeCPU()
	if err != nil {
		t.Fatal(err)
	}
	c, err := castssh.Connect(context.Background(), lab.Config(), lab.Nodes[0].Host())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Run(context.Background(), castssh.Cmd{Argv: []string{"sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"}}); err != nil {
		t.Fatal(err)
	}
	after, err := lab.NodeCPU()
	if err != nil {
		t.Fatal(err)
	}
	if after-before < 50*time.Millisecond {
		t.Errorf("node CPU grew by %v for a busy loop", after-before)
	}
}

// TestNodeCPUByProcessCountsOnlyTheNodes: the breakdown by process is of
// the lab's nodes alone, not of everything the host runs meanwhile (other
// tests, another engineer's build): a busy host process named sudo while a
// node runs a busy shell over SSH (no sudo there) shows as node shell time
// and no sudo time at all.
func TestNodeCPUByProcessCountsOnlyTheNodes(t *testing.T) {
	if _, err := exec.LookPath("perf"); err != nil {
		testenv.Missing(t, "perf (Debian package linux-perf) is not installed; make bench installs it")
	}
	lab := sshtest.New(t, sshtest.Options{Nodes: 1, CPUAccounting: true})
	dir := t.TempDir()
	dash, err := exec.LookPath("dash")
	if err != nil {
		testenv.Missing(t, "dash is not installed")
	}
	data, err := os.ReadFile(dash)
	if err != nil {
		t.Fatal(err)
	}
	hostSudo := filepath.Join(dir, "sudo") // comm "sudo", on the host
	if err := os.WriteFile(hostSudo, data, 0o755); err != nil {
		t.Fatal(err)
	}
	n := lab.Nodes[0]
	busy := "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"
	ssh := fmt.Sprintf("ip netns exec %s ssh -F /dev/null -i %s -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=%s -p %d %s@%s '%s'",
		lab.ClientNS, lab.KeyFile, lab.WriteKnownHosts(sshtest.KnownHostsOptions{}), n.Port, lab.User, n.Address, busy)
	by, err := lab.NodeCPUByProcess(dir, "sh", "-c", hostSudo+" -c '"+busy+"' & "+ssh+"; wait")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node CPU by process: %v", by)
	if by["sudo"] != 0 || by["shell"] < 50*time.Millisecond || by["sshd"] == 0 {
		t.Errorf("node CPU by process %v: want the node's busy shell and sshd, and none of the host's busy \"sudo\"", by)
	}
}
