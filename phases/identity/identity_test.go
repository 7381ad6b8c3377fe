package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"castellan/installer/pki"
	"castellan/phases/identity/swtpmtest"
)

// rig is one node with a real swtpm.
type rig struct {
	tp   *swtpmtest.TPM
	conn transport.TPM
	node *Node
}

func newRig(t testing.TB, ca *swtpmtest.LocalCA) *rig {
	tp := swtpmtest.New(t, ca)
	conn := tp.Open(t)
	return &rig{tp: tp, conn: conn, node: &Node{TPM: WithRetry(conn), Dir: filepath.Join(t.TempDir(), "identity")}}
}

func ekRoots(t testing.TB, ca *swtpmtest.LocalCA) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range ca.Certificates(t) {
		p.AddCert(c)
	}
	return p
}

// wire sends v through JSON as the agent would, and decodes it with dec.
func wire[T any](t testing.TB, v any, dec func([]byte) (T, error)) T {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out, err := dec(data)
	if err != nil {
		t.Fatalf("decoding what the node sent: %v", err)
	}
	return out
}

// enrol runs one whole session against r's node.
func enrol(t testing.TB, r *rig, p Policy) (*Enrolment, *Attestation, error) {
	t.Helper()
	ctx := context.Background()
	s, err := NewSession(p)
	if err != nil {
		return nil, nil, err
	}
	att, err := r.node.Attest(ctx, s.Request())
	if err != nil {
		t.Fatalf("node attest: %v", err)
	}
	a := wire(t, att, DecodeAttestation)
	ch, err := s.Challenge(a)
	if err != nil {
		return nil, att, err
	}
	resp, err := r.node.Activate(ctx, wire(t, ch, func(b []byte) (ActivateRequest, error) {
		var v ActivateRequest
		return v, decodeStrict(b, &v)
	}))
	if err != nil {
		return nil, att, err
	}
	e, err := s.Finish(wire(t, resp, DecodeActivateResponse))
	return e, att, err
}

func noTransients(t testing.TB, r *rig) {
	t.Helper()
	if h := swtpmtest.Transients(t, r.conn); len(h) != 0 {
		t.Fatalf("transient handles left loaded: %v", h)
	}
	if h := swtpmtest.Handles(t, r.conn, 0x02000000); len(h) != 0 {
		t.Fatalf("sessions left loaded: %v", h)
	}
}

var now = time.Now()

