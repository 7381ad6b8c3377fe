// Package swtpmtest runs real software TPMs (swtpm) for tests: each TPM is
// manufactured by swtpm_setup with an RSA 2048 and an ECC P-384 EK, their EK
// certificates in NV (0x01c00002, 0x01c00016) and a platform certificate
// (0x01c08000), all signed by a swtpm local CA that the test owns, exactly as
// libvirt provisions the lab VMs' vTPMs. The TPM then serves raw TPM 2.0
// commands on a Unix socket in the test's temporary directory (swtpm socket
// --server type=unixio; a socket file instead of a loopback TCP port, so
// parallel test binaries never race for a port).
//
// swtpm has no resource manager (unlike /dev/tpmrm0): a transient handle
// that the code under test forgets to flush stays loaded, which TPM.Transients
// makes visible.
//
// Prerequisites: Debian's swtpm and swtpm-tools. When they are missing and
// CI=true or CASTELLAN_REQUIRE_REAL_PEERS=1, Require installs them with
// vagrant/scripts/ensure-packages.sh and fails the test if that does not
// work; otherwise it skips.
package swtpmtest

import (
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// RequireEnv turns a missing prerequisite into a failure (as CI=true does).
const RequireEnv = "CASTELLAN_REQUIRE_REAL_PEERS"

var packages = []string{"swtpm", "swtpm-tools"}

func required() bool {
	return os.Getenv(RequireEnv) == "1" || os.Getenv("CI") == "true"
}

// Missing says which of swtpm's programs are not installed, or "".
func Missing() string {
	var miss []string
	for _, p := range []string{"swtpm", "swtpm_setup", "swtpm_localca"} {
		if _, err := exec.LookPath(p); err != nil {
			miss = append(miss, p)
		}
	}
	if len(miss) == 0 {
		return ""
	}
	return "software TPM tests need " + strings.Join(miss, ", ") + " (Debian packages swtpm swtpm-tools; `make test-deps` installs them)"
}

var installOnce sync.Once

// Require skips the test when swtpm is missing, or (CI=true or
// CASTELLAN_REQUIRE_REAL_PEERS=1) installs it through the project's
// ensure-packages.sh and fails when it is still missing.
func Require(t testing.TB) {
	t.Helper()
	if Missing() == "" {
		return
	}
	if !required() {
		t.Skip(Missing())
	}
	installOnce.Do(func() {
		script, err := findScript()
		if err != nil {
			t.Logf("cannot install swtpm: %v", err)
			return
		}
		out, err := exec.Command(script, packages...).CombinedOutput()
		if err != nil {
			t.Logf("%s %s: %v\n%s", script, strings.Join(packages, " "), err, out)
		}
	})
	if m := Missing(); m != "" {
		t.Fatalf("%s; CI=true or %s=1 makes this a failure", m, RequireEnv)
	}
}

// findScript walks up from the working directory to the module root.
func findScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "vagrant", "scripts", "ensure-packages.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("vagrant/scripts/ensure-packages.sh not found above the working directory")
		}
		dir = parent
	}
}

// LocalCA is a swtpm local CA (swtpm_localca) in a temporary directory: the
// EK CA of every TPM made with it.
type LocalCA struct {
	dir string
}

