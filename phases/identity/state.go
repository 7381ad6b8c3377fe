package identity

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"time"

	"castellan/installer/engine"
	"castellan/installer/pki"
)

// What the phase keeps in the state repo, under data/identity/ (plain text,
// public) and secrets/identity/ (age-encrypted).
const (
	// DataRootCA and DataIntermediateCA are the CA certificates (PEM); their
	// keys are the secrets pki.RootSecret and pki.IntermediateSecret.
	DataRootCA         = "ca/root.pem"
	DataIntermediateCA = "ca/intermediate.pem"
	// DataNodes holds each enrolled node's Record (JSON, by node name).
	DataNodes = "nodes.json"
	// DataRevoked lists the revoked certificates (JSON) the CRL is made of.
	DataRevoked = "revoked.json"
	// DataCRL is the current revocation list, signed by the root (PEM).
	DataCRL = "crl.pem"
)

// nodesFile is DataNodes.
type nodesFile struct {
	Nodes map[string]*Record `json:"nodes"`
}

// Revoked is one revoked node certificate, as DataRevoked keeps it.
type Revoked struct {
	Node   string `json:"node"`
	Serial string `json:"serial"`
	// Reason is the RFC 5280 CRLReason code (4 superseded: the node's key
	// was replaced; 5 cessationOfOperation: the node left the profile).
	Reason    int       `json:"reason"`
	RevokedAt time.Time `json:"revokedAt"`
	// NotAfter is the certificate's expiry: an expired certificate leaves
	// the list (RFC 5280 section 3.3 allows it; it verifies nowhere anyway).
	NotAfter time.Time `json:"notAfter"`
	// Why says it in words.
	Why string `json:"why"`
}

type revokedFile struct {
	Revoked []Revoked `json:"revoked"`
}

// stored is what the phase read from the state repo.
type stored struct {
	root, intermediate *x509.Certificate
	nodes              map[string]*Record
	revoked            []Revoked
	crl                *pki.RevocationList
}

// loadStored reads the phase's data. Everything is public; nothing here
// needs the age identity.
func loadStored(v *engine.View) (*stored, error) {
	st := &stored{nodes: map[string]*Record{}}
	var err error
	if st.root, err = readCertData(v, DataRootCA); err != nil {
		return nil, err
	}
	if st.intermediate, err = readCertData(v, DataIntermediateCA); err != nil {
		return nil, err
	}
	if data, ok, err := v.Data(DataNodes); err != nil {
		return nil, err
	} else if ok {
		var f nodesFile
		if err := json.Unmarshal(data, &f); err != nil {
			return nil, fmt.Errorf("state repo data/identity/%s: %w", DataNodes, err)
		}
		for name, r := range f.Nodes {
			if r == nil || r.Node != name {
				return nil, fmt.Errorf("state repo data/identity/%s: the record under %q is not that node's", DataNodes, name)
			}
			st.nodes[name] = r
		}
	}
	if data, ok, err := v.Data(DataRevoked); err != nil {
		return nil, err
	} else if ok {
		var f revokedFile
		if err := json.Unmarshal(data, &f); err != nil {
			return nil, fmt.Errorf("state repo data/identity/%s: %w", DataRevoked, err)
		}
		st.revoked = f.Revoked
	}
	if data, ok, err := v.Data(DataCRL); err != nil {
		return nil, err
	} else if ok {
		if st.root == nil {
			return nil, fmt.Errorf("state repo: data/identity/%s exists without data/identity/%s", DataCRL, DataRootCA)
		}
		if st.crl, err = pki.ParseCRL(data, st.root); err != nil {
			return nil, fmt.Errorf("state repo data/identity/%s: %w", DataCRL, err)
		}
	}
	return st, nil
}

func readCertData(v *engine.View, name string) (*x509.Certificate, error) {
	data, ok, err := v.Data(name)
	if err != nil || !ok {
		return nil, err
	}
	c, err := pki.ParseCertificatePEM(data)
	if err != nil {
		return nil, fmt.Errorf("state repo data/identity/%s: %w", name, err)
	}
	return c, nil
}

func putJSON(r *engine.Run, name string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return r.PutData(name, append(data, '\n'))
}

// saveNodes writes DataNodes.
func (st *stored) saveNodes(r *engine.Run) error {
	return putJSON(r, DataNodes, nodesFile{Nodes: st.nodes})
}

// saveRevoked writes DataRevoked, sorted by node then serial.
func (st *stored) saveRevoked(r *engine.Run) error {
	sort.Slice(st.revoked, func(i, j int) bool {
		a, b := st.revoked[i], st.revoked[j]
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		return a.Serial < b.Serial
	})
	return putJSON(r, DataRevoked, revokedFile{Revoked: st.revoked})
}

// revoke adds rec's certificate to the revoked list unless it is there
// already (a rerun after a crash revokes nothing twice). It reports whether
// the list changed.
func (st *stored) revoke(rec *Record, reason int, now time.Time, why string) bool {
	for _, r := range st.revoked {
		if r.Serial == rec.CertSerial {
			return false
		}
	}
	st.revoked = append(st.revoked, Revoked{Node: rec.Node, Serial: rec.CertSerial, Reason: reason, RevokedAt: now.UTC(), NotAfter: rec.CertNotAfter, Why: why})
	return true
}

// revocations are the CRL entries at now: every revoked certificate not yet
// expired.
func (st *stored) revocations(now time.Time) ([]pki.Revocation, error) {
	var out []pki.Revocation
	for _, r := range st.revoked {
		if !r.NotAfter.IsZero() && now.After(r.NotAfter) {
			continue
		}
		serial, ok := new(big.Int).SetString(r.Serial, 10)
		if !ok {
			return nil, fmt.Errorf("state repo data/identity/%s: serial %q of node %s is not a number", DataRevoked, r.Serial, r.Node)
		}
		out = append(out, pki.Revocation{Serial: serial, RevokedAt: r.RevokedAt, Reason: r.Reason})
	}
	return out, nil
}

// crlStale reports whether the revocation list must be signed again at now
// although nothing was revoked: there is none yet, or less than a third of
// its validity is left (castellan re-signs it on the first apply after
// that; a verifier refuses every peer once it expired).
func (st *stored) crlStale(now time.Time) bool {
	if st.crl == nil {
		return true
	}
	life := st.crl.NextUpdate.Sub(st.crl.ThisUpdate)
	return !now.Before(st.crl.NextUpdate.Add(-life / 3))
}

// runSecrets maps pki.Secrets onto the run's secrets: pki's "pki/root-ca"
// is stored age-encrypted as secrets/identity/pki/root-ca.age.
type runSecrets struct{ r *engine.Run }

func (s runSecrets) Get(name string) ([]byte, bool, error) { return s.r.Secret(name) }
func (s runSecrets) Put(name string, value []byte) error   { return s.r.PutSecret(name, value) }

// errNoRootKey is returned when the state repo lost the root CA's key.
var errNoRootKey = errors.New("the state repo holds the cluster root CA certificate (data/identity/" + DataRootCA +
	") but not its key (secrets/identity/" + pki.RootSecret + ".age): restore the key from the state repo's history; " +
	"castellan never replaces a cluster's root CA on its own, since every node certificate chains to it")
