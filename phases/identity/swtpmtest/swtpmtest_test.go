package swtpmtest

import (
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// TestManufacturedTPM checks what the helper promises: a running TPM with an
// RSA EK certificate in NV signed by the local CA, and no transient object.
func TestManufacturedTPM(t *testing.T) {
	ca := NewLocalCA(t)
	tp := New(t, ca)
	tpm := tp.Open(t)
	if got := Transients(t, tpm); len(got) != 0 {
		t.Fatalf("transients at start: %v", got)
	}
	nv := Handles(t, tpm, 0x01000000)
	want := map[tpm2.TPMHandle]bool{0x01c00002: false, 0x01c00016: false, 0x01c08000: false}
	for _, h := range nv {
		if _, ok := want[h]; ok {
			want[h] = true
		}
	}
	for h, ok := range want {
		if !ok {
			t.Errorf("NV index %#x missing; have %v", uint32(h), nv)
		}
	}
	if certs := ca.Certificates(t); len(certs) != 2 {
		t.Fatalf("local CA certificates: %d", len(certs))
	}
	if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
}