// NewLocalCA prepares a CA directory; swtpm_localca creates the CA's keys
// when the first TPM is manufactured.
func NewLocalCA(t testing.TB) *LocalCA {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	ca := &LocalCA{dir: dir}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("localca.conf", fmt.Sprintf("statedir = %[1]s/ca\nsigningkey = %[1]s/ca/signkey.pem\nissuercert = %[1]s/ca/issuercert.pem\ncertserial = %[1]s/ca/certserial\n", dir))
	write("localca.options", "--platform-manufacturer castellan-test\n--platform-version 2.1\n--platform-model swtpm\n")
	write("setup.conf", fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %[2]s/localca.conf\ncreate_certs_tool_options = %[2]s/localca.options\nactive_pcr_banks = sha256\n", lookPath(t, "swtpm_localca"), dir))
	if err := os.Mkdir(filepath.Join(dir, "ca"), 0o700); err != nil {
		t.Fatal(err)
	}
	return ca
}

func lookPath(t testing.TB, name string) string {
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// CertificatesPEM returns the CA's root and issuer certificates (PEM): what
// spec.identity.ekCACertificates lists for TPMs made with this CA. Valid
// once a TPM has been manufactured.
func (ca *LocalCA) CertificatesPEM(t testing.TB) []byte {
	t.Helper()
	var out []byte
	for _, f := range []string{"swtpm-localca-rootca-cert.pem", "issuercert.pem"} {
		b, err := os.ReadFile(filepath.Join(ca.dir, "ca", f))
		if err != nil {
			t.Fatalf("swtpm local CA: %v (manufacture a TPM first)", err)
		}
		out = append(out, b...)
	}
	return out
}

// Certificates parses CertificatesPEM.
func (ca *LocalCA) Certificates(t testing.TB) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	rest := ca.CertificatesPEM(t)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return certs
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
}

// TPM is one running swtpm.
type TPM struct {
	dir    string
	socket string
	cmd    *exec.Cmd
	done   chan error
}

// New manufactures a TPM with ca (swtpm_setup --create-ek-cert
// --create-platform-cert) and starts it; the test's cleanup stops it.
func New(t testing.TB, ca *LocalCA) *TPM {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("swtpm_setup", "--tpm2", "--tpm-state", state,
		"--create-ek-cert", "--create-platform-cert",
		"--config", filepath.Join(ca.dir, "setup.conf"),
		"--logfile", filepath.Join(dir, "setup.log")).CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "setup.log"))
		t.Fatalf("swtpm_setup: %v\n%s\n%s", err, out, log)
	}
	tp := &TPM{dir: dir, socket: filepath.Join(dir, "tpm.sock")}
	tp.start(t)
	t.Cleanup(tp.stop)
	return tp
}

func (tp *TPM) start(t testing.TB) {
	t.Helper()
	tp.cmd = exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+filepath.Join(tp.dir, "state"),
		"--server", "type=unixio,path="+tp.socket,
		"--flags", "not-need-init,startup-clear",
		"--log", "file="+filepath.Join(tp.dir, "swtpm.log"))
	tp.cmd.Stdout, tp.cmd.Stderr = io.Discard, io.Discard
	if err := tp.cmd.Start(); err != nil {
		t.Fatalf("starting swtpm: %v", err)
	}
	tp.done = make(chan error, 1)
	go func() { tp.done <- tp.cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(tp.socket); err == nil {
			return
		}
		select {
		case err := <-tp.done:
			log, _ := os.ReadFile(filepath.Join(tp.dir, "swtpm.log"))
			t.Fatalf("swtpm exited: %v\n%s", err, log)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("swtpm did not create its socket within 10 s")
		}
	}
}

func (tp *TPM) stop() {
	if tp.cmd == nil || tp.cmd.Process == nil {
		return
	}
	_ = tp.cmd.Process.Signal(os.Interrupt)
	select {
	case <-tp.done:
	case <-time.After(5 * time.Second):
		_ = tp.cmd.Process.Kill()
		<-tp.done
	}
	tp.cmd = nil
}

// Open connects to the TPM. swtpm serves one connection at a time: close it
// before opening another. The test's cleanup closes it too.
func (tp *TPM) Open(t testing.TB) transport.TPMCloser {
	t.Helper()
	// swtpm creates its socket file before it listens: retry briefly.
	var c net.Conn
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err = net.Dial("unix", tp.socket); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("connecting to swtpm: %v", err)
	}
	conn := &Conn{c: c}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// Conn is a raw TPM 2.0 command channel over a stream socket: one command
// written, one response read (its size is in its 10-byte header, TPM 2.0
// Part 1 section 18).
type Conn struct {
	mu     sync.Mutex
	c      net.Conn
	closed bool
}

// maxResponse bounds a response (TPM responses are a few KiB).
const maxResponse = 1 << 16

