package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"
)

// URIScheme is the scheme of a node's URI SAN: castellan://CLUSTER/node/NAME.
// It is spiffe-like (trust domain = cluster, path = /node/NAME) but does not
// claim SPIFFE conformance, hence its own scheme.
const URIScheme = "castellan"

// KeyProtection says where a node certificate's private key lives. It is
// written as the certificate subject's OrganizationalUnit, so every tool
// (openssl x509 -text, kubectl, browsers) shows it:
//
//	OU=tpm-resident   the key was created in the node's TPM and its
//	                  TPM residency was proven (TPM2_Certify by an AK that
//	                  was activated against the EK)
//	OU=software-key   spec.identity.tpm: insecure-skip; a software key
//	                  that only the node's root can read
type KeyProtection string

// Key protections.
const (
	TPMResident KeyProtection = "tpm-resident"
	SoftwareKey KeyProtection = "software-key"
)

// NodeIdentityURI returns castellan://CLUSTER/node/NAME.
func NodeIdentityURI(cluster, node string) *url.URL {
	return &url.URL{Scheme: URIScheme, Host: cluster, Path: "/node/" + node}
}

// NodeRequest is what a node certificate is issued for.
type NodeRequest struct {
	// Cluster and Node are lowercase DNS labels.
	Cluster, Node string
	// PublicKey is the certified key: ECDSA P-256/P-384 or RSA of at least
	// 2048 bits.
	PublicKey crypto.PublicKey
	// IPs are extra IP SANs (the node's mesh address once it has one).
	IPs []net.IP
	// Protection is TPMResident or SoftwareKey.
	Protection KeyProtection
	// Validity of the certificate; 0 means DefaultNodeValidity.
	Validity time.Duration
}

// IssueNode signs a node certificate with the root CA: subject
// CN=NODE, O=castellan, OU=protection; SANs DNS:NODE and
// URI:castellan://CLUSTER/node/NODE (plus IPs); key usage digitalSignature;
// extended key usages serverAuth and clientAuth (the mesh and TLS between
// nodes use it both ways); not a CA. NotAfter never exceeds the root's.
func (a *Authority) IssueNode(req NodeRequest, now time.Time) (*x509.Certificate, error) {
	if err := CheckName("cluster", req.Cluster); err != nil {
		return nil, err
	}
	if req.Cluster != a.Cluster {
		return nil, fmt.Errorf("pki: node %s asks for cluster %q, this authority is %q", req.Node, req.Cluster, a.Cluster)
	}
	if err := CheckName("node", req.Node); err != nil {
		return nil, err
	}
	if req.Protection != TPMResident && req.Protection != SoftwareKey {
		return nil, fmt.Errorf("pki: node %s: unknown key protection %q", req.Node, req.Protection)
	}
	if err := CheckPublicKey(req.PublicKey); err != nil {
		return nil, fmt.Errorf("pki: node %s: %w", req.Node, err)
	}
	validity := req.Validity
	if validity == 0 {
		validity = DefaultNodeValidity
	}
	if validity < 0 {
		return nil, fmt.Errorf("pki: node %s: negative validity", req.Node)
	}
	notAfter := now.Add(validity)
	if notAfter.After(a.Root.Cert.NotAfter) {
		notAfter = a.Root.Cert.NotAfter
	}
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization:       []string{"castellan"},
			OrganizationalUnit: []string{string(req.Protection)},
			CommonName:         req.Node,
		},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{req.Node},
		URIs:                  []*url.URL{NodeIdentityURI(req.Cluster, req.Node)},
		IPAddresses:           req.IPs,
	}
	if _, ok := req.PublicKey.(*rsa.PublicKey); ok {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Root.Cert, req.PublicKey, a.Root.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: signing the certificate of node %s: %w", req.Node, err)
	}
	return x509.ParseCertificate(der)
}

// CheckPublicKey accepts ECDSA P-256/P-384 and RSA keys of 2048 to 8192 bits.
func CheckPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA key on curve %s, want P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 8192 {
			return fmt.Errorf("RSA key of %d bits, want 2048 to 8192", n)
		}
	case nil:
		return errors.New("no public key")
	default:
		return fmt.Errorf("unsupported public key type %T", pub)
	}
	return nil
}

