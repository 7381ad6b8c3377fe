// Package pki is the cluster's certificate authority: a root CA (ECDSA
// P-256) whose key exists only age-encrypted in the state repo, an
// intermediate CA for in-cluster issuance (cert-manager), node certificates
// for TPM-resident keys, renewal, revocation lists (RFC 5280) and TLS
// configurations that default to TLS 1.3.
//
// Keys never touch a disk through this package: MarshalPEM returns bytes
// that the caller hands to a Secrets store (the state repo encrypts them with
// age), and LoadOrCreateAuthority reads them back from the same store.
//
// Trust layout:
//
//	root CA (10 years, pathlen 1)
//	├── node certificates (castellan://CLUSTER/node/NAME), signed by the root itself
//	└── intermediate CA (5 years, pathlen 0), for cert-manager inside the cluster;
//	    a name constraint excludes the URI domain CLUSTER, so it cannot mint
//	    a castellan node identity that verifies.
//
// Node identities are verified against the root alone (Verifier), so a leaked
// in-cluster intermediate key cannot impersonate a node.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"time"
)

// Validity periods used when a caller passes zero.
const (
	DefaultRootValidity         = 10 * 365 * 24 * time.Hour
	DefaultIntermediateValidity = 5 * 365 * 24 * time.Hour
	DefaultNodeValidity         = 180 * 24 * time.Hour
	// backdate is how far NotBefore is set before "now", for clock skew
	// between the installer and the nodes.
	backdate = 5 * time.Minute
)

// Secret names under which LoadOrCreateAuthority keeps the CAs. Each holds a
// PEM bundle: the CERTIFICATE block then the PKCS #8 PRIVATE KEY block.
const (
	RootSecret         = "pki/root-ca"
	IntermediateSecret = "pki/intermediate-ca"
)

// Secrets stores secrets; the state repo's implementation keeps them
// age-encrypted (it has the method set of engine.Secrets).
type Secrets interface {
	// Get returns the secret called name, or ok=false when there is none.
	Get(name string) (value []byte, ok bool, err error)
	// Put stores the secret called name.
	Put(name string, value []byte) error
}

// CA is a certificate authority: its certificate and its signing key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// Authority is a cluster's root CA and its intermediate CA.
type Authority struct {
	Cluster      string
	Root         *CA
	Intermediate *CA
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// CheckName checks that s (a cluster or node name) is an RFC 1123 DNS label
// in lowercase: it ends up in DNS and URI SANs.
func CheckName(kind, s string) error {
	if !dnsLabel.MatchString(s) {
		return fmt.Errorf("%s name %q is not a lowercase DNS label (RFC 1123: a-z, 0-9, '-', at most 63 characters)", kind, s)
	}
	return nil
}

// NewSerial returns a random positive serial number of at most 128 bits
// (RFC 5280 section 4.1.2.2 allows up to 20 octets).
func NewSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("pki: drawing a serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// NewAuthority creates a cluster's root CA and intermediate CA, valid from
// now (backdated 5 minutes) for the default periods.
func NewAuthority(cluster string, now time.Time) (*Authority, error) {
	if err := CheckName("cluster", cluster); err != nil {
		return nil, err
	}
	root, err := newRoot(cluster, now, DefaultRootValidity)
	if err != nil {
		return nil, err
	}
	inter, err := root.newIntermediate(cluster, now, DefaultIntermediateValidity)
	if err != nil {
		return nil, err
	}
	return &Authority{Cluster: cluster, Root: root, Intermediate: inter}, nil
}

func rootSubject(cluster string) pkix.Name {
	return pkix.Name{Organization: []string{"castellan"}, OrganizationalUnit: []string{"cluster " + cluster}, CommonName: "castellan root CA " + cluster}
}

func newRoot(cluster string, now time.Time, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generating the root CA key: %w", err)
	}
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               rootSubject(cluster),
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	return sign(tmpl, tmpl, &key.PublicKey, key, key)
}

func (root *CA) newIntermediate(cluster string, now time.Time, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generating the intermediate CA key: %w", err)
	}
	serial, err := NewSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(validity)
	if notAfter.After(root.Cert.NotAfter) {
		notAfter = root.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"castellan"}, OrganizationalUnit: []string{"cluster " + cluster}, CommonName: "castellan in-cluster CA " + cluster},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		// The intermediate must not issue castellan node identities
		// (castellan://CLUSTER/...); RFC 5280 section 4.2.1.10.
		ExcludedURIDomains: []string{cluster},
	}
	return sign(tmpl, root.Cert, &key.PublicKey, root.Key, key)
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer, key *ecdsa.PrivateKey) (*CA, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("pki: signing %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parsing the certificate just signed: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// CertPEM is the CA certificate in PEM form (public).
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// MarshalPEM returns the CA as a PEM bundle: its certificate, then its key as
// a PKCS #8 "PRIVATE KEY" block. The bundle is a secret: store it only through
// a Secrets store that encrypts it.
func (ca *CA) MarshalPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: encoding the CA key: %w", err)
	}
	out := ca.CertPEM()
	return append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})...), nil
}

