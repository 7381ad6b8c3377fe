package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"

	"castellan/installer/pki"
)

// Policy is what the installer trusts for one node's enrolment.
type Policy struct {
	// Cluster and Node name the identity (DNS labels).
	Cluster, Node string
	// Software is spec.identity.tpm: insecure-skip for this node: a software
	// key, certified as such (OU=software-key).
	Software bool
	// EKRoots are the trust anchors for EK certificates
	// (spec.identity.ekCACertificates, each certificate listed is an
	// anchor). Nil: the EK is trusted by its pinned hash alone.
	EKRoots *x509.CertPool
	// PinnedEK is the EK hash (EKHash) recorded in the state repo, or on a
	// first enrolment without EKRoots the hash the user confirmed in the
	// plan. A different EK is refused with an *EKChangedError.
	PinnedEK string
	// ReEnrol is the user's explicit re-enrolment of this node: a changed
	// EK is accepted (the run records it).
	ReEnrol bool
	// Now is the clock for EK certificate validity; nil means time.Now.
	Now func() time.Time
}

// EKChangedError refuses a node whose TPM is not the one enrolled.
type EKChangedError struct {
	Node, Pinned, Presented string
}

func (e *EKChangedError) Error() string {
	return fmt.Sprintf("node %s: its TPM endorsement key changed: enrolled %s, now %s. "+
		"This is what a rebuilt VM, a replaced TPM or a disk moved to another machine looks like, and also what an impostor looks like. "+
		"If the change is expected, re-enrol the node explicitly (castellan apply --re-enrol %s); the run records it",
		e.Node, e.Pinned, e.Presented, e.Node)
}

// EKTrust says how an EK was trusted.
type EKTrust string

// EK trust kinds.
const (
	// EKCertified: its certificate chains to spec.identity.ekCACertificates.
	EKCertified EKTrust = "certificate-chain"
	// EKPinned: its hash matched the pinned (or confirmed) one.
	EKPinned EKTrust = "pinned"
	// EKNone: insecure-skip, no TPM.
	EKNone EKTrust = "none"
)

// EKHash names an EK: "sha256:" and the hex SHA-256 of its PKIX
// SubjectPublicKeyInfo (DER).
func EKHash(pub crypto.PublicKey) (string, error) {
	fp, err := pki.Fingerprint(pub)
	if err != nil {
		return "", err
	}
	return "sha256:" + fp, nil
}

// ObservedEKHash is the EKHash of an observed EK (what the plan shows for
// confirmation on a first enrolment without EK CA certificates).
func ObservedEKHash(ek *EKInfo) (string, error) {
	pub, _, err := parseEK(ek)
	if err != nil {
		return "", err
	}
	return EKHash(pub)
}

type sessionState int

const (
	stateNew sessionState = iota
	stateChallenged
	stateDone
	stateFailed
)

// Session is one enrolment of one node: one nonce, one AK, one transcript.
// Its steps run once, in order (Request, Challenge, Finish; or Request,
// FinishSoftware); any failure ends the session, and a new attempt needs a
// new Session (new nonce).
type Session struct {
	policy Policy
	nonce  []byte
	state  sessionState

	// Set by Challenge, used by Finish.
	ekHash    string
	ekTrust   EKTrust
	ekChanged bool
	akName    []byte
	keyPub    crypto.PublicKey
	secret    []byte
}

// NewSession starts an enrolment session with a fresh 32-byte nonce.
func NewSession(p Policy) (*Session, error) {
	if err := pki.CheckName("cluster", p.Cluster); err != nil {
		return nil, err
	}
	if err := pki.CheckName("node", p.Node); err != nil {
		return nil, err
	}
	if !p.Software && p.EKRoots == nil && p.PinnedEK == "" {
		return nil, fmt.Errorf("node %s: nothing to trust its EK with: list spec.identity.ekCACertificates, or confirm the EK hash the plan shows", p.Node)
	}
	nonce := make([]byte, NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("drawing a nonce: %w", err)
	}
	return &Session{policy: p, nonce: nonce}, nil
}

// Request is what the node's OpAttest receives.
func (s *Session) Request() AttestRequest {
	return AttestRequest{Nonce: slices.Clone(s.nonce), Software: s.policy.Software}
}

