package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"castellan/installer/engine"
	"castellan/installer/engine/enginetest"
	"castellan/installer/nodeid"
	"castellan/installer/pki"
	"castellan/installer/profile"
	"castellan/phases/identity/swtpmtest"
)

// The tests of this file run the phase through the engine. The nodes'
// transport is enginetest.FakeNodes (a fake: no SSH, no agent exec), and
// each node's operations are the REAL node-side code (Host.Handlers) acting
// on a REAL swtpm and a directory of its own: only the transport is fake.
// Over real sshd with the real agent, see installer's TestIdentityOverRealSSH.

// swtpmCluster is a cluster of fake-transport nodes backed by swtpm.
type swtpmCluster struct {
	t     testing.TB
	ca    *swtpmtest.LocalCA
	nodes *enginetest.FakeNodes
	store *enginetest.MemStore
	dir   string // the profile's directory

	mu   sync.Mutex
	tpms map[string]*nodeTPM
}

// nodeTPM is what backs one node: its swtpm (nil: the node has no TPM),
// the recorder of the TPM commands it receives, and its identity directory.
type nodeTPM struct {
	rig *rig
	rec *Recorder
	dir string
}

func newSWTPMCluster(t testing.TB) *swtpmCluster {
	return &swtpmCluster{t: t, ca: swtpmtest.NewLocalCA(t), nodes: enginetest.NewFakeNodes(Phase{}.Ops()...),
		store: enginetest.NewMemStore(), dir: t.TempDir(), tpms: map[string]*nodeTPM{}}
}

type nopCloser struct{ transport.TPM }

func (nopCloser) Close() error { return nil }

// attach makes node answer the identity operations with the real node-side
// code against r (nil: no TPM) and dir ("" keeps the node's directory).
func (c *swtpmCluster) attach(node string, r *rig, dir string) {
	c.mu.Lock()
	old := c.tpms[node]
	if dir == "" && old != nil {
		dir = old.dir
	}
	if dir == "" {
		dir = filepath.Join(c.t.TempDir(), "identity")
	}
	n := &nodeTPM{rig: r, dir: dir}
	if r != nil {
		n.rec = NewRecorder(r.node.TPM)
	}
	c.tpms[node] = n
	c.mu.Unlock()
	h := Host{Dir: dir, OpenTPM: func() (transport.TPMCloser, error) {
		if n.rig == nil {
			return nil, errors.New("opening the TPM /dev/tpmrm0: no such file or directory")
		}
		return nopCloser{n.rec}, nil
	}}
	log := slog.New(slog.DiscardHandler)
	for _, op := range h.Handlers() {
		c.nodes.Handle(node, op, func(in json.RawMessage) (any, error) {
			return op.Serve(context.Background(), in, log)
		})
	}
}

func (c *swtpmCluster) tpm(node string) *nodeTPM {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tpms[node]
}

// resetRecorders starts counting TPM commands anew.
func (c *swtpmCluster) resetRecorders() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.tpms {
		if n.rig != nil {
			n.rec = NewRecorder(n.rig.node.TPM)
		}
	}
}

func (c *swtpmCluster) created(node string) []string {
	if n := c.tpm(node); n.rec != nil {
		return n.rec.Created()
	}
	return nil
}

// profile writes a profile for nodes with extra identity settings.
func (c *swtpmCluster) profile(identity string, nodes ...string) *profile.Profile {
	c.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: castellan/v1alpha1\nkind: Cluster\nmetadata: {name: lab}\nspec:\n  ssh: {user: root, keyFile: k, knownHosts: kh}\n  nodes:\n")
	for i, n := range nodes {
		fmt.Fprintf(&b, "    - {name: %s, address: 10.9.0.%d, role: server}\n", n, i+1)
	}
	if identity != "" {
		fmt.Fprintf(&b, "  identity: %s\n", identity)
	}
	p, err := profile.Parse("cluster.yaml", []byte(b.String()))
	if err != nil {
		c.t.Fatal(err)
	}
	p.Dir = c.dir
	return p
}

