package netpol

import (
	"bytes"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
)

func TestDecodeRefuses(t *testing.T) {
	c := compileProfile(t, "testdata/profile.yaml")
	var b bytes.Buffer
	if err := Render(&b, c.Policies[:2]); err != nil {
		t.Fatal(err)
	}
	good := b.String()
	for _, tt := range []struct {
		name, in, want string
	}{
		{"unknown field", strings.Replace(good, "spec:", "spec:\n  bogus: 1", 1), `unknown field "bogus"`},
		{"another kind", strings.Replace(good, "kind: NetworkPolicy", "kind: ConfigMap", 1), "expected a networking.k8s.io/v1 NetworkPolicy, got networking.k8s.io/v1 ConfigMap"},
		{"not castellan's", strings.Replace(good, "app.kubernetes.io/managed-by: castellan", "app.kubernetes.io/managed-by: helm", 1), "does not carry castellan's labels"},
		{"two clusters", strings.Replace(good, "castellan.dev/cluster: shopfloor", "castellan.dev/cluster: other", 1), `belongs to cluster "shopfloor", the others to "other"`},
		{"twice", good + good, "appears twice"},
		{"no namespace", strings.Replace(good, "  namespace: message-streaming-services\n", "", 1), "needs metadata.name and metadata.namespace"},
	} {
		_, err := Decode(strings.NewReader(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v; want %q", tt.name, err, tt.want)
		}
	}
	got, err := Decode(strings.NewReader("# nothing but a comment\n---\n" + good + "---\n"))
	if err != nil || len(got) != 2 {
		t.Errorf("comments and empty documents: %d policies, %v", len(got), err)
	}
}

func TestDiff(t *testing.T) {
	c := compileProfile(t, "testdata/profile.yaml")
	var desired *networkingv1.NetworkPolicy
	for i := range c.Policies {
		if c.Policies[i].Name == "kafka.ingress.web" {
			desired = c.Policies[i].DeepCopy()
		}
	}
	live := desired.DeepCopy()
	// What the API server adds, and labels of others, are not differences.
	live.ResourceVersion, live.UID, live.Generation = "42", "0b5e...", 3
	live.Labels["team"] = "payments"
	if d, err := Diff(live, desired); err != nil || d != "" {
		t.Fatalf("server fields and foreign labels made a diff: %v\n%s", err, d)
	}
	live.Spec.Ingress[0].Ports[0].Port.IntVal = 9999
	live.Labels[LabelOpening] = "stale"
	d, err := Diff(live, desired)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--- live message-streaming-services/kafka.ingress.web", "+++ declared message-streaming-services/kafka.ingress.web", "-    - port: 9999", "+    - port: 9093", "-    netpol.castellan.dev/opening: stale"} {
		if !strings.Contains(d, want) {
			t.Errorf("diff lacks %q:\n%s", want, d)
		}
	}
	if strings.Contains(d, "team") {
		t.Errorf("diff shows another manager's label:\n%s", d)
	}
	created, _ := Diff(nil, desired)
	deleted, _ := Diff(live, nil)
	if !strings.Contains(created, "+kind: NetworkPolicy") || !strings.Contains(deleted, "-kind: NetworkPolicy") {
		t.Errorf("create/delete diffs:\n%s\n%s", created, deleted)
	}
}

// FuzzDecode feeds arbitrary bytes to Decode (it reads rendered files back
// from the state repo): it must never panic, and what it accepts must render
// and decode to the same objects.
func FuzzDecode(f *testing.F) {
	var b bytes.Buffer
	in := Input{Cluster: "c", ServiceCIDR: "10.43.0.0/16"}
	if c, err := Compile(in); err == nil {
		_ = Render(&b, c.Policies)
	}
	f.Add([]byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: w.ingress.o
  namespace: n
  labels: {app.kubernetes.io/managed-by: castellan, castellan.dev/phase: netpol, castellan.dev/cluster: c}
spec:
  podSelector: {matchLabels: {app: w}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}, podSelector: {}}]
    ports: [{protocol: TCP, port: 80, endPort: 90}]
`))
	f.Add([]byte("---\n---\n# c\n"))
	f.Add([]byte(`{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := Decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := Render(&out, ps); err != nil {
			t.Fatalf("render of decoded policies: %v", err)
		}
		again, err := Decode(&out)
		if err != nil {
			t.Fatalf("decode of rendered policies: %v\n%s", err, out.String())
		}
		if len(again) != len(ps) {
			t.Fatalf("%d policies became %d", len(ps), len(again))
		}
		for i := range ps {
			if d, err := Diff(&again[i], &ps[i]); err != nil || d != "" {
				t.Fatalf("round trip changed %s/%s: %v\n%s", ps[i].Namespace, ps[i].Name, err, d)
			}
		}
	})
}
