package sshtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	castssh "castellan/installer/ssh"

	"github.com/vishvananda/netns"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"
)

// Key types a node can have.
const (
	Ed25519 = "ed25519"
	ECDSA   = "ecdsa"
	RSA     = "rsa"
)

// AllKeyTypes is the default set of host key types.
var AllKeyTypes = []string{Ed25519, ECDSA, RSA}

// Options shape a Lab.
type Options struct {
	// Nodes reachable directly from the client namespace.
	Nodes int
	// HiddenNodes reachable only through a bastion; a bastion node is added
	// when it is > 0 (or when Bastion is set).
	HiddenNodes int
	Bastion     bool
	// HostKeyTypes each sshd gets (default AllKeyTypes). Every node has its
	// own keys.
	HostKeyTypes []string
	// RSABits for RSA host keys (default 2048).
	RSABits int
	// PrivateDirs are absolute paths that each node sees as its own, empty
	// at start: nodes share the host's file system, except these, which are
	// per-node directories bind-mounted there in each sshd's own mount
	// namespace (Node.PrivatePath gives the host-side path). Missing
	// mountpoints are created on the host and removed at teardown.
	PrivateDirs []string
	// CgroupV2 gives each node a cgroup v2 hierarchy at /sys/fs/cgroup,
	// mounted in its sshd's own mount namespace, as on a node booted with
	// systemd's unified hierarchy (what kubelet requires and preflight
	// checks), whatever the test host booted with.
	CgroupV2 bool
	// CPUAccounting puts every node's sshd (and so everything it runs) into
	// one cgroup whose CPU time Lab.NodeCPU reports.
	CPUAccounting bool
	// Loopback puts the direct Nodes in the host's network namespace,
	// each sshd listening on 127.0.0.1 on a free port of its own, for
	// clients that dial by themselves (go-git's ssh transport, the ssh
	// and git CLIs) and so cannot use Lab.Dial. Each such sshd runs in a
	// PID namespace of its own, so that stopping it ends its connections
	// too, and allows TCP forwarding to loopback only. It cannot be
	// combined with HiddenNodes or Bastion.
	Loopback bool
	// HideSudo makes sudo unusable on every node, as on a node where it is
	// not installed: each sshd runs in a mount namespace of its own where
	// an empty, non-executable file covers the sudo binary.
	HideSudo bool
	// BastionNoForwarding sets `AllowTcpForwarding no` on the bastion's
	// sshd: it refuses to open channels to the hidden nodes.
	BastionNoForwarding bool
	// HostCA gives the lab a host certificate authority (Lab.HostCA) and
	// every node a certificate for each of its host keys, signed by it,
	// with the node's addresses as principals (sshd HostCertificate).
	HostCA bool
}

// Lab is a set of sshd peers in network namespaces, torn down by t.Cleanup.
type Lab struct {
	ID  string
	Dir string // lab files: keys, configs, logs (readable by the test users)

	// User has passwordless sudo; PasswordUser's sudo asks for a password.
	// Both authenticate with KeyFile. Lab.AddUser adds others.
	User, PasswordUser string
	KeyFile            string     // client private key (never print it)
	Signer             ssh.Signer // the same key, e.g. to load into an agent

	// HostCA signs the nodes' host certificates (Options.HostCA); nil
	// otherwise.
	HostCA ssh.Signer

	ClientNS string  // name of the client namespace
	Nodes    []*Node // direct nodes
	Bastion  *Node   // nil without bastion
	Hidden   []*Node // behind the bastion

	// SetupTime is how long New took.
	SetupTime time.Duration

	t        testing.TB
	private  []string    // Options.PrivateDirs, cleaned
	cgroupV2 bool        // Options.CgroupV2
	cpu      *cpuAccount // Options.CPUAccounting
	created  []string    // mountpoints this lab created on the host
	subnet   int         // second octet of 10.x.0.0/16
	clientH  netns.NsHandle
	mu       sync.Mutex
	closed   bool
	logDone  chan struct{}
	statePth string

	opts        Options
	nUsers      int
	extraUsers  []string // users added by AddUser
	sudoRules   string   // content of the lab's sudoers drop-in
	placeholder string   // the empty file covering sudo (HideSudo)
}

