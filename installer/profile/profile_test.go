package profile

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// testKey returns a new ed25519 private key in OpenSSH format, encrypted
// with passphrase when it is not empty.
func testKey(t *testing.T, passphrase string) []byte {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var b *pem.Block
	if passphrase == "" {
		b, err = ssh.MarshalPrivateKey(priv, "test")
	} else {
		b, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "test", []byte(passphrase))
	}
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(b)
}

// testPublicKey returns an authorized_keys line.
func testPublicKey(t *testing.T) []byte {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return ssh.MarshalAuthorizedKey(sp)
}

// testKnownHosts returns a known_hosts file with one host key line.
func testKnownHosts(t *testing.T) []byte {
	return append([]byte("# test hosts\n192.0.2.1 "), testPublicKey(t)...)
}

// writeProfile writes a profile and the files it names (key, known_hosts)
// into a temp dir and returns the profile's path.
func writeProfile(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "id_test"), testKey(t, ""))
	writeFile(t, filepath.Join(dir, "known_hosts"), testKnownHosts(t))
	p := filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const validProfile = `apiVersion: castellan/v1alpha1
kind: Cluster
metadata:
  name: test
spec:
  ssh:
    user: admin
    keyFile: id_test
    knownHosts: known_hosts
  nodes:
    - name: s1
      address: 192.0.2.1
      role: server
    - name: a1
      address: 192.0.2.2
      role: agent
`

