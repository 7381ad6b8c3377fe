package ssh_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	castssh "castellan/installer/ssh"
	"castellan/installer/ssh/sshtest"

	"golang.org/x/crypto/ssh"
	xknownhosts "golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/sys/unix"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func keyPart(line string) string { return strings.SplitN(line, " ", 2)[1] }

// TestUsersKnownHostsFile: the profile points at a user's own known_hosts,
// full of other hosts, one line OpenSSH accepts and castellan could not
// parse (issue 14: `[2001:db8::7] ssh-ed25519 ...` made the whole file an
// error), and lines nothing can parse. The run's hosts connect; each
// unparseable line is a warning naming file:line; nothing else is.
func TestUsersKnownHostsFile(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	node := lab.Nodes[0]
	key := keyPart(node.KnownHostsLine(sshtest.Ed25519, false))
	content := strings.Join([]string{
		"# ~/.ssh/known_hosts of a user",
		"[2001:db8::7] " + key,
		"github.com,140.82.121.4 " + key,
		"*.corp.example,!bastion.corp.example " + key,
		"this line is garbage",                       // line 5
		"broken.example ssh-ed25519 not-base64!",     // line 6
		"@cert-authority",                            // line 7
		"[10.0.0.1]:2222 ssh-frobnicate AAAAB3NzaC1", // line 8
		xknownhosts.HashHostname("192.0.2.1") + " " + key,
		node.KnownHostsLine(sshtest.Ed25519, false),
		"",
	}, "\n")
	cfg := lab.Config()
	cfg.KnownHostsFile = writeFile(t, content)
	pool, err := castssh.NewPool(cfg)
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	defer pool.Close()
	if _, err := pool.Run(testCtx(t), node.Host(), castssh.Cmd{Argv: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, w := range pool.KnownHostsWarnings() {
		if !strings.HasPrefix(w.String(), cfg.KnownHostsFile+":") {
			t.Errorf("warning does not name file:line: %s", w)
		}
		lines = append(lines, fmt.Sprint(w.Line))
		t.Logf("warning: %s", w)
	}
	if got := strings.Join(lines, ","); got != "5,6,7,8" {
		t.Fatalf("warnings for lines %s, want 5,6,7,8", got)
	}
	kh, warnings, err := castssh.ReadKnownHosts(cfg.KnownHostsFile)
	if err != nil || len(warnings) != 4 || len(kh.Entries) != 5 {
		t.Fatalf("ReadKnownHosts: %d entries, %v, %v", len(kh.Entries), warnings, err)
	}
}

// TestKnownHostsNotUsable: a known_hosts that is a directory, a FIFO, not a
// known_hosts file, or missing is a *KnownHostsFileError saying so, before
// any host is contacted (and without blocking).
func TestKnownHostsNotUsable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	k, _ := sshtest.GenerateKey(sshtest.Ed25519, 0)
	priv := filepath.Join(dir, "id")
	if _, err := sshtest.WriteKey(priv, k, ""); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	os.WriteFile(bin, []byte("host ssh-ed25519 AAAA\n\x00\x01\x02"), 0o600)
	tests := []struct {
		path, want string
		line       int
	}{
		{dir, "directory", 0},
		{fifo, "FIFO", 0},
		{priv, "not a known_hosts file", 1},
		{bin, "binary", 2},
		{filepath.Join(dir, "missing"), "does not exist", 0},
	}
	for _, tc := range tests {
		cfg := castssh.Config{User: "u", KeyFiles: []string{priv}, KnownHostsFile: tc.path}
		_, err := castssh.NewPool(cfg)
		var fe *castssh.KnownHostsFileError
		if !errors.As(err, &fe) || fe.Line != tc.line || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: want KnownHostsFileError at line %d saying %q, got %v", filepath.Base(tc.path), tc.line, tc.want, err)
			continue
		}
		assertMessage(t, err)
		t.Logf("%s: %v", filepath.Base(tc.path), err)
	}
}

