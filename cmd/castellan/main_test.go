package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"castellan/installer/profile"
)

func runCLI(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// writeValid writes a valid profile with its key and known_hosts files.
func writeValid(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	// validate parses both files: a real key, and a known_hosts line.
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	for f, data := range map[string][]byte{
		"id":          pem.EncodeToMemory(block),
		"known_hosts": append([]byte("192.0.2.1 "), ssh.MarshalAuthorizedKey(sshPub)...),
	} {
		if err := os.WriteFile(filepath.Join(dir, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, "c.yaml")
	body := "apiVersion: castellan/v1alpha1\nkind: Cluster\nmetadata: {name: c}\nspec:\n  ssh: {user: admin, keyFile: id, knownHosts: known_hosts}\n  nodes: [{name: s1, address: 192.0.2.1, role: server}]\n"
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExitCodesAndMessages(t *testing.T) {
	valid := writeValid(t)
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: castellan/v1alpha1\nkind: Cluster\nmetadata: {name: c}\nspec:\n  ssh: {user: admin}\n  nodes: []\n  colour: blue\n"), 0o600)
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{name: "version", args: []string{"version"}, code: 0, stdout: "castellan "},
		{name: "validate ok", args: []string{"validate", "-f", valid}, code: 0, stdout: "valid: cluster c, 1 node(s) (1 server(s), 0 agent(s))"},
		{name: "validate bad names line and field", args: []string{"validate", "-f", bad}, code: 2, stderr: `bad.yaml:7:3: spec: unknown field "colour"`},
		{name: "validate missing file", args: []string{"validate", "-f", "/nonexistent.yaml"}, code: 2, stderr: "reading profile"},
		{name: "apply without -f", args: []string{"apply"}, code: 2, stderr: `required flag(s) "file" not set`},
		{name: "apply without a terminal and without --yes", args: []string{"apply", "-f", valid}, code: 2, stderr: "not a terminal; review `castellan plan` and pass --yes"},
		{name: "apply unknown phase", args: []string{"apply", "-f", valid, "--yes", "--only", "mesa"}, code: 2, stderr: "unknown phase mesa; phases are: preflight"},
		{name: "apply unknown node", args: []string{"apply", "-f", valid, "--yes", "--nodes", "s9"}, code: 2, stderr: `unknown node "s9"; the profile's nodes are: s1`},
		{name: "apply bad output", args: []string{"apply", "-f", valid, "--yes", "-o", "yaml"}, code: 2, stderr: `unknown output format "yaml"`},
		{name: "bad log level", args: []string{"version", "--log-level", "loud"}, code: 2, stderr: `--log-level "loud": use debug, info, warn or error`},
		{name: "empty --nodes", args: []string{"apply", "-f", valid, "--yes", "--nodes", ""}, code: 2, stderr: "no node selected; the profile's nodes are: s1"},
		{name: "empty node in --nodes", args: []string{"plan", "-f", valid, "--nodes", "s1,"}, code: 2, stderr: "empty node name"},
		{name: "empty --only", args: []string{"apply", "-f", valid, "--yes", "--only", ""}, code: 2, stderr: "no phase selected; phases are: preflight"},
		{name: "empty --only on plan", args: []string{"plan", "-f", valid, "--only="}, code: 2, stderr: "no phase selected"},
		{name: "-f twice", args: []string{"validate", "-f", valid, "-f", valid + ".other"}, code: 2, stderr: "given twice"},
		{name: "-o twice", args: []string{"plan", "-f", valid, "-o", "json", "-o", "text"}, code: 2, stderr: "given twice"},
		{name: "-f and --state", args: []string{"history", "-f", valid, "--state", filepath.Dir(valid)}, code: 2, stderr: "give either -f PROFILE or --state DIR, not both"},
		{name: "--state is a file", args: []string{"history", "--state", valid}, code: 2, stderr: "is not a directory"},
		{name: "--state missing", args: []string{"diff", "1", "--state", "/nonexistent/state"}, code: 2, stderr: "--state /nonexistent/state"},
		{name: "--identity is a directory", args: []string{"apply", "-f", valid, "--yes", "--identity", filepath.Dir(valid)}, code: 2, stderr: "is not a regular file"},
		{name: "unknown command", args: []string{"deploy"}, code: 2, stderr: `unknown command "deploy"`},
		{name: "an argument to a command that takes none", args: []string{"history", "extra"}, code: 2, stderr: `castellan history takes no arguments, got "extra"`},
		{name: "misspelt command is suggested", args: []string{"aply", "-f", valid}, code: 2, stderr: `unknown command "aply" for "castellan"; did you mean apply?`},
		{name: "unknown netpol command", args: []string{"netpol", "rendr"}, code: 2, stderr: `unknown command "rendr" for "castellan netpol"; did you mean render?`},
		{name: "unknown netpol command with its flags", args: []string{"netpol", "rendr", "-f", valid}, code: 2, stderr: `unknown command "rendr" for "castellan netpol"; did you mean render?`},
		{name: "unknown profile command", args: []string{"profile", "int", "-o", "x.yaml"}, code: 2, stderr: `unknown command "int" for "castellan profile"; did you mean init?`},
		{name: "unknown completion shell", args: []string{"completion", "nushell"}, code: 2, stderr: `unknown command "nushell" for "castellan completion"; its commands are: bash, fish, powershell, zsh`},
		{name: "netpol alone prints its help", args: []string{"netpol"}, code: 0, stdout: "Available Commands:"},
		{name: "netpol with only an unknown flag", args: []string{"netpol", "--json"}, code: 2, stderr: "unknown flag: --json"},
		{name: "history without runs", args: []string{"history", "-f", valid}, code: 2, stderr: "not a castellan state repo (no runs yet?)"},
		{name: "diff needs a revision", args: []string{"diff", "-f", valid}, code: 2, stderr: "accepts between 1 and 2 arg(s), received 0\nusage: castellan diff REV [REV]"},
		{name: "rollback needs --to", args: []string{"rollback", "-f", valid, "--yes"}, code: 2, stderr: `required flag(s) "to" not set`},
		{name: "bare castellan prints help", args: nil, code: 0, stdout: "Start with:  castellan profile init -o cluster.yaml"},
		{name: "completion", args: []string{"completion", "bash"}, code: 0, stdout: "bash completion"},
		{name: "agent is hidden but answers", args: []string{"agent", "agent.ping"}, code: 0, stdout: `{"ok":true,"result":{"version":`},
		{name: "agent unknown op", args: []string{"agent", "nope"}, code: 0, stdout: `"code":"unknown-op"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, "", tt.args...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, out, errOut)
			}
			if !strings.Contains(out, tt.stdout) {
				t.Errorf("stdout lacks %q:\n%s", tt.stdout, out)
			}
			if !strings.Contains(errOut, tt.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tt.stderr, errOut)
			}
		})
	}
	// Bad input never created a state repo.
	if _, err := os.Stat(filepath.Join(filepath.Dir(valid), "state")); err == nil {
		t.Error("bad-input commands created a state repo")
	}
}

// TestProfileInit: the starter profile is written as-is, refuses to
// overwrite, and loads once the files it names exist.
func TestProfileInit(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "cluster.yaml")
	if code, _, errOut := runCLI(t, "", "profile", "init", "-o", p); code != 0 {
		t.Fatalf("profile init: %d %s", code, errOut)
	}
	if code, _, errOut := runCLI(t, "", "profile", "init", "-o", p); code != 2 || !strings.Contains(errOut, "pass --force") {
		t.Errorf("second init: %d %s", code, errOut)
	}
	for _, c := range []struct{ out, want string }{
		{filepath.Join(t.TempDir(), "missing", "cluster.yaml"), "does not exist: create it"},
		{t.TempDir(), "is a directory: name a file"},
		{filepath.Join(t.TempDir(), "missing") + "/", "name a file in a directory that exists"},
		{filepath.Join(p, "x.yaml"), "name a file in a directory that exists"},
	} {
		if code, _, errOut := runCLI(t, "", "profile", "init", "-o", c.out); code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("profile init -o %s: exit %d %s", c.out, code, errOut)
		}
	}

	_, stdout, _ := runCLI(t, "", "profile", "init")
	written, _ := os.ReadFile(p)
	if stdout != string(written) {
		t.Error("profile init to stdout and to a file differ")
	}
	if _, err := profile.Load(p, profile.ValidateOptions{SkipFileChecks: true}); err != nil {
		t.Errorf("the starter profile does not load: %v", err)
	}
}
