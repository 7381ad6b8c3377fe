package mesh

import (
	"bufio"
	"bytes"
	"castellan/installer/testenv"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/engine/enginetest"
	"castellan/installer/meshaddr"
	"castellan/installer/pki"
	"castellan/installer/profile"
)

// testIdentity stands in for the identity phase (a test double, named so):
// a real cluster CA, a real ECDSA P-256 key per node with a real node
// certificate, a real CRL. Sign signs with the node's key in this process
// (the identity phase signs on the node, with the key in its TPM).
type testIdentity struct {
	t     *testing.T
	ca    *pki.Authority
	mu    sync.Mutex
	keys  map[string]*ecdsa.PrivateKey
	certs map[string][]byte
	crl   []byte
	// forge makes Sign return a signature by another key for these nodes.
	forge map[string]bool
	signs map[string]int
}

func newTestIdentity(t *testing.T, cluster string, nodes ...string) *testIdentity {
	ca, err := pki.NewAuthority(cluster, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	id := &testIdentity{t: t, ca: ca, keys: map[string]*ecdsa.PrivateKey{}, certs: map[string][]byte{}, forge: map[string]bool{}, signs: map[string]int{}}
	for _, n := range nodes {
		id.add(cluster, n)
	}
	id.revoke()
	return id
}

func (id *testIdentity) add(cluster, node string) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c, err := id.ca.IssueNode(pki.NodeRequest{Cluster: cluster, Node: node, PublicKey: &k.PublicKey, Protection: pki.TPMResident}, time.Now())
	if err != nil {
		id.t.Fatal(err)
	}
	id.keys[node], id.certs[node] = k, c.Raw
}

var crlNumber int64

// revoke publishes a CRL revoking the given nodes' certificates.
func (id *testIdentity) revoke(nodes ...string) {
	var rev []pki.Revocation
	for _, n := range nodes {
		c, err := x509.ParseCertificate(id.certs[n])
		if err != nil {
			id.t.Fatal(err)
		}
		rev = append(rev, pki.Revocation{Serial: c.SerialNumber, RevokedAt: time.Now().Add(-time.Minute), Reason: 1})
	}
	crlNumber++
	l, err := id.ca.NewCRL(rev, big.NewInt(crlNumber), time.Now(), 0)
	if err != nil {
		id.t.Fatal(err)
	}
	id.crl = l.DER
}

func (id *testIdentity) Certificate(_ *engine.View, node string) ([]byte, bool) {
	c, ok := id.certs[node]
	return c, ok
}

func (id *testIdentity) Trust(*engine.View) ([]byte, []byte, bool) {
	return id.ca.Root.Cert.Raw, id.crl, true
}

func (id *testIdentity) Sign(_ context.Context, _ *engine.Run, node string, data []byte) ([]byte, error) {
	id.mu.Lock()
	defer id.mu.Unlock()
	id.signs[node]++
	k := id.keys[node]
	if id.forge[node] {
		k, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	d := sha256.Sum256(data)
	return k.Sign(rand.Reader, d[:], crypto.SHA256)
}

// agentProcess is a node: its own network namespace and, for the
// userspace WireGuard device's UAPI socket, its own /run/wireguard (a
// private mount namespace), so every node's device can have the same name.
// Each operation runs as a real agent process (this test binary) entered
// into both namespaces with nsenter.
type agentProcess struct {
	n   *testNode
	pid int
}

func startNodeProcess(t *testing.T, n *testNode, iface string) *agentProcess {
	t.Helper()
	requireTun(t)
	if _, err := exec.LookPath("nsenter"); err != nil {
		testenv.Missing(t, "needs nsenter and unshare (util-linux; make test-deps installs it)")
	}
	exe, _ := os.Executable()
	cmd := exec.Command("ip", "netns", "exec", n.ns, "unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mkdir -p /run/wireguard && mount -t tmpfs tmpfs /run/wireguard && exec "$0"`, exe)
	cmd.Env = append(os.Environ(), "MESH_TEST_WG="+iface)
	out, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("%s: wireguard-go: %q %v %s", n.name, line, err, stderr.String())
	}
	return &agentProcess{n: n, pid: cmd.Process.Pid}
}

// serve answers op on the node by running the agent there.
func (a *agentProcess) serve(op string) func(json.RawMessage) (any, error) {
	return func(in json.RawMessage) (any, error) {
		exe, _ := os.Executable()
		cmd := exec.Command("nsenter", "-t", fmt.Sprint(a.pid), "-m", "-n", exe, op)
		cmd.Env = append(os.Environ(), "MESH_TEST_AGENT_ROOT="+a.n.root)
		cmd.Stdin = bytes.NewReader(in)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("agent %s: %v: %s", op, err, stderr.String())
		}
		resp, err := agent.DecodeResponse(out)
		if err != nil {
			return nil, err
		}
		if !resp.OK {
			return nil, fmt.Errorf("%s: %s", resp.Error.Code, resp.Error.Message)
		}
		return resp.Result, nil
	}
}

