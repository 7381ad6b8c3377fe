// Package sshtest runs real OpenSSH peers for tests: a Lab is a client
// network namespace with a bridge and N node namespaces, each with its own
// sshd, host keys and address, a test user with passwordless sudo (and one
// whose sudo wants a password), optionally a bastion in front of hidden
// nodes. The Go test process dials into the client namespace through
// Lab.Dial, which plugs into ssh.Config.Dial.
//
// Everything a Lab creates (processes, namespaces, users, sudoers drop-in,
// files) is removed by t.Cleanup; labs left behind by a killed test process
// are swept by the next New. Traffic only ever goes to addresses inside the
// namespaces the lab created, or to loopback.
//
// Use from any package's tests:
//
//	func TestSomething(t *testing.T) {
//		lab := sshtest.New(t, sshtest.Options{Nodes: 3}) // skips without root/sshd
//		pool, err := ssh.NewPool(lab.Config())           // lab user, key, known_hosts, netns dialer
//		if err != nil {
//			t.Fatal(err)
//		}
//		defer pool.Close()
//		res, err := pool.Run(ctx, lab.Nodes[0].Host(), ssh.Cmd{Argv: []string{"id", "-u"}, Sudo: true})
//		...
//	}
//
// Clients that dial by themselves (go-git's ssh transport, the ssh and git
// CLIs) cannot enter the namespaces: Options.Loopback gives nodes whose sshd
// listens on 127.0.0.1 (a free port each) in the host's network namespace
// instead, with the same users, keys and known_hosts helpers; Lab.Dial
// reaches them too.
//
// Nodes share the host's file system (only the network is namespaced), so a
// test can check directly what a node wrote; Lab.UserDir gives a directory
// the lab user owns. Node.DropConnections, FreezeConnections and
// PauseListener simulate crashes, hung peers and wedged hosts.
//
// Nodes as users really have them: Lab.AddUser adds login users with any
// shell and startup files (bash printing from ~/.bashrc, zsh, fish, tcsh,
// nologin), any sudo rule (NOPASSWD, password, requiretty, none, with a
// sudo log) or uid 0 (a root login); Options.HideSudo gives nodes without
// sudo, Options.BastionNoForwarding a bastion with AllowTcpForwarding no,
// Options.HostCA host certificates signed by Lab.HostCA; Node.RotateHostKeys
// makes a node a rebuilt host.
//
// It needs root and Debian's openssh-server, sudo and iproute2. When they
// are missing, tests are skipped, or fail when CASTELLAN_REQUIRE_REAL_PEERS=1
// (as `make test` sets it).
package sshtest

import (
	"castellan/installer/testenv"

	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RequireEnv is the environment variable that turns a missing prerequisite
// from a skip into a failure.
const RequireEnv = testenv.RequireEnv

// SftpServerPaths are the places sftp-server is looked for.
var sftpServerPaths = []string{
	"/usr/lib/openssh/sftp-server",
	"/usr/libexec/openssh/sftp-server",
	"/usr/lib/ssh/sftp-server",
	"/usr/libexec/sftp-server",
}

const installHint = "run the tests as root with Debian's openssh-server, sudo and iproute2 installed " +
	"(apt-get install -y openssh-server sudo iproute2)"

// Missing returns what is missing to run real peers, or "".
func Missing() string {
	var miss []string
	if os.Geteuid() != 0 {
		miss = append(miss, "root privileges (network namespaces, sshd, useradd)")
	}
	for _, p := range []string{"/usr/sbin/sshd", "sudo", "visudo", "ip", "useradd", "userdel", "sha256sum"} {
		if _, err := exec.LookPath(p); err != nil {
			miss = append(miss, p)
		}
	}
	if sftpServer() == "" {
		miss = append(miss, "sftp-server (at "+strings.Join(sftpServerPaths, ", ")+")")
	}
	if len(miss) == 0 {
		return ""
	}
	return fmt.Sprintf("real SSH peers need %s: %s", strings.Join(miss, ", "), installHint)
}

func sftpServer() string {
	for _, p := range sftpServerPaths {
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// Require skips the test (or fails it when CASTELLAN_REQUIRE_REAL_PEERS=1)
// if real peers cannot run here.
func Require(t testing.TB) {
	t.Helper()
	m := Missing()
	if m == "" {
		return
	}
	testenv.Missing(t, "%s", m)
}
