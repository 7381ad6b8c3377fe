package mesh

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"castellan/installer/pki"
)

func TestAllocate(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	sub := netip.MustParsePrefix("10.99.0.0/29") // .1 - .6 usable
	a1, err := Allocate(Allocation{}, sub, []string{"a", "b", "c"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(a1.Nodes); got != "map[a:10.99.0.1 b:10.99.0.2 c:10.99.0.3]" {
		t.Errorf("first allocation %s", got)
	}
	// Stable across reruns and profile order changes.
	a2, _ := Allocate(a1, sub, []string{"c", "b", "a"}, now)
	if fmt.Sprint(a2) != fmt.Sprint(a1) {
		t.Errorf("rerun changed %v -> %v", a1, a2)
	}
	// b leaves, d and e come: b's address is not reused while never-used ones remain.
	a3, _ := Allocate(a2, sub, []string{"a", "c", "d", "e"}, now.Add(time.Hour))
	if got := fmt.Sprint(a3.Nodes); got != "map[a:10.99.0.1 c:10.99.0.3 d:10.99.0.4 e:10.99.0.5]" {
		t.Errorf("after b left %s", got)
	}
	if len(a3.Released) != 1 || a3.Released[0].Node != "b" || a3.Released[0].Address.String() != "10.99.0.2" {
		t.Errorf("released %v", a3.Released)
	}
	// f takes .6 (the last never-used; .7 is the broadcast), then g gets b's old address.
	a4, _ := Allocate(a3, sub, []string{"a", "c", "d", "e", "f", "g"}, now.Add(2*time.Hour))
	if a4.Nodes["f"].String() != "10.99.0.6" || a4.Nodes["g"].String() != "10.99.0.2" || len(a4.Released) != 0 {
		t.Errorf("exhausted subnet: %v released %v", a4.Nodes, a4.Released)
	}
	if _, err := Allocate(a4, sub, []string{"a", "c", "d", "e", "f", "g", "h"}, now); err == nil || !strings.Contains(err.Error(), "no address left for node h") {
		t.Errorf("full subnet: %v", err)
	}
	if _, err := Allocate(a1, netip.MustParsePrefix("10.98.0.0/24"), []string{"a"}, now); err == nil || !strings.Contains(err.Error(), "does not renumber") {
		t.Errorf("subnet change: %v", err)
	}
}

func TestVerifyKey(t *testing.T) {
	now := time.Now()
	ca, err := pki.NewAuthority("lab", now)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(node string) (*ecdsa.PrivateKey, *x509.Certificate) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		c, err := ca.IssueNode(pki.NodeRequest{Cluster: "lab", Node: node, PublicKey: &k.PublicKey, Protection: pki.TPMResident}, now)
		if err != nil {
			t.Fatal(err)
		}
		return k, c
	}
	ka, ca1 := issue("a")
	_, cb := issue("b")
	crl, _ := ca.NewCRL([]pki.Revocation{{Serial: cb.SerialNumber, RevokedAt: now, Reason: 1}}, bigOne(), now, 0)
	v := &pki.Verifier{Cluster: "lab", Root: ca.Root.Cert, CRL: crl, RequireTPM: true}
	wk, _ := wgtypes.GeneratePrivateKey()
	pub := wk.PublicKey()
	sign := func(k *ecdsa.PrivateKey, data []byte) []byte {
		d := sha256.Sum256(data)
		s, _ := ecdsa.SignASN1(rand.Reader, k, d[:])
		return s
	}
	other, _ := wgtypes.GeneratePrivateKey()
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tests := []struct {
		name string
		cert *x509.Certificate
		node string
		key  wgtypes.Key
		sig  []byte
		want error
		msg  string
	}{
		{"good", ca1, "a", pub, sign(ka, KeyStatement("lab", "a", pub)), nil, ""},
		{"another key", ca1, "a", other.PublicKey(), sign(ka, KeyStatement("lab", "a", pub)), ErrBadSignature, ""},
		{"another signer", ca1, "a", pub, sign(stranger, KeyStatement("lab", "a", pub)), ErrBadSignature, ""},
		{"statement for another node", ca1, "a", pub, sign(ka, KeyStatement("lab", "b", pub)), ErrBadSignature, ""},
		{"statement for another cluster", ca1, "a", pub, sign(ka, KeyStatement("other", "a", pub)), ErrBadSignature, ""},
		{"someone else's certificate", ca1, "b", pub, sign(ka, KeyStatement("lab", "b", pub)), nil, "presents the certificate of node a"},
		{"revoked", cb, "b", pub, nil, pki.ErrRevoked, ""},
	}
	for _, tt := range tests {
		_, err := VerifyKey(v, tt.cert, tt.node, tt.key, tt.sig)
		switch {
		case tt.want == nil && tt.msg == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.want != nil && !errors.Is(err, tt.want):
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		case tt.msg != "" && (err == nil || !strings.Contains(err.Error(), tt.msg)):
			t.Errorf("%s: %v, want %q", tt.name, err, tt.msg)
		}
	}
}

func bigOne() *big.Int { return big.NewInt(1) }
