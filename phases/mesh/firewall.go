package mesh

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family inet) the mesh owns on every
// node. castellan never touches any other table: Calico's and kube-proxy's
// (iptables-nft) live in tables of their own.
const TableName = "castellan"

// RulesetVersion changes whenever the rules built from a Ruleset change, so
// that a new castellan re-applies them.
const RulesetVersion = "castellan-mesh-firewall-v1"

// ExemptInterfaces are the interfaces the firewall never filters: loopback,
// and Calico's own devices (pods, IP-in-IP, VXLAN, Calico's WireGuard), whose
// traffic is Calico's policies' business. The mesh device is added per
// ruleset. A name ending in '*' is a prefix.
var ExemptInterfaces = []string{"lo", "cali*", "tunl0", "vxlan.calico", "vxlan-v6.calico", "wireguard.cali", "wg-v6.cali"}

// Ruleset is the underlay firewall of one node: between cluster nodes only
// the mesh's UDP port is open on the underlay, SSH only from the installer's
// side, and everything else between nodes goes through the mesh device.
//
// The rules, in table inet castellan:
//
//	input:   accept on lo, the mesh device and Calico's devices;
//	         accept replies to connections this node opened (ct direction reply)
//	         and related ICMP errors;
//	         accept TCP SSHPort from each SSHFrom prefix;
//	         accept UDP Port from the peers' underlay addresses;
//	         accept ICMPv6 neighbour discovery; drop everything else.
//	forward: the same devices and replies; drop what enters from the underlay.
//	output:  accept on lo, the mesh and Calico's devices, and replies;
//	         to a peer's underlay address only UDP Port; reject the rest.
//
// A packet that a remote sends on a connection it opened is checked by the
// same rules as the connection's first packet (there is no blanket "ct state
// established accept" for it): an existing SSH connection keeps working only
// if a new one would be accepted, so a confirmation that arrives over the
// installer's SSH connection proves the installer is not locked out.
type Ruleset struct {
	// Interface is the mesh device.
	Interface string `json:"interface"`
	// Port is the mesh's UDP port.
	Port int `json:"port"`
	// Peers are the underlay addresses of the other cluster nodes.
	Peers []netip.Addr `json:"peers"`
	// SSHFrom are the sources allowed to reach sshd on the underlay.
	SSHFrom []netip.Prefix `json:"sshFrom"`
	// SSHPort is the node's sshd port.
	SSHPort int `json:"sshPort"`
}

// Normalize sorts and deduplicates the ruleset's lists, so equal rulesets
// build, render and hash the same.
func (rs Ruleset) Normalize() Ruleset {
	out := rs
	out.Peers = slices.Clone(rs.Peers)
	sort.Slice(out.Peers, func(i, j int) bool { return out.Peers[i].Less(out.Peers[j]) })
	out.Peers = slices.Compact(out.Peers)
	out.SSHFrom = nil
	for _, p := range rs.SSHFrom {
		out.SSHFrom = append(out.SSHFrom, p.Masked())
	}
	sort.Slice(out.SSHFrom, func(i, j int) bool {
		a, b := out.SSHFrom[i], out.SSHFrom[j]
		if a.Addr() != b.Addr() {
			return a.Addr().Less(b.Addr())
		}
		return a.Bits() < b.Bits()
	})
	out.SSHFrom = slices.Compact(out.SSHFrom)
	for i, a := range out.Peers {
		out.Peers[i] = a.Unmap()
	}
	return out
}

// Check reports a ruleset that cannot be applied.
func (rs Ruleset) Check() error {
	if err := checkInterfaceName(rs.Interface); err != nil {
		return err
	}
	if rs.Port < 1 || rs.Port > 65535 || rs.SSHPort < 1 || rs.SSHPort > 65535 {
		return fmt.Errorf("ruleset: ports must be 1-65535 (mesh %d, ssh %d)", rs.Port, rs.SSHPort)
	}
	if len(rs.SSHFrom) == 0 {
		return errors.New("ruleset: no SSH source: the installer would be locked out")
	}
	for _, p := range rs.SSHFrom {
		if !p.IsValid() {
			return errors.New("ruleset: invalid SSH source prefix")
		}
	}
	for _, a := range rs.Peers {
		if !a.IsValid() || a.IsUnspecified() {
			return fmt.Errorf("ruleset: invalid peer address %v", a)
		}
	}
	return nil
}