type phaseLab struct {
	t     *testing.T
	tn    *testNet
	id    *testIdentity
	store *enginetest.MemStore
	nodes *enginetest.FakeNodes
	phase Phase
	iface string
	procs map[string]*agentProcess
}

func newPhaseLab(t *testing.T, nodes int) *phaseLab {
	requireNFT(t)
	tn := newTestNet(t, nodes)
	l := &phaseLab{t: t, tn: tn, store: enginetest.NewMemStore(), nodes: enginetest.NewFakeNodes(Ops()...), iface: "cm" + tn.id + "wg", procs: map[string]*agentProcess{}}
	var names []string
	for _, n := range tn.nodes {
		names = append(names, n.name)
		l.plug(n)
	}
	l.id = newTestIdentity(t, "lab", names...)
	l.phase = Phase{Identity: l.id, GuardSeconds: 20}
	return l
}

// plug starts n's node process and routes every mesh operation to it.
func (l *phaseLab) plug(n *testNode) {
	a := startNodeProcess(l.t, n, l.iface)
	l.procs[n.name] = a
	for _, op := range Ops() {
		l.nodes.Handle(n.name, op, a.serve(op.OpName()))
	}
}

func (l *phaseLab) profile(nodes int) *profile.Profile {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: castellan/v1alpha1\nkind: Cluster\nmetadata: {name: lab}\nspec:\n  ssh: {user: admin, keyFile: k, knownHosts: kh}\n  nodes:\n")
	for i, n := range l.tn.nodes[:nodes] {
		role := "agent"
		if i == 0 {
			role = "server"
		}
		fmt.Fprintf(&b, "    - {name: %s, address: %s, role: %s}\n", n.name, n.addr, role)
	}
	fmt.Fprintf(&b, "  mesh: {interface: %s, sshFrom: [%s]}\n", l.iface, l.tn.installer.addr)
	p, err := profile.Parse("lab.yaml", []byte(b.String()))
	if err != nil {
		l.t.Fatal(err)
	}
	return p
}

// apply plans and applies the phase on the first nodes of the lab, or, with
// target, on those of them only (--nodes).
func (l *phaseLab) apply(nodes int, target ...string) (engine.Plan, engine.Result, *engine.Session) {
	p := l.profile(nodes)
	run := p.Spec.Nodes
	if len(target) > 0 {
		run = nil
		for _, n := range p.Spec.Nodes {
			if slices.Contains(target, n.Name) {
				run = append(run, n)
			}
		}
	}
	s := engine.NewSession(engine.SessionConfig{ID: "t", Profile: p, Nodes: run, Access: l.nodes, Store: l.store})
	e := &engine.Engine{Phases: []engine.Phase{l.phase}}
	plans, err := e.PlanAll(context.Background(), s, e.Phases)
	if err != nil {
		l.t.Fatalf("plan: %v", err)
	}
	res := e.Apply(context.Background(), s, e.Phases, plans)
	return plans[0], res, s
}

