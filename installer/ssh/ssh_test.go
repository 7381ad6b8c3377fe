package ssh_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	castssh "castellan/installer/ssh"
	"castellan/installer/ssh/sshtest"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	xknownhosts "golang.org/x/crypto/ssh/knownhosts"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func connect(t *testing.T, cfg castssh.Config, h castssh.Host) *castssh.Client {
	t.Helper()
	c, err := castssh.Connect(testCtx(t), cfg, h)
	if err != nil {
		t.Fatalf("connect %s: %v", h, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func output(t *testing.T, c *castssh.Client, cmd castssh.Cmd) string {
	t.Helper()
	out, err := c.Output(testCtx(t), cmd)
	if err != nil {
		t.Fatalf("%v: %v", cmd.Argv, err)
	}
	return out
}

// serveAgent runs an ssh-agent (x/crypto keyring) on a unix socket holding
// signer's key.
func serveAgent(t *testing.T, lab *sshtest.Lab) string {
	t.Helper()
	kr := agent.NewKeyring()
	// The lab's key, loaded from its file (as ssh-add would).
	pemBytes, err := os.ReadFile(lab.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ssh.ParseRawPrivateKey(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.Add(agent.AddedKey{PrivateKey: raw}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = agent.ServeAgent(kr, c)
			}()
		}
	}()
	return sock
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	node := lab.Nodes[0]
	agentSock := serveAgent(t, lab)
	tests := []struct {
		name string
		mod  func(*castssh.Config)
	}{
		{"key file", func(*castssh.Config) {}},
		{"ssh-agent", func(c *castssh.Config) { c.KeyFiles = nil; c.UseAgent = true; c.AgentSocket = agentSock }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := lab.Config()
			tc.mod(&cfg)
			c := connect(t, cfg, node.Host())
			if got := output(t, c, castssh.Cmd{Argv: []string{"id", "-un"}}); got != lab.User {
				t.Fatalf("id -un = %q, want %q", got, lab.User)
			}
		})
	}
	t.Run("wrong key refused", func(t *testing.T) {
		cfg := lab.Config()
		cfg.KeyFiles = []string{writeKey(t, "")}
		_, err := castssh.Connect(testCtx(t), cfg, node.Host())
		var ae *castssh.AuthError
		if !errors.As(err, &ae) {
			t.Fatalf("want *AuthError, got %T: %v", err, err)
		}
		t.Logf("message: %v", err)
	})
	t.Run("encrypted key file", func(t *testing.T) {
		cfg := lab.Config()
		cfg.KeyFiles = []string{writeKey(t, "correct horse")}
		_, err := castssh.Connect(testCtx(t), cfg, node.Host())
		if err == nil || !strings.Contains(err.Error(), "encrypted with a passphrase") || !strings.Contains(err.Error(), "ssh-agent") {
			t.Fatalf("want a clear error about the encrypted key, got %v", err)
		}
		if strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Fatalf("error leaks key material: %v", err)
		}
	})
}

func writeKey(t *testing.T, passphrase string) string {
	t.Helper()
	k, err := sshtest.GenerateKey(sshtest.Ed25519, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "key")
	if _, err := sshtest.WriteKey(p, k, passphrase); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSudo(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	node := lab.Nodes[0]
	c := connect(t, lab.Config(), node.Host())
	if got := output(t, c, castssh.Cmd{Argv: []string{"id", "-u"}}); got == "0" {
		t.Fatalf("without Sudo, id -u = 0: the test user must not be root")
	}
	if got := output(t, c, castssh.Cmd{Argv: []string{"id", "-u"}, Sudo: true}); got != "0" {
		t.Fatalf("with Sudo, id -u = %q, want 0", got)
	}
	// Config.Sudo allows sudo for privileged commands only.
	if !lab.Config().Sudo {
		t.Fatal("the lab's config does not allow sudo")
	}
	// A failing privileged command is an ExitError, not a sudo problem.
	_, err := c.Run(testCtx(t), castssh.Cmd{Argv: []string{"false"}, Sudo: true})
	var ee *castssh.ExitError
	if !errors.As(err, &ee) || ee.ExitCode != 1 {
		t.Fatalf("sudo false: want ExitError 1, got %v", err)
	}
}

// otherKeyLine is a known_hosts line for addr with a freshly generated key.
func otherKeyLine(t *testing.T, addr string) string {
	t.Helper()
	k, err := sshtest.GenerateKey(sshtest.Ed25519, 0)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ssh.NewPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return xknownhosts.Line([]string{addr}, pub)
}

func TestHostKeys(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 2})
	node, other := lab.Nodes[0], lab.Nodes[1]

	t.Run("unknown key refused with its fingerprint", func(t *testing.T) {
		cfg := lab.Config()
		cfg.KnownHostsFile = lab.WriteKnownHosts(sshtest.KnownHostsOptions{Nodes: []*sshtest.Node{other}})
		_, err := castssh.Connect(testCtx(t), cfg, node.Host())
		var he *castssh.HostKeyError
		if !errors.As(err, &he) || he.Changed {
			t.Fatalf("want an unknown-key HostKeyError, got %T: %v", err, err)
		}
		var want string
		for _, k := range node.HostKeys {
			if k.Type() == he.KeyType {
				want = ssh.FingerprintSHA256(k)
			}
		}
		if want == "" || he.Fingerprint != want || !strings.Contains(err.Error(), want) {
			t.Fatalf("fingerprint %q (type %s) is not the node's %q: %v", he.Fingerprint, he.KeyType, want, err)
		}
		if !strings.Contains(err.Error(), "--accept-new-host-keys") || !strings.Contains(err.Error(), "ssh-keyscan") {
			t.Fatalf("message does not say how to trust the key: %v", err)
		}
		t.Logf("message: %v", err)
	})

	t.Run("changed key refused even with AcceptNewHostKeys", func(t *testing.T) {
		cfg := lab.Config()
		cfg.AcceptNewHostKeys = true
		kh := filepath.Join(t.TempDir(), "known_hosts")
		content := otherKeyLine(t, node.Address) + "\n"
		if err := os.WriteFile(kh, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.KnownHostsFile = kh
		_, err := castssh.Connect(testCtx(t), cfg, node.Host())
		var he *castssh.HostKeyError
		if !errors.As(err, &he) || !he.Changed {
			t.Fatalf("want a changed-key HostKeyError, got %T: %v", err, err)
		}
		if he.Fingerprint != ssh.FingerprintSHA256(node.HostKeys[sshtest.Ed25519]) {
			t.Fatalf("offered fingerprint %s is not the node's ed25519 key", he.Fingerprint)
		}
		for _, s := range []string{"CHANGED", "never accepted automatically", "ssh-keygen -R"} {
			if !strings.Contains(err.Error(), s) {
				t.Fatalf("message lacks %q: %v", s, err)
			}
		}
		if b, _ := os.ReadFile(kh); string(b) != content {
			t.Fatalf("known_hosts was modified:\n%s", b)
		}
		t.Logf("message: %v", err)
	})

	t.Run("AcceptNewHostKeys accepts in memory, TrustHostKeys writes, next connect is strict", func(t *testing.T) {
		for _, hashed := range []bool{false, true} {
			kh := filepath.Join(t.TempDir(), "sub", "known_hosts") // does not exist yet
			cfg := lab.Config()
			cfg.KnownHostsFile = kh
			cfg.AcceptNewHostKeys = true
			cfg.HashKnownHosts = hashed
			pool, err := castssh.NewPool(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			c, err := pool.Client(testCtx(t), node.Host())
			if err != nil {
				t.Fatal(err)
			}
			acc := c.AcceptedHostKeys()
			if len(acc) != 1 || acc[0].Host != node.Name || acc[0].KnownHostsFile != kh {
				t.Fatalf("AcceptedHostKeys = %+v", acc)
			}
			// Nothing is written before the caller trusts the key.
			if _, err := os.Stat(kh); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("known_hosts written during connect: %v", err)
			}
			pending := pool.PendingHostKeys()
			if len(pending) != 1 || pending[0].Fingerprint != acc[0].Fingerprint {
				t.Fatalf("PendingHostKeys = %+v", pending)
			}
			if p, ok := pool.PendingHostKey(node.Host()); !ok || p.Line != acc[0].Line {
				t.Fatalf("PendingHostKey = %+v, %v", p, ok)
			}
			if err := pool.TrustHostKeys(pending...); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(kh)
			if err != nil || strings.TrimSpace(string(b)) != acc[0].Line {
				t.Fatalf("known_hosts = %q, %v; want the accepted line %q", b, err, acc[0].Line)
			}
			if hashed != strings.HasPrefix(acc[0].Line, "|1|") {
				t.Fatalf("hashed=%v but line is %q", hashed, acc[0].Line)
			}
			if len(pool.PendingHostKeys()) != 0 || len(pool.AcceptedHostKeys()) != 1 {
				t.Fatalf("after trusting: pending %v, accepted %v", pool.PendingHostKeys(), pool.AcceptedHostKeys())
			}
			// Trusting again writes nothing more.
			if err := pool.TrustHostKeys(acc...); err != nil {
				t.Fatal(err)
			}
			if b2, _ := os.ReadFile(kh); string(b2) != string(b) {
				t.Fatalf("trusting twice wrote again:\n%s", b2)
			}
			// Strict now: the recorded key is accepted ...
			cfg.AcceptNewHostKeys = false
			c2 := connect(t, cfg, node.Host())
			if len(c2.AcceptedHostKeys()) != 0 {
				t.Fatalf("second connect accepted keys again")
			}
			// ... and another key for that address is a changed key.
			if err := os.WriteFile(kh, []byte(otherKeyLine(t, node.Address)+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg.AcceptNewHostKeys = true
			_, err = castssh.Connect(testCtx(t), cfg, node.Host())
			var he *castssh.HostKeyError
			if !errors.As(err, &he) || !he.Changed {
				t.Fatalf("want changed-key error, got %v", err)
			}
		}
	})

	t.Run("hashed known_hosts entries", func(t *testing.T) {
		cfg := lab.Config()
		cfg.KnownHostsFile = lab.WriteKnownHosts(sshtest.KnownHostsOptions{Hashed: true})
		b, _ := os.ReadFile(cfg.KnownHostsFile)
		if strings.Contains(string(b), node.Address) {
			t.Fatalf("known_hosts is not hashed")
		}
		c := connect(t, cfg, node.Host())
		output(t, c, castssh.Cmd{Argv: []string{"true"}})
	})
}

// TestEd25519PinnedHost: the node's sshd offers ecdsa, rsa and ed25519;
// known_hosts holds only its ed25519 key. x/crypto's default preference
// (ECDSA first) negotiates ecdsa and fails as if the key had changed; the
// transport negotiates what known_hosts holds and connects.
func TestEd25519PinnedHost(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	node := lab.Nodes[0]
	for _, typ := range []string{sshtest.Ed25519, sshtest.ECDSA, sshtest.RSA} {
		t.Run(typ, func(t *testing.T) {
			cfg := lab.Config()
			cfg.KnownHostsFile = lab.WriteKnownHosts(sshtest.KnownHostsOptions{KeyTypes: []string{typ}})
			c := connect(t, cfg, node.Host())
			output(t, c, castssh.Cmd{Argv: []string{"true"}})
		})
	}

	t.Run("without negotiation it fails", func(t *testing.T) {
		kh := lab.WriteKnownHosts(sshtest.KnownHostsOptions{KeyTypes: []string{sshtest.Ed25519}})
		cb, err := xknownhosts.New(kh)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := lab.Dial(testCtx(t), "tcp", node.Host().Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		signer, err := ssh.NewSignerFromKey(mustParseKey(t, lab.KeyFile))
		if err != nil {
			t.Fatal(err)
		}
		_, _, _, err = ssh.NewClientConn(conn, node.Host().Addr(), &ssh.ClientConfig{
			User: lab.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: cb,
		})
		var ke *xknownhosts.KeyError
		if !errors.As(err, &ke) || len(ke.Want) == 0 {
			t.Fatalf("default negotiation: want a key mismatch, got %v", err)
		}
		t.Logf("default x/crypto negotiation fails as expected: %v", err)
	})
}

func mustParseKey(t *testing.T, path string) any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestBastion(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{HiddenNodes: 2})
	hidden := lab.Hidden[0]

	t.Run("through the bastion", func(t *testing.T) {
		cfg := lab.Config()
		pool, err := castssh.NewPool(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		for _, h := range lab.Hidden {
			res, err := pool.Run(testCtx(t), h.Host(), castssh.Cmd{Argv: []string{"hostname", "-I"}})
			if err != nil {
				t.Fatalf("%s: %v", h.Name, err)
			}
			if got := strings.TrimSpace(string(res.Stdout)); got != h.Address {
				t.Fatalf("%s: addresses %q, want %q", h.Name, got, h.Address)
			}
		}
		// One bastion connection carries both.
		if n := lab.Bastion.Connections(); n != 1 {
			t.Fatalf("bastion serves %d connections, want 1", n)
		}
		// The bastion connection drops: the pool redials it, then the node.
		if err := lab.Bastion.DropConnections(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := pool.Run(testCtx(t), hidden.Host(), castssh.Cmd{Argv: []string{"true"}})
			if err == nil {
				break
			}
			var le *castssh.ConnectionLostError
			if !errors.As(err, &le) || time.Now().After(deadline) {
				t.Fatalf("after the bastion dropped: %v", err)
			}
			t.Logf("while the drop is noticed: %v", err)
		}
		// Standalone Connect through the bastion too.
		c := connect(t, cfg, hidden.Host())
		output(t, c, castssh.Cmd{Argv: []string{"true"}})
	})

	t.Run("wrong bastion key refused", func(t *testing.T) {
		kh := lab.WriteKnownHosts(sshtest.KnownHostsOptions{Nodes: lab.Hidden})
		f, err := os.OpenFile(kh, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(otherKeyLine(t, lab.Bastion.Address) + "\n")
		f.Close()
		cfg := lab.Config()
		cfg.KnownHostsFile = kh
		cfg.AcceptNewHostKeys = true
		_, err = castssh.Connect(testCtx(t), cfg, hidden.Host())
		var he *castssh.HostKeyError
		if !errors.As(err, &he) || !he.Changed || he.Host != lab.Bastion.Name {
			t.Fatalf("want changed-key error for the bastion, got %v", err)
		}
	})

	t.Run("unknown bastion key refused", func(t *testing.T) {
		cfg := lab.Config()
		cfg.KnownHostsFile = lab.WriteKnownHosts(sshtest.KnownHostsOptions{Nodes: lab.Hidden})
		_, err := castssh.Connect(testCtx(t), cfg, hidden.Host())
		var he *castssh.HostKeyError
		if !errors.As(err, &he) || he.Changed || he.Host != lab.Bastion.Name {
			t.Fatalf("want unknown-key error for the bastion, got %v", err)
		}
	})

	t.Run("wrong node key behind the bastion refused", func(t *testing.T) {
		kh := lab.WriteKnownHosts(sshtest.KnownHostsOptions{Nodes: []*sshtest.Node{lab.Bastion}})
		f, _ := os.OpenFile(kh, os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString(otherKeyLine(t, hidden.Address) + "\n")
		f.Close()
		cfg := lab.Config()
		cfg.KnownHostsFile = kh
		_, err := castssh.Connect(testCtx(t), cfg, hidden.Host())
		var he *castssh.HostKeyError
		if !errors.As(err, &he) || !he.Changed || he.Host != hidden.Name {
			t.Fatalf("want changed-key error for %s, got %v", hidden.Name, err)
		}
	})
}

// TestHostKeyTypeGone: known_hosts pins an ecdsa key, the rebuilt host only
// has ed25519. Refused as a changed key, with what known_hosts holds.
func TestHostKeyTypeGone(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1, HostKeyTypes: []string{sshtest.Ed25519}})
	node := lab.Nodes[0]
	k, err := sshtest.GenerateKey(sshtest.ECDSA, 0)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := ssh.NewPublicKey(k.Public())
	kh := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(kh, []byte(xknownhosts.Line([]string{node.Address}, pub)+"\n"), 0o600)
	cfg := lab.Config()
	cfg.KnownHostsFile = kh
	cfg.AcceptNewHostKeys = true
	_, err = castssh.Connect(testCtx(t), cfg, node.Host())
	var he *castssh.HostKeyError
	if !errors.As(err, &he) || !he.Changed || !he.NoCommonAlgorithm || !strings.Contains(err.Error(), ssh.FingerprintSHA256(pub)) {
		t.Fatalf("want a changed-key error listing the pinned key, got %T: %v", err, err)
	}
	t.Logf("message: %v", err)
}
