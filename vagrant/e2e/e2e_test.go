//go:build e2e

// Package e2e drives the real castellan binary against the Vagrant lab's VMs
// and checks the result on the nodes over SSH. It runs inside the lab's
// network namespace (vagrant/e2e.sh); CASTELLAN_BIN and CASTELLAN_LAB_DIR
// say where the binary and the lab are.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"castellan/installer/engine"
	"castellan/installer/nodeid"
	"castellan/installer/pki"
	"castellan/installer/profile"
	castssh "castellan/installer/ssh"
	"castellan/installer/state"
	"castellan/phases/identity/tpm2check"
)

// lab is a private copy of the lab directory: the lab's profile, key and
// known_hosts, with a fresh state repo. The profile trusts the EK
// certificates of the host's swtpm local CA, which provisions the VMs'
// vTPMs (spec.identity.ekCACertificates).
type lab struct {
	dir     string
	profile string
	bin     string
	p       *profile.Profile
	pool    *castssh.Pool
	// base is the profile as setup wrote it.
	base []byte
}

func setup(t *testing.T) *lab {
	t.Helper()
	bin, src := os.Getenv("CASTELLAN_BIN"), os.Getenv("CASTELLAN_LAB_DIR")
	if bin == "" || src == "" {
		t.Fatal("run through vagrant/e2e.sh (CASTELLAN_BIN and CASTELLAN_LAB_DIR unset)")
	}
	dir := t.TempDir()
	for _, f := range []string{"profile.yaml", "id_ed25519", "known_hosts"} {
		writeFile(t, filepath.Join(dir, f), readFile(t, filepath.Join(src, f)))
	}
	l := &lab{dir: dir, profile: filepath.Join(dir, "profile.yaml"), bin: bin}
	l.trustSWTPMLocalCA(t)
	l.base = readFile(t, l.profile)
	var err error
	if l.p, err = profile.Load(l.profile, profile.ValidateOptions{}); err != nil {
		t.Fatal(err)
	}
	l.connect(t)
	t.Cleanup(func() { l.pool.Close() })
	t.Setenv("CASTELLAN_AGE_IDENTITY", filepath.Join(dir, "age-identity.txt"))
	return l
}

// connect (re)opens the SSH pool the checks use, with the current
// known_hosts.
func (l *lab) connect(t *testing.T) {
	t.Helper()
	if l.pool != nil {
		l.pool.Close()
	}
	var err error
	l.pool, err = castssh.NewPool(castssh.Config{
		User: l.p.Spec.SSH.User, KeyFiles: []string{l.p.Resolve(l.p.Spec.SSH.KeyFile)},
		KnownHostsFile: l.p.Resolve(l.p.Spec.SSH.KnownHosts), Sudo: true,
	})
	if err != nil {
		t.Fatal(err)
	}
}

// swtpmLocalCA is where Debian's swtpm_localca keeps the CA that signs the
// EK certificates of the vTPMs libvirt provisions (/etc/swtpm-localca.conf).
const swtpmLocalCA = "/var/lib/swtpm-localca"

// trustSWTPMLocalCA copies the local CA's certificates beside the profile
// and lists them in spec.identity.ekCACertificates.
func (l *lab) trustSWTPMLocalCA(t *testing.T) {
	t.Helper()
	var pemData []byte
	for _, f := range []string{"swtpm-localca-rootca-cert.pem", "issuercert.pem"} {
		b, err := os.ReadFile(filepath.Join(swtpmLocalCA, f))
		if err != nil {
			t.Fatalf("the VMs' EK CA: %v (libvirt's swtpm_setup signs vTPM EK certificates with swtpm_localca's CA in %s)", err, swtpmLocalCA)
		}
		pemData = append(pemData, b...)
	}
	writeFile(t, filepath.Join(l.dir, "ek-ca.pem"), pemData)
	raw := strings.TrimRight(string(readFile(t, l.profile)), "\n")
	if strings.Contains(raw, "\n  identity:") {
		t.Fatal("the lab profile already has spec.identity: update this test")
	}
	writeFile(t, l.profile, []byte(raw+"\n  identity:\n    ekCACertificates: [ek-ca.pem]\n"))
}

