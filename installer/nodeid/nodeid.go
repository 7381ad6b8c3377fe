// Package nodeid holds what the identity phase shares with later phases and
// with the application layer: each node's certificate, the cluster's trust
// anchors (root CA and revocation list), what the run record keeps per node,
// and the run input that asks for an explicit re-enrolment. The mesh reads
// it without importing phases/identity (phases never import each other).
package nodeid

import (
	"crypto/x509"
	"time"

	"castellan/installer/engine"
	"castellan/installer/pki"
)

// Phase is the name of the phase that publishes these outputs.
const Phase = "identity"

// Certificate is a node's identity as the identity phase left it on the
// node: the certificate the cluster root issued for the node's key.
type Certificate struct {
	// Cert is the node certificate (CN and DNS SAN the node's name, URI SAN
	// castellan://CLUSTER/node/NAME), signed by the cluster root CA.
	Cert *x509.Certificate
	// Protection says where the private key lives: pki.TPMResident (created
	// in the node's TPM, proven by attestation) or pki.SoftwareKey
	// (spec.identity.tpm: insecure-skip, a root-only file on the node).
	Protection pki.KeyProtection
}

// TPMResident reports whether the certificate's key was proven to live in
// the node's TPM.
func (c Certificate) TPMResident() bool { return c.Protection == pki.TPMResident }

// CertificateKey is the output under which the identity phase publishes
// each enrolled node's Certificate (for the targeted nodes it planned or
// enrolled in this run). Not recorded: the run record keeps Enrolment.
var CertificateKey = engine.NewKey[Certificate](Phase, "certificate", false)

// Trust is what a peer needs to verify node identities: the cluster root CA
// and the current revocation list. It is published cluster-wide (node "").
type Trust struct {
	Cluster string
	// Root is the cluster root CA certificate; node certificates are signed
	// by it directly.
	Root *x509.Certificate
	// CRL is the current revocation list, signed by Root: certificates of
	// nodes removed from the profile, and of keys replaced by an enrolment.
	CRL *pki.RevocationList
	// RequireTPM is true unless spec.identity.tpm is insecure-skip.
	RequireTPM bool
}

// Verifier returns a pki.Verifier for this trust: how the mesh accepts a
// peer (root only, CRL, cluster, TPM-resident keys when required).
func (t Trust) Verifier() *pki.Verifier {
	return &pki.Verifier{Cluster: t.Cluster, Root: t.Root, CRL: t.CRL, RequireTPM: t.RequireTPM}
}

// TrustKey is the output under which the identity phase publishes Trust
// (node ""), once the cluster has a root CA and a revocation list.
var TrustKey = engine.NewKey[Trust](Phase, "trust", false)

// Enrolment is what each run records per targeted node: which TPM vouched
// for the node's key, and the certificate it holds. Public, never secret.
type Enrolment struct {
	// Action is what this run did: none, enrol, renew or re-enrol.
	Action string `json:"action"`
	// Protection is tpm-resident or software-key.
	Protection pki.KeyProtection `json:"protection"`
	// EKHash is "sha256:" and the hex SHA-256 of the TPM endorsement key's
	// SubjectPublicKeyInfo ("" for a software key); EKTrust says how it was
	// trusted at enrolment: certificate-chain, pinned, or none.
	EKHash  string `json:"ekHash,omitempty"`
	EKTrust string `json:"ekTrust"`
	// PreviousEKHash is the EK an explicit re-enrolment replaced.
	PreviousEKHash string `json:"previousEkHash,omitempty"`
	// AKName is the attestation key's TPM Name (hex).
	AKName string `json:"akName,omitempty"`
	// KeyFingerprint is the hex SHA-256 of the node key's
	// SubjectPublicKeyInfo.
	KeyFingerprint string `json:"keyFingerprint"`
	// CertSerial (decimal) and CertNotAfter describe the node certificate.
	CertSerial   string    `json:"certSerial"`
	CertNotAfter time.Time `json:"certNotAfter"`
}

// EnrolmentKey is the recorded output of each targeted node's Enrolment.
var EnrolmentKey = engine.NewKey[Enrolment](Phase, "enrolment", true)

// ReEnrol is the run input naming the nodes to re-enrol explicitly
// (castellan apply --re-enrol NODE): a node whose TPM endorsement key
// changed is otherwise refused. A re-enrolled node gets a new attestation
// key, a new node key and a new certificate; its old certificate is
// revoked; the run records the old and the new EK.
var ReEnrol = engine.NewInput[[]string](Phase, "re-enrol")
