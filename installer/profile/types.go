// Package profile defines the Cluster profile (apiVersion castellan/v1alpha1):
// its Go types, a strict position-aware loader, defaults, validation and the
// JSON Schema generated from these types.
//
// Every section of the format is parsed and validated, including sections for
// phases a given castellan version does not run yet, so the format is settled
// early and a profile written today keeps working.
package profile

import (
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// APIVersion and Kind identify a castellan Cluster profile.
const (
	APIVersion = "castellan/v1alpha1"
	Kind       = "Cluster"
)

// Cluster is the whole profile: one file describes one cluster.
type Cluster struct {
	// APIVersion must be castellan/v1alpha1.
	APIVersion string `yaml:"apiVersion" jsonschema:"required,enum=castellan/v1alpha1"`
	// Kind must be Cluster.
	Kind string `yaml:"kind" jsonschema:"required,enum=Cluster"`
	// Metadata names the cluster.
	Metadata Metadata `yaml:"metadata" jsonschema:"required"`
	// Spec describes the nodes and every phase's settings.
	Spec Spec `yaml:"spec" jsonschema:"required"`
}

// Metadata names the cluster.
type Metadata struct {
	// Name of the cluster: a DNS label (lowercase letters, digits, '-'), at most 63 characters.
	Name string `yaml:"name" jsonschema:"required"`
}

// Spec holds every section of the profile.
type Spec struct {
	// SSH says how castellan reaches the nodes.
	SSH SSH `yaml:"ssh" jsonschema:"required"`
	// Nodes are the machines of the cluster.
	Nodes []Node `yaml:"nodes" jsonschema:"required,minItems=1"`
	// Identity configures TPM-resident node identities.
	Identity Identity `yaml:"identity,omitempty"`
	// DiskEncryption configures LUKS2 on the nodes' data disks.
	DiskEncryption DiskEncryption `yaml:"diskEncryption,omitempty"`
	// Mesh configures the WireGuard mesh between the nodes.
	Mesh Mesh `yaml:"mesh,omitempty"`
	// RKE2 configures the Kubernetes distribution.
	RKE2 RKE2 `yaml:"rke2,omitempty"`
	// Calico configures the CNI.
	Calico Calico `yaml:"calico,omitempty"`
	// Keycloak configures OIDC for the API server.
	Keycloak Keycloak `yaml:"keycloak,omitempty"`
	// Kafka configures the Strimzi Kafka cluster.
	Kafka Kafka `yaml:"kafka,omitempty"`
	// Postgres configures the CloudNativePG cluster.
	Postgres Postgres `yaml:"postgres,omitempty"`
	// NetPol declares the network openings through the default-deny policies.
	NetPol NetPol `yaml:"netpol,omitempty"`
	// Cluster says how cluster-level phases reach the Kubernetes API.
	Cluster ClusterAccess `yaml:"cluster,omitempty"`
	// State configures the git state repository.
	State State `yaml:"state,omitempty"`
}

// SSH says how castellan reaches the nodes.
type SSH struct {
	// User to log in as. Non-root users need passwordless sudo.
	User string `yaml:"user" jsonschema:"required"`
	// Port used for nodes that do not set their own (default 22).
	Port int `yaml:"port,omitempty" jsonschema:"minimum=1,maximum=65535"`
	// KeyFile is a private key file (relative paths are resolved against the profile's directory).
	KeyFile string `yaml:"keyFile,omitempty"`
	// Agent also uses the keys of the ssh-agent at SSH_AUTH_SOCK.
	Agent bool `yaml:"agent,omitempty"`
	// KnownHosts is the known_hosts file the nodes' host keys are verified against. Required.
	KnownHosts string `yaml:"knownHosts" jsonschema:"required"`
	// Sudo runs privileged commands through `sudo -n` (default: true unless user is root).
	Sudo *bool `yaml:"sudo,omitempty"`
	// Bastion is an optional jump host (ProxyJump semantics); its host key is verified too.
	Bastion *Bastion `yaml:"bastion,omitempty"`
	// ConnectTimeout bounds each dial (default 15s).
	ConnectTimeout Duration `yaml:"connectTimeout,omitempty"`
	// CommandTimeout bounds each remote command (default 10m).
	CommandTimeout Duration `yaml:"commandTimeout,omitempty"`
}

// Bastion is a jump host with its own credentials.
type Bastion struct {
	// Address of the bastion (IP or DNS name).
	Address string `yaml:"address" jsonschema:"required"`
	// Port of the bastion's sshd (default 22).
	Port int `yaml:"port,omitempty" jsonschema:"minimum=1,maximum=65535"`
	// User on the bastion (default: spec.ssh.user).
	User string `yaml:"user,omitempty"`
	// KeyFile for the bastion (default: spec.ssh.keyFile).
	KeyFile string `yaml:"keyFile,omitempty"`
}

// Role is a node's Kubernetes role.
type Role string

// Node roles.
const (
	RoleServer Role = "server"
	RoleAgent  Role = "agent"
)

// Node is one machine of the cluster.
type Node struct {
	// Name of the node: a DNS label, unique in the cluster; it becomes the Kubernetes node name.
	Name string `yaml:"name" jsonschema:"required"`
	// Address castellan connects to (IP or DNS name).
	Address string `yaml:"address" jsonschema:"required"`
	// Port of the node's sshd (default: spec.ssh.port).
	Port int `yaml:"port,omitempty" jsonschema:"minimum=1,maximum=65535"`
	// Role is server (control plane and etcd) or agent (workloads).
	Role Role `yaml:"role" jsonschema:"required,enum=server,enum=agent"`
	// DataDisks are encrypted and mounted by the diskEncryption phase.
	DataDisks []DataDisk `yaml:"dataDisks,omitempty"`
	// Labels are Kubernetes node labels.
	Labels map[string]string `yaml:"labels,omitempty"`
}

// DataDisk is a block device that holds cluster data.
type DataDisk struct {
	// Device is the block device, e.g. /dev/vdb or /dev/disk/by-id/...
	Device string `yaml:"device" jsonschema:"required"`
	// MountPoint where the decrypted filesystem is mounted (default /var/lib/castellan/data/<device name>).
	MountPoint string `yaml:"mountPoint,omitempty"`
	// AllowFormat allows castellan to format this disk although it carries a signature
	// (filesystem, partition table, LVM or foreign LUKS). Its data is destroyed.
	AllowFormat bool `yaml:"allowFormat,omitempty"`
}

// TPMMode says whether a TPM is required.
type TPMMode string

// TPM modes.
const (
	TPMRequired     TPMMode = "required"
	TPMInsecureSkip TPMMode = "insecure-skip"
)

// Identity configures the TPM-resident node identities.
type Identity struct {
	// TPM is "required" (default) or "insecure-skip", which lets nodes without a TPM through
	// and is shown in every run summary.
	TPM TPMMode `yaml:"tpm,omitempty" jsonschema:"enum=required,enum=insecure-skip"`
	// EKCACertificates are PEM files of the TPM vendors' CAs that EK certificates must chain to.
	// Without them the EK public key is pinned on first enrolment.
	EKCACertificates []string `yaml:"ekCACertificates,omitempty"`
}

// DiskEncryption configures LUKS2 on data disks.
type DiskEncryption struct {
	// Enabled encrypts every node's data disks (default true).
	Enabled *bool `yaml:"enabled,omitempty"`
	// PCRs the TPM keyslot is bound to (default [7]).
	PCRs []int `yaml:"pcrs,omitempty"`
	// RecoveryGeneration is the generation every data disk's recovery passphrase must have (default 1):
	// raising it makes the next apply rotate them (the new one is escrowed before the old keyslot is removed).
	RecoveryGeneration int `yaml:"recoveryGeneration,omitempty"`
}

// Mesh configures the host WireGuard mesh.
type Mesh struct {
	// Enabled builds the mesh and closes the underlay (default true).
	Enabled *bool `yaml:"enabled,omitempty"`
	// Subnet the mesh addresses are taken from (default 10.99.0.0/24).
	Subnet string `yaml:"subnet,omitempty"`
	// Port is the WireGuard UDP port (default 51871; 51820 and 51821 belong to Calico).
	Port int `yaml:"port,omitempty" jsonschema:"minimum=1,maximum=65535"`
	// Interface is the WireGuard device name (default wg-castellan).
	Interface string `yaml:"interface,omitempty"`
	// SSHFrom are the addresses or CIDRs allowed to reach the nodes' sshd on the underlay,
	// besides the address each node sees the installer's connection come from.
	SSHFrom []string `yaml:"sshFrom,omitempty"`
	// RotateKeysBefore rotates every WireGuard key created before this time (RFC 3339).
	RotateKeysBefore string `yaml:"rotateKeysBefore,omitempty"`
}

// ArtifactSource says where RKE2's release artifacts come from.
type ArtifactSource string

// Artifact sources.
const (
	ArtifactsOnline ArtifactSource = "online"
	ArtifactsAirgap ArtifactSource = "airgap"
)

// RKE2 configures the Kubernetes distribution.
type RKE2 struct {
	// Version is the pinned RKE2 release, e.g. v1.33.5+rke2r1.
	Version string `yaml:"version,omitempty"`
	// Artifacts is "online" (download and verify on the installer machine) or "airgap".
	Artifacts ArtifactSource `yaml:"artifacts,omitempty" jsonschema:"enum=online,enum=airgap"`
	// ArtifactsDir holds the release files in airgap mode.
	ArtifactsDir string `yaml:"artifactsDir,omitempty"`
	// ClusterCIDR is the pod network (default 10.42.0.0/16).
	ClusterCIDR string `yaml:"clusterCIDR,omitempty"`
	// ServiceCIDR is the service network (default 10.43.0.0/16).
	ServiceCIDR string `yaml:"serviceCIDR,omitempty"`
	// TLSMinVersion for the API server and kubelet: "1.3" (default) or "1.2".
	TLSMinVersion string `yaml:"tlsMinVersion,omitempty" jsonschema:"enum=1.2,enum=1.3"`
	// SecretsEncryptionProvider is "aescbc" (default) or "secretbox".
	SecretsEncryptionProvider string `yaml:"secretsEncryptionProvider,omitempty" jsonschema:"enum=aescbc,enum=secretbox"`
}

// Calico configures the CNI.
type Calico struct {
	// WireGuard encrypts pod traffic between nodes (default true).
	WireGuard *bool `yaml:"wireguard,omitempty"`
	// MTU for pod interfaces, 1280 to 9000 bytes (default: derived from the underlay leaving room for both WireGuard layers).
	MTU int `yaml:"mtu,omitempty" jsonschema:"minimum=1280,maximum=9000"`
}

// Keycloak configures OIDC.
type Keycloak struct {
	// Enabled deploys Keycloak and points the API server's OIDC at it.
	Enabled bool `yaml:"enabled,omitempty"`
	// Hostname Keycloak is served at.
	Hostname string `yaml:"hostname,omitempty"`
	// Realm for the cluster (default: the cluster name).
	Realm string `yaml:"realm,omitempty"`
	// Groups map Keycloak groups to least-privilege roles.
	Groups []Group `yaml:"groups,omitempty"`
}

// Group maps a Keycloak group to a Kubernetes role.
type Group struct {
	// Name of the Keycloak group.
	Name string `yaml:"name" jsonschema:"required"`
	// Role is admin, operator or developer.
	Role string `yaml:"role" jsonschema:"required,enum=admin,enum=operator,enum=developer"`
	// Namespaces a developer group may use.
	Namespaces []string `yaml:"namespaces,omitempty"`
}

// Kafka configures the Kafka cluster.
type Kafka struct {
	// Enabled deploys Strimzi and a Kafka cluster with a mutual-TLS listener only.
	Enabled bool `yaml:"enabled,omitempty"`
	// Users are per-application KafkaUsers.
	Users []KafkaUser `yaml:"users,omitempty"`
}

// KafkaUser is one application's Kafka identity.
type KafkaUser struct {
	// Name of the user (a DNS label).
	Name string `yaml:"name" jsonschema:"required"`
	// Topics the user may read and write.
	Topics []string `yaml:"topics,omitempty"`
}

// Postgres configures the PostgreSQL cluster.
type Postgres struct {
	// Enabled deploys CloudNativePG and a TLS-only cluster.
	Enabled bool `yaml:"enabled,omitempty"`
	// Databases are per-application databases, each with its own owner role.
	Databases []Database `yaml:"databases,omitempty"`
}

// Database is one application's database.
type Database struct {
	// Name of the database.
	Name string `yaml:"name" jsonschema:"required"`
	// Owner role (default: the database name).
	Owner string `yaml:"owner,omitempty"`
}

// NetPol declares openings through the default-deny policies.
type NetPol struct {
	// Workloads each declare who may reach them and what they may reach.
	Workloads []Workload `yaml:"workloads,omitempty"`
	// WorkloadFiles are files beside the profile (glob patterns, relative to its directory),
	// each declaring one workload: its name, namespace and podSelector, then its ingress and egress.
	WorkloadFiles []string `yaml:"workloadFiles,omitempty"`
	// Namespaces get the default-deny policy even though no workload is declared in them
	// (every namespace that holds a workload gets it anyway).
	Namespaces []string `yaml:"namespaces,omitempty"`
}

// Workload is a set of pods in one namespace with its declared openings.
type Workload struct {
	// Name of the workload (a DNS label); policy names derive from it.
	Name string `yaml:"name" jsonschema:"required"`
	// Namespace of the workload.
	Namespace string `yaml:"namespace" jsonschema:"required"`
	// PodSelector selects the workload's pods; omit it to mean every pod of the namespace.
	PodSelector map[string]string `yaml:"podSelector,omitempty"`
	// Ingress openings, by name.
	Ingress map[string]Opening `yaml:"ingress,omitempty"`
	// Egress openings, by name.
	Egress map[string]Opening `yaml:"egress,omitempty"`
}

// Opening is one allowed peer and its ports.
type Opening struct {
	// NamespaceSelector selects peer namespaces by label.
	NamespaceSelector map[string]string `yaml:"namespaceSelector,omitempty"`
	// PodSelector selects peer pods by label.
	PodSelector map[string]string `yaml:"podSelector,omitempty"`
	// IPBlock is a peer CIDR.
	IPBlock string `yaml:"ipBlock,omitempty"`
	// Ports map a port number (1 to 65535, in decimal) to its protocol (TCP, UDP or SCTP).
	Ports map[int]string `yaml:"ports" jsonschema:"required"`
}

// State configures the git state repository.
type State struct {
	// Repo is the path of the state repository (default "state" beside the profile).
	Repo string `yaml:"repo,omitempty"`
	// Remote is pushed to after each run when set.
	Remote *Remote `yaml:"remote,omitempty"`
	// Recipients are age recipients (age1... or ssh-ed25519 public keys) secrets are encrypted to.
	// Without them castellan creates a local age identity on first use (see the README).
	Recipients []string `yaml:"recipients,omitempty"`
}

// Remote is a git remote reached over SSH.
type Remote struct {
	// URL of the remote, e.g. git@git.example.org:platform/cluster-state.git.
	URL string `yaml:"url" jsonschema:"required"`
	// KeyFile for the remote (default: spec.ssh.keyFile).
	KeyFile string `yaml:"keyFile,omitempty"`
	// KnownHosts for the remote's host key (default: spec.ssh.knownHosts).
	KnownHosts string `yaml:"knownHosts,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("30s", "5m").
type Duration struct{ time.Duration }

// UnmarshalYAML reads a duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("expected a duration such as 30s or 5m")
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("expected a duration such as 30s or 5m, got %q", n.Value)
	}
	if v < 0 {
		return fmt.Errorf("duration must not be negative, got %q", n.Value)
	}
	d.Duration = v
	return nil
}

// MarshalYAML writes a duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// IsZero reports an unset duration, so omitempty leaves it out.
func (d Duration) IsZero() bool { return d.Duration == 0 }
