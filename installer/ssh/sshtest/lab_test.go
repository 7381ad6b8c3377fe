package sshtest_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	castssh "castellan/installer/ssh"
	"castellan/installer/ssh/sshtest"
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
