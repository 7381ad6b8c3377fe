package mesh

import (
	"net/netip"
	"time"
)

// The JSON types the node operations take and return. They travel between
// the installer and the node's agent (encoding/json); the installer checks
// what it receives with Observation.Check and friends before using it.

// ObserveRequest asks a node what its mesh looks like (OpObserve).
type ObserveRequest struct {
	// Interface is the WireGuard device (spec.mesh.interface).
	Interface string `json:"interface"`
}

// Observation is the read-only view of a node's mesh.
type Observation struct {
	// Key is the node's WireGuard key file.
	Key KeyState `json:"key"`
	// Device is the live WireGuard device; nil when it does not exist.
	Device *DeviceState `json:"device,omitempty"`
	// Files are the SHA-256 (hex) of the persisted files castellan writes,
	// by path; a missing file is absent from the map.
	Files map[string]string `json:"files,omitempty"`
	// Firewall is the live nftables table and what castellan recorded of it.
	Firewall FirewallState `json:"firewall"`
	// Session is the SSH connection the agent runs under, as the node sees
	// it (zero when the agent does not run under sshd).
	Session Session `json:"session"`
	// NFT is true when /usr/sbin/nft exists (the boot unit loads the
	// persisted table with it).
	NFT bool `json:"nft"`
	// Networkd is true when systemd-networkd is installed (it persists the
	// device).
	Networkd bool `json:"networkd"`
	// Problems are facts that could not be read.
	Problems []string `json:"problems,omitempty"`
}

// KeyState describes the key file. The private key never leaves the node.
type KeyState struct {
	Exists bool `json:"exists"`
	// PublicKey is derived from the private key, base64.
	PublicKey string `json:"publicKey,omitempty"`
	// Mode and Group are the file's permission bits and group name.
	Mode  uint32 `json:"mode,omitempty"`
	Group string `json:"group,omitempty"`
	// Created is the file's modification time (when the key was written).
	Created time.Time `json:"created,omitzero"`
}

// DeviceState is the live WireGuard device (wgctrl).
type DeviceState struct {
	Name string `json:"name"`
	// Type is "Linux kernel" or "userspace".
	Type       string `json:"type"`
	PublicKey  string `json:"publicKey,omitempty"`
	ListenPort int    `json:"listenPort"`
	// Addresses are the device's addresses with their prefix length.
	Addresses []netip.Prefix `json:"addresses,omitempty"`
	Up        bool           `json:"up"`
	Peers     []PeerState    `json:"peers,omitempty"`
}

// PeerState is one live peer of the device.
type PeerState struct {
	PublicKey  string         `json:"publicKey"`
	Endpoint   netip.AddrPort `json:"endpoint,omitzero"`
	AllowedIPs []netip.Prefix `json:"allowedIPs,omitempty"`
	// KeepaliveSeconds is the persistent keepalive interval (0: off).
	KeepaliveSeconds int `json:"keepaliveSeconds,omitempty"`
	// LastHandshake is zero when no handshake happened yet.
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	ReceiveBytes  int64     `json:"receiveBytes,omitempty"`
	TransmitBytes int64     `json:"transmitBytes,omitempty"`
}

// FirewallState is the node's nftables table as seen live, and what the
// node recorded when castellan last applied and confirmed it.
type FirewallState struct {
	// Live is the digest of the live table (TableDigest); "" when the table
	// does not exist.
	Live string `json:"live,omitempty"`
	// Confirmed is the ruleset castellan last confirmed on this node (its
	// SpecHash and the digest the table had then); zero when none.
	Confirmed Applied `json:"confirmed,omitzero"`
	// Guard is a pending revert guard (a run that did not confirm yet).
	Guard *GuardState `json:"guard,omitempty"`
}

// Applied identifies a ruleset applied on a node.
type Applied struct {
	// Spec is Ruleset.Hash of the ruleset.
	Spec string `json:"spec"`
	// Digest is TableDigest of the live table right after it was applied.
	Digest string `json:"digest"`
}

// GuardState is a revert guard's record (/run/castellan/mesh/guard.json).
type GuardState struct {
	Token string `json:"token"`
	// State is GuardPending, GuardConfirmed or GuardReverted.
	State    string    `json:"state"`
	Deadline time.Time `json:"deadline"`
	PID      int       `json:"pid,omitempty"`
	// Applied is what the guarded apply put in place; Previous what a revert
	// restores (zero: no table).
	Applied  Applied `json:"applied"`
	Previous Applied `json:"previous,omitzero"`
	// Ruleset is the guarded ruleset (persisted once confirmed);
	// PreviousRuleset is what a revert restores (nil: no table).
	Ruleset         Ruleset  `json:"ruleset"`
	PreviousRuleset *Ruleset `json:"previousRuleset,omitempty"`
	// Reverted says when the guard restored the previous rules, and why.
	Reverted     time.Time `json:"reverted,omitzero"`
	RevertReason string    `json:"revertReason,omitempty"`
}