func (s *Session) fail(err error) error {
	s.state = stateFailed
	s.secret = nil
	return fmt.Errorf("node %s: enrolment refused: %w", s.policy.Node, err)
}

// Challenge checks the node's attestation and returns the credential
// challenge for its AK. It checks, in order:
//
//   - the EK: its certificate chains to Policy.EKRoots and certifies this
//     very public key, and/or its hash equals Policy.PinnedEK (a different
//     EK is an *EKChangedError unless Policy.ReEnrol);
//   - the AK (go-attestation ActivationParameters.CheckAKParameters via
//     Generate: created by a TPM, restricted, fixedTPM, fixedParent,
//     sensitiveDataOrigin, its creation certified by itself) and that it is
//     the ECDSA P-256 template castellan creates;
//   - the node key's certification by that AK (go-attestation
//     CertificationParameters.Verify), plus what Verify leaves out: the
//     TPMS_ATTEST's extraData is this session's nonce, it is a
//     TPM_ST_ATTEST_CERTIFY made by a TPM (TPM_GENERATED_VALUE), it names
//     the presented key, and the key's attributes are exactly castellan's:
//     ECDSA P-256, fixedTPM, fixedParent, sensitiveDataOrigin, sign,
//     not decrypt, not restricted;
//   - every TPM structure is canonical (re-encodes to the same bytes: no
//     trailing or smuggled data).
//
// Then it makes the credential (go-attestation, TPM2_MakeCredential's
// software equivalent) to the EK for the AK's Name, so only the TPM holding
// both can answer.
func (s *Session) Challenge(a *Attestation) (*ActivateRequest, error) {
	if s.state != stateNew {
		return nil, s.fail(errors.New("session already used: one session answers one attestation"))
	}
	if s.policy.Software {
		return nil, s.fail(errors.New("session is for a software key (insecure-skip): use FinishSoftware"))
	}
	if a == nil || a.Software != nil {
		return nil, s.fail(errors.New("the node answered with a software key; this cluster requires a TPM (spec.identity.tpm: required)"))
	}
	if err := a.check(); err != nil {
		return nil, s.fail(err)
	}
	ekPub, ekCertOK, err := s.checkEK(a.EK)
	if err != nil {
		return nil, s.fail(err)
	}
	for _, c := range []struct {
		name string
		b    []byte
		fn   func([]byte) error
	}{
		{"ak.public", a.AK.Public, canonical[tpm2.TPMTPublic]},
		{"ak.createData", a.AK.CreateData, canonical[tpm2.TPMSCreationData]},
		{"ak.createAttestation", a.AK.CreateAttestation, canonical[tpm2.TPMSAttest]},
		{"ak.createSignature", a.AK.CreateSignature, canonical[tpm2.TPMTSignature]},
		{"key.public", a.Key.Public, canonical[tpm2.TPMTPublic]},
		{"key.attestation", a.Key.Attestation, canonical[tpm2.TPMSAttest]},
		{"key.signature", a.Key.Signature, canonical[tpm2.TPMTSignature]},
	} {
		if err := c.fn(c.b); err != nil {
			return nil, s.fail(fmt.Errorf("%s: %w", c.name, err))
		}
	}
	// go-attestation verifies these signatures with the AK's scheme and
	// ignores the algorithms written in them: insist they are the AK's.
	for _, sig := range []struct {
		name string
		b    []byte
	}{{"ak.createSignature", a.AK.CreateSignature}, {"key.signature", a.Key.Signature}} {
		if err := checkSignatureAlg(sig.b); err != nil {
			return nil, s.fail(fmt.Errorf("%s: %w", sig.name, err))
		}
	}
	akPublic, _ := tpm2.Unmarshal[tpm2.TPMTPublic](a.AK.Public)
	if err := checkTemplate("AK", akPublic, true); err != nil {
		return nil, s.fail(err)
	}
	akName, err := tpm2.ObjectName(akPublic)
	if err != nil {
		return nil, s.fail(fmt.Errorf("AK name: %w", err))
	}
	params := attest.ActivationParameters{
		EK: ekPub,
		AK: attest.AttestationParameters{Public: a.AK.Public, CreateData: a.AK.CreateData, CreateAttestation: a.AK.CreateAttestation, CreateSignature: a.AK.CreateSignature},
	}
	secret, cred, err := params.Generate()
	if err != nil {
		return nil, s.fail(fmt.Errorf("AK: %w", err))
	}
	akPub, err := attest.ParseAKPublic(a.AK.Public)
	if err != nil {
		return nil, s.fail(fmt.Errorf("AK: %w", err))
	}
	cp := attest.CertificationParameters{Public: a.Key.Public, CreateAttestation: a.Key.Attestation, CreateSignature: a.Key.Signature}
	if err := cp.Verify(attest.VerifyOpts{Public: akPub.Public, Hash: akPub.Hash}); err != nil {
		return nil, s.fail(fmt.Errorf("certification of the node key by the AK: %w", err))
	}
	keyPublic, _ := tpm2.Unmarshal[tpm2.TPMTPublic](a.Key.Public)
	if err := checkTemplate("node key", keyPublic, false); err != nil {
		return nil, s.fail(err)
	}
	if err := s.checkCertifyInfo(a.Key.Attestation, keyPublic); err != nil {
		return nil, s.fail(err)
	}
	keyPub, err := tpm2.Pub(*keyPublic)
	if err != nil {
		return nil, s.fail(fmt.Errorf("node key: %w", err))
	}
	if ekCertOK {
		s.ekTrust = EKCertified
	} else {
		s.ekTrust = EKPinned
	}
	s.akName = akName.Buffer
	s.keyPub = keyPub
	s.secret = secret
	s.state = stateChallenged
	return &ActivateRequest{AKName: slices.Clone(akName.Buffer), Credential: cred.Credential, Secret: cred.Secret}, nil
}