// Hash is the SHA-256 (hex) of the normalized ruleset and RulesetVersion:
// what the node records as the spec it applied.
func (rs Ruleset) Hash() string {
	data, _ := json.Marshal(struct {
		V string  `json:"v"`
		R Ruleset `json:"r"`
	}{RulesetVersion, rs.Normalize()})
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func checkInterfaceName(name string) error {
	if name == "" || len(name) > 15 || strings.ContainsAny(name, "/ \t\n\"\\*") {
		return fmt.Errorf("invalid interface name %q", name)
	}
	return nil
}

// --- one model, two renderings (netlink expressions and nft text) ---------

type verdict int

const (
	vAccept verdict = iota
	vDrop
	vReject
)

// rule is one nftables rule in a form both renderings are made from, in the
// order of expressions nft(8) itself generates for the same text (checked
// by TestRulesetTextMatchesNetlink against nft -f).
type rule struct {
	iifname, oifname string
	ctReply          bool // ct direction reply
	ctRelated        bool // ct state related
	family           byte // 0, unix.NFPROTO_IPV4 or unix.NFPROTO_IPV6
	saddr            netip.Prefix
	saddrSet         string
	daddrSet         string
	l4               byte // 0, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6
	dport            uint16
	icmp6Type        byte // with l4 == IPPROTO_ICMPV6
	counter          bool
	verdict          verdict
}

type chainSpec struct {
	name  string
	hook  *nftables.ChainHook
	rules []rule
}

const (
	setPeers4 = "peers4"
	setPeers6 = "peers6"
)

func (rs Ruleset) model() []chainSpec {
	rs = rs.Normalize()
	exempt := append([]string{rs.Interface}, ExemptInterfaces...)
	sort.Strings(exempt)
	var in, fwd, out []rule
	for _, name := range exempt {
		in = append(in, rule{iifname: name})
		fwd = append(fwd, rule{iifname: name})
		out = append(out, rule{oifname: name})
	}
	in = append(in, rule{ctReply: true}, rule{ctRelated: true})
	fwd = append(fwd, rule{ctReply: true}, rule{ctRelated: true}, rule{counter: true, verdict: vDrop})
	out = append(out, rule{ctReply: true})
	for _, p := range rs.SSHFrom {
		fam := byte(unix.NFPROTO_IPV4)
		if p.Addr().Is6() {
			fam = unix.NFPROTO_IPV6
		}
		in = append(in, rule{family: fam, saddr: p, l4: unix.IPPROTO_TCP, dport: uint16(rs.SSHPort)})
	}
	in = append(in,
		rule{family: unix.NFPROTO_IPV4, saddrSet: setPeers4, l4: unix.IPPROTO_UDP, dport: uint16(rs.Port)},
		rule{family: unix.NFPROTO_IPV6, saddrSet: setPeers6, l4: unix.IPPROTO_UDP, dport: uint16(rs.Port)})
	// Neighbour discovery (RFC 4861): router advertisement, neighbour
	// solicitation and advertisement. IPv4's ARP does not pass inet tables.
	for _, t := range []byte{134, 135, 136} {
		in = append(in, rule{family: unix.NFPROTO_IPV6, l4: unix.IPPROTO_ICMPV6, icmp6Type: t})
	}
	in = append(in, rule{counter: true, verdict: vDrop})
	out = append(out,
		rule{family: unix.NFPROTO_IPV4, daddrSet: setPeers4, l4: unix.IPPROTO_UDP, dport: uint16(rs.Port)},
		rule{family: unix.NFPROTO_IPV6, daddrSet: setPeers6, l4: unix.IPPROTO_UDP, dport: uint16(rs.Port)},
		rule{family: unix.NFPROTO_IPV4, daddrSet: setPeers4, counter: true, verdict: vReject},
		rule{family: unix.NFPROTO_IPV6, daddrSet: setPeers6, counter: true, verdict: vReject})
	return []chainSpec{
		{name: "input", hook: nftables.ChainHookInput, rules: in},
		{name: "forward", hook: nftables.ChainHookForward, rules: fwd},
		{name: "output", hook: nftables.ChainHookOutput, rules: out},
	}
}

func (rs Ruleset) peers(v6 bool) []netip.Addr {
	var out []netip.Addr
	for _, a := range rs.Normalize().Peers {
		if a.Is6() == v6 {
			out = append(out, a)
		}
	}
	return out
}

// RenderNFT renders the ruleset as an nft(8) script that replaces table inet
// castellan atomically (nft -f runs a file as one transaction): what the
// boot unit loads and what the state repo records.
func (rs Ruleset) RenderNFT() []byte {
	rs = rs.Normalize()
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Written by castellan (mesh phase, %s, spec %s).\n", RulesetVersion, rs.Hash()[:16])
	b.WriteString("# Loaded at boot by castellan-mesh-firewall.service; castellan apply replaces it.\n")
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\ntable inet %s {\n", TableName, TableName, TableName)
	for _, s := range []struct {
		name, typ string
		v6        bool
	}{{setPeers4, "ipv4_addr", false}, {setPeers6, "ipv6_addr", true}} {
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", s.name, s.typ)
		if ps := rs.peers(s.v6); len(ps) > 0 {
			var el []string
			for _, a := range ps {
				el = append(el, a.String())
			}
			fmt.Fprintf(&b, "\t\telements = { %s }\n", strings.Join(el, ", "))
		}
		b.WriteString("\t}\n")
	}
	for _, c := range rs.model() {
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook %s priority filter; policy accept;\n", c.name, c.name)
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t\t%s\n", r.text())
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.Bytes()
}

func (r rule) text() string {
	var parts []string
	if r.iifname != "" {
		parts = append(parts, fmt.Sprintf("iifname %q", r.iifname))
	}
	if r.oifname != "" {
		parts = append(parts, fmt.Sprintf("oifname %q", r.oifname))
	}
	if r.ctReply {
		parts = append(parts, "ct direction reply")
	}
	if r.ctRelated {
		parts = append(parts, "ct state related")
	}
	ip := "ip"
	if r.family == unix.NFPROTO_IPV6 {
		ip = "ip6"
	}
	addrMatch := false
	switch {
	case r.saddr.IsValid() && r.saddr.Bits() > 0:
		parts = append(parts, fmt.Sprintf("%s saddr %s", ip, prefixText(r.saddr)))
		addrMatch = true
	case r.saddrSet != "":
		parts = append(parts, fmt.Sprintf("%s saddr @%s", ip, r.saddrSet))
		addrMatch = true
	case r.daddrSet != "":
		parts = append(parts, fmt.Sprintf("%s daddr @%s", ip, r.daddrSet))
		addrMatch = true
	}
	if r.family != 0 && !addrMatch && r.l4 != unix.IPPROTO_ICMPV6 {
		// Only the family (an SSH source of /0).
		parts = append(parts, "meta nfproto "+map[byte]string{unix.NFPROTO_IPV4: "ipv4", unix.NFPROTO_IPV6: "ipv6"}[r.family])
	}
	switch r.l4 {
	case unix.IPPROTO_TCP:
		parts = append(parts, fmt.Sprintf("tcp dport %d", r.dport))
	case unix.IPPROTO_UDP:
		parts = append(parts, fmt.Sprintf("udp dport %d", r.dport))
	case unix.IPPROTO_ICMPV6:
		parts = append(parts, fmt.Sprintf("icmpv6 type %s", map[byte]string{134: "nd-router-advert", 135: "nd-neighbor-solicit", 136: "nd-neighbor-advert"}[r.icmp6Type]))
	}
	if r.counter {
		parts = append(parts, "counter")
	}
	parts = append(parts, [...]string{"accept", "drop", "reject"}[r.verdict])
	return strings.Join(parts, " ")
}

func prefixText(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// exprs builds the rule's netlink expressions, in nft's order.
func (r rule) exprs() []expr.Any {
	var e []expr.Any
	cmp := func(data []byte) { e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data}) }
	if r.iifname != "" {
		e = append(e, &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1})
		cmp(ifname(r.iifname))
	}
	if r.oifname != "" {
		e = append(e, &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1})
		cmp(ifname(r.oifname))
	}
	if r.ctReply {
		e = append(e, &expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1})
		cmp([]byte{1}) // IP_CT_DIR_REPLY
	}
	if r.ctRelated {
		e = append(e,
			&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binary.NativeEndian.AppendUint32(nil, expr.CtStateBitRELATED), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)})
	}
	if r.family != 0 {
		e = append(e, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1})
		cmp([]byte{r.family})
	}
	saddrOff, daddrOff, alen := uint32(12), uint32(16), uint32(4)
	if r.family == unix.NFPROTO_IPV6 {
		saddrOff, daddrOff, alen = 8, 24, 16
	}
	if r.saddr.IsValid() && r.saddr.Bits() > 0 {
		e = append(e, prefixMatch(saddrOff, r.saddr)...)
	}
	if r.saddrSet != "" {
		e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: saddrOff, Len: alen},
			&expr.Lookup{SourceRegister: 1, SetName: r.saddrSet})
	}
	if r.daddrSet != "" {
		e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOff, Len: alen},
			&expr.Lookup{SourceRegister: 1, SetName: r.daddrSet})
	}
	if r.l4 != 0 {
		e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1})
		cmp([]byte{r.l4})
		if r.l4 == unix.IPPROTO_ICMPV6 {
			e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1})
			cmp([]byte{r.icmp6Type})
		} else {
			e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
			cmp(binary.BigEndian.AppendUint16(nil, r.dport))
		}
	}
	if r.counter {
		e = append(e, &expr.Counter{})
	}
	switch r.verdict {
	case vAccept:
		e = append(e, &expr.Verdict{Kind: expr.VerdictAccept})
	case vDrop:
		e = append(e, &expr.Verdict{Kind: expr.VerdictDrop})
	case vReject:
		// ICMP (v6) port unreachable: what nft's "reject" means once the
		// family is known.
		code := uint8(3)
		if r.family == unix.NFPROTO_IPV6 {
			code = 4
		}
		e = append(e, &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: code})
	}
	return e
}