func actions(p engine.Plan) string {
	var out []string
	for _, c := range p.Changes {
		out = append(out, c.Node+":"+c.Action)
	}
	return strings.Join(out, " ")
}

// pingAll checks from every node that every other answers over the mesh.
func (l *phaseLab) pingAll(s *engine.Session, names ...string) {
	l.t.Helper()
	for _, from := range names {
		var targets []string
		req := ProbeRequest{}
		for _, to := range names {
			if to == from {
				continue
			}
			a, ok := engine.Lookup(s.View(Name), meshaddr.Key, to)
			if !ok {
				l.t.Fatalf("no mesh address published for %s", to)
			}
			req.Targets = append(req.Targets, a.Address)
			targets = append(targets, to)
		}
		res, err := engine.Call(context.Background(), s.View(Name), from, OpProbe, req)
		if err != nil {
			l.t.Fatal(err)
		}
		for i, r := range res.Results {
			if !r.OK {
				l.t.Errorf("%s cannot reach %s over the mesh: %s", from, targets[i], r.Error)
			}
		}
	}
}

// TestPhase drives the whole phase (plan, apply, plan again) through the
// engine against real node processes: userspace WireGuard in namespaces,
// nf_tables, the revert guard. Only the transport is a fake (FakeNodes
// instead of SSH; each operation is still a real agent process on the node).
func TestPhase(t *testing.T) {
	l := newPhaseLab(t, 4)
	start := time.Now()
	plan, res, s := l.apply(3)
	if res.Outcome != engine.OutcomeOK {
		for _, n := range []string{"n1", "n2", "n3"} {
			o, err := engine.Call(context.Background(), s.View(Name), n, OpObserve, ObserveRequest{Interface: l.iface})
			j, _ := json.MarshalIndent(o, "", " ")
			t.Logf("%s: %s %v", n, j, err)
		}
		t.Fatalf("first apply: %s %s %v", res.Outcome, res.Error, s.NodeErrors())
	}
	t.Logf("first apply of 3 nodes: %s; plan: %s", time.Since(start).Round(time.Millisecond), actions(plan))
	for _, n := range []string{"n1", "n2", "n3"} {
		for _, a := range []string{"ensure-key", "sign-key", "configure", "firewall"} {
			if !strings.Contains(actions(plan), n+":"+a) {
				t.Errorf("first plan lacks %s:%s", n, a)
			}
		}
	}
	l.pingAll(s, "n1", "n2", "n3")
	first := map[string]meshaddr.Node{}
	for _, n := range []string{"n1", "n2", "n3"} {
		first[n], _ = engine.Lookup(s.View(Name), meshaddr.Key, n)
	}
	if first["n1"].Address.String() != "10.99.0.1" || first["n3"].Address.String() != "10.99.0.3" {
		t.Errorf("addresses %v", first)
	}
	if rec := s.Outputs()["mesh.address"]; len(rec) != 3 {
		t.Errorf("recorded outputs %v", rec)
	}
	if _, ok := s.Rendered()["n1/mesh/etc/castellan/mesh/firewall.nft"]; !ok {
		t.Errorf("firewall not rendered: %v", s.RenderedPaths())
	}
	signs := l.id.signs["n1"]

	// A rerun is a no-op: empty plan, nothing signed again.
	start = time.Now()
	plan, res, s = l.apply(3)
	if !plan.Empty() || res.Outcome != engine.OutcomeUnchanged {
		t.Errorf("rerun: plan %s, outcome %s", actions(plan), res.Outcome)
	}
	t.Logf("no-op rerun: %s", time.Since(start).Round(time.Millisecond))
	if l.id.signs["n1"] != signs {
		t.Errorf("the rerun signed again")
	}
	for n, a := range first {
		if got, _ := engine.Lookup(s.View(Name), meshaddr.Key, n); got != a {
			t.Errorf("%s: published %+v on the rerun, %+v before", n, got, a)
		}
	}

	// A fourth node: it gets a key and everything; the others only get a
	// new peer and a firewall with one more peer.
	plan, res, s = l.apply(4)
	if res.Outcome != engine.OutcomeOK {
		t.Fatalf("adding n4: %s %s %v", res.Outcome, res.Error, s.NodeErrors())
	}
	want := "n1:configure n1:firewall n2:configure n2:firewall n3:configure n3:firewall n4:ensure-key n4:sign-key n4:configure n4:firewall"
	if actions(plan) != want {
		t.Errorf("adding n4 planned %s\nwant %s", actions(plan), want)
	}
	l.pingAll(s, "n1", "n2", "n3", "n4")
	if a, _ := engine.Lookup(s.View(Name), meshaddr.Key, "n4"); a.Address.String() != "10.99.0.4" {
		t.Errorf("n4 got %v", a.Address)
	}
	for n, a := range first {
		if got, _ := engine.Lookup(s.View(Name), meshaddr.Key, n); got != a {
			t.Errorf("%s changed when n4 came: %+v -> %+v", n, a, got)
		}
	}

	// n1 gets a new identity key and certificate (the identity phase
	// enrolled it again): the recorded signature of its WireGuard key no
	// longer verifies. A run on n1 alone re-signs the same key, which every
	// peer already holds: no untargeted node's peers change, so the run is
	// not refused for them, and nothing but n1 is touched.
	l.id.add("lab", "n1")
	plan, res, s = l.apply(4, "n1")
	if res.Outcome != engine.OutcomeOK {
		t.Fatalf("n1 alone with a new identity: %s %s %v", res.Outcome, res.Error, s.NodeErrors())
	}
	if got := actions(plan); !strings.Contains(got, "n1:sign-key") || strings.Contains(got, "ensure-key") || strings.Contains(got, "n2:") {
		t.Errorf("n1 alone with a new identity planned %s", got)
	}
	if got, _ := engine.Lookup(s.View(Name), meshaddr.Key, "n1"); got != first["n1"] {
		t.Errorf("n1's mesh entry changed on re-signing: %+v -> %+v", first["n1"], got)
	}
	if plan, _, s = l.apply(4); !plan.Empty() {
		t.Errorf("after re-signing n1, a run on every node plans %s", actions(plan))
	}
	l.pingAll(s, "n1", "n2", "n3", "n4")

	// n2's identity is revoked: it is removed from every peer and from
	// their firewalls; nothing is done to n2 itself.
	l.id.revoke("n2")
	plan, res, s = l.apply(4)
	if res.Outcome != engine.OutcomeOK {
		t.Fatalf("after revoking n2: %s %s", res.Outcome, res.Error)
	}
	if got := actions(plan); got != "n1:configure n1:firewall n3:configure n3:firewall n4:configure n4:firewall" {
		t.Errorf("revoking n2 planned %s", got)
	}
	if !strings.Contains(strings.Join(plan.Notes, "\n"), "n2 is left out of the mesh") {
		t.Errorf("notes %v", plan.Notes)
	}
	if _, ok := engine.Lookup(s.View(Name), meshaddr.Key, "n2"); ok {
		t.Errorf("a revoked node's address was published")
	}
	o, err := engine.Call(context.Background(), s.View(Name), "n1", OpObserve, ObserveRequest{Interface: l.iface})
	if err != nil || len(o.Device.Peers) != 2 {
		t.Errorf("n1's peers after the revocation: %+v %v", o.Device, err)
	}
	for _, p := range o.Device.Peers {
		if p.PublicKey == first["n2"].PublicKey {
			t.Errorf("n1 still has n2's key as a peer")
		}
	}
	l.pingAll(s, "n1", "n3", "n4")
	l.id.revoke()

	// A bad signature: n3 rotates its key (spec.mesh.rotateKeysBefore) but
	// its identity signs the new key with another key: refused, left out of
	// every peer, the phase fails naming it; the others keep working.
	l.id.forge["n3"] = true
	l.phase.Now = func() time.Time { return time.Now().Add(time.Hour) }
	p := l.profile(4)
	p.Spec.Mesh.RotateKeysBefore = time.Now().Add(30 * time.Minute).UTC().Format(time.RFC3339)
	ses := engine.NewSession(engine.SessionConfig{ID: "t", Profile: p, Nodes: p.Spec.Nodes, Access: l.nodes, Store: l.store})
	e := &engine.Engine{Phases: []engine.Phase{l.phase}}
	res = e.Apply(context.Background(), ses, e.Phases, nil)
	if res.Outcome != engine.OutcomeFailed || !strings.Contains(ses.NodeErrors()["n3"], "does not verify") {
		t.Fatalf("a forged signature: %s %s %v", res.Outcome, res.Error, ses.NodeErrors())
	}
	o, _ = engine.Call(context.Background(), ses.View(Name), "n1", OpObserve, ObserveRequest{Interface: l.iface})
	for _, peer := range o.Device.Peers {
		if peer.PublicKey == first["n3"].PublicKey {
			t.Errorf("n1 kept n3's old key after n3's new key was refused")
		}
	}
	t.Logf("refused: %s", ses.NodeErrors()["n3"])
}