// ParseCA reads a bundle written by MarshalPEM. It checks that the
// certificate is a CA and that the key is the certificate's (ECDSA P-256).
func ParseCA(bundle []byte) (*CA, error) {
	var certDER, keyDER []byte
	rest := bundle
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch b.Type {
		case "CERTIFICATE":
			if certDER != nil {
				return nil, errors.New("pki: CA bundle holds more than one certificate")
			}
			certDER = b.Bytes
		case "PRIVATE KEY":
			if keyDER != nil {
				return nil, errors.New("pki: CA bundle holds more than one key")
			}
			keyDER = b.Bytes
		default:
			return nil, fmt.Errorf("pki: CA bundle holds an unexpected PEM block %q", b.Type)
		}
	}
	if certDER == nil || keyDER == nil {
		return nil, errors.New("pki: CA bundle needs one CERTIFICATE and one PRIVATE KEY block")
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("pki: %q is not a CA certificate", cert.Subject.CommonName)
	}
	k, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("pki: CA key is a %T, want ECDSA P-256", k)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("pki: the key in the bundle is not the key of %q", cert.Subject.CommonName)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadOrCreateAuthority reads the cluster's CAs from s (RootSecret,
// IntermediateSecret) or, on the first apply, creates them and stores them in
// s. created says which happened. It fails when the stored root belongs to
// another cluster or when only one of the two secrets exists (a state repo
// that lost half of its PKI is not repaired silently).
//
// An intermediate that NeedsRenewal is replaced by a new one (new key) signed
// by the same root; renewedIntermediate says so. The root is never rotated
// here: a root close to its end is an error telling the user to rotate it.
func LoadOrCreateAuthority(s Secrets, cluster string, now time.Time) (a *Authority, created, renewedIntermediate bool, err error) {
	if err := CheckName("cluster", cluster); err != nil {
		return nil, false, false, err
	}
	rootPEM, haveRoot, err := s.Get(RootSecret)
	if err != nil {
		return nil, false, false, fmt.Errorf("pki: reading %s: %w", RootSecret, err)
	}
	interPEM, haveInter, err := s.Get(IntermediateSecret)
	if err != nil {
		return nil, false, false, fmt.Errorf("pki: reading %s: %w", IntermediateSecret, err)
	}
	switch {
	case !haveRoot && !haveInter:
		a, err := NewAuthority(cluster, now)
		if err != nil {
			return nil, false, false, err
		}
		if err := a.store(s); err != nil {
			return nil, false, false, err
		}
		return a, true, false, nil
	case !haveRoot:
		return nil, false, false, fmt.Errorf("pki: the state repo has %s but no %s: restore the root CA from the repo's history; castellan does not create a new root over an existing intermediate", IntermediateSecret, RootSecret)
	}
	root, err := ParseCA(rootPEM)
	if err != nil {
		return nil, false, false, fmt.Errorf("pki: %s: %w", RootSecret, err)
	}
	if want := rootSubject(cluster).CommonName; root.Cert.Subject.CommonName != want {
		return nil, false, false, fmt.Errorf("pki: the root CA in the state repo is %q, not %q: this state repo belongs to another cluster", root.Cert.Subject.CommonName, want)
	}
	if NeedsRenewal(root.Cert, now) {
		return nil, false, false, fmt.Errorf("pki: the root CA expires on %s (less than a third of its life left): root rotation is a manual step, see the README", root.Cert.NotAfter.Format(time.RFC3339))
	}
	a = &Authority{Cluster: cluster, Root: root}
	if !haveInter {
		return nil, false, false, fmt.Errorf("pki: the state repo has %s but no %s: restore it from the repo's history", RootSecret, IntermediateSecret)
	}
	inter, err := ParseCA(interPEM)
	if err != nil {
		return nil, false, false, fmt.Errorf("pki: %s: %w", IntermediateSecret, err)
	}
	if err := inter.Cert.CheckSignatureFrom(root.Cert); err != nil {
		return nil, false, false, fmt.Errorf("pki: %s is not signed by the cluster root: %w", IntermediateSecret, err)
	}
	a.Intermediate = inter
	if NeedsRenewal(inter.Cert, now) {
		if a.Intermediate, err = root.newIntermediate(cluster, now, DefaultIntermediateValidity); err != nil {
			return nil, false, false, err
		}
		if err := a.store(s); err != nil {
			return nil, false, false, err
		}
		return a, false, true, nil
	}
	return a, false, false, nil
}

func (a *Authority) store(s Secrets) error {
	for _, c := range []struct {
		name string
		ca   *CA
	}{{RootSecret, a.Root}, {IntermediateSecret, a.Intermediate}} {
		b, err := c.ca.MarshalPEM()
		if err != nil {
			return err
		}
		if err := s.Put(c.name, b); err != nil {
			return fmt.Errorf("pki: storing %s: %w", c.name, err)
		}
	}
	return nil
}

// RootPool returns a pool holding the root certificate only: what node
// identities are verified against.
func (a *Authority) RootPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(a.Root.Cert)
	return p
}

// NeedsRenewal reports whether cert has less than a third of its lifetime
// (NotAfter - NotBefore) left at now, or is already expired or not yet valid.
func NeedsRenewal(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	if life <= 0 || now.Before(cert.NotBefore) {
		return true
	}
	return !now.Before(cert.NotAfter.Add(-life / 3))
}

// ParseCertificatePEM parses exactly one PEM CERTIFICATE block.
func ParseCertificatePEM(data []byte) (*x509.Certificate, error) {
	b, rest := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("pki: no PEM CERTIFICATE block")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("pki: data after the PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(b.Bytes)
}
