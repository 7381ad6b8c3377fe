package engine

import (
	"context"

	"castellan/installer/agent"
)

// NodeAccess is how phases reach nodes. The installer implements it over one
// SSH connection per node and the castellan agent; unit tests of phases use
// enginetest.FakeNodes.
type NodeAccess interface {
	// Batch runs read-only requests on node in one agent exec and returns
	// one response per request, in order. With no requests it only learns the
	// agent's state. A node without this castellan's agent returns
	// (nil, nil): Agent then says it is missing.
	Batch(ctx context.Context, node string, reqs []agent.Request) ([]agent.Response, error)
	// Call runs op on node with in as its JSON input and decodes its result
	// into out (nil discards it). A failed operation is an *agent.Error.
	Call(ctx context.Context, node string, op agent.Spec, in, out any) error
	// Agent tells whether this castellan's agent is on node. It reuses what
	// the last exec on the node learned, or asks (read-only).
	Agent(ctx context.Context, node string) (AgentState, error)
	// InstallAgent ships this castellan's agent to node.
	InstallAgent(ctx context.Context, node string, progress func(done, total int64)) error
	// PendingHostKey returns the host key node offered that known_hosts does
	// not hold yet and that the run may trust (--accept-new-host-keys); node
	// "" is the bastion nodes are reached through.
	PendingHostKey(node string) (HostKey, bool)
	// TrustHostKey writes node's (or, for "", the bastion's) pending host key
	// to known_hosts.
	TrustHostKey(ctx context.Context, node string) error
}

// AgentState describes the agent on a node.
type AgentState struct {
	Installed bool
	// Path is where the agent is (or would be) on the node.
	Path string
	// Size is the agent binary's size in bytes.
	Size int64
	// Arch is the node's Go architecture.
	Arch string
	// LoginNoise, when set, warns that the node's login environment prints
	// text before each command (castellan ignores it; it costs time).
	LoginNoise string
}

// HostKey is an SSH host key a node offered.
type HostKey struct {
	// Host is the host's name (a node, or "bastion ADDRESS").
	Host        string `json:"host"`
	Addr        string `json:"addr"`
	KeyType     string `json:"keyType"`
	Fingerprint string `json:"fingerprint"` // SHA256:...
}

// Store is a run's durable storage: the state repo. Secrets are stored
// age-encrypted; data is plain (never a secret). Names are "PHASE/NAME":
// a phase writes under its own name and may read any.
type Store interface {
	Secret(name string) ([]byte, bool, error)
	PutSecret(name string, value []byte) error
	Data(name string) ([]byte, bool, error)
	PutData(name string, value []byte) error
}
