package mesh

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/meshaddr"
	"castellan/installer/pki"
	"castellan/installer/profile"
)

// Name of the phase.
const Name = "mesh"

// Actions of the phase's changes.
const (
	ActionKey       = "ensure-key" // generate (or rotate) the node's WireGuard key
	ActionSign      = "sign-key"   // have the node's identity key sign its WireGuard key
	ActionConfigure = "configure"  // device, peers, address, networkd files
	ActionFirewall  = "firewall"   // guarded nftables apply, checks, confirmation
)

// Steps the phase reports.
const (
	StepKeys      = "keys"
	StepConfigure = "configure"
	StepFirewall  = "firewall"
	StepCheck     = "check"
	StepConfirm   = "confirm"
)

// Stored data names (data/mesh/...).
const (
	DataAddresses = "addresses.json"
	DataKeys      = "keys.json"
)

// Identity is what the mesh needs of the node identity phase (issue 14),
// which the installer wires in (phases never import each other):
//
//   - Certificate: node's certificate (DER) as the identity phase published
//     it in this run (its typed output);
//   - Trust: the cluster root CA certificate and the current CRL (DER),
//     as published by the identity phase;
//   - Sign: have node sign data with its TPM-resident identity key through
//     the identity phase's node operation: ASN.1 ECDSA P-256 over
//     SHA-256(data).
type Identity interface {
	Certificate(v *engine.View, node string) ([]byte, bool)
	Trust(v *engine.View) (root, crl []byte, ok bool)
	Sign(ctx context.Context, r *engine.Run, node string, data []byte) ([]byte, error)
}

// Phase is the mesh phase.
type Phase struct {
	Identity Identity
	// GuardSeconds bounds the firewall's confirmation (DefaultGuardSeconds
	// when 0).
	GuardSeconds int
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// HandshakeMaxAge is how old a peer's last handshake may be before
	// castellan verify reports drift (DefaultHandshakeMaxAge when 0).
	HandshakeMaxAge time.Duration
}

// Name implements engine.Phase.
func (Phase) Name() string { return Name }

// Ops implements engine.Phase.
func (Phase) Ops() []agent.Handler { return Ops() }

// Observe implements engine.Observer: one OpObserve per node.
func (Phase) Observe(v *engine.View, node string) ([]agent.Request, error) {
	if !profile.On(v.Profile().Spec.Mesh.Enabled) {
		return nil, nil
	}
	r, err := OpObserve.Request(ObserveRequest{Interface: v.Profile().Spec.Mesh.Interface})
	return []agent.Request{r}, err
}

func (p Phase) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// member is one profile node as the mesh sees it.
type member struct {
	name     string
	address  netip.Addr // mesh
	underlay netip.Addr
	cert     *x509.Certificate
	excluded string // why the node is left out of the mesh ("" when in)
	targeted bool
	obs      *Observation
	record   KeyRecord
	hasRec   bool
	// key is the verified public key peers get; zero until known.
	key      string
	needKey  bool   // ensure-key
	replace  string // rotate away from this key
	needSign bool
	// resign: the node holds the key its peers have (the recorded one),
	// whose signature no longer verifies against today's certificate (the
	// identity phase gave the node a new one). Signing it again changes
	// no peer's configuration.
	resign    bool
	sshSource netip.Prefix
	sshPort   int
}

// state is the phase's analysis of the cluster, shared by Plan and Apply.
type state struct {
	cluster  string
	spec     profile.Mesh
	subnet   netip.Prefix
	alloc    Allocation
	keys     map[string]KeyRecord
	verifier *pki.Verifier
	members  []*member
	byName   map[string]*member
	notes    []string
}

