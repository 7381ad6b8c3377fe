package ssh

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"castellan/installer/testenv"

	"github.com/skeema/knownhosts"
	"golang.org/x/crypto/ssh"
	xknownhosts "golang.org/x/crypto/ssh/knownhosts"
)

// loginShells are the login shells a node's user may have: the remote
// command line must pass through each unchanged. When real peers are
// required (testenv: CASTELLAN_REQUIRE_REAL_PEERS=1 or CI=true) a missing
// one fails the test (`make test-deps` installs them).
var loginShells = []string{"/bin/sh", "/bin/dash", "/bin/bash", "/bin/zsh", "/bin/ksh", "/bin/mksh", "/usr/bin/fish", "/bin/tcsh", "/bin/csh"}

func shells(t testing.TB) []string {
	var out, missing []string
	for _, sh := range loginShells {
		if _, err := os.Stat(sh); err == nil {
			out = append(out, sh)
		} else {
			missing = append(missing, sh)
		}
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("login shells missing: %s (make test-deps installs them)", strings.Join(missing, " "))
		if testenv.Required() {
			t.Fatal(msg)
		}
		t.Log(msg)
	}
	if len(out) == 0 {
		t.Skip("no shell here")
	}
	return out
}

// viaLoginShell runs the exec request for argv the way sshd does, with
// `SHELL -c REQUEST` (as root here, so a privileged mode takes the root
// path), and returns what followed the wrapper's marker on stdout.
func viaLoginShell(t testing.TB, sh string, argv []string, m execMode) ([]byte, string) {
	t.Helper()
	marker := newMarker()
	line, err := execRequest(marker, argv, m)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	f := newMarkerFilter(marker, &out)
	cmd := exec.Command(sh, "-c", line)
	cmd.Dir = os.TempDir() // globs would match nothing anyway: everything is quoted
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "SHELL=" + sh}
	cmd.Stdout = f
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s -c %q: %v: %s", sh, line, err, stderr.Bytes())
	}
	f.finish()
	if !f.passing {
		t.Fatalf("%s: the wrapper never reported ok (stages %v, noise %q, stderr %q); line %q", sh, f.stages, f.noise, stderr.Bytes(), line)
	}
	return out.Bytes(), f.shell
}

// roundTrip has each login shell run the exec request for
// printf '%s\0' args... and checks that printf receives exactly args.
func roundTrip(t *testing.T, args []string, modes ...execMode) {
	t.Helper()
	var want bytes.Buffer
	for _, a := range args {
		want.WriteString(a)
		want.WriteByte(0)
	}
	if len(modes) == 0 {
		modes = []execMode{{}}
	}
	for _, sh := range shells(t) {
		for _, m := range modes {
			out, shell := viaLoginShell(t, sh, append([]string{"printf", `%s\0`}, args...), m)
			if !bytes.Equal(out, want.Bytes()) {
				t.Fatalf("%s (mode %+v): args %q came back as %q", sh, m, args, out)
			}
			if shell != sh {
				t.Fatalf("%s: the wrapper reported the login shell %q", sh, shell)
			}
		}
	}
}