// run is one castellan run: plan (as the prompt does, when confirm is set)
// then apply, in one session, like installer.Pending.
type run struct {
	session *engine.Session
	plans   []engine.Plan
	planErr error
	res     engine.Result
	events  *engine.Recorder
}

func (c *swtpmCluster) apply(ph Phase, p *profile.Profile, targets []string, ins engine.Inputs, confirm bool) *run {
	c.t.Helper()
	var nodes []profile.Node
	for _, n := range p.Spec.Nodes {
		if targets == nil || slices.Contains(targets, n.Name) {
			nodes = append(nodes, n)
		}
	}
	r := &run{events: &engine.Recorder{}}
	r.session = engine.NewSession(engine.SessionConfig{ID: "1", Profile: p, Nodes: nodes, Access: c.nodes, Store: c.store, Sink: r.events, Inputs: ins})
	e := &engine.Engine{Phases: []engine.Phase{ph}}
	var confirmed []engine.Plan
	if confirm {
		r.plans, r.planErr = e.PlanAll(context.Background(), r.session, e.Phases)
		if r.planErr != nil {
			return r
		}
		confirmed = r.plans
	}
	r.res = e.Apply(context.Background(), r.session, e.Phases, confirmed)
	return r
}

func (r *run) changes() []string {
	var out []string
	for _, p := range r.plans {
		for _, c := range p.Changes {
			out = append(out, strings.TrimSpace(c.Node+" "+c.Action+" "+c.Target))
		}
	}
	return out
}

func (r *run) enrolment(t *testing.T, node string) nodeid.Enrolment {
	t.Helper()
	raw, ok := r.session.Outputs()[nodeid.EnrolmentKey.String()][node]
	if !ok {
		t.Fatalf("no recorded enrolment of %s in the run record: %v", node, r.session.Outputs())
	}
	var e nodeid.Enrolment
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatal(err)
	}
	return e
}

// trust reads the committed root CA and revocation list, as the mesh will.
func (c *swtpmCluster) trust(t *testing.T) *pki.Verifier {
	t.Helper()
	root, err := pki.ParseCertificatePEM(c.store.Files["identity/"+DataRootCA])
	if err != nil {
		t.Fatalf("root CA in the state repo: %v", err)
	}
	crl, err := pki.ParseCRL(c.store.Files["identity/"+DataCRL], root)
	if err != nil {
		t.Fatalf("CRL in the state repo: %v", err)
	}
	return &pki.Verifier{Cluster: "lab", Root: root, CRL: crl, RequireTPM: true}
}

