package profile

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	"filippo.io/age"
	"filippo.io/age/agessh"
)

// ValidateOptions changes what Validate requires of the machine it runs on.
type ValidateOptions struct {
	// AcceptNewHostKeys allows a known_hosts file that does not exist yet:
	// it will be created with the keys the nodes offer.
	AcceptNewHostKeys bool
	// SkipFileChecks leaves out the checks that files named by the profile
	// are readable (used for example profiles whose keys live elsewhere).
	SkipFileChecks bool
}

var (
	dnsLabel    = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	hostname    = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	posixUser   = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	devicePath  = regexp.MustCompile(`^/dev/[A-Za-z0-9][A-Za-z0-9/_.:+-]*$`)
	ifaceName   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,14}$`)
	rke2Version = regexp.MustCompile(`^v1\.[0-9]+\.[0-9]+\+rke2r[0-9]+$`)
	labelName   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)
	labelValue  = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$`)
	// systemMounts are mount points whose replacement would break the node.
	systemMounts = []string{"/", "/boot", "/etc", "/usr", "/var", "/var/lib", "/home", "/root", "/tmp", "/proc", "/sys", "/dev", "/run"}
)

// validator collects every problem of a profile.
type validator struct {
	p    *Profile
	errs Errors
}

func (v *validator) errf(path, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{File: v.p.File, Pos: v.p.posOf(path), Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Validate checks the profile's meaning: names, addresses, duplicates, CIDR
// overlaps, quorum, and that the files it names are readable. It touches no
// node. Every problem is reported, each with file:line:column and field path.
func (p *Profile) Validate(opts ValidateOptions) error {
	v := &validator{p: p}
	v.header()
	v.ssh(opts)
	v.nodes()
	v.identity(opts)
	v.diskEncryption()
	v.networks()
	v.rke2(opts)
	v.services()
	v.netpol(opts)
	v.clusterAccess(opts)
	v.state(opts)
	if len(v.errs) > 0 {
		return v.errs.sorted()
	}
	return nil
}

func (v *validator) header() {
	c := v.p.Cluster
	if c.APIVersion != APIVersion {
		v.errf("apiVersion", "expected %q, got %q", APIVersion, c.APIVersion)
	}
	if c.Kind != Kind {
		v.errf("kind", "expected %q, got %q", Kind, c.Kind)
	}
	if !dnsLabel.MatchString(c.Metadata.Name) {
		v.errf("metadata.name", "expected a DNS label (lowercase letters, digits and '-', at most 63 characters), got %q", c.Metadata.Name)
	}
}

func (v *validator) readable(field, file string, opts ValidateOptions, what string) {
	if opts.SkipFileChecks || file == "" {
		return
	}
	f, err := os.Open(v.p.Resolve(file))
	if err != nil {
		v.errf(field, "cannot read %s %s: %v", what, v.p.Resolve(file), unwrapPathErr(err))
		return
	}
	f.Close()
}

func unwrapPathErr(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

func (v *validator) ssh(opts ValidateOptions) {
	s := v.p.Spec.SSH
	if !posixUser.MatchString(s.User) {
		v.errf("spec.ssh.user", "expected a user name (lowercase letters, digits, '_' and '-'), got %q", s.User)
	}
	if s.KeyFile == "" && !s.Agent {
		v.errf("spec.ssh", "no credentials: set keyFile to a private key file, or agent: true to use ssh-agent")
	}
	v.readable("spec.ssh.keyFile", s.KeyFile, opts, "key file")
	if s.Agent && s.KeyFile == "" && !opts.SkipFileChecks && os.Getenv("SSH_AUTH_SOCK") == "" {
		v.errf("spec.ssh.agent", "agent: true but SSH_AUTH_SOCK is not set: start ssh-agent and add the key (ssh-add), or set keyFile")
	}
	if s.KnownHosts == "" {
		v.errf("spec.ssh.knownHosts", "required: the known_hosts file the nodes' host keys are checked against (host keys are never ignored)")
	} else if !opts.SkipFileChecks {
		if _, err := os.Stat(v.p.Resolve(s.KnownHosts)); err != nil {
			if !(os.IsNotExist(err) && opts.AcceptNewHostKeys) {
				v.errf("spec.ssh.knownHosts", "cannot read %s: %v; add the nodes' host keys to it (verified out of band), or run with --accept-new-host-keys to record them on first contact", v.p.Resolve(s.KnownHosts), unwrapPathErr(err))
			}
		}
	}
	if b := s.Bastion; b != nil {
		v.address("spec.ssh.bastion.address", b.Address)
		if !posixUser.MatchString(b.User) {
			v.errf("spec.ssh.bastion.user", "expected a user name, got %q", b.User)
		}
		if b.KeyFile == "" && !s.Agent {
			v.errf("spec.ssh.bastion", "no credentials: set keyFile (or spec.ssh.keyFile, or spec.ssh.agent: true)")
		}
		v.readable("spec.ssh.bastion.keyFile", b.KeyFile, opts, "key file")
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
	if _, err := netip.ParseAddr(addr); err == nil {
		return
	}
	// An all-numeric last label is a mistyped IP address, not a DNS name.
	last := addr[strings.LastIndexByte(addr, '.')+1:]
	if !hostname.MatchString(addr) || len(addr) > 253 || strings.Trim(last, "0123456789") == "" {
		v.errf(field, "expected an IP address or DNS name, got %q", addr)
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
	servers := 0
	for i, n := range nodes {
		base := fmt.Sprintf("spec.nodes[%d]", i)
		if !dnsLabel.MatchString(n.Name) {
			v.errf(base+".name", "expected a DNS label (lowercase letters, digits and '-', at most 63 characters), got %q", n.Name)
		} else if j, dup := names[n.Name]; dup {
			v.errf(base+".name", "node name %q is already used by spec.nodes[%d]", n.Name, j)
		} else {
			names[n.Name] = i
		}
		v.address(base+".address", n.Address)
		v.port(base+".port", n.Port)
		key := net.JoinHostPort(canonicalAddr(n.Address), fmt.Sprint(n.Port))
		if j, dup := addrs[key]; dup && n.Address != "" {
			v.errf(base+".address", "address %s is already used by spec.nodes[%d] (%s)", key, j, nodes[j].Name)
		} else {
			addrs[key] = i
		}
		switch n.Role {
		case RoleServer:
			servers++
		case RoleAgent:
		default:
			v.errf(base+".role", "expected server or agent, got %q", n.Role)
		}
		v.disks(base, n.DataDisks)
		v.labels(base+".labels", n.Labels)
	}
	if servers == 0 {
		v.errf("spec.nodes", "no node has role server; at least one server is needed for the control plane")
	} else if servers%2 == 0 {
		v.errf("spec.nodes", "%d servers: etcd needs an odd number of servers to keep quorum (1, 3 or 5); make one an agent or add one", servers)
	}
}

func canonicalAddr(a string) string {
	if ip, err := netip.ParseAddr(a); err == nil {
		return ip.Unmap().String()
	}
	return strings.ToLower(a)
}

func (v *validator) disks(base string, disks []DataDisk) {
	devices := map[string]int{}
	mounts := map[string]int{}
	for j, d := range disks {
		p := fmt.Sprintf("%s.dataDisks[%d]", base, j)
		if !devicePath.MatchString(d.Device) || strings.Contains(d.Device, "..") {
			v.errf(p+".device", "expected a block device path under /dev (letters, digits and /_.:+-), got %q", d.Device)
		} else if k, dup := devices[d.Device]; dup {
			v.errf(p+".device", "device %s is already listed as dataDisks[%d]", d.Device, k)
		} else {
			devices[d.Device] = j
		}
		mp := d.MountPoint
		switch {
		case !path.IsAbs(mp) || path.Clean(mp) != mp || strings.ContainsAny(mp, " \t\n'\"\\$`"):
			v.errf(p+".mountPoint", "expected a clean absolute path without spaces or quotes, got %q", mp)
		case slices.Contains(systemMounts, mp):
			v.errf(p+".mountPoint", "%s is a system directory; choose a dedicated path such as %s", mp, path.Join(DefaultDataMountRoot, path.Base(d.Device)))
		default:
			if k, dup := mounts[mp]; dup {
				v.errf(p+".mountPoint", "mount point %s is already used by dataDisks[%d]", mp, k)
			}
			mounts[mp] = j
		}
	}
}

func (v *validator) labels(field string, labels map[string]string) {
	for _, k := range sortedKeys(labels) {
		name := k
		if prefix, n, ok := strings.Cut(k, "/"); ok {
			name = n
			if !hostname.MatchString(prefix) {
				v.errf(field+"."+k, "label prefix %q must be a DNS subdomain", prefix)
			}
		}
		if !labelName.MatchString(name) {
			v.errf(field+"."+k, "label name %q: expected at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric", name)
		}
		if !labelValue.MatchString(labels[k]) {
			v.errf(field+"."+k, "label value %q: expected at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric", labels[k])
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

func (v *validator) identity(opts ValidateOptions) {
	id := v.p.Spec.Identity
	if id.TPM != TPMRequired && id.TPM != TPMInsecureSkip {
		v.errf("spec.identity.tpm", "expected required or insecure-skip, got %q", id.TPM)
	}
	for i, f := range id.EKCACertificates {
		v.readable(fmt.Sprintf("spec.identity.ekCACertificates[%d]", i), f, opts, "EK CA certificate")
	}
}

func (v *validator) diskEncryption() {
	seen := map[int]bool{}
	for i, pcr := range v.p.Spec.DiskEncryption.PCRs {
		field := fmt.Sprintf("spec.diskEncryption.pcrs[%d]", i)
		if pcr < 0 || pcr > 23 {
			v.errf(field, "expected a PCR index between 0 and 23, got %d", pcr)
		} else if seen[pcr] {
			v.errf(field, "PCR %d is listed twice", pcr)
		}
		seen[pcr] = true
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
			v.errf(field, "expected a CIDR such as 10.99.0.0/24, got %q", cidr)
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
			v.errf("spec.mesh.interface", "expected an interface name of at most 15 letters, digits, '-' or '_', not Calico's wireguard.*; got %q", s.Mesh.Interface)
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

func (v *validator) rke2(opts ValidateOptions) {
	r := v.p.Spec.RKE2
	if r.Version != "" && !rke2Version.MatchString(r.Version) {
		v.errf("spec.rke2.version", "expected an RKE2 release such as v1.33.5+rke2r1, got %q", r.Version)
	}
	switch r.Artifacts {
	case ArtifactsOnline:
		if r.ArtifactsDir != "" {
			v.errf("spec.rke2.artifactsDir", "only used with artifacts: airgap")
		}
	case ArtifactsAirgap:
		if r.ArtifactsDir == "" {
			v.errf("spec.rke2.artifactsDir", "required with artifacts: airgap: a directory with the release tarball, image archives and sha256sum file")
		} else if !opts.SkipFileChecks {
			if fi, err := os.Stat(v.p.Resolve(r.ArtifactsDir)); err != nil || !fi.IsDir() {
				v.errf("spec.rke2.artifactsDir", "%s is not a readable directory", v.p.Resolve(r.ArtifactsDir))
			}
		}
	default:
		v.errf("spec.rke2.artifacts", "expected online or airgap, got %q", r.Artifacts)
	}
	if r.TLSMinVersion != "1.2" && r.TLSMinVersion != "1.3" {
		v.errf("spec.rke2.tlsMinVersion", "expected \"1.3\" (default) or \"1.2\", got %q", r.TLSMinVersion)
	}
	if r.SecretsEncryptionProvider != "aescbc" && r.SecretsEncryptionProvider != "secretbox" {
		v.errf("spec.rke2.secretsEncryptionProvider", "expected aescbc or secretbox, got %q", r.SecretsEncryptionProvider)
	}
}

func (v *validator) services() {
	s := v.p.Spec
	if s.Keycloak.Enabled {
		if s.Keycloak.Hostname == "" {
			v.errf("spec.keycloak.hostname", "required when keycloak is enabled: the DNS name Keycloak is served at")
		} else if !hostname.MatchString(s.Keycloak.Hostname) {
			v.errf("spec.keycloak.hostname", "expected a DNS name, got %q", s.Keycloak.Hostname)
		}
	}
	if s.Keycloak.Enabled && !dnsLabel.MatchString(s.Keycloak.Realm) {
		v.errf("spec.keycloak.realm", "expected a DNS label, got %q", s.Keycloak.Realm)
	}
	groups := map[string]bool{}
	for i, g := range s.Keycloak.Groups {
		f := fmt.Sprintf("spec.keycloak.groups[%d]", i)
		if g.Name == "" || groups[g.Name] {
			v.errf(f+".name", "expected a unique group name, got %q", g.Name)
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
			v.errf(f+".role", "expected admin, operator or developer, got %q", g.Role)
		}
		for j, ns := range g.Namespaces {
			if !dnsLabel.MatchString(ns) {
				v.errf(fmt.Sprintf("%s.namespaces[%d]", f, j), "expected a namespace name, got %q", ns)
			}
		}
	}
	users := map[string]bool{}
	for i, u := range s.Kafka.Users {
		f := fmt.Sprintf("spec.kafka.users[%d].name", i)
		if !dnsLabel.MatchString(u.Name) || users[u.Name] {
			v.errf(f, "expected a unique DNS label, got %q", u.Name)
		}
		users[u.Name] = true
	}
	dbs := map[string]bool{}
	for i, d := range s.Postgres.Databases {
		f := fmt.Sprintf("spec.postgres.databases[%d]", i)
		if !posixUser.MatchString(d.Name) || dbs[d.Name] {
			v.errf(f+".name", "expected a unique database name (lowercase letters, digits, '_'), got %q", d.Name)
		}
		dbs[d.Name] = true
		if !posixUser.MatchString(d.Owner) {
			v.errf(f+".owner", "expected a role name (lowercase letters, digits, '_'), got %q", d.Owner)
		}
	}
}

func (v *validator) netpol(opts ValidateOptions) {
	seen := v.inlineWorkloads()
	if !opts.SkipFileChecks {
		v.netpolFiles(seen)
	}
	v.netpolNamespaces()
}

func (v *validator) opening(f, name string, o Opening) {
	if !dnsLabel.MatchString(name) {
		v.errf(f, "opening name %q must be a DNS label; it names the NetworkPolicy", name)
	}
	hasSel := o.NamespaceSelector != nil || o.PodSelector != nil
	if o.IPBlock != "" {
		if hasSel {
			v.errf(f+".ipBlock", "an opening is either an ipBlock or selectors, not both; split it in two")
		}
		pfx, err := netip.ParsePrefix(o.IPBlock)
		if err != nil || pfx.Masked() != pfx {
			v.errf(f+".ipBlock", "expected a CIDR such as 10.43.0.10/32, got %q", o.IPBlock)
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
			v.errf(pf, "expected protocol TCP, UDP or SCTP, got %q", o.Ports[p])
		}
	}
}

func (v *validator) state(opts ValidateOptions) {
	st := v.p.Spec.State
	if strings.ContainsAny(st.Repo, "\n\x00") {
		v.errf("spec.state.repo", "expected a directory path, got %q", st.Repo)
	}
	for i, r := range st.Recipients {
		if _, err := ParseRecipient(r); err != nil {
			v.errf(fmt.Sprintf("spec.state.recipients[%d]", i), "%v", err)
		}
	}
	if r := st.Remote; r != nil {
		if !sshURL.MatchString(r.URL) {
			v.errf("spec.state.remote.url", "expected an SSH URL such as ssh://git@git.example.org/platform/state.git or git@git.example.org:platform/state.git, got %q", r.URL)
		}
		v.readable("spec.state.remote.keyFile", r.KeyFile, opts, "key file")
		v.readable("spec.state.remote.knownHosts", r.KnownHosts, opts, "known_hosts file")
	}
}

// sshURL matches ssh://[user@]host[:port]/path and scp-like [user@]host:path.
var sshURL = regexp.MustCompile(`^(ssh://([A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+(:[0-9]+)?/[^\s]+|([A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+:/?[^/\s][^\s]*)$`)

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
