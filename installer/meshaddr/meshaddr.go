// Package meshaddr holds what the mesh phase publishes for later phases:
// each node's address on the WireGuard mesh (RKE2's node IP, etcd's peer
// and client URLs, Calico's node address all use it), so that everything
// between nodes travels through the mesh and the underlay stays closed.
package meshaddr

import (
	"net/netip"

	"castellan/installer/engine"
)

// Key is the output under which the mesh phase publishes each node's mesh
// address (one value per node in the mesh; a node left out of the mesh, e.g.
// because its identity is revoked, has none). It is recorded in the run
// record.
var Key = engine.NewKey[Node]("mesh", "address", true)

// Node is one node's place in the mesh.
type Node struct {
	// Address is the node's mesh address, e.g. 10.99.0.1.
	Address netip.Addr `json:"address"`
	// Subnet is the mesh's subnet (spec.mesh.subnet), e.g. 10.99.0.0/24.
	Subnet netip.Prefix `json:"subnet"`
	// Interface is the WireGuard device carrying the mesh (spec.mesh.interface).
	Interface string `json:"interface"`
	// PublicKey is the node's WireGuard public key, base64 (32 bytes), as
	// verified against the node's certificate.
	PublicKey string `json:"publicKey"`
	// Underlay is the node's underlay address, where its peers send
	// WireGuard packets (UDP Port).
	Underlay netip.Addr `json:"underlay"`
	Port     int        `json:"port"`
}
