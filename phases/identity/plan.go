package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"castellan/installer/pki"
)

// Action is what the identity phase must do for a node.
type Action string

// Actions, from cheapest to most invasive.
const (
	// ActionNone: the node holds the enrolled key and a current certificate.
	ActionNone Action = "none"
	// ActionRenew: same EK and key, but the certificate is missing on the
	// node, not the recorded one, or NeedsRenewal: a session re-certifies
	// the existing key (no new TPM object) and a new certificate is issued.
	ActionRenew Action = "renew"
	// ActionEnrol: no record, or the key is gone: a session creates what is
	// missing and a certificate is issued.
	ActionEnrol Action = "enrol"
	// ActionRefuse: the EK changed and no explicit re-enrolment was asked.
	ActionRefuse Action = "refuse"
)

// PlanInput is what the plan knows about one node.
type PlanInput struct {
	Policy Policy
	// Record is the state repo's record, nil before the first enrolment.
	Record *Record
	// Observation is the node's OpObserve answer (read-only).
	Observation *Observation
	Now         time.Time
}

// Decision is the plan for one node.
type Decision struct {
	Action Action
	// Reason says why, in the user's terms.
	Reason string
	// EKHash is the observed EK's hash: on a first enrolment without EK CA
	// certificates the plan shows it for confirmation, and the confirmed
	// value becomes Policy.PinnedEK.
	EKHash string
}

// Plan decides what to do for a node from its record and a read-only
// observation; it touches nothing. A changed EK returns ActionRefuse with an
// *EKChangedError (unless Policy.ReEnrol).
func Plan(in PlanInput) (Decision, error) {
	o, rec := in.Observation, in.Record
	if o == nil {
		return Decision{}, errors.New("no observation of the node")
	}
	var keyFP string
	d := Decision{}
	if in.Policy.Software {
		if len(o.SoftwarePublicKey) == 0 {
			return Decision{Action: ActionEnrol, Reason: "insecure-skip: no software key on the node yet"}, nil
		}
		pub, err := x509.ParsePKIXPublicKey(o.SoftwarePublicKey)
		if err != nil {
			return Decision{}, fmt.Errorf("node %s: software key: %w", in.Policy.Node, err)
		}
		if keyFP, err = pki.Fingerprint(pub); err != nil {
			return Decision{}, err
		}
	} else {
		if o.EK == nil {
			return Decision{}, fmt.Errorf("node %s: cannot read its TPM: %s (spec.identity.tpm: insecure-skip lets a node without a TPM through)", in.Policy.Node, o.TPMError)
		}
		h, err := ObservedEKHash(o.EK)
		if err != nil {
			return Decision{}, fmt.Errorf("node %s: %w", in.Policy.Node, err)
		}
		d.EKHash = h
		if rec != nil && rec.EKHash != "" && rec.EKHash != h {
			if !in.Policy.ReEnrol {
				d.Action, d.Reason = ActionRefuse, "the TPM's endorsement key changed"
				return d, &EKChangedError{Node: in.Policy.Node, Pinned: rec.EKHash, Presented: h}
			}
			d.Action, d.Reason = ActionEnrol, "explicit re-enrolment: new TPM "+h
			return d, nil
		}
		if len(o.KeyPublic) > 0 {
			pub, err := publicKey(o.KeyPublic)
			if err != nil {
				return Decision{}, fmt.Errorf("node %s: node key: %w", in.Policy.Node, err)
			}
			if keyFP, err = pki.Fingerprint(pub); err != nil {
				return Decision{}, err
			}
		}
	}
	switch {
	case rec == nil:
		d.Action, d.Reason = ActionEnrol, "not enrolled yet"
	case keyFP == "":
		d.Action, d.Reason = ActionEnrol, "the node key is gone from the node"
	case keyFP != rec.KeyFingerprint:
		d.Action, d.Reason = ActionEnrol, "the node holds another key than the enrolled one"
	case len(o.Certificate) == 0:
		d.Action, d.Reason = ActionRenew, "no certificate on the node"
	default:
		cert, err := x509.ParseCertificate(o.Certificate)
		switch {
		case err != nil:
			d.Action, d.Reason = ActionRenew, "the node's certificate does not parse"
		case cert.SerialNumber.String() != rec.CertSerial:
			d.Action, d.Reason = ActionRenew, "the node's certificate is not the recorded one"
		case pki.NeedsRenewal(cert, in.Now):
			d.Action, d.Reason = ActionRenew, "certificate expires on "+cert.NotAfter.Format(time.DateOnly)
		default:
			d.Action, d.Reason = ActionNone, "enrolled, certificate valid until "+cert.NotAfter.Format(time.DateOnly)
		}
	}
	return d, nil
}
