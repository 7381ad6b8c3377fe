// Package tpm2check checks a node's identity with tpm2-tools, independently
// of castellan's own TPM code: that the key behind the node certificate
// lives in the node's TPM, and which endorsement key (EK) that TPM has. It
// is for tests: against swtpm on the test machine (through tpm2-tss's cmd
// TCTI) and on the VM lab's nodes (through /dev/tpmrm0).
//
// What the check proves, with tools castellan did not write:
//
//   - the key blob castellan keeps (key.json) loads under this TPM's storage
//     root key (the TCG provisioning guidance's ECC P-256 SRK template, which
//     tpm2_createprimary re-derives from the TPM's owner seed): its private
//     part was wrapped by this TPM;
//   - its attributes, as the TPM reports them (tpm2_readpublic), are
//     fixedtpm|fixedparent|sensitivedataorigin|sign and not restricted or
//     decrypt: the private part never leaves the TPM and was made by it;
//   - its public key is the certificate's, and the TPM signs a fresh
//     challenge with it (tpm2_sign) that verifies with the certificate;
//   - the EK hash (tpm2_createek, then SHA-256 of its DER
//     SubjectPublicKeyInfo) is the one castellan shows and pins.
//
// The script needs tpm2-tools 5 and coreutils (base64, sha256sum, mktemp).
package tpm2check

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// Result is what tpm2-tools said.
type Result struct {
	// Attributes are the key's object attributes as tpm2_readpublic prints
	// them, e.g. "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|sign".
	Attributes string
	// EKHash is "sha256:" and the hex SHA-256 of the RSA EK's DER
	// SubjectPublicKeyInfo, as castellan names EKs.
	EKHash string
}

// Runner runs a POSIX sh script as root on the node and returns its
// standard output.
type Runner func(ctx context.Context, script string) (string, error)

// keyBlob is the part of castellan's key.json the check reads.
type keyBlob struct {
	Public  []byte `json:"public"`
	Private []byte `json:"private"`
}

// Check runs the tpm2-tools check on the node: keyJSON is the content of the
// node's key.json, cert its installed certificate. It returns an error
// naming the first thing that does not hold.
func Check(ctx context.Context, run Runner, keyJSON []byte, cert *x509.Certificate) (*Result, error) {
	var k keyBlob
	if err := json.Unmarshal(keyJSON, &k); err != nil || len(k.Public) == 0 || len(k.Private) == 0 {
		return nil, fmt.Errorf("key.json: not castellan's key blob file: %v", err)
	}
	challenge := make([]byte, 32)
	if _, err := rand.Read(challenge); err != nil {
		return nil, err
	}
	out, err := run(ctx, Script(k.Public, k.Private, challenge))
	if err != nil {
		return nil, fmt.Errorf("tpm2-tools: %w", err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if name, value, ok := strings.Cut(line, ": "); ok && strings.HasPrefix(name, "tpm2check-") {
			fields[strings.TrimPrefix(name, "tpm2check-")] = strings.TrimSpace(value)
		}
	}
	res := &Result{Attributes: fields["attributes"], EKHash: "sha256:" + fields["ek"]}
	attrs := map[string]bool{}
	for _, a := range strings.Split(res.Attributes, "|") {
		attrs[a] = true
	}
	for _, a := range []string{"fixedtpm", "fixedparent", "sensitivedataorigin", "sign"} {
		if !attrs[a] {
			return res, fmt.Errorf("the TPM reports the key's attributes as %q: %s is missing", res.Attributes, a)
		}
	}
	for _, a := range []string{"restricted", "decrypt"} {
		if attrs[a] {
			return res, fmt.Errorf("the TPM reports the key's attributes as %q: %s is set", res.Attributes, a)
		}
	}
	pemData, err := base64.StdEncoding.DecodeString(fields["public"])
	if err != nil {
		return res, fmt.Errorf("tpm2_readpublic's public key: %w (output: %q)", err, out)
	}
	b, _ := pem.Decode(pemData)
	if b == nil {
		return res, fmt.Errorf("tpm2_readpublic printed no PEM public key (output: %q)", out)
	}
	pub, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return res, fmt.Errorf("tpm2_readpublic's public key: %w", err)
	}
	if !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) {
		return res, errors.New("the key the TPM loaded is not the certificate's key")
	}
	sig, err := base64.StdEncoding.DecodeString(fields["signature"])
	if err != nil {
		return res, fmt.Errorf("tpm2_sign's signature: %w", err)
	}
	sum := sha256.Sum256(challenge)
	ec, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !ecdsa.VerifyASN1(ec, sum[:], sig) {
		return res, errors.New("the TPM's signature of a fresh challenge does not verify with the certificate's key")
	}
	if len(fields["ek"]) != 64 {
		return res, fmt.Errorf("no EK hash from tpm2-tools (output: %q)", out)
	}
	return res, nil
}

// sized is a TPM2B: a 2-byte big-endian size, then the bytes (TPM 2.0
// Part 2 section 10.4), as tpm2_load reads -u and -r files.
func sized(b []byte) []byte {
	out := binary.BigEndian.AppendUint16(nil, uint16(len(b)))
	return append(out, b...)
}

// srkUnique is the unique field of the TCG SRK template (X and Y of 32
// zero bytes) as tpm2_createprimary -u reads it: the C layout of
// TPMS_ECC_POINT, each coordinate a host-endian (little-endian on amd64 and
// arm64) 2-byte size and a 128-byte buffer.
func srkUnique() []byte {
	var b bytes.Buffer
	for range 2 {
		b.Write(binary.LittleEndian.AppendUint16(nil, 32))
		b.Write(make([]byte, 128))
	}
	return b.Bytes()
}

// Script is the shell script Check runs: keyPublic is the key's TPMT_PUBLIC,
// keyPrivate its TPM2B_PRIVATE contents (castellan's key.json), challenge
// what the TPM signs. It works in a temporary directory it removes, and
// flushes transient objects after each step (swtpm has no resource
// manager; with /dev/tpmrm0 the flushes find nothing). It prints
// "tpm2check-NAME: VALUE" lines: attributes, public (base64 of a PEM
// public key), signature (base64 of an ASN.1 ECDSA signature), ek (hex).
func Script(keyPublic, keyPrivate, challenge []byte) string {
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf(`set -eu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
flush() { tpm2_flushcontext -t >/dev/null 2>&1 || true; }
echo %s | base64 -d > key.pub
echo %s | base64 -d > key.priv
echo %s | base64 -d > unique.dat
echo %s | base64 -d > msg
tpm2_createprimary -Q -C o -g sha256 -G ecc256:null:aes128cfb -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt' -u unique.dat -c srk.ctx
flush
tpm2_load -Q -C srk.ctx -u key.pub -r key.priv -c key.ctx
flush
tpm2_readpublic -c key.ctx -f pem -o key.pem > readpublic.txt
flush
echo "tpm2check-attributes: $(sed -n '/^attributes:/{n;s/^ *value: *//p;}' readpublic.txt)"
echo "tpm2check-public: $(base64 -w0 key.pem)"
tpm2_sign -c key.ctx -g sha256 -f plain -o sig.bin msg
flush
echo "tpm2check-signature: $(base64 -w0 sig.bin)"
tpm2_createek -Q -c ek.ctx -G rsa -u ek.pub
flush
tpm2_readpublic -Q -c ek.ctx -f der -o ek.der
flush
echo "tpm2check-ek: $(sha256sum ek.der | cut -d' ' -f1)"
`, enc(sized(keyPublic)), enc(sized(keyPrivate)), enc(srkUnique()), enc(challenge))
}
