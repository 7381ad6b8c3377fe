package identity

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/localfile"
	"castellan/installer/nodeid"
	"castellan/installer/pki"
	"castellan/installer/profile"
)

// Name of the phase.
const Name = nodeid.Phase

// Actions of the phase's changes, besides ActionEnrol (Target "ek HASH",
// the EK the session will accept, or "software-key") and ActionRenew
// (Target "key FINGERPRINT"), which Plan decides per node. Node changes
// carry the node; CA and revocation list changes are cluster-wide.
const (
	// ActionCreateCA creates the cluster root CA and the intermediate CA
	// (first apply). Target "root".
	ActionCreateCA Action = "create-ca"
	// ActionRenewIntermediate replaces the intermediate CA that has less
	// than a third of its life left. Target: its serial.
	ActionRenewIntermediate Action = "renew-intermediate-ca"
	// ActionReEnrol is an explicit re-enrolment (--re-enrol NODE): the old
	// identity is removed from the node, a new one enrolled, the old
	// certificate revoked. Target "ek HASH" (the new EK) or "software-key".
	ActionReEnrol Action = "re-enrol"
	// ActionRevoke revokes the certificate of a node that left the
	// profile. Target "NODE serial SERIAL".
	ActionRevoke Action = "revoke"
	// ActionPublishCRL signs and commits a new revocation list. Target
	// "crl".
	ActionPublishCRL Action = "publish-crl"
)

// change builds a change of the phase.
func change(node string, a Action, target, summary string, data any) engine.Change {
	return engine.NewChange(node, string(a), target, summary, data)
}

// Steps the phase reports.
const (
	StepIdentity = "identity" // planning: observe the node's identity
	StepEnrol    = "enrol"    // applying: the enrolment session
)

// Phase is the identity phase: every node gets a key that cannot leave its
// TPM, proven TPM-resident, certified by the cluster root CA.
type Phase struct {
	// Now is the clock (nil: time.Now): certificate validity, renewal,
	// revocation list.
	Now func() time.Time
	// Validity of node certificates (0: pki.DefaultNodeValidity); renewal
	// comes when a third of it is left.
	Validity time.Duration
}

// Name implements engine.Phase.
func (Phase) Name() string { return Name }

// Ops implements engine.Phase.
func (Phase) Ops() []agent.Handler { return ops() }

func (ph Phase) now() time.Time {
	if ph.Now != nil {
		return ph.Now()
	}
	return time.Now()
}

// Observe implements engine.Observer: the node's identity, read-only.
func (Phase) Observe(*engine.View, string) ([]agent.Request, error) {
	r, err := OpObserve.Request(ObserveRequest{})
	return []agent.Request{r}, err
}

// profileEKRoots reads spec.identity.ekCACertificates (nil when none are
// listed) as the profile's validation checked them: the CERTIFICATE blocks
// of each PEM file. Errors carry the field's file:line:column (a file that
// changed since the profile was loaded).
func profileEKRoots(ctx context.Context, p *profile.Profile) (*x509.CertPool, error) {
	files := p.Spec.Identity.EKCACertificates
	if len(files) == 0 {
		return nil, nil
	}
	pool := x509.NewCertPool()
	for i, f := range files {
		field := fmt.Sprintf("spec.identity.ekCACertificates[%d]", i)
		path := p.Resolve(f)
		data, err := localfile.Read(ctx, path, profile.MaxCertificateFileSize)
		if err != nil {
			return nil, p.Errorf(field, "cannot read certificate file %v", err)
		}
		n := 0
		for rest := data; ; {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, p.Errorf(field, "%s: certificate %d does not parse: %v", path, n+1, err)
			}
			pool.AddCert(c)
			n++
		}
		if n == 0 {
			return nil, p.Errorf(field, "%s holds no PEM certificate", path)
		}
	}
	return pool, nil
}

// changeData is what Apply needs of a node change.
type changeData struct {
	// EKHash is the EK the change is for: the session accepts no other
	// (what makes a confirmed plan hold for that TPM only).
	EKHash string `json:"ekHash,omitempty"`
	// Software: spec.identity.tpm is insecure-skip and the node has no
	// usable TPM.
	Software bool `json:"software,omitempty"`
	// Reset removes the node's old identity first (re-enrolment).
	Reset bool `json:"reset,omitempty"`
	// PreviousEKHash is the EK a re-enrolment replaces.
	PreviousEKHash string `json:"previousEkHash,omitempty"`
	// KeyFingerprint is the key a renewal re-certifies.
	KeyFingerprint string `json:"keyFingerprint,omitempty"`
	// Deferred: the agent was not on the node when planning.
	Deferred bool `json:"deferred,omitempty"`
}

