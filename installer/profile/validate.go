package profile

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"filippo.io/age"
	"filippo.io/age/agessh"
)

// ValidateOptions changes what Validate requires of the machine it runs on.
type ValidateOptions struct {
	// AcceptNewHostKeys allows a known_hosts file that does not exist yet:
	// it will be created with the keys the nodes offer.
	AcceptNewHostKeys bool
	// SkipFileChecks leaves out every check of the installer's machine: the
	// files the profile names (used for example profiles whose keys live
	// elsewhere, and to find the state repo when keys are gone) and
	// SSH_AUTH_SOCK.
	SkipFileChecks bool
}

// FileTimeout bounds the reading of each file a profile names, and of the
// profile itself.
const FileTimeout = 10 * time.Second

var (
	dnsLabel    = lazyMustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	hostname    = lazyMustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	posixUser   = lazyMustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	ifaceName   = lazyMustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,14}$`)
	rke2Version = lazyMustCompile(`^v1\.[0-9]+\.[0-9]+\+rke2r[0-9]+$`)
	labelName   = lazyMustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)
	labelValue  = lazyMustCompile(`^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$`)
	// zoneName is an IPv6 zone: a network interface name (Linux allows at
	// most 15 bytes, no '/', ':' or whitespace; netdevice(7)) or an index.
	zoneName = lazyMustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`)
	// kafkaTopic is Kafka's legal topic name (Topic.validate in Apache Kafka).
	kafkaTopic = lazyMustCompile(`^[A-Za-z0-9._-]{1,249}$`)
)

// validator collects every problem of a profile.
type validator struct {
	ctx   context.Context
	p     *Profile
	opts  ValidateOptions
	errs  Errors
	files map[string]fileResult // each file read once, by resolved path
}

// errf records a problem with field, unless field (or a parent) already
// failed to decode: that problem was reported, and its zero value says
// nothing.
func (v *validator) errf(field, format string, args ...any) {
	if v.p.isBad(field) {
		return
	}
	v.errs = append(v.errs, &FieldError{File: v.p.File, Pos: v.p.Position(field), Path: field, Msg: fmt.Sprintf(format, args...)})
}

// Validate is ValidateContext without a context of its own; each file the
// profile names is still read within FileTimeout.
func (p *Profile) Validate(opts ValidateOptions) error {
	return p.ValidateContext(context.Background(), opts)
}

// ValidateContext checks the profile's meaning: names, addresses, duplicates,
// CIDR overlaps, quorum, disks and mount points, and (unless
// opts.SkipFileChecks) the files it names on this machine: each must be a
// regular file of bounded size, read within FileTimeout while ctx lasts, and
// hold what the field says (a private key, known_hosts lines, PEM
// certificates). It touches no node. Every problem is reported, as Errors,
// each with file:line:column and field path.
func (p *Profile) ValidateContext(ctx context.Context, opts ValidateOptions) error {
	if errs := p.validate(ctx, opts); len(errs) > 0 {
		return errs.sorted()
	}
	return nil
}

func (p *Profile) validate(ctx context.Context, opts ValidateOptions) Errors {
	v := &validator{ctx: ctx, p: p, opts: opts, files: map[string]fileResult{}}
	v.header()
	v.ssh()
	v.nodes()
	v.identity()
	v.diskEncryption()
	v.networks()
	v.rke2()
	v.calico()
	v.services()
	v.netpol()
	v.clusterAccess()
	v.state()
	return v.errs
}

func (v *validator) header() {
	c := v.p.Cluster
	if c.APIVersion != APIVersion {
		v.errf("apiVersion", "expected %s, got %s", quote(APIVersion), quote(c.APIVersion))
	}
	if c.Kind != Kind {
		v.errf("kind", "expected %s, got %s", quote(Kind), quote(c.Kind))
	}
	if !dnsLabel.MatchString(c.Metadata.Name) {
		v.errf("metadata.name", "expected a DNS label (lowercase letters, digits and '-', at most 63 characters), got %s", quote(c.Metadata.Name))
	}
}