// Send implements transport.TPM.
func (s *Conn) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("swtpm connection closed")
	}
	if err := s.c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return nil, err
	}
	if _, err := s.c.Write(cmd); err != nil {
		return nil, fmt.Errorf("writing to swtpm: %w", err)
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(s.c, hdr); err != nil {
		return nil, fmt.Errorf("reading from swtpm: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < 10 || size > maxResponse {
		return nil, fmt.Errorf("swtpm response of %d bytes", size)
	}
	resp := make([]byte, size)
	copy(resp, hdr)
	if _, err := io.ReadFull(s.c, resp[10:]); err != nil {
		return nil, fmt.Errorf("reading from swtpm: %w", err)
	}
	return resp, nil
}

// Close closes the connection.
func (s *Conn) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.c.Close()
}

// Handles lists the handles of a range currently in the TPM: transient
// (0x80000000), persistent (0x81000000), NV indexes (0x01000000), loaded
// sessions (0x02000000).
func Handles(t testing.TB, tpm transport.TPM, first tpm2.TPMHandle) []tpm2.TPMHandle {
	t.Helper()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: 64}.Execute(tpm)
	if err != nil {
		t.Fatalf("GetCapability(handles %#x): %v", uint32(first), err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	var out []tpm2.TPMHandle
	for _, h := range hs.Handle {
		if uint32(h)&0xff000000 == uint32(first)&0xff000000 {
			out = append(out, h)
		}
	}
	return out
}

// Transients lists the loaded transient objects; code that flushes what it
// loads leaves none.
func Transients(t testing.TB, tpm transport.TPM) []tpm2.TPMHandle {
	return Handles(t, tpm, 0x80000000)
}

// BridgeEnv, when set in the environment of a test binary whose TestMain
// calls RunBridgeIfAsked, makes the binary a bridge to the swtpm socket it
// names instead of running tests.
const BridgeEnv = "SWTPMTEST_BRIDGE"

// ToolsTCTI returns a TPM2TOOLS_TCTI value that reaches tp through
// tpm2-tss's cmd TCTI: each tool runs this test binary as a bridge to the
// TPM's socket (the test package's TestMain must call RunBridgeIfAsked).
// swtpm serves one connection at a time: close Go connections (Open) first.
func (tp *TPM) ToolsTCTI(t testing.TB) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("cmd:env %s=%s %s", BridgeEnv, tp.socket, self)
}

// RequireTools skips the test when tpm2-tools are missing, or (CI=true or
// CASTELLAN_REQUIRE_REAL_PEERS=1) installs them and fails when they are
// still missing.
func RequireTools(t testing.TB) {
	t.Helper()
	missing := func() bool { _, err := exec.LookPath("tpm2_createprimary"); return err != nil }
	if !missing() {
		return
	}
	if !required() {
		t.Skip("tpm2-tools are not installed (Debian package tpm2-tools; `make test-deps` installs it)")
	}
	if script, err := findScript(); err == nil {
		if out, err := exec.Command(script, "tpm2-tools").CombinedOutput(); err != nil {
			t.Logf("%s tpm2-tools: %v\n%s", script, err, out)
		}
	}
	if missing() {
		t.Fatalf("tpm2-tools are not installed; CI=true or %s=1 makes this a failure", RequireEnv)
	}
}

// RunBridgeIfAsked returns at once unless BridgeEnv is set; then it copies
// TPM commands from standard input to the swtpm socket BridgeEnv names and
// the responses to standard output (the cmd TCTI's protocol: raw TPM 2.0
// command and response buffers), and exits when standard input ends.
func RunBridgeIfAsked() {
	sock := os.Getenv(BridgeEnv)
	if sock == "" {
		return
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "swtpmtest bridge:", err)
		os.Exit(1)
	}
	conn := &Conn{c: c}
	for {
		hdr := make([]byte, 10)
		if _, err := io.ReadFull(os.Stdin, hdr); err != nil {
			os.Exit(0)
		}
		size := binary.BigEndian.Uint32(hdr[2:6])
		if size < 10 || size > maxResponse {
			fmt.Fprintf(os.Stderr, "swtpmtest bridge: command of %d bytes\n", size)
			os.Exit(1)
		}
		cmd := make([]byte, size)
		copy(cmd, hdr)
		if _, err := io.ReadFull(os.Stdin, cmd[10:]); err != nil {
			os.Exit(1)
		}
		resp, err := conn.Send(cmd)
		if err == nil {
			_, err = os.Stdout.Write(resp)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "swtpmtest bridge:", err)
			os.Exit(1)
		}
	}
}