// revokeData is what Apply needs of a revocation.
type revokeData struct {
	Node   string `json:"node"`
	Serial string `json:"serial"`
}

// Plan implements engine.Phase. Per targeted node: nothing, a renewal, an
// enrolment or an explicit re-enrolment; a node whose TPM endorsement key
// changed without --re-enrol fails the plan (*EKChangedError). Cluster-wide:
// the CAs on the first apply, the revocation of nodes no longer in the
// profile (whether targeted or not), and a new revocation list when it
// changes or gets old.
func (ph Phase) Plan(ctx context.Context, v *engine.View) (engine.Plan, error) {
	var plan engine.Plan
	prof := v.Profile()
	now := ph.now()
	roots, err := profileEKRoots(ctx, prof)
	if err != nil {
		return plan, err
	}
	st, err := loadStored(v)
	if err != nil {
		return plan, err
	}
	reEnrol, err := engine.InputOf(v, nodeid.ReEnrol)
	if err != nil {
		return plan, err
	}

	switch {
	case st.root == nil:
		plan.Changes = append(plan.Changes, change("", ActionCreateCA, "root",
			fmt.Sprintf("create the cluster root CA and its intermediate CA for cluster %s (ECDSA P-256; keys kept only age-encrypted in the state repo)", prof.Metadata.Name), nil))
	case pki.NeedsRenewal(st.root, now):
		return plan, fmt.Errorf("the cluster root CA expires on %s (less than a third of its life left): root rotation is a manual step, see the README", st.root.NotAfter.Format(time.DateOnly))
	case st.intermediate != nil && pki.NeedsRenewal(st.intermediate, now):
		plan.Changes = append(plan.Changes, change("", ActionRenewIntermediate, st.intermediate.SerialNumber.String(),
			fmt.Sprintf("replace the in-cluster intermediate CA (expires %s) with a new one signed by the same root", st.intermediate.NotAfter.Format(time.DateOnly)), nil))
	}

	nodes := v.NodeNames()
	perNode := make([][]engine.Change, len(nodes))
	err = v.ForEachNode(ctx, nodes, StepIdentity, func(ctx context.Context, node string) error {
		cs, err := ph.planNode(ctx, v, node, st, roots != nil, slices.Contains(reEnrol, node), now)
		perNode[slices.Index(nodes, node)] = cs
		return err
	})
	for _, cs := range perNode {
		plan.Changes = append(plan.Changes, cs...)
	}
	if err != nil {
		return plan, err
	}

	replaced := false
	for _, c := range plan.Changes {
		if (Action(c.Action) == ActionEnrol || Action(c.Action) == ActionReEnrol) && st.nodes[c.Node] != nil {
			replaced = true // the node's old certificate will be revoked
		}
	}
	inProfile := map[string]bool{}
	for _, n := range prof.Spec.Nodes {
		inProfile[n.Name] = true
	}
	for _, name := range sortedKeys(st.nodes) {
		if inProfile[name] {
			continue
		}
		rec := st.nodes[name]
		plan.Changes = append(plan.Changes, change("", ActionRevoke, name+" serial "+rec.CertSerial,
			fmt.Sprintf("revoke the certificate of node %s (serial %s): it is no longer in the profile", name, rec.CertSerial),
			revokeData{Node: name, Serial: rec.CertSerial}))
		replaced = true
	}
	if replaced || st.crlStale(now) {
		why := "publish the revocation list"
		switch {
		case st.crl == nil:
			why = "publish the cluster's first revocation list (signed by the root CA, committed to the state repo)"
		case replaced:
			why = "publish a new revocation list with the revoked certificates"
		default:
			why = fmt.Sprintf("sign the revocation list again (it expires on %s)", st.crl.NextUpdate.Format(time.DateOnly))
		}
		plan.Changes = append(plan.Changes, change("", ActionPublishCRL, "crl", why, nil))
	}
	if prof.Spec.Identity.TPM == profile.TPMInsecureSkip {
		plan.Notes = append(plan.Notes, "spec.identity.tpm is insecure-skip: a node without a usable TPM gets a software key, marked software-key in its certificate and in the run record")
	}
	return plan, ph.publishStored(v, st)
}