// Fingerprint is the SHA-256 of a public key's DER SubjectPublicKeyInfo, in
// lowercase hex: how run records name a node key.
func Fingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("pki: encoding a public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// NodeIdentity is what a verified node certificate says.
type NodeIdentity struct {
	Cluster, Node string
	Protection    KeyProtection
	Serial        *big.Int
	NotAfter      time.Time
}

// ParseNodeIdentity reads the cluster, node and key protection a node
// certificate claims, without verifying it (Verifier.VerifyNode does). It
// requires exactly one URI SAN of the form castellan://CLUSTER/node/NAME, the
// DNS SAN NAME, and an OU naming the key protection.
func ParseNodeIdentity(cert *x509.Certificate) (*NodeIdentity, error) {
	if len(cert.URIs) != 1 {
		return nil, fmt.Errorf("pki: certificate %s has %d URI SANs, want exactly one castellan:// URI", cert.SerialNumber, len(cert.URIs))
	}
	u := cert.URIs[0]
	node, ok := strings.CutPrefix(u.Path, "/node/")
	if u.Scheme != URIScheme || u.User != nil || u.RawQuery != "" || u.Fragment != "" || !ok ||
		CheckName("cluster", u.Host) != nil || CheckName("node", node) != nil {
		return nil, fmt.Errorf("pki: certificate %s: URI SAN %q is not castellan://CLUSTER/node/NAME", cert.SerialNumber, u)
	}
	if len(cert.DNSNames) != 1 || cert.DNSNames[0] != node {
		return nil, fmt.Errorf("pki: certificate %s: DNS SANs %v do not name node %s alone", cert.SerialNumber, cert.DNSNames, node)
	}
	if len(cert.Subject.OrganizationalUnit) != 1 {
		return nil, fmt.Errorf("pki: certificate %s: no key protection in the subject's OU", cert.SerialNumber)
	}
	p := KeyProtection(cert.Subject.OrganizationalUnit[0])
	if p != TPMResident && p != SoftwareKey {
		return nil, fmt.Errorf("pki: certificate %s: unknown key protection %q", cert.SerialNumber, p)
	}
	return &NodeIdentity{Cluster: u.Host, Node: node, Protection: p, Serial: cert.SerialNumber, NotAfter: cert.NotAfter}, nil
}

// Verifier checks node identities: what the mesh and every castellan TLS
// endpoint use to accept a peer.
type Verifier struct {
	// Cluster the peer must belong to.
	Cluster string
	// Root is the cluster root CA. Node certificates must be signed by it
	// directly; intermediates are not accepted.
	Root *x509.Certificate
	// CRL is the current revocation list, signed by Root (ParseCRL).
	// Verification fails closed without one.
	CRL *RevocationList
	// RequireTPM refuses software keys (spec.identity.tpm: required).
	RequireTPM bool
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// ErrRevoked is returned (wrapped) for a revoked certificate.
var ErrRevoked = errors.New("certificate revoked")

// VerifyNode checks that cert chains to the root (no intermediate), is
// valid now, has the clientAuth or serverAuth usage asked for (eku), is not
// revoked, belongs to the cluster and, with RequireTPM, holds a TPM-resident
// key. It returns the identity.
func (v *Verifier) VerifyNode(cert *x509.Certificate, eku x509.ExtKeyUsage) (*NodeIdentity, error) {
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	if v.Root == nil {
		return nil, errors.New("pki: verifier has no root CA")
	}
	if v.CRL == nil {
		return nil, errors.New("pki: verifier has no revocation list: refusing every peer")
	}
	if now.After(v.CRL.NextUpdate) {
		return nil, fmt.Errorf("pki: the revocation list expired at %s: run castellan apply to publish a new one", v.CRL.NextUpdate.Format(time.RFC3339))
	}
	roots := x509.NewCertPool()
	roots.AddCert(v.Root)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
		return nil, fmt.Errorf("pki: node certificate %s: %w", cert.SerialNumber, err)
	}
	id, err := ParseNodeIdentity(cert)
	if err != nil {
		return nil, err
	}
	if id.Cluster != v.Cluster {
		return nil, fmt.Errorf("pki: certificate %s is for cluster %q, not %q", cert.SerialNumber, id.Cluster, v.Cluster)
	}
	if r, ok := v.CRL.Revoked(cert.SerialNumber); ok {
		return nil, fmt.Errorf("pki: node %s, certificate %s: %w on %s", id.Node, cert.SerialNumber, ErrRevoked, r.Format(time.RFC3339))
	}
	if v.RequireTPM && id.Protection != TPMResident {
		return nil, fmt.Errorf("pki: node %s has a %s, and this cluster requires a TPM-resident key", id.Node, id.Protection)
	}
	return id, nil
}