// Node is one sshd in its own namespace, or on loopback (Options.Loopback).
type Node struct {
	Name    string
	NS      string // "" for a loopback node
	Address string // address the client (or, for hidden nodes, the bastion) dials
	Port    int
	// Loopback: the sshd listens on 127.0.0.1:Port in the host's network
	// namespace.
	Loopback bool
	// Addresses are all the node's addresses (a bastion has two).
	Addresses []string
	// HostKeys by key type (Ed25519, ECDSA, RSA).
	HostKeys map[string]ssh.PublicKey
	// HostCerts by key type, with Options.HostCA.
	HostCerts map[string]*ssh.Certificate
	Dir       string
	LogFile   string

	lab  *Lab
	nsH  netns.NsHandle
	cmd  *exec.Cmd
	done chan struct{} // closed when sshd exited
}

// New builds a lab: namespaces, links, users, keys and one sshd per node,
// all ready to accept connections when it returns.
func New(t testing.TB, opts Options) *Lab {
	t.Helper()
	Require(t)
	start := time.Now()
	if opts.Nodes < 0 || opts.HiddenNodes < 0 || opts.Nodes+opts.HiddenNodes == 0 && !opts.Bastion {
		t.Fatalf("sshtest: a lab needs at least one node")
	}
	if opts.Nodes > 250*126 || opts.HiddenNodes > 250*126 {
		t.Fatalf("sshtest: too many nodes")
	}
	if opts.Loopback && (opts.HiddenNodes > 0 || opts.Bastion) {
		t.Fatalf("sshtest: Loopback nodes cannot have a bastion or hidden nodes")
	}
	if len(opts.HostKeyTypes) == 0 {
		opts.HostKeyTypes = AllKeyTypes
	}
	if opts.RSABits == 0 {
		opts.RSABits = 2048
	}
	sweepStale(t)

	id := randomHex(4)
	l := &Lab{
		ID:           id,
		t:            t,
		User:         "cst-" + id,
		PasswordUser: "cst-" + id + "-pw",
		ClientNS:     "cst-" + id + "-c",
		subnet:       64 + int(randomByte())%186,
		logDone:      make(chan struct{}),
		clientH:      netns.None(),
		opts:         opts,
	}
	dir, err := os.MkdirTemp("", "cst-"+id+"-")
	if err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	l.Dir = dir
	// The test users must reach authorized_keys and their directories.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("sshtest: %v", err)
	}

	for i := 0; i < opts.Nodes; i++ {
		if opts.Loopback {
			l.Nodes = append(l.Nodes, l.newLoopbackNode(fmt.Sprintf("n%d", i)))
			continue
		}
		l.Nodes = append(l.Nodes, l.newNode(fmt.Sprintf("n%d", i), l.addr(false, i)))
	}
	if opts.Bastion || opts.HiddenNodes > 0 {
		l.Bastion = l.newNode("bastion", l.addr(false, opts.Nodes))
		l.Bastion.Addresses = append(l.Bastion.Addresses, fmt.Sprintf("10.%d.128.1", l.subnet))
		for i := 0; i < opts.HiddenNodes; i++ {
			l.Hidden = append(l.Hidden, l.newNode(fmt.Sprintf("h%d", i), l.addr(true, i)))
		}
	}

	l.cgroupV2 = opts.CgroupV2
	if opts.CPUAccounting {
		cpu, err := newCPUAccount(l.ID)
		if err != nil {
			t.Fatalf("sshtest: %v", err)
		}
		l.cpu = cpu
	}
	for _, d := range opts.PrivateDirs {
		c := filepath.Clean(d)
		if !filepath.IsAbs(c) || c == "/" || strings.HasPrefix(c+"/", l.Dir+"/") {
			t.Fatalf("sshtest: PrivateDirs: %q must be an absolute path other than / and outside the lab", d)
		}
		l.private = append(l.private, c)
	}

	// Record what we are about to create before creating it, so that a
	// killed test process leaves something the next New can sweep.
	l.statePth = writeState(t, l.state())
	t.Cleanup(l.teardown)
	if err := l.makeMountpoints(); err != nil {
		t.Fatalf("sshtest: %v", err)
	}

	if err := l.setup(opts); err != nil {
		t.Fatalf("sshtest: setting up lab %s: %v", id, err)
	}
	l.SetupTime = time.Since(start)
	t.Logf("sshtest: lab %s: %d nodes, %d hidden, bastion=%v, loopback=%v, subnet 10.%d.0.0/16, ready in %s",
		id, len(l.Nodes), len(l.Hidden), l.Bastion != nil, opts.Loopback, l.subnet, l.SetupTime.Round(time.Millisecond))
	return l
}