// checkEK trusts the EK by certificate chain and/or pin; it returns the EK
// public key and whether a certificate chain vouched for it.
func (s *Session) checkEK(ek *EKInfo) (crypto.PublicKey, bool, error) {
	pub, tmpl, err := parseEK(ek)
	if err != nil {
		return nil, false, err
	}
	// The EK must be the TCG default EK (template L-1 or L-2): the pin and
	// the certificate cover only its key, so every other field (attributes,
	// authPolicy, symmetric parameters) must be the standard one, which is
	// also what the credential is made for.
	std := tpm2.RSAEKTemplate
	if tmpl.Type == tpm2.TPMAlgECC {
		std = tpm2.ECCEKTemplate
	}
	std.Unique = tmpl.Unique
	if !bytes.Equal(tpm2.Marshal(std), ek.Public) {
		return nil, false, errors.New("EK: its public area is not the TCG default EK template (EK Credential Profile, template L-1 or L-2)")
	}
	hash, err := EKHash(pub)
	if err != nil {
		return nil, false, err
	}
	s.ekHash = hash
	chained := false
	if s.policy.EKRoots != nil {
		if len(ek.Certificate) == 0 {
			return nil, false, errors.New("EK: the TPM has no EK certificate in NV, and spec.identity.ekCACertificates requires one")
		}
		if err := verifyEKCertificate(ek.Certificate, pub, s.policy.EKRoots, s.now()); err != nil {
			return nil, false, err
		}
		chained = true
	}
	if s.policy.PinnedEK != "" && subtle.ConstantTimeCompare([]byte(hash), []byte(s.policy.PinnedEK)) != 1 {
		if !s.policy.ReEnrol {
			return nil, false, &EKChangedError{Node: s.policy.Node, Pinned: s.policy.PinnedEK, Presented: hash}
		}
		// Explicit re-enrolment: the new EK is pinned from now on (without
		// EK CA certificates, the plan showed its hash for confirmation).
		s.ekChanged = true
	}
	return pub, chained, nil
}

func (s *Session) now() time.Time {
	if s.policy.Now != nil {
		return s.policy.Now()
	}
	return time.Now()
}

// parseEK parses an EKInfo's TPMT_PUBLIC (canonically) into a public key.
func parseEK(ek *EKInfo) (crypto.PublicKey, *tpm2.TPMTPublic, error) {
	if ek == nil {
		return nil, nil, errors.New("EK: missing")
	}
	if err := canonical[tpm2.TPMTPublic](ek.Public); err != nil {
		return nil, nil, fmt.Errorf("EK public area: %w", err)
	}
	tmpl, _ := tpm2.Unmarshal[tpm2.TPMTPublic](ek.Public)
	pub, err := tpm2.Pub(*tmpl)
	if err != nil {
		return nil, nil, fmt.Errorf("EK public area: %w", err)
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, nil, fmt.Errorf("EK: RSA key of %d bits", k.N.BitLen())
		}
	case *ecdsa.PublicKey:
	default:
		return nil, nil, fmt.Errorf("EK: unsupported key type %T", pub)
	}
	return pub, tmpl, nil
}

