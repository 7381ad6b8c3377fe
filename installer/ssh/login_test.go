package ssh_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	castssh "castellan/installer/ssh"
	"castellan/installer/ssh/sshtest"
	"castellan/installer/testenv"
)

// assertMessage checks the shape every error of the transport has: "ssh: "
// once, at the start, and a bastion named once.
func assertMessage(t *testing.T, err error) {
	t.Helper()
	msg := err.Error()
	if !strings.HasPrefix(msg, "ssh: ") || strings.Contains(msg[5:], "ssh: ") {
		t.Errorf("message does not say \"ssh: \" exactly once, at the start: %s", msg)
	}
	if strings.Contains(strings.ToLower(msg), "bastion bastion") {
		t.Errorf("message names the bastion twice: %s", msg)
	}
}

// noisyShells are login shells whose startup files run for a command over
// SSH, each with the file the noise is put in.
var noisyShells = []struct{ shell, file, named string }{
	{"/bin/bash", ".bashrc", "~/.bashrc"},
	{"/bin/zsh", ".zshenv", "~/.zshenv"},
	{"/usr/bin/fish", ".config/fish/config.fish", "config.fish"},
	{"/bin/tcsh", ".tcshrc", "~/.tcshrc"},
}

// TestNoisyLoginShells: a login user whose shell's startup file prints a
// line on stdout and one on stderr (issue 14: `echo hi` in ~/.bashrc made
// the node's architecture "hi\nx86_64"). Commands, privileged commands,
// hostile arguments and SFTP uploads all work; the output is the
// command's alone; the noise is reported with the shell and its file.
func TestNoisyLoginShells(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	node := lab.Nodes[0]
	quiet := connect(t, lab.Config(), node.Host())
	arch := output(t, quiet, castssh.Cmd{Argv: []string{"uname", "-m"}})
	if noise := quiet.LoginNoise(); noise != nil {
		t.Fatalf("the lab's /bin/sh user is noisy: %+v", noise)
	}
	hostile := []string{"a b", "it's", "x\ny", "!x", `back\slash`, "$(id)", "", "\\'\n!\\"}
	for _, sh := range noisyShells {
		t.Run(filepath.Base(sh.shell), func(t *testing.T) {
			if _, err := os.Stat(sh.shell); err != nil {
				testenv.Missing(t, "%s missing (make test-deps installs it)", sh.shell)
			}
			u := lab.AddUser(sshtest.UserOptions{Shell: sh.shell, Sudo: sshtest.SudoNopasswd,
				Files: map[string]string{sh.file: "echo hi\necho 'rc says hello' > /dev/stderr\n"}})
			cfg := lab.Config()
			cfg.User = u.Name
			c := connect(t, cfg, node.Host())

			res, err := c.Run(testCtx(t), castssh.Cmd{Argv: []string{"uname", "-m"}})
			if err != nil || string(res.Stdout) != arch+"\n" || len(res.Stderr) != 0 {
				t.Fatalf("uname -m = %q (stderr %q), %v; want %q alone", res.Stdout, res.Stderr, err, arch+"\n")
			}
			n := res.LoginNoise
			if n == nil || string(n.Stdout) != "hi\n" || string(n.Stderr) != "rc says hello\n" || n.Shell != sh.shell {
				t.Fatalf("LoginNoise = %+v", n)
			}
			if w := n.Warning(); !strings.Contains(w, sh.named) || !strings.Contains(w, `hi rc says hello`) || !strings.Contains(w, node.Name) {
				t.Errorf("warning does not name the host, the file and the text: %s", w)
			}
			if c.LoginNoise() == nil {
				t.Errorf("Client.LoginNoise is nil after a noisy command")
			}
			t.Logf("warning: %s", n.Warning())

			// Privileged, through sudo.
			if got := output(t, c, castssh.Cmd{Argv: []string{"id", "-u"}, Sudo: true}); got != "0" {
				t.Fatalf("privileged id -u = %q", got)
			}
			// Arguments come through byte-exact.
			res, err = c.Run(testCtx(t), castssh.Cmd{Argv: append([]string{"printf", `%s\0`}, hostile...)})
			if err != nil || string(res.Stdout) != strings.Join(hostile, "\x00")+"\x00" {
				t.Fatalf("printf: %q, %v", res.Stdout, err)
			}
			// Standard input too, and a failing command keeps its exit code.
			res, err = c.Run(testCtx(t), castssh.Cmd{Argv: []string{"sh", "-c", "cat; exit 3"}, Stdin: strings.NewReader("in\x00put")})
			var ee *castssh.ExitError
			if !errors.As(err, &ee) || ee.ExitCode != 3 || string(res.Stdout) != "in\x00put" {
				t.Fatalf("cat; exit 3: %q, %v", res.Stdout, err)
			}
			// SFTP goes through the login shell too: the noise must not
			// corrupt its stream, unprivileged or as root.
			dir := lab.UserDir("up-" + filepath.Base(sh.shell))
			if out, err := exec.Command("chown", u.Name, dir).CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			for _, sudo := range []bool{false, true} {
				dst := filepath.Join(dir, "f")
				if err := c.Upload(testCtx(t), castssh.Upload{Src: strings.NewReader("payload"), Dst: dst, Sudo: sudo}); err != nil {
					t.Fatalf("upload (sudo=%v): %v", sudo, err)
				}
				if b, _ := os.ReadFile(dst); string(b) != "payload" {
					t.Fatalf("uploaded %q", b)
				}
			}
		})
	}
}

