package profile

import (
	"path"
	"time"
)

// Defaults used where the profile is silent. They are documented in the
// starter profile and the README; change them there too.
const (
	DefaultSSHPort        = 22
	DefaultConnectTimeout = 15 * time.Second
	DefaultCommandTimeout = 10 * time.Minute
	DefaultMeshSubnet     = "10.99.0.0/24"
	DefaultMeshPort       = 51871
	DefaultMeshInterface  = "wg-castellan"
	DefaultClusterCIDR    = "10.42.0.0/16"
	DefaultServiceCIDR    = "10.43.0.0/16"
	DefaultTLSMinVersion  = "1.3"
	DefaultSecretsCipher  = "aescbc"
	DefaultStateRepo      = "state"
	DefaultDataMountRoot  = "/var/lib/castellan/data"
)

// DefaultPCRs is the PCR policy of the TPM keyslot when the profile names none.
var DefaultPCRs = []int{7}

func boolPtr(b bool) *bool { return &b }

// On reports a defaulted *bool.
func On(b *bool) bool { return b != nil && *b }

func (p *Profile) applyDefaults() {
	s := &p.Spec
	if s.SSH.Port == 0 {
		s.SSH.Port = DefaultSSHPort
	}
	if s.SSH.Sudo == nil {
		s.SSH.Sudo = boolPtr(s.SSH.User != "root")
	}
	if s.SSH.ConnectTimeout.Duration == 0 {
		s.SSH.ConnectTimeout.Duration = DefaultConnectTimeout
	}
	if s.SSH.CommandTimeout.Duration == 0 {
		s.SSH.CommandTimeout.Duration = DefaultCommandTimeout
	}
	if b := s.SSH.Bastion; b != nil {
		if b.Port == 0 {
			b.Port = DefaultSSHPort
		}
		if b.User == "" {
			b.User = s.SSH.User
		}
		if b.KeyFile == "" {
			b.KeyFile = s.SSH.KeyFile
		}
	}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		if n.Port == 0 {
			n.Port = s.SSH.Port
		}
		for j := range n.DataDisks {
			d := &n.DataDisks[j]
			if d.MountPoint == "" && d.Device != "" {
				d.MountPoint = path.Join(DefaultDataMountRoot, path.Base(d.Device))
			}
		}
	}
	if s.Identity.TPM == "" {
		s.Identity.TPM = TPMRequired
	}
	if s.DiskEncryption.Enabled == nil {
		s.DiskEncryption.Enabled = boolPtr(true)
	}
	if len(s.DiskEncryption.PCRs) == 0 {
		s.DiskEncryption.PCRs = append([]int(nil), DefaultPCRs...)
	}
	if s.Mesh.Enabled == nil {
		s.Mesh.Enabled = boolPtr(true)
	}
	if s.Mesh.Subnet == "" {
		s.Mesh.Subnet = DefaultMeshSubnet
	}
	if s.Mesh.Port == 0 {
		s.Mesh.Port = DefaultMeshPort
	}
	if s.Mesh.Interface == "" {
		s.Mesh.Interface = DefaultMeshInterface
	}
	if s.RKE2.Artifacts == "" {
		s.RKE2.Artifacts = ArtifactsOnline
	}
	if s.RKE2.ClusterCIDR == "" {
		s.RKE2.ClusterCIDR = DefaultClusterCIDR
	}
	if s.RKE2.ServiceCIDR == "" {
		s.RKE2.ServiceCIDR = DefaultServiceCIDR
	}
	if s.RKE2.TLSMinVersion == "" {
		s.RKE2.TLSMinVersion = DefaultTLSMinVersion
	}
	if s.RKE2.SecretsEncryptionProvider == "" {
		s.RKE2.SecretsEncryptionProvider = DefaultSecretsCipher
	}
	if s.Calico.WireGuard == nil {
		s.Calico.WireGuard = boolPtr(true)
	}
	if s.Keycloak.Realm == "" {
		s.Keycloak.Realm = p.Metadata.Name
	}
	for i := range s.Postgres.Databases {
		if s.Postgres.Databases[i].Owner == "" {
			s.Postgres.Databases[i].Owner = s.Postgres.Databases[i].Name
		}
	}
	if s.State.Repo == "" {
		s.State.Repo = DefaultStateRepo
	}
	if r := s.State.Remote; r != nil {
		if r.KeyFile == "" {
			r.KeyFile = s.SSH.KeyFile
		}
		if r.KnownHosts == "" {
			r.KnownHosts = s.SSH.KnownHosts
		}
	}
}

// Servers returns the server nodes in profile order.
func (c *Cluster) Servers() []Node {
	var out []Node
	for _, n := range c.Spec.Nodes {
		if n.Role == RoleServer {
			out = append(out, n)
		}
	}
	return out
}

// Node returns the node called name.
func (c *Cluster) Node(name string) (Node, bool) {
	for _, n := range c.Spec.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}