// oidSAN is the subjectAltName extension (RFC 5280 section 4.2.1.6).
var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// verifyEKCertificate checks that der is an EK certificate for pub that
// chains to roots at now. EK certificates carry the TPM's manufacturer,
// model and version as a directoryName in a critical subjectAltName with an
// empty subject (TCG EK Credential Profile section 3.2.9), which Go's
// verifier leaves unhandled: that SAN is accepted here when it holds only a
// directoryName.
func verifyEKCertificate(der []byte, pub crypto.PublicKey, roots *x509.CertPool, now time.Time) error {
	cert, err := attest.ParseEKCertificate(der)
	if err != nil {
		return fmt.Errorf("EK certificate: %w", err)
	}
	if !publicKeyEqual(cert.PublicKey, pub) {
		return errors.New("EK certificate: it certifies another key than the TPM's EK")
	}
	var unhandled []asn1.ObjectIdentifier
	for _, oid := range cert.UnhandledCriticalExtensions {
		if oid.Equal(oidSAN) && onlyDirectoryNames(cert) {
			continue
		}
		unhandled = append(unhandled, oid)
	}
	cert.UnhandledCriticalExtensions = unhandled
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("EK certificate (issuer %q): does not chain to spec.identity.ekCACertificates: %w", cert.Issuer.String(), err)
	}
	return nil
}

func onlyDirectoryNames(cert *x509.Certificate) bool {
	for _, e := range cert.Extensions {
		if !e.Id.Equal(oidSAN) {
			continue
		}
		var seq asn1.RawValue
		if rest, err := asn1.Unmarshal(e.Value, &seq); err != nil || len(rest) != 0 || !seq.IsCompound || seq.Tag != asn1.TagSequence {
			return false
		}
		inner := seq.Bytes
		n := 0
		for len(inner) > 0 {
			var gn asn1.RawValue
			rest, err := asn1.Unmarshal(inner, &gn)
			if err != nil || gn.Class != asn1.ClassContextSpecific || gn.Tag != 4 {
				return false
			}
			inner = rest
			n++
		}
		return n > 0
	}
	return false
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// checkTemplate checks a key's public area against castellan's templates:
// ECDSA P-256 with SHA-256, name algorithm SHA-256, fixedTPM, fixedParent,
// sensitiveDataOrigin, userWithAuth, sign, not decrypt, and restricted for
// the AK only.
func checkTemplate(what string, p *tpm2.TPMTPublic, restricted bool) error {
	a := p.ObjectAttributes
	switch {
	case p.Type != tpm2.TPMAlgECC || p.NameAlg != tpm2.TPMAlgSHA256:
		return fmt.Errorf("%s: not an ECC key named with SHA-256", what)
	case !a.FixedTPM:
		return fmt.Errorf("%s: not fixedTPM (it could leave the TPM)", what)
	case !a.FixedParent:
		return fmt.Errorf("%s: not fixedParent (it could be duplicated)", what)
	case !a.SensitiveDataOrigin:
		return fmt.Errorf("%s: not sensitiveDataOrigin (its private part came from outside the TPM)", what)
	case !a.SignEncrypt || a.Decrypt:
		return fmt.Errorf("%s: not a sign-only key", what)
	case a.Restricted != restricted:
		return fmt.Errorf("%s: restricted=%v, want %v", what, a.Restricted, restricted)
	case a.EncryptedDuplication:
		return fmt.Errorf("%s: encryptedDuplication set", what)
	}
	ecc, err := p.Parameters.ECCDetail()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if ecc.CurveID != tpm2.TPMECCNistP256 {
		return fmt.Errorf("%s: curve %#x, want NIST P-256", what, uint16(ecc.CurveID))
	}
	switch ecc.Scheme.Scheme {
	case tpm2.TPMAlgECDSA:
		d, err := ecc.Scheme.Details.ECDSA()
		if err != nil || d.HashAlg != tpm2.TPMAlgSHA256 {
			return fmt.Errorf("%s: signing scheme is not ECDSA with SHA-256", what)
		}
	case tpm2.TPMAlgNull:
		if restricted {
			return fmt.Errorf("%s: a restricted key without a signing scheme", what)
		}
	default:
		return fmt.Errorf("%s: signing scheme %#x, want ECDSA", what, uint16(ecc.Scheme.Scheme))
	}
	return nil
}

// checkCertifyInfo checks the TPMS_ATTEST of TPM2_Certify itself, beyond
// go-attestation's Verify: made by a TPM, a certification, extraData equal
// to this session's nonce, and naming the presented key.
func (s *Session) checkCertifyInfo(raw []byte, key *tpm2.TPMTPublic) error {
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](raw)
	if err != nil {
		return fmt.Errorf("certification: %w", err)
	}
	if att.Magic != tpm2.TPMGeneratedValue || att.Type != tpm2.TPMSTAttestCertify {
		return errors.New("certification: not a TPM2_Certify made by a TPM")
	}
	if subtle.ConstantTimeCompare(att.ExtraData.Buffer, s.nonce) != 1 {
		return errors.New("certification: made over another nonce than this session's (a replayed or foreign certification)")
	}
	info, err := att.Attested.Certify()
	if err != nil {
		return fmt.Errorf("certification: %w", err)
	}
	name, err := tpm2.ObjectName(key)
	if err != nil {
		return fmt.Errorf("node key name: %w", err)
	}
	if !bytes.Equal(info.Name.Buffer, name.Buffer) {
		return errors.New("certification: names another key than the presented one")
	}
	return nil
}