// addr gives node i of the direct (10.x.0.0/17) or hidden (10.x.128.0/17)
// network. .1 of each is taken by the bridge.
func (l *Lab) addr(hidden bool, i int) string {
	base := 0
	if hidden {
		base = 128
	}
	return fmt.Sprintf("10.%d.%d.%d", l.subnet, base+i/250, i%250+2)
}

func (l *Lab) newNode(name, addr string) *Node {
	return &Node{
		Name: name, NS: "cst-" + l.ID + "-" + name, Address: addr, Port: 22,
		Addresses: []string{addr}, HostKeys: map[string]ssh.PublicKey{}, HostCerts: map[string]*ssh.Certificate{},
		Dir: filepath.Join(l.Dir, name), lab: l, done: make(chan struct{}), nsH: netns.None(),
	}
}

// newLoopbackNode is a node in the host's network namespace; its port is
// chosen when it starts.
func (l *Lab) newLoopbackNode(name string) *Node {
	n := l.newNode(name, "127.0.0.1")
	n.NS, n.Port, n.Loopback = "", 0, true
	return n
}

// AllNodes is Nodes, then the bastion, then the hidden nodes.
func (l *Lab) AllNodes() []*Node {
	all := append([]*Node(nil), l.Nodes...)
	if l.Bastion != nil {
		all = append(all, l.Bastion)
	}
	return append(all, l.Hidden...)
}

func (l *Lab) namespaces() []string {
	ns := []string{l.ClientNS}
	for _, n := range l.nsNodes() {
		ns = append(ns, n.NS)
	}
	return ns
}

// nsNodes are the nodes that have a network namespace of their own.
func (l *Lab) nsNodes() []*Node {
	var out []*Node
	for _, n := range l.AllNodes() {
		if !n.Loopback {
			out = append(out, n)
		}
	}
	return out
}

func (l *Lab) setup(opts Options) error {
	var g errgroup.Group
	g.Go(func() error { return l.setupUsers() })
	g.Go(func() error { return l.setupKeys(opts) })
	g.Go(func() error { return l.setupNetwork() })
	if err := g.Wait(); err != nil {
		return err
	}
	h, err := netns.GetFromName(l.ClientNS)
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", l.ClientNS, err)
	}
	l.clientH = h
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // sshd's privilege separation directory
		return err
	}
	if opts.HideSudo {
		l.placeholder = filepath.Join(l.Dir, "no-sudo")
		if err := os.WriteFile(l.placeholder, nil, 0o644); err != nil {
			return err
		}
	}
	g = errgroup.Group{}
	g.SetLimit(8)
	for _, n := range l.AllNodes() {
		g.Go(func() error { return n.start() })
	}
	return g.Wait()
}

