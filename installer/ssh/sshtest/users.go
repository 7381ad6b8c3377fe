package sshtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// SudoRule is what the sudoers drop-in of a lab allows a user.
type SudoRule int

const (
	// SudoNone: the user has no sudo rule at all (sudo refuses them).
	SudoNone SudoRule = iota
	// SudoNopasswd: `USER ALL=(ALL:ALL) NOPASSWD: ALL`.
	SudoNopasswd
	// SudoPassword: `USER ALL=(ALL:ALL) ALL` (sudo -n fails: a password is
	// required).
	SudoPassword
	// SudoNopasswdRequireTTY: NOPASSWD plus `Defaults:USER requiretty`, as
	// older RHEL/CentOS sudoers had it: sudo refuses to run without a
	// terminal.
	SudoNopasswdRequireTTY
)

func (r SudoRule) lines(user string) string {
	switch r {
	case SudoNopasswd:
		return fmt.Sprintf("%s ALL=(ALL:ALL) NOPASSWD: ALL\n", user)
	case SudoPassword:
		return fmt.Sprintf("%s ALL=(ALL:ALL) ALL\n", user)
	case SudoNopasswdRequireTTY:
		return fmt.Sprintf("Defaults:%s requiretty\n%s ALL=(ALL:ALL) NOPASSWD: ALL\n", user, user)
	}
	return ""
}

// UserOptions describe a login user added with Lab.AddUser.
type UserOptions struct {
	// Shell is the login shell (default /bin/sh). It must exist.
	Shell string
	// Files are written into the user's home directory, owned by the user:
	// relative path -> content, e.g. ".bashrc": "echo hi\n".
	Files map[string]string
	// Sudo is the user's sudoers rule (default SudoNone).
	Sudo SudoRule
	// Root makes the user a root login: uid 0 and gid 0 under its own name
	// (like BSD's toor). sshd then treats it as root (PermitRootLogin).
	Root bool
	// SudoLog makes sudo log every command the user runs through it (or
	// tries to) to User.SudoLog (sudoers `logfile`), so that a test can
	// tell whether sudo was invoked at all.
	SudoLog bool
}

// User is a login user of the lab. It authenticates with Lab.KeyFile on
// every node.
type User struct {
	Name  string
	Home  string
	Shell string
	Root  bool
	// SudoLog is the file sudo logs the user's commands to (with
	// UserOptions.SudoLog), created empty.
	SudoLog string
}

// AddUser creates a login user on the host (the nodes share the host's
// users), with a home directory in the lab, the given shell, files and sudo
// rule. Every sshd of the lab accepts it (AllowUsers matches the lab's
// prefix). It is removed at teardown.
func (l *Lab) AddUser(o UserOptions) *User {
	l.t.Helper()
	if o.Shell == "" {
		o.Shell = "/bin/sh"
	}
	if _, err := os.Stat(o.Shell); err != nil {
		l.t.Fatalf("sshtest: AddUser: shell %s: %v", o.Shell, err)
	}
	l.mu.Lock()
	l.nUsers++
	name := fmt.Sprintf("%s-u%d", l.User, l.nUsers)
	l.extraUsers = append(l.extraUsers, name)
	l.mu.Unlock()
	// The state file first: a killed test leaves a user the next lab sweeps.
	if err := writeStateFile(l.statePth, l.state()); err != nil {
		l.t.Fatalf("sshtest: %v", err)
	}
	home := filepath.Join(l.Dir, "home", name)
	if err := os.MkdirAll(home, 0o755); err != nil {
		l.t.Fatalf("sshtest: %v", err)
	}
	args := []string{"-M", "-p", "*", "-s", o.Shell, "-d", home}
	if o.Root {
		args = append(args, "-o", "-u", "0", "-g", "0")
	} else {
		args = append(args, "-r")
	}
	if out, err := exec.Command("useradd", append(args, name)...).CombinedOutput(); err != nil {
		l.t.Fatalf("sshtest: useradd %s: %v: %s", name, err, out)
	}
	paths := make([]string, 0, len(o.Files))
	for p := range o.Files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		full := filepath.Join(home, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			l.t.Fatalf("sshtest: %v", err)
		}
		if err := os.WriteFile(full, []byte(o.Files[p]), 0o644); err != nil {
			l.t.Fatalf("sshtest: %v", err)
		}
	}
	if out, err := exec.Command("chown", "-R", name, home).CombinedOutput(); err != nil {
		l.t.Fatalf("sshtest: chown: %v: %s", err, out)
	}
	u := &User{Name: name, Home: home, Shell: o.Shell, Root: o.Root}
	rules := o.Sudo.lines(name)
	if o.SudoLog {
		u.SudoLog = filepath.Join(l.Dir, "sudo-"+name+".log")
		if err := os.WriteFile(u.SudoLog, nil, 0o600); err != nil {
			l.t.Fatalf("sshtest: %v", err)
		}
		rules = fmt.Sprintf("Defaults:%s logfile=%s\n", name, u.SudoLog) + rules
	}
	if rules != "" {
		l.mu.Lock()
		l.sudoRules += rules
		rules := l.sudoRules
		l.mu.Unlock()
		if err := l.writeSudoers(rules); err != nil {
			l.t.Fatalf("sshtest: %v", err)
		}
	}
	return u
}

// writeSudoers replaces the lab's sudoers drop-in with rules, checked by
// visudo first (sudo ignores names with a dot: write, check, then rename).
func (l *Lab) writeSudoers(rules string) error {
	tmp := filepath.Join("/etc/sudoers.d", "."+l.sudoersName())
	if err := os.WriteFile(tmp, []byte(rules), 0o440); err != nil {
		return err
	}
	if out, err := exec.Command("visudo", "-cf", tmp).CombinedOutput(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("visudo: %v: %s", err, out)
	}
	return os.Rename(tmp, filepath.Join("/etc/sudoers.d", l.sudoersName()))
}

// users are every login user of the lab.
func (l *Lab) users() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string{l.User, l.PasswordUser}, l.extraUsers...)
}

// userPattern is the AllowUsers pattern that matches the lab's users and
// nobody else.
func (l *Lab) userPattern() string { return l.User + "*" }

// hiddenSudoScript hides sudo from the node's sessions: an empty,
// non-executable file is bind-mounted over each sudo binary in the sshd's
// own mount namespace, as on a node where sudo is not installed.
func hiddenSudoScript(placeholder string) ([]string, error) {
	var lines []string
	seen := map[string]bool{}
	for _, dir := range []string{"/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/local/sbin"} {
		p := filepath.Join(dir, "sudo")
		real, err := filepath.EvalSymlinks(p)
		if err != nil || seen[real] {
			continue
		}
		seen[real] = true
		lines = append(lines, "mount --bind "+shq(placeholder)+" "+shq(real))
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("no sudo binary found to hide")
	}
	return lines, nil
}

// shq quotes s for /bin/sh.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