// checkSignatureAlg requires a TPMT_SIGNATURE to be ECDSA with SHA-256,
// the AK's scheme.
func checkSignatureAlg(b []byte) error {
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](b)
	if err != nil {
		return err
	}
	if sig.SigAlg != tpm2.TPMAlgECDSA {
		return fmt.Errorf("signature algorithm %#x, want ECDSA", uint16(sig.SigAlg))
	}
	ecc, err := sig.Signature.ECDSA()
	if err != nil || ecc.Hash != tpm2.TPMAlgSHA256 {
		return errors.New("signature is not ECDSA with SHA-256")
	}
	return nil
}

// canonical checks that b decodes as T and re-encodes to exactly b: no
// trailing bytes, nothing the verifier would not see.
func canonical[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](b []byte) (err error) {
	v, err := tpm2.Unmarshal[T, P](b)
	if err != nil {
		return err
	}
	defer func() {
		if recover() != nil {
			err = errors.New("does not re-encode")
		}
	}()
	if !bytes.Equal(tpm2.Marshal(*v), b) {
		return errors.New("not in canonical form (trailing or non-canonical bytes)")
	}
	return nil
}

// Enrolment is the outcome of a successful session: the verified identity
// to issue a certificate for.
type Enrolment struct {
	Cluster, Node string
	Protection    pki.KeyProtection
	// PublicKey is exactly the certified key.
	PublicKey crypto.PublicKey
	// EKHash and EKTrust say which EK vouched and how ("" and EKNone in
	// insecure-skip mode). EKChanged is set on an explicit re-enrolment
	// that accepted a new EK.
	EKHash    string
	EKTrust   EKTrust
	EKChanged bool
	// AKName is the AK's TPM Name in hex ("" in insecure-skip mode).
	AKName string
	// KeyFingerprint is pki.Fingerprint(PublicKey).
	KeyFingerprint string
}

// Finish checks the node's answer to the challenge (constant time) and
// returns the enrolment.
func (s *Session) Finish(r *ActivateResponse) (*Enrolment, error) {
	if s.state != stateChallenged {
		return nil, s.fail(errors.New("no challenge outstanding in this session"))
	}
	if r == nil || subtle.ConstantTimeCompare(r.Secret, s.secret) != 1 {
		return nil, s.fail(errors.New("the credential was not activated: the AK is not in the TPM that holds this EK"))
	}
	s.state = stateDone
	s.secret = nil
	return s.enrolment(pki.TPMResident)
}

