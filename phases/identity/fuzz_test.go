package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"reflect"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// forged is a self-consistent transcript made in software: a software
// "EK" (pinned), a software AK that certified its own creation, and a
// software key certified by it over a known nonce. Every check of Challenge
// passes on it (only activation, which needs a TPM, could tell), so any
// single mutation that Challenge still accepted would be a hole.
type forged struct {
	nonce  []byte
	ekHash string
	att    *Attestation
}

var (
	forgedOnce sync.Once
	forgedVal  forged
)

func makeForged(t testing.TB) forged {
	forgedOnce.Do(func() {
		ek, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := tpm2.RSAEKTemplate
		tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: ek.N.Bytes()})
		ekInfo := &EKInfo{Public: tpm2.Marshal(tmpl)}
		h, err := ObservedEKHash(ekInfo)
		if err != nil {
			t.Fatal(err)
		}
		ak, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		nonce := make([]byte, NonceSize)
		rand.Read(nonce)
		keyPub := tpmPublicOf(t, &key.PublicKey, keyTemplate)
		kAtt, kSig := forgeCertify(t, keyPub, nonce, ak)
		forgedVal = forged{nonce: nonce, ekHash: h, att: &Attestation{
			EK: ekInfo, AK: forgeAK(t, ak), Key: &KeyCertification{Public: keyPub, Attestation: kAtt, Signature: kSig},
		}}
	})
	return forgedVal
}

func sessionWithNonce(t testing.TB, nonce []byte, pinned string) *Session {
	s, err := NewSession(Policy{Cluster: "lab", Node: "n1", PinnedEK: pinned})
	if err != nil {
		t.Fatal(err)
	}
	s.nonce = nonce
	return s
}

// fields returns pointers to every byte field of an attestation.
func fields(a *Attestation) []*[]byte {
	return []*[]byte{&a.EK.Public, &a.AK.Public, &a.AK.CreateData, &a.AK.CreateAttestation, &a.AK.CreateSignature, &a.Key.Public, &a.Key.Attestation, &a.Key.Signature}
}

func clone(t testing.TB, a *Attestation) *Attestation {
	data, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	b, err := DecodeAttestation(data)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestForgedTranscriptPassesEveryCheckButActivation(t *testing.T) {
	f := makeForged(t)
	if _, err := sessionWithNonce(t, f.nonce, f.ekHash).Challenge(clone(t, f.att)); err != nil {
		t.Fatalf("the software transcript should pass every check before activation: %v", err)
	}
}

// FuzzChallengeMutation: flipping any bits of any byte of any field, or
// truncating or extending a field, makes Challenge refuse the transcript.
func FuzzChallengeMutation(f *testing.F) {
	for i := range 8 {
		f.Add(uint8(i), uint16(0), uint8(1), uint8(0))
		f.Add(uint8(i), uint16(40), uint8(0x80), uint8(1))
		f.Add(uint8(i), uint16(3), uint8(0), uint8(2))
	}
	f.Fuzz(func(t *testing.T, field uint8, off uint16, xor uint8, mode uint8) {
		fx := makeForged(t)
		a := clone(t, fx.att)
		p := fields(a)[int(field)%8]
		switch mode % 3 {
		case 0: // flip bits
			if xor == 0 || len(*p) == 0 {
				return
			}
			(*p)[int(off)%len(*p)] ^= xor
		case 1: // truncate
			if len(*p) == 0 {
				return
			}
			*p = (*p)[:int(off)%len(*p)]
		case 2: // extend
			*p = append(*p, xor)
		}
		if len(*p) == 0 {
			return // an empty field is refused by the decoder already
		}
		if _, err := sessionWithNonce(t, fx.nonce, fx.ekHash).Challenge(a); err == nil {
			t.Fatalf("mutated transcript accepted (field %d, offset %d, xor %#x, mode %d)", field%8, off, xor, mode%3)
		}
	})
}

// FuzzDecodeAttestation: whatever a node sends, decoding never panics;
// what decodes respects the bounds and re-encodes to an equal value; and a
// fresh session never accepts it (it has another nonce).
func FuzzDecodeAttestation(f *testing.F) {
	fx := makeForged(f)
	seed, _ := json.Marshal(fx.att)
	f.Add(seed)
	f.Add([]byte(`{"software":{"publicKey":"AA==","signature":"AA=="}}`))
	f.Add([]byte(`{"ek":{"public":"AA=="},"ak":{},"key":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := DecodeAttestation(data)
		if err != nil {
			return
		}
		if len(data) > maxMessage {
			t.Fatal("accepted an oversized message")
		}
		if a.Software == nil {
			for _, p := range fields(a) {
				if len(*p) == 0 || len(*p) > maxTPMStruct {
					t.Fatalf("field of %d bytes accepted", len(*p))
				}
			}
		}
		again, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		b, err := DecodeAttestation(again)
		if err != nil || !reflect.DeepEqual(a, b) {
			t.Fatalf("re-encoding changed the value: %v", err)
		}
		s := sessionWithNonce(t, make([]byte, NonceSize), fx.ekHash)
		if _, err := s.Challenge(a); err == nil {
			t.Fatal("a session accepted an attestation made over another nonce")
		}
		s, err = NewSession(Policy{Cluster: "lab", Node: "n1", Software: true})
		if err != nil {
			t.Fatal(err)
		}
		s.nonce = make([]byte, NonceSize)
		if _, err := s.FinishSoftware(a); err == nil {
			t.Fatal("a software proof over another nonce was accepted")
		}
	})
}

// FuzzDecodeNodeMessages: the other decoders never panic and what they
// accept respects their bounds.
func FuzzDecodeNodeMessages(f *testing.F) {
	f.Add([]byte(`{"secret":"AAAA"}`))
	f.Add([]byte(`{"signature":"MEUCIQD/////////////////////////////////////////AiA="}`))
	f.Add([]byte(`{"ek":{"public":"AA=="},"keyPublic":"AA==","commands":{"TPM2_Load":2}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if r, err := DecodeActivateResponse(data); err == nil && (len(r.Secret) == 0 || len(r.Secret) > 64) {
			t.Fatalf("secret of %d bytes accepted", len(r.Secret))
		}
		if r, err := DecodeSignResponse(data); err == nil && (len(r.Signature) < 8 || len(r.Signature) > 256) {
			t.Fatalf("signature of %d bytes accepted", len(r.Signature))
		}
		if o, err := DecodeObservation(data); err == nil {
			if len(o.Certificate) > maxCertificate || len(o.KeyPublic) > maxTPMStruct || len(o.Commands) > maxCommandNames {
				t.Fatal("observation over its bounds accepted")
			}
			// Planning on any observation never panics.
			_, _ = Plan(PlanInput{Policy: Policy{Cluster: "lab", Node: "n1"}, Observation: o, Record: &Record{EKHash: "sha256:00", KeyFingerprint: "00"}})
		}
	})
}
