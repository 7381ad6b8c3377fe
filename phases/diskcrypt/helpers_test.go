package diskcrypt

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"castellan/installer/testenv"
)

// needCommands skips (or, with CASTELLAN_REQUIRE_REAL_PEERS=1, fails) a test
// whose real peers are missing: `make test-deps` installs them.
func needCommands(t testing.TB, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if _, err := exec.LookPath(c); err != nil {
			testenv.Missing(t, "%s is missing (Debian: cryptsetup-bin, systemd, swtpm, util-linux, e2fsprogs; make test-deps)", c)
		}
	}
	if os.Geteuid() != 0 {
		testenv.Missing(t, "this test needs root (cryptsetup locking, loop devices, chattr)")
	}
}

// swtpm is a real software TPM 2.0 (swtpm) on a Unix socket in a temporary
// directory, which systemd-cryptenroll reaches through tpm2-tss's swtpm
// TCTI ("swtpm:path=SOCKET"; the control channel is SOCKET.ctrl).
type swtpm struct {
	dir    string
	socket string
	cmd    *exec.Cmd
}

// startSwtpm starts a fresh TPM; state (a directory) keeps it across
// restarts, "" makes a new one.
func startSwtpm(t testing.TB, state string) *swtpm {
	t.Helper()
	needCommands(t, "swtpm")
	if libs, _ := filepath.Glob("/usr/lib/*/libtss2-tcti-swtpm.so.0"); len(libs) == 0 {
		testenv.Missing(t, "tpm2-tss's swtpm TCTI is missing, through which systemd-cryptenroll reaches a software TPM (Debian: libtss2-tcti-swtpm0 libtss2-esys-3.0.2-0 libtss2-mu0 libtss2-rc0; make test-deps)")
	}
	if state == "" {
		state = t.TempDir()
	}
	sock := filepath.Join(t.TempDir(), "tpm")
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+state,
		"--server", "type=unixio,path="+sock, "--ctrl", "type=unixio,path="+sock+".ctrl",
		"--flags", "not-need-init,startup-clear")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("swtpm: %v", err)
	}
	s := &swtpm{dir: state, socket: sock, cmd: cmd}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock + ".ctrl"); err == nil {
			if _, err := os.Stat(sock); err == nil {
				return s
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("swtpm did not create its sockets: %s", stderr.String())
	return nil
}

// device is the TPM as systemd-cryptenroll's --tpm2-device names it.
func (s *swtpm) device() string { return "swtpm:path=" + s.socket }

// testPBKDF keeps argon2id cheap in tests (cryptsetup's own benchmark takes
// about 2 s and up to 1 GiB per keyslot); the format is the same.
var testPBKDF = &PBKDF{MemoryKiB: 8192, Iterations: 4}

// testNode is a node side over a test tree: Root holds etc/, run/, dev/ and
// the mount points; disks are image files (or links to loop devices) under
// Root/dev.
func testNode(t testing.TB, tpm *swtpm) *Node {
	t.Helper()
	needCommands(t, "cryptsetup", "systemd-cryptenroll", "wipefs", "mkfs.ext4", "blkid", "mkswap")
	root := t.TempDir()
	for _, d := range []string{"etc", "run", "dev", "proc/self", "sys/block"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(root, "proc/self/mountinfo"), "")
	n := &Node{Root: root, Run: ExecRunner{}, PBKDF: testPBKDF}
	if tpm != nil {
		n.TPM2Device = tpm.device()
	}
	return n
}

// image makes a sparse disk image of size bytes at Root/dev/NAME.
func image(t testing.TB, n *Node, name string, size int64) string {
	t.Helper()
	p := filepath.Join(n.Root, "dev", name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return "/dev/" + name
}

func writeFile(t testing.TB, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// run runs a command for a test and returns its stdout.
func run(t testing.TB, stdin string, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, stderr.String())
	}
	return stdout.String()
}

// opens reports whether passphrase opens the LUKS device at path (cryptsetup
// open --test-passphrase, the passphrase on stdin).
func opens(t testing.TB, path string, p Passphrase) bool {
	t.Helper()
	cmd := exec.Command("cryptsetup", "open", "--test-passphrase", "--disable-external-tokens", "--key-file", "-", path)
	cmd.Stdin = strings.NewReader(string(p))
	return cmd.Run() == nil
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func sha(b []byte) string { return headerArea(b).Digest }

func fileDigest(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha(b)
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
