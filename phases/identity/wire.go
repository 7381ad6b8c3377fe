package identity

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// EKInfo is the endorsement key the node uses for credential activation.
type EKInfo struct {
	// Public is the EK's TPMT_PUBLIC (TPM 2.0 Part 2 section 12.2.4).
	Public []byte `json:"public"`
	// Certificate is the EK certificate (DER) from NV index CertificateIndex,
	// absent when the TPM has none.
	Certificate      []byte `json:"certificate,omitempty"`
	CertificateIndex uint32 `json:"certificateIndex,omitempty"`
}

// AKInfo is the attestation key as created: go-attestation's
// AttestationParameters for TPM 2.0.
type AKInfo struct {
	// Public is the AK's TPMT_PUBLIC.
	Public []byte `json:"public"`
	// CreateData is the TPMS_CREATION_DATA of the AK's creation.
	CreateData []byte `json:"createData"`
	// CreateAttestation is the TPMS_ATTEST of TPM2_CertifyCreation.
	CreateAttestation []byte `json:"createAttestation"`
	// CreateSignature is its TPMT_SIGNATURE by the AK itself.
	CreateSignature []byte `json:"createSignature"`
}

// KeyCertification is TPM2_Certify of the node key by the AK over the
// session's nonce: go-attestation's CertificationParameters.
type KeyCertification struct {
	// Public is the node key's TPMT_PUBLIC.
	Public []byte `json:"public"`
	// Attestation is the TPMS_ATTEST (tag TPM_ST_ATTEST_CERTIFY) whose
	// extraData must be the nonce.
	Attestation []byte `json:"attestation"`
	// Signature is the AK's TPMT_SIGNATURE over Attestation.
	Signature []byte `json:"signature"`
}

// SoftwareProof is what an insecure-skip node presents: its software key
// and a signature proving possession over the session's nonce.
type SoftwareProof struct {
	// PublicKey is the key's PKIX SubjectPublicKeyInfo (DER), ECDSA P-256.
	PublicKey []byte `json:"publicKey"`
	// Signature is ASN.1 ECDSA over SHA-256(SoftwareProofContext || nonce).
	Signature []byte `json:"signature"`
}

// SoftwareProofContext prefixes what a software key signs at enrolment, so
// the signature cannot be reused as anything else.
const SoftwareProofContext = "castellan identity software-key enrolment v1\x00"

// Observation is the read-only view of a node's identity (the Observe operation): what
// the plan compares with the state repo's record.
type Observation struct {
	// EK is the TPM's EK; nil without a TPM (or in insecure-skip mode).
	EK *EKInfo `json:"ek,omitempty"`
	// AKPublic and KeyPublic are the TPMT_PUBLIC of the stored AK and node
	// key blobs; absent before the first enrolment.
	AKPublic  []byte `json:"akPublic,omitempty"`
	KeyPublic []byte `json:"keyPublic,omitempty"`
	// SoftwarePublicKey is the insecure-skip key (PKIX DER), when present.
	SoftwarePublicKey []byte `json:"softwarePublicKey,omitempty"`
	// Certificate is the installed node certificate (DER), when present.
	Certificate []byte `json:"certificate,omitempty"`
	// TPMError says why the TPM could not be read ("" when it could).
	TPMError string `json:"tpmError,omitempty"`
	// Commands counts the TPM commands sent, by name.
	Commands map[string]int `json:"commands,omitempty"`
}

// AttestRequest starts an enrolment session on the node (the Attest operation).
type AttestRequest struct {
	// Nonce is the session's fresh nonce (NonceSize bytes).
	Nonce []byte `json:"nonce"`
	// Software asks for the insecure-skip software key instead of the TPM.
	Software bool `json:"software,omitempty"`
}

// Attestation is the node's answer to AttestRequest.
type Attestation struct {
	EK  *EKInfo           `json:"ek,omitempty"`
	AK  *AKInfo           `json:"ak,omitempty"`
	Key *KeyCertification `json:"key,omitempty"`
	// Software is set (and the TPM fields are not) in insecure-skip mode.
	Software *SoftwareProof `json:"software,omitempty"`
	// Created lists the creating TPM commands this call sent (empty when
	// the stored AK and key were reused), or "software key" for a new
	// software key.
	Created []string `json:"created,omitempty"`
	// Commands counts the TPM commands sent, by name.
	Commands map[string]int `json:"commands,omitempty"`
}

