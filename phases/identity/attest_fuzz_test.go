package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/google/go-tpm/tpm2"

	"castellan/installer/pki"
)

// forgedQuote is a quote made in software by a software "AK" with
// castellan's AK template, over attestedPCRs and a known nonce, with the
// AK's certification of a software node key. VerifyQuote accepts it (what
// binds an AK to a TPM is the enrolment's credential activation, not the
// quote), so any single mutation it still accepted would be a hole.
func forgedQuote(t testing.TB) (QuoteCheck, *Quote) {
	t.Helper()
	ak, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	nonce := nonceOf(9)
	akPub := tpmPublicOf(t, &ak.PublicKey, akTemplate)
	keyPub := tpmPublicOf(t, &key.PublicKey, keyTemplate)
	var vals []PCRValue
	h := sha256.New()
	for _, i := range attestedPCRs {
		d := sha256.Sum256([]byte{byte(i)})
		vals = append(vals, PCRValue{Index: i, Digest: d[:]})
		h.Write(d[:])
	}
	sel, _ := pcrSelection(attestedPCRs)
	att := tpm2.Marshal(tpm2.TPMSAttest{
		Magic: tpm2.TPMGeneratedValue, Type: tpm2.TPMSTAttestQuote, ExtraData: tpm2.TPM2BData{Buffer: nonce},
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{PCRSelect: sel, PCRDigest: tpm2.TPM2BDigest{Buffer: h.Sum(nil)}}),
	})
	kAtt, kSig := forgeCertify(t, keyPub, nonce, ak)
	fp, _ := pki.Fingerprint(&key.PublicKey)
	n := name(t, akPub)
	check := QuoteCheck{Node: "n1", AKName: hex.EncodeToString(n.Buffer), Nonce: nonce, PCRs: attestedPCRs, KeyFingerprint: fp}
	return check, &Quote{AKPublic: akPub, Quote: att, Signature: signTPM(t, att, ak), PCRs: vals,
		Key: &KeyCertification{Public: keyPub, Attestation: kAtt, Signature: kSig}}
}

// TestForgedQuoteMutations: the software quote verifies; flipping any
// single byte of any field makes VerifyQuote refuse it.
func TestForgedQuoteMutations(t *testing.T) {
	check, q := forgedQuote(t)
	if _, err := VerifyQuote(check, q); err != nil {
		t.Fatalf("the well-formed quote: %v", err)
	}
	fields := map[string]func(*Quote) []byte{
		"akPublic": func(q *Quote) []byte { return q.AKPublic }, "quote": func(q *Quote) []byte { return q.Quote },
		"signature": func(q *Quote) []byte { return q.Signature }, "pcr 4": func(q *Quote) []byte { return q.PCRs[2].Digest },
		"key.public": func(q *Quote) []byte { return q.Key.Public }, "key.attestation": func(q *Quote) []byte { return q.Key.Attestation },
		"key.signature": func(q *Quote) []byte { return q.Key.Signature },
	}
	for name, field := range fields {
		for i := range field(q) {
			m := cloneQuote(q)
			field(m)[i] ^= 0x01
			if _, err := VerifyQuote(check, m); err == nil {
				t.Errorf("%s: byte %d flipped, and the quote still verifies", name, i)
			}
		}
	}
}

func cloneQuote(q *Quote) *Quote {
	data, _ := json.Marshal(q)
	var out Quote
	_ = json.Unmarshal(data, &out)
	return &out
}

// FuzzVerifyQuote: whatever a node answers (JSON), decoding and
// verification never panic, and nothing but the one well-formed quote
// (mutations of which the corpus starts from) passes with the same PCR
// values.
func FuzzVerifyQuote(f *testing.F) {
	check, q := forgedQuote(f)
	good, _ := json.Marshal(q)
	f.Add(good)
	f.Add([]byte(`{"unavailable":"no TPM"}`))
	f.Add([]byte(`{"pcrs":[{"index":0,"digest":"AA=="}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var got Quote
		if err := got.UnmarshalJSON(data); err != nil {
			return
		}
		vals, err := VerifyQuote(check, &got)
		if err != nil {
			return
		}
		for i, v := range vals {
			if !bytes.Equal(v.Digest, q.PCRs[i].Digest) {
				t.Fatalf("a quote with other PCR values verified: %x", vals)
			}
		}
	})
}

// FuzzReplayEventLog: an event log from a node is parsed and replayed
// without panicking, and what it says of events is printable and bounded.
func FuzzReplayEventLog(f *testing.F) {
	boot := uefiBoot("grub")
	f.Add(eventLog(boot))
	f.Add(eventLog(boot[:3]))
	f.Add([]byte{})
	vals := make([]PCRValue, len(attestedPCRs))
	for i, p := range attestedPCRs {
		vals[i] = PCRValue{Index: p, Digest: make([]byte, 32)}
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		events, _, err := ReplayEventLog(raw, vals)
		if err != nil {
			return
		}
		for _, e := range events {
			checkPrintable(t, e.Data)
		}
	})
}

// FuzzDescribeEvent: event data is untrusted; its description is printable
// and at most maxEventText runes (and an ellipsis).
func FuzzDescribeEvent(f *testing.F) {
	for _, e := range uefiBoot("grub") {
		f.Add(e.typ, e.data)
	}
	f.Add(uint32(evEFIBootServicesApplication), []byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, typ uint32, data []byte) {
		checkPrintable(t, describeEvent(typ, data))
	})
}

func checkPrintable(t *testing.T, s string) {
	t.Helper()
	if !utf8.ValidString(s) || utf8.RuneCountInString(s) > maxEventText+1 {
		t.Fatalf("description %q: invalid or too long", s)
	}
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		t.Fatalf("description %q holds an unprintable rune", s)
	}
}
