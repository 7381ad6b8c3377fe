package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// DefaultDir is where a node keeps its identity: the TPM key blobs (wrapped
// by the TPM's storage root key, useless off this TPM), the node
// certificate, and in insecure-skip mode the software key. Mode 0700, root.
const DefaultDir = "/var/lib/castellan/identity"

// Files in the identity directory.
const (
	AKFile          = "ak.json"      // AK blobs (blobFile), 0600
	KeyFile         = "key.json"     // node key blobs (blobFile), 0600
	CertFile        = "node.crt"     // node certificate, PEM, 0644
	SoftwareKeyFile = "software.key" // insecure-skip only: PKCS #8 DER, 0600
)

// Handles and NV indexes of the TCG EK Credential Profile 2.0 (section
// 2.2.1.4, low range): the RSA 2048 EK certificate and the persistent EK.
const (
	rsaEKCertIndex  tpm2.TPMHandle = 0x01c00002
	rsaEKPersistent tpm2.TPMHandle = 0x81010001
)

// akTemplate is a restricted ECDSA P-256 signing key (an attestation key):
// fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, noDA.
var akTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
		UserWithAuth: true, NoDA: true, Restricted: true, SignEncrypt: true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
	}),
}

// keyTemplate is the node key: ECDSA P-256, sign-only, not restricted,
// fixedTPM, fixedParent, sensitiveDataOrigin (it never leaves this TPM and
// the TPM made all of it), userWithAuth with an empty auth value, noDA.
var keyTemplate = func() tpm2.TPMTPublic {
	t := akTemplate
	t.ObjectAttributes.Restricted = false
	return t
}()

// Node is the node side of the identity phase: the TPM and the directory
// that holds the blobs. Its methods are what the agent operations call.
type Node struct {
	// TPM is the TPM (OpenDevice wraps /dev/tpmrm0 with retries). Nil in
	// insecure-skip mode.
	TPM transport.TPM
	// Dir is the identity directory (DefaultDir).
	Dir string
}

// blobFile is how a TPM key is kept on disk: TPM2B_PUBLIC and TPM2B_PRIVATE
// contents (the private part encrypted by the SRK, loadable only by this
// TPM) and, for the AK, its creation data and certification.
type blobFile struct {
	Public            []byte `json:"public"`
	Private           []byte `json:"private"`
	CreateData        []byte `json:"createData,omitempty"`
	CreateAttestation []byte `json:"createAttestation,omitempty"`
	CreateSignature   []byte `json:"createSignature,omitempty"`
}

func (n *Node) path(name string) string { return filepath.Join(n.Dir, name) }

func (n *Node) readBlob(name string) (*blobFile, error) {
	data, err := os.ReadFile(n.path(name))
	if err != nil {
		return nil, err
	}
	var b blobFile
	if err := decodeStrict(data, &b); err != nil {
		return nil, fmt.Errorf("%s: %w", n.path(name), err)
	}
	if len(b.Public) == 0 || len(b.Private) == 0 {
		return nil, fmt.Errorf("%s: no public or private blob", n.path(name))
	}
	return &b, nil
}

// writeFile writes data to Dir/name atomically (temporary file, fsync,
// rename) with mode perm, creating Dir with 0700.
func (n *Node) writeFile(name string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(n.Dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", n.Dir, err)
	}
	f, err := os.CreateTemp(n.Dir, "."+name+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", n.path(name), err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", n.path(name), err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", n.path(name), err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", n.path(name), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", n.path(name), err)
	}
	if err := os.Rename(tmp, n.path(name)); err != nil {
		return fmt.Errorf("writing %s: %w", n.path(name), err)
	}
	return nil
}

func (n *Node) writeBlob(name string, b *blobFile) error {
	data, err := json.Marshal(b)
	if err != nil {
		return err
	}
	return n.writeFile(name, data, 0o600)
}