func (c *swtpmCluster) records(t *testing.T) map[string]*Record {
	t.Helper()
	var f nodesFile
	data, ok := c.store.Files["identity/"+DataNodes]
	if !ok {
		return nil
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	return f.Nodes
}

// installed is the certificate on the node.
func (c *swtpmCluster) installed(t *testing.T, node string) *x509.Certificate {
	t.Helper()
	cert, err := (&Node{Dir: c.tpm(node).dir}).Certificate()
	if err != nil {
		t.Fatalf("%s: installed certificate: %v", node, err)
	}
	return cert
}

func ekHashOf(t *testing.T, r *rig) string {
	t.Helper()
	o, err := r.node.Observe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	h, err := ObservedEKHash(o.EK)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestPhaseEnrolsThenRerunIsANoOp: plan -> apply -> empty plan, with the
// EK pinned on first enrolment (no EK CA certificates). The plan shows each
// node's EK hash; the certificates verify against the committed root and
// CRL as TPM-resident identities of the TPMs' own keys; the run records EK
// hash, AK name, key fingerprint, serial and expiry; the rerun costs one
// exec per node and creates no TPM object.
func TestPhaseEnrolsThenRerunIsANoOp(t *testing.T) {
	c := newSWTPMCluster(t)
	rigs := map[string]*rig{"n1": newRig(t, c.ca), "n2": newRig(t, c.ca)}
	for n, r := range rigs {
		c.attach(n, r, "")
	}
	prof := c.profile("", "n1", "n2")
	r := c.apply(Phase{}, prof, nil, engine.Inputs{}, true)
	if r.planErr != nil || r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("first run: plan %v, result %+v", r.planErr, r.res)
	}
	for _, ch := range r.plans[0].Changes {
		t.Logf("plan: %s %s: %s", ch.Node, ch.Action, ch.Summary)
	}
	for _, e := range r.events.Events() {
		if e.Kind == engine.KindMessage {
			t.Logf("event: %s %s", e.Node, e.Message)
		}
	}
	want := []string{"create-ca root", "n1 enrol ek " + ekHashOf(t, rigs["n1"]), "n2 enrol ek " + ekHashOf(t, rigs["n2"]), "publish-crl crl"}
	if got := r.changes(); !slices.Equal(got, want) {
		t.Fatalf("plan\n got %q\nwant %q", got, want)
	}
	for _, ch := range r.plans[0].Changes {
		if ch.Node != "" && !strings.Contains(ch.Summary, "confirm that this node's TPM endorsement key is sha256:") {
			t.Errorf("the plan does not show %s's EK for confirmation: %s", ch.Node, ch.Summary)
		}
	}
	v := c.trust(t)
	recs := c.records(t)
	for n, rg := range rigs {
		cert := c.installed(t, n)
		id, err := v.VerifyNode(cert, x509.ExtKeyUsageClientAuth)
		if err != nil || id.Node != n || id.Protection != pki.TPMResident {
			t.Errorf("%s: %+v %v", n, id, err)
		}
		s, err := (&Node{TPM: rg.node.TPM, Dir: c.tpm(n).dir}).Signer()
		if err != nil {
			t.Fatal(err)
		}
		if !s.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) {
			t.Errorf("%s: the certificate's key is not the TPM key", n)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		e := r.enrolment(t, n)
		fp, _ := pki.Fingerprint(cert.PublicKey)
		if e.Action != "enrol" || e.EKHash != ekHashOf(t, rg) || e.EKTrust != string(EKPinned) || e.AKName == "" ||
			e.KeyFingerprint != fp || e.CertSerial != cert.SerialNumber.String() || !e.CertNotAfter.Equal(cert.NotAfter) {
			t.Errorf("%s: recorded %+v", n, e)
		}
		if rec := recs[n]; rec == nil || rec.EKHash != e.EKHash || rec.CertSerial != e.CertSerial {
			t.Errorf("%s: stored record %+v", n, rec)
		}
		cv, ok := engine.Lookup(r.session.View(Name), nodeid.CertificateKey, n)
		if !ok || !cv.Cert.Equal(cert) || !cv.TPMResident() {
			t.Errorf("%s: published certificate %+v %v", n, cv, ok)
		}
		checkDir(t, c.tpm(n).dir)
		noTransients(t, rg)
	}
	if _, ok := engine.Lookup(r.session.View(Name), nodeid.TrustKey, ""); !ok {
		t.Error("no trust anchors published")
	}
	for _, s := range []string{"identity/" + pki.RootSecret, "identity/" + pki.IntermediateSecret} {
		if _, ok := c.store.Secrets[s]; !ok {
			t.Errorf("secret %s not stored", s)
		}
	}
	for name, data := range c.store.Files {
		if bytes.Contains(data, []byte("PRIVATE KEY")) {
			t.Errorf("data %s holds a private key", name)
		}
	}

	// The rerun: empty plan, one exec per node for plan and apply together,
	// no TPM object created, nothing on the nodes rewritten.
	before := map[string]int{}
	files := map[string][]byte{}
	for n := range rigs {
		before[n] = c.nodes.Execs(n)
		for _, f := range []string{AKFile, KeyFile, CertFile} {
			files[n+f], _ = os.ReadFile(filepath.Join(c.tpm(n).dir, f))
		}
	}
	stored := maps(c.store)
	c.resetRecorders()
	r2 := c.apply(Phase{}, prof, nil, engine.Inputs{}, true)
	if r2.planErr != nil || r2.res.Outcome != engine.OutcomeUnchanged || len(r2.changes()) != 0 {
		t.Fatalf("rerun: %v %+v %q", r2.planErr, r2.res, r2.changes())
	}
	for n, rg := range rigs {
		if got := c.nodes.Execs(n) - before[n]; got != 1 {
			t.Errorf("%s: %d execs for a no-op plan and apply, want 1", n, got)
		}
		if cr := c.created(n); len(cr) != 0 {
			t.Errorf("%s: the no-op rerun created TPM objects: %v", n, cr)
		}
		for _, f := range []string{AKFile, KeyFile, CertFile} {
			if now, _ := os.ReadFile(filepath.Join(c.tpm(n).dir, f)); !bytes.Equal(now, files[n+f]) {
				t.Errorf("%s: %s rewritten", n, f)
			}
		}
		if e := r2.enrolment(t, n); e.Action != "none" || e.CertSerial != r.enrolment(t, n).CertSerial {
			t.Errorf("%s: rerun recorded %+v", n, e)
		}
		noTransients(t, rg)
	}
	if after := maps(c.store); !equalMaps(after, stored) {
		t.Error("the no-op rerun changed the state repo")
	}
}

func maps(m *enginetest.MemStore) map[string]string {
	out := map[string]string{}
	for _, n := range m.Names() {
		kind, name, _ := strings.Cut(n, " ")
		if kind == "secret" {
			v, _, _ := m.Secret(name)
			out[n] = string(v)
		} else {
			v, _, _ := m.Data(name)
			out[n] = string(v)
		}
	}
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestConfirmedPlanHoldsForThatEKOnly: the TPM behind a node is swapped
// between the prompt and the apply; the session, pinned to the EK the plan
// showed, refuses it and nothing is issued for that node.
func TestConfirmedPlanHoldsForThatEKOnly(t *testing.T) {
	c := newSWTPMCluster(t)
	a, b := newRig(t, c.ca), newRig(t, c.ca)
	c.attach("n1", a, "")
	prof := c.profile("", "n1")
	var nodes []profile.Node
	nodes = append(nodes, prof.Spec.Nodes...)
	s := engine.NewSession(engine.SessionConfig{ID: "1", Profile: prof, Nodes: nodes, Access: c.nodes, Store: c.store})
	e := &engine.Engine{Phases: []engine.Phase{Phase{}}}
	plans, err := e.PlanAll(context.Background(), s, e.Phases)
	if err != nil {
		t.Fatal(err)
	}
	c.attach("n1", b, "") // another TPM answers from now on
	res := e.Apply(context.Background(), s, e.Phases, plans)
	if res.Outcome != engine.OutcomeFailed || !strings.Contains(res.NodeErrors["n1"], "endorsement key changed") {
		t.Fatalf("result %+v", res)
	}
	if recs := c.records(t); recs["n1"] != nil {
		t.Fatalf("a record was stored for the other TPM: %+v", recs["n1"])
	}
	if _, err := (&Node{Dir: c.tpm("n1").dir}).Certificate(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a certificate was installed: %v", err)
	}
}

// TestChangedEKRefusedThenReEnrolled: the node's TPM is replaced (its disk
// kept, so the old TPM's blobs are still there). The next apply refuses
// the node, saying how to re-enrol it; an explicit re-enrolment then
// succeeds, is recorded, and revokes the old certificate.
func TestChangedEKRefusedThenReEnrolled(t *testing.T) {
	c := newSWTPMCluster(t)
	a, b := newRig(t, c.ca), newRig(t, c.ca)
	c.attach("n1", a, "")
	prof := c.profile("", "n1")
	if r := c.apply(Phase{}, prof, nil, engine.Inputs{}, false); r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("enrolment: %+v", r.res)
	}
	oldCert := c.installed(t, "n1")
	oldRec := c.records(t)["n1"]
	stored := maps(c.store)

	c.attach("n1", b, "") // new TPM, same disk
	for _, confirm := range []bool{true, false} {
		r := c.apply(Phase{}, prof, nil, engine.Inputs{}, confirm)
		var changed *EKChangedError
		if confirm {
			if !errors.As(r.planErr, &changed) {
				t.Fatalf("plan with a changed EK: %v", r.planErr)
			}
		} else if r.res.Outcome != engine.OutcomeFailed || !strings.Contains(r.res.NodeErrors["n1"], "castellan apply --re-enrol n1") {
			t.Fatalf("apply with a changed EK: %+v", r.res)
		}
		if !equalMaps(maps(c.store), stored) {
			t.Fatal("a refused run changed the state repo")
		}
		if cert := c.installed(t, "n1"); !cert.Equal(oldCert) {
			t.Fatal("a refused run changed the node")
		}
	}

	var ins engine.Inputs
	engine.SetInput(&ins, nodeid.ReEnrol, []string{"n1"})
	r := c.apply(Phase{}, prof, nil, ins, true)
	if r.planErr != nil || r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("re-enrolment: %v %+v", r.planErr, r.res)
	}
	hashB := ekHashOf(t, b)
	if got, want := r.changes(), []string{"n1 re-enrol ek " + hashB, "publish-crl crl"}; !slices.Equal(got, want) {
		t.Fatalf("plan %q, want %q", got, want)
	}
	e := r.enrolment(t, "n1")
	if e.Action != "re-enrol" || e.EKHash != hashB || e.PreviousEKHash != oldRec.EKHash || e.KeyFingerprint == oldRec.KeyFingerprint {
		t.Fatalf("recorded %+v", e)
	}
	v := c.trust(t)
	if _, err := v.VerifyNode(oldCert, x509.ExtKeyUsageClientAuth); !errors.Is(err, pki.ErrRevoked) {
		t.Fatalf("old certificate: %v", err)
	}
	if id, err := v.VerifyNode(c.installed(t, "n1"), x509.ExtKeyUsageClientAuth); err != nil || id.Protection != pki.TPMResident {
		t.Fatalf("new certificate: %+v %v", id, err)
	}
	var revoked revokedFile
	if err := json.Unmarshal(c.store.Files["identity/"+DataRevoked], &revoked); err != nil || len(revoked.Revoked) != 1 ||
		revoked.Revoked[0].Serial != oldRec.CertSerial || revoked.Revoked[0].Reason != pki.ReasonSuperseded {
		t.Fatalf("revoked list %+v %v", revoked, err)
	}
	noTransients(t, b)

	// Without the flag, the next run has nothing to do.
	if r := c.apply(Phase{}, prof, nil, engine.Inputs{}, true); r.planErr != nil || len(r.changes()) != 0 {
		t.Fatalf("rerun after re-enrolment: %v %q", r.planErr, r.changes())
	}
}