// run runs castellan with args and returns its JSON events, final result and exit code.
type outcome struct {
	events []engine.Event
	// plans: what `plan -o json` printed (one plan per line on stdout; its
	// events go to stderr).
	plans  []engine.Plan
	result *state.Record
	code   int
	stderr string
}

// brief is the run's outcome for a failure message: the outcome, the
// error and each node's error (the whole record, outputs and all, is too
// long to read in a test log), then castellan's stderr.
func (o outcome) brief() string {
	if o.result == nil {
		return "no result; stderr: " + o.stderr
	}
	var b strings.Builder
	fmt.Fprintf(&b, "run %d %s: %s", o.result.Number, o.result.Outcome, o.result.Error)
	for _, n := range slices.Sorted(maps.Keys(o.result.NodeErrors)) {
		fmt.Fprintf(&b, "\n  %s: %s", n, o.result.NodeErrors[n])
	}
	if o.stderr != "" {
		b.WriteString("\nstderr: " + o.stderr)
	}
	return b.String()
}

func (l *lab) castellan(t *testing.T, args ...string) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, l.bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	var o outcome
	o.stderr = stderr.String()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		o.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("castellan %v: %v", args, err)
	}
	for _, out := range []*bytes.Buffer{&stdout, bytes.NewBufferString(o.stderr)} {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			line := sc.Bytes()
			var res struct {
				Result *state.Record `json:"result"`
			}
			if json.Unmarshal(line, &res) == nil && res.Result != nil {
				o.result = res.Result
				continue
			}
			var e engine.Event
			if err := json.Unmarshal(line, &e); err == nil && e.Status != "" {
				o.events = append(o.events, e)
				continue
			}
			var p engine.Plan
			if err := json.Unmarshal(line, &p); err == nil && p.Phase != "" {
				o.plans = append(o.plans, p)
			}
		}
	}
	t.Logf("castellan %s: exit %d in %s", strings.Join(args, " "), o.code, time.Since(start).Round(100*time.Millisecond))
	return o
}