// readEK reads the RSA 2048 EK: its certificate from NV 0x01c00002 when
// present, its public area from the persistent handle 0x81010001 when
// provisioned, else re-derived from the endorsement seed with the default
// template (TCG EK Credential Profile template L-1). It returns the handle to
// use for TPM2_ActivateCredential and whether the caller must flush it.
func readEK(t transport.TPM) (info *EKInfo, h tpm2.NamedHandle, transient bool, err error) {
	info = &EKInfo{}
	cert, ok, err := readNV(t, rsaEKCertIndex)
	if err != nil {
		return nil, h, false, err
	}
	if ok {
		info.Certificate, info.CertificateIndex = trimDER(cert), uint32(rsaEKCertIndex)
	}
	if rsp, err := (tpm2.ReadPublic{ObjectHandle: rsaEKPersistent}).Execute(t); err == nil {
		info.Public = rsp.OutPublic.Bytes()
		return info, tpm2.NamedHandle{Handle: rsaEKPersistent, Name: rsp.Name}, false, nil
	} else if !errors.Is(err, tpm2.TPMRCHandle) {
		return nil, h, false, fmt.Errorf("reading the persistent EK %#x: %w", uint32(rsaEKPersistent), err)
	}
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.RSAEKTemplate)}.Execute(t)
	if err != nil {
		return nil, h, false, fmt.Errorf("deriving the EK (endorsement hierarchy): %w", err)
	}
	info.Public = rsp.OutPublic.Bytes()
	return info, tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, true, nil
}

// trimDER cuts the zero padding some TPMs leave after a DER certificate in
// its NV index (the index is sized larger than the certificate).
func trimDER(b []byte) []byte {
	if len(b) < 4 || b[0] != 0x30 {
		return b
	}
	var n int
	switch {
	case b[1] < 0x80:
		n = 2 + int(b[1])
	case b[1] == 0x81:
		n = 3 + int(b[2])
	case b[1] == 0x82:
		n = 4 + int(binary.BigEndian.Uint16(b[2:4]))
	default:
		return b
	}
	if n <= len(b) {
		return b[:n]
	}
	return b
}

// Observe reads the node's identity without changing anything: the EK, the
// public parts of the stored AK and key blobs, the software key's public
// key and the installed certificate. A TPM that cannot be read is reported
// in TPMError, not as an error, so the plan can say what is wrong.
func (n *Node) Observe(ctx context.Context) (*Observation, error) {
	o := &Observation{}
	if n.TPM != nil {
		rec := NewRecorder(n.TPM)
		ek, h, transient, err := readEK(rec)
		if err != nil {
			o.TPMError = err.Error()
		} else {
			o.EK = ek
			if transient {
				flush(rec, h.Handle, &err)
				if err != nil {
					return nil, err
				}
			}
		}
		o.Commands = rec.Counts()
	}
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{{AKFile, &o.AKPublic}, {KeyFile, &o.KeyPublic}} {
		b, err := n.readBlob(f.name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, err
		default:
			*f.dst = b.Public
		}
	}
	if k, err := n.softwareKey(); err == nil {
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			return nil, err
		}
		o.SoftwarePublicKey = der
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	cert, err := n.Certificate()
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		o.Certificate = cert.Raw
	}
	return o, ctx.Err()
}

// Certificate reads the installed node certificate (Dir/node.crt).
func (n *Node) Certificate() (*x509.Certificate, error) {
	data, err := os.ReadFile(n.path(CertFile))
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", n.path(CertFile))
	}
	return x509.ParseCertificate(b.Bytes)
}

// loaded is a TPM key loaded for use; close flushes it.
type loaded struct {
	h    tpm2.NamedHandle
	blob *blobFile
}