// prefixMatch matches a source or destination prefix as nft does: a
// byte-aligned prefix loads only its bytes; another loads the whole address
// and masks it.
func prefixMatch(off uint32, p netip.Prefix) []expr.Any {
	p = p.Masked()
	addr := p.Addr().AsSlice()
	if p.Bits()%8 == 0 {
		n := p.Bits() / 8
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(n)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:n]},
		}
	}
	mask := net.CIDRMask(p.Bits(), p.Addr().BitLen())
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(addr))},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(addr)), Mask: mask, Xor: make([]byte, len(addr))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr},
	}
}

// ifname is an interface name as nft compares it: NUL-padded to IFNAMSIZ,
// or the bare prefix for a wildcard.
func ifname(name string) []byte {
	if p, ok := strings.CutSuffix(name, "*"); ok {
		return []byte(p)
	}
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// --- applying and reading the live table ------------------------------------

func table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
}

// applyRuleset replaces table inet castellan with rs in one netlink batch
// (one nf_tables transaction: all or nothing; there is no moment without
// rules).
func applyRuleset(c *nftables.Conn, rs Ruleset) error {
	if err := rs.Check(); err != nil {
		return err
	}
	rs = rs.Normalize()
	t := table()
	// add, delete, add: replaces the table whether or not it existed.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	for _, s := range []struct {
		name string
		typ  nftables.SetDatatype
		v6   bool
	}{{setPeers4, nftables.TypeIPAddr, false}, {setPeers6, nftables.TypeIP6Addr, true}} {
		set := &nftables.Set{Table: t, Name: s.name, KeyType: s.typ, KeyByteOrder: binaryutil.BigEndian}
		var el []nftables.SetElement
		for _, a := range rs.peers(s.v6) {
			el = append(el, nftables.SetElement{Key: a.AsSlice()})
		}
		if err := c.AddSet(set, el); err != nil {
			return fmt.Errorf("nftables: set %s: %w", s.name, err)
		}
	}
	accept := nftables.ChainPolicyAccept
	for _, cs := range rs.model() {
		ch := c.AddChain(&nftables.Chain{Name: cs.name, Table: t, Type: nftables.ChainTypeFilter, Hooknum: cs.hook, Priority: nftables.ChainPriorityFilter, Policy: &accept})
		for _, r := range cs.rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.exprs()})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: replacing table inet %s: %w", TableName, err)
	}
	return nil
}