func TestEnrolmentAgainstSWTPM(t *testing.T) {
	ca := swtpmtest.NewLocalCA(t)
	r := newRig(t, ca)
	auth, err := pki.NewAuthority("lab", now)
	if err != nil {
		t.Fatal(err)
	}
	e, att, err := enrol(t, r, Policy{Cluster: "lab", Node: "server-1", EKRoots: ekRoots(t, ca)})
	if err != nil {
		t.Fatal(err)
	}
	noTransients(t, r)
	if want := []string{"TPM2_Create x2"}; !equal(att.Created, want) {
		t.Fatalf("first enrolment created %v, want %v", att.Created, want)
	}
	if e.EKTrust != EKCertified || e.Protection != pki.TPMResident || e.AKName == "" || !strings.HasPrefix(e.EKHash, "sha256:") {
		t.Fatalf("enrolment %+v", e)
	}
	cert, rec, err := e.Issue(auth, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The certificate verifies against the cluster root, as a TPM-resident
	// identity, and its key is the TPM key's.
	crl, err := auth.NewCRL(nil, bigOne, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	v := &pki.Verifier{Cluster: "lab", Root: auth.Root.Cert, CRL: crl, RequireTPM: true}
	id, err := v.VerifyNode(cert, x509.ExtKeyUsageClientAuth)
	if err != nil || id.Node != "server-1" {
		t.Fatalf("verify: %+v %v", id, err)
	}
	signer, err := r.node.Signer()
	if err != nil {
		t.Fatal(err)
	}
	if !signer.pub.Equal(cert.PublicKey) {
		t.Fatal("certificate public key is not the TPM key's")
	}
	// A TPM signature verifies with the certificate (what the mesh does with
	// WireGuard keys), and a signature over other data does not.
	digest := sha256.Sum256([]byte("wg public key"))
	sig, err := signer.Sign(nil, digest[:], cryptoSHA256)
	if err != nil {
		t.Fatal(err)
	}
	if err := signer.Close(); err != nil {
		t.Fatal(err)
	}
	if err := VerifySignature(cert, []byte("wg public key"), sig); err != nil {
		t.Fatal(err)
	}
	sr, err := r.node.Sign(context.Background(), SignRequest{Data: []byte("wg public key 2")})
	if err != nil {
		t.Fatal(err)
	}
	sr = wire(t, sr, DecodeSignResponse)
	if err := VerifySignature(cert, []byte("wg public key 2"), sr.Signature); err != nil {
		t.Fatal(err)
	}
	if err := VerifySignature(cert, []byte("something else"), sr.Signature); err == nil {
		t.Fatal("signature verified over other data")
	}
	noTransients(t, r)

	// Install: the node takes its certificate, refuses another key's.
	if res, err := r.node.Install(context.Background(), InstallRequest{Certificate: cert.Raw}); err != nil || !res.Changed {
		t.Fatalf("install: %+v %v", res, err)
	}
	if res, err := r.node.Install(context.Background(), InstallRequest{Certificate: cert.Raw}); err != nil || res.Changed {
		t.Fatalf("reinstall: %+v %v", res, err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherCert, err := auth.IssueNode(pki.NodeRequest{Cluster: "lab", Node: "server-1", PublicKey: &other.PublicKey, Protection: pki.TPMResident}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.node.Install(context.Background(), InstallRequest{Certificate: otherCert.Raw}); err == nil {
		t.Fatal("node installed a certificate for another key")
	}
	obs, err := r.node.Observe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	obs = wire(t, obs, DecodeObservation)
	if !bytes.Equal(obs.Certificate, cert.Raw) || obs.EK == nil || len(obs.KeyPublic) == 0 {
		t.Fatalf("observation %+v", obs)
	}
	if d, err := Plan(PlanInput{Policy: Policy{Cluster: "lab", Node: "server-1", EKRoots: ekRoots(t, ca)}, Record: rec, Observation: obs, Now: now}); err != nil || d.Action != ActionNone {
		t.Fatalf("plan after enrolment: %+v %v", d, err)
	}

	// No private key in PEM form, and the blobs are root-only.
	checkDir(t, r.node.Dir)
}

var bigOne = big1()

func checkDir(t *testing.T, dir string) {
	t.Helper()
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("identity dir: %v %v", st.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if bytes.Contains(data, []byte("PRIVATE KEY")) {
			t.Errorf("%s holds a PEM private key", e.Name())
		}
		info, _ := e.Info()
		if e.Name() != CertFile && info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", e.Name(), info.Mode().Perm())
		}
	}
}

func equal(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") }

func TestRerunCreatesNoTPMObject(t *testing.T) {
	ca := swtpmtest.NewLocalCA(t)
	r := newRig(t, ca)
	p := Policy{Cluster: "lab", Node: "server-1", EKRoots: ekRoots(t, ca)}
	first, _, err := enrol(t, r, p)
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[string][]byte{}
	for _, f := range []string{AKFile, KeyFile} {
		blobs[f], _ = os.ReadFile(filepath.Join(r.node.Dir, f))
	}
	persistent := swtpmtest.Handles(t, r.conn, 0x81000000)
	nv := swtpmtest.Handles(t, r.conn, 0x01000000)

	second, att, err := enrol(t, r, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(att.Created) != 0 {
		t.Fatalf("rerun created %v", att.Created)
	}
	if att.Commands["TPM2_Create"] != 0 || att.Commands["TPM2_Certify"] != 1 {
		t.Fatalf("rerun commands %v", att.Commands)
	}
	if second.AKName != first.AKName || second.KeyFingerprint != first.KeyFingerprint || second.EKHash != first.EKHash {
		t.Fatalf("rerun changed the identity: %+v vs %+v", second, first)
	}
	for f, b := range blobs {
		now, _ := os.ReadFile(filepath.Join(r.node.Dir, f))
		if !bytes.Equal(now, b) {
			t.Errorf("%s rewritten by the rerun", f)
		}
	}
	if got := swtpmtest.Handles(t, r.conn, 0x81000000); !equalHandles(got, persistent) {
		t.Fatalf("persistent handles %v -> %v", persistent, got)
	}
	if got := swtpmtest.Handles(t, r.conn, 0x01000000); !equalHandles(got, nv) {
		t.Fatalf("NV indexes %v -> %v", nv, got)
	}
	noTransients(t, r)
	// Observe is read-only: no creating command at all.
	rec := NewRecorder(r.node.TPM)
	ro := &Node{TPM: rec, Dir: r.node.Dir}
	if _, err := ro.Observe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c := rec.Created(); len(c) != 0 {
		t.Fatalf("observe created %v", c)
	}
}

func equalHandles(a, b []tpm2.TPMHandle) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestForgedCertificationRefused presents software keys as if the TPM had
// certified them.
func TestForgedCertificationRefused(t *testing.T) {
	ca := swtpmtest.NewLocalCA(t)
	r := newRig(t, ca)
	p := Policy{Cluster: "lab", Node: "server-1", EKRoots: ekRoots(t, ca)}
	soft, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	softPublic := tpmPublicOf(t, &soft.PublicKey, keyTemplate)

	cases := map[string]func(a *Attestation, nonce []byte){
		// The TPM's certification, with the key swapped for a software key
		// carrying TPM-like attributes.
		"software key behind a TPM certification": func(a *Attestation, _ []byte) {
			a.Key.Public = softPublic
		},
		// A certification of the software key, well formed, over the right
		// nonce, signed by a software key instead of the AK.
		"certification signed by a software key": func(a *Attestation, nonce []byte) {
			a.Key.Public = softPublic
			a.Key.Attestation, a.Key.Signature = forgeCertify(t, softPublic, nonce, soft)
		},
		// A software "AK" whose creation it certified itself, and a key
		// certified by it: all signatures verify, only activation can tell.
		"software AK": func(a *Attestation, nonce []byte) {
			akSoft, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			a.AK = forgeAK(t, akSoft)
			a.Key.Public = softPublic
			a.Key.Attestation, a.Key.Signature = forgeCertify(t, softPublic, nonce, akSoft)
		},
		"key attributes: not fixedTPM": func(a *Attestation, _ []byte) {
			tm := keyTemplate
			tm.ObjectAttributes.FixedTPM = false
			a.Key.Public = tpmPublicOf(t, &soft.PublicKey, tm)
		},
		"trailing bytes after the attestation": func(a *Attestation, _ []byte) {
			a.Key.Attestation = append(a.Key.Attestation, 0)
		},
	}
	for name, forge := range cases {
		t.Run(name, func(t *testing.T) {
			s, err := NewSession(p)
			if err != nil {
				t.Fatal(err)
			}
			att, err := r.node.Attest(context.Background(), s.Request())
			if err != nil {
				t.Fatal(err)
			}
			forge(att, s.nonce)
			a := wire(t, att, DecodeAttestation)
			ch, err := s.Challenge(a)
			if err == nil {
				// Only the software AK gets this far: the real TPM cannot
				// answer for an AK it does not hold.
				resp, aerr := r.node.Activate(context.Background(), *ch)
				if aerr == nil {
					_, err = s.Finish(resp)
				} else {
					_, err = s.Finish(&ActivateResponse{Secret: make([]byte, 32)})
				}
			}
			if err == nil {
				t.Fatal("a forged certification was accepted")
			}
			t.Logf("refused: %v", err)
		})
	}
	noTransients(t, r)
}

func TestActivationByAnotherTPMRefused(t *testing.T) {
	ca := swtpmtest.NewLocalCA(t)
	a, b := newRig(t, ca), newRig(t, ca)
	p := Policy{Cluster: "lab", Node: "server-1", EKRoots: ekRoots(t, ca)}
	ctx := context.Background()
	s, err := NewSession(p)
	if err != nil {
		t.Fatal(err)
	}
	// Node B presents A's EK (genuine certificate) with its own AK and key.
	attA, err := a.node.Attest(ctx, AttestRequest{Nonce: make([]byte, NonceSize)})
	if err != nil {
		t.Fatal(err)
	}
	attB, err := b.node.Attest(ctx, s.Request())
	if err != nil {
		t.Fatal(err)
	}
	attB.EK = attA.EK
	ch, err := s.Challenge(wire(t, attB, DecodeAttestation))
	if err != nil {
		t.Fatalf("challenge: %v", err)
	}
	// B's TPM cannot activate a credential made for A's EK.
	if _, err := b.node.Activate(ctx, *ch); err == nil {
		t.Fatal("TPM B activated a credential made for TPM A's EK")
	}
	// A's TPM holds the EK, but not the AK the challenge names.
	if _, err := a.node.Activate(ctx, *ch); err == nil || !strings.Contains(err.Error(), "AK") {
		t.Fatalf("TPM A answered for B's AK: %v", err)
	}
	// Even told A's AK name, A cannot decrypt it: the credential is bound
	// to B's AK name.
	forgedCh := *ch
	forgedCh.AKName = mustAKName(t, attA)
	if _, err := a.node.Activate(ctx, forgedCh); err == nil {
		t.Fatal("TPM A activated a credential bound to B's AK")
	}
	// Whatever secret comes back, the session refuses, and is then spent.
	if _, err := s.Finish(&ActivateResponse{Secret: make([]byte, 32)}); err == nil {
		t.Fatal("a wrong secret was accepted")
	}
	if _, err := s.Finish(&ActivateResponse{Secret: make([]byte, 32)}); err == nil || !strings.Contains(err.Error(), "no challenge") {
		t.Fatalf("a failed session was usable again: %v", err)
	}
	noTransients(t, a)
	noTransients(t, b)
}

func mustAKName(t *testing.T, a *Attestation) []byte {
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](a.AK.Public)
	if err != nil {
		t.Fatal(err)
	}
	n, err := tpm2.ObjectName(p)
	if err != nil {
		t.Fatal(err)
	}
	return n.Buffer
}

func TestChangedEKRefused(t *testing.T) {
	ca := swtpmtest.NewLocalCA(t)
	a, b := newRig(t, ca), newRig(t, ca)
	ctx := context.Background()
	// Pin mode: no EK CA certificates; the user confirmed A's EK hash.
	obs, err := a.node.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hashA, err := ObservedEKHash(obs.EK)
	if err != nil {
		t.Fatal(err)
	}
	p := Policy{Cluster: "lab", Node: "server-1", PinnedEK: hashA}
	e, _, err := enrol(t, a, p)
	if err != nil || e.EKTrust != EKPinned || e.EKHash != hashA {
		t.Fatalf("enrol A: %+v %v", e, err)
	}
	// The VM is rebuilt: same node name, new TPM.
	_, _, err = enrol(t, b, p)
	var changed *EKChangedError
	if !errors.As(err, &changed) || changed.Pinned != hashA || changed.Presented == hashA || !strings.Contains(err.Error(), "--re-enrol server-1") {
		t.Fatalf("changed EK: %v", err)
	}
	// The plan says so too, before any session.
	obsB, err := b.node.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Plan(PlanInput{Policy: p, Record: &Record{Node: "server-1", EKHash: hashA, Protection: pki.TPMResident}, Observation: obsB, Now: now})
	if !errors.As(err, &changed) || d.Action != ActionRefuse {
		t.Fatalf("plan: %+v %v", d, err)
	}
	// Explicit re-enrolment accepts it, and says the EK changed.
	p.ReEnrol = true
	e, _, err = enrol(t, b, p)
	if err != nil || !e.EKChanged || e.EKHash == hashA {
		t.Fatalf("re-enrol: %+v %v", e, err)
	}
	// With EK CA certificates, a foreign CA's EK is refused.
	other := swtpmtest.NewLocalCA(t)
	c := newRig(t, other)
	_, _, err = enrol(t, c, Policy{Cluster: "lab", Node: "server-2", EKRoots: ekRoots(t, ca)})
	if err == nil || !strings.Contains(err.Error(), "ekCACertificates") {
		t.Fatalf("EK under another CA: %v", err)
	}
}

func TestNonceReplayRefused(t *testing.T) {
	ca := swtpmtest.NewLocalCA(t)
	r := newRig(t, ca)
	p := Policy{Cluster: "lab", Node: "server-1", EKRoots: ekRoots(t, ca)}
	ctx := context.Background()
	s1, _ := NewSession(p)
	old, err := r.node.Attest(ctx, s1.Request())
	if err != nil {
		t.Fatal(err)
	}
	// A recorded transcript replayed into a new session.
	s2, _ := NewSession(p)
	if _, err := s2.Challenge(wire(t, old, DecodeAttestation)); err == nil || !strings.Contains(err.Error(), "nonce") {
		t.Fatalf("replayed attestation: %v", err)
	}
	// The same session asked twice.
	if _, err := s1.Challenge(wire(t, old, DecodeAttestation)); err != nil {
		t.Fatal(err)
	}
	if _, err := s1.Challenge(wire(t, old, DecodeAttestation)); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("second challenge in one session: %v", err)
	}
}

func TestInsecureSkipSoftwareKey(t *testing.T) {
	auth, err := pki.NewAuthority("lab", now)
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{Dir: filepath.Join(t.TempDir(), "identity")}
	ctx := context.Background()
	p := Policy{Cluster: "lab", Node: "agent-1", Software: true}
	s, _ := NewSession(p)
	att, err := n.Attest(ctx, s.Request())
	if err != nil {
		t.Fatal(err)
	}
	e, err := s.FinishSoftware(wire(t, att, DecodeAttestation))
	if err != nil {
		t.Fatal(err)
	}
	cert, rec, err := e.Issue(auth, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.OrganizationalUnit[0] != string(pki.SoftwareKey) || rec.Protection != pki.SoftwareKey || rec.EKTrust != EKNone {
		t.Fatalf("software certificate OU %v record %+v", cert.Subject.OrganizationalUnit, rec)
	}
	st, err := os.Stat(filepath.Join(n.Dir, SoftwareKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("software key file: %v %v", st, err)
	}
	// Rerun: same key, nothing created.
	s2, _ := NewSession(p)
	att2, err := n.Attest(ctx, s2.Request())
	if err != nil || len(att2.Created) != 0 {
		t.Fatalf("rerun: %+v %v", att2, err)
	}
	if e2, err := s2.FinishSoftware(att2); err != nil || e2.KeyFingerprint != e.KeyFingerprint {
		t.Fatalf("rerun enrolment: %+v %v", e2, err)
	}
	// A signature by another key, a replay, or a TPM-required cluster: refused.
	s3, _ := NewSession(p)
	if _, err := s3.FinishSoftware(att); err == nil {
		t.Fatal("replayed software proof accepted")
	}
	s4, _ := NewSession(Policy{Cluster: "lab", Node: "agent-1", PinnedEK: "sha256:00"})
	if _, err := s4.Challenge(att2); err == nil || !strings.Contains(err.Error(), "requires a TPM") {
		t.Fatalf("software answer in TPM mode: %v", err)
	}
	// A key file others can read is refused.
	if err := os.Chmod(filepath.Join(n.Dir, SoftwareKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	s5, _ := NewSession(p)
	if _, err := n.Attest(ctx, s5.Request()); err == nil {
		t.Fatal("world-readable software key used")
	}
}