func (l *lab) on(t *testing.T, node string, argv ...string) string {
	t.Helper()
	out, err := l.run(context.Background(), node, "", argv...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// run runs argv as root on node with stdin, and returns its stdout.
func (l *lab) run(ctx context.Context, node, stdin string, argv ...string) (string, error) {
	n, ok := l.p.Node(node)
	if !ok {
		return "", fmt.Errorf("no node %s", node)
	}
	cmd := castssh.Cmd{Argv: argv, Sudo: true}
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := l.pool.Run(ctx, castssh.Host{Name: n.Name, Address: n.Address, Port: n.Port}, cmd)
	if err != nil {
		return string(out.Stdout), fmt.Errorf("%s: %v: %w: %s", node, argv, err, out.Stderr)
	}
	return string(out.Stdout), nil
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

func uploads(o outcome) map[string]bool {
	out := map[string]bool{}
	for _, e := range o.events {
		if e.Status == engine.StatusProgress && e.Step == "upload agent" {
			out[e.Node] = true
		}
	}
	return out
}

// agentBinary is the node agent castellan (bin) ships for the lab's amd64
// VMs: the castellan-agent `make build` embedded beside bin
// (installer/agentbin/dist), or, for a castellan built without it, bin
// itself.
func agentBinary(t *testing.T, bin string) string {
	t.Helper()
	top := filepath.Dir(filepath.Dir(bin))
	found, err := filepath.Glob(filepath.Join(top, "installer", "agentbin", "dist", "castellan-agent-linux-amd64-*"))
	if err != nil {
		t.Fatal(err)
	}
	switch len(found) {
	case 0:
		return bin
	case 1:
		return found[0]
	}
	t.Fatalf("more than one embedded agent beside %s: %v (run make build)", bin, found)
	return ""
}

func TestLab(t *testing.T) {
	l := setup(t)
	nodes := []string{}
	for _, n := range l.p.Spec.Nodes {
		nodes = append(nodes, n.Name)
	}
	// Start from nodes castellan has never touched (the lab may be reused):
	// resetDiskEncryption (diskcrypt_test.go) also blanks the data disk.
	for _, n := range nodes {
		resetDiskEncryption(t, l, n)
	}
	sum := sha256File(t, agentBinary(t, l.bin))
	agentPath := "/var/lib/castellan/bin/castellan-" + sum[:16]
	// The PEM private keys each node holds before castellan touches it (its
	// SSH host keys...): castellan must add none.
	pemBefore := map[string][]string{}
	tpmBefore := map[string]string{}
	for _, n := range nodes {
		pemBefore[n] = l.pemPrivateKeys(t, n)
		tpmBefore[n] = l.on(t, n, "sh", "-c", tpmHandles)
	}
	var first outcome

	t.Run("plan touches nothing", func(t *testing.T) {
		o := l.castellan(t, "plan", "-f", l.profile, "-o", "json")
		if o.code != 0 {
			t.Fatalf("plan exit %d: %s", o.code, o.stderr)
		}
		for _, n := range nodes {
			if out := l.on(t, n, "sh", "-c", "test -e /var/lib/castellan && echo exists || echo absent"); out != "absent" {
				t.Errorf("%s: plan created /var/lib/castellan", n)
			}
		}
	})

	t.Run("first apply installs the agent and passes preflight", func(t *testing.T) {
		o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
		if o.code != 0 || o.result == nil {
			t.Fatalf("apply exit %d: %s\n%v", o.code, o.stderr, o.events)
		}
		if o.result.Outcome != engine.OutcomeOK {
			t.Fatalf("outcome %s: %s", o.result.Outcome, o.result.Error)
		}
		first = o
		up := uploads(o)
		for _, n := range nodes {
			if !up[n] {
				t.Errorf("%s: no agent upload reported", n)
			}
			// The agent is root-owned, executable, and is exactly our binary.
			if got := l.on(t, n, "stat", "-c", "%U:%G %a", agentPath); got != "root:root 755" {
				t.Errorf("%s: agent %s is %q", n, agentPath, got)
			}
			if got := l.on(t, n, "sha256sum", agentPath); !strings.HasPrefix(got, sum) {
				t.Errorf("%s: agent checksum %q, want %s", n, got, sum)
			}
			// Facts were gathered by the agent on the VM itself.
			f, ok := o.result.NodeFacts(n)
			if !ok {
				t.Fatalf("%s: no facts in the run record", n)
			}
			if !f.TPM.Present || f.TPM.Version != "2.0" || !f.WireGuard.Available || !f.Systemd {
				t.Errorf("%s: facts %+v %+v systemd=%v", n, f.TPM, f.WireGuard, f.Systemd)
			}
			disk, ok := f.Disk("/dev/vdb")
			if !ok || disk.Signature != "" || disk.Mounted || disk.SizeB == 0 {
				t.Errorf("%s: data disk facts %+v (found %v)", n, disk, ok)
			}
			if hn := l.on(t, n, "hostname"); f.Hostname != hn {
				t.Errorf("%s: facts hostname %q, node says %q", n, f.Hostname, hn)
			}
		}
	})

	t.Run("every node holds a TPM-resident identity, as tpm2-tools see it", func(t *testing.T) {
		if first.result == nil {
			t.Skip("the first apply failed")
		}
		v := l.committedTrust(t)
		for _, n := range nodes {
			e := recordedEnrolment(t, first.result, n)
			if e.Action != "enrol" || e.Protection != pki.TPMResident || e.EKTrust != "certificate-chain" || e.AKName == "" {
				t.Errorf("%s: recorded %+v", n, e)
			}
			cert := l.nodeCert(t, n)
			if id, err := v.VerifyNode(cert, x509.ExtKeyUsageClientAuth); err != nil || id.Node != n || id.Protection != pki.TPMResident {
				t.Errorf("%s: certificate %+v: %v", n, id, err)
			}
			if cert.SerialNumber.String() != e.CertSerial {
				t.Errorf("%s: installed certificate %s, recorded %s", n, cert.SerialNumber, e.CertSerial)
			}
			res := l.tpm2Check(t, n, cert)
			if res.EKHash != e.EKHash {
				t.Errorf("%s: tpm2-tools compute EK %s, castellan recorded %s", n, res.EKHash, e.EKHash)
			}
			t.Logf("%s: tpm2-tools: key attributes %s, EK %s", n, res.Attributes, res.EKHash)
			if got := l.on(t, n, "stat", "-c", "%U:%G %a", "/var/lib/castellan/identity"); got != "root:root 700" {
				t.Errorf("%s: identity directory %s", n, got)
			}
			// castellan made nothing persistent in the TPM.
			if got := l.on(t, n, "sh", "-c", tpmHandles); got != tpmBefore[n] {
				t.Errorf("%s: the TPM's persistent objects and NV indexes changed:\nbefore %s\nafter  %s", n, tpmBefore[n], got)
			}
		}
	})

	t.Run("agent answers over SSH", func(t *testing.T) {
		out := l.on(t, nodes[0], "sh", "-c", `echo '{"echo":"it'"'"'s me"}' | `+agentPath+` agent agent.ping`)
		var resp struct {
			OK     bool `json:"ok"`
			Result struct {
				Echo string `json:"echo"`
				UID  int    `json:"uid"`
			} `json:"result"`
		}
		if err := json.Unmarshal([]byte(out), &resp); err != nil || !resp.OK || resp.Result.Echo != "it's me" || resp.Result.UID != 0 {
			t.Errorf("ping = %s (%v)", out, err)
		}
	})

	t.Run("second apply is a no-op", func(t *testing.T) {
		mtime := l.on(t, nodes[0], "stat", "-c", "%Y", agentPath)
		identity := map[string]string{}
		for _, n := range nodes {
			identity[n] = l.on(t, n, "sh", "-c", "cd /var/lib/castellan/identity && sha256sum ak.json key.json node.crt")
		}
		o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
		if o.code != 0 || o.result == nil || o.result.Outcome != engine.OutcomeUnchanged {
			t.Fatalf("second apply exit %d, %s", o.code, o.brief())
		}
		if up := uploads(o); len(up) > 0 {
			t.Errorf("second apply uploaded again to %v", up)
		}
		if got := l.on(t, nodes[0], "stat", "-c", "%Y", agentPath); got != mtime {
			t.Errorf("agent rewritten: mtime %s -> %s", mtime, got)
		}
		for _, n := range nodes {
			if got := l.on(t, n, "sh", "-c", "cd /var/lib/castellan/identity && sha256sum ak.json key.json node.crt"); got != identity[n] {
				t.Errorf("%s: the no-op apply rewrote the identity:\n%s\n%s", n, identity[n], got)
			}
			if e := recordedEnrolment(t, o.result, n); e.Action != "none" {
				t.Errorf("%s: the no-op apply recorded %+v", n, e)
			}
		}
	})

	t.Run("history, diff and rollback", func(t *testing.T) {
		// A third run with a changed profile, then roll back to run 1.
		raw := readFile(t, l.profile)
		changed := strings.Replace(string(raw), "role: server", "role: server\n      labels: {castellan.dev/e2e: changed}", 1)
		writeFile(t, l.profile, []byte(changed))
		if o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json"); o.code != 0 {
			t.Fatalf("third apply exit %d: %s", o.code, o.stderr)
		}
		diff, err := exec.Command(l.bin, "diff", "1", "3", "-f", l.profile).CombinedOutput()
		if err != nil || !strings.Contains(string(diff), "+      labels: {castellan.dev/e2e: changed}") {
			t.Errorf("diff 1 3: %v\n%s", err, diff)
		}
		o := l.castellan(t, "rollback", "--to", "1", "-f", l.profile, "--yes", "-o", "json")
		if o.code != 0 || o.result == nil || o.result.Command != "rollback" || o.result.RollbackOf != 1 {
			t.Fatalf("rollback exit %d %s", o.code, o.brief())
		}
		repo := filepath.Join(l.dir, "state")
		head, err := exec.Command("git", "-C", repo, "show", "HEAD:profile.yaml").Output()
		if err != nil || !bytes.Equal(head, raw) {
			t.Errorf("after rollback the state's profile is not run 1's (%v)", err)
		}
		hist, err := exec.Command(l.bin, "history", "--state", repo).CombinedOutput()
		if err != nil {
			t.Fatalf("history: %v\n%s", err, hist)
		}
		for _, want := range []string{"rollback->1", "unchanged"} {
			if !strings.Contains(string(hist), want) {
				t.Errorf("history lacks %q:\n%s", want, hist)
			}
		}
		t.Logf("history:\n%s", hist)
	})

	t.Run("a missing data disk fails preflight and changes nothing", func(t *testing.T) {
		raw := readFile(t, filepath.Join(os.Getenv("CASTELLAN_LAB_DIR"), "profile.yaml"))
		bad := strings.Replace(string(raw), "device: /dev/vdb", "device: /dev/vdz", 1)
		writeFile(t, l.profile, []byte(bad))
		before := map[string]string{}
		for _, n := range nodes {
			before[n] = l.on(t, n, "sh", "-c", "ls -la --time-style=+%s /var/lib/castellan/bin; lsblk -no NAME,FSTYPE,MOUNTPOINT /dev/vdb")
		}
		o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
		if o.code != 1 || o.result == nil || o.result.Outcome != engine.OutcomeFailed {
			t.Fatalf("exit %d result %s", o.code, o.brief())
		}
		if n := l.p.Spec.Nodes[0].Name; !strings.Contains(o.result.NodeErrors[n], "data disk /dev/vdz does not exist") {
			t.Errorf("%s's error = %q", n, o.result.NodeErrors[n])
		}
		for _, n := range nodes {
			if after := l.on(t, n, "sh", "-c", "ls -la --time-style=+%s /var/lib/castellan/bin; lsblk -no NAME,FSTYPE,MOUNTPOINT /dev/vdb"); after != before[n] {
				t.Errorf("%s changed:\nbefore %s\nafter  %s", n, before[n], after)
			}
		}
	})

	t.Run("a changed host key is refused", func(t *testing.T) {
		// Pin server-1 to another node's key: that is what a changed key looks like.
		kh := readFile(t, filepath.Join(l.dir, "known_hosts"))
		n0, n1 := l.p.Spec.Nodes[0], l.p.Spec.Nodes[1]
		var forged []string
		for _, line := range strings.Split(strings.TrimSpace(string(kh)), "\n") {
			if strings.HasPrefix(line, n1.Address+" ") {
				forged = append(forged, line, strings.Replace(line, n1.Address, n0.Address, 1))
			} else if !strings.HasPrefix(line, n0.Address+" ") {
				forged = append(forged, line)
			}
		}
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "id_ed25519"), readFile(t, filepath.Join(l.dir, "id_ed25519")))
		writeFile(t, filepath.Join(dir, "known_hosts"), []byte(strings.Join(forged, "\n")+"\n"))
		writeFile(t, filepath.Join(dir, "profile.yaml"), readFile(t, filepath.Join(os.Getenv("CASTELLAN_LAB_DIR"), "profile.yaml")))
		// Even with --accept-new-host-keys: a changed key is never accepted.
		o := l.castellan(t, "apply", "-f", filepath.Join(dir, "profile.yaml"), "--yes", "--accept-new-host-keys", "-o", "json")
		if o.code != 1 || o.result == nil || !strings.Contains(o.result.NodeErrors[n0.Name], "HOST KEY CHANGED for "+n0.Name) || !strings.Contains(o.result.NodeErrors[n0.Name], "SHA256:") {
			t.Errorf("apply with a changed host key: exit %d, result %s", o.code, o.brief())
		}
		if after := readFile(t, filepath.Join(dir, "known_hosts")); string(after) != strings.Join(forged, "\n")+"\n" {
			t.Errorf("known_hosts was changed:\n%s", after)
		}
	})

	t.Run("a recreated VM (new vTPM) is refused, then re-enrolled explicitly", func(t *testing.T) {
		writeFile(t, l.profile, l.base)
		if o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json"); o.code != 0 {
			t.Fatalf("apply before recreating: exit %d: %s", o.code, o.stderr)
		}
		node := nodes[len(nodes)-1]
		oldCert := l.nodeCert(t, node)
		oldEK := l.tpm2Check(t, node, oldCert).EKHash
		nodesJSON := l.gitShow(t, "HEAD:data/identity/nodes.json")
		l.recreateVM(t, node)

		o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json")
		if o.code != 1 || o.result == nil || o.result.Outcome != engine.OutcomeFailed {
			t.Fatalf("apply after recreating %s: exit %d, %s", node, o.code, o.brief())
		}
		if msg := o.result.NodeErrors[node]; !strings.Contains(msg, "endorsement key changed") || !strings.Contains(msg, "--re-enrol "+node) || !strings.Contains(msg, oldEK) {
			t.Errorf("%s refused with %q", node, msg)
		}
		for _, n := range nodes[:len(nodes)-1] {
			if msg, failed := o.result.NodeErrors[n]; failed {
				t.Errorf("%s failed too: %s", n, msg)
			}
		}
		if got := l.gitShow(t, "HEAD:data/identity/nodes.json"); !bytes.Equal(got, nodesJSON) {
			t.Error("the refused run changed the enrolled identities")
		}
		if out := l.on(t, node, "sh", "-c", "test -e /var/lib/castellan/identity/node.crt && echo present || echo absent"); out != "absent" {
			t.Errorf("the refused run installed a certificate on %s", node)
		}

		o = l.castellan(t, "apply", "-f", l.profile, "--yes", "--re-enrol", node, "-o", "json")
		if o.code != 0 || o.result == nil || o.result.Outcome != engine.OutcomeOK {
			t.Fatalf("apply --re-enrol %s: exit %d, %s", node, o.code, o.brief())
		}
		e := recordedEnrolment(t, o.result, node)
		cert := l.nodeCert(t, node)
		res := l.tpm2Check(t, node, cert)
		if e.Action != "re-enrol" || e.PreviousEKHash != oldEK || e.EKHash == oldEK || e.EKHash != res.EKHash || e.CertSerial != cert.SerialNumber.String() {
			t.Errorf("re-enrolment recorded %+v; tpm2-tools see EK %s", e, res.EKHash)
		}
		found := false
		for _, p := range o.result.Phases {
			for _, c := range p.Changes {
				if p.Name == "identity" && c.Node == node && c.Action == "re-enrol" && c.Target == "ek "+res.EKHash {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("the run record does not show the re-enrolment of %s: %+v", node, o.result.Phases)
		}
		v := l.committedTrust(t)
		if _, err := v.VerifyNode(oldCert, x509.ExtKeyUsageClientAuth); !errors.Is(err, pki.ErrRevoked) {
			t.Errorf("the old certificate of %s: %v", node, err)
		}
		if _, err := v.VerifyNode(cert, x509.ExtKeyUsageClientAuth); err != nil {
			t.Errorf("the new certificate of %s: %v", node, err)
		}
		if o := l.castellan(t, "apply", "-f", l.profile, "--yes", "-o", "json"); o.code != 0 || o.result == nil || o.result.Outcome != engine.OutcomeUnchanged {
			t.Errorf("apply after the re-enrolment: exit %d, result %s", o.code, o.brief())
		}
	})

	t.Run("no PEM private key written by castellan on any node", func(t *testing.T) {
		for _, n := range nodes {
			before := map[string]bool{}
			for _, f := range pemBefore[n] {
				before[f] = true
			}
			for _, f := range l.pemPrivateKeys(t, n) {
				if !before[f] || strings.HasPrefix(f, "/var/lib/castellan/") {
					t.Errorf("%s: %s holds a PEM private key", n, f)
				}
			}
			if out := l.on(t, n, "sh", "-c", "ls /var/lib/castellan/identity"); strings.Contains(out, "software.key") {
				t.Errorf("%s: a software key exists although the node has a TPM", n)
			}
		}
	})
}

// tpmHandles lists the TPM's persistent objects and NV indexes.
const tpmHandles = "tpm2_getcap handles-persistent; tpm2_getcap handles-nv-index"

// pemPrivateKeys lists the files on node that hold a PEM private key: every
// local file system and the tmpfs ones (/run, /tmp, /dev/shm), files up to
// 64 KiB.
func (l *lab) pemPrivateKeys(t *testing.T, node string) []string {
	t.Helper()
	out, err := l.run(context.Background(), node, "", "sh", "-c",
		`for d in / /var /home /run /tmp /dev/shm; do [ -d "$d" ] && find "$d" -xdev -type f -size -65k -print0; done | sort -zu | xargs -0 -r grep -lIs -e '-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----' || true`)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, f := range strings.Split(strings.TrimSpace(out), "\n") {
		if f != "" {
			files = append(files, f)
		}
	}
	return files
}

// nodeCert reads the certificate castellan installed on node.
func (l *lab) nodeCert(t *testing.T, node string) *x509.Certificate {
	t.Helper()
	c, err := pki.ParseCertificatePEM([]byte(l.on(t, node, "cat", "/var/lib/castellan/identity/node.crt") + "\n"))
	if err != nil {
		t.Fatalf("%s: node.crt: %v", node, err)
	}
	return c
}

// tpm2Check checks with tpm2-tools on node (through /dev/tpmrm0) that the
// certificate's key lives in the node's TPM, and returns the EK hash
// tpm2-tools compute.
func (l *lab) tpm2Check(t *testing.T, node string, cert *x509.Certificate) *tpm2check.Result {
	t.Helper()
	keyJSON := l.on(t, node, "cat", "/var/lib/castellan/identity/key.json")
	run := func(ctx context.Context, script string) (string, error) {
		return l.run(ctx, node, script, "sh", "-s")
	}
	res, err := tpm2check.Check(context.Background(), run, []byte(keyJSON), cert)
	if err != nil {
		t.Fatalf("%s: %v", node, err)
	}
	return res
}

func (l *lab) gitShow(t *testing.T, spec string) []byte {
	t.Helper()
	out, err := exec.Command("git", "-C", filepath.Join(l.dir, "state"), "show", spec).Output()
	if err != nil {
		t.Fatalf("git show %s: %v", spec, err)
	}
	return out
}

// committedTrust is the root CA and revocation list of the state repo's
// last commit, with a verifier that requires TPM-resident keys.
func (l *lab) committedTrust(t *testing.T) *pki.Verifier {
	t.Helper()
	root, err := pki.ParseCertificatePEM(l.gitShow(t, "HEAD:data/identity/ca/root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	crl, err := pki.ParseCRL(l.gitShow(t, "HEAD:data/identity/crl.pem"), root)
	if err != nil {
		t.Fatal(err)
	}
	return &pki.Verifier{Cluster: l.p.Metadata.Name, Root: root, CRL: crl, RequireTPM: true}
}

func recordedEnrolment(t *testing.T, rec *state.Record, node string) nodeid.Enrolment {
	t.Helper()
	raw, ok := rec.Outputs[nodeid.EnrolmentKey.String()][node]
	if !ok {
		t.Fatalf("run %d records no identity of %s", rec.Number, node)
	}
	var e nodeid.Enrolment
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatal(err)
	}
	return e
}

// recreateVM destroys node's VM and brings the lab up again, which creates
// it anew: a new disk, new SSH host keys (pinned again from its console by
// lab.sh, whose known_hosts is copied here) and a new vTPM, so a new EK.
func (l *lab) recreateVM(t *testing.T, node string) {
	t.Helper()
	top := os.Getenv("CASTELLAN_REPO")
	if top == "" {
		top = filepath.Dir(filepath.Dir(l.bin)) // CASTELLAN_BIN is $top/bin/castellan
	}
	env := append(os.Environ(), "LIBVIRT_DEFAULT_URI=qemu:///system", "VAGRANT_DEFAULT_PROVIDER=libvirt",
		fmt.Sprintf("CASTELLAN_NODES=%d", len(l.p.Spec.Nodes)))
	for _, argv := range [][]string{
		{"vagrant", "destroy", "-f", node},
		{filepath.Join(top, "vagrant", "lab.sh"), "up"},
	} {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir, cmd.Env = filepath.Join(top, "vagrant"), env
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
		t.Logf("%s: %s", strings.Join(argv, " "), time.Since(start).Round(time.Second))
	}
	writeFile(t, filepath.Join(l.dir, "known_hosts"), readFile(t, filepath.Join(os.Getenv("CASTELLAN_LAB_DIR"), "known_hosts")))
	l.connect(t)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
