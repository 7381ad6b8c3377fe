package identity

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"

	"github.com/google/go-tpm/tpm2/transport"

	"castellan/installer/agent"
)

// Host is where the node operations act: how to open the node's TPM, and
// the identity directory. The agent serves the package's operations
// (OpObserve...) against DefaultHost; a test serves the same operations
// against a swtpm and a temporary directory with Host.Handlers.
type Host struct {
	// OpenTPM opens the TPM; the operation closes it when it returns.
	OpenTPM func() (transport.TPMCloser, error)
	// Dir is the identity directory.
	Dir string
}

// DefaultHost is a real node: /dev/tpmrm0 (with TPM_RC_RETRY handled) and
// DefaultDir.
func DefaultHost() Host {
	return Host{OpenTPM: func() (transport.TPMCloser, error) { return OpenDevice("") }, Dir: DefaultDir}
}

// ObserveRequest is the input of OpObserve: empty (what is observed is
// fixed), so that the plan's call is answered from the batch.
type ObserveRequest struct{}

// ResetRequest is the input of OpReset.
type ResetRequest struct {
	// Reason is logged on the node.
	Reason string `json:"reason,omitempty"`
}

// ResetResponse lists the files OpReset removed.
type ResetResponse struct {
	Removed []string `json:"removed,omitempty"`
}

// The node operations of the identity phase. Inputs and outputs are the
// JSON types of wire.go; outputs are decoded strictly and within bounds on
// the installer's side (their UnmarshalJSON methods).
var (
	// OpObserve reads the node's identity without changing anything: the EK
	// (a TPM that cannot be read is reported in Observation.TPMError), the
	// public parts of the stored AK and key blobs, the software key's
	// public key, and the installed certificate.
	OpObserve = agent.Op[ObserveRequest, Observation]{Name: "identity.observe", ReadOnly: true,
		Do: func(ctx context.Context, in ObserveRequest, log *slog.Logger) (Observation, error) {
			return DefaultHost().observe(ctx, in, log)
		}}
	// OpAttest starts an enrolment session: the AK and node key are created
	// on first use only, and the AK certifies the key over the nonce.
	OpAttest = agent.Op[AttestRequest, Attestation]{Name: "identity.attest",
		Do: func(ctx context.Context, in AttestRequest, log *slog.Logger) (Attestation, error) {
			return DefaultHost().attest(ctx, in, log)
		}}
	// OpActivate answers the session's credential challenge
	// (TPM2_ActivateCredential).
	OpActivate = agent.Op[ActivateRequest, ActivateResponse]{Name: "identity.activate",
		Do: func(ctx context.Context, in ActivateRequest, log *slog.Logger) (ActivateResponse, error) {
			return DefaultHost().activate(ctx, in, log)
		}}
	// OpInstall writes the node certificate (node.crt) after checking it is
	// for the node's key.
	OpInstall = agent.Op[InstallRequest, InstallResponse]{Name: "identity.install",
		Do: func(ctx context.Context, in InstallRequest, log *slog.Logger) (InstallResponse, error) {
			return DefaultHost().install(ctx, in, log)
		}}
	// OpSign signs data with the node key (the mesh signs each node's
	// WireGuard public key with it).
	OpSign = agent.Op[SignRequest, SignResponse]{Name: "identity.sign",
		Do: func(ctx context.Context, in SignRequest, log *slog.Logger) (SignResponse, error) {
			return DefaultHost().sign(ctx, in, log)
		}}
	// OpReset removes the node's identity (AK and key blobs, certificate,
	// software key) before an explicit re-enrolment: blobs made by a
	// replaced TPM cannot be loaded by the new one.
	OpReset = agent.Op[ResetRequest, ResetResponse]{Name: "identity.reset",
		Do: func(ctx context.Context, in ResetRequest, log *slog.Logger) (ResetResponse, error) {
			return DefaultHost().reset(ctx, in, log)
		}}
)

// ops lists the operations, for Phase.Ops.
func ops() []agent.Handler {
	return []agent.Handler{OpObserve, OpAttest, OpActivate, OpInstall, OpSign, OpReset}
}

