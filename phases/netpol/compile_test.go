package netpol

import (
	"bytes"
	"context"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"castellan/installer/profile"
	"castellan/phases/netpol/policyeval"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// loadProfile loads a test profile as the offline commands do.
func loadProfile(t *testing.T, path string) *profile.Profile {
	t.Helper()
	p, err := profile.Load(path, profile.ValidateOptions{SkipFileChecks: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ReadWorkloadFiles(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p
}

func compileProfile(t *testing.T, path string) *Compiled {
	t.Helper()
	c, err := Compile(InputFrom(loadProfile(t, path)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// golden compares got with testdata/golden/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
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
		t.Fatalf("%v (run go test ./phases/netpol -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (rerun with -update if the change is intended):\n%s", path, got)
	}
}

func TestRenderGolden(t *testing.T) {
	c := compileProfile(t, "testdata/profile.yaml")
	var b bytes.Buffer
	if err := Render(&b, c.Policies); err != nil {
		t.Fatal(err)
	}
	golden(t, "render.yaml", b.Bytes())

	// What render prints decodes to exactly the compiled objects (rollback reads it).
	back, err := Decode(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != len(c.Policies) {
		t.Fatalf("decoded %d policies, rendered %d", len(back), len(c.Policies))
	}
	for i := range back {
		if d, err := Diff(&back[i], &c.Policies[i]); err != nil || d != "" {
			t.Errorf("%s/%s changed through render and decode: %v\n%s", back[i].Namespace, back[i].Name, err, d)
		}
	}
}

func TestCompiledShape(t *testing.T) {
	c := compileProfile(t, "testdata/profile.yaml")
	byName := map[string]networkingv1.NetworkPolicy{}
	for _, np := range c.Policies {
		byName[np.Namespace+"/"+np.Name] = np
	}
	for _, ns := range []string{"shop", "message-streaming-services", "quiet"} {
		deny, ok := byName[ns+"/"+DefaultDenyName]
		if !ok {
			t.Errorf("no default-deny in %s", ns)
			continue
		}
		if len(deny.Spec.PolicyTypes) != 2 || deny.Spec.Ingress != nil || deny.Spec.Egress != nil || len(deny.Spec.PodSelector.MatchLabels) != 0 {
			t.Errorf("default-deny in %s is not deny-all: %+v", ns, deny.Spec)
		}
	}
	if len(c.Namespaces) != 3 {
		t.Errorf("default-deny namespaces %v; want shop, message-streaming-services, quiet", c.Namespaces)
	}
	// A namespaceSelector and a podSelector of one opening are one peer.
	kafka := byName["shop/web.egress.kafka"]
	if len(kafka.Spec.Egress) != 1 || len(kafka.Spec.Egress[0].To) != 1 {
		t.Fatalf("web.egress.kafka: want one rule with one peer, got %+v", kafka.Spec.Egress)
	}
	peer := kafka.Spec.Egress[0].To[0]
	if peer.NamespaceSelector == nil || peer.PodSelector == nil {
		t.Errorf("web.egress.kafka: peer must carry both selectors: %+v", peer)
	}
	// The DNS opening selects the DNS pods on UDP and TCP 53, never the service IP.
	dns := byName["shop/web.egress.dns"]
	to := dns.Spec.Egress[0]
	if to.To[0].IPBlock != nil || to.To[0].PodSelector.MatchLabels[DNSPodLabel] != DNSPodValue || len(to.Ports) != 2 {
		t.Errorf("web.egress.dns not compiled to the DNS pods on two protocols: %+v", to)
	}
	if dns.Annotations[AnnotationNote] == "" {
		t.Error("web.egress.dns carries no note of the fix")
	}
	for _, np := range c.Policies {
		if np.Labels[LabelManagedBy] != ManagedBy || np.Labels[LabelCluster] != "shopfloor" || np.Labels[LabelPhase] != Name {
			t.Errorf("%s/%s lacks castellan's labels: %v", np.Namespace, np.Name, np.Labels)
		}
	}
}

// TestPolicyNamesUnique: names that would collide if joined with '-' do not
// collide, and stay valid DNS-1123 subdomains at the longest.
func TestPolicyNamesUnique(t *testing.T) {
	open := map[string]profile.Opening{"ingress-b": {PodSelector: map[string]string{"a": "b"}, Ports: map[int]string{1: "TCP"}}}
	open2 := map[string]profile.Opening{"b": {PodSelector: map[string]string{"a": "b"}, Ports: map[int]string{1: "TCP"}}}
	long := strings.Repeat("x", 63)
	in := Input{Cluster: "c", ServiceCIDR: profile.DefaultServiceCIDR, Workloads: []profile.SourcedWorkload{
		{Workload: profile.Workload{Name: "a", Namespace: "n", Ingress: open}},
		{Workload: profile.Workload{Name: "a-ingress", Namespace: "n", Ingress: open2}},
		{Workload: profile.Workload{Name: long, Namespace: "n", Egress: map[string]profile.Opening{long: open2["b"]}}},
	}}
	c, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, np := range c.Policies {
		if seen[np.Name] {
			t.Errorf("policy name %s compiled twice", np.Name)
		}
		seen[np.Name] = true
		if len(np.Name) > 253 {
			t.Errorf("%s is longer than a DNS subdomain", np.Name)
		}
	}
	if !seen["a.ingress.ingress-b"] || !seen["a-ingress.ingress.b"] || !seen[long+".egress."+long] {
		t.Errorf("names: %v", seen)
	}
}

// The matrix: every (source, destination, port, protocol) of a set of pods
// and addresses, decided by policyeval on the compiled policies, must agree
// with what the declared openings say.

type endpoint struct {
	name   string
	ns     string // "" for an address outside the cluster's pods
	labels map[string]string
	ip     string
}

var matrixEndpoints = []endpoint{
	{"web", "shop", map[string]string{"app": "web"}, "10.42.0.10"},
	{"orders", "shop", map[string]string{"app": "orders"}, "10.42.0.11"},
	{"stranger", "shop", map[string]string{"app": "stranger"}, "10.42.0.12"},
	{"ingress-nginx", "kube-system", map[string]string{"app.kubernetes.io/instance": "rke2-ingress-nginx"}, "10.42.1.10"},
	{"coredns", "kube-system", map[string]string{"k8s-app": "kube-dns"}, "10.42.1.11"},
	{"metrics-server", "kube-system", map[string]string{"k8s-app": "metrics-server"}, "10.42.1.12"},
	// The ingress controller's labels in the wrong namespace: a namespaceSelector
	// and a podSelector in one opening must both match.
	{"fake-nginx", "default", map[string]string{"app.kubernetes.io/instance": "rke2-ingress-nginx"}, "10.42.2.10"},
	{"fake-dns", "default", map[string]string{"k8s-app": "kube-dns"}, "10.42.2.11"},
	{"prometheus", "infrastructure", map[string]string{"app": "prometheus"}, "10.42.3.10"},
	{"kafka", "message-streaming-services", map[string]string{"strimzi.io/cluster": "test2", "strimzi.io/kind": "Kafka"}, "10.42.4.10"},
	{"zookeeper", "message-streaming-services", map[string]string{"strimzi.io/cluster": "test2", "strimzi.io/kind": "ZooKeeper"}, "10.42.4.11"},
	{"kafka-elsewhere", "default", map[string]string{"strimzi.io/cluster": "test2", "strimzi.io/kind": "Kafka"}, "10.42.2.12"},
	{"quiet", "quiet", nil, "10.42.5.10"},
	{"payments", "", nil, "192.0.2.80"},
	{"internet", "", nil, "198.51.100.7"},
}

var matrixPorts = []struct {
	port  int32
	proto corev1.Protocol
}{
	{53, corev1.ProtocolUDP}, {53, corev1.ProtocolTCP}, {443, corev1.ProtocolTCP}, {8080, corev1.ProtocolTCP},
	{8080, corev1.ProtocolUDP}, {8081, corev1.ProtocolTCP}, {8443, corev1.ProtocolTCP}, {9090, corev1.ProtocolTCP},
	{9093, corev1.ProtocolTCP}, {22, corev1.ProtocolTCP},
}

// declared decides from the profile's openings alone, in the format's own
// terms: a pod under default-deny may send (receive) only what an egress
// (ingress) opening of a workload it belongs to names; an opening's
// namespaceSelector and podSelector both apply (no namespaceSelector: the
// workload's own namespace); the dns opening (ipBlock of the cluster DNS
// service IP) means the cluster's DNS servers on port 53, UDP and TCP.
func declared(t *testing.T, p *profile.Profile, src, dst endpoint, port int32, proto corev1.Protocol) bool {
	denied := map[string]bool{}
	for _, ns := range p.Spec.NetPol.Namespaces {
		denied[ns] = true
	}
	for _, w := range p.Workloads() {
		denied[w.Namespace] = true
	}
	nsLabels := func(ns string) map[string]string { return map[string]string{"kubernetes.io/metadata.name": ns} }
	within := func(small, big map[string]string) bool {
		for k, v := range small {
			if big[k] != v {
				return false
			}
		}
		return true
	}
	peerOK := func(o profile.Opening, own string, e endpoint) bool {
		if o.IPBlock == "10.43.0.10/32" { // the cluster DNS service
			return e.ns == "kube-system" && e.labels["k8s-app"] == "kube-dns"
		}
		if o.IPBlock != "" {
			return e.ns == "" && netip.MustParsePrefix(o.IPBlock).Contains(netip.MustParseAddr(e.ip))
		}
		if e.ns == "" {
			return false
		}
		if o.NamespaceSelector == nil && e.ns != own {
			return false
		}
		return within(o.NamespaceSelector, nsLabels(e.ns)) && within(o.PodSelector, e.labels)
	}
	portOK := func(o profile.Opening) bool {
		if o.IPBlock == "10.43.0.10/32" {
			return port == 53 && (proto == corev1.ProtocolUDP || proto == corev1.ProtocolTCP)
		}
		return o.Ports[int(port)] == string(proto)
	}
	side := func(self, peer endpoint, egress bool) bool {
		if self.ns == "" || !denied[self.ns] {
			return true
		}
		for _, w := range p.Workloads() {
			if w.Namespace != self.ns || !within(w.PodSelector, self.labels) {
				continue
			}
			ops := w.Ingress
			if egress {
				ops = w.Egress
			}
			for _, o := range ops {
				if peerOK(o, w.Namespace, peer) && portOK(o) {
					return true
				}
			}
		}
		return false
	}
	return side(src, dst, true) && side(dst, src, false)
}

func TestMatrix(t *testing.T) {
	p := loadProfile(t, "testdata/profile.yaml")
	c, err := Compile(InputFrom(p))
	if err != nil {
		t.Fatal(err)
	}
	var namespaces []policyeval.Namespace
	seenNS := map[string]bool{}
	eps := map[string]policyeval.Endpoint{}
	for _, e := range matrixEndpoints {
		if e.ns == "" {
			eps[e.name] = policyeval.Endpoint{IP: netip.MustParseAddr(e.ip)}
			continue
		}
		eps[e.name] = policyeval.Endpoint{Pod: &policyeval.Pod{Name: e.name, Namespace: e.ns, Labels: e.labels, IP: netip.MustParseAddr(e.ip)}}
		if !seenNS[e.ns] {
			seenNS[e.ns] = true
			namespaces = append(namespaces, policyeval.Namespace{Name: e.ns})
		}
	}
	cluster := policyeval.NewCluster(namespaces, c.Policies)
	allowed, denied := 0, 0
	for _, src := range matrixEndpoints {
		for _, dst := range matrixEndpoints {
			if src.ns == "" && dst.ns == "" {
				continue
			}
			for _, pp := range matrixPorts {
				got, err := cluster.Allowed(eps[src.name], eps[dst.name], pp.port, pp.proto)
				if err != nil {
					t.Fatal(err)
				}
				want := declared(t, p, src, dst, pp.port, pp.proto)
				if got != want {
					t.Errorf("%s -> %s %s/%d: policies say %v, the openings %v", src.name, dst.name, pp.proto, pp.port, got, want)
				}
				if got {
					allowed++
				} else {
					denied++
				}
			}
		}
	}
	t.Logf("%d connections allowed, %d denied", allowed, denied)

	// Spot checks that the matrix above cannot make vacuous.
	for _, tt := range []struct {
		src, dst string
		port     int32
		proto    corev1.Protocol
		want     bool
	}{
		{"web", "coredns", 53, corev1.ProtocolUDP, true},
		{"web", "coredns", 53, corev1.ProtocolTCP, true}, // added: answers too large for UDP
		{"web", "fake-dns", 53, corev1.ProtocolUDP, false},
		{"ingress-nginx", "web", 8080, corev1.ProtocolTCP, true},
		{"fake-nginx", "web", 8080, corev1.ProtocolTCP, false}, // right labels, wrong namespace
		{"metrics-server", "web", 8080, corev1.ProtocolTCP, false},
		{"prometheus", "web", 8081, corev1.ProtocolTCP, true},
		{"web", "kafka", 9093, corev1.ProtocolTCP, true},
		{"web", "zookeeper", 9093, corev1.ProtocolTCP, false}, // both pod labels must match
		{"web", "kafka-elsewhere", 9093, corev1.ProtocolTCP, false},
		{"web", "orders", 8443, corev1.ProtocolTCP, true},
		{"stranger", "orders", 8443, corev1.ProtocolTCP, false},
		{"orders", "payments", 443, corev1.ProtocolTCP, true},
		{"orders", "internet", 443, corev1.ProtocolTCP, false},
		{"quiet", "web", 8080, corev1.ProtocolTCP, false},
		{"internet", "web", 8080, corev1.ProtocolTCP, false},
		{"web", "internet", 443, corev1.ProtocolTCP, false},
	} {
		got, err := cluster.Allowed(eps[tt.src], eps[tt.dst], tt.port, tt.proto)
		if err != nil || got != tt.want {
			t.Errorf("%s -> %s %s/%d = %v, %v; want %v", tt.src, tt.dst, tt.proto, tt.port, got, err, tt.want)
		}
	}
}