func (v *validator) ssh() {
	s := v.p.Spec.SSH
	if !posixUser.MatchString(s.User) {
		v.errf("spec.ssh.user", "expected a user name (lowercase letters, digits, '_' and '-'), got %s", quote(s.User))
	}
	if s.KeyFile == "" && !s.Agent && !v.p.badUnder("spec.ssh.keyFile") && !v.p.isBad("spec.ssh.agent") {
		v.errf("spec.ssh", "no credentials: set keyFile to a private key file, or agent: true to use ssh-agent")
	}
	v.keyFile("spec.ssh.keyFile", s.KeyFile, s.Agent)
	if s.Agent {
		v.agentSocket("spec.ssh.agent")
	}
	if s.KnownHosts == "" {
		v.errf("spec.ssh.knownHosts", "required: the known_hosts file the nodes' host keys are checked against (host keys are never ignored)")
	} else {
		v.knownHosts("spec.ssh.knownHosts", s.KnownHosts, v.opts.AcceptNewHostKeys)
	}
	if b := s.Bastion; b != nil {
		v.address("spec.ssh.bastion.address", b.Address)
		if !posixUser.MatchString(b.User) {
			v.errf("spec.ssh.bastion.user", "expected a user name, got %s", quote(b.User))
		}
		if b.KeyFile == "" && !s.Agent {
			v.errf("spec.ssh.bastion", "no credentials: set keyFile (or spec.ssh.keyFile, or spec.ssh.agent: true)")
		}
		// A key file the bastion inherits is checked once, at spec.ssh.keyFile.
		if v.p.Written("spec.ssh.bastion.keyFile") {
			v.keyFile("spec.ssh.bastion.keyFile", b.KeyFile, s.Agent)
		}
		v.port("spec.ssh.bastion.port", b.Port)
	}
	v.port("spec.ssh.port", s.Port)
}

func (v *validator) port(field string, p int) {
	if p < 1 || p > 65535 {
		v.errf(field, "expected a port between 1 and 65535, got %d", p)
	}
}

func (v *validator) address(field, addr string) {
	if addr == "" {
		v.errf(field, "required: an IP address or DNS name")
		return
	}
	if ip, err := netip.ParseAddr(addr); err == nil {
		switch z := ip.Zone(); {
		case z != "" && !zoneName.MatchString(z):
			v.errf(field, "the IPv6 zone %s is not a network interface name (at most 15 letters, digits, '-', '_' or '.'), in %s", quote(z), quote(addr))
		case ip.IsUnspecified() || ip.IsMulticast() || ip.Unmap() == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			v.errf(field, "%s is not the address of one machine; give the node's own address", ip)
		}
		return
	}
	// An all-numeric last label is a mistyped IP address, not a DNS name.
	last := addr[strings.LastIndexByte(addr, '.')+1:]
	if !hostname.MatchString(addr) || len(addr) > 253 || strings.Trim(last, "0123456789") == "" {
		v.errf(field, "expected an IP address or DNS name, got %s", quote(addr))
	}
}

func (v *validator) nodes() {
	nodes := v.p.Spec.Nodes
	if len(nodes) == 0 {
		v.errf("spec.nodes", "at least one node is required")
		return
	}
	names := map[string]int{}
	addrs := map[string]int{}
	servers, rolesKnown := 0, true
	for i, n := range nodes {
		base := fmt.Sprintf("spec.nodes[%d]", i)
		if !dnsLabel.MatchString(n.Name) {
			v.errf(base+".name", "expected a DNS label (lowercase letters, digits and '-', at most 63 characters), got %s", quote(n.Name))
		} else if j, dup := names[n.Name]; dup {
			v.errf(base+".name", "node name %s is already used by spec.nodes[%d]", quote(n.Name), j)
		} else {
			names[n.Name] = i
		}
		v.address(base+".address", n.Address)
		// A port inherited from spec.ssh.port is reported there.
		if v.p.Written(base+".port") || !v.p.Written("spec.ssh.port") {
			v.port(base+".port", n.Port)
		}
		if n.Address != "" && !v.p.isBad(base+".address") && !v.p.isBad(base+".port") {
			key := net.JoinHostPort(canonicalAddr(n.Address), fmt.Sprint(n.Port))
			if j, dup := addrs[key]; dup {
				v.errf(base+".address", "address %s is already used by spec.nodes[%d] (%s)", key, j, nodes[j].Name)
			} else {
				addrs[key] = i
			}
		}
		switch {
		case v.p.isBad(base + ".role"):
			rolesKnown = false
		case n.Role == RoleServer:
			servers++
		case n.Role == RoleAgent:
		default:
			v.errf(base+".role", "expected server or agent, got %s", quote(string(n.Role)))
			rolesKnown = false
		}
		v.disks(base, n.DataDisks)
		v.labels(base+".labels", n.Labels)
	}
	switch {
	case !rolesKnown:
	case servers == 0:
		v.errf("spec.nodes", "no node has role server; at least one server is needed for the control plane")
	case servers%2 == 0:
		v.errf("spec.nodes", "%d servers: etcd needs an odd number of servers to keep quorum (1, 3 or 5); make one an agent or add one", servers)
	}
}