// TestLoginShellRefuses: a login shell that never runs the command
// (nologin) is a *LoginShellError saying so and how to fix it, from the
// first command or from CheckLogin.
func TestLoginShellRefuses(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	u := lab.AddUser(sshtest.UserOptions{Shell: "/usr/sbin/nologin"})
	cfg := lab.Config()
	cfg.User = u.Name
	c := connect(t, cfg, lab.Nodes[0].Host())
	for _, err := range []error{
		c.CheckLogin(testCtx(t), false),
		func() error { _, err := c.Run(testCtx(t), castssh.Cmd{Argv: []string{"uname", "-m"}}); return err }(),
	} {
		var le *castssh.LoginShellError
		if !errors.As(err, &le) || le.User != u.Name || !strings.Contains(le.Output, "not available") {
			t.Fatalf("want *LoginShellError with nologin's words, got %T: %v", err, err)
		}
		if !strings.Contains(err.Error(), "chsh") {
			t.Errorf("message lacks the fix: %v", err)
		}
		assertMessage(t, err)
		t.Logf("message: %v", err)
	}
}

// TestSudoRequireTTY: NOPASSWD with `Defaults:USER requiretty` (issue 14:
// castellan advised configuring passwordless sudo, which was configured).
// The error says requiretty and its fix, and never NOPASSWD.
func TestSudoRequireTTY(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	u := lab.AddUser(sshtest.UserOptions{Sudo: sshtest.SudoNopasswdRequireTTY})
	cfg := lab.Config()
	cfg.User = u.Name
	c := connect(t, cfg, lab.Nodes[0].Host())
	if err := c.CheckLogin(testCtx(t), false); err != nil {
		t.Fatalf("unprivileged login: %v", err)
	}
	for _, err := range []error{
		c.CheckLogin(testCtx(t), true),
		func() error {
			_, err := c.Run(testCtx(t), castssh.Cmd{Argv: []string{"id", "-u"}, Sudo: true})
			return err
		}(),
		c.Upload(testCtx(t), castssh.Upload{Src: strings.NewReader("x"), Dst: filepath.Join(lab.Dir, "x"), Sudo: true}),
	} {
		var se *castssh.SudoError
		if !errors.As(err, &se) || se.Reason != castssh.SudoRequiresTTY {
			t.Fatalf("want *SudoError requiretty, got %T: %v", err, err)
		}
		msg := err.Error()
		if !strings.Contains(msg, "Defaults:"+u.Name+" !requiretty") || strings.Contains(msg, "NOPASSWD") {
			t.Fatalf("message does not give the requiretty fix (or advises NOPASSWD): %v", err)
		}
		assertMessage(t, err)
	}
}

// TestSudoPasswordRequired: sudo wants a password: refused, with the
// NOPASSWD fix.
func TestSudoPasswordRequired(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	cfg := lab.Config()
	cfg.User = lab.PasswordUser
	c := connect(t, cfg, lab.Nodes[0].Host())
	if got := output(t, c, castssh.Cmd{Argv: []string{"id", "-un"}}); got != lab.PasswordUser {
		t.Fatalf("id -un = %q", got)
	}
	for _, err := range []error{
		func() error {
			_, err := c.Run(testCtx(t), castssh.Cmd{Argv: []string{"id", "-u"}, Sudo: true})
			return err
		}(),
		c.Upload(testCtx(t), castssh.Upload{Src: strings.NewReader("x"), Dst: filepath.Join(lab.Dir, "x"), Sudo: true}),
	} {
		var se *castssh.SudoError
		if !errors.As(err, &se) || se.Reason != castssh.SudoRefused {
			t.Fatalf("want *SudoError refused, got %T: %v", err, err)
		}
		if !strings.Contains(err.Error(), "NOPASSWD") || !strings.Contains(err.Error(), lab.PasswordUser) || !strings.Contains(se.Message, "password") {
			t.Fatalf("message does not say how to fix it: %v", err)
		}
		assertMessage(t, err)
		t.Logf("message: %v", err)
	}
}