// TestRenewalReusesTheTPMKey: with EK CA certificates (the swtpm local
// CA), enrolment trusts the EK by its certificate chain; when a third of
// the certificate's life is left, the phase renews it in a new session
// without creating any TPM object, and the old certificate is not revoked
// (same key).
func TestRenewalReusesTheTPMKey(t *testing.T) {
	c := newSWTPMCluster(t)
	rg := newRig(t, c.ca)
	c.attach("n1", rg, "")
	caFile := filepath.Join(c.dir, "ek-ca.pem")
	if err := os.WriteFile(caFile, c.ca.CertificatesPEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	prof := c.profile("{ekCACertificates: [ek-ca.pem]}", "n1")
	r := c.apply(Phase{Validity: 30 * 24 * time.Hour}, prof, nil, engine.Inputs{}, true)
	if r.planErr != nil || r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("enrolment: %v %+v", r.planErr, r.res)
	}
	if e := r.enrolment(t, "n1"); e.EKTrust != string(EKCertified) {
		t.Fatalf("EK trust %q, want %q", e.EKTrust, EKCertified)
	}
	first := c.installed(t, "n1")

	later := func() time.Time { return time.Now().Add(21 * 24 * time.Hour) }
	c.resetRecorders()
	r = c.apply(Phase{Now: later, Validity: 30 * 24 * time.Hour}, prof, nil, engine.Inputs{}, true)
	fp, _ := pki.Fingerprint(first.PublicKey)
	if got, want := r.changes(), []string{"n1 renew key " + fp}; r.planErr != nil || !slices.Equal(got, want) {
		t.Fatalf("renewal plan %q (%v), want %q", got, r.planErr, want)
	}
	if r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("renewal: %+v", r.res)
	}
	if cr := c.created("n1"); len(cr) != 0 {
		t.Fatalf("renewal created TPM objects: %v", cr)
	}
	second := c.installed(t, "n1")
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 || !second.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(first.PublicKey) {
		t.Fatal("renewal did not issue a new certificate for the same key")
	}
	if crl := c.trust(t).CRL; crl.Len() != 0 {
		t.Fatalf("renewal revoked %d certificate(s)", crl.Len())
	}
	noTransients(t, rg)
}

