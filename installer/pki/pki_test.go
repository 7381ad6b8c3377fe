package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

// memSecrets is an in-memory Secrets store for unit tests of this package
// (the state repo's real store is tested in installer/state).
type memSecrets map[string][]byte

func (m memSecrets) Get(name string) ([]byte, bool, error) {
	v, ok := m[name]
	return v, ok, nil
}
func (m memSecrets) Put(name string, v []byte) error { m[name] = bytes.Clone(v); return nil }

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func newAuthority(t testing.TB) *Authority {
	t.Helper()
	a, err := NewAuthority("lab", t0)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func p256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestAuthorityChainAndConstraints(t *testing.T) {
	a := newAuthority(t)
	if a.Root.Cert.PublicKeyAlgorithm != x509.ECDSA || a.Root.Key.Curve != elliptic.P256() {
		t.Fatalf("root key is not ECDSA P-256")
	}
	if !a.Root.Cert.IsCA || a.Root.Cert.MaxPathLen != 1 {
		t.Fatalf("root: IsCA=%v pathlen=%d", a.Root.Cert.IsCA, a.Root.Cert.MaxPathLen)
	}
	if _, err := a.Intermediate.Cert.Verify(x509.VerifyOptions{Roots: a.RootPool(), CurrentTime: t0}); err != nil {
		t.Fatalf("intermediate does not chain to root: %v", err)
	}
	if !a.Intermediate.Cert.MaxPathLenZero {
		t.Fatal("intermediate may sign further CAs")
	}

	// A node certificate verifies against the root alone.
	key := p256(t)
	cert, err := a.IssueNode(NodeRequest{Cluster: "lab", Node: "server-1", PublicKey: &key.PublicKey, Protection: TPMResident, IPs: []net.IP{net.ParseIP("10.99.0.1")}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: a.RootPool(), CurrentTime: t0, DNSName: "server-1", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("node cert does not verify: %v", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Fatal("certificate key is not the requested key")
	}
	if cert.IsCA || cert.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Fatalf("node cert: IsCA=%v KeyUsage=%v", cert.IsCA, cert.KeyUsage)
	}
	if got := cert.URIs[0].String(); got != "castellan://lab/node/server-1" {
		t.Fatalf("URI SAN %s", got)
	}
	if !cert.IPAddresses[0].Equal(net.ParseIP("10.99.0.1")) {
		t.Fatalf("IP SANs %v", cert.IPAddresses)
	}
	if cert.NotAfter.Sub(t0) != DefaultNodeValidity {
		t.Fatalf("validity %s", cert.NotAfter.Sub(t0))
	}
	// Another cluster's root does not verify it.
	other := newAuthority(t)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: other.RootPool(), CurrentTime: t0}); err == nil {
		t.Fatal("a node cert verified against another cluster's root")
	}

	// The intermediate cannot mint a castellan node identity that verifies,
	// even if a verifier were given it as an intermediate.
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: t0, NotAfter: t0.Add(time.Hour), URIs: []*url.URL{NodeIdentityURI("lab", "evil")}, DNSNames: []string{"evil"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Intermediate.Cert, &key.PublicKey, a.Intermediate.Key)
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := x509.ParseCertificate(der)
	inter := x509.NewCertPool()
	inter.AddCert(a.Intermediate.Cert)
	_, err = forged.Verify(x509.VerifyOptions{Roots: a.RootPool(), Intermediates: inter, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err == nil || !strings.Contains(err.Error(), "excluded") {
		t.Fatalf("intermediate-issued castellan URI verified or failed for another reason: %v", err)
	}
}

func TestIssueNodeRefusesBadInput(t *testing.T) {
	a := newAuthority(t)
	k := p256(t)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	for name, req := range map[string]NodeRequest{
		"other cluster":  {Cluster: "prod", Node: "n1", PublicKey: &k.PublicKey, Protection: TPMResident},
		"bad node name":  {Cluster: "lab", Node: "N1/../x", PublicKey: &k.PublicKey, Protection: TPMResident},
		"no key":         {Cluster: "lab", Node: "n1", Protection: TPMResident},
		"small RSA":      {Cluster: "lab", Node: "n1", PublicKey: &small.PublicKey, Protection: TPMResident},
		"P-224":          {Cluster: "lab", Node: "n1", PublicKey: &p224.PublicKey, Protection: TPMResident},
		"no protection":  {Cluster: "lab", Node: "n1", PublicKey: &k.PublicKey},
		"negative life":  {Cluster: "lab", Node: "n1", PublicKey: &k.PublicKey, Protection: TPMResident, Validity: -time.Hour},
		"empty node":     {Cluster: "lab", Node: "", PublicKey: &k.PublicKey, Protection: TPMResident},
		"uppercase node": {Cluster: "lab", Node: "Node", PublicKey: &k.PublicKey, Protection: TPMResident},
	} {
		if _, err := a.IssueNode(req, t0); err == nil {
			t.Errorf("%s: issued", name)
		}
	}
}

func TestNeedsRenewalEdges(t *testing.T) {
	a := newAuthority(t)
	k := p256(t)
	cert, err := a.IssueNode(NodeRequest{Cluster: "lab", Node: "n1", PublicKey: &k.PublicKey, Protection: TPMResident, Validity: 90 * 24 * time.Hour}, t0)
	if err != nil {
		t.Fatal(err)
	}
	life := cert.NotAfter.Sub(cert.NotBefore)
	threshold := cert.NotAfter.Add(-life / 3)
	for _, c := range []struct {
		name string
		at   time.Time
		want bool
	}{
		{"before NotBefore", cert.NotBefore.Add(-time.Second), true},
		{"at NotBefore", cert.NotBefore, false},
		{"just issued", t0, false},
		{"one ns before two thirds", threshold.Add(-time.Nanosecond), false},
		{"at two thirds", threshold, true},
		{"after two thirds", threshold.Add(time.Hour), true},
		{"at NotAfter", cert.NotAfter, true},
		{"expired", cert.NotAfter.Add(time.Hour), true},
	} {
		if got := NeedsRenewal(cert, c.at); got != c.want {
			t.Errorf("%s: NeedsRenewal = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestLoadOrCreateAuthority(t *testing.T) {
	s := memSecrets{}
	a, created, renewed, err := LoadOrCreateAuthority(s, "lab", t0)
	if err != nil || !created || renewed {
		t.Fatalf("first: created=%v renewed=%v err=%v", created, renewed, err)
	}
	for _, name := range []string{RootSecret, IntermediateSecret} {
		if !bytes.Contains(s[name], []byte("PRIVATE KEY")) {
			t.Fatalf("%s holds no key", name)
		}
	}
	b, created, renewed, err := LoadOrCreateAuthority(s, "lab", t0.Add(24*time.Hour))
	if err != nil || created || renewed {
		t.Fatalf("second: created=%v renewed=%v err=%v", created, renewed, err)
	}
	if !b.Root.Cert.Equal(a.Root.Cert) || !b.Root.Key.Equal(a.Root.Key) || !b.Intermediate.Cert.Equal(a.Intermediate.Cert) {
		t.Fatal("reload gave other CAs")
	}
	// Another cluster's state is refused.
	if _, _, _, err := LoadOrCreateAuthority(s, "prod", t0); err == nil || !strings.Contains(err.Error(), "another cluster") {
		t.Fatalf("other cluster: %v", err)
	}
	// The intermediate renews at two thirds of its life, with the same root.
	later := a.Intermediate.Cert.NotAfter.Add(-a.Intermediate.Cert.NotAfter.Sub(a.Intermediate.Cert.NotBefore) / 3)
	c, created, renewed, err := LoadOrCreateAuthority(s, "lab", later)
	if err != nil || created || !renewed {
		t.Fatalf("renewal: created=%v renewed=%v err=%v", created, renewed, err)
	}
	if c.Intermediate.Cert.Equal(a.Intermediate.Cert) || !c.Root.Cert.Equal(a.Root.Cert) {
		t.Fatal("renewal did not replace the intermediate alone")
	}
	// Half a PKI is refused, not recreated.
	half := memSecrets{IntermediateSecret: s[IntermediateSecret]}
	if _, _, _, err := LoadOrCreateAuthority(half, "lab", t0); err == nil {
		t.Fatal("a state repo without root CA was accepted")
	}
	// A bundle whose key is not the certificate's is refused.
	wrong := append(a.Root.CertPEM(), s[IntermediateSecret][bytes.Index(s[IntermediateSecret], []byte("-----BEGIN PRIVATE KEY")):]...)
	if _, err := ParseCA(wrong); err == nil {
		t.Fatal("mismatched CA bundle accepted")
	}
}

func TestCRLRoundTripAndVerifier(t *testing.T) {
	a := newAuthority(t)
	keys := map[string]*ecdsa.PrivateKey{}
	certs := map[string]*x509.Certificate{}
	for _, n := range []string{"n1", "n2", "n3"} {
		keys[n] = p256(t)
		c, err := a.IssueNode(NodeRequest{Cluster: "lab", Node: n, PublicKey: &keys[n].PublicKey, Protection: TPMResident}, t0)
		if err != nil {
			t.Fatal(err)
		}
		certs[n] = c
	}
	revokedAt := t0.Add(time.Hour).Truncate(time.Second)
	crl, err := a.NewCRL([]Revocation{{Serial: certs["n2"].SerialNumber, RevokedAt: revokedAt, Reason: ReasonCessationOfOperation}}, big.NewInt(3), t0.Add(2*time.Hour), 0)
	if err != nil {
		t.Fatal(err)
	}
	// Round trip through PEM and DER, signature checked.
	for _, data := range [][]byte{crl.DER, crl.PEM()} {
		back, err := ParseCRL(data, a.Root.Cert)
		if err != nil {
			t.Fatal(err)
		}
		if back.Number.Cmp(big.NewInt(3)) != 0 || back.Len() != 1 {
			t.Fatalf("number %s len %d", back.Number, back.Len())
		}
		if at, ok := back.Revoked(certs["n2"].SerialNumber); !ok || !at.Equal(revokedAt) {
			t.Fatalf("n2 revoked=%v at %s", ok, at)
		}
		if _, ok := back.Revoked(certs["n1"].SerialNumber); ok {
			t.Fatal("n1 listed")
		}
	}
	// Signed by another CA: refused.
	other := newAuthority(t)
	if _, err := ParseCRL(crl.DER, other.Root.Cert); err == nil {
		t.Fatal("CRL accepted under another root")
	}
	// Tampered: refused.
	bad := bytes.Clone(crl.DER)
	bad[len(bad)-5] ^= 0xff
	if _, err := ParseCRL(bad, a.Root.Cert); err == nil {
		t.Fatal("tampered CRL accepted")
	}
	if _, err := a.NewCRL([]Revocation{{Serial: big.NewInt(5)}, {Serial: big.NewInt(5)}}, big.NewInt(4), t0, 0); err == nil {
		t.Fatal("duplicate serial accepted")
	}

	now := t0.Add(3 * time.Hour)
	v := &Verifier{Cluster: "lab", Root: a.Root.Cert, CRL: crl, RequireTPM: true, Now: func() time.Time { return now }}
	id, err := v.VerifyNode(certs["n1"], x509.ExtKeyUsageClientAuth)
	if err != nil || id.Node != "n1" || id.Protection != TPMResident {
		t.Fatalf("n1: %+v %v", id, err)
	}
	if _, err := v.VerifyNode(certs["n2"], x509.ExtKeyUsageClientAuth); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked n2: %v", err)
	}
	// A software key is refused when the cluster requires a TPM.
	sk := p256(t)
	soft, err := a.IssueNode(NodeRequest{Cluster: "lab", Node: "n4", PublicKey: &sk.PublicKey, Protection: SoftwareKey}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.VerifyNode(soft, x509.ExtKeyUsageClientAuth); err == nil || !strings.Contains(err.Error(), "software-key") {
		t.Fatalf("software key: %v", err)
	}
	v.RequireTPM = false
	if id, err := v.VerifyNode(soft, x509.ExtKeyUsageClientAuth); err != nil || id.Protection != SoftwareKey {
		t.Fatalf("software key allowed: %+v %v", id, err)
	}
	// Fail closed: no CRL, expired CRL, expired certificate, other cluster.
	if _, err := (&Verifier{Cluster: "lab", Root: a.Root.Cert, Now: v.Now}).VerifyNode(certs["n1"], x509.ExtKeyUsageClientAuth); err == nil {
		t.Fatal("verified without a CRL")
	}
	now = crl.NextUpdate.Add(time.Second)
	if _, err := v.VerifyNode(certs["n1"], x509.ExtKeyUsageClientAuth); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("stale CRL: %v", err)
	}
	now = certs["n1"].NotAfter.Add(time.Second)
	crl2, _ := a.NewCRL(nil, big.NewInt(4), now, 0)
	v.CRL = crl2
	if _, err := v.VerifyNode(certs["n1"], x509.ExtKeyUsageClientAuth); err == nil {
		t.Fatal("expired certificate verified")
	}
	v2 := &Verifier{Cluster: "prod", Root: a.Root.Cert, CRL: crl, Now: func() time.Time { return t0 }}
	if _, err := v2.VerifyNode(certs["n1"], x509.ExtKeyUsageClientAuth); err == nil {
		t.Fatal("other cluster verified")
	}
}

// tlsPair issues a certificate and returns it as a tls.Certificate.
func tlsPair(t *testing.T, a *Authority, node string) *tls.Certificate {
	k := p256(t)
	c, err := a.IssueNode(NodeRequest{Cluster: "lab", Node: node, PublicKey: &k.PublicKey, Protection: TPMResident}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}
}

// handshake runs a TLS handshake over loopback TCP and returns the
// negotiated version, or the client's and server's errors.
func handshake(t *testing.T, srv, cli *tls.Config) (uint16, error, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, srv)
		err = tc.Handshake()
		if err == nil {
			_, err = io.Copy(tc, io.LimitReader(tc, 5))
		}
		srvErr <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), cli)
	if err != nil {
		return 0, err, <-srvErr
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		return 0, err, <-srvErr
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return 0, err, <-srvErr
	}
	return c.ConnectionState().Version, nil, <-srvErr
}

func TestTLSHandshakes(t *testing.T) {
	a := newAuthority(t)
	now := time.Now()
	crl, err := a.NewCRL(nil, big.NewInt(1), now, 0)
	if err != nil {
		t.Fatal(err)
	}
	peer := &Verifier{Cluster: "lab", Root: a.Root.Cert, CRL: crl, RequireTPM: true}
	srvCert, cliCert := tlsPair(t, a, "server-1"), tlsPair(t, a, "agent-1")

	mk := func(srv, cli TLSOptions) (*tls.Config, *tls.Config) {
		s, err := ServerTLS(srv)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ClientTLS(cli)
		if err != nil {
			t.Fatal(err)
		}
		return s, c
	}
	srvOpts := TLSOptions{Certificate: srvCert, Roots: a.RootPool(), RequireClientCert: true, Peer: peer}
	cliOpts := TLSOptions{Certificate: cliCert, Roots: a.RootPool(), ServerName: "server-1", Peer: peer}

	t.Run("mutual TLS 1.3", func(t *testing.T) {
		s, c := mk(srvOpts, cliOpts)
		v, cerr, serr := handshake(t, s, c)
		if cerr != nil || serr != nil {
			t.Fatalf("client %v server %v", cerr, serr)
		}
		if v != tls.VersionTLS13 {
			t.Fatalf("negotiated %x", v)
		}
	})
	t.Run("1.2-only client refused by default", func(t *testing.T) {
		s, _ := mk(srvOpts, cliOpts)
		// A foreign client that speaks TLS 1.2 at most.
		old := &tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, RootCAs: a.RootPool(), ServerName: "server-1", Certificates: []tls.Certificate{*cliCert}}
		_, cerr, serr := handshake(t, s, old)
		if cerr == nil || serr == nil || !strings.Contains(serr.Error(), "version") {
			t.Fatalf("client %v server %v", cerr, serr)
		}
	})
	t.Run("1.2-only server refused by default", func(t *testing.T) {
		_, c := mk(srvOpts, cliOpts)
		old := &tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*srvCert}}
		_, cerr, _ := handshake(t, old, c)
		if cerr == nil || !strings.Contains(cerr.Error(), "version") {
			t.Fatalf("client %v", cerr)
		}
	})
	t.Run("1.2 when asked", func(t *testing.T) {
		so, co := srvOpts, cliOpts
		so.AllowTLS12, co.AllowTLS12 = true, true
		s, c := mk(so, co)
		c.MaxVersion = tls.VersionTLS12 // a peer that cannot do 1.3
		v, cerr, serr := handshake(t, s, c)
		if cerr != nil || serr != nil || v != tls.VersionTLS12 {
			t.Fatalf("version %x client %v server %v", v, cerr, serr)
		}
	})
	t.Run("client without certificate refused", func(t *testing.T) {
		co := cliOpts
		co.Certificate = nil
		s, c := mk(srvOpts, co)
		_, _, serr := handshake(t, s, c)
		if serr == nil {
			t.Fatal("server accepted a client without certificate")
		}
	})
	t.Run("revoked client refused", func(t *testing.T) {
		revoked, err := a.NewCRL([]Revocation{{Serial: cliCert.Leaf.SerialNumber, RevokedAt: now}}, big.NewInt(2), now, 0)
		if err != nil {
			t.Fatal(err)
		}
		so := srvOpts
		so.Peer = &Verifier{Cluster: "lab", Root: a.Root.Cert, CRL: revoked}
		s, c := mk(so, cliOpts)
		_, _, serr := handshake(t, s, c)
		if !errors.Is(serr, ErrRevoked) {
			t.Fatalf("server: %v", serr)
		}
	})
	t.Run("wrong server name refused", func(t *testing.T) {
		co := cliOpts
		co.ServerName = "server-2"
		s, c := mk(srvOpts, co)
		_, cerr, _ := handshake(t, s, c)
		if cerr == nil {
			t.Fatal("client accepted server-1 as server-2")
		}
	})
}
