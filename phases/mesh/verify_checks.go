package mesh

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"castellan/installer/engine"
	"castellan/installer/profile"
)

// DefaultHandshakeMaxAge is how old a peer's last WireGuard handshake may
// be before castellan verify reports it: WireGuard makes a new handshake
// every 2 minutes on a session in use (REKEY_AFTER_TIME, the WireGuard
// paper section 6.1) and refuses a session older than 3 minutes
// (REJECT_AFTER_TIME); the persistent keepalive (25 s) keeps every session
// in use, so a live peer's handshake is never much older than 2 minutes.
const DefaultHandshakeMaxAge = 5 * time.Minute

// Checks the phase adds to castellan verify (engine.Verifier).
const (
	CheckInterface  = "interface"  // the mesh device: up, address, port
	CheckPeers      = "peers"      // exactly the profile's peers, with their keys and endpoints
	CheckHandshakes = "handshakes" // every peer's last handshake is recent
	CheckUnderlay   = "underlay"   // table inet castellan is the confirmed ruleset for this profile
)

var _ engine.Verifier = Phase{}

// Verify implements engine.Verifier: for every targeted mesh member, its
// device (up, with its address and port), its peers (exactly the other
// members, by key, endpoint and allowed IP: a missing or extra peer is
// named), each peer's last handshake (older than HandshakeMaxAge, by the
// node's clock, is drift: a plan does not look at handshakes), and the
// underlay firewall (the live table inet castellan is the one confirmed
// for this profile's peers and SSH sources, so nothing else is open between
// nodes: a drop in any nftables base chain is final, so no other table can
// open what this one drops). It reads the run's observation only.
func (p Phase) Verify(ctx context.Context, v *engine.View, plan engine.Plan) ([]engine.Check, error) {
	if !profile.On(v.Profile().Spec.Mesh.Enabled) {
		return nil, nil
	}
	if wait, err := p.waitingFor(ctx, v); err != nil || wait != "" {
		return nil, nil // planned in outline: the engine reports it as drift
	}
	s, err := p.analyze(ctx, v, v)
	if err != nil {
		return nil, nil // the plan failed the same way: reported from it
	}
	maxAge := p.HandshakeMaxAge
	if maxAge == 0 {
		maxAge = DefaultHandshakeMaxAge
	}
	var out []engine.Check
	add := func(node, name string, st engine.CheckStatus, format string, a ...any) {
		out = append(out, engine.Check{Node: node, Name: name, Status: st, Message: fmt.Sprintf(format, a...)})
	}
	for _, m := range s.inMesh() {
		if m.obs == nil {
			continue
		}
		o := m.obs
		want, _ := s.deviceConfig(m)
		d := o.Device
		switch {
		case d == nil:
			add(m.name, CheckInterface, engine.CheckDrift, "%s does not exist", want.Interface)
			continue
		case !d.Up:
			add(m.name, CheckInterface, engine.CheckDrift, "%s is down", want.Interface)
		case len(d.Addresses) != 1 || d.Addresses[0] != want.Address || d.ListenPort != want.ListenPort || d.PublicKey != o.Key.PublicKey:
			add(m.name, CheckInterface, engine.CheckDrift, "%s has addresses %v, port %d, key %s; the profile says %s, port %d, key %s", want.Interface, d.Addresses, d.ListenPort, d.PublicKey, want.Address, want.ListenPort, o.Key.PublicKey)
		default:
			add(m.name, CheckInterface, engine.CheckOK, "%s up, address %s, UDP port %d", want.Interface, want.Address, want.ListenPort)
		}

		have := map[string]PeerState{}
		for _, ps := range d.Peers {
			have[ps.PublicKey] = ps
		}
		var problems, fresh, stale []string
		now := o.Time
		if now.IsZero() {
			now = p.now()
		}
		for _, peer := range want.Peers {
			h, ok := have[peer.PublicKey]
			delete(have, peer.PublicKey)
			switch {
			case !ok:
				problems = append(problems, fmt.Sprintf("peer %s (%s) is missing", peer.Name, peer.PublicKey))
				continue
			case unmapPort(h.Endpoint) != peer.Endpoint || len(h.AllowedIPs) != 1 || h.AllowedIPs[0] != hostPrefix(peer.Address):
				problems = append(problems, fmt.Sprintf("peer %s has endpoint %s and allowed IPs %v, the profile says %s and %s", peer.Name, h.Endpoint, h.AllowedIPs, peer.Endpoint, hostPrefix(peer.Address)))
			}
			switch age := now.Sub(h.LastHandshake); {
			case h.LastHandshake.IsZero():
				stale = append(stale, peer.Name+" (never)")
			case age > maxAge:
				stale = append(stale, fmt.Sprintf("%s (%s ago)", peer.Name, age.Round(time.Second)))
			default:
				fresh = append(fresh, fmt.Sprintf("%s %s ago", peer.Name, max(age, 0).Round(time.Second)))
			}
		}
		var extra []string
		for k := range have {
			extra = append(extra, k)
		}
		sort.Strings(extra)
		for _, k := range extra {
			problems = append(problems, fmt.Sprintf("peer %s is not a member of the mesh", k))
		}
		if len(problems) > 0 {
			add(m.name, CheckPeers, engine.CheckDrift, "%s", strings.Join(problems, "; "))
		} else {
			add(m.name, CheckPeers, engine.CheckOK, "exactly the %d other member(s) of the mesh, keys and endpoints as recorded", len(want.Peers))
		}
		switch {
		case len(stale) > 0:
			add(m.name, CheckHandshakes, engine.CheckDrift, "no handshake within %s with %s (WireGuard re-handshakes every 2 minutes and keeps sessions alive every %d s: the peer is down or unreachable over the underlay)", maxAge, strings.Join(stale, ", "), want.KeepaliveSeconds)
		case len(fresh) > 0:
			add(m.name, CheckHandshakes, engine.CheckOK, "last handshakes: %s", strings.Join(fresh, ", "))
		}

		rs, err := s.ruleset(m)
		if err != nil {
			add(m.name, CheckUnderlay, engine.CheckFailed, "%v", err)
			continue
		}
		f := o.Firewall
		switch {
		case firewallMatches(o, rs):
			add(m.name, CheckUnderlay, engine.CheckOK, "table inet %s as confirmed (digest %.12s): between nodes only UDP %d from %d peer(s), SSH (port %d) from %s",
				TableName, f.Live, rs.Port, len(rs.Peers), rs.SSHPort, prefixList(rs.SSHFrom))
		case f.Live == "":
			add(m.name, CheckUnderlay, engine.CheckDrift, "table inet %s is missing: the underlay is open", TableName)
		case f.Guard != nil:
			add(m.name, CheckUnderlay, engine.CheckDrift, "a firewall change awaits its confirmation (a run was cut off): the guard reverts it")
		case f.Live != f.Confirmed.Digest:
			add(m.name, CheckUnderlay, engine.CheckDrift, "table inet %s differs from the ruleset castellan confirmed (digest %.12s, confirmed %.12s): a rule was changed, added or deleted by hand", TableName, f.Live, f.Confirmed.Digest)
		case f.Confirmed.Spec != rs.Hash():
			add(m.name, CheckUnderlay, engine.CheckDrift, "the confirmed ruleset is not this profile's (peers or SSH sources changed since)")
		default:
			add(m.name, CheckUnderlay, engine.CheckDrift, "the firewall's persisted files or boot unit are not castellan's")
		}
	}
	return out, nil
}
