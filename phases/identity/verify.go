package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"castellan/installer/engine"
	"castellan/installer/nodeid"
	"castellan/installer/pki"
	"castellan/installer/profile"
)

// Checks the phase adds to castellan verify (engine.Verifier).
const (
	CheckCertificate = "certificate" // the node's certificate: the recorded one, valid, chains to the root, not revoked
	CheckKey         = "key"         // the node key: TPM-resident, certified now by the enrolled AK
	CheckBootState   = "boot-state"  // the quote of this run against the pinned baseline
	CheckTrust       = "trust"       // cluster: the root CA and the revocation list
)

var _ engine.Verifier = Phase{}

// Verify implements engine.Verifier: what the plan does not say of an
// enrolled node: its certificate is the recorded one, valid now, chains to
// the cluster root and is not on the revocation list (unless the plan
// changes it: that is drift already); its key is TPM-resident (certified
// by the enrolled AK over this run's nonce, in the quote the plan
// verified) or a software key (a warning); its boot state matched the
// pinned baseline. Cluster-wide: the root CA and the revocation list are
// valid. Nodes whose plan failed are reported by the engine from the plan.
// It reads the run's observation and the state repo only.
func (ph Phase) Verify(ctx context.Context, v *engine.View, p engine.Plan) ([]engine.Check, error) {
	now := ph.now()
	st, err := loadStored(v)
	if err != nil {
		return nil, err
	}
	var out []engine.Check
	var trust *pki.Verifier
	if st.root != nil && st.crl != nil {
		trust = &pki.Verifier{Cluster: v.Profile().Metadata.Name, Root: st.root, CRL: st.crl, Now: func() time.Time { return now },
			RequireTPM: v.Profile().Spec.Identity.TPM != profile.TPMInsecureSkip}
		if len(p.ForNode("")) == 0 {
			out = append(out, check("", CheckTrust, engine.CheckOK, fmt.Sprintf("root CA valid until %s; revocation list number %s (%d revoked) valid until %s",
				st.root.NotAfter.Format(time.DateOnly), st.crl.Number, st.crl.Len(), st.crl.NextUpdate.Format(time.DateOnly))))
		}
	}
	for _, node := range v.NodeNames() {
		rec := st.nodes[node]
		bs, attested := engine.Lookup(v, nodeid.BootStateKey, node)
		if rec == nil || !attested {
			continue // not enrolled, or the plan failed for it: the engine reports why
		}
		// A planned change (a renewal, a boot state to pin) is the
		// engine's drift check already.
		if len(p.ForNode(node)) == 0 {
			obs, err := engine.Call(ctx, v, node, OpObserve, ObserveRequest{})
			if err != nil {
				out = append(out, check(node, CheckCertificate, engine.CheckFailed, err.Error()))
				continue
			}
			out = append(out, certificateCheck(node, rec, obs.Certificate, trust, now))
		}
		switch rec.Protection {
		case pki.TPMResident:
			out = append(out, check(node, CheckKey, engine.CheckOK, fmt.Sprintf("TPM-resident key %s, certified by the enrolled attestation key %s over this run's nonce", short(rec.KeyFingerprint), short(rec.AKName))))
		default:
			out = append(out, check(node, CheckKey, engine.CheckWarning, fmt.Sprintf("SOFTWARE key %s (spec.identity.tpm: insecure-skip): not bound to hardware", short(rec.KeyFingerprint))))
		}
		switch bs.Result {
		case "matched":
			msg := fmt.Sprintf("PCRs %s match the baseline", pcrList(bs.PCRs))
			if b, err := readBaseline(v, node); err == nil && b != nil {
				msg += fmt.Sprintf(" pinned by run %s (%s, %s)", b.Run, b.Pinned.Format(time.DateOnly), b.How)
			}
			out = append(out, check(node, CheckBootState, engine.CheckOK, msg+"; quoted by the enrolled AK over this run's nonce"))
		case "not-attested":
			out = append(out, check(node, CheckBootState, engine.CheckWarning, "not attested: the node has a software key and no TPM to quote (insecure-skip)"))
		}
	}
	return out, nil
}

func check(node, name string, st engine.CheckStatus, msg string) engine.Check {
	return engine.Check{Node: node, Name: name, Status: st, Message: msg}
}

// certificateCheck checks the certificate on the node against the record
// and the cluster's trust.
func certificateCheck(node string, rec *Record, der []byte, trust *pki.Verifier, now time.Time) engine.Check {
	drift := func(format string, a ...any) engine.Check {
		return check(node, CheckCertificate, engine.CheckDrift, fmt.Sprintf(format, a...))
	}
	if len(der) == 0 {
		return drift("no certificate on the node (%s)", CertFile)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return drift("the node's certificate does not parse: %v", err)
	}
	if cert.SerialNumber.String() != rec.CertSerial {
		return drift("the node holds certificate serial %s, the state repo records %s", cert.SerialNumber, rec.CertSerial)
	}
	if trust == nil {
		return check(node, CheckCertificate, engine.CheckFailed, "the state repo holds no root CA or revocation list to check it with")
	}
	if _, err := trust.VerifyNode(cert, x509.ExtKeyUsageClientAuth); err != nil {
		if errors.Is(err, pki.ErrRevoked) {
			return drift("serial %s is REVOKED: %v", rec.CertSerial, err)
		}
		return drift("serial %s does not verify: %v", rec.CertSerial, err)
	}
	days := int(cert.NotAfter.Sub(now).Hours() / 24)
	return check(node, CheckCertificate, engine.CheckOK, fmt.Sprintf("serial %s valid until %s (%d days), chains to the cluster root, not revoked", rec.CertSerial, cert.NotAfter.Format(time.DateOnly), days))
}
