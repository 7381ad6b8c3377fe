package pki

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"time"
)

// DefaultCRLValidity is how long a revocation list is valid (nextUpdate -
// thisUpdate) when the caller passes zero. castellan publishes a new list on
// every apply; a verifier refuses every peer once the list it holds expired.
const DefaultCRLValidity = 365 * 24 * time.Hour

// MaxCRLSize bounds what ParseCRL reads (a list of a few thousand entries is
// well under it).
const MaxCRLSize = 1 << 20

// Revocation is one revoked certificate.
type Revocation struct {
	Serial    *big.Int
	RevokedAt time.Time
	// Reason is an RFC 5280 section 5.3.1 CRLReason code (0 unspecified,
	// 1 keyCompromise, 4 superseded, 5 cessationOfOperation...).
	Reason int
}

// Reason codes castellan uses (RFC 5280 section 5.3.1).
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
)

// RevocationList is a parsed, signature-checked CRL.
type RevocationList struct {
	Number     *big.Int
	ThisUpdate time.Time
	NextUpdate time.Time
	// DER is the list as signed, to publish or store.
	DER     []byte
	revoked map[string]time.Time
}

// Revoked reports whether serial is on the list, and since when.
func (l *RevocationList) Revoked(serial *big.Int) (time.Time, bool) {
	if l == nil || serial == nil {
		return time.Time{}, false
	}
	t, ok := l.revoked[serial.String()]
	return t, ok
}

// Len is the number of revoked serials.
func (l *RevocationList) Len() int { return len(l.revoked) }

// NewCRL signs an RFC 5280 version 2 CRL with the root CA: the given
// revocations (sorted by serial, duplicates refused), CRL number number
// (must grow from one list to the next), thisUpdate now and nextUpdate now +
// validity (DefaultCRLValidity when 0). It returns the parsed list with its
// DER.
func (a *Authority) NewCRL(revoked []Revocation, number *big.Int, now time.Time, validity time.Duration) (*RevocationList, error) {
	if number == nil || number.Sign() < 0 || number.BitLen() > 159 {
		return nil, errors.New("pki: CRL number must be a non-negative integer of at most 20 octets (RFC 5280 section 5.2.3)")
	}
	if validity == 0 {
		validity = DefaultCRLValidity
	}
	entries := make([]x509.RevocationListEntry, 0, len(revoked))
	seen := map[string]bool{}
	for _, r := range revoked {
		if r.Serial == nil || r.Serial.Sign() <= 0 {
			return nil, errors.New("pki: revoked serial must be positive")
		}
		if seen[r.Serial.String()] {
			return nil, fmt.Errorf("pki: serial %s revoked twice", r.Serial)
		}
		seen[r.Serial.String()] = true
		if r.Reason < 0 || r.Reason > 10 || r.Reason == 7 {
			return nil, fmt.Errorf("pki: serial %s: invalid CRL reason code %d", r.Serial, r.Reason)
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: r.Serial, RevocationTime: r.RevokedAt.UTC(), ReasonCode: r.Reason})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].SerialNumber.Cmp(entries[j].SerialNumber) < 0 })
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		RevokedCertificateEntries: entries,
		Number:                    number,
		ThisUpdate:                now.UTC(),
		NextUpdate:                now.Add(validity).UTC(),
	}, a.Root.Cert, a.Root.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: signing the revocation list: %w", err)
	}
	return ParseCRL(der, a.Root.Cert)
}

// ParseCRL parses a DER (or PEM "X509 CRL") revocation list and checks its
// signature against issuer (RFC 5280 section 5; the issuer must have the
// cRLSign key usage). It does not judge freshness: Verifier does, against
// its clock.
func ParseCRL(data []byte, issuer *x509.Certificate) (*RevocationList, error) {
	if len(data) > MaxCRLSize {
		return nil, fmt.Errorf("pki: revocation list of %d bytes, more than %d", len(data), MaxCRLSize)
	}
	if b, _ := pem.Decode(data); b != nil {
		if b.Type != "X509 CRL" {
			return nil, fmt.Errorf("pki: PEM block %q, want X509 CRL", b.Type)
		}
		data = b.Bytes
	}
	crl, err := x509.ParseRevocationList(data)
	if err != nil {
		return nil, fmt.Errorf("pki: parsing the revocation list: %w", err)
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		return nil, fmt.Errorf("pki: revocation list not signed by %q: %w", issuer.Subject.CommonName, err)
	}
	if crl.Number == nil {
		return nil, errors.New("pki: revocation list has no CRL number")
	}
	if !crl.NextUpdate.After(crl.ThisUpdate) {
		return nil, errors.New("pki: revocation list's nextUpdate is not after its thisUpdate")
	}
	l := &RevocationList{Number: crl.Number, ThisUpdate: crl.ThisUpdate, NextUpdate: crl.NextUpdate, DER: data, revoked: map[string]time.Time{}}
	for _, e := range crl.RevokedCertificateEntries {
		l.revoked[e.SerialNumber.String()] = e.RevocationTime
	}
	return l, nil
}

// PEM returns the list as a PEM "X509 CRL" block (public: commit it).
func (l *RevocationList) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: l.DER})
}