// deleteTable removes table inet castellan if it exists (atomically).
func deleteTable(c *nftables.Conn) error {
	t := table()
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: deleting table inet %s: %w", TableName, err)
	}
	return nil
}

// TableDigest reads table inet castellan back from the kernel and returns
// the SHA-256 (hex) of a canonical form of it: chains (hook, priority,
// policy), their rules' expressions in order, and sets with their elements.
// Counters' values and set IDs are left out, so the digest changes only when
// the rules do; nft -f and applyRuleset of the same ruleset give the same
// digest. It returns "" when the table does not exist.
func TableDigest(c *nftables.Conn) (string, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", fmt.Errorf("nftables: listing tables: %w", err)
	}
	var t *nftables.Table
	for _, x := range tables {
		if x.Name == TableName {
			t = x
		}
	}
	if t == nil {
		return "", nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", fmt.Errorf("nftables: listing chains: %w", err)
	}
	var canon []any
	sort.Slice(chains, func(i, j int) bool { return chains[i].Name < chains[j].Name })
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != TableName {
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return "", fmt.Errorf("nftables: rules of chain %s: %w", ch.Name, err)
		}
		var rs [][]string
		for _, r := range rules {
			var es []string
			for _, x := range r.Exprs {
				es = append(es, exprText(x))
			}
			if len(r.UserData) > 0 {
				es = append(es, "userdata "+hex.EncodeToString(r.UserData))
			}
			rs = append(rs, es)
		}
		hook, prio, policy, typ := "", "", "", string(ch.Type)
		if ch.Hooknum != nil {
			hook = fmt.Sprint(*ch.Hooknum)
		}
		if ch.Priority != nil {
			prio = fmt.Sprint(*ch.Priority)
		}
		if ch.Policy != nil {
			policy = fmt.Sprint(*ch.Policy)
		}
		canon = append(canon, []any{"chain", ch.Name, typ, hook, prio, policy, rs})
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return "", fmt.Errorf("nftables: listing sets: %w", err)
	}
	sort.Slice(sets, func(i, j int) bool { return sets[i].Name < sets[j].Name })
	for _, s := range sets {
		el, err := c.GetSetElements(s)
		if err != nil {
			return "", fmt.Errorf("nftables: elements of set %s: %w", s.Name, err)
		}
		var keys []string
		for _, e := range el {
			keys = append(keys, fmt.Sprintf("%x/%x/%v", e.Key, e.Val, e.IntervalEnd))
		}
		sort.Strings(keys)
		canon = append(canon, []any{"set", s.Name, s.KeyType.Name, s.Anonymous, s.Constant, s.Interval, s.IsMap, keys})
	}
	data, err := json.Marshal(canon)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// exprText is a canonical text of one expression: its type and fields, with
// counter values and set IDs (which differ between loads) left out.
func exprText(x expr.Any) string {
	switch v := x.(type) {
	case *expr.Counter:
		return "counter"
	case *expr.Lookup:
		c := *v
		c.SetID = 0
		x = &c
	}
	data, err := json.Marshal(x)
	if err != nil {
		data = []byte(fmt.Sprintf("%#v", x))
	}
	return reflect.TypeOf(x).Elem().Name() + string(data)
}
