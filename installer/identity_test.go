package installer

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"castellan/installer/engine"
	"castellan/installer/nodeid"
	"castellan/installer/pki"
	"castellan/installer/report"
	"castellan/phases/identity"
)

// TestIdentityOverRealSSH: spec.identity.tpm: insecure-skip end to end, over
// real sshd nodes with the real castellan binary as the agent. (The TPM
// path cannot run over sshd here: the test machine has no /dev/tpmrm0 and
// no CUSE to give one to a node; it is tested through the engine against
// swtpm in phases/identity and on the VM lab by make e2e.)
//
// The first apply enrols every node with a software key, marked as such in
// the certificate, the run record and the summary; the certificates verify
// against the committed root CA and revocation list; no PEM private key is
// written anywhere (the software key is PKCS #8 DER, 0600, as documented).
// Then a node leaves the profile and a run that targets another node
// revokes it in the committed CRL; an explicit re-enrolment replaces a
// node's key and revokes the old certificate; --re-enrol is checked as
// input before anything is touched.
func TestIdentityOverRealSSH(t *testing.T) {
	lab := newLab(t, 3)
	prof := testCluster(t, lab, "", "")
	res, err := applyYes(t, testConfig(t, lab, nil), prof)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	r := res.Record
	if ph := phaseResult(r.Phases, identity.Name); ph == nil || ph.Outcome != engine.OutcomeOK {
		t.Fatalf("identity phase: %+v", ph)
	}
	var summary bytes.Buffer
	report.WriteSummary(&summary, r, res.StateDir, res.Commit)
	certs := map[string]*x509.Certificate{}
	for _, n := range lab.Nodes {
		e := recordedEnrolment(t, r.Outputs, n.Name)
		if e.Protection != pki.SoftwareKey || e.EKTrust != string(identity.EKNone) || e.CertSerial == "" || e.KeyFingerprint == "" {
			t.Errorf("%s: recorded %+v", n.Name, e)
		}
		if !strings.Contains(summary.String(), "WARNING: node "+n.Name+" holds a SOFTWARE key") {
			t.Errorf("the summary does not warn about %s's software key:\n%s", n.Name, summary.String())
		}
		dir := n.PrivatePath(identity.DefaultDir)
		certs[n.Name] = readCert(t, filepath.Join(dir, identity.CertFile))
		if certs[n.Name].Subject.OrganizationalUnit[0] != string(pki.SoftwareKey) || certs[n.Name].SerialNumber.String() != e.CertSerial {
			t.Errorf("%s: certificate %v serial %s", n.Name, certs[n.Name].Subject, certs[n.Name].SerialNumber)
		}
		key := filepath.Join(dir, identity.SoftwareKeyFile)
		st, err := os.Stat(key)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: software key %v %v", n.Name, st, err)
		}
		der, _ := os.ReadFile(key)
		if _, err := x509.ParsePKCS8PrivateKey(der); err != nil {
			t.Errorf("%s: software.key is not PKCS #8 DER: %v", n.Name, err)
		}
	}
	if !strings.Contains(summary.String(), "spec.identity.tpm is insecure-skip") {
		t.Errorf("summary:\n%s", summary.String())
	}
	v := committedTrust(t, res.StateDir)
	v.RequireTPM = false
	for n, c := range certs {
		if id, err := v.VerifyNode(c, x509.ExtKeyUsageServerAuth); err != nil || id.Node != n {
			t.Errorf("%s: %+v %v", n, id, err)
		}
	}
	v.RequireTPM = true
	if _, err := v.VerifyNode(certs["n0"], x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("a software-key certificate passed a verifier that requires a TPM")
	}
	noPEMPrivateKey(t, res.StateDir, lab.Nodes[0].PrivatePath(identity.DefaultDir), lab.Nodes[1].PrivatePath(identity.DefaultDir), lab.Nodes[2].PrivatePath(identity.DefaultDir))
	root := gitShow(t, res.StateDir, "HEAD:secrets/identity/"+pki.RootSecret+".age")
	if !bytes.HasPrefix(root, []byte("age-encryption.org/v1")) {
		t.Error("the root CA key is not age-encrypted in the state repo")
	}

	// --re-enrol is input, checked before anything is touched.
	for _, c := range []struct {
		nodes, only, reEnrol []string
		want                 string
	}{
		{nil, nil, []string{"n9"}, "no such node"},
		{[]string{"n0"}, nil, []string{"n1"}, "not among the nodes this run targets"},
		{nil, []string{"preflight"}, []string{"n1"}, "needs the identity phase"},
		// Every wrong node at once, not one per attempt.
		{[]string{"n0"}, nil, []string{"n9", "n1"}, "n9: no such node in the profile\n--"},
	} {
		a := NewApply(testConfig(t, lab, nil))
		a.ProfilePath, a.Nodes, a.Only, a.ReEnrol = prof, c.nodes, c.only, c.reEnrol
		if _, err := a.Prepare(context.Background(), true); !errors.As(err, new(*InputError)) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--re-enrol %v (--nodes %v --only %v): %v", c.reEnrol, c.nodes, c.only, err)
		}
		pl := NewPlan(testConfig(t, lab, nil))
		pl.ProfilePath, pl.Nodes, pl.Only, pl.ReEnrol = prof, c.nodes, c.only, c.reEnrol
		if _, err := pl.Run(context.Background()); !errors.As(err, new(*InputError)) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("plan --re-enrol %v (--nodes %v --only %v): %v", c.reEnrol, c.nodes, c.only, err)
		}
		pl.ReEnrol, pl.AcceptBootState = nil, c.reEnrol
		if _, err := pl.Run(context.Background()); !errors.As(err, new(*InputError)) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("plan --accept-boot-state %v (--nodes %v --only %v): %v", c.reEnrol, c.nodes, c.only, err)
		}
	}

	// n2 leaves the profile; the run targets n0 only.
	body, _ := os.ReadFile(prof)
	var kept []string
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.Contains(line, "name: n2,") {
			kept = append(kept, line)
		}
	}
	if err := os.WriteFile(prof, []byte(strings.Join(kept, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	a := NewApply(testConfig(t, lab, nil))
	a.ProfilePath, a.Nodes = prof, []string{"n0"}
	res2, err := a.Run(context.Background())
	if err != nil {
		t.Fatalf("apply without n2: %v", err)
	}
	if got := actions(res2.Record.Phases, identity.Name); !slices.Equal(got, []string{"revoke n2 serial " + certs["n2"].SerialNumber.String(), "publish-crl crl"}) {
		t.Errorf("identity changes without n2: %q", got)
	}
	v = committedTrust(t, res2.StateDir)
	v.RequireTPM = false
	if _, err := v.VerifyNode(certs["n2"], x509.ExtKeyUsageServerAuth); !errors.Is(err, pki.ErrRevoked) {
		t.Errorf("n2's certificate after it left the profile: %v", err)
	}
	if _, err := v.VerifyNode(certs["n1"], x509.ExtKeyUsageServerAuth); err != nil {
		t.Errorf("n1, not targeted, is still trusted: %v", err)
	}

	// plan --re-enrol n1 shows the re-enrolment apply --re-enrol would make.
	pl := NewPlan(testConfig(t, lab, nil))
	pl.ProfilePath, pl.ReEnrol = prof, []string{"n1"}
	plans, err := pl.Run(context.Background())
	if err != nil {
		t.Fatalf("plan --re-enrol n1: %v", err)
	}
	var planned []string
	for _, p := range plans {
		if p.Phase == identity.Name {
			for _, c := range p.Changes {
				planned = append(planned, c.Node+" "+c.Action)
			}
		}
	}
	if !slices.Contains(planned, "n1 re-enrol") {
		t.Errorf("plan --re-enrol n1: identity changes %q", planned)
	}

	// An explicit re-enrolment of n1: a new key, the old certificate revoked.
	a = NewApply(testConfig(t, lab, nil))
	a.ProfilePath, a.ReEnrol = prof, []string{"n1"}
	pending, err := a.Prepare(context.Background(), true)
	if err != nil || pending.Err() != nil {
		t.Fatalf("prepare --re-enrol n1: %v %v", err, pending.Err())
	}
	res3, err := pending.Apply(context.Background())
	if err != nil {
		t.Fatalf("apply --re-enrol n1: %v", err)
	}
	if got := actions(res3.Record.Phases, identity.Name); !slices.Equal(got, []string{"n1 re-enrol software-key", "publish-crl crl"}) {
		t.Errorf("identity changes with --re-enrol n1: %q", got)
	}
	e := recordedEnrolment(t, res3.Record.Outputs, "n1")
	fresh := readCert(t, filepath.Join(lab.Nodes[1].PrivatePath(identity.DefaultDir), identity.CertFile))
	if e.Action != "re-enrol" || e.CertSerial != fresh.SerialNumber.String() || e.KeyFingerprint == recordedEnrolment(t, r.Outputs, "n1").KeyFingerprint {
		t.Errorf("re-enrolment recorded %+v", e)
	}
	v = committedTrust(t, res3.StateDir)
	v.RequireTPM = false
	if _, err := v.VerifyNode(certs["n1"], x509.ExtKeyUsageServerAuth); !errors.Is(err, pki.ErrRevoked) {
		t.Errorf("n1's old certificate after re-enrolment: %v", err)
	}
	if _, err := v.VerifyNode(fresh, x509.ExtKeyUsageServerAuth); err != nil {
		t.Errorf("n1's new certificate: %v", err)
	}
	noPEMPrivateKey(t, res3.StateDir, lab.Nodes[1].PrivatePath(identity.DefaultDir))

	// EK CA certificates that are not certificates: bad input, before any
	// connection.
	if err := os.WriteFile(filepath.Join(filepath.Dir(prof), "ek-ca.pem"), []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(prof, []byte(strings.Replace(strings.Join(kept, "\n"), "identity: {tpm: insecure-skip}", "identity: {tpm: insecure-skip, ekCACertificates: [ek-ca.pem]}", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadProfile(prof, false); !errors.As(err, new(*InputError)) || !strings.Contains(err.Error(), "spec.identity.ekCACertificates[0]") {
		t.Errorf("bad EK CA file: %v", err)
	}
}

func phaseResult(phases []engine.PhaseResult, name string) *engine.PhaseResult {
	for i := range phases {
		if phases[i].Name == name {
			return &phases[i]
		}
	}
	return nil
}

// actions lists a phase's changes in the run record as "NODE ACTION TARGET".
func actions(phases []engine.PhaseResult, name string) []string {
	var out []string
	if p := phaseResult(phases, name); p != nil {
		for _, c := range p.Changes {
			out = append(out, strings.TrimSpace(c.Node+" "+c.Action+" "+c.Target))
		}
	}
	return out
}

func recordedEnrolment(t *testing.T, outputs map[string]map[string]json.RawMessage, node string) nodeid.Enrolment {
	t.Helper()
	raw, ok := outputs[nodeid.EnrolmentKey.String()][node]
	if !ok {
		t.Fatalf("no recorded enrolment of %s in the run record", node)
	}
	var e nodeid.Enrolment
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatal(err)
	}
	return e
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.ParseCertificatePEM(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func gitShow(t *testing.T, repo, spec string) []byte {
	t.Helper()
	out, err := exec.Command("git", "-C", repo, "show", spec).Output()
	if err != nil {
		t.Fatalf("git show %s: %v", spec, err)
	}
	return out
}

// committedTrust reads the root CA and the revocation list from the state
// repo's last commit (what the mesh and people get).
func committedTrust(t *testing.T, repo string) *pki.Verifier {
	t.Helper()
	root, err := pki.ParseCertificatePEM(gitShow(t, repo, "HEAD:data/identity/"+identity.DataRootCA))
	if err != nil {
		t.Fatal(err)
	}
	crl, err := pki.ParseCRL(gitShow(t, repo, "HEAD:data/identity/"+identity.DataCRL), root)
	if err != nil {
		t.Fatal(err)
	}
	return &pki.Verifier{Cluster: "test", Root: root, CRL: crl}
}

// noPEMPrivateKey searches dirs (files and, for git repos, every committed
// version) for a PEM private key.
func noPEMPrivateKey(t *testing.T, dirs ...string) {
	t.Helper()
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if bytes.Contains(data, []byte("PRIVATE KEY-----")) {
				t.Errorf("%s holds a PEM private key", p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, ".git")); err == nil {
			out, err := exec.Command("git", "-C", dir, "log", "-p", "--all", "--text").Output()
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(out, []byte("PRIVATE KEY-----")) {
				t.Errorf("the history of %s holds a PEM private key", dir)
			}
		}
	}
}