func TestLoadValid(t *testing.T) {
	p, err := Load(writeProfile(t, validProfile), ValidateOptions{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	s := p.Spec
	if s.SSH.Port != 22 || !On(s.SSH.Sudo) || s.Nodes[0].Port != 22 {
		t.Errorf("defaults not applied: port %d sudo %v node port %d", s.SSH.Port, On(s.SSH.Sudo), s.Nodes[0].Port)
	}
	if s.Mesh.Port != DefaultMeshPort || s.Mesh.Subnet != DefaultMeshSubnet || s.Identity.TPM != TPMRequired {
		t.Errorf("section defaults not applied: %+v %+v", s.Mesh, s.Identity)
	}
	if got := p.Resolve(s.SSH.KeyFile); got != filepath.Join(p.Dir, "id_test") {
		t.Errorf("Resolve(keyFile) = %s", got)
	}
}

// TestLoadErrors pins the exact text and position of the errors users see.
// {dir} in want is replaced by the profile's directory.
func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		// edit turns the valid profile into a bad one.
		body string
		want string
	}{
		{
			name: "unknown top-level field",
			body: validProfile + "status: {}\n",
			want: `cluster.yaml:17:1: unknown field "status"; expected one of: apiVersion, kind, metadata, spec`,
		},
		{
			name: "misspelt field suggests the right one first",
			body: strings.Replace(validProfile, "knownHosts:", "knownhosts:", 1),
			want: `cluster.yaml:9:5: spec.ssh: unknown field "knownhosts"; expected one of: knownHosts, user, port, keyFile, agent, sudo, bastion, connectTimeout, commandTimeout`,
		},
		{
			name: "wrong apiVersion",
			body: strings.Replace(validProfile, "castellan/v1alpha1", "castellan/v1", 1),
			want: `cluster.yaml:1:1: apiVersion: expected "castellan/v1alpha1", got "castellan/v1"`,
		},
		{
			name: "cluster name not a DNS label",
			body: strings.Replace(validProfile, "name: test", "name: Test_Cluster", 1),
			want: `cluster.yaml:4:3: metadata.name: expected a DNS label (lowercase letters, digits and '-', at most 63 characters), got "Test_Cluster"`,
		},
		{
			name: "port is text",
			body: strings.Replace(validProfile, "    user: admin\n", "    user: admin\n    port: ssh\n", 1),
			want: `cluster.yaml:8:11: spec.ssh.port: expected a whole number, got the text "ssh"`,
		},
		{
			name: "unquoted number where a string is expected",
			body: strings.Replace(validProfile, "name: s1", "name: 1", 1),
			want: `cluster.yaml:11:13: spec.nodes[0].name: expected text, got the number 1; quote it if you mean the text`,
		},
		{
			name: "nodes is a mapping",
			body: strings.Split(validProfile, "  nodes:\n")[0] + "  nodes:\n    s1: 192.0.2.1\n",
			want: `cluster.yaml:11:5: spec.nodes: expected a list, got a mapping`,
		},
		{
			name: "bad address",
			body: strings.Replace(validProfile, "192.0.2.2", "192.0.2.300 ", 1),
			want: `cluster.yaml:15:7: spec.nodes[1].address: expected an IP address or DNS name, got "192.0.2.300"`,
		},
		{
			name: "duplicate node name",
			body: strings.Replace(validProfile, "name: a1", "name: s1", 1),
			want: `cluster.yaml:14:7: spec.nodes[1].name: node name "s1" is already used by spec.nodes[0]`,
		},
		{
			name: "duplicate address",
			body: strings.Replace(validProfile, "192.0.2.2", "192.0.2.1", 1),
			want: `cluster.yaml:15:7: spec.nodes[1].address: address 192.0.2.1:22 is already used by spec.nodes[0] (s1)`,
		},
		{
			name: "unknown role",
			body: strings.Replace(validProfile, "role: agent", "role: worker", 1),
			want: `cluster.yaml:16:7: spec.nodes[1].role: expected server or agent, got "worker"`,
		},
		{
			name: "no server",
			body: strings.Replace(validProfile, "role: server", "role: agent", 1),
			want: `cluster.yaml:10:3: spec.nodes: no node has role server; at least one server is needed for the control plane`,
		},
		{
			name: "even number of servers",
			body: strings.Replace(validProfile, "role: agent", "role: server", 1),
			want: `cluster.yaml:10:3: spec.nodes: 2 servers: etcd needs an odd number of servers to keep quorum (1, 3 or 5); make one an agent or add one`,
		},
		{
			name: "key file missing",
			body: strings.Replace(validProfile, "keyFile: id_test", "keyFile: id_missing", 1),
			want: `cluster.yaml:8:5: spec.ssh.keyFile: cannot read key file {dir}/id_missing: no such file or directory; correct the path, or create the key (ssh-keygen -t ed25519 -f {dir}/id_missing) and authorize {dir}/id_missing.pub where castellan logs in`,
		},
		{
			name: "agent without SSH_AUTH_SOCK",
			body: strings.Replace(validProfile, "keyFile: id_test", "agent: true", 1),
			want: `cluster.yaml:8:5: spec.ssh.agent: agent: true but SSH_AUTH_SOCK is not set: start ssh-agent and add the key (ssh-add), or set keyFile`,
		},
		{
			name: "known_hosts missing",
			body: strings.Replace(validProfile, "knownHosts: known_hosts", "knownHosts: nowhere", 1),
			want: `cluster.yaml:9:5: spec.ssh.knownHosts: cannot read {dir}/nowhere: no such file or directory; add the nodes' host keys to it (verified out of band), or run with --accept-new-host-keys to record them on first contact`,
		},
		{
			name: "mesh overlaps pod network",
			body: validProfile + "  mesh:\n    subnet: 10.42.1.0/24\n",
			want: `cluster.yaml:18:5: spec.mesh.subnet: mesh subnet 10.42.1.0/24 overlaps the pod network 10.42.0.0/16 (spec.rke2.clusterCIDR)`,
		},
		{
			name: "mesh ssh source not a CIDR",
			body: validProfile + "  mesh:\n    sshFrom: [192.0.2.0/24, 192.0.2.1/24]\n",
			want: `cluster.yaml:18:29: spec.mesh.sshFrom[1]: expected an address or CIDR such as 192.0.2.10 or 192.0.2.0/24, got "192.0.2.1/24"`,
		},
		{
			name: "mesh rotation time",
			body: validProfile + "  mesh:\n    rotateKeysBefore: yesterday\n",
			want: `cluster.yaml:18:5: spec.mesh.rotateKeysBefore: expected an RFC 3339 time such as 2026-12-01T00:00:00Z, got "yesterday"`,
		},
		{
			name: "mesh on calico's port",
			body: validProfile + "  mesh:\n    port: 51820\n",
			want: `cluster.yaml:18:5: spec.mesh.port: UDP 51820 is used by Calico's WireGuard; choose another port (default 51871)`,
		},
		{
			name: "cidr with host bits",
			body: validProfile + "  rke2:\n    serviceCIDR: 10.43.0.1/16\n",
			want: `cluster.yaml:18:5: spec.rke2.serviceCIDR: 10.43.0.1/16 has host bits set; did you mean 10.43.0.0/16?`,
		},
		{
			name: "node inside service network",
			body: strings.Replace(validProfile, "192.0.2.2", "10.43.0.5", 1),
			want: `cluster.yaml:15:7: spec.nodes[1].address: node address 10.43.0.5 lies inside the service network 10.43.0.0/16 (spec.rke2.serviceCIDR); choose non-overlapping networks`,
		},
		{
			name: "data disk outside /dev",
			body: validProfile + "      dataDisks:\n        - device: /home/disk.img\n",
			want: `cluster.yaml:18:11: spec.nodes[1].dataDisks[0].device: expected a block device path under /dev (letters, digits and /_.:+-), got "/home/disk.img"`,
		},
		{
			name: "hostile mount point",
			body: validProfile + "      dataDisks:\n        - device: /dev/vdb\n          mountPoint: \"/data/$(reboot)\"\n",
			want: `cluster.yaml:19:11: spec.nodes[1].dataDisks[0].mountPoint: expected a clean absolute path without spaces or quotes, got "/data/$(reboot)"`,
		},
		{
			name: "hostile node name",
			body: strings.Replace(validProfile, "name: a1", `name: "a1; rm -rf /"`, 1),
			want: `cluster.yaml:14:7: spec.nodes[1].name: expected a DNS label (lowercase letters, digits and '-', at most 63 characters), got "a1; rm -rf /"`,
		},
		{
			name: "bad duration",
			body: strings.Replace(validProfile, "    user: admin\n", "    user: admin\n    connectTimeout: 10\n", 1),
			want: `cluster.yaml:8:21: spec.ssh.connectTimeout: expected a duration such as 30s or 5m, got the number 10 (a number needs its unit)`,
		},
		{
			name: "duplicate key",
			body: strings.Replace(validProfile, "    user: admin\n", "    user: admin\n    user: root\n", 1),
			want: `cluster.yaml:8:5: spec.ssh.user: field "user" appears twice (first at line 7)`,
		},
		{
			name: "netpol empty selector",
			body: validProfile + "  netpol:\n    workloads:\n      - name: api\n        namespace: apps\n        ingress:\n          web:\n            namespaceSelector: {}\n            ports: {8080: TCP}\n",
			want: `cluster.yaml:23:13: spec.netpol.workloads[0].ingress.web.namespaceSelector: an empty selector means every namespace; name the namespace (kubernetes.io/metadata.name: NAME)`,
		},
		{
			name: "netpol bad protocol",
			body: validProfile + "  netpol:\n    workloads:\n      - name: api\n        namespace: apps\n        egress:\n          dns:\n            ipBlock: 10.43.0.10/32\n            ports: {53: DNS}\n",
			want: `cluster.yaml:24:21: spec.netpol.workloads[0].egress.dns.ports.53: expected protocol TCP, UDP or SCTP, got "DNS"`,
		},
		{
			name: "bad age recipient",
			body: validProfile + "  state:\n    recipients: [age1notakey]\n",
			want: `cluster.yaml:18:18: spec.state.recipients[0]: not a valid age recipient: malformed recipient "age1notakey": invalid character data part: s[1]=111`,
		},
		{
			name: "remote that is not SSH",
			body: validProfile + "  state:\n    remote: {url: https://git.example.org/state.git}\n",
			want: `cluster.yaml:18:14: spec.state.remote.url: expected an SSH URL such as ssh://git@git.example.org/platform/state.git or git@git.example.org:platform/state.git, got "https://git.example.org/state.git"`,
		},
		{
			name: "two documents",
			body: validProfile + "---\nkind: Cluster\n",
			want: `cluster.yaml:17:1: profile holds more than one YAML document; keep one cluster per file`,
		},
		{
			name: "syntax error",
			body: "apiVersion: castellan/v1alpha1\nkind: Cluster\n  metadata: {}\n",
			want: `cluster.yaml:3: YAML syntax: mapping values are not allowed in this context`,
		},
		{
			name: "empty file",
			body: "",
			want: "cluster.yaml:1:1: profile is empty; start from `castellan profile init`",
		},
	}
	t.Setenv("SSH_AUTH_SOCK", "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeProfile(t, tt.body)
			_, err := Load(path, ValidateOptions{})
			if err == nil {
				t.Fatalf("Load succeeded; want error %q", tt.want)
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, not Errors: %v", err, err)
			}
			got := strings.Replace(errs[0].Error(), path, "cluster.yaml", 1)
			got = strings.ReplaceAll(got, filepath.Dir(path), "{dir}")
			if got != tt.want {
				t.Errorf("first error\n got: %s\nwant: %s\n all: %v", got, tt.want, err)
			}
		})
	}
}