// TestHostCertificates: known_hosts trusts the lab's host CA for the nodes
// (a wildcard @cert-authority line) and no key. Nodes showing certificates
// signed by it are accepted; SelectKnownHosts returns the CA line, so the
// run commits what it relied on. A certificate of another CA, or one for
// another address, is not enough: unknown, never changed.
func TestHostCertificates(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 2, HostCA: true})
	node := lab.Nodes[0]
	ca := lab.CAKnownHostsLine("10.*")
	cfg := lab.Config()
	cfg.KnownHostsFile = writeFile(t, "other.example "+keyPart(node.KnownHostsLine(sshtest.ECDSA, false))+"\n"+ca+"\n")
	c := connect(t, cfg, node.Host())
	output(t, c, castssh.Cmd{Argv: []string{"true"}})
	if len(c.AcceptedHostKeys()) != 0 {
		t.Fatalf("a certified host key was accepted as new: %+v", c.AcceptedHostKeys())
	}
	data, _ := os.ReadFile(cfg.KnownHostsFile)
	if got := string(castssh.SelectKnownHosts(data, []castssh.Host{node.Host()})); got != ca+"\n" {
		t.Fatalf("SelectKnownHosts = %q, want the CA line", got)
	}

	// Another CA is trusted for the nodes.
	otherCA, _ := sshtest.GenerateKey(sshtest.Ed25519, 0)
	otherPub, _ := ssh.NewPublicKey(otherCA.Public())
	cfg.KnownHostsFile = writeFile(t, "@cert-authority 10.* "+string(ssh.MarshalAuthorizedKey(otherPub)))
	_, err := castssh.Connect(testCtx(t), cfg, node.Host())
	var he *castssh.HostKeyError
	if !errors.As(err, &he) || he.Changed || len(he.TrustedCAs) != 1 || !strings.Contains(he.CertProblem, "does not trust") {
		t.Fatalf("certificate of another CA: want unknown key with the certificate's problem, got %v", err)
	}
	assertMessage(t, err)
	t.Logf("message: %v", err)

	// A certificate for another address (node 1's, replayed by node 0).
	if err := os.WriteFile(filepath.Join(node.Dir, "ssh_host_ed25519_key-cert.pub"),
		ssh.MarshalAuthorizedKey(mustSign(t, lab, node.HostKeys[sshtest.Ed25519], lab.Nodes[1].Addresses)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := node.Reload(); err != nil {
		t.Fatal(err)
	}
	cfg.KnownHostsFile = writeFile(t, ca+"\n")
	_, err = castssh.Connect(testCtx(t), cfg, node.Host())
	if !errors.As(err, &he) || he.Changed || len(he.TrustedCAs) != 1 || !strings.Contains(he.CertProblem, "principal") {
		t.Fatalf("certificate for another address: want unknown key with the principal problem, got %v", err)
	}
	if strings.Contains(err.Error(), "ssh-keygen -R") {
		t.Fatalf("advice would delete the CA line: %v", err)
	}
	t.Logf("message: %v", err)
}

func mustSign(t *testing.T, lab *sshtest.Lab, pub ssh.PublicKey, principals []string) *ssh.Certificate {
	t.Helper()
	cert, err := lab.SignHostCert(pub, "test", principals)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// TestCAOnlyPlainKey: known_hosts trusts only a CA for the host, and the
// host shows a plain key (issue 14: reported as CHANGED, with advice to run
// `ssh-keygen -R`, which would delete the CA line). It is unknown, the
// advice keeps the CA line, and --accept-new-host-keys accepts it.
func TestCAOnlyPlainKey(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	node := lab.Nodes[0]
	caKey, _ := sshtest.GenerateKey(sshtest.Ed25519, 0)
	caPub, _ := ssh.NewPublicKey(caKey.Public())
	caLine := "@cert-authority 10.* " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(caPub)))
	cfg := lab.Config()
	cfg.KnownHostsFile = writeFile(t, caLine+"\n")
	_, err := castssh.Connect(testCtx(t), cfg, node.Host())
	var he *castssh.HostKeyError
	if !errors.As(err, &he) || he.Changed || len(he.TrustedCAs) != 1 {
		t.Fatalf("want an unknown-key error naming the CA, got %T: %v", err, err)
	}
	if he.Fingerprint != ssh.FingerprintSHA256(node.HostKeys[sshtest.Ed25519]) {
		t.Fatalf("offered key %s %s, want the node's ed25519 key", he.KeyType, he.Fingerprint)
	}
	msg := err.Error()
	if strings.Contains(msg, "ssh-keygen -R") || strings.Contains(msg, "CHANGED") || !strings.Contains(msg, "certificate authorit") {
		t.Fatalf("message: %v", err)
	}
	assertMessage(t, err)
	t.Logf("message: %v", err)

	cfg.AcceptNewHostKeys = true
	pool, err := castssh.NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Run(testCtx(t), node.Host(), castssh.Cmd{Argv: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	if err := pool.TrustHostKeys(pool.PendingHostKeys()...); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(cfg.KnownHostsFile)
	if !strings.HasPrefix(string(b), caLine+"\n") || strings.Count(string(b), "\n") != 2 {
		t.Fatalf("known_hosts after trusting:\n%s", b)
	}
}

// TestAcceptIntoHashedFile: the file's entries are hashed (issue 14: an
// accepted key was written in clear): the pending line, and what
// TrustHostKeys writes, are hashed too, and the host connects strictly
// afterwards.
func TestAcceptIntoHashedFile(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 2})
	node := lab.Nodes[0]
	cfg := lab.Config()
	cfg.KnownHostsFile = lab.WriteKnownHosts(sshtest.KnownHostsOptions{Nodes: []*sshtest.Node{lab.Nodes[1]}, Hashed: true})
	cfg.AcceptNewHostKeys = true
	pool, err := castssh.NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Run(testCtx(t), node.Host(), castssh.Cmd{Argv: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	p, ok := pool.PendingHostKey(node.Host())
	if !ok || !strings.HasPrefix(p.Line, "|1|") || strings.Contains(p.Line, node.Address) {
		t.Fatalf("pending line %q is not hashed", p.Line)
	}
	if err := pool.TrustHostKeys(p); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(cfg.KnownHostsFile)
	if strings.Contains(string(b), node.Address) || !strings.HasSuffix(string(b), p.Line+"\n") {
		t.Fatalf("known_hosts is not hashed throughout:\n%s", b)
	}
	cfg.AcceptNewHostKeys = false
	c := connect(t, cfg, node.Host())
	output(t, c, castssh.Cmd{Argv: []string{"true"}})
}

// TestPendingHostKeys: with AcceptNewHostKeys nothing is written before
// TrustHostKeys (issue 15); the pool pins what it accepted: a host that
// shows another key later in the run is refused, and the bastion's key is
// pending like the nodes'.
func TestPendingHostKeys(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1, HiddenNodes: 1})
	node, hidden := lab.Nodes[0], lab.Hidden[0]
	kh := filepath.Join(t.TempDir(), "known_hosts")
	cfg := lab.Config()
	cfg.KnownHostsFile = kh
	cfg.AcceptNewHostKeys = true
	pool, err := castssh.NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for _, h := range []castssh.Host{hidden.Host(), node.Host()} {
		if _, err := pool.Run(testCtx(t), h, castssh.Cmd{Argv: []string{"true"}}); err != nil {
			t.Fatalf("%s: %v", h, err)
		}
	}
	if _, err := os.Stat(kh); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("known_hosts was written before TrustHostKeys: %v", err)
	}
	pending := pool.PendingHostKeys()
	var names []string
	for _, p := range pending {
		names = append(names, p.Host)
	}
	if got := strings.Join(names, ","); got != "bastion,h0,n0" {
		t.Fatalf("pending keys of %s, want bastion,h0,n0", got)
	}
	bh, _ := pool.BastionHost()
	if p, ok := pool.PendingHostKey(bh); !ok || p.Fingerprint != ssh.FingerprintSHA256(lab.Bastion.HostKeys[sshtest.Ed25519]) {
		t.Fatalf("PendingHostKey(bastion) = %+v, %v", p, ok)
	}

	// The node is rebuilt while the run goes on: its next connection is
	// refused, and nothing is written.
	if err := node.RotateHostKeys(); err != nil {
		t.Fatal(err)
	}
	if err := node.DropConnections(); err != nil {
		t.Fatal(err)
	}
	var he *castssh.HostKeyError
	for range 50 {
		_, err = pool.Run(testCtx(t), node.Host(), castssh.Cmd{Argv: []string{"true"}})
		var le *castssh.ConnectionLostError
		if !errors.As(err, &le) {
			break
		}
	}
	if !errors.As(err, &he) || !he.Changed || !he.Pinned || he.Fingerprint != ssh.FingerprintSHA256(node.HostKeys[sshtest.Ed25519]) {
		t.Fatalf("want a pinned changed-key error, got %T: %v", err, err)
	}
	assertMessage(t, err)
	t.Logf("message: %v", err)
	if _, err := os.Stat(kh); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("known_hosts was written: %v", err)
	}

	// Someone pins the hidden node to another key meanwhile: trusting is
	// refused as a changed key, and writes nothing.
	other := otherKeyLine(t, hidden.Address)
	if err := os.WriteFile(kh, []byte(other+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = pool.TrustHostKeys(pending...)
	if !errors.As(err, &he) || !he.Changed || he.Host != hidden.Name {
		t.Fatalf("trusting over another key: want changed-key error for %s, got %v", hidden.Name, err)
	}
	if b, _ := os.ReadFile(kh); string(b) != other+"\n" {
		t.Fatalf("known_hosts modified:\n%s", b)
	}
	os.Remove(kh)
	if err := pool.TrustHostKeys(pending...); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(kh)
	if strings.Count(string(b), "\n") != 3 {
		t.Fatalf("known_hosts after trusting 3 keys:\n%s", b)
	}
	// A key the pool never accepted is refused.
	if err := pool.TrustHostKeys(castssh.AcceptedKey{Host: "x", Addr: "192.0.2.1:22", Fingerprint: "SHA256:x"}); err == nil {
		t.Fatal("trusted a key the pool never accepted")
	}
}

// TestTrustHostKeysWriteFailure: known_hosts cannot be written (issue 14:
// reported as an unreachable node). It is a local file error, the file is
// as it was, and the key stays pending.
func TestTrustHostKeysWriteFailure(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	node := lab.Nodes[0]
	dir := t.TempDir()
	kh := filepath.Join(dir, "known_hosts")
	content := "# mine\n"
	if err := os.WriteFile(kh, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	// A read-only file system (root ignores file permissions).
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if err := unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("read-only remount: %v", err)
	}
	cfg := lab.Config()
	cfg.KnownHostsFile = kh
	cfg.AcceptNewHostKeys = true
	pool, err := castssh.NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Run(context.Background(), node.Host(), castssh.Cmd{Argv: []string{"true"}}); err != nil {
		t.Fatalf("connect: %v", err)
	}
	err = pool.TrustHostKeys(pool.PendingHostKeys()...)
	var fe *castssh.KnownHostsFileError
	var de *castssh.DialError
	if !errors.As(err, &fe) || fe.Op != "write" || errors.As(err, &de) || !strings.Contains(err.Error(), "read-only file system") {
		t.Fatalf("want a KnownHostsFileError (write), got %T: %v", err, err)
	}
	assertMessage(t, err)
	t.Logf("message: %v", err)
	if b, _ := os.ReadFile(kh); string(b) != content {
		t.Fatalf("known_hosts changed: %q", b)
	}
	if len(pool.PendingHostKeys()) != 1 {
		t.Fatalf("the key is no longer pending")
	}
}