// ActivateRequest is the credential challenge for the session's AK
// (the Activate operation). Credential and Secret are go-attestation's
// EncryptedCredential: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET, each with
// its 2-byte size.
type ActivateRequest struct {
	// AKName is the TPM Name of the AK the challenge is for; the node
	// refuses to answer with another AK.
	AKName     []byte `json:"akName"`
	Credential []byte `json:"credential"`
	Secret     []byte `json:"secret"`
}

// ActivateResponse carries the decrypted credential.
type ActivateResponse struct {
	Secret   []byte         `json:"secret"`
	Commands map[string]int `json:"commands,omitempty"`
}

// InstallRequest hands the node its certificate (the Install operation).
type InstallRequest struct {
	// Certificate is the node certificate (DER); its public key must be the
	// node key's.
	Certificate []byte `json:"certificate"`
}

// InstallResponse says whether node.crt changed.
type InstallResponse struct {
	Changed bool `json:"changed"`
}

// SignRequest asks the node to sign data with its key (the Sign operation).
type SignRequest struct {
	// Data is signed as ECDSA over SHA-256(Data); at most MaxSignData bytes.
	Data []byte `json:"data"`
}

// SignResponse is an ASN.1 ECDSA signature (RFC 3279 Ecdsa-Sig-Value).
type SignResponse struct {
	Signature []byte         `json:"signature"`
	Commands  map[string]int `json:"commands,omitempty"`
}

// Bounds of what the installer accepts from a node.
const (
	// NonceSize is the session nonce's length in bytes.
	NonceSize = 32
	// MaxSignData bounds what the Sign operation signs.
	MaxSignData = 64 << 10
	// maxMessage bounds a whole JSON message from a node.
	maxMessage = 64 << 10
	// maxTPMStruct bounds one TPM structure (TPMT_PUBLIC, TPMS_ATTEST...).
	maxTPMStruct = 2048
	// maxCertificate bounds an EK or node certificate.
	maxCertificate = 8 << 10
	// maxCommandNames bounds the Commands map.
	maxCommandNames = 64
)

// decodeStrict decodes one JSON value of at most maxMessage bytes into v,
// refusing unknown fields and trailing data.
func decodeStrict(data []byte, v any) error {
	if len(data) > maxMessage {
		return fmt.Errorf("message of %d bytes, more than %d", len(data), maxMessage)
	}
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		return errors.New("decoding: null instead of a value")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decoding: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("decoding: data after the JSON value")
	}
	return nil
}

func checkLen(field string, b []byte, lo, hi int) error {
	if len(b) < lo || len(b) > hi {
		return fmt.Errorf("%s: %d bytes, want %d to %d", field, len(b), lo, hi)
	}
	return nil
}

func checkCommands(m map[string]int) error {
	if len(m) > maxCommandNames {
		return fmt.Errorf("commands: %d names, more than %d", len(m), maxCommandNames)
	}
	for k, n := range m {
		if len(k) > 32 || n < 0 {
			return fmt.Errorf("commands: bad entry %q: %d", k, n)
		}
	}
	return nil
}

func (e *EKInfo) check() error {
	if e == nil {
		return errors.New("ek: missing")
	}
	if err := checkLen("ek.public", e.Public, 1, maxTPMStruct); err != nil {
		return err
	}
	return checkLen("ek.certificate", e.Certificate, 0, maxCertificate)
}

// DecodeAttestation decodes a node's Attest answer strictly: bounded
// sizes, no unknown fields, exactly one of the TPM fields (EK, AK, Key) or
// Software. The TPM structures inside are parsed by the Session.
func DecodeAttestation(data []byte) (*Attestation, error) {
	var a Attestation
	if err := a.UnmarshalJSON(data); err != nil {
		return nil, err
	}
	return &a, nil
}

// UnmarshalJSON decodes what a node sent as DecodeAttestation does: the
// installer decodes the Attest operation's result through it.
func (a *Attestation) UnmarshalJSON(data []byte) error {
	type plain Attestation
	var p plain
	if err := decodeStrict(data, &p); err != nil {
		return fmt.Errorf("attestation: %w", err)
	}
	if err := (*Attestation)(&p).check(); err != nil {
		return fmt.Errorf("attestation: %w", err)
	}
	*a = Attestation(p)
	return nil
}