func TestErrorsListEveryProblem(t *testing.T) {
	body := strings.NewReplacer("role: agent", "role: worker", "192.0.2.1", "not an address").Replace(validProfile)
	_, err := Load(writeProfile(t, body), ValidateOptions{})
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 2 {
		t.Fatalf("want 2 problems, got %v", err)
	}
	if errs[0].Pos.Line > errs[1].Pos.Line {
		t.Errorf("problems not in file order: %v", err)
	}
}

func TestAcceptNewHostKeysAllowsMissingKnownHosts(t *testing.T) {
	body := strings.Replace(validProfile, "knownHosts: known_hosts", "knownHosts: new_known_hosts", 1)
	if _, err := Load(writeProfile(t, body), ValidateOptions{AcceptNewHostKeys: true}); err != nil {
		t.Fatalf("Load with AcceptNewHostKeys: %v", err)
	}
}

func TestExampleProfiles(t *testing.T) {
	files, err := filepath.Glob("../../profiles/*.yaml")
	if err != nil || len(files) < 2 {
		t.Fatalf("example profiles not found: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			// Their keys and known_hosts live on the user's machine.
			if _, err := Load(f, ValidateOptions{SkipFileChecks: true}); err != nil {
				t.Errorf("%v", err)
			}
		})
	}
}

func TestRemoteURLs(t *testing.T) {
	for url, ok := range map[string]bool{
		"ssh://git@git.example.org/platform/state.git":  true,
		"ssh://git.example.org:2222/state.git":          true,
		"git@git.example.org:platform/state.git":        true,
		"git.example.org:state.git":                     true,
		"https://git.example.org/state.git":             false,
		"file:///srv/state.git":                         false,
		"/srv/state.git":                                false,
		"git@git.example.org:/abs/path.git":             true,
		"ssh://git@git.example.org/state.git; rm -rf /": false,
	} {
		body := validProfile + "  state:\n    remote: {url: \"" + url + "\"}\n"
		_, err := Load(writeProfile(t, body), ValidateOptions{})
		if (err == nil) != ok {
			t.Errorf("remote %q: err = %v, want ok=%v", url, err, ok)
		}
	}
}