// TestRootLoginWithoutSudo: `user: root` on a node without sudo (issue 14:
// privileged commands still went through `sudo -n` and the agent install
// failed). Root runs privileged commands and uploads directly, whether
// sudo is allowed or not; a non-root user there gets a clear error.
func TestRootLoginWithoutSudo(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1, HideSudo: true})
	node := lab.Nodes[0]
	root := lab.AddUser(sshtest.UserOptions{Root: true})
	for _, sudo := range []bool{true, false} {
		cfg := lab.Config()
		cfg.User = root.Name
		cfg.Sudo = sudo
		c := connect(t, cfg, node.Host())
		if err := c.CheckLogin(testCtx(t), true); err != nil {
			t.Fatalf("sudo=%v: CheckLogin: %v", sudo, err)
		}
		if got := output(t, c, castssh.Cmd{Argv: []string{"id", "-u"}, Sudo: true}); got != "0" {
			t.Fatalf("sudo=%v: id -u = %q", sudo, got)
		}
		dst := filepath.Join(lab.Dir, "root-owned")
		if err := c.Upload(testCtx(t), castssh.Upload{Src: strings.NewReader("x"), Dst: dst, Owner: "root", Mode: 0o600, Sudo: true}); err != nil {
			t.Fatalf("sudo=%v: privileged upload: %v", sudo, err)
		}
	}
	// The node really has no sudo.
	c := connect(t, lab.Config(), node.Host())
	_, err := c.Run(testCtx(t), castssh.Cmd{Argv: []string{"id", "-u"}, Sudo: true})
	var se *castssh.SudoError
	if !errors.As(err, &se) || se.Reason != castssh.SudoNotInstalled {
		t.Fatalf("non-root user without sudo: want *SudoError not-installed, got %T: %v", err, err)
	}
	assertMessage(t, err)
	t.Logf("message: %v", err)
}

// TestSudoOff: Config.Sudo false (`spec.ssh.sudo: false`) never invokes
// sudo (issue 14: it did not turn privileged sudo off): a non-root user's
// privileged command is refused before sudo runs, as sudo's own log shows.
func TestSudoOff(t *testing.T) {
	t.Parallel()
	lab := sshtest.New(t, sshtest.Options{Nodes: 1})
	u := lab.AddUser(sshtest.UserOptions{Sudo: sshtest.SudoNopasswd, SudoLog: true})
	cfg := lab.Config()
	cfg.User = u.Name
	cfg.Sudo = false
	c := connect(t, cfg, lab.Nodes[0].Host())
	for _, err := range []error{
		func() error {
			_, err := c.Run(testCtx(t), castssh.Cmd{Argv: []string{"id", "-u"}, Sudo: true})
			return err
		}(),
		c.Upload(testCtx(t), castssh.Upload{Src: strings.NewReader("x"), Dst: filepath.Join(lab.Dir, "x"), Sudo: true}),
		c.CheckLogin(testCtx(t), true),
	} {
		var se *castssh.SudoError
		if !errors.As(err, &se) || se.Reason != castssh.SudoDisabled {
			t.Fatalf("want *SudoError disabled, got %T: %v", err, err)
		}
		assertMessage(t, err)
	}
	if b, err := os.ReadFile(u.SudoLog); err != nil || len(b) != 0 {
		t.Fatalf("sudo ran although it is off: log %q, %v", b, err)
	}
	// Control: with sudo on, the same command goes through sudo, which logs it.
	cfg.Sudo = true
	c = connect(t, cfg, lab.Nodes[0].Host())
	if got := output(t, c, castssh.Cmd{Argv: []string{"id", "-u"}, Sudo: true}); got != "0" {
		t.Fatalf("with sudo on, id -u = %q", got)
	}
	if b, _ := os.ReadFile(u.SudoLog); !strings.Contains(string(b), "COMMAND=") {
		t.Fatalf("sudo's log does not show the command: %q", b)
	}
}
