package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

var randReader = rand.Reader

// softwareKey reads the insecure-skip key (Dir/software.key, PKCS #8 DER).
// It refuses a key file that group or others can read.
func (n *Node) softwareKey() (*ecdsa.PrivateKey, error) {
	p := n.path(SoftwareKeyFile)
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %v): refusing to use it; remove it and re-enrol", p, st.Mode().Perm())
	}
	der, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%s: not an ECDSA P-256 key", p)
	}
	return ek, nil
}

// attestSoftware is Attest in insecure-skip mode: it loads or creates the
// software key (ECDSA P-256, Dir/software.key, 0600 in a 0700 directory
// owned by root) and signs the session's nonce with it.
//
// Why a file and not the kernel keyring: keys in the kernel keyring do not
// survive a reboot (the persistent keyring also expires after days without
// use), so the node would lose its identity and need re-enrolment after
// every restart; a root-only file is what insecure-skip can honestly offer,
// and the certificate says so (OU=software-key).
func (n *Node) attestSoftware(nonce []byte) (*Attestation, error) {
	var created []string
	k, err := n.softwareKey()
	if errors.Is(err, fs.ErrNotExist) {
		if k, err = ecdsa.GenerateKey(elliptic.P256(), randReader); err != nil {
			return nil, fmt.Errorf("generating the software key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, err
		}
		if err := n.writeFile(SoftwareKeyFile, der, 0o600); err != nil {
			return nil, err
		}
		created = []string{"software key"}
	} else if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return nil, err
	}
	sum := softwareProofDigest(nonce)
	sig, err := ecdsa.SignASN1(randReader, k, sum[:])
	if err != nil {
		return nil, fmt.Errorf("signing with the software key: %w", err)
	}
	return &Attestation{Software: &SoftwareProof{PublicKey: pub, Signature: sig}, Created: created}, nil
}

func softwareProofDigest(nonce []byte) [32]byte {
	return sha256.Sum256(append([]byte(SoftwareProofContext), nonce...))
}