func (p Phase) analyze(ctx context.Context, v *engine.View, c engine.Caller) (*state, error) {
	prof := v.Profile()
	spec := prof.Spec.Mesh
	s := &state{cluster: prof.Metadata.Name, spec: spec, keys: map[string]KeyRecord{}, byName: map[string]*member{}}
	var err error
	if s.subnet, err = netip.ParsePrefix(spec.Subnet); err != nil {
		return nil, fmt.Errorf("spec.mesh.subnet: %w", err)
	}
	if p.Identity == nil {
		return nil, errors.New("mesh: no node identity is wired in (the identity phase provides certificates and signatures)")
	}
	var prev Allocation
	if data, ok, err := v.Data(DataAddresses); err != nil {
		return nil, err
	} else if ok {
		if prev, err = ParseAllocation(data); err != nil {
			return nil, err
		}
	}
	if data, ok, err := v.Data(DataKeys); err != nil {
		return nil, err
	} else if ok {
		if s.keys, err = ParseKeyRecords(data); err != nil {
			return nil, err
		}
	}
	var names []string
	for _, n := range prof.Spec.Nodes {
		names = append(names, n.Name)
	}
	if s.alloc, err = Allocate(prev, s.subnet, names, p.now()); err != nil {
		return nil, err
	}
	rootDER, crlDER, ok := p.Identity.Trust(v)
	if !ok {
		return nil, errors.New("mesh: the identity phase published no root CA and revocation list in this run")
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return nil, fmt.Errorf("mesh: root CA certificate: %w", err)
	}
	crl, err := pki.ParseCRL(crlDER, root)
	if err != nil {
		return nil, fmt.Errorf("mesh: revocation list: %w", err)
	}
	s.verifier = &pki.Verifier{Cluster: s.cluster, Root: root, CRL: crl, RequireTPM: prof.Spec.Identity.TPM == profile.TPMRequired, Now: p.Now}
	var rotateBefore time.Time
	if spec.RotateKeysBefore != "" {
		rotateBefore, _ = time.Parse(time.RFC3339, spec.RotateKeysBefore)
	}
	for _, src := range spec.SSHFrom {
		if _, err := profile.MeshSSHSource(src); err != nil {
			return nil, fmt.Errorf("spec.mesh.sshFrom: %w", err)
		}
	}
	targeted := map[string]bool{}
	for _, n := range v.NodeNames() {
		targeted[n] = true
	}
	var mu sync.Mutex
	for _, n := range prof.Spec.Nodes {
		m := &member{name: n.Name, address: s.alloc.Nodes[n.Name], targeted: targeted[n.Name]}
		m.record, m.hasRec = s.keys[n.Name]
		if a, err := netip.ParseAddr(n.Address); err == nil {
			m.underlay = a.Unmap()
		}
		s.members = append(s.members, m)
		s.byName[n.Name] = m
	}
	err = v.ForEachNode(ctx, v.NodeNames(), engine.StepObserve, func(ctx context.Context, node string) error {
		o, err := engine.Call(ctx, c, node, OpObserve, ObserveRequest{Interface: spec.Interface})
		if err != nil {
			return err
		}
		if err := o.Check(); err != nil {
			return fmt.Errorf("%s: the node's mesh observation: %w", node, err)
		}
		mu.Lock()
		defer mu.Unlock()
		m := s.byName[node]
		m.obs = &o
		if o.Session.Local.IsValid() {
			m.underlay = o.Session.Local.Addr().Unmap()
			m.sshPort = int(o.Session.Local.Port())
			m.sshSource = netip.PrefixFrom(o.Session.Remote.Addr().Unmap(), o.Session.Remote.Addr().Unmap().BitLen())
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, m := range s.members {
		if n, _ := prof.Node(m.name); m.sshPort == 0 {
			m.sshPort = n.Port
			if m.sshPort == 0 {
				m.sshPort = prof.Spec.SSH.Port
			}
		}
		der, ok := p.Identity.Certificate(v, m.name)
		if !ok {
			if m.targeted {
				return nil, fmt.Errorf("mesh: node %s has no certificate from the identity phase in this run", m.name)
			}
			m.excluded = "no certificate in this run"
			continue
		}
		if m.cert, err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("mesh: node %s: certificate: %w", m.name, err)
		}
		if _, err := s.verifier.VerifyNode(m.cert, x509.ExtKeyUsageClientAuth); err != nil {
			if errors.Is(err, pki.ErrRevoked) {
				m.excluded = "its identity is revoked"
				s.notes = append(s.notes, fmt.Sprintf("%s is left out of the mesh and removed from every peer: %v", m.name, err))
				continue
			}
			return nil, fmt.Errorf("mesh: node %s: %w", m.name, err)
		}
		if !m.underlay.IsValid() {
			return nil, fmt.Errorf("mesh: node %s: no underlay address (its profile address is not an IP and it was not observed in this run)", m.name)
		}
		// The key peers may get now: the recorded one, if it is still the
		// node's key and its signature verifies against today's certificate.
		recOK := false
		if m.hasRec {
			if k, err := wgtypes.ParseKey(m.record.PublicKey); err == nil {
				if _, err := VerifyKey(s.verifier, m.cert, m.name, k, m.record.Signature); err == nil {
					recOK = true
				}
			}
		}
		switch {
		case m.obs == nil: // not targeted: what the state repo says
			if recOK {
				m.key = m.record.PublicKey
			} else {
				m.excluded = "no verified key recorded and the run does not target it"
			}
		case !m.obs.Key.Exists:
			m.needKey, m.needSign = true, true
		case recOK && m.record.PublicKey == m.obs.Key.PublicKey && !rotateBefore.IsZero() && m.record.Created.Before(rotateBefore):
			m.needKey, m.needSign, m.replace = true, true, m.obs.Key.PublicKey
		case recOK && m.record.PublicKey == m.obs.Key.PublicKey:
			m.key = m.record.PublicKey
			if m.obs.Key.Mode != uint32(wantMode()) {
				m.needKey = true // fixes the file's mode; same key
			}
		default:
			m.needSign = true
			m.resign = m.hasRec && m.record.PublicKey == m.obs.Key.PublicKey
		}
	}
	return s, nil
}

func wantMode() uint32 { m, _ := wantKeyMode(); return uint32(m) }

// inMesh lists the members that are in the mesh.
func (s *state) inMesh() []*member {
	var out []*member
	for _, m := range s.members {
		if m.excluded == "" {
			out = append(out, m)
		}
	}
	return out
}

// deviceConfig is m's configuration with its peers' keys as known now
// (unknown keys: the peer is left out, and known reports false).
func (s *state) deviceConfig(m *member) (DeviceConfig, bool) {
	c := DeviceConfig{Interface: s.spec.Interface, Address: netip.PrefixFrom(m.address, s.subnet.Bits()), ListenPort: s.spec.Port, KeepaliveSeconds: DefaultKeepaliveSeconds}
	known := true
	for _, o := range s.inMesh() {
		if o == m {
			continue
		}
		if o.key == "" {
			known = false
			continue
		}
		c.Peers = append(c.Peers, Peer{Name: o.name, PublicKey: o.key, Address: o.address, Endpoint: netip.AddrPortFrom(o.underlay, uint16(s.spec.Port))})
	}
	return c, known
}

func (s *state) ruleset(m *member) (Ruleset, error) {
	rs := Ruleset{Interface: s.spec.Interface, Port: s.spec.Port, SSHPort: m.sshPort}
	for _, src := range s.spec.SSHFrom {
		pfx, _ := profile.MeshSSHSource(src)
		rs.SSHFrom = append(rs.SSHFrom, pfx)
	}
	if m.sshSource.IsValid() {
		rs.SSHFrom = append(rs.SSHFrom, m.sshSource)
	}
	if len(rs.SSHFrom) == 0 {
		return rs, fmt.Errorf("mesh: cannot tell where the installer reaches %s from (the agent does not run under sshd); set spec.mesh.sshFrom", m.name)
	}
	for _, o := range s.inMesh() {
		if o != m {
			rs.Peers = append(rs.Peers, o.underlay)
		}
	}
	return rs.Normalize(), nil
}

// deviceMatches reports whether the observed device and files are c.
func deviceMatches(o *Observation, c DeviceConfig) bool {
	d := o.Device
	if d == nil || !d.Up || d.ListenPort != c.ListenPort || d.PublicKey != o.Key.PublicKey || len(d.Addresses) != 1 || d.Addresses[0] != c.Address {
		return false
	}
	if len(d.Peers) != len(c.Peers) {
		return false
	}
	have := map[string]PeerState{}
	for _, p := range d.Peers {
		have[p.PublicKey] = p
	}
	for _, p := range c.Peers {
		h, ok := have[p.PublicKey]
		if !ok || unmapPort(h.Endpoint) != p.Endpoint || h.KeepaliveSeconds != c.KeepaliveSeconds || len(h.AllowedIPs) != 1 || h.AllowedIPs[0] != hostPrefix(p.Address) {
			return false
		}
	}
	for path, content := range c.Files() {
		if o.Files[path] != hashBytes(content) {
			return false
		}
	}
	return true
}

func firewallMatches(o *Observation, rs Ruleset) bool {
	f := o.Firewall
	if f.Guard != nil || f.Live == "" || f.Live != f.Confirmed.Digest || f.Confirmed.Spec != rs.Hash() {
		return false
	}
	for path, content := range FirewallFiles(rs) {
		if o.Files[path] != hashBytes(content) {
			return false
		}
	}
	return o.Files[FirewallUnitLink] == linkHash(FirewallUnit)
}

// Plan implements engine.Phase: keys to make or rotate, keys to sign,
// devices to (re)configure and firewalls to apply; it publishes the
// addresses of the nodes whose keys are settled.
func (p Phase) Plan(ctx context.Context, v *engine.View) (engine.Plan, error) {
	plan := engine.Plan{}
	if !profile.On(v.Profile().Spec.Mesh.Enabled) {
		plan.Notes = append(plan.Notes, "spec.mesh.enabled is false: the mesh is left as it is")
		return plan, nil
	}
	if wait, err := p.waitingFor(ctx, v); err != nil || wait != "" {
		if err != nil {
			return plan, err
		}
		// Planned before the phases it builds on have run (the plan a
		// person confirms on a first apply): what will happen, in outline.
		// The exact changes are planned right before the mesh applies,
		// once those phases have applied theirs.
		for _, n := range v.NodeNames() {
			plan.Changes = append(plan.Changes, engine.NewChange(n, ActionConfigure, v.Profile().Spec.Mesh.Interface,
				fmt.Sprintf("join the WireGuard mesh on %s and close the underlay to everything but the mesh and SSH (planned in detail after %s)", v.Profile().Spec.Mesh.Interface, wait), nil))
		}
		return plan, nil
	}
	s, err := p.analyze(ctx, v, v)
	if err != nil {
		return plan, err
	}
	plan.Notes = append(plan.Notes, s.notes...)
	plan.Changes, err = s.changes()
	if err != nil {
		return plan, err
	}
	return plan, s.publish(v)
}

// waitingFor names the phase that must apply first before the mesh can be
// planned in detail: preflight while a targeted node lacks the agent, the
// identity phase while it has published no trust anchors or no certificate
// for a targeted node. "" when nothing is missing.
func (p Phase) waitingFor(ctx context.Context, v *engine.View) (string, error) {
	for _, n := range v.NodeNames() {
		st, err := v.Agent(ctx, n)
		if err != nil {
			return "", err
		}
		if !st.Installed {
			return "preflight installs the agent and the identity phase enrols the nodes", nil
		}
	}
	if _, _, ok := p.Identity.Trust(v); !ok {
		return "the identity phase enrols the nodes", nil
	}
	for _, n := range v.NodeNames() {
		if _, ok := p.Identity.Certificate(v, n); !ok {
			return "the identity phase enrols " + n, nil
		}
	}
	return "", nil
}

// changes lists what Apply does, node by node in profile order.
func (s *state) changes() ([]engine.Change, error) {
	// A key that peers do not hold yet (new, rotated, or not the recorded
	// one) changes every peer; re-signing the recorded key changes none.
	keysChange := false
	for _, m := range s.inMesh() {
		if m.needSign && !m.resign {
			keysChange = true
		}
	}
	var out []engine.Change
	for _, m := range s.inMesh() {
		if m.obs == nil {
			// Not targeted: its peers must not change.
			if c, _ := s.deviceConfig(m); keysChange || !s.sameAsRecorded(m, c) {
				return nil, fmt.Errorf("mesh: this change of the mesh also changes the peers of %s, which this run does not target: run without --nodes, or add it", m.name)
			}
			continue
		}
		if m.needKey {
			what := "generate the node's WireGuard key on the node (" + KeyFile + ")"
			if m.replace != "" {
				what = "rotate the node's WireGuard key " + m.replace + " (created before spec.mesh.rotateKeysBefore)"
			} else if !m.needSign {
				what = "fix the mode of " + KeyFile
			}
			out = append(out, engine.NewChange(m.name, ActionKey, KeyFile, what, nil))
		}
		if m.needSign {
			out = append(out, engine.NewChange(m.name, ActionSign, "wireguard-key", "sign the node's WireGuard public key with its identity key and verify it against its certificate", nil))
		}
		c, known := s.deviceConfig(m)
		if !known || m.needKey || m.needSign || !deviceMatches(m.obs, c) {
			out = append(out, engine.NewChange(m.name, ActionConfigure, s.spec.Interface,
				fmt.Sprintf("configure %s: mesh address %s, %d peer(s), port %d; persist for systemd-networkd", s.spec.Interface, c.Address, len(s.inMesh())-1, s.spec.Port), nil))
		}
		rs, err := s.ruleset(m)
		if err != nil {
			return nil, err
		}
		if !firewallMatches(m.obs, rs) {
			out = append(out, engine.NewChange(m.name, ActionFirewall, "table inet "+TableName,
				fmt.Sprintf("close the underlay: only UDP %d from %d peer(s) and SSH (port %d) from %s; guarded, reverted unless confirmed within the bound", rs.Port, len(rs.Peers), rs.SSHPort, prefixList(rs.SSHFrom)), rs))
		}
	}
	return out, nil
}

// sameAsRecorded: a non-targeted node cannot be observed; its peers are
// unchanged when no member's key changes and none was added or removed
// since its key was recorded. Conservatively, that is: every member has a
// recorded verified key.
func (s *state) sameAsRecorded(_ *member, _ DeviceConfig) bool {
	for _, o := range s.inMesh() {
		if o.key == "" && !o.resign {
			return false
		}
	}
	return true
}

func prefixList(ps []netip.Prefix) string {
	var out []string
	for _, p := range ps {
		out = append(out, prefixText(p))
	}
	return strings.Join(out, ", ")
}

// publish publishes the address of every mesh member whose key is settled.
func (s *state) publish(v *engine.View) error {
	for _, m := range s.inMesh() {
		if m.key == "" {
			continue
		}
		if err := engine.Publish(v, meshaddr.Key, m.name, meshaddr.Node{Address: m.address, Subnet: s.subnet, Interface: s.spec.Interface, PublicKey: m.key, Underlay: m.underlay, Port: s.spec.Port}); err != nil {
			return err
		}
	}
	return nil
}

func (s *state) storeAllocation(r *engine.Run) error {
	data, err := json.MarshalIndent(s.alloc, "", "  ")
	if err != nil {
		return err
	}
	return r.PutData(DataAddresses, append(data, '\n'))
}

func (s *state) storeKeys(r *engine.Run) error {
	data, err := json.MarshalIndent(s.keys, "", "  ")
	if err != nil {
		return err
	}
	return r.PutData(DataKeys, append(data, '\n'))
}

// Apply implements engine.Phase, in stages over all planned nodes: keys
// (made on the nodes, signed by their identity keys, verified against their
// certificates), then every device with the full, verified peer set, then
// the firewalls under their guards, a mesh check from every node to each
// of its peers, and the confirmations. A node whose key is refused is left
// out of every peer and fails the phase; a node whose check fails gets its
// previous rules back and fails the phase.
func (p Phase) Apply(ctx context.Context, r *engine.Run, plan engine.Plan) error {
	s, err := p.analyze(ctx, r.View, r)
	if err != nil {
		return err
	}
	if err := s.storeAllocation(r); err != nil {
		return err
	}
	want := map[string]map[string]engine.Change{}
	for _, c := range plan.Changes {
		if want[c.Node] == nil {
			want[c.Node] = map[string]engine.Change{}
		}
		want[c.Node][c.Action] = c
	}
	var failed []error
	var mu sync.Mutex
	keyNodes := nodesWith(plan, ActionKey, ActionSign)
	err = r.ForEachNode(ctx, keyNodes, StepKeys, func(ctx context.Context, node string) error {
		m := s.byName[node]
		pub := m.obs.Key.PublicKey
		if _, ok := want[node][ActionKey]; ok {
			res, err := engine.Call(ctx, r, node, OpEnsureKey, KeyRequest{Replace: m.replace})
			if err != nil {
				return err
			}
			pub = res.PublicKey
		}
		if _, ok := want[node][ActionSign]; !ok {
			return nil
		}
		k, err := wgtypes.ParseKey(pub)
		if err != nil {
			return fmt.Errorf("the node's public key: %w", err)
		}
		sig, err := p.Identity.Sign(ctx, r, node, KeyStatement(s.cluster, node, k))
		if err != nil {
			return fmt.Errorf("signing the WireGuard key with the node's identity: %w", err)
		}
		id, err := VerifyKey(s.verifier, m.cert, node, k, sig)
		if err != nil {
			return fmt.Errorf("refused, left out of every peer: %w", err)
		}
		mu.Lock()
		defer mu.Unlock()
		created := p.now().UTC()
		if m.hasRec && m.record.PublicKey == pub {
			created = m.record.Created
		}
		s.keys[node] = KeyRecord{PublicKey: pub, Signature: sig, CertSerial: id.Serial.String(), Created: created}
		m.key = pub
		return nil
	})
	if err != nil {
		failed = append(failed, err)
		var ne engine.NodeErrors
		if !errors.As(err, &ne) {
			return errors.Join(failed...)
		}
		for n := range ne {
			s.byName[n].excluded = "its key was refused"
		}
	}
	if err := s.storeKeys(r); err != nil {
		return errors.Join(append(failed, err)...)
	}
	// Every node whose peer set changed gets configured, planned or not
	// (a refused key changes its peers' sets).
	var cfgNodes []string
	for _, m := range s.inMesh() {
		if m.obs == nil {
			continue
		}
		c, _ := s.deviceConfig(m)
		if _, planned := want[m.name][ActionConfigure]; planned || !deviceMatches(m.obs, c) {
			cfgNodes = append(cfgNodes, m.name)
		}
	}
	err = r.ForEachNode(ctx, cfgNodes, StepConfigure, func(ctx context.Context, node string) error {
		c, _ := s.deviceConfig(s.byName[node])
		res, err := engine.Call(ctx, r, node, OpConfigure, c)
		if err != nil {
			return err
		}
		if len(res.Changed) > 0 {
			r.Info(node, "%s: %s", c.Interface, strings.Join(res.Changed, "; "))
		}
		return nil
	})
	if err != nil {
		return errors.Join(append(failed, err)...)
	}
	for _, m := range s.inMesh() {
		if m.obs != nil {
			c, _ := s.deviceConfig(m)
			for path, data := range c.Files() {
				r.Render(m.name, strings.TrimPrefix(path, "/"), data)
			}
		}
	}
	if err := p.applyFirewalls(ctx, r, s, nodesWith(plan, ActionFirewall)); err != nil {
		failed = append(failed, err)
	}
	if err := s.publish(r.View); err != nil {
		failed = append(failed, err)
	}
	return errors.Join(failed...)
}

func nodesWith(plan engine.Plan, actions ...string) []string {
	var out []string
	seen := map[string]bool{}
	for _, c := range plan.Changes {
		for _, a := range actions {
			if c.Action == a && !seen[c.Node] {
				seen[c.Node] = true
				out = append(out, c.Node)
			}
		}
	}
	return out
}

// applyFirewalls applies the rulesets under guards on nodes, then checks
// from every node of the mesh that each peer answers over the mesh (the
// check is itself an exec over the installer's SSH connection, which the
// rules check packet by packet: it passes only if a new connection would),
// then confirms, or reverts at once where a check failed.
func (p Phase) applyFirewalls(ctx context.Context, r *engine.Run, s *state, nodes []string) error {
	if len(nodes) == 0 {
		return nil
	}
	guard := p.GuardSeconds
	if guard == 0 {
		guard = DefaultGuardSeconds
	}
	tokens := map[string]string{}
	rulesets := map[string]Ruleset{}
	var mu sync.Mutex
	applyErr := r.ForEachNode(ctx, nodes, StepFirewall, func(ctx context.Context, node string) error {
		m := s.byName[node]
		if m.excluded != "" {
			return nil
		}
		rs, err := s.ruleset(m)
		if err != nil {
			return err
		}
		token := r.ID() + "-" + node + "-" + randomToken()
		res, err := engine.Call(ctx, r, node, OpFirewall, FirewallRequest{Ruleset: rs, Token: token, GuardSeconds: guard})
		if err != nil {
			return err
		}
		if !res.Unchanged {
			mu.Lock()
			tokens[node], rulesets[node] = token, rs
			mu.Unlock()
			r.Info(node, "firewall applied (digest %.12s); reverted at %s unless confirmed", res.Applied.Digest, res.Deadline.Format(time.RFC3339))
		}
		return nil
	})
	var guarded []string
	for _, n := range nodes {
		if tokens[n] != "" {
			guarded = append(guarded, n)
		}
	}
	checkErr := r.ForEachNode(ctx, guarded, StepCheck, func(ctx context.Context, node string) error {
		var targets []netip.Addr
		for _, o := range s.inMesh() {
			if o.name != node && o.key != "" {
				targets = append(targets, o.address)
			}
		}
		res, err := engine.Call(ctx, r, node, OpProbe, ProbeRequest{Targets: targets})
		if err == nil {
			var bad []string
			for _, pr := range res.Results {
				if !pr.OK {
					bad = append(bad, fmt.Sprintf("%s (%s)", pr.Target, pr.Error))
				}
			}
			if len(bad) > 0 {
				err = fmt.Errorf("over the mesh, no answer from %s", strings.Join(bad, ", "))
			}
		}
		if err != nil {
			_, rerr := engine.Call(context.WithoutCancel(ctx), r, node, OpRevert, ConfirmRequest{Token: tokens[node], Reason: "the installer's check failed"})
			if rerr != nil {
				return fmt.Errorf("firewall check failed (%v); the node's guard restores the previous rules by itself (reverting at once failed: %v)", err, rerr)
			}
			return fmt.Errorf("firewall check failed, previous rules restored: %w", err)
		}
		_, err = engine.Call(ctx, r, node, OpConfirm, ConfirmRequest{Token: tokens[node]})
		if err != nil {
			return fmt.Errorf("confirming the firewall: %w", err)
		}
		for path, data := range FirewallFiles(rulesets[node]) {
			r.Render(node, strings.TrimPrefix(path, "/"), data)
		}
		return nil
	})
	return errors.Join(applyErr, checkErr)
}

func randomToken() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Check validates what a node answered to OpObserve before the installer
// uses it: keys are WireGuard keys, addresses valid, lists bounded.
func (o Observation) Check() error {
	if o.Key.Exists {
		if _, err := wgtypes.ParseKey(o.Key.PublicKey); err != nil {
			return fmt.Errorf("key: %w", err)
		}
	}
	if d := o.Device; d != nil {
		if len(d.Peers) > 4096 || len(d.Addresses) > 256 {
			return errors.New("device: too many peers or addresses")
		}
		if d.PublicKey != "" {
			if _, err := wgtypes.ParseKey(d.PublicKey); err != nil {
				return fmt.Errorf("device key: %w", err)
			}
		}
		for _, p := range d.Peers {
			if _, err := wgtypes.ParseKey(p.PublicKey); err != nil {
				return fmt.Errorf("peer key: %w", err)
			}
		}
	}
	if len(o.Files) > 64 || len(o.Problems) > 256 {
		return errors.New("too many files or problems")
	}
	return nil
}