func (l *Lab) setupUsers() error {
	for _, u := range []string{l.User, l.PasswordUser} {
		// -p '*': no password but not locked (sshd refuses locked accounts
		// without PAM); /bin/sh without rc files; home / so that sshd has
		// a directory to change to.
		if out, err := exec.Command("useradd", "-r", "-M", "-p", "*", "-s", "/bin/sh", "-d", "/", u).CombinedOutput(); err != nil {
			return fmt.Errorf("useradd %s: %v: %s", u, err, out)
		}
	}
	l.mu.Lock()
	l.sudoRules = SudoNopasswd.lines(l.User) + SudoPassword.lines(l.PasswordUser)
	rules := l.sudoRules
	l.mu.Unlock()
	return l.writeSudoers(rules)
}

func (l *Lab) sudoersName() string { return "cst-" + l.ID }

// setupNetwork creates the namespaces, the client bridge, one veth per node
// and, with a bastion, the hidden bridge inside the bastion's namespace.
func (l *Lab) setupNetwork() error {
	var b strings.Builder
	for _, ns := range l.namespaces() {
		fmt.Fprintf(&b, "netns add %s\n", ns)
	}
	if err := ipBatch("", b.String()); err != nil {
		return err
	}
	b.Reset()
	fmt.Fprintf(&b, "link set lo up\nlink add br0 type bridge\naddr add 10.%d.0.1/17 dev br0\nlink set br0 up\n", l.subnet)
	var direct []*Node
	for _, n := range l.Nodes {
		if !n.Loopback {
			direct = append(direct, n)
		}
	}
	if l.Bastion != nil {
		direct = append(direct, l.Bastion)
	}
	for i, n := range direct {
		fmt.Fprintf(&b, "link add v%d type veth peer name eth0 netns %s\nlink set v%d master br0\nlink set v%d up\n", i, n.NS, i, i)
	}
	if err := ipBatch(l.ClientNS, b.String()); err != nil {
		return err
	}
	if l.Bastion != nil {
		b.Reset()
		fmt.Fprintf(&b, "link add hbr type bridge\naddr add 10.%d.128.1/17 dev hbr\nlink set hbr up\n", l.subnet)
		for i, n := range l.Hidden {
			fmt.Fprintf(&b, "link add h%d type veth peer name eth0 netns %s\nlink set h%d master hbr\nlink set h%d up\n", i, n.NS, i, i)
		}
		if err := ipBatch(l.Bastion.NS, b.String()); err != nil {
			return err
		}
	}
	var g errgroup.Group
	g.SetLimit(4)
	for _, n := range l.nsNodes() {
		g.Go(func() error {
			return ipBatch(n.NS, fmt.Sprintf("link set lo up\naddr add %s/17 dev eth0\nlink set eth0 up\n", n.Address))
		})
	}
	return g.Wait()
}

