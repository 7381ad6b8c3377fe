package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"math/big"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

const cryptoSHA256 = crypto.SHA256

func big1() *big.Int { return big.NewInt(1) }

// tpmPublicOf is a TPMT_PUBLIC of template tmpl holding a software key.
func tpmPublicOf(t testing.TB, pub *ecdsa.PublicKey, tmpl tpm2.TPMTPublic) []byte {
	t.Helper()
	raw, err := pub.Bytes() // 0x04 || X || Y (SEC 1 uncompressed)
	if err != nil {
		t.Fatal(err)
	}
	x, y := raw[1:33], raw[33:65]
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: x}, Y: tpm2.TPM2BECCParameter{Buffer: y}})
	return tpm2.Marshal(tmpl)
}

func name(t testing.TB, public []byte) tpm2.TPM2BName {
	t.Helper()
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](public)
	if err != nil {
		t.Fatal(err)
	}
	n, err := tpm2.ObjectName(p)
	if err != nil {
		t.Fatal(err)
	}
	return *n
}

// signTPM signs data as a TPM would: a TPMT_SIGNATURE, ECDSA SHA-256.
func signTPM(t testing.TB, data []byte, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	sum := sha256.Sum256(data)
	r, s, err := ecdsa.Sign(rand.Reader, k, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return tpm2.Marshal(tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgECDSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
			Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: r.Bytes()}, SignatureS: tpm2.TPM2BECCParameter{Buffer: s.Bytes()},
		}),
	})
}

// forgeCertify makes a well-formed TPM2_Certify result for keyPublic over
// nonce, signed by a software key.
func forgeCertify(t testing.TB, keyPublic, nonce []byte, signer *ecdsa.PrivateKey) (attestation, signature []byte) {
	t.Helper()
	att := tpm2.Marshal(tpm2.TPMSAttest{
		Magic:     tpm2.TPMGeneratedValue,
		Type:      tpm2.TPMSTAttestCertify,
		ExtraData: tpm2.TPM2BData{Buffer: nonce},
		Attested:  tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{Name: name(t, keyPublic), QualifiedName: name(t, keyPublic)}),
	})
	return att, signTPM(t, att, signer)
}

// forgeAK makes a software "AK" with a self-certified creation.
func forgeAK(t testing.TB, k *ecdsa.PrivateKey) *AKInfo {
	t.Helper()
	pub := tpmPublicOf(t, &k.PublicKey, akTemplate)
	cd := tpm2.Marshal(tpm2.TPMSCreationData{ParentNameAlg: tpm2.TPMAlgSHA256})
	sum := sha256.Sum256(cd)
	att := tpm2.Marshal(tpm2.TPMSAttest{
		Magic:    tpm2.TPMGeneratedValue,
		Type:     tpm2.TPMSTAttestCreation,
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestCreation, &tpm2.TPMSCreationInfo{ObjectName: name(t, pub), CreationHash: tpm2.TPM2BDigest{Buffer: sum[:]}}),
	})
	return &AKInfo{Public: pub, CreateData: cd, CreateAttestation: att, CreateSignature: signTPM(t, att, k)}
}