// TestRemovedNodeRevoked: a node that leaves the profile has its
// certificate revoked in the committed CRL, also by a run that targets
// other nodes only (--nodes): removal means "not in the profile".
func TestRemovedNodeRevoked(t *testing.T) {
	c := newSWTPMCluster(t)
	c.attach("n1", nil, "")
	c.attach("n2", nil, "")
	prof := c.profile("{tpm: insecure-skip}", "n1", "n2")
	if r := c.apply(Phase{}, prof, nil, engine.Inputs{}, false); r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("enrolment: %+v", r.res)
	}
	gone := c.installed(t, "n2")
	crl1 := c.trust(t).CRL

	// n2 left the profile; this run targets n1 only.
	r := c.apply(Phase{}, c.profile("{tpm: insecure-skip}", "n1"), []string{"n1"}, engine.Inputs{}, true)
	if r.planErr != nil || r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("run without n2: %v %+v", r.planErr, r.res)
	}
	if got, want := r.changes(), []string{"revoke n2 serial " + gone.SerialNumber.String(), "publish-crl crl"}; !slices.Equal(got, want) {
		t.Fatalf("plan %q, want %q", got, want)
	}
	v := c.trust(t)
	v.RequireTPM = false
	if _, err := v.VerifyNode(gone, x509.ExtKeyUsageClientAuth); !errors.Is(err, pki.ErrRevoked) {
		t.Fatalf("removed node's certificate: %v", err)
	}
	if _, err := v.VerifyNode(c.installed(t, "n1"), x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatalf("remaining node: %v", err)
	}
	if v.CRL.Number.Cmp(crl1.Number) <= 0 {
		t.Fatalf("CRL number %s after %s", v.CRL.Number, crl1.Number)
	}
	if recs := c.records(t); recs["n2"] != nil || recs["n1"] == nil {
		t.Fatalf("records %v", recs)
	}
	if r := c.apply(Phase{}, c.profile("{tpm: insecure-skip}", "n1"), nil, engine.Inputs{}, true); len(r.changes()) != 0 {
		t.Fatalf("rerun: %q", r.changes())
	}
}

