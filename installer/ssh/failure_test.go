package ssh_test

import (
	"bytes"
	"crypto"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	castssh "castellan/installer/ssh"
	"castellan/installer/ssh/sshtest"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// agentWith serves an ssh-agent (x/crypto's keyring) holding keys, in
// order, on a unix socket.
func agentWith(t *testing.T, keys ...any) string {
	t.Helper()
	kr := agent.NewKeyring()
	for _, k := range keys {
		if err := kr.Add(agent.AddedKey{PrivateKey: k}); err != nil {
			t.Fatal(err)
		}
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

func unrelatedKeys(t *testing.T, n int) []any {
	t.Helper()
	var keys []any
	for range n {
		k, err := sshtest.GenerateKey(sshtest.Ed25519, 0)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	return keys
}

// logCount counts the lines of a node's sshd log that contain s, once
// there is at least one (sshd logs after the client is gone) and the log
// has settled.
func logCount(t *testing.T, n *sshtest.Node, s string) int {
	t.Helper()
	count := func() int {
		b, err := os.ReadFile(n.LogFile)
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Count(b, []byte(s))
	}
	deadline := time.Now().Add(5 * time.Second)
	for count() == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	return count()
}

// TestTooManyAuthenticationFailures: an ssh-agent holding seven unrelated
// keys before the right one, no key file, sshd's default MaxAuthTries
// (issue 14: sshd's "too many authentication failures" was retried 4 times
// as a network error). It is an *AuthError at the first attempt, saying how
// many keys were offered and what to do; with the key file given, its key
// is offered first and the same agent works.
func TestTooManyAuthenticationFailures(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	node := lab.Nodes[0]
	sock := agentWith(t, append(unrelatedKeys(t, 7), mustParseKey(t, lab.KeyFile))...)
	cfg := lab.Config()
	cfg.KeyFiles = nil
	cfg.UseAgent = true
	cfg.AgentSocket = sock
	cfg.DialRetries = 3
	cfg.RetryBackoff = 10 * time.Millisecond
	_, err := castssh.Connect(testCtx(t), cfg, node.Host())
	var ae *castssh.AuthError
	if !errors.As(err, &ae) || !ae.CutShort || ae.KeysAvailable != 8 || ae.KeysOffered < 6 || ae.KeysOffered >= 8 {
		t.Fatalf("want *AuthError cut short after 6-7 of 8 keys, got %T: %+v", err, err)
	}
	for _, s := range []string{"MaxAuthTries", "key file", "of 8 keys"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("message lacks %q: %v", s, err)
		}
	}
	assertMessage(t, err)
	t.Logf("message: %v", err)
	// Never retried: sshd saw one connection give up.
	if n := logCount(t, node, "maximum authentication attempts exceeded"); n != 1 {
		t.Fatalf("sshd saw %d connections exceed MaxAuthTries, want 1 (no retry)", n)
	}

	cfg.KeyFiles = []string{lab.KeyFile}
	c := connect(t, cfg, node.Host())
	output(t, c, castssh.Cmd{Argv: []string{"true"}})
}

// TestWrongKeyRefused: the server refuses every key: *AuthError, not cut
// short, not retried.
func TestWrongKeyRefused(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	cfg := lab.Config()
	cfg.KeyFiles = []string{writeKey(t, "")}
	cfg.RetryBackoff = 10 * time.Millisecond
	_, err := castssh.Connect(testCtx(t), cfg, lab.Nodes[0].Host())
	var ae *castssh.AuthError
	if !errors.As(err, &ae) || ae.CutShort || ae.KeysOffered != 1 {
		t.Fatalf("want *AuthError with 1 key offered, got %T: %+v", err, err)
	}
	assertMessage(t, err)
	if n := logCount(t, lab.Nodes[0], "Connection closed by authenticating user"); n != 1 {
		t.Fatalf("sshd saw %d failed authentications, want 1 (no retry)", n)
	}
}

// TestBastionWithoutForwarding: the bastion's sshd has `AllowTcpForwarding
// no` (issue 14: retried, then reported as an unreachable node). It is a
// *ForwardingError at once, naming the setting.
func TestBastionWithoutForwarding(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{HiddenNodes: 1, BastionNoForwarding: true})
	cfg := lab.Config()
	cfg.Bastion.Name = "bastion " + lab.Bastion.Address // as the installer names it
	cfg.DialRetries = 3
	cfg.RetryBackoff = 2 * time.Second
	_, err := castssh.Connect(testCtx(t), cfg, lab.Hidden[0].Host())
	var fe *castssh.ForwardingError
	if !errors.As(err, &fe) || fe.Err.Reason != ssh.Prohibited || fe.Host != lab.Hidden[0].Name {
		t.Fatalf("want *ForwardingError, got %T: %v", err, err)
	}
	// Not retried: the bastion refused one forwarding request. (Counted, not
	// timed: on a loaded machine one handshake can outlast the backoff.)
	if n := logCount(t, lab.Bastion, "refused local port forward"); n != 1 {
		t.Fatalf("the bastion refused %d forwarding requests, want 1: retried", n)
	}
	if !strings.Contains(err.Error(), "AllowTcpForwarding yes") || !strings.Contains(err.Error(), lab.Bastion.Address) {
		t.Fatalf("message does not name the bastion and its setting: %v", err)
	}
	assertMessage(t, err)
	t.Logf("message: %v", err)
}

// TestEncryptedKeyFileWithAgent: a passphrase-protected key file whose key
// the agent holds, behind six other agent keys (issue 14: exit 2, "load it
// into the agent", which was done). The agent's signer for that key is used
// and offered first.
func TestEncryptedKeyFileWithAgent(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	raw := mustParseKey(t, lab.KeyFile)
	enc := filepath.Join(t.TempDir(), "id_ed25519")
	if _, err := sshtest.WriteKey(enc, raw.(crypto.Signer), "correct horse"); err != nil {
		t.Fatal(err)
	}
	sock := agentWith(t, append(unrelatedKeys(t, 6), raw)...)
	cfg := lab.Config()
	cfg.KeyFiles = []string{enc}
	cfg.UseAgent = true
	cfg.AgentSocket = sock
	c := connect(t, cfg, lab.Nodes[0].Host())
	if got := output(t, c, castssh.Cmd{Argv: []string{"id", "-un"}}); got != lab.User {
		t.Fatalf("id -un = %q", got)
	}
	if err := castssh.CheckKeyFile(enc, sock); err != nil {
		t.Fatalf("CheckKeyFile with the agent: %v", err)
	}
	// Without its .pub file too: the OpenSSH format keeps the public key
	// in clear.
	if err := os.Remove(enc + ".pub"); err != nil {
		t.Fatal(err)
	}
	connect(t, cfg, lab.Nodes[0].Host())

	// An agent without the key, and no agent: clear errors before any host
	// is contacted.
	other := agentWith(t, unrelatedKeys(t, 2)...)
	for _, tc := range []struct {
		sock string
		want castssh.KeyFileProblem
	}{
		{other, castssh.KeyFileNotInAgent},
		{"", castssh.KeyFileEncrypted},
		{filepath.Join(t.TempDir(), "no-agent"), castssh.KeyFileAgentUnreachable},
	} {
		cfg := lab.Config()
		cfg.KeyFiles = []string{enc}
		cfg.UseAgent = tc.sock != ""
		cfg.AgentSocket = tc.sock
		_, err := castssh.NewPool(cfg)
		var ke *castssh.KeyFileError
		if !errors.As(err, &ke) || ke.Problem != tc.want {
			t.Fatalf("agent %q: want KeyFileError %v, got %T: %v", tc.sock, tc.want, err, err)
		}
		if err2 := castssh.CheckKeyFile(enc, tc.sock); !errors.As(err2, &ke) || ke.Problem != tc.want {
			t.Fatalf("CheckKeyFile(agent %q) = %v", tc.sock, err2)
		}
		assertMessage(t, err)
		t.Logf("message: %v", err)
	}
}

// TestCheckKeyFile: what validation needs to report before any node is
// touched, each a distinct problem, none blocking.
func TestCheckKeyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := filepath.Join(dir, "id")
	k, _ := sshtest.GenerateKey(sshtest.Ed25519, 0)
	if _, err := sshtest.WriteKey(good, k, ""); err != nil {
		t.Fatal(err)
	}
	notKey := filepath.Join(dir, "notes")
	os.WriteFile(notKey, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n"), 0o600)
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	os.WriteFile(big, bytes.Repeat([]byte("A"), castssh.MaxKeyFileSize+1), 0o600)
	tests := []struct {
		path string
		want castssh.KeyFileProblem
	}{
		{good, 0},
		{dir, castssh.KeyFileNotAFile},
		{good + ".pub", castssh.KeyFilePublicKey},
		{notKey, castssh.KeyFileNotAKey},
		{fifo, castssh.KeyFileNotAFile},
		{"/dev/zero", castssh.KeyFileNotAFile},
		{big, castssh.KeyFileNotAFile},
		{filepath.Join(dir, "missing"), castssh.KeyFileMissing},
	}
	for _, tc := range tests {
		done := make(chan error, 1)
		go func() { done <- castssh.CheckKeyFile(tc.path, "") }()
		var err error
		select {
		case err = <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("CheckKeyFile(%s) blocks", tc.path)
		}
		if tc.want == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.path, err)
			}
			continue
		}
		var ke *castssh.KeyFileError
		if !errors.As(err, &ke) || ke.Problem != tc.want {
			t.Errorf("%s: want problem %v, got %v", tc.path, tc.want, err)
			continue
		}
		if strings.Contains(err.Error(), "garbage") || strings.Contains(err.Error(), "AAAA") {
			t.Errorf("%s: the message shows the file's content: %v", tc.path, err)
		}
		assertMessage(t, err)
		t.Logf("%s: %v", filepath.Base(tc.path), err)
	}
}