// FinishSoftware checks an insecure-skip node's proof of possession: an
// ECDSA P-256 public key and its signature over this session's nonce.
func (s *Session) FinishSoftware(a *Attestation) (*Enrolment, error) {
	if s.state != stateNew {
		return nil, s.fail(errors.New("session already used"))
	}
	if !s.policy.Software {
		return nil, s.fail(errors.New("a software key was offered, and this cluster requires a TPM"))
	}
	if a == nil || a.Software == nil {
		return nil, s.fail(errors.New("no software key in the answer"))
	}
	if err := a.check(); err != nil {
		return nil, s.fail(err)
	}
	pub, err := x509.ParsePKIXPublicKey(a.Software.PublicKey)
	if err != nil {
		return nil, s.fail(fmt.Errorf("software key: %w", err))
	}
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P256() {
		return nil, s.fail(errors.New("software key: not ECDSA P-256"))
	}
	if der, _ := x509.MarshalPKIXPublicKey(k); !bytes.Equal(der, a.Software.PublicKey) {
		return nil, s.fail(errors.New("software key: not in canonical DER"))
	}
	sum := softwareProofDigest(s.nonce)
	if !ecdsa.VerifyASN1(k, sum[:], a.Software.Signature) {
		return nil, s.fail(errors.New("software key: the signature over this session's nonce does not verify"))
	}
	s.state = stateDone
	s.keyPub = k
	s.ekTrust = EKNone
	return s.enrolment(pki.SoftwareKey)
}

func (s *Session) enrolment(p pki.KeyProtection) (*Enrolment, error) {
	fp, err := pki.Fingerprint(s.keyPub)
	if err != nil {
		return nil, err
	}
	return &Enrolment{
		Cluster: s.policy.Cluster, Node: s.policy.Node, Protection: p, PublicKey: s.keyPub,
		EKHash: s.ekHash, EKTrust: s.ekTrust, EKChanged: s.ekChanged,
		AKName: hex.EncodeToString(s.akName), KeyFingerprint: fp,
	}, nil
}

// Record is what the state repo keeps per node (public, not secret): what
// the run records and what the next plan compares with.
type Record struct {
	Node       string            `json:"node"`
	Protection pki.KeyProtection `json:"protection"`
	// EKHash is the pinned EK ("" in insecure-skip mode), EKTrust how it
	// was trusted at enrolment.
	EKHash  string  `json:"ekHash,omitempty"`
	EKTrust EKTrust `json:"ekTrust"`
	// AKName is the AK's TPM Name (hex).
	AKName string `json:"akName,omitempty"`
	// KeyFingerprint is the SHA-256 of the node key's SubjectPublicKeyInfo.
	KeyFingerprint string `json:"keyFingerprint"`
	// CertSerial and CertNotAfter describe the node certificate;
	// Certificate is its DER.
	CertSerial   string    `json:"certSerial"`
	CertNotAfter time.Time `json:"certNotAfter"`
	Certificate  []byte    `json:"certificate"`
}

// Issue signs the node certificate for exactly the enrolled key with the
// cluster root (pki.Authority.IssueNode) and returns it with the record to
// store.
func (e *Enrolment) Issue(a *pki.Authority, now time.Time, validity time.Duration) (*x509.Certificate, *Record, error) {
	cert, err := a.IssueNode(pki.NodeRequest{Cluster: e.Cluster, Node: e.Node, PublicKey: e.PublicKey, Protection: e.Protection, Validity: validity}, now)
	if err != nil {
		return nil, nil, err
	}
	return cert, &Record{
		Node: e.Node, Protection: e.Protection, EKHash: e.EKHash, EKTrust: e.EKTrust, AKName: e.AKName,
		KeyFingerprint: e.KeyFingerprint, CertSerial: cert.SerialNumber.String(), CertNotAfter: cert.NotAfter, Certificate: cert.Raw,
	}, nil
}

// VerifySignature checks a node's OpSign answer over data against its
// certificate's key (ECDSA over SHA-256(data)): how the mesh checks a
// WireGuard public key signed by a node.
func VerifySignature(cert *x509.Certificate, data, sig []byte) error {
	k, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return errors.New("node certificate key is not ECDSA")
	}
	sum := sha256.Sum256(data)
	if !ecdsa.VerifyASN1(k, sum[:], sig) {
		return fmt.Errorf("signature by node %s does not verify", cert.Subject.CommonName)
	}
	return nil
}