// loadOrCreate loads the blob in Dir/name under srk, or creates the key
// from tmpl (TPM2_Create), stores its blobs, and loads it. For the AK it
// also records TPM2_CertifyCreation by the AK itself (certifyCreation).
func (n *Node) loadOrCreate(t transport.TPM, srk tpm2.NamedHandle, name string, tmpl tpm2.TPMTPublic, certifyCreation bool) (l *loaded, err error) {
	b, err := n.readBlob(name)
	var created *tpm2.CreateResponse
	switch {
	case errors.Is(err, fs.ErrNotExist) && tmpl.Type == 0:
		return nil, fmt.Errorf("%s: no %s: this node is not enrolled yet", n.path(name), name)
	case errors.Is(err, fs.ErrNotExist):
		created, err = tpm2.Create{
			ParentHandle: tpm2.AuthHandle{Handle: srk.Handle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
			InPublic:     tpm2.New2B(tmpl),
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("creating the %s in the TPM: %w", name, err)
		}
		b = &blobFile{Public: created.OutPublic.Bytes(), Private: created.OutPrivate.Buffer}
	case err != nil:
		return nil, err
	}
	rsp, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: srk.Handle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    tpm2.TPM2BPrivate{Buffer: b.Private},
		InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](b.Public),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("loading %s into the TPM (was the TPM cleared? then re-enrol this node): %w", n.path(name), err)
	}
	l = &loaded{h: tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, blob: b}
	if created == nil {
		return l, nil
	}
	defer func() {
		if err != nil {
			flush(t, l.h.Handle, &err)
		}
	}()
	if certifyCreation {
		cc, err := tpm2.CertifyCreation{
			SignHandle:     tpm2.AuthHandle{Handle: l.h.Handle, Name: l.h.Name, Auth: tpm2.PasswordAuth(nil)},
			ObjectHandle:   l.h,
			CreationHash:   created.CreationHash,
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			CreationTicket: created.CreationTicket,
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("certifying the creation of the %s: %w", name, err)
		}
		b.CreateData = created.CreationData.Bytes()
		b.CreateAttestation = cc.CertifyInfo.Bytes()
		b.CreateSignature = tpm2.Marshal(cc.Signature)
	}
	if err := n.writeBlob(name, b); err != nil {
		return nil, err
	}
	return l, nil
}