func ipBatch(ns, script string) error {
	args := []string{"-batch", "-"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	cmd := exec.Command("ip", args...)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// errPortTaken: another process bound a loopback node's port first.
var errPortTaken = errors.New("port already in use")

// start writes the node's sshd config and runs sshd inside its namespace
// (on a free loopback port for a loopback node), waiting until it listens.
func (n *Node) start() error {
	if !n.Loopback {
		h, err := netns.GetFromName(n.NS)
		if err != nil {
			return fmt.Errorf("opening namespace %s: %w", n.NS, err)
		}
		n.nsH = h
		return n.run()
	}
	// The port is free when picked but may be taken before sshd binds it:
	// pick another then.
	var err error
	for range 10 {
		if n.Port, err = freeLoopbackPort(); err != nil {
			return err
		}
		if err = n.run(); !errors.Is(err, errPortTaken) {
			return err
		}
		n.done = make(chan struct{})
	}
	return fmt.Errorf("sshd for %s: no free loopback port after 10 tries: %w", n.Name, err)
}

// freeLoopbackPort is a TCP port free on 127.0.0.1 at the time of the call.
func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free loopback port: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

// run starts the node's sshd once.
func (n *Node) run() error {
	l := n.lab
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "Port %d\n", n.Port)
	for _, a := range n.Addresses {
		fmt.Fprintf(&cfg, "ListenAddress %s\n", a)
	}
	for _, typ := range AllKeyTypes {
		if _, ok := n.HostKeys[typ]; ok {
			fmt.Fprintf(&cfg, "HostKey %s\n", filepath.Join(n.Dir, "ssh_host_"+typ+"_key"))
		}
	}
	for _, typ := range AllKeyTypes {
		if _, ok := n.HostCerts[typ]; ok {
			fmt.Fprintf(&cfg, "HostCertificate %s\n", filepath.Join(n.Dir, "ssh_host_"+typ+"_key-cert.pub"))
		}
	}
	fmt.Fprintf(&cfg, `PidFile none
UsePAM no
StrictModes no
MaxStartups 1000
MaxSessions 200
UseDNS no
PrintMotd no
PrintLastLog no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile %s
AllowUsers %s
Subsystem sftp %s
LogLevel INFO
`, filepath.Join(l.Dir, "authorized_keys"), l.userPattern(), sftpServer())
	switch {
	case n == l.Bastion && l.opts.BastionNoForwarding:
		cfg.WriteString("AllowTcpForwarding no\n")
	case n.Loopback:
		// In the host's network namespace: forwarding may reach loopback
		// only.
		cfg.WriteString("AllowTcpForwarding local\nPermitOpen 127.0.0.1:* [::1]:*\nAllowStreamLocalForwarding no\n")
	default:
		cfg.WriteString("AllowTcpForwarding yes\n")
	}
	cfgPath := filepath.Join(n.Dir, "sshd_config")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		return err
	}
	n.LogFile = filepath.Join(n.Dir, "sshd.log")
	logf, err := os.Create(n.LogFile)
	if err != nil {
		return err
	}
	cmd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", cfgPath)
	if len(l.private) > 0 || l.opts.HideSudo || l.cgroupV2 {
		// sshd in its own mount namespace, with the node's private
		// directories bind-mounted (sudo hidden, cgroup2 mounted, as
		// asked); sh execs sshd (same PID).
		var script []string
		if l.opts.HideSudo {
			hide, err := hiddenSudoScript(l.placeholder)
			if err != nil {
				return err
			}
			script = append(script, hide...)
		}
		if l.cgroupV2 {
			script = append(script, "mount -t cgroup2 cgroup2 /sys/fs/cgroup")
		}
		// The copied mount table holds a mount of every lab namespace
		// under /run/netns (one per node): a real node has none, and
		// each would make what reads or copies the node's mount table
		// (mountinfo, unshare) cost more with every node of the lab.
		// sshd is in its network namespace already. A lazy unmount of
		// /run/netns detaches everything under it in one call; umount -R
		// would list the mounts first and fail on one that another lab's
		// teardown removed meanwhile.
		script = append(script, "{ ! mountpoint -q /run/netns || umount -l /run/netns; }")
		for _, d := range l.private {
			backing := n.PrivatePath(d)
			if err := os.MkdirAll(backing, 0o755); err != nil {
				return err
			}
			line, err := castssh.ShellJoin([]string{"mount", "--bind", backing, d})
			if err != nil {
				return err
			}
			script = append(script, line)
		}
		exe, _ := castssh.ShellJoin(cmd.Args)
		script = append(script, "exec "+exe)
		cmd = exec.Command("/bin/sh", "-c", strings.Join(script, " && "))
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	}
	if n.Loopback {
		// sshd is the init of a PID namespace: when it dies, the kernel
		// kills its connections and whatever they run.
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWPID
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return err
	}
	if n.Loopback {
		err = cmd.Start()
	} else {
		err = startInNS(n.nsH, cmd)
	}
	if err != nil {
		logf.Close()
		return fmt.Errorf("starting sshd for %s: %w", n.Name, err)
	}
	n.cmd = cmd
	if l.cpu != nil {
		if err := l.cpu.add(cmd.Process.Pid); err != nil {
			_ = cmd.Process.Kill()
			return err
		}
	}
	ready := make(chan struct{})
	go func() {
		defer close(n.done)
		defer logf.Close()
		sc := bufio.NewScanner(stderr)
		listening := 0
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if strings.Contains(line, "Server listening on") {
				if listening++; listening == len(n.Addresses) {
					close(ready)
				}
			}
		}
		_ = cmd.Wait()
	}()
	select {
	case <-ready:
		return nil
	case <-n.done:
		log, _ := os.ReadFile(n.LogFile)
		if n.Loopback && bytes.Contains(log, []byte("Address already in use")) {
			return fmt.Errorf("sshd for %s on port %d: %w", n.Name, n.Port, errPortTaken)
		}
		return fmt.Errorf("sshd for %s exited at start: %s", n.Name, log)
	case <-time.After(20 * time.Second):
		return fmt.Errorf("sshd for %s not listening after 20s", n.Name)
	}
}