// TestTPMRequired: without insecure-skip, a node without a usable TPM
// fails the plan, saying what to do; with it, a node enrolled with its TPM
// is not downgraded to a software key when the TPM disappears.
func TestTPMRequired(t *testing.T) {
	c := newSWTPMCluster(t)
	c.attach("n1", nil, "")
	r := c.apply(Phase{}, c.profile("", "n1"), nil, engine.Inputs{}, true)
	if r.planErr == nil || !strings.Contains(r.planErr.Error(), "insecure-skip") {
		t.Fatalf("plan without a TPM: %v", r.planErr)
	}
	rg := newRig(t, c.ca)
	c.attach("n1", rg, "")
	prof := c.profile("{tpm: insecure-skip}", "n1")
	if r := c.apply(Phase{}, prof, nil, engine.Inputs{}, true); r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("enrolment: %v %+v", r.planErr, r.res)
	} else if e := r.enrolment(t, "n1"); e.Protection != pki.TPMResident {
		t.Fatalf("a node with a TPM under insecure-skip got %s", e.Protection)
	}
	c.attach("n1", nil, "")
	r = c.apply(Phase{}, prof, nil, engine.Inputs{}, true)
	if r.planErr == nil || !strings.Contains(r.planErr.Error(), "does not fall back to a software key") {
		t.Fatalf("TPM gone: %v", r.planErr)
	}
}