var quotingSeeds = []string{
	"", "plain", "with space", "it's", `"dq"`, `\`, `\\`, `\'`, `'\`, "$(id)", "`id`", "${x}", "*", "?", "[a]", "~", "~root",
	"-n", "--", "a;b", "a|b&c", "!x", "x!", "!!", "!$", "#c", "{a,b}", "a=b", "=x", "\n", "\t", "\x01\x7f", "\xff\xfe",
	"ünï ✓", "'\"'\"'", "a\nb", "\n", "\\n", "\\0012", `%s`, `%b`, "x\\", "y\\0134", "\r\n", "^old^new", "%1",
}

func TestCommandLineRoundTrip(t *testing.T) {
	root := os.Geteuid() == 0
	modes := []execMode{{}}
	if root {
		// Root: privileged commands take the uid-0 path, sudo or not.
		modes = append(modes, execMode{privileged: true, sudo: true}, execMode{privileged: true})
	}
	roundTrip(t, quotingSeeds, modes...)
	for _, s := range quotingSeeds {
		roundTrip(t, []string{s})
	}
}

func TestCommandLineRejects(t *testing.T) {
	for _, argv := range [][]string{nil, {""}, {"-x"}, {"echo", "a\x00b"}, {"echo", strings.Repeat("x", maxRequest)}} {
		if _, err := execRequest(newMarker(), argv, execMode{}); err == nil {
			t.Errorf("execRequest(%.40q) accepted", argv)
		}
	}
}

// FuzzCommandLine: whatever three arguments, each login shell gives them
// back byte-exact. `go test -fuzz FuzzCommandLine ./installer/ssh` explores
// further; plain `go test` runs the seeds.
func FuzzCommandLine(f *testing.F) {
	for i, s := range quotingSeeds {
		f.Add(s, quotingSeeds[(i+1)%len(quotingSeeds)], quotingSeeds[(i+7)%len(quotingSeeds)])
	}
	f.Fuzz(func(t *testing.T, a, b, c string) {
		args := []string{a, b, c}
		for _, s := range args {
			if strings.IndexByte(s, 0) >= 0 {
				if _, err := execRequest(newMarker(), args, execMode{}); err == nil {
					t.Fatalf("an argument with NUL was accepted")
				}
				return
			}
		}
		roundTrip(t, args)
	})
}

// TestDrainWrapperReadsStages: when the SFTP client gave up before reading
// anything (its first write hit a wrapper that had exited), draining the
// finished session's output still records the wrapper's stage and the login
// noise, so a refused sudo is told from a broken login shell.
func TestDrainWrapperReadsStages(t *testing.T) {
	m := newMarker()
	out := newMarkerReader(m, strings.NewReader("motd\n"+m+" sudo /bin/sh\n"))
	drainWrapper(out)
	started, stage, shell, noise, _ := out.f.state()
	if started || stage != stageSudo || shell != "/bin/sh" || string(noise) != "motd\n" {
		t.Fatalf("started %v, stage %q, shell %q, noise %q; want the sudo stage of /bin/sh after the noise \"motd\\n\"", started, stage, shell, noise)
	}
}

// TestMarkerFilter: the login noise, split anywhere across writes, is kept
// apart from the output, and the stage lines are recorded.
func TestMarkerFilter(t *testing.T) {
	m := newMarker()
	stream := "motd line\nhi from .bashrc" + m + " sudo /bin/bash\nsudo: unable to resolve host\n" + m + " ok\nthe output\n" + m + " ok\nmore"
	for split := 0; split <= len(stream); split++ {
		var out bytes.Buffer
		f := newMarkerFilter(m, &out)
		f.Write([]byte(stream[:split]))
		f.Write([]byte(stream[split:]))
		f.finish()
		if got, want := out.String(), "the output\n"+m+" ok\nmore"; got != want {
			t.Fatalf("split %d: output %q, want %q", split, got, want)
		}
		if got, want := string(f.noise), "motd line\nhi from .bashrcsudo: unable to resolve host\n"; got != want {
			t.Fatalf("split %d: noise %q, want %q", split, got, want)
		}
		if !slices.Equal(f.stages, []string{stageSudo, stageOK}) || f.shell != "/bin/bash" {
			t.Fatalf("split %d: stages %v shell %q", split, f.stages, f.shell)
		}
	}
	// Without the marker everything is noise, bounded.
	var out bytes.Buffer
	f := newMarkerFilter(m, &out)
	big := bytes.Repeat([]byte("x"), 3*maxNoise)
	f.Write(big)
	f.finish()
	if out.Len() != 0 || len(f.noise) != maxNoise || f.nNoise != int64(len(big)) || f.passing {
		t.Fatalf("unmarked stream: out %d, noise %d/%d, passing %v", out.Len(), len(f.noise), f.nNoise, f.passing)
	}
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
	db, warnings, err := ReadKnownHosts(kh)
	if err != nil || len(warnings) > 0 {
		t.Fatal(err, warnings)
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
		if got := hostKeyAlgorithms(db, nil, lookupName(tc.addr)); !slices.Equal(got, tc.want) {
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