// publishStored publishes what the state repo holds: the trust anchors, and
// the certificate of every node of the profile that the targeted part of
// this plan did not publish (nodes not targeted, as recorded).
func (ph Phase) publishStored(v *engine.View, st *stored) error {
	prof := v.Profile()
	if st.root != nil && st.crl != nil {
		t := nodeid.Trust{Cluster: prof.Metadata.Name, Root: st.root, CRL: st.crl, RequireTPM: prof.Spec.Identity.TPM != profile.TPMInsecureSkip}
		if err := engine.Publish(v, nodeid.TrustKey, "", t); err != nil {
			return err
		}
	}
	for _, n := range prof.Spec.Nodes {
		if _, targeted := v.Node(n.Name); targeted {
			continue
		}
		rec := st.nodes[n.Name]
		if rec == nil {
			continue
		}
		cert, err := x509.ParseCertificate(rec.Certificate)
		if err != nil {
			return fmt.Errorf("state repo data/identity/%s: certificate of node %s: %w", DataNodes, n.Name, err)
		}
		if err := engine.Publish(v, nodeid.CertificateKey, n.Name, nodeid.Certificate{Cert: cert, Protection: rec.Protection}); err != nil {
			return err
		}
	}
	return nil
}

// planNode plans one targeted node.
func (ph Phase) planNode(ctx context.Context, v *engine.View, node string, st *stored, ekCA, reEnrol bool, now time.Time) ([]engine.Change, error) {
	prof := v.Profile()
	insecure := prof.Spec.Identity.TPM == profile.TPMInsecureSkip
	ag, err := v.Agent(ctx, node)
	if err != nil {
		return nil, err
	}
	rec := st.nodes[node]
	if !ag.Installed {
		how := "its EK is pinned when it is enrolled"
		if ekCA {
			how = "its EK must chain to spec.identity.ekCACertificates, and is pinned"
		}
		summary := fmt.Sprintf("enrol once the castellan agent is installed (until then its TPM cannot be read): %s; to see the EK before it is pinned, run `castellan apply --only preflight` first", how)
		return []engine.Change{change(node, ActionEnrol, "", summary, changeData{Deferred: true})}, nil
	}
	obs, err := engine.Call(ctx, v, node, OpObserve, ObserveRequest{})
	if err != nil {
		return nil, fmt.Errorf("observing the node's identity: %w", err)
	}
	software := insecure && obs.EK == nil
	if rec != nil && rec.Protection == pki.TPMResident && software && !reEnrol {
		return nil, fmt.Errorf("node %s was enrolled with a TPM-resident key, and its TPM cannot be read now (%s). castellan does not fall back to a software key on its own: fix the TPM, or re-enrol the node explicitly (castellan apply --re-enrol %s)", node, obs.TPMError, node)
	}
	d, err := Plan(PlanInput{Policy: Policy{Cluster: prof.Metadata.Name, Node: node, Software: software, ReEnrol: reEnrol}, Record: rec, Observation: &obs, Now: now})
	if err != nil {
		return nil, err
	}
	action := d.Action
	if reEnrol && rec != nil {
		action = ActionReEnrol
	}
	data := changeData{EKHash: d.EKHash, Software: software}
	target := "ek " + d.EKHash
	if software {
		target = "software-key"
	}
	var summary string
	switch action {
	case ActionNone:
		cert, err := x509.ParseCertificate(rec.Certificate)
		if err != nil {
			return nil, fmt.Errorf("state repo data/identity/%s: certificate of node %s: %w", DataNodes, node, err)
		}
		if err := engine.Publish(v, nodeid.CertificateKey, node, nodeid.Certificate{Cert: cert, Protection: rec.Protection}); err != nil {
			return nil, err
		}
		return nil, engine.Publish(v, nodeid.EnrolmentKey, node, enrolmentOf(rec, "none", ""))
	case ActionRenew:
		target = "key " + rec.KeyFingerprint
		data.KeyFingerprint = rec.KeyFingerprint
		data.EKHash = rec.EKHash
		summary = fmt.Sprintf("renew the node certificate (%s): the same key, certified again over a fresh nonce; no new TPM object", d.Reason)
		if software {
			summary = fmt.Sprintf("renew the node certificate (%s): the same software key (insecure-skip)", d.Reason)
		}
	case ActionEnrol:
		switch {
		case software:
			summary = fmt.Sprintf("enrol with a SOFTWARE key (spec.identity.tpm: insecure-skip; no usable TPM: %s): not bound to hardware, marked software-key in its certificate", obs.TPMError)
		case ekCA:
			summary = fmt.Sprintf("enrol (%s): create an attestation key and a node key in the TPM, prove them (credential activation against the EK, TPM2_Certify over a fresh nonce), issue a certificate; the EK %s must chain to spec.identity.ekCACertificates, and is pinned", d.Reason, d.EKHash)
		default:
			summary = fmt.Sprintf("enrol (%s): create an attestation key and a node key in the TPM, prove them (credential activation against the EK, TPM2_Certify over a fresh nonce), issue a certificate; no EK CA certificates are listed, so confirm that this node's TPM endorsement key is %s: it is pinned from now on", d.Reason, d.EKHash)
		}
		if rec != nil && rec.Protection == pki.SoftwareKey && !software {
			// The software key goes: a plaintext key of a revoked
			// certificate must not stay on the node.
			data.Reset = true
			summary = fmt.Sprintf("enrol the TPM the node now has (EK %s): a TPM-resident key replaces the software key, which is removed from the node and whose certificate is revoked", d.EKHash)
			if !ekCA {
				summary += "; confirm that this node's TPM endorsement key is " + d.EKHash
			}
		} else if rec != nil {
			summary += fmt.Sprintf("; its old certificate (serial %s) is revoked", rec.CertSerial)
		}
	case ActionReEnrol:
		data.Reset = true
		data.PreviousEKHash = rec.EKHash
		what := "EK " + d.EKHash
		switch {
		case software:
			what = "a new software key (insecure-skip)"
		case rec.EKHash == d.EKHash:
			what = "the same EK " + d.EKHash
		case rec.EKHash != "":
			what = fmt.Sprintf("EK %s (enrolled: %s)", d.EKHash, rec.EKHash)
		}
		summary = fmt.Sprintf("RE-ENROL (asked with --re-enrol): remove the node's old identity, enrol %s with a new attestation key and node key, revoke the old certificate (serial %s)", what, rec.CertSerial)
		if !software && !ekCA {
			summary += "; confirm that this node's TPM endorsement key is " + d.EKHash
		}
	}
	return []engine.Change{change(node, action, target, summary, data)}, nil
}