// Attest is the node's first step of an enrolment session (OpAttest). It
// reads the EK, loads the AK and the node key from their blobs (creating
// them with TPM2_Create on first use only), and has the AK certify the node
// key (TPM2_Certify) with the session's nonce as qualifying data. Every
// transient handle is flushed before it returns.
func (n *Node) Attest(ctx context.Context, req AttestRequest) (out *Attestation, err error) {
	if len(req.Nonce) != NonceSize {
		return nil, fmt.Errorf("nonce of %d bytes, want %d", len(req.Nonce), NonceSize)
	}
	if req.Software {
		return n.attestSoftware(req.Nonce)
	}
	if n.TPM == nil {
		return nil, errors.New("no TPM on this node (spec.identity.tpm: insecure-skip lets it through with a software key)")
	}
	rec := NewRecorder(n.TPM)
	t := transport.TPM(rec)
	ek, ekh, ekTransient, err := readEK(t)
	if err != nil {
		return nil, err
	}
	if ekTransient {
		flush(t, ekh.Handle, &err)
		if err != nil {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	srk, err := loadSRK(t)
	if err != nil {
		return nil, err
	}
	srkFlushed := false
	defer func() {
		if !srkFlushed {
			flush(t, srk.Handle, &err)
		}
	}()
	ak, err := n.loadOrCreate(t, srk, AKFile, akTemplate, true)
	if err != nil {
		return nil, err
	}
	defer flush(t, ak.h.Handle, &err)
	key, err := n.loadOrCreate(t, srk, KeyFile, keyTemplate, false)
	if err != nil {
		return nil, err
	}
	defer flush(t, key.h.Handle, &err)
	// Room for the two keys only: swtpm and small TPMs hold three objects.
	srkFlushed = true
	flush(t, srk.Handle, &err)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cert, err := tpm2.Certify{
		ObjectHandle:   tpm2.AuthHandle{Handle: key.h.Handle, Name: key.h.Name, Auth: tpm2.PasswordAuth(nil)},
		SignHandle:     tpm2.AuthHandle{Handle: ak.h.Handle, Name: ak.h.Name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: req.Nonce},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("certifying the node key with the AK: %w", err)
	}
	if len(ak.blob.CreateAttestation) == 0 {
		return nil, fmt.Errorf("%s has no creation certification: remove the identity directory and re-enrol", n.path(AKFile))
	}
	return &Attestation{
		EK:       ek,
		AK:       &AKInfo{Public: ak.blob.Public, CreateData: ak.blob.CreateData, CreateAttestation: ak.blob.CreateAttestation, CreateSignature: ak.blob.CreateSignature},
		Key:      &KeyCertification{Public: key.blob.Public, Attestation: cert.CertifyInfo.Bytes(), Signature: tpm2.Marshal(cert.Signature)},
		Created:  rec.Created(),
		Commands: rec.Counts(),
	}, nil
}

// loadKey loads the blob in Dir/name (no creation); the caller flushes it.
func (n *Node) loadKey(t transport.TPM, name string) (l *loaded, err error) {
	srk, err := loadSRK(t)
	if err != nil {
		return nil, err
	}
	defer flush(t, srk.Handle, &err)
	return n.loadOrCreate(t, srk, name, tpm2.TPMTPublic{}, false)
}

// Activate answers the session's credential challenge (OpActivate): it
// loads the AK, refuses if its Name is not req.AKName (the challenge is for
// one AK), and decrypts the credential with TPM2_ActivateCredential under
// the EK (authorised by PolicySecret(TPM_RH_ENDORSEMENT), the EK's standard
// policy).
func (n *Node) Activate(ctx context.Context, req ActivateRequest) (out *ActivateResponse, err error) {
	if n.TPM == nil {
		return nil, errors.New("no TPM on this node")
	}
	cred, err := unwrap2B("credential", req.Credential)
	if err != nil {
		return nil, err
	}
	secret, err := unwrap2B("secret", req.Secret)
	if err != nil {
		return nil, err
	}
	rec := NewRecorder(n.TPM)
	t := transport.TPM(rec)
	ak, err := n.loadKey(t, AKFile)
	if err != nil {
		return nil, err
	}
	defer flush(t, ak.h.Handle, &err)
	if !bytes.Equal(ak.h.Name.Buffer, req.AKName) {
		return nil, fmt.Errorf("the challenge is for AK %x, this node's AK is %x: start a new enrolment session", req.AKName, ak.h.Name.Buffer)
	}
	_, ekh, ekTransient, err := readEK(t)
	if err != nil {
		return nil, err
	}
	if ekTransient {
		defer flush(t, ekh.Handle, &err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rsp, err := tpm2.ActivateCredential{
		ActivateHandle: tpm2.AuthHandle{Handle: ak.h.Handle, Name: ak.h.Name, Auth: tpm2.PasswordAuth(nil)},
		KeyHandle:      tpm2.AuthHandle{Handle: ekh.Handle, Name: ekh.Name, Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, ekPolicy)},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: cred},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: secret},
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("activating the credential (is the challenge for this TPM's EK?): %w", err)
	}
	return &ActivateResponse{Secret: rsp.CertInfo.Buffer, Commands: rec.Counts()}, nil
}

// ekPolicy satisfies the default EK's authPolicy: PolicySecret with the
// endorsement hierarchy (TCG EK Credential Profile section 2.1.5.1).
func ekPolicy(t transport.TPM, session tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
	_, err := tpm2.PolicySecret{
		AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		PolicySession: session,
		NonceTPM:      nonceTPM,
	}.Execute(t)
	return err
}

// unwrap2B checks and strips the 2-byte size of a TPM2B.
func unwrap2B(field string, b []byte) ([]byte, error) {
	if len(b) < 2 || len(b) > 2+1024 || int(binary.BigEndian.Uint16(b)) != len(b)-2 {
		return nil, fmt.Errorf("%s: not a TPM2B of at most 1024 bytes", field)
	}
	return b[2:], nil
}

// Sign signs data with the node key (OpSign): ECDSA P-256 over
// SHA-256(data), returned in ASN.1 form (RFC 3279). The mesh signs each
// node's WireGuard public key with it.
func (n *Node) Sign(ctx context.Context, req SignRequest) (*SignResponse, error) {
	if len(req.Data) > MaxSignData {
		return nil, fmt.Errorf("data of %d bytes, more than %d", len(req.Data), MaxSignData)
	}
	digest := sha256.Sum256(req.Data)
	if n.TPM == nil {
		k, err := n.softwareKey()
		if err != nil {
			return nil, fmt.Errorf("no TPM and no software key: %w", err)
		}
		sig, err := ecdsa.SignASN1(randReader, k, digest[:])
		return &SignResponse{Signature: sig}, err
	}
	rec := NewRecorder(n.TPM)
	s, err := n.signer(rec)
	if err != nil {
		return nil, err
	}
	sig, err := s.Sign(nil, digest[:], crypto.SHA256)
	err = errors.Join(err, s.Close())
	if err != nil {
		return nil, err
	}
	return &SignResponse{Signature: sig, Commands: rec.Counts()}, ctx.Err()
}

// Signer returns the node key as a crypto.Signer (ECDSA, SHA-256 digests),
// e.g. for a tls.Certificate's PrivateKey. The key stays loaded until Close.
func (n *Node) Signer() (*Signer, error) {
	if n.TPM == nil {
		return nil, errors.New("no TPM on this node")
	}
	return n.signer(n.TPM)
}

func (n *Node) signer(t transport.TPM) (*Signer, error) {
	key, err := n.loadKey(t, KeyFile)
	if err != nil {
		return nil, err
	}
	pub, err := publicKey(key.blob.Public)
	if err != nil {
		flush(t, key.h.Handle, &err)
		return nil, err
	}
	return &Signer{t: t, h: key.h, pub: pub}, nil
}

// Signer is the TPM-resident node key as a crypto.Signer.
type Signer struct {
	t   transport.TPM
	h   tpm2.NamedHandle
	pub *ecdsa.PublicKey
}

// Public implements crypto.Signer.
func (s *Signer) Public() crypto.PublicKey { return s.pub }

// Sign implements crypto.Signer: digest must be a SHA-256 digest; the
// signature is ASN.1 ECDSA.
func (s *Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != crypto.SHA256 || len(digest) != sha256.Size {
		return nil, fmt.Errorf("the node key signs SHA-256 digests, not %v", opts.HashFunc())
	}
	rsp, err := tpm2.Sign{
		KeyHandle: tpm2.AuthHandle{Handle: s.h.Handle, Name: s.h.Name, Auth: tpm2.PasswordAuth(nil)},
		Digest:    tpm2.TPM2BDigest{Buffer: digest},
		InScheme:  tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		// A null ticket: the key is not restricted (TPM 2.0 Part 3, 20.2).
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(s.t)
	if err != nil {
		return nil, fmt.Errorf("signing with the node key: %w", err)
	}
	ecc, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("the TPM answered a non-ECDSA signature: %w", err)
	}
	return asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(ecc.SignatureR.Buffer), new(big.Int).SetBytes(ecc.SignatureS.Buffer)})
}