// startInNS starts cmd from a thread that sits in namespace h: the child
// inherits it.
func startInNS(h netns.NsHandle, cmd *exec.Cmd) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	startErr := cmd.Start()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it is discarded when the goroutine ends.
		return fmt.Errorf("restoring the network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return startErr
}

// Dial opens a TCP connection from inside the client namespace. Plug it into
// ssh.Config.Dial. The socket is created on a thread switched into the
// namespace and stays there; the thread is switched back before it is
// released. A loopback address (where loopback nodes listen; nothing
// listens on the client namespace's own loopback) is dialed from the host's
// network namespace.
func (l *Lab) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("sshtest: lab %s is torn down", l.ID)
	}
	if isLoopback(addr) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	return dialInNS(ctx, l.clientH, network, addr)
}

// isLoopback says whether addr (host:port) is a loopback IP address.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func dialInNS(ctx context.Context, h netns.NsHandle, network, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer orig.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("entering the lab namespace: %w", err)
	}
	var d net.Dialer
	conn, dialErr := d.DialContext(ctx, network, addr)
	if err := netns.Set(orig); err != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("restoring the network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return conn, dialErr
}

// Exec runs argv inside namespace ns (`ip netns exec`), returning combined
// output.
func (l *Lab) Exec(ctx context.Context, ns string, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ip netns exec %s %s: %w: %s", ns, strings.Join(argv, " "), err, out)
	}
	return out, nil
}

// PrivatePath is where, on the host, the node's private copy of dir (one of
// Options.PrivateDirs) lives.
func (n *Node) PrivatePath(dir string) string {
	for i, d := range n.lab.private {
		if d == filepath.Clean(dir) {
			return filepath.Join(n.Dir, "private", strconv.Itoa(i))
		}
	}
	return ""
}

// Host is the castellan host of the node.
func (n *Node) Host() castssh.Host {
	return castssh.Host{Name: n.Name, Address: n.Address, Port: n.Port}
}

// Hosts returns the castellan hosts of nodes.
func Hosts(nodes []*Node) []castssh.Host {
	hs := make([]castssh.Host, len(nodes))
	for i, n := range nodes {
		hs[i] = n.Host()
	}
	return hs
}

// Config returns a castellan ssh.Config for this lab: User with its key
// and sudo allowed for privileged commands, a known_hosts file holding
// every node's keys, the lab dialer, the bastion if there is one, and a
// logger writing to the test log.
func (l *Lab) Config() castssh.Config {
	cfg := castssh.Config{
		User:           l.User,
		Sudo:           true,
		KeyFiles:       []string{l.KeyFile},
		KnownHostsFile: l.WriteKnownHosts(KnownHostsOptions{}),
		Dial:           l.Dial,
		Logger:         l.Logger(),
		DialTimeout:    10 * time.Second,
	}
	if b := l.Bastion; b != nil {
		cfg.Bastion = &castssh.Bastion{Name: b.Name, Address: b.Address, Port: b.Port, User: l.User, KeyFiles: []string{l.KeyFile}}
	}
	return cfg
}

// Logger writes to the test log until the test ends (later writes from
// background goroutines are dropped instead of panicking).
func (l *Lab) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(&testWriter{l: l}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ l *Lab }