// Handlers returns the identity operations (same names, inputs and outputs
// as OpObserve...) served against h instead of DefaultHost.
func (h Host) Handlers() []agent.Handler {
	return []agent.Handler{
		agent.Op[ObserveRequest, Observation]{Name: OpObserve.Name, ReadOnly: true, Do: h.observe},
		agent.Op[AttestRequest, Attestation]{Name: OpAttest.Name, Do: h.attest},
		agent.Op[ActivateRequest, ActivateResponse]{Name: OpActivate.Name, Do: h.activate},
		agent.Op[InstallRequest, InstallResponse]{Name: OpInstall.Name, Do: h.install},
		agent.Op[SignRequest, SignResponse]{Name: OpSign.Name, Do: h.sign},
		agent.Op[ResetRequest, ResetResponse]{Name: OpReset.Name, Do: h.reset},
	}
}

// node opens the TPM when withTPM is set and returns the Node with a
// function that closes it.
func (h Host) node(withTPM bool) (*Node, func(), error) {
	n := &Node{Dir: h.Dir}
	if !withTPM {
		return n, func() {}, nil
	}
	t, err := h.OpenTPM()
	if err != nil {
		return nil, nil, err
	}
	n.TPM = t
	return n, func() { _ = t.Close() }, nil
}

func (h Host) observe(ctx context.Context, _ ObserveRequest, log *slog.Logger) (Observation, error) {
	n, done, err := h.node(true)
	if err != nil {
		// No TPM (or none usable): observe the rest, and say why.
		n, done, _ = h.node(false)
		log.Debug("TPM not readable", "err", err)
	}
	defer done()
	o, oerr := n.Observe(ctx)
	if oerr != nil {
		return Observation{}, oerr
	}
	if err != nil {
		o.TPMError = truncate(err.Error(), 1024)
	}
	return *o, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

func (h Host) attest(ctx context.Context, in AttestRequest, _ *slog.Logger) (Attestation, error) {
	n, done, err := h.node(!in.Software)
	if err != nil {
		return Attestation{}, err
	}
	defer done()
	a, err := n.Attest(ctx, in)
	if err != nil {
		return Attestation{}, err
	}
	return *a, nil
}

func (h Host) activate(ctx context.Context, in ActivateRequest, _ *slog.Logger) (ActivateResponse, error) {
	n, done, err := h.node(true)
	if err != nil {
		return ActivateResponse{}, err
	}
	defer done()
	r, err := n.Activate(ctx, in)
	if err != nil {
		return ActivateResponse{}, err
	}
	return *r, nil
}

func (h Host) install(ctx context.Context, in InstallRequest, _ *slog.Logger) (InstallResponse, error) {
	n, _, _ := h.node(false)
	r, err := n.Install(ctx, in)
	if err != nil {
		return InstallResponse{}, err
	}
	return *r, nil
}

// sign uses the TPM when the node holds a TPM key blob, the software key
// otherwise.
func (h Host) sign(ctx context.Context, in SignRequest, _ *slog.Logger) (SignResponse, error) {
	_, err := os.Stat((&Node{Dir: h.Dir}).path(KeyFile))
	n, done, oerr := h.node(err == nil)
	if oerr != nil {
		return SignResponse{}, oerr
	}
	defer done()
	r, err := n.Sign(ctx, in)
	if err != nil {
		return SignResponse{}, err
	}
	return *r, nil
}

func (h Host) reset(_ context.Context, in ResetRequest, log *slog.Logger) (ResetResponse, error) {
	n := &Node{Dir: h.Dir}
	removed, err := n.Reset()
	log.Info("identity reset", "reason", in.Reason, "removed", removed)
	return ResetResponse{Removed: removed}, err
}

// Reset removes the node's identity from Dir: the AK and key blobs (useless
// without the TPM that wrapped them; the TPM itself keeps nothing, since
// castellan makes no object persistent), the certificate and the
// insecure-skip software key. It returns the names it removed; a missing
// file is not an error.
func (n *Node) Reset() ([]string, error) {
	var removed []string
	var errs []error
	for _, f := range []string{AKFile, KeyFile, CertFile, SoftwareKeyFile} {
		err := os.Remove(n.path(f))
		switch {
		case err == nil:
			removed = append(removed, f)
		case !errors.Is(err, fs.ErrNotExist):
			errs = append(errs, fmt.Errorf("removing %s: %w", n.path(f), err))
		}
	}
	return removed, errors.Join(errs...)
}