// noIdentityYet is an identity that has published nothing yet: a first
// apply's plan, before the identity phase enrolled the nodes.
type noIdentityYet struct{}

func (noIdentityYet) Certificate(*engine.View, string) ([]byte, bool) { return nil, false }
func (noIdentityYet) Trust(*engine.View) ([]byte, []byte, bool)       { return nil, nil, false }
func (noIdentityYet) Sign(context.Context, *engine.Run, string, []byte) ([]byte, error) {
	return nil, errors.New("not enrolled")
}

// TestPlanBeforeTheIdentityPhase: planned at the prompt of a first apply
// (no agent on the nodes, no certificate yet), the mesh says in outline what
// it will do on every node instead of failing; the detail is planned after
// the phases it builds on have applied.
func TestPlanBeforeTheIdentityPhase(t *testing.T) {
	for _, agentThere := range []bool{false, true} {
		nodes := enginetest.NewFakeNodes(Phase{}.Ops()...)
		cfg := engine.SessionConfig{ID: "plan", Access: nodes, Store: enginetest.NewMemStore()}
		prof := &profile.Profile{}
		prof.Metadata.Name = "c"
		on := true
		prof.Spec.Mesh = profile.Mesh{Enabled: &on, Subnet: "10.99.0.0/24", Port: 51871, Interface: "wg-castellan"}
		for _, n := range []string{"n0", "n1"} {
			prof.Spec.Nodes = append(prof.Spec.Nodes, profile.Node{Name: n, Address: "192.0.2.1"})
			nodes.SetAgent(n, agentThere)
		}
		cfg.Profile, cfg.Nodes = prof, prof.Spec.Nodes
		s := engine.NewSession(cfg)
		plan, err := Phase{Identity: noIdentityYet{}}.Plan(context.Background(), s.View(Name))
		if err != nil {
			t.Fatalf("agent there %v: plan failed: %v", agentThere, err)
		}
		if len(plan.Changes) != 2 || plan.Changes[0].Action != ActionConfigure || !strings.Contains(plan.Changes[0].Summary, "planned in detail after") {
			t.Errorf("agent there %v: plan = %+v", agentThere, plan)
		}
	}
}

