package installer

import (
	"context"

	"castellan/installer/agent"
	"castellan/installer/agentops"
	"castellan/installer/engine"
	"castellan/installer/nodeid"
	"castellan/phases/diskcrypt"
	"castellan/phases/identity"
	"castellan/phases/mesh"
	"castellan/phases/netpol"
	"castellan/phases/preflight"
)

// Phases returns castellan's phases in the order they run: the one list
// that registers a phase, its installer side and (through Ops) its node
// side.
func Phases() []engine.Phase {
	return []engine.Phase{
		preflight.Phase{},
		identity.Phase{},
		diskcrypt.Phase{},
		mesh.Phase{Identity: identityForMesh{}},
		netpol.Phase{},
	}
}

// AgentRegistry returns the node-side operations of every phase, which
// `castellan agent OP` and the castellan-agent binary serve (agentops lists
// the phases with a node side; TestAgentOpsListsEveryNodeSide keeps the two
// lists together).
func AgentRegistry() *agent.Registry { return agentops.Registry() }

// identityForMesh is what the mesh phase needs of the identity phase
// (mesh.Identity), wired here because phases never import each other: the
// certificates and trust anchors the identity phase published in this run
// (installer/nodeid), and signatures by a node's identity key through the
// identity phase's Sign operation (ASN.1 ECDSA P-256 over SHA-256(data), by
// the TPM-resident key, or the software key under insecure-skip). The mesh
// joins the list, after identity, as mesh.Phase{Identity: identityForMesh{}}.
type identityForMesh struct{}

var _ mesh.Identity = identityForMesh{}

// Certificate implements mesh.Identity.
func (identityForMesh) Certificate(v *engine.View, node string) ([]byte, bool) {
	c, ok := engine.Lookup(v, nodeid.CertificateKey, node)
	if !ok || c.Cert == nil {
		return nil, false
	}
	return c.Cert.Raw, true
}

// Trust implements mesh.Identity.
func (identityForMesh) Trust(v *engine.View) (root, crl []byte, ok bool) {
	t, ok := engine.Lookup(v, nodeid.TrustKey, "")
	if !ok || t.Root == nil || t.CRL == nil {
		return nil, nil, false
	}
	return t.Root.Raw, t.CRL.DER, true
}

// Sign implements mesh.Identity.
func (identityForMesh) Sign(ctx context.Context, r *engine.Run, node string, data []byte) ([]byte, error) {
	resp, err := engine.Call(ctx, r, node, identity.OpSign, identity.SignRequest{Data: data})
	if err != nil {
		return nil, err
	}
	return resp.Signature, nil
}
