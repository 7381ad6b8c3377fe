package installer

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"castellan/installer/engine"
	"castellan/installer/engine/enginetest"
	"castellan/installer/pki"
	"castellan/installer/profile"
	"castellan/phases/identity"
	"castellan/phases/mesh"
)

// TestIdentityForMesh: what the identity phase publishes and signs is what
// the mesh phase verifies. The identity phase runs through the engine; the
// node's transport is enginetest.FakeNodes (a fake), its operations the
// real node-side code (a software key: insecure-skip, no TPM here). The
// mesh's own verification (mesh.VerifyKey) accepts the node's signature of
// a WireGuard key against the published certificate, root and revocation
// list, and refuses it for another key.
func TestIdentityForMesh(t *testing.T) {
	ctx := context.Background()
	nodes := enginetest.NewFakeNodes(identity.Phase{}.Ops()...)
	host := identity.Host{Dir: filepath.Join(t.TempDir(), "identity"), OpenTPM: func() (transport.TPMCloser, error) {
		return nil, errors.New("opening the TPM /dev/tpmrm0: no such file or directory")
	}}
	log := slog.New(slog.DiscardHandler)
	for _, op := range host.Handlers() {
		nodes.Handle("n0", op, func(in json.RawMessage) (any, error) { return op.Serve(ctx, in, log) })
	}
	p, err := profile.Parse("c.yaml", []byte("apiVersion: castellan/v1alpha1\nkind: Cluster\nmetadata: {name: test}\nspec:\n  ssh: {user: root, keyFile: k, knownHosts: kh}\n  nodes: [{name: n0, address: 10.0.0.1, role: server}]\n  identity: {tpm: insecure-skip}\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := engine.NewSession(engine.SessionConfig{ID: "1", Profile: p, Nodes: p.Spec.Nodes, Access: nodes, Store: enginetest.NewMemStore()})
	e := &engine.Engine{Phases: []engine.Phase{identity.Phase{}}}
	if res := e.Apply(ctx, s, e.Phases, nil); res.Outcome != engine.OutcomeOK {
		t.Fatalf("identity: %+v", res)
	}

	id := identityForMesh{}
	der, ok := id.Certificate(s.View(mesh.Name), "n0")
	if !ok {
		t.Fatal("no certificate for n0")
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	rootDER, crlDER, ok := id.Trust(s.View(mesh.Name))
	if !ok {
		t.Fatal("no trust anchors")
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := pki.ParseCRL(crlDER, root)
	if err != nil {
		t.Fatal(err)
	}
	v := &pki.Verifier{Cluster: "test", Root: root, CRL: crl}
	var pub, other wgtypes.Key
	rand.Read(pub[:])
	rand.Read(other[:])
	sig, err := id.Sign(ctx, s.Run(mesh.Name), "n0", mesh.KeyStatement("test", "n0", pub))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mesh.VerifyKey(v, cert, "n0", pub, sig); err != nil {
		t.Fatalf("the mesh refuses the identity's signature: %v", err)
	}
	if _, err := mesh.VerifyKey(v, cert, "n0", other, sig); !errors.Is(err, mesh.ErrBadSignature) {
		t.Fatalf("a signature of another key: %v", err)
	}
	if _, ok := id.Certificate(s.View(mesh.Name), "n9"); ok {
		t.Fatal("a certificate for a node that has none")
	}
}
