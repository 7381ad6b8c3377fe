package profile

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"castellan/assets"
)

func boolp(b bool) *bool { return &b }

// TestUpdateKeepsTheText: editing a profile changes only what changed; the
// comments, order, quoting and flow style of everything else stay, and the
// result loads to exactly the edited values.
func TestUpdateKeepsTheText(t *testing.T) {
	starter := assets.StarterProfile()
	vagrant, err := os.ReadFile("../../profiles/vagrant.yaml")
	if err != nil {
		t.Fatal(err)
	}
	flow := []byte(`apiVersion: castellan/v1alpha1
kind: Cluster
metadata: {name: test}
spec:
  ssh:
    user: root   # the test user
    keyFile: /tmp/id
    knownHosts: known_hosts
  nodes:
    - {name: n1, address: 10.1.0.2, port: 22, role: server}
    - {name: n2, address: 10.1.0.3, port: 22, role: agent}
  identity: {tpm: insecure-skip}
  mesh: {enabled: false}
  rke2: {tlsMinVersion: "1.3"}
`)
	tests := []struct {
		name string
		raw  []byte
		edit func(c *Cluster)
	}{
		{"unchanged", starter, func(*Cluster) {}},
		{"rename cluster and user", starter, func(c *Cluster) {
			c.Metadata.Name = "prod"
			c.Spec.SSH.User = "ops"
		}},
		{"agent instead of key file", starter, func(c *Cluster) {
			c.Spec.SSH.KeyFile = ""
			c.Spec.SSH.Agent = true
		}},
		{"remove the first node, add two", vagrant, func(c *Cluster) {
			c.Spec.Nodes = append(c.Spec.Nodes[1:],
				Node{Name: "agent-3", Address: "192.168.56.14", Role: RoleAgent, DataDisks: []DataDisk{{Device: "/dev/vdb"}, {Device: "/dev/vdc", AllowFormat: true}}},
				Node{Name: "server-2", Address: "192.168.56.15", Role: RoleServer})
		}},
		{"features on and off", starter, func(c *Cluster) {
			c.Spec.Mesh.Enabled = boolp(false)
			c.Spec.Keycloak = Keycloak{Enabled: true, Hostname: "sso.example.org"}
			c.Spec.RKE2.Version = "v1.33.5+rke2r1"
			c.Spec.RKE2.TLSMinVersion = "1.2"
			c.Spec.State.Recipients = []string{"age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq"}
		}},
		{"flow style stays flow", flow, func(c *Cluster) {
			c.Spec.Nodes = append(c.Spec.Nodes, Node{Name: "n3", Address: "10.1.0.4", Port: 22, Role: RoleAgent})
			c.Spec.Nodes[0].Address = "10.1.0.9"
			c.Spec.Mesh.Enabled = nil
			c.Spec.RKE2.TLSMinVersion = "1.2"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse("in.yaml", tt.raw); err != nil {
				t.Fatalf("the input does not parse: %v", err)
			}
			c, err := Written(tt.raw)
			if err != nil {
				t.Fatal(err)
			}
			tt.edit(c)
			out, err := Update(tt.raw, c)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("testdata", "edit", sanitize(tt.name)+".golden"), out)
			checkRoundTrip(t, out, c)
		})
	}
}

// TestMarshal: a new profile is written as a person would write it, and
// loads back to the same values.
func TestMarshal(t *testing.T) {
	c := &Cluster{
		APIVersion: APIVersion, Kind: Kind, Metadata: Metadata{Name: "lab"},
		Spec: Spec{
			SSH: SSH{User: "castellan", KeyFile: "~/.ssh/id_ed25519", KnownHosts: "known_hosts"},
			Nodes: []Node{
				{Name: "server-1", Address: "192.0.2.11", Role: RoleServer},
				{Name: "agent-1", Address: "192.0.2.21", Role: RoleAgent, DataDisks: []DataDisk{{Device: "/dev/vdb"}}},
			},
			Mesh:  Mesh{Enabled: boolp(false)},
			RKE2:  RKE2{TLSMinVersion: "1.3"},
			State: State{Repo: "state"},
		},
	}
	out, err := Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, filepath.Join("testdata", "edit", "marshal.golden"), out)
	checkRoundTrip(t, out, c)
}

// checkRoundTrip: out parses, reads back as c, and writing c again into out
// changes nothing.
func checkRoundTrip(t *testing.T, out []byte, c *Cluster) {
	t.Helper()
	if _, err := Parse("out.yaml", out); err != nil {
		t.Fatalf("the written profile does not parse: %v\n%s", err, out)
	}
	back, err := Written(out)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, c) {
		t.Errorf("read back:\n%+v\nwant:\n%+v", back.Spec, c.Spec)
	}
	again, err := Update(out, c)
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(out) {
		t.Errorf("writing the same values again changed the text:\n%s\nwas:\n%s", again, out)
	}
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == ' ' {
			b[i] = '-'
		}
	}
	return string(b)
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs (go test -update rewrites it):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

// FuzzUpdate: for any profile Parse accepts, rewriting it with a changed
// cluster name yields a profile that parses and reads back as edited.
func FuzzUpdate(f *testing.F) {
	f.Add(assets.StarterProfile())
	f.Add([]byte(validProfile))
	f.Add([]byte("apiVersion: castellan/v1alpha1\nkind: Cluster\nmetadata: {name: x}\nspec: {ssh: {user: a, knownHosts: k}, nodes: [{name: n, address: h, role: server}]}\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		if _, err := Parse("f.yaml", raw); err != nil {
			return
		}
		c, err := Written(raw)
		if err != nil {
			return // Parse is stricter in some ways, laxer in none that matter here
		}
		if same, err := Update(raw, c); err != nil || string(same) != string(raw) {
			t.Fatalf("an unchanged profile was rewritten (%v)", err)
		}
		c.Metadata.Name += "-x"
		out, err := Update(raw, c)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse("out.yaml", out); err != nil {
			t.Fatalf("rewritten profile does not parse: %v\n%s", err, out)
		}
		back, err := Written(out)
		if err != nil || back.Metadata.Name != c.Metadata.Name {
			t.Fatalf("name not written: %v", err)
		}
	})
}