func (w *testWriter) Write(p []byte) (int, error) {
	select {
	case <-w.l.logDone:
	default:
		w.l.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// UserDir creates a directory owned by the lab user (for uploads as that
// user) and returns its path. Nodes share the host's file system: what a
// node writes there is visible to the test.
func (l *Lab) UserDir(name string) string {
	l.t.Helper()
	d := filepath.Join(l.Dir, "files", name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		l.t.Fatal(err)
	}
	if out, err := exec.Command("chown", l.User, d).CombinedOutput(); err != nil {
		l.t.Fatalf("chown: %v: %s", err, out)
	}
	return d
}

// DropConnections kills every process of every connection the node's sshd
// is serving (the per-connection sshd and the commands it runs), as a crash
// or a network cut would; the listener stays up.
func (n *Node) DropConnections() error {
	return signalDescendants(n.cmd.Process.Pid, syscall.SIGKILL)
}

// FreezeConnections stops (SIGSTOP) the node's per-connection processes:
// TCP stays up but nothing answers, as with a hung peer. Call the returned
// function to resume them.
func (n *Node) FreezeConnections() (thaw func() error, err error) {
	if err := signalDescendants(n.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		return nil, err
	}
	return func() error { return signalDescendants(n.cmd.Process.Pid, syscall.SIGCONT) }, nil
}

// Connections counts the node's per-connection sshd processes.
func (n *Node) Connections() int {
	kids, _ := children(n.cmd.Process.Pid)
	return len(kids)
}

// teardown removes everything the lab created.
func (l *Lab) teardown() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	if l.t.Failed() {
		for _, n := range l.AllNodes() {
			if b, err := os.ReadFile(n.LogFile); err == nil && len(bytes.TrimSpace(b)) > 0 {
				l.t.Logf("sshtest: sshd log of %s:\n%s", n.Name, tail(b, 2000))
			}
		}
	}
	st := l.state()
	// Other labs may have handed mountpoints over to this one: the state
	// file is the record.
	if b, err := os.ReadFile(l.statePth); err == nil {
		var disk labState
		if json.Unmarshal(b, &disk) == nil {
			st.Created = disk.Created
		}
	}
	if err := removeLab(st); err != nil {
		l.t.Errorf("sshtest: tearing down lab %s: %v", l.ID, err)
	}
	for _, n := range l.AllNodes() {
		if n.cmd != nil {
			select {
			case <-n.done:
			case <-time.After(5 * time.Second):
				l.t.Errorf("sshtest: sshd of %s did not exit", n.Name)
			}
		}
		if n.nsH.IsOpen() {
			n.nsH.Close()
		}
	}
	if l.clientH.IsOpen() {
		l.clientH.Close()
	}
	if l.cpu != nil {
		l.cpu.remove()
	}
	os.Remove(l.statePth)
	close(l.logDone)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func randomByte() byte {
	b := make([]byte, 1)
	_, _ = rand.Read(b)
	return b[0]
}

var _ io.Writer = (*testWriter)(nil)

// Process is a process running under a node's sshd.
type Process struct {
	PID     int
	Cmdline []string
}

// Processes lists the processes under the node's sshd (its connections and
// whatever they run).
func (n *Node) Processes() []Process {
	_, tree := children(n.cmd.Process.Pid)
	var out []Process
	var walk func(int)
	walk = func(p int) {
		for _, c := range tree[p] {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", c))
			if err == nil {
				out = append(out, Process{PID: c, Cmdline: strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")})
			}
			walk(c)
		}
	}
	walk(n.cmd.Process.Pid)
	return out
}

// PauseListener stops (SIGSTOP) the node's listening sshd: new TCP
// connections are accepted by the kernel but never get an SSH banner, as
// with an overloaded or wedged host. Call the returned function to resume.
func (n *Node) PauseListener() (resume func() error, err error) {
	if err := n.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return nil, err
	}
	return func() error { return n.cmd.Process.Signal(syscall.SIGCONT) }, nil
}
