package ssh

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/skeema/knownhosts"
	"golang.org/x/crypto/ssh"
	xknownhosts "golang.org/x/crypto/ssh/knownhosts"
)

// shells that parse the command line on real nodes and are present here.
func shells(t testing.TB) []string {
	var out []string
	for _, sh := range []string{"/bin/sh", "/bin/dash", "/bin/bash", "/bin/zsh", "/bin/ksh", "/bin/mksh"} {
		if _, err := os.Stat(sh); err == nil {
			out = append(out, sh)
		}
	}
	if len(out) == 0 {
		t.Skip("no POSIX shell here")
	}
	return out
}

// roundTrip has each shell parse commandLine(printf '%s\0' args...) and
// checks that the program receives exactly args.
func roundTrip(t *testing.T, args []string) {
	t.Helper()
	line, err := commandLine(append([]string{"printf", `%s\0`}, args...), false)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	for _, a := range args {
		want.WriteString(a)
		want.WriteByte(0)
	}
	for _, sh := range shells(t) {
		cmd := exec.Command(sh, "-c", line)
		cmd.Dir = t.TempDir() // globs would match nothing here anyway
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s -c %q: %v", sh, line, err)
		}
		if !bytes.Equal(out, want.Bytes()) {
			t.Fatalf("%s: args %q came back as %q (line %q)", sh, args, out, line)
		}
	}
}

var quotingSeeds = []string{
	"", "plain", "with space", "it's", `"dq"`, `\`, "$(id)", "`id`", "${x}", "*", "?", "[a]", "~", "~root",
	"-n", "--", "a;b", "a|b&c", "!x", "#c", "{a,b}", "a=b", "=x", "\n", "\t", "\x01\x7f", "\xff\xfe",
	"ünï ✓", "'\"'\"'",
}

func TestCommandLineRoundTrip(t *testing.T) {
	roundTrip(t, quotingSeeds)
	for _, s := range quotingSeeds {
		roundTrip(t, []string{s})
	}
}

func TestCommandLineRejects(t *testing.T) {
	for _, argv := range [][]string{nil, {""}, {"-x"}, {"echo", "a\x00b"}} {
		if _, err := commandLine(argv, false); err == nil {
			t.Errorf("commandLine(%q) accepted", argv)
		}
	}
	line, _ := commandLine([]string{"id", "-u"}, true)
	if line != "exec sudo -n -- id -u" {
		t.Errorf("sudo line %q", line)
	}
}

// FuzzCommandLine: whatever three arguments, each shell gives them back
// byte-exact. `go test -fuzz FuzzCommandLine ./installer/ssh` explores
// further; plain `go test` runs the seeds.
func FuzzCommandLine(f *testing.F) {
	for i, s := range quotingSeeds {
		f.Add(s, quotingSeeds[(i+1)%len(quotingSeeds)], quotingSeeds[(i+7)%len(quotingSeeds)])
	}
	f.Fuzz(func(t *testing.T, a, b, c string) {
		args := []string{a, b, c}
		for _, s := range args {
			if strings.IndexByte(s, 0) >= 0 {
				t.Skip("NUL cannot be an argument")
			}
		}
		roundTrip(t, args)
	})
}

func TestHostKeyAlgorithmSelection(t *testing.T) {
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	ecPriv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaPriv, _ := rsa.GenerateKey(rand.Reader, 2048)
	ed, _ := ssh.NewPublicKey(edPriv.Public())
	ec, _ := ssh.NewPublicKey(ecPriv.Public())
	rs, _ := ssh.NewPublicKey(rsaPriv.Public())

	lines := []string{
		knownhosts.Line([]string{"10.0.0.1"}, ed),
		knownhosts.Line([]string{"10.0.0.2"}, rs),
		knownhosts.Line([]string{"10.0.0.2"}, ec),
		xknownhosts.HashHostname("10.0.0.3") + " " + strings.SplitN(knownhosts.Line([]string{"x"}, ed), " ", 2)[1],
		knownhosts.Line([]string{"[10.0.0.4]:2222"}, ec),
	}
	kh := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(kh, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := knownhosts.NewDB(kh)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr string
		want []string
	}{
		{"10.0.0.1:22", []string{ssh.KeyAlgoED25519}},
		{"10.0.0.2:22", []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA, ssh.KeyAlgoECDSA256}},
		{"10.0.0.3:22", []string{ssh.KeyAlgoED25519}}, // hashed entry
		{"10.0.0.4:2222", []string{ssh.KeyAlgoECDSA256}},
		{"10.0.0.4:22", preferredHostKeyAlgorithms}, // other port: unknown
		{"10.0.0.9:22", preferredHostKeyAlgorithms}, // unknown: Ed25519 first, no SHA-1
	}
	for _, tc := range tests {
		if got := hostKeyAlgorithms(db, tc.addr); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.addr, got, tc.want)
		}
	}
	if preferredHostKeyAlgorithms[0] != ssh.KeyAlgoED25519 || slices.Contains(preferredHostKeyAlgorithms, ssh.KeyAlgoRSA) {
		t.Errorf("preferred order %v", preferredHostKeyAlgorithms)
	}
}

func TestHostKeyErrorMessages(t *testing.T) {
	e := &HostKeyError{Host: "n1", Addr: "10.0.0.1:2222", KeyType: "ssh-ed25519", Fingerprint: "SHA256:abc",
		KnownHostsFile: "/k h", Line: "[10.0.0.1]:2222 ssh-ed25519 AAAA"}
	msg := e.Error()
	for _, s := range []string{"unknown", "SHA256:abc", "[10.0.0.1]:2222 ssh-ed25519 AAAA", "ssh-keyscan -t ed25519 -p 2222 10.0.0.1", "--accept-new-host-keys"} {
		if !strings.Contains(msg, s) {
			t.Errorf("unknown-key message lacks %q:\n%s", s, msg)
		}
	}
	e.Changed = true
	e.Known = []string{"line 3: ssh-ed25519 SHA256:old"}
	msg = e.Error()
	for _, s := range []string{"CHANGED", "SHA256:old", "SHA256:abc", "never accepted automatically", "ssh-keygen -R '[10.0.0.1]:2222' -f '/k h'"} {
		if !strings.Contains(msg, s) {
			t.Errorf("changed-key message lacks %q:\n%s", s, msg)
		}
	}
}
