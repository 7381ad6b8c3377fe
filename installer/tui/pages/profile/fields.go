package profile

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	prof "castellan/installer/profile"
)

// kind is what a field is and how it is edited.
type kind int

const (
	section kind = iota // a heading; not focusable
	text                // typed
	path                // typed, or picked with the file picker
	toggle              // on or off
	choice              // one of a few values
	nodeRow             // a row of the nodes table: enter edits the node
	addNode             // the table's last row: enter adds a node
	info                // shown, not editable here
)

// field is one line of the editor, bound to a value of the profile.
type field struct {
	kind  kind
	label string
	// path is the profile field it edits, as validation errors name it
	// (spec.ssh.user): the errors whose path starts with it appear under it.
	path        string
	get         func(*prof.Cluster) string
	set         func(*prof.Cluster, string) error
	choices     []string
	placeholder string // what applies when the field is empty
	hint        string // one line shown while the field is focused
	indent      int
	node        int // nodeRow: the node's index
}

func (f field) focusable() bool { return f.kind != section }

// csv splits a comma-separated list, dropping empty items.
func csv(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func port(s string) (int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("expected a port number, got %q", s)
	}
	return n, nil
}

func portText(n int) string {
	if n == 0 {
		return ""
	}
	return strconv.Itoa(n)
}

// onOff reads a *bool with its default.
func onOff(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}

// setOnOff writes a *bool: back to nil (the default, unwritten) unless the
// profile as saved spelled it out.
func setOnOff(b **bool, was *bool, on, def bool) {
	if on == def && was == nil {
		*b = nil
		return
	}
	*b = &on
}