// enrolmentOf is the recorded output of a record.
func enrolmentOf(rec *Record, action, previousEK string) nodeid.Enrolment {
	return nodeid.Enrolment{
		Action: action, Protection: rec.Protection, EKHash: rec.EKHash, EKTrust: string(rec.EKTrust), PreviousEKHash: previousEK,
		AKName: rec.AKName, KeyFingerprint: rec.KeyFingerprint, CertSerial: rec.CertSerial, CertNotAfter: rec.CertNotAfter,
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Apply implements engine.Phase: the CAs first, then one enrolment session
// per node (in parallel), then revocations and the revocation list. Every
// step is safe to repeat: a record is stored before the certificate is
// installed, a certificate whose key is replaced is revoked (once), and a
// node left halfway is planned again by the next run.
func (ph Phase) Apply(ctx context.Context, r *engine.Run, p engine.Plan) error {
	now := ph.now()
	prof := r.Profile()
	roots, err := profileEKRoots(ctx, prof)
	if err != nil {
		return err
	}
	st, err := loadStored(r.View)
	if err != nil {
		return err
	}
	auth, err := ph.authority(r, st, now)
	if err != nil {
		return err
	}
	a := &applier{ph: ph, r: r, st: st, auth: auth, roots: roots, now: now}
	nodeErr := r.ForEachNode(ctx, p.Nodes(), StepEnrol, func(ctx context.Context, node string) error {
		for _, c := range p.ForNode(node) {
			if err := r.Checkpoint(); err != nil {
				return err
			}
			if err := a.enrol(ctx, node, c); err != nil {
				return err
			}
		}
		return nil
	})
	// Revocations and the list are published even when a node failed:
	// what the others did (a replaced key) must not stay trusted.
	return errors.Join(nodeErr, a.revocations(p))
}

// authority loads the cluster CAs (creating them on the first apply) and
// keeps their certificates in the state repo's data.
func (ph Phase) authority(r *engine.Run, st *stored, now time.Time) (*pki.Authority, error) {
	cluster := r.Profile().Metadata.Name
	if st.root != nil {
		if _, ok, err := r.Secret(pki.RootSecret); err != nil {
			return nil, fmt.Errorf("reading the cluster root CA: %w", err)
		} else if !ok {
			return nil, errNoRootKey
		}
	}
	auth, created, renewed, err := pki.LoadOrCreateAuthority(runSecrets{r}, cluster, now)
	if err != nil {
		return nil, err
	}
	if st.root != nil && !st.root.Equal(auth.Root.Cert) {
		return nil, fmt.Errorf("the state repo is inconsistent: data/identity/%s is not the certificate of the root CA key in secrets/identity/%s.age; restore both from one commit of the state repo's history", DataRootCA, pki.RootSecret)
	}
	if st.root == nil {
		if err := r.PutData(DataRootCA, auth.Root.CertPEM()); err != nil {
			return nil, err
		}
		st.root = auth.Root.Cert
	}
	if st.intermediate == nil || !st.intermediate.Equal(auth.Intermediate.Cert) {
		if err := r.PutData(DataIntermediateCA, auth.Intermediate.CertPEM()); err != nil {
			return nil, err
		}
		st.intermediate = auth.Intermediate.Cert
	}
	switch {
	case created:
		r.Info("", "created the cluster root CA (serial %s, valid until %s) and intermediate CA; their keys are age-encrypted in the state repo", auth.Root.Cert.SerialNumber, auth.Root.Cert.NotAfter.Format(time.DateOnly))
	case renewed:
		r.Info("", "replaced the intermediate CA (new serial %s, valid until %s)", auth.Intermediate.Cert.SerialNumber, auth.Intermediate.Cert.NotAfter.Format(time.DateOnly))
	}
	return auth, nil
}

// applier carries one Apply's state across its nodes.
type applier struct {
	ph    Phase
	r     *engine.Run
	auth  *pki.Authority
	roots *x509.CertPool
	now   time.Time

	mu      sync.Mutex // guards st and changed
	st      *stored
	changed bool // the revoked list changed
}

// enrol runs one node's change: optionally reset, then one session
// (attest, challenge, activate, finish: one nonce, one AK), issue, store
// the record, install the certificate.
func (a *applier) enrol(ctx context.Context, node string, c engine.Change) error {
	r := a.r
	d, err := engine.ChangeData[changeData](c)
	if err != nil {
		return err
	}
	if d.Deferred {
		return fmt.Errorf("the castellan agent is not on node %s: the preflight phase installs it (run castellan apply without --only, or with --only preflight first)", node)
	}
	cluster := r.Profile().Metadata.Name
	if d.Reset {
		res, err := engine.Call(ctx, r, node, OpReset, ResetRequest{Reason: string(c.Action) + ": the old identity is replaced"})
		if err != nil {
			return fmt.Errorf("removing the old identity: %w", err)
		}
		if len(res.Removed) > 4 {
			return fmt.Errorf("removing the old identity: the node answered %d removed files, castellan keeps 4", len(res.Removed))
		}
		r.Info(node, "removed the old identity from the node (%s)", strings.Join(res.Removed, ", "))
	}
	s, err := NewSession(Policy{Cluster: cluster, Node: node, Software: d.Software, EKRoots: a.roots, PinnedEK: d.EKHash, Now: a.ph.Now})
	if err != nil {
		return err
	}
	att, err := engine.Call(ctx, r, node, OpAttest, s.Request())
	if err != nil {
		return fmt.Errorf("attestation: %w", err)
	}
	var e *Enrolment
	if d.Software {
		if e, err = s.FinishSoftware(&att); err != nil {
			return err
		}
	} else {
		ch, err := s.Challenge(&att)
		if err != nil {
			return err
		}
		resp, err := engine.Call(ctx, r, node, OpActivate, *ch)
		if err != nil {
			return fmt.Errorf("credential activation: %w", err)
		}
		if e, err = s.Finish(&resp); err != nil {
			return err
		}
	}
	if Action(c.Action) == ActionRenew && e.KeyFingerprint != d.KeyFingerprint {
		return fmt.Errorf("node %s: the plan renews the certificate of key %s, and the node now presents key %s: nothing was issued; plan again", node, d.KeyFingerprint, e.KeyFingerprint)
	}
	cert, rec, err := e.Issue(a.auth, a.now, a.ph.Validity)
	if err != nil {
		return err
	}
	if err := a.store(node, rec, c.Action); err != nil {
		return err
	}
	if _, err := engine.Call(ctx, r, node, OpInstall, InstallRequest{Certificate: cert.Raw}); err != nil {
		return fmt.Errorf("installing the certificate: %w", err)
	}
	if err := engine.Publish(r.View, nodeid.CertificateKey, node, nodeid.Certificate{Cert: cert, Protection: rec.Protection}); err != nil {
		return err
	}
	if err := engine.Publish(r.View, nodeid.EnrolmentKey, node, enrolmentOf(rec, c.Action, d.PreviousEKHash)); err != nil {
		return err
	}
	what := "TPM-resident key"
	if rec.Protection == pki.SoftwareKey {
		what = "SOFTWARE key (insecure-skip)"
	}
	created := "reused the node's key"
	if len(att.Created) > 0 {
		created = "created " + strings.Join(att.Created, ", ")
	}
	r.Info(node, "%s: %s %s, EK %s (%s), certificate serial %s valid until %s; %s", c.Action, what, rec.KeyFingerprint, orNone(rec.EKHash), rec.EKTrust, rec.CertSerial, rec.CertNotAfter.Format(time.DateOnly), created)
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// store records a node's new identity; the certificate of a replaced key is
// revoked (superseded). The revoked list is written before the records, so
// a crash between the two revokes the old certificate and leaves the node
// to be planned again.
func (a *applier) store(node string, rec *Record, action string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if old := a.st.nodes[node]; old != nil && old.KeyFingerprint != rec.KeyFingerprint {
		if a.st.revoke(old, pki.ReasonSuperseded, a.now, action+": the node's key was replaced") {
			a.changed = true
			if err := a.st.saveRevoked(a.r); err != nil {
				return err
			}
		}
	}
	a.st.nodes[node] = rec
	return a.st.saveNodes(a.r)
}

// revocations revokes the certificates of nodes that left the profile and
// publishes the revocation list when planned or when this run revoked
// anything.
func (a *applier) revocations(p engine.Plan) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	publish := a.changed
	for _, c := range p.Changes {
		switch Action(c.Action) {
		case ActionPublishCRL:
			publish = true
		case ActionRevoke:
			d, err := engine.ChangeData[revokeData](c)
			if err != nil {
				return err
			}
			rec := a.st.nodes[d.Node]
			if rec == nil || rec.CertSerial != d.Serial {
				return fmt.Errorf("revoking node %s: the state repo no longer records certificate %s for it; plan again", d.Node, d.Serial)
			}
			if a.st.revoke(rec, pki.ReasonCessationOfOperation, a.now, "the node left the profile") {
				if err := a.st.saveRevoked(a.r); err != nil {
					return err
				}
			}
			delete(a.st.nodes, d.Node)
			if err := a.st.saveNodes(a.r); err != nil {
				return err
			}
			a.r.Info("", "revoked the certificate of node %s (serial %s): it left the profile", d.Node, d.Serial)
			publish = true
		}
	}
	if !publish {
		return nil
	}
	entries, err := a.st.revocations(a.now)
	if err != nil {
		return err
	}
	number := big.NewInt(1)
	if a.st.crl != nil {
		number.Add(a.st.crl.Number, number)
	}
	crl, err := a.auth.NewCRL(entries, number, a.now, 0)
	if err != nil {
		return err
	}
	if err := a.r.PutData(DataCRL, crl.PEM()); err != nil {
		return err
	}
	a.st.crl = crl
	a.r.Info("", "published revocation list number %s: %d revoked certificate(s), valid until %s", crl.Number, crl.Len(), crl.NextUpdate.Format(time.DateOnly))
	prof := a.r.Profile()
	return engine.Publish(a.r.View, nodeid.TrustKey, "", nodeid.Trust{Cluster: prof.Metadata.Name, Root: a.auth.Root.Cert, CRL: crl, RequireTPM: prof.Spec.Identity.TPM != profile.TPMInsecureSkip})
}