func (a *Attestation) check() error {
	if err := checkCommands(a.Commands); err != nil {
		return err
	}
	if len(a.Created) > 8 {
		return errors.New("created: too many entries")
	}
	if a.Software != nil {
		if a.EK != nil || a.AK != nil || a.Key != nil {
			return errors.New("both a software key and TPM fields")
		}
		if err := checkLen("software.publicKey", a.Software.PublicKey, 1, 1024); err != nil {
			return err
		}
		return checkLen("software.signature", a.Software.Signature, 1, 256)
	}
	if err := a.EK.check(); err != nil {
		return err
	}
	if a.AK == nil || a.Key == nil {
		return errors.New("ak and key are required")
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{
		{"ak.public", a.AK.Public}, {"ak.createData", a.AK.CreateData},
		{"ak.createAttestation", a.AK.CreateAttestation}, {"ak.createSignature", a.AK.CreateSignature},
		{"key.public", a.Key.Public}, {"key.attestation", a.Key.Attestation}, {"key.signature", a.Key.Signature},
	} {
		if err := checkLen(f.name, f.b, 1, maxTPMStruct); err != nil {
			return err
		}
	}
	return nil
}

// DecodeActivateResponse decodes a node's Activate answer strictly.
func DecodeActivateResponse(data []byte) (*ActivateResponse, error) {
	var r ActivateResponse
	if err := r.UnmarshalJSON(data); err != nil {
		return nil, err
	}
	return &r, nil
}

// UnmarshalJSON decodes as DecodeActivateResponse does.
func (r *ActivateResponse) UnmarshalJSON(data []byte) error {
	type plain ActivateResponse
	var p plain
	if err := decodeStrict(data, &p); err != nil {
		return fmt.Errorf("activation: %w", err)
	}
	if err := checkLen("secret", p.Secret, 1, 64); err != nil {
		return fmt.Errorf("activation: %w", err)
	}
	if err := checkCommands(p.Commands); err != nil {
		return fmt.Errorf("activation: %w", err)
	}
	*r = ActivateResponse(p)
	return nil
}

// DecodeObservation decodes a node's Observe answer strictly.
func DecodeObservation(data []byte) (*Observation, error) {
	var o Observation
	if err := o.UnmarshalJSON(data); err != nil {
		return nil, err
	}
	return &o, nil
}

// UnmarshalJSON decodes as DecodeObservation does: the installer decodes
// the Observe operation's result (also when it comes from a batch) through
// it.
func (o *Observation) UnmarshalJSON(data []byte) error {
	type plain Observation
	var p plain
	if err := decodeStrict(data, &p); err != nil {
		return fmt.Errorf("observation: %w", err)
	}
	if p.EK != nil {
		if err := p.EK.check(); err != nil {
			return fmt.Errorf("observation: %w", err)
		}
	}
	for _, f := range []struct {
		name   string
		b      []byte
		lo, hi int
	}{
		{"akPublic", p.AKPublic, 0, maxTPMStruct}, {"keyPublic", p.KeyPublic, 0, maxTPMStruct},
		{"softwarePublicKey", p.SoftwarePublicKey, 0, 1024}, {"certificate", p.Certificate, 0, maxCertificate},
	} {
		if err := checkLen(f.name, f.b, f.lo, f.hi); err != nil {
			return fmt.Errorf("observation: %w", err)
		}
	}
	if len(p.TPMError) > 1024 {
		return errors.New("observation: tpmError longer than 1024 bytes")
	}
	if err := checkCommands(p.Commands); err != nil {
		return fmt.Errorf("observation: %w", err)
	}
	*o = Observation(p)
	return nil
}

// DecodeSignResponse decodes a node's Sign answer strictly.
func DecodeSignResponse(data []byte) (*SignResponse, error) {
	var r SignResponse
	if err := r.UnmarshalJSON(data); err != nil {
		return nil, err
	}
	return &r, nil
}

// UnmarshalJSON decodes as DecodeSignResponse does.
func (r *SignResponse) UnmarshalJSON(data []byte) error {
	type plain SignResponse
	var p plain
	if err := decodeStrict(data, &p); err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	if err := checkLen("signature", p.Signature, 8, 256); err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	if err := checkCommands(p.Commands); err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	*r = SignResponse(p)
	return nil
}