func boolText(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// fields lists the editor's lines for c. orig is the profile as saved (nil
// for a new one): toggles use it to keep what was written explicitly.
func fields(c, orig *prof.Cluster, acceptNew *bool) []field {
	if orig == nil {
		orig = &prof.Cluster{}
	}
	var fs []field
	add := func(f field) { fs = append(fs, f) }
	str := func(label, p string, ptr func(*prof.Cluster) *string, placeholder, hint string) field {
		return field{kind: text, label: label, path: p, placeholder: placeholder, hint: hint,
			get: func(c *prof.Cluster) string { return *ptr(c) },
			set: func(c *prof.Cluster, v string) error { *ptr(c) = strings.TrimSpace(v); return nil }}
	}
	file := func(label, p string, ptr func(*prof.Cluster) *string, placeholder, hint string) field {
		f := str(label, p, ptr, placeholder, hint)
		f.kind = path
		return f
	}
	portField := func(label, p string, ptr func(*prof.Cluster) *int, placeholder string) field {
		return field{kind: text, label: label, path: p, placeholder: placeholder,
			get: func(c *prof.Cluster) string { return portText(*ptr(c)) },
			set: func(c *prof.Cluster, v string) error {
				n, err := port(v)
				if err == nil {
					*ptr(c) = n
				}
				return err
			}}
	}
	onOffField := func(label, p string, ptr func(*prof.Cluster) **bool, def bool, hint string) field {
		return field{kind: toggle, label: label, path: p, hint: hint,
			get: func(c *prof.Cluster) string { return boolText(onOff(*ptr(c), def)) },
			set: func(c *prof.Cluster, v string) error {
				setOnOff(ptr(c), *ptr(orig), v == "on", def)
				return nil
			}}
	}

	add(field{kind: section, label: "Cluster"})
	add(str("name", "metadata.name", func(c *prof.Cluster) *string { return &c.Metadata.Name }, "", "a DNS label: lowercase letters, digits and '-'"))

	add(field{kind: section, label: "SSH"})
	add(str("user", "spec.ssh.user", func(c *prof.Cluster) *string { return &c.Spec.SSH.User }, "", "non-root users need passwordless sudo"))
	add(file("key file", "spec.ssh.keyFile", func(c *prof.Cluster) *string { return &c.Spec.SSH.KeyFile }, "none", "private key; f picks a file; relative to the profile's directory"))
	add(field{kind: toggle, label: "ssh-agent", path: "spec.ssh.agent", hint: "also use the keys of the ssh-agent at SSH_AUTH_SOCK",
		get: func(c *prof.Cluster) string { return boolText(c.Spec.SSH.Agent) },
		set: func(c *prof.Cluster, v string) error { c.Spec.SSH.Agent = v == "on"; return nil }})
	add(file("known hosts", "spec.ssh.knownHosts", func(c *prof.Cluster) *string { return &c.Spec.SSH.KnownHosts }, "", "the nodes' host keys, verified out of band; f picks a file"))
	add(portField("port", "spec.ssh.port", func(c *prof.Cluster) *int { return &c.Spec.SSH.Port }, "22"))
	add(field{kind: text, label: "bastion", path: "spec.ssh.bastion", placeholder: "none", hint: "a jump host's address (its host key is checked too); empty for none",
		get: func(c *prof.Cluster) string {
			if c.Spec.SSH.Bastion == nil {
				return ""
			}
			return c.Spec.SSH.Bastion.Address
		},
		set: func(c *prof.Cluster, v string) error {
			v = strings.TrimSpace(v)
			switch {
			case v == "":
				c.Spec.SSH.Bastion = nil
			case c.Spec.SSH.Bastion == nil:
				c.Spec.SSH.Bastion = &prof.Bastion{Address: v}
			default:
				c.Spec.SSH.Bastion.Address = v
			}
			return nil
		}})
	if c.Spec.SSH.Bastion != nil {
		b := func(c *prof.Cluster) *prof.Bastion {
			if c.Spec.SSH.Bastion == nil {
				c.Spec.SSH.Bastion = &prof.Bastion{}
			}
			return c.Spec.SSH.Bastion
		}
		f := str("bastion user", "spec.ssh.bastion.user", func(c *prof.Cluster) *string { return &b(c).User }, "the SSH user", "")
		f.indent = 1
		add(f)
		f = file("bastion key", "spec.ssh.bastion.keyFile", func(c *prof.Cluster) *string { return &b(c).KeyFile }, "the SSH key", "")
		f.indent = 1
		add(f)
	}

	servers := 0
	for _, n := range c.Spec.Nodes {
		if n.Role == prof.RoleServer {
			servers++
		}
	}
	add(field{kind: section, label: fmt.Sprintf("Nodes  %d node(s), %d server(s)", len(c.Spec.Nodes), servers), path: "spec.nodes"})
	for i := range c.Spec.Nodes {
		add(field{kind: nodeRow, node: i, path: fmt.Sprintf("spec.nodes[%d]", i), hint: "enter edits the node, d removes it"})
	}
	add(field{kind: addNode, label: "+ add a node", hint: "an odd number of servers keeps etcd's quorum"})

	add(field{kind: section, label: "Features"})
	add(field{kind: choice, label: "TPM identity", path: "spec.identity.tpm", choices: []string{"required", "insecure-skip"},
		hint: "insecure-skip lets nodes without a TPM through, and every run says so",
		get: func(c *prof.Cluster) string {
			if c.Spec.Identity.TPM == "" {
				return "required"
			}
			return string(c.Spec.Identity.TPM)
		},
		set: func(c *prof.Cluster, v string) error {
			if v == "required" && orig.Spec.Identity.TPM == "" {
				c.Spec.Identity.TPM = ""
			} else {
				c.Spec.Identity.TPM = prof.TPMMode(v)
			}
			return nil
		}})
	add(onOffField("disk encryption", "spec.diskEncryption.enabled", func(c *prof.Cluster) **bool { return &c.Spec.DiskEncryption.Enabled }, true, "LUKS2 on every node's data disks, unlocked by the TPM"))
	if onOff(c.Spec.DiskEncryption.Enabled, true) {
		add(field{kind: text, label: "PCRs", path: "spec.diskEncryption.pcrs", indent: 1, placeholder: "7", hint: "PCR indexes the TPM keyslot is bound to, comma-separated",
			get: func(c *prof.Cluster) string {
				var s []string
				for _, p := range c.Spec.DiskEncryption.PCRs {
					s = append(s, strconv.Itoa(p))
				}
				return strings.Join(s, ", ")
			},
			set: func(c *prof.Cluster, v string) error {
				var pcrs []int
				for _, s := range csv(v) {
					n, err := strconv.Atoi(s)
					if err != nil {
						return fmt.Errorf("expected PCR numbers such as 7, got %q", s)
					}
					pcrs = append(pcrs, n)
				}
				c.Spec.DiskEncryption.PCRs = pcrs
				return nil
			}})
	}
	add(onOffField("WireGuard mesh", "spec.mesh.enabled", func(c *prof.Cluster) **bool { return &c.Spec.Mesh.Enabled }, true, "a WireGuard mesh between the nodes; the underlay is closed"))
	if onOff(c.Spec.Mesh.Enabled, true) {
		f := str("subnet", "spec.mesh.subnet", func(c *prof.Cluster) *string { return &c.Spec.Mesh.Subnet }, prof.DefaultMeshSubnet, "")
		f.indent = 1
		add(f)
		f = portField("port", "spec.mesh.port", func(c *prof.Cluster) *int { return &c.Spec.Mesh.Port }, strconv.Itoa(prof.DefaultMeshPort))
		f.indent, f.hint = 1, "UDP; not 51820/51821 (Calico's WireGuard)"
		add(f)
	}
	add(str("RKE2 version", "spec.rke2.version", func(c *prof.Cluster) *string { return &c.Spec.RKE2.Version }, "castellan's pinned release", "e.g. v1.33.5+rke2r1"))
	add(field{kind: choice, label: "artifacts", path: "spec.rke2.artifacts", indent: 1, choices: []string{"online", "airgap"},
		get: func(c *prof.Cluster) string {
			if c.Spec.RKE2.Artifacts == "" {
				return "online"
			}
			return string(c.Spec.RKE2.Artifacts)
		},
		set: func(c *prof.Cluster, v string) error {
			if v == "online" && orig.Spec.RKE2.Artifacts == "" {
				c.Spec.RKE2.Artifacts = ""
			} else {
				c.Spec.RKE2.Artifacts = prof.ArtifactSource(v)
			}
			return nil
		}})
	if c.Spec.RKE2.Artifacts == prof.ArtifactsAirgap {
		f := file("artifacts dir", "spec.rke2.artifactsDir", func(c *prof.Cluster) *string { return &c.Spec.RKE2.ArtifactsDir }, "", "release tarball, image archives and sha256sum file")
		f.indent = 2
		add(f)
	}
	add(field{kind: choice, label: "TLS minimum", path: "spec.rke2.tlsMinVersion", indent: 1, choices: []string{"1.3", "1.2"},
		get: func(c *prof.Cluster) string {
			if c.Spec.RKE2.TLSMinVersion == "" {
				return prof.DefaultTLSMinVersion
			}
			return c.Spec.RKE2.TLSMinVersion
		},
		set: func(c *prof.Cluster, v string) error {
			if v == prof.DefaultTLSMinVersion && orig.Spec.RKE2.TLSMinVersion == "" {
				c.Spec.RKE2.TLSMinVersion = ""
			} else {
				c.Spec.RKE2.TLSMinVersion = v
			}
			return nil
		}})
	add(onOffField("Calico WireGuard", "spec.calico.wireguard", func(c *prof.Cluster) **bool { return &c.Spec.Calico.WireGuard }, true, "encrypt pod traffic between nodes"))
	add(field{kind: toggle, label: "Keycloak", path: "spec.keycloak.enabled", hint: "OIDC for the API server",
		get: func(c *prof.Cluster) string { return boolText(c.Spec.Keycloak.Enabled) },
		set: func(c *prof.Cluster, v string) error { c.Spec.Keycloak.Enabled = v == "on"; return nil }})
	if c.Spec.Keycloak.Enabled {
		f := str("hostname", "spec.keycloak.hostname", func(c *prof.Cluster) *string { return &c.Spec.Keycloak.Hostname }, "", "the DNS name Keycloak is served at")
		f.indent = 1
		add(f)
		f = str("realm", "spec.keycloak.realm", func(c *prof.Cluster) *string { return &c.Spec.Keycloak.Realm }, "the cluster name", "")
		f.indent = 1
		add(f)
	}
	add(field{kind: toggle, label: "Kafka", path: "spec.kafka.enabled", hint: "Strimzi and a Kafka cluster with mutual TLS only",
		get: func(c *prof.Cluster) string { return boolText(c.Spec.Kafka.Enabled) },
		set: func(c *prof.Cluster, v string) error { c.Spec.Kafka.Enabled = v == "on"; return nil }})
	if c.Spec.Kafka.Enabled {
		add(field{kind: text, label: "users", path: "spec.kafka.users", indent: 1, placeholder: "none", hint: "application users, comma-separated (topics: in the file)",
			get: func(c *prof.Cluster) string {
				var s []string
				for _, u := range c.Spec.Kafka.Users {
					s = append(s, u.Name)
				}
				return strings.Join(s, ", ")
			},
			set: func(c *prof.Cluster, v string) error {
				var users []prof.KafkaUser
				for _, n := range csv(v) {
					u := prof.KafkaUser{Name: n}
					if i := slices.IndexFunc(c.Spec.Kafka.Users, func(x prof.KafkaUser) bool { return x.Name == n }); i >= 0 {
						u = c.Spec.Kafka.Users[i]
					}
					users = append(users, u)
				}
				c.Spec.Kafka.Users = users
				return nil
			}})
	}
	add(field{kind: toggle, label: "Postgres", path: "spec.postgres.enabled", hint: "CloudNativePG with a TLS-only cluster",
		get: func(c *prof.Cluster) string { return boolText(c.Spec.Postgres.Enabled) },
		set: func(c *prof.Cluster, v string) error { c.Spec.Postgres.Enabled = v == "on"; return nil }})
	if c.Spec.Postgres.Enabled {
		add(field{kind: text, label: "databases", path: "spec.postgres.databases", indent: 1, placeholder: "none", hint: "one per application, comma-separated; each gets its own owner role",
			get: func(c *prof.Cluster) string {
				var s []string
				for _, d := range c.Spec.Postgres.Databases {
					s = append(s, d.Name)
				}
				return strings.Join(s, ", ")
			},
			set: func(c *prof.Cluster, v string) error {
				var dbs []prof.Database
				for _, n := range csv(v) {
					d := prof.Database{Name: n}
					if i := slices.IndexFunc(c.Spec.Postgres.Databases, func(x prof.Database) bool { return x.Name == n }); i >= 0 {
						d = c.Spec.Postgres.Databases[i]
					}
					dbs = append(dbs, d)
				}
				c.Spec.Postgres.Databases = dbs
				return nil
			}})
	}
	add(field{kind: info, label: "network policies", path: "spec.netpol", hint: "workloads and their openings are edited in the file",
		get: func(c *prof.Cluster) string {
			return fmt.Sprintf("%d workload(s) (edit in the file)", len(c.Spec.NetPol.Workloads))
		}})

	add(field{kind: section, label: "State"})
	add(file("repo", "spec.state.repo", func(c *prof.Cluster) *string { return &c.Spec.State.Repo }, prof.DefaultStateRepo, "the git state repo: every run is a commit; created on the first apply"))
	add(field{kind: text, label: "remote", path: "spec.state.remote", placeholder: "none", hint: "an SSH git URL pushed to after each run; empty for none",
		get: func(c *prof.Cluster) string {
			if c.Spec.State.Remote == nil {
				return ""
			}
			return c.Spec.State.Remote.URL
		},
		set: func(c *prof.Cluster, v string) error {
			v = strings.TrimSpace(v)
			switch {
			case v == "":
				c.Spec.State.Remote = nil
			case c.Spec.State.Remote == nil:
				c.Spec.State.Remote = &prof.Remote{URL: v}
			default:
				c.Spec.State.Remote.URL = v
			}
			return nil
		}})
	add(field{kind: text, label: "recipients", path: "spec.state.recipients", placeholder: "a local age identity", hint: "age1... or ssh-ed25519 keys who can read the secrets, comma-separated",
		get: func(c *prof.Cluster) string { return strings.Join(c.Spec.State.Recipients, ", ") },
		set: func(c *prof.Cluster, v string) error { c.Spec.State.Recipients = csv(v); return nil }})

	add(field{kind: section, label: "Run (not saved in the profile)"})
	add(field{kind: toggle, label: "trust new host keys", hint: "accept host keys known_hosts lacks: shown in the plan with fingerprints, written once confirmed",
		get: func(*prof.Cluster) string { return boolText(*acceptNew) },
		set: func(_ *prof.Cluster, v string) error { *acceptNew = v == "on"; return nil }})
	return fs
}

// nodeFields are the lines of the node editor for node i.
func nodeFields(i int) []field {
	n := func(c *prof.Cluster) *prof.Node { return &c.Spec.Nodes[i] }
	base := fmt.Sprintf("spec.nodes[%d]", i)
	return []field{
		{kind: text, label: "name", path: base + ".name", hint: "a DNS label, unique; it becomes the Kubernetes node name",
			get: func(c *prof.Cluster) string { return n(c).Name },
			set: func(c *prof.Cluster, v string) error { n(c).Name = strings.TrimSpace(v); return nil }},
		{kind: text, label: "address", path: base + ".address", hint: "the IP address or DNS name castellan connects to",
			get: func(c *prof.Cluster) string { return n(c).Address },
			set: func(c *prof.Cluster, v string) error { n(c).Address = strings.TrimSpace(v); return nil }},
		{kind: text, label: "SSH port", path: base + ".port", placeholder: "the SSH port",
			get: func(c *prof.Cluster) string { return portText(n(c).Port) },
			set: func(c *prof.Cluster, v string) error {
				p, err := port(v)
				if err == nil {
					n(c).Port = p
				}
				return err
			}},
		{kind: choice, label: "role", path: base + ".role", choices: []string{"server", "agent"}, hint: "server: control plane and etcd; agent: workloads",
			get: func(c *prof.Cluster) string { return string(n(c).Role) },
			set: func(c *prof.Cluster, v string) error { n(c).Role = prof.Role(v); return nil }},
		{kind: text, label: "data disks", path: base + ".dataDisks", placeholder: "none", hint: "block devices to encrypt, comma-separated, e.g. /dev/vdb",
			get: func(c *prof.Cluster) string {
				var s []string
				for _, d := range n(c).DataDisks {
					s = append(s, d.Device)
				}
				return strings.Join(s, ", ")
			},
			set: func(c *prof.Cluster, v string) error {
				var disks []prof.DataDisk
				for _, dev := range csv(v) {
					d := prof.DataDisk{Device: dev}
					if j := slices.IndexFunc(n(c).DataDisks, func(x prof.DataDisk) bool { return x.Device == dev }); j >= 0 {
						d = n(c).DataDisks[j]
					}
					disks = append(disks, d)
				}
				n(c).DataDisks = disks
				return nil
			}},
		{kind: text, label: "may format", path: base + ".dataDisks", placeholder: "none", hint: "disks that hold data castellan may destroy to format them, comma-separated",
			get: func(c *prof.Cluster) string {
				var s []string
				for _, d := range n(c).DataDisks {
					if d.AllowFormat {
						s = append(s, d.Device)
					}
				}
				return strings.Join(s, ", ")
			},
			set: func(c *prof.Cluster, v string) error {
				allow := csv(v)
				for _, dev := range allow {
					if !slices.ContainsFunc(n(c).DataDisks, func(x prof.DataDisk) bool { return x.Device == dev }) {
						return fmt.Errorf("%s is not one of the node's data disks", dev)
					}
				}
				for j := range n(c).DataDisks {
					n(c).DataDisks[j].AllowFormat = slices.Contains(allow, n(c).DataDisks[j].Device)
				}
				return nil
			}},
		{kind: text, label: "labels", path: base + ".labels", placeholder: "none", hint: "Kubernetes node labels: key=value, comma-separated",
			get: func(c *prof.Cluster) string {
				keys := make([]string, 0, len(n(c).Labels))
				for k := range n(c).Labels {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				var s []string
				for _, k := range keys {
					s = append(s, k+"="+n(c).Labels[k])
				}
				return strings.Join(s, ", ")
			},
			set: func(c *prof.Cluster, v string) error {
				var labels map[string]string
				for _, kv := range csv(v) {
					k, val, ok := strings.Cut(kv, "=")
					if !ok {
						return fmt.Errorf("expected key=value, got %q", kv)
					}
					if labels == nil {
						labels = map[string]string{}
					}
					labels[strings.TrimSpace(k)] = strings.TrimSpace(val)
				}
				n(c).Labels = labels
				return nil
			}},
	}
}
