package profile

import (
	"fmt"
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
	// DefaultRecoveryGeneration is the generation of a data disk's first recovery passphrase.
	DefaultRecoveryGeneration = 1
)

// DefaultPCRs is the PCR policy of the TPM keyslot when the profile names none.
var DefaultPCRs = []int{7}

func boolPtr(b bool) *bool { return &b }

// On reports a defaulted *bool.
func On(b *bool) bool { return b != nil && *b }

// applyDefaults fills the fields the profile leaves out (or writes as null).
// A field written with a value is never replaced: `port: 0` is an error for
// Validate to report, not a request for the default.
func (p *Profile) applyDefaults() {
	s := &p.Spec
	if !p.set["spec.ssh.port"] {
		s.SSH.Port = DefaultSSHPort
	}
	if s.SSH.Sudo == nil {
		s.SSH.Sudo = boolPtr(s.SSH.User != "root")
	}
	if !p.set["spec.ssh.connectTimeout"] {
		s.SSH.ConnectTimeout.Duration = DefaultConnectTimeout
	}
	if !p.set["spec.ssh.commandTimeout"] {
		s.SSH.CommandTimeout.Duration = DefaultCommandTimeout
	}
	if b := s.SSH.Bastion; b != nil {
		if !p.set["spec.ssh.bastion.port"] {
			b.Port = DefaultSSHPort
		}
		if !p.set["spec.ssh.bastion.user"] {
			b.User = s.SSH.User
		}
		if !p.set["spec.ssh.bastion.keyFile"] {
			b.KeyFile = s.SSH.KeyFile
		}
	}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		if !p.set[fmt.Sprintf("spec.nodes[%d].port", i)] {
			n.Port = s.SSH.Port
		}
		for j := range n.DataDisks {
			d := &n.DataDisks[j]
			if !p.set[fmt.Sprintf("spec.nodes[%d].dataDisks[%d].mountPoint", i, j)] && d.Device != "" {
				d.MountPoint = path.Join(DefaultDataMountRoot, path.Base(d.Device))
			}
		}
	}
	if !p.set["spec.identity.tpm"] {
		s.Identity.TPM = TPMRequired
	}
	if s.DiskEncryption.Enabled == nil {
		s.DiskEncryption.Enabled = boolPtr(true)
	}
	if !p.set["spec.diskEncryption.pcrs"] {
		s.DiskEncryption.PCRs = append([]int(nil), DefaultPCRs...)
	}
	if !p.set["spec.diskEncryption.recoveryGeneration"] {
		s.DiskEncryption.RecoveryGeneration = DefaultRecoveryGeneration
	}
	if s.Mesh.Enabled == nil {
		s.Mesh.Enabled = boolPtr(true)
	}
	if !p.set["spec.mesh.subnet"] {
		s.Mesh.Subnet = DefaultMeshSubnet
	}
	if !p.set["spec.mesh.port"] {
		s.Mesh.Port = DefaultMeshPort
	}
	if !p.set["spec.mesh.interface"] {
		s.Mesh.Interface = DefaultMeshInterface
	}
	if !p.set["spec.rke2.artifacts"] {
		s.RKE2.Artifacts = ArtifactsOnline
	}
	if !p.set["spec.rke2.clusterCIDR"] {
		s.RKE2.ClusterCIDR = DefaultClusterCIDR
	}
	if !p.set["spec.rke2.serviceCIDR"] {
		s.RKE2.ServiceCIDR = DefaultServiceCIDR
	}
	if !p.set["spec.rke2.tlsMinVersion"] {
		s.RKE2.TLSMinVersion = DefaultTLSMinVersion
	}
	if !p.set["spec.rke2.secretsEncryptionProvider"] {
		s.RKE2.SecretsEncryptionProvider = DefaultSecretsCipher
	}
	if s.Calico.WireGuard == nil {
		s.Calico.WireGuard = boolPtr(true)
	}
	if !p.set["spec.keycloak.realm"] {
		s.Keycloak.Realm = p.Metadata.Name
	}
	for i := range s.Postgres.Databases {
		if !p.set[fmt.Sprintf("spec.postgres.databases[%d].owner", i)] {
			s.Postgres.Databases[i].Owner = s.Postgres.Databases[i].Name
		}
	}
	if !p.set["spec.state.repo"] {
		s.State.Repo = DefaultStateRepo
	}
	if r := s.State.Remote; r != nil {
		if !p.set["spec.state.remote.keyFile"] {
			r.KeyFile = s.SSH.KeyFile
		}
		if !p.set["spec.state.remote.knownHosts"] {
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
