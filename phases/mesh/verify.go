package mesh

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"castellan/installer/pki"
)

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

// KeyStatementContext prefixes what a node's identity key signs to vouch for
// its WireGuard key, so the signature means nothing else.
const KeyStatementContext = "castellan mesh wireguard-key v1\x00"

// KeyStatement is the data a node signs with its identity key (ECDSA over
// SHA-256 of it): the context, the cluster, the node and the 32-byte
// WireGuard public key, NUL-separated.
func KeyStatement(cluster, node string, pub wgtypes.Key) []byte {
	var b bytes.Buffer
	b.WriteString(KeyStatementContext)
	b.WriteString(cluster)
	b.WriteByte(0)
	b.WriteString(node)
	b.WriteByte(0)
	b.Write(pub[:])
	return b.Bytes()
}

// KeyRecord is what the state repo keeps of a node's WireGuard key
// (data/mesh/keys.json, public): the key, its signature by the node's
// identity key, and the certificate that verified it.
type KeyRecord struct {
	PublicKey string `json:"publicKey"`
	// Signature is ASN.1 ECDSA (RFC 3279) over SHA-256(KeyStatement).
	Signature []byte `json:"signature"`
	// CertSerial is the serial of the node certificate it was verified
	// against (decimal).
	CertSerial string `json:"certSerial"`
	// Created is when the key was generated (first seen), for rotation.
	Created time.Time `json:"created"`
}

// ParseKeyRecords decodes data/mesh/keys.json (strictly).
func ParseKeyRecords(data []byte) (map[string]KeyRecord, error) {
	out := map[string]KeyRecord{}
	if err := decodeStrict(data, &out); err != nil {
		return nil, fmt.Errorf("data/mesh/keys.json: %w", err)
	}
	return out, nil
}

// ErrBadSignature is returned (wrapped) when a key's signature does not
// verify against the node's certificate.
var ErrBadSignature = errors.New("the WireGuard key's signature does not verify against the node's certificate")

// VerifyKey checks that cert is node's valid, unrevoked identity in the
// cluster (v.VerifyNode) and that sig is its key's signature of
// KeyStatement(cluster, node, pub). Only a key that passes is given to
// peers. Errors wrap pki.ErrRevoked or ErrBadSignature where they apply.
func VerifyKey(v *pki.Verifier, cert *x509.Certificate, node string, pub wgtypes.Key, sig []byte) (*pki.NodeIdentity, error) {
	id, err := v.VerifyNode(cert, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	if id.Node != node {
		return nil, fmt.Errorf("node %s presents the certificate of node %s", node, id.Node)
	}
	ec, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("node %s: certificate key is %T, want ECDSA", node, cert.PublicKey)
	}
	digest := sha256.Sum256(KeyStatement(v.Cluster, node, pub))
	if !ecdsa.VerifyASN1(ec, digest[:], sig) {
		return nil, fmt.Errorf("node %s, key %s: %w", node, pub, ErrBadSignature)
	}
	return id, nil
}