func canonicalAddr(a string) string {
	if ip, err := netip.ParseAddr(a); err == nil {
		return ip.Unmap().String()
	}
	return strings.ToLower(a)
}

func (v *validator) labels(field string, labels map[string]string) {
	for _, k := range sortedKeys(labels) {
		name := k
		if prefix, n, ok := strings.Cut(k, "/"); ok {
			name = n
			if !hostname.MatchString(prefix) {
				v.errf(field+"."+k, "label prefix %s must be a DNS subdomain", quote(prefix))
			}
		}
		if !labelName.MatchString(name) {
			v.errf(field+"."+k, "label name %s: expected at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric", quote(name))
		}
		if !labelValue.MatchString(labels[k]) {
			v.errf(field+"."+k, "label value %s: expected at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric", quote(labels[k]))
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (v *validator) identity() {
	id := v.p.Spec.Identity
	if id.TPM != TPMRequired && id.TPM != TPMInsecureSkip {
		v.errf("spec.identity.tpm", "expected required or insecure-skip, got %s", quote(string(id.TPM)))
	}
	for i, f := range id.EKCACertificates {
		v.certificates(fmt.Sprintf("spec.identity.ekCACertificates[%d]", i), f)
	}
	if len(id.AttestPCRs) == 0 && !v.p.badUnder("spec.identity.attestPCRs") {
		v.errf("spec.identity.attestPCRs", "an empty list would attest no part of the boot, so any boot state passes; name PCRs, or leave attestPCRs out for the default %v", DefaultAttestPCRs)
	}
	seen := map[int]bool{}
	for i, pcr := range id.AttestPCRs {
		field := fmt.Sprintf("spec.identity.attestPCRs[%d]", i)
		switch {
		case v.p.isBad(field):
		case pcr < 0 || pcr > 23:
			v.errf(field, "expected a PCR index between 0 and 23, got %d", pcr)
		case pcr == 16 || pcr == 23:
			v.errf(field, "PCR %d can be reset by any program on the node (the TPM's debug and application PCRs), so it attests nothing; leave it out", pcr)
		case seen[pcr]:
			v.errf(field, "PCR %d is listed twice", pcr)
		}
		seen[pcr] = true
	}
}

func (v *validator) diskEncryption() {
	pcrs := v.p.Spec.DiskEncryption.PCRs
	if len(pcrs) == 0 && !v.p.badUnder("spec.diskEncryption.pcrs") {
		v.errf("spec.diskEncryption.pcrs", "an empty list would bind the disks' TPM keyslot to no PCR, so any boot chain unlocks them; name PCRs, or leave pcrs out for the default %v", DefaultPCRs)
	}
	seen := map[int]bool{}
	for i, pcr := range pcrs {
		field := fmt.Sprintf("spec.diskEncryption.pcrs[%d]", i)
		if v.p.isBad(field) {
			continue
		}
		if pcr < 0 || pcr > 23 {
			v.errf(field, "expected a PCR index between 0 and 23, got %d", pcr)
		} else if seen[pcr] {
			v.errf(field, "PCR %d is listed twice", pcr)
		}
		seen[pcr] = true
	}
	if g := v.p.Spec.DiskEncryption.RecoveryGeneration; g < 1 && !v.p.isBad("spec.diskEncryption.recoveryGeneration") {
		v.errf("spec.diskEncryption.recoveryGeneration", "expected a generation of 1 or more, got %d; raise it by one to rotate every data disk's recovery passphrase", g)
	}
}

// networks checks the mesh, pod and service networks against each other and
// against the nodes' addresses: an overlap would route traffic into the wrong place.
func (v *validator) networks() {
	s := v.p.Spec
	type network struct {
		field, name string
		prefix      netip.Prefix
	}
	var nets []network
	parse := func(field, name, cidr string) {
		pfx, err := netip.ParsePrefix(cidr)
		if err != nil {
			v.errf(field, "expected a CIDR such as 10.99.0.0/24, got %s", quote(cidr))
			return
		}
		if pfx.Masked() != pfx {
			v.errf(field, "%s has host bits set; did you mean %s?", cidr, pfx.Masked())
			return
		}
		nets = append(nets, network{field, name, pfx})
	}
	if On(s.Mesh.Enabled) {
		parse("spec.mesh.subnet", "mesh subnet", s.Mesh.Subnet)
		v.port("spec.mesh.port", s.Mesh.Port)
		if s.Mesh.Port == 51820 || s.Mesh.Port == 51821 {
			v.errf("spec.mesh.port", "UDP %d is used by Calico's WireGuard; choose another port (default %d)", s.Mesh.Port, DefaultMeshPort)
		}
		if !ifaceName.MatchString(s.Mesh.Interface) || strings.HasPrefix(s.Mesh.Interface, "wireguard") {
			v.errf("spec.mesh.interface", "expected an interface name of at most 15 letters, digits, '-' or '_', not Calico's wireguard.*; got %s", quote(s.Mesh.Interface))
		}
		for i, src := range s.Mesh.SSHFrom {
			if _, err := MeshSSHSource(src); err != nil {
				v.errf(fmt.Sprintf("spec.mesh.sshFrom[%d]", i), "expected an address or CIDR such as 192.0.2.10 or 192.0.2.0/24, got %q", src)
			}
		}
		if r := s.Mesh.RotateKeysBefore; r != "" {
			if _, err := time.Parse(time.RFC3339, r); err != nil {
				v.errf("spec.mesh.rotateKeysBefore", "expected an RFC 3339 time such as 2026-12-01T00:00:00Z, got %q", r)
			}
		}
	}
	parse("spec.rke2.clusterCIDR", "pod network", s.RKE2.ClusterCIDR)
	parse("spec.rke2.serviceCIDR", "service network", s.RKE2.ServiceCIDR)
	for i := range nets {
		for j := i + 1; j < len(nets); j++ {
			a, b := nets[i], nets[j]
			if !a.prefix.Overlaps(b.prefix) {
				continue
			}
			// Point at the network the user wrote, not at a default.
			if _, written := v.p.pos[b.field]; !written {
				a, b = b, a
			}
			v.errf(b.field, "%s %s overlaps the %s %s (%s)", b.name, b.prefix, a.name, a.prefix, a.field)
		}
	}
	for i, n := range s.Nodes {
		ip, err := netip.ParseAddr(n.Address)
		if err != nil {
			continue
		}
		for _, nw := range nets {
			if nw.prefix.Contains(ip.Unmap()) {
				v.errf(fmt.Sprintf("spec.nodes[%d].address", i), "node address %s lies inside the %s %s (%s); choose non-overlapping networks", ip, nw.name, nw.prefix, nw.field)
			}
		}
	}
	for _, nw := range nets {
		if nw.name == "mesh subnet" && nw.prefix.Addr().Is4() {
			if hosts := 1<<(32-nw.prefix.Bits()) - 2; hosts < len(s.Nodes) {
				v.errf(nw.field, "%s has room for %d nodes, the profile has %d", nw.prefix, max(hosts, 0), len(s.Nodes))
			}
		}
	}
}

func (v *validator) rke2() {
	r := v.p.Spec.RKE2
	if r.Version != "" && !rke2Version.MatchString(r.Version) {
		v.errf("spec.rke2.version", "expected an RKE2 release such as v1.33.5+rke2r1, got %s", quote(r.Version))
	}
	switch r.Artifacts {
	case ArtifactsOnline:
		if r.ArtifactsDir != "" {
			v.errf("spec.rke2.artifactsDir", "only used with artifacts: airgap")
		}
	case ArtifactsAirgap:
		if r.ArtifactsDir == "" {
			v.errf("spec.rke2.artifactsDir", "required with artifacts: airgap: a directory with the release tarball, image archives and sha256sum file")
		} else {
			v.directory("spec.rke2.artifactsDir", r.ArtifactsDir, "artifacts directory")
		}
	default:
		v.errf("spec.rke2.artifacts", "expected online or airgap, got %s", quote(string(r.Artifacts)))
	}
	if r.TLSMinVersion != "1.2" && r.TLSMinVersion != "1.3" {
		v.errf("spec.rke2.tlsMinVersion", "expected \"1.3\" (default) or \"1.2\", got %s", quote(r.TLSMinVersion))
	}
	if r.SecretsEncryptionProvider != "aescbc" && r.SecretsEncryptionProvider != "secretbox" {
		v.errf("spec.rke2.secretsEncryptionProvider", "expected aescbc or secretbox, got %s", quote(r.SecretsEncryptionProvider))
	}
}

// Calico's MTU bounds: IPv6 needs 1280 on every link (RFC 8200 §5), and
// jumbo frames end at 9000.
const (
	minMTU = 1280
	maxMTU = 9000
)

func (v *validator) calico() {
	if mtu := v.p.Spec.Calico.MTU; v.p.Written("spec.calico.mtu") && (mtu < minMTU || mtu > maxMTU) {
		v.errf("spec.calico.mtu", "expected an MTU between %d and %d bytes, got %d; leave mtu out to derive it from the underlay", minMTU, maxMTU, mtu)
	}
}

func (v *validator) services() {
	s := v.p.Spec
	if s.Keycloak.Enabled {
		if s.Keycloak.Hostname == "" {
			v.errf("spec.keycloak.hostname", "required when keycloak is enabled: the DNS name Keycloak is served at")
		} else if !hostname.MatchString(s.Keycloak.Hostname) {
			v.errf("spec.keycloak.hostname", "expected a DNS name, got %s", quote(s.Keycloak.Hostname))
		}
	}
	if s.Keycloak.Enabled && !dnsLabel.MatchString(s.Keycloak.Realm) {
		v.errf("spec.keycloak.realm", "expected a DNS label, got %s", quote(s.Keycloak.Realm))
	}
	groups := map[string]bool{}
	for i, g := range s.Keycloak.Groups {
		f := fmt.Sprintf("spec.keycloak.groups[%d]", i)
		if g.Name == "" || groups[g.Name] {
			v.errf(f+".name", "expected a unique group name, got %s", quote(g.Name))
		}
		groups[g.Name] = true
		switch g.Role {
		case "admin", "operator":
			if len(g.Namespaces) > 0 {
				v.errf(f+".namespaces", "only developer groups are scoped to namespaces")
			}
		case "developer":
			if len(g.Namespaces) == 0 {
				v.errf(f+".namespaces", "a developer group needs the namespaces it may use")
			}
		default:
			v.errf(f+".role", "expected admin, operator or developer, got %s", quote(string(g.Role)))
		}
		for j, ns := range g.Namespaces {
			if !dnsLabel.MatchString(ns) {
				v.errf(fmt.Sprintf("%s.namespaces[%d]", f, j), "expected a namespace name, got %s", quote(ns))
			}
		}
	}
	users := map[string]bool{}
	for i, u := range s.Kafka.Users {
		f := fmt.Sprintf("spec.kafka.users[%d].name", i)
		if !dnsLabel.MatchString(u.Name) || users[u.Name] {
			v.errf(f, "expected a unique DNS label, got %s", quote(u.Name))
		}
		users[u.Name] = true
		for j, t := range u.Topics {
			if !kafkaTopic.MatchString(t) {
				v.errf(fmt.Sprintf("spec.kafka.users[%d].topics[%d]", i, j), "expected a Kafka topic name (at most 249 letters, digits, '.', '_' or '-'), got %s", quote(t))
			}
		}
	}
	dbs := map[string]bool{}
	for i, d := range s.Postgres.Databases {
		f := fmt.Sprintf("spec.postgres.databases[%d]", i)
		if !posixUser.MatchString(d.Name) || dbs[d.Name] {
			v.errf(f+".name", "expected a unique database name (lowercase letters, digits, '_'), got %s", quote(d.Name))
		}
		dbs[d.Name] = true
		if !posixUser.MatchString(d.Owner) {
			v.errf(f+".owner", "expected a role name (lowercase letters, digits, '_'), got %s", quote(d.Owner))
		}
	}
}

func (v *validator) netpol() {
	seen := v.inlineWorkloads()
	if !v.opts.SkipFileChecks {
		v.netpolFiles(seen)
	}
	v.netpolNamespaces()
}

func (v *validator) opening(f, name string, o Opening) {
	if !dnsLabel.MatchString(name) {
		v.errf(f, "opening name %s must be a DNS label; it names the NetworkPolicy", quote(name))
	}
	hasSel := o.NamespaceSelector != nil || o.PodSelector != nil
	if o.IPBlock != "" {
		if hasSel {
			v.errf(f+".ipBlock", "an opening is either an ipBlock or selectors, not both; split it in two")
		}
		pfx, err := netip.ParsePrefix(o.IPBlock)
		if err != nil || pfx.Masked() != pfx {
			v.errf(f+".ipBlock", "expected a CIDR such as 10.43.0.10/32, got %s", quote(o.IPBlock))
		}
	} else if !hasSel {
		v.errf(f, "no peer: set namespaceSelector and/or podSelector, or ipBlock")
	}
	// An empty selector selects everything; that must be written on purpose.
	if o.NamespaceSelector != nil && len(o.NamespaceSelector) == 0 {
		v.errf(f+".namespaceSelector", "an empty selector means every namespace; name the namespace (kubernetes.io/metadata.name: NAME)")
	}
	if o.PodSelector != nil && len(o.PodSelector) == 0 {
		v.errf(f+".podSelector", "an empty selector means every pod; leave podSelector out to allow the whole namespace, or name the pods")
	}
	v.labels(f+".namespaceSelector", o.NamespaceSelector)
	v.labels(f+".podSelector", o.PodSelector)
	if len(o.Ports) == 0 {
		v.errf(f+".ports", "at least one port is required, e.g. {8080: TCP}")
	}
	ports := make([]int, 0, len(o.Ports))
	for p := range o.Ports {
		ports = append(ports, p)
	}
	sort.Ints(ports)
	for _, p := range ports {
		pf := fmt.Sprintf("%s.ports.%d", f, p)
		if p < 1 || p > 65535 {
			v.errf(pf, "expected a port between 1 and 65535, got %d", p)
		}
		switch o.Ports[p] {
		case "TCP", "UDP", "SCTP":
		default:
			v.errf(pf, "expected protocol TCP, UDP or SCTP, got %s", quote(o.Ports[p]))
		}
	}
}

func (v *validator) state() {
	st := v.p.Spec.State
	v.stateRepo("spec.state.repo", st.Repo)
	for i, r := range st.Recipients {
		if _, err := ParseRecipient(r); err != nil {
			v.errf(fmt.Sprintf("spec.state.recipients[%d]", i), "%v", err)
		}
	}
	if r := st.Remote; r != nil {
		if !sshURL.MatchString(r.URL) {
			v.errf("spec.state.remote.url", "expected an SSH URL such as ssh://git@git.example.org/platform/state.git or git@git.example.org:platform/state.git, got %s", quote(r.URL))
		}
		// Files the remote inherits from spec.ssh are checked there.
		if v.p.Written("spec.state.remote.keyFile") {
			v.keyFile("spec.state.remote.keyFile", r.KeyFile, v.p.Spec.SSH.Agent)
		}
		if v.p.Written("spec.state.remote.knownHosts") {
			v.knownHosts("spec.state.remote.knownHosts", r.KnownHosts, false)
		}
	}
}

// sshURL matches ssh://[user@]host[:port]/path and scp-like [user@]host:path.
var sshURL = lazyMustCompile(`^(ssh://([A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+(:[0-9]+)?/[^\s]+|([A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+:/?[^/\s][^\s]*)$`)

// ParseRecipient parses an age recipient: age1... or an SSH public key.
func ParseRecipient(s string) (age.Recipient, error) {
	switch {
	case strings.HasPrefix(s, "age1"):
		r, err := age.ParseX25519Recipient(s)
		if err != nil {
			return nil, fmt.Errorf("not a valid age recipient: %v", err)
		}
		return r, nil
	case strings.HasPrefix(s, "ssh-"):
		r, err := agessh.ParseRecipient(s)
		if err != nil {
			return nil, fmt.Errorf("not a valid SSH recipient: %v", err)
		}
		return r, nil
	}
	return nil, fmt.Errorf("expected an age recipient (age1...) or an SSH public key (ssh-ed25519 ...)")
}

// MeshSSHSource parses an entry of spec.mesh.sshFrom: an address (a single
// host) or a CIDR without host bits.
func MeshSSHSource(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s has host bits set", s)
	}
	return p, nil
}