// Guard states.
const (
	GuardPending   = "pending"
	GuardConfirmed = "confirmed"
	GuardReverted  = "reverted"
)

// Session is an SSH connection as the node sees it.
type Session struct {
	// Remote is where the connection comes from (the installer, or its
	// bastion); Local is the node's address and sshd port it arrived at.
	Remote netip.AddrPort `json:"remote,omitzero"`
	Local  netip.AddrPort `json:"local,omitzero"`
}

// KeyRequest makes sure the node has a WireGuard key (OpEnsureKey).
type KeyRequest struct {
	// Replace is the public key to rotate away from: when the node's
	// current key has this public key, a new key replaces it. A key that is
	// already another one is kept (a rerun after a rotation rotates nothing).
	Replace string `json:"replace,omitempty"`
}

// KeyResult is the node's public key after OpEnsureKey.
type KeyResult struct {
	PublicKey string `json:"publicKey"`
	// Created is true when this call wrote a new key.
	Created bool `json:"created"`
}

// Peer is one peer a node is configured with.
type Peer struct {
	// Name is the peer's node name (a comment in the persisted files).
	Name      string `json:"name"`
	PublicKey string `json:"publicKey"`
	// Address is the peer's mesh address: its allowed IPs are Address/32
	// (or /128).
	Address netip.Addr `json:"address"`
	// Endpoint is the peer's underlay address and mesh port.
	Endpoint netip.AddrPort `json:"endpoint"`
}

// DeviceConfig is a node's whole mesh configuration (OpConfigure).
type DeviceConfig struct {
	Interface string `json:"interface"`
	// Address is the node's mesh address with the subnet's prefix length,
	// e.g. 10.99.0.1/24 (the subnet is routed through the device).
	Address    netip.Prefix `json:"address"`
	ListenPort int          `json:"listenPort"`
	// KeepaliveSeconds is every peer's persistent keepalive.
	KeepaliveSeconds int    `json:"keepaliveSeconds"`
	Peers            []Peer `json:"peers"`
}

// ConfigureResult says what OpConfigure changed.
type ConfigureResult struct {
	// Changed lists the changes made, in words ("peer server-2 added",
	// "file /etc/systemd/network/60-castellan-mesh.netdev written").
	Changed []string `json:"changed,omitempty"`
}

// FirewallRequest applies a ruleset under a revert guard (OpFirewall).
type FirewallRequest struct {
	Ruleset Ruleset `json:"ruleset"`
	// Token names this guarded apply; the confirmation must carry it.
	Token string `json:"token"`
	// GuardSeconds is how long the node waits for the confirmation before
	// restoring the previous rules by itself.
	GuardSeconds int `json:"guardSeconds"`
}

// FirewallResult says what was applied.
type FirewallResult struct {
	Applied Applied `json:"applied"`
	// Deadline is when the guard reverts unless confirmed.
	Deadline time.Time `json:"deadline"`
	// Unchanged is true when the live table already was the ruleset (no
	// guard is started then).
	Unchanged bool `json:"unchanged,omitempty"`
}

// ConfirmRequest confirms a guarded apply (OpConfirm) or reverts it now
// (OpRevert).
type ConfirmRequest struct {
	Token string `json:"token"`
	// Reason is recorded with a revert (OpRevert).
	Reason string `json:"reason,omitempty"`
}

// ConfirmResult is the guard's state after OpConfirm or OpRevert.
type ConfirmResult struct {
	Guard GuardState `json:"guard"`
	// Changed lists the persisted files written.
	Changed []string `json:"changed,omitempty"`
}

// GuardRequest is the detached revert guard's input (OpGuard).
type GuardRequest struct {
	Token string `json:"token"`
}

// ProbeRequest asks a node to ping mesh addresses (OpProbe).
type ProbeRequest struct {
	Targets []netip.Addr `json:"targets"`
	// TimeoutMillis bounds each target's probe (default 3000).
	TimeoutMillis int `json:"timeoutMillis,omitempty"`
}

// ProbeResult is one target's answer.
type ProbeResult struct {
	Target netip.Addr `json:"target"`
	OK     bool       `json:"ok"`
	// RTTMicros is the round trip of the first echo answered.
	RTTMicros int64  `json:"rttMicros,omitempty"`
	Error     string `json:"error,omitempty"`
}

// ProbeResponse holds one result per target, in order.
type ProbeResponse struct {
	Results []ProbeResult `json:"results"`
}