// Close flushes the key from the TPM.
func (s *Signer) Close() error {
	var err error
	flush(s.t, s.h.Handle, &err)
	return err
}

// publicKey parses a TPMT_PUBLIC that must hold an ECDSA key.
func publicKey(tpmtPublic []byte) (*ecdsa.PublicKey, error) {
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](tpmtPublic)
	if err != nil {
		return nil, fmt.Errorf("parsing a TPMT_PUBLIC: %w", err)
	}
	pub, err := tpm2.Pub(*p)
	if err != nil {
		return nil, fmt.Errorf("TPMT_PUBLIC: %w", err)
	}
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want ECDSA", pub)
	}
	return k, nil
}

// Install writes the node certificate to Dir/node.crt (PEM, 0644) after
// checking that its public key is the node key's (TPM key or software key).
func (n *Node) Install(_ context.Context, req InstallRequest) (*InstallResponse, error) {
	if len(req.Certificate) > maxCertificate {
		return nil, errors.New("certificate too large")
	}
	cert, err := x509.ParseCertificate(req.Certificate)
	if err != nil {
		return nil, fmt.Errorf("parsing the node certificate: %w", err)
	}
	var mine crypto.PublicKey
	if b, err := n.readBlob(KeyFile); err == nil {
		if mine, err = publicKey(b.Public); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	} else if k, err := n.softwareKey(); err == nil {
		mine = &k.PublicKey
	} else {
		return nil, fmt.Errorf("no node key to install a certificate for: %w", err)
	}
	if !mine.(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) {
		return nil, errors.New("the certificate is for another key than this node's")
	}
	if old, err := n.Certificate(); err == nil && old.Equal(cert) {
		return &InstallResponse{}, nil
	}
	if err := n.writeFile(CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		return nil, err
	}
	return &InstallResponse{Changed: true}, nil
}
