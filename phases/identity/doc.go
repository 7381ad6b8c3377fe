// Package identity gives every node an identity that cannot be copied off
// it: an ECDSA P-256 key created inside its TPM, proven to be TPM-resident,
// certified by the cluster root CA (castellan/installer/pki).
//
// # The phase
//
// Phase (installer/phases.go lists it after preflight) plans, per targeted
// node, nothing, a renewal, an enrolment or an explicit re-enrolment, from
// the state repo's Record and the read-only OpObserve (batched with every
// phase's observations: a no-op rerun costs one exec per node and creates
// no TPM object). A node whose EK changed fails the plan (*EKChangedError)
// unless the run's nodeid.ReEnrol input names it (castellan apply
// --re-enrol NODE). Cluster-wide it creates the CAs on the first apply
// (pki.LoadOrCreateAuthority, keys as the run's secrets
// secrets/identity/pki/*.age), revokes the certificates of nodes no longer
// in the profile, and publishes the revocation list (data/identity/crl.pem).
// It publishes nodeid.CertificateKey, nodeid.TrustKey and the recorded
// nodeid.EnrolmentKey.
//
// # Node side (through the agent, root, /dev/tpmrm0)
//
// The operations are agent.Op values served against DefaultHost (the TPM
// device and DefaultDir); Host.Handlers serves the same against another TPM
// and directory (tests: swtpm). Each calls a Node method:
//
//	OpObserve  Node.Observe → Observation                 read-only: EK, blob publics, certificate
//	OpAttest   Node.Attest(AttestRequest) → Attestation    AK and key created on first use only;
//	                                                       TPM2_Certify(key, AK, nonce)
//	OpActivate Node.Activate(ActivateRequest) → ActivateResponse  TPM2_ActivateCredential
//	OpInstall  Node.Install(InstallRequest) → InstallResponse     writes node.crt
//	OpSign     Node.Sign(SignRequest) → SignResponse        ECDSA over SHA-256(data)
//	OpReset    Node.Reset → ResetResponse                   removes the identity (re-enrolment)
//
// Node.Signer gives the TPM key as a crypto.Signer (TLS). The directory holds
// ak.json and key.json (TPM2B_PUBLIC/TPM2B_PRIVATE blobs wrapped by the
// owner hierarchy's standard ECC SRK, which is re-derived and flushed each
// time: nothing is made persistent in the TPM) and node.crt. No private key
// exists in PEM form; in insecure-skip mode only, software.key holds a
// plaintext PKCS #8 key (DER), 0600. What nodes send back is decoded
// strictly and within bounds (the output types' UnmarshalJSON).
//
// The node side uses go-tpm's tpm2 package directly rather than
// go-attestation's client: go-attestation v0.6.4 cannot certify an existing
// key with fresh qualifying data (AK.Certify passes none, and Key hides its
// handle), persists an SRK and EK into the TPM, and does not retry
// TPM_RC_RETRY. Its formats are kept, so the installer verifies with
// go-attestation itself.
//
// # Installer side
//
//	s, _ := NewSession(Policy{...})           // one nonce
//	att := engine.Call(..., OpAttest, s.Request())
//	ch, err := s.Challenge(&att)               // EK chain/pin, AK, certification, nonce, attributes
//	resp := engine.Call(..., OpActivate, *ch)
//	e, err := s.Finish(&resp)                  // the credential came back: same TPM
//	cert, rec, err := e.Issue(authority, now, 0)
//	engine.Call(..., OpInstall, InstallRequest{Certificate: cert.Raw})
//
// A session runs once: one nonce, one AK (the challenge is bound to the AK's
// Name, and the node refuses to answer with another), one transcript; any
// failure spends it. Plan(PlanInput) decides from the stored Record and a
// read-only Observation whether a node needs nothing, a renewal (same key,
// fresh certification, no new TPM object), an enrolment, or must be refused
// because its EK changed (*EKChangedError, unless Policy.ReEnrol).
//
// Record is what the state repo keeps per node (public): EK hash, how the EK
// was trusted, AK name, key fingerprint, certificate serial, expiry and DER.
// The CA keys are the only secrets (pki.LoadOrCreateAuthority).
//
// Sources: TPM 2.0 Library Part 1-3 (TPM2_Certify, TPM2_ActivateCredential,
// TPMS_ATTEST), TCG EK Credential Profile 2.x (EK templates, NV indexes
// 0x01c00002/0x01c0000a, EK certificate SAN), TCG TPM v2.0 Provisioning
// Guidance (SRK template).
package identity