// verify runs castellan verify's engine step for the mesh on the first
// nodes of the lab.
func (l *phaseLab) verify(nodes int) engine.VerifyResult {
	p := l.profile(nodes)
	s := engine.NewSession(engine.SessionConfig{ID: "verify", Profile: p, Nodes: p.Spec.Nodes, Access: l.nodes, Store: l.store})
	return (&engine.Engine{}).Verify(context.Background(), s, []engine.Phase{l.phase})
}

func meshChecks(r engine.VerifyResult) map[string]engine.Check {
	out := map[string]engine.Check{}
	for _, c := range r.Checks {
		out[c.Node+"/"+c.Name] = c
	}
	return out
}

// TestVerifyMesh: castellan verify against real node processes
// (userspace WireGuard in namespaces, nf_tables): right after an apply and
// a ping every check is ok, in one exec per node; handshakes older than
// the bound are drift; a peer removed by hand (wg set ... peer ... remove)
// is drift naming the peer; a rule deleted by hand from table inet
// castellan (nft delete rule ...) is drift naming the table.
func TestVerifyMesh(t *testing.T) {
	l := newPhaseLab(t, 3)
	_, res, s := l.apply(3)
	if res.Outcome != engine.OutcomeOK {
		t.Fatalf("apply: %s %s %v", res.Outcome, res.Error, s.NodeErrors())
	}
	l.pingAll(s, "n1", "n2", "n3")
	before := l.nodes.Execs("n1")
	r := l.verify(3)
	got := meshChecks(r)
	if r.Status != engine.CheckOK {
		t.Fatalf("verify after apply: %+v", r.Checks)
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		for _, c := range []string{CheckInterface, CheckPeers, CheckHandshakes, CheckUnderlay} {
			if got[n+"/"+c].Status != engine.CheckOK {
				t.Errorf("%s/%s: %+v", n, c, got[n+"/"+c])
			}
		}
	}
	if e := l.nodes.Execs("n1") - before; e != 1 {
		t.Errorf("verify cost %d execs on n1, want 1", e)
	}
	t.Logf("n1: %s; %s; %s", got["n1/peers"].Message, got["n1/handshakes"].Message, got["n1/underlay"].Message)

	l.phase.HandshakeMaxAge = time.Nanosecond
	if got := meshChecks(l.verify(3)); got["n2/handshakes"].Status != engine.CheckDrift || !strings.Contains(got["n2/handshakes"].Message, "no handshake within 1ns with n1 (") {
		t.Errorf("stale handshakes: %+v", got["n2/handshakes"])
	}
	l.phase.HandshakeMaxAge = 0

	// By hand on n1: wg set IFACE peer N2KEY remove.
	n2, _ := engine.Lookup(s.View(Name), meshaddr.Key, "n2")
	in, _ := json.Marshal(removePeerRequest{Interface: l.iface, PublicKey: n2.PublicKey})
	if _, err := l.procs["n1"].serve(testRemovePeer)(in); err != nil {
		t.Fatal(err)
	}
	// By hand on n3: nft delete rule inet castellan input handle N.
	listing, err := exec.Command("ip", "netns", "exec", l.procs["n3"].n.ns, "nft", "-a", "list", "chain", "inet", TableName, "input").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v %s", err, listing)
	}
	handle := ""
	for _, line := range strings.Split(string(listing), "\n") {
		if i := strings.Index(line, "# handle "); i >= 0 && strings.Contains(line, "udp dport") {
			handle = strings.TrimSpace(line[i+len("# handle "):])
			break
		}
	}
	if handle == "" {
		t.Fatalf("no UDP rule in:\n%s", listing)
	}
	if out, err := exec.Command("ip", "netns", "exec", l.procs["n3"].n.ns, "nft", "delete", "rule", "inet", TableName, "input", "handle", handle).CombinedOutput(); err != nil {
		t.Fatalf("nft delete rule: %v %s", err, out)
	}
	r = l.verify(3)
	got = meshChecks(r)
	if r.Status != engine.CheckDrift || got["n1/peers"].Status != engine.CheckDrift || !strings.Contains(got["n1/peers"].Message, "peer n2 ("+n2.PublicKey+") is missing") ||
		got["n1/configure"].Status != engine.CheckDrift {
		t.Errorf("a removed peer: %+v", r.Checks)
	}
	if got["n3/underlay"].Status != engine.CheckDrift || !strings.Contains(got["n3/underlay"].Message, "a rule was changed, added or deleted by hand") || got["n3/firewall"].Status != engine.CheckDrift {
		t.Errorf("a deleted rule: %+v", got["n3/underlay"])
	}
	if got["n2/underlay"].Status != engine.CheckOK {
		t.Errorf("n2 was not touched: %+v", got["n2/underlay"])
	}
}