// TestSoftwareKeyUpgradedToTPM: an insecure-skip node that got a software
// key and later has a TPM is enrolled with the TPM; the software key leaves
// the node and its certificate is revoked.
func TestSoftwareKeyUpgradedToTPM(t *testing.T) {
	c := newSWTPMCluster(t)
	c.attach("n1", nil, "")
	prof := c.profile("{tpm: insecure-skip}", "n1")
	if r := c.apply(Phase{}, prof, nil, engine.Inputs{}, true); r.res.Outcome != engine.OutcomeOK || r.enrolment(t, "n1").Protection != pki.SoftwareKey {
		t.Fatalf("software enrolment: %v %+v", r.planErr, r.res)
	}
	soft := c.installed(t, "n1")
	rg := newRig(t, c.ca)
	c.attach("n1", rg, "")
	r := c.apply(Phase{}, prof, nil, engine.Inputs{}, true)
	if got, want := r.changes(), []string{"n1 enrol ek " + ekHashOf(t, rg), "publish-crl crl"}; r.planErr != nil || !slices.Equal(got, want) {
		t.Fatalf("plan %q (%v), want %q", got, r.planErr, want)
	}
	if r.res.Outcome != engine.OutcomeOK || r.enrolment(t, "n1").Protection != pki.TPMResident {
		t.Fatalf("upgrade: %+v", r.res)
	}
	if _, err := os.Stat(filepath.Join(c.tpm("n1").dir, SoftwareKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the software key is still on the node: %v", err)
	}
	v := c.trust(t)
	if _, err := v.VerifyNode(soft, x509.ExtKeyUsageClientAuth); !errors.Is(err, pki.ErrRevoked) {
		t.Fatalf("the software key's certificate: %v", err)
	}
	if _, err := v.VerifyNode(c.installed(t, "n1"), x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatalf("the TPM key's certificate: %v", err)
	}
	checkDir(t, c.tpm("n1").dir)
}

// TestEKCAFileChangedSinceValidation: the profile's validation checks the
// EK CA files; one that changed since is refused by the plan, at its field.
func TestEKCAFileChangedSinceValidation(t *testing.T) {
	c := newSWTPMCluster(t)
	c.attach("n1", nil, "")
	if err := os.WriteFile(filepath.Join(c.dir, "ek-ca.pem"), []byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := c.apply(Phase{}, c.profile("{ekCACertificates: [ek-ca.pem]}", "n1"), nil, engine.Inputs{}, true)
	if r.planErr == nil || !strings.Contains(r.planErr.Error(), "spec.identity.ekCACertificates[0]") || !strings.Contains(r.planErr.Error(), "holds no PEM certificate") {
		t.Fatalf("plan: %v", r.planErr)
	}
}

var _ engine.Observer = Phase{}
