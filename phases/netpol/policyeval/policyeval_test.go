package policyeval

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

func policies(t *testing.T, docs ...string) []networkingv1.NetworkPolicy {
	t.Helper()
	var out []networkingv1.NetworkPolicy
	for _, d := range docs {
		var np networkingv1.NetworkPolicy
		if err := yaml.UnmarshalStrict([]byte(d), &np); err != nil {
			t.Fatalf("%v\n%s", err, d)
		}
		out = append(out, np)
	}
	return out
}

// The documentation's example "test-network-policy", verbatim.
const docExample = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
`

func pod(name, ns, ip string, labels map[string]string) Endpoint {
	return Endpoint{Pod: &Pod{Name: name, Namespace: ns, Labels: labels, IP: netip.MustParseAddr(ip)}}
}

func addr(ip string) Endpoint { return Endpoint{IP: netip.MustParseAddr(ip)} }

func TestDocumentationExample(t *testing.T) {
	c := NewCluster([]Namespace{{Name: "default"}, {Name: "myproject", Labels: map[string]string{"project": "myproject"}}, {Name: "other"}},
		policies(t, docExample))
	db := pod("db", "default", "10.42.0.5", map[string]string{"role": "db"})
	front := pod("front", "default", "10.42.0.6", map[string]string{"role": "frontend"})
	frontElsewhere := pod("front2", "other", "10.42.0.7", map[string]string{"role": "frontend"})
	inProject := pod("any", "myproject", "10.42.0.8", nil)
	tcp := corev1.ProtocolTCP
	for _, tt := range []struct {
		name     string
		src, dst Endpoint
		port     int32
		proto    corev1.Protocol
		want     bool
	}{
		{"frontend in the policy's namespace", front, db, 6379, tcp, true},
		{"frontend in another namespace: podSelector alone means the policy's namespace", frontElsewhere, db, 6379, tcp, false},
		{"any pod of a namespace labelled project=myproject", inProject, db, 6379, tcp, true},
		{"ipBlock", addr("172.17.0.9"), db, 6379, tcp, true},
		{"ipBlock except", addr("172.17.1.9"), db, 6379, tcp, false},
		{"wrong port", front, db, 6380, tcp, false},
		{"wrong protocol", front, db, 6379, corev1.ProtocolUDP, false},
		{"db egress to 10.0.0.0/24 on 5978", db, addr("10.0.0.7"), 5978, tcp, true},
		{"db egress elsewhere", db, addr("10.0.1.7"), 5978, tcp, false},
		{"db egress to a pod (no pod matches an ipBlock of other addresses)", db, front, 80, tcp, false},
		{"frontend is not selected: open both ways", front, frontElsewhere, 1, tcp, true},
	} {
		got, err := c.Allowed(tt.src, tt.dst, tt.port, tt.proto)
		if err != nil || got != tt.want {
			t.Errorf("%s: %s -> %s %s/%d = %v, %v; want %v", tt.name, tt.src, tt.dst, tt.proto, tt.port, got, err, tt.want)
		}
	}
}

// TestAndVersusOr is the documentation's "Behavior of to and from
// selectors": one element with both selectors is AND, two elements are OR.
func TestAndVersusOr(t *testing.T) {
	and := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and, namespace: db}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {user: alice}}
      podSelector: {matchLabels: {role: client}}
`
	or := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: or, namespace: db}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {user: alice}}
    - podSelector: {matchLabels: {role: client}}
`
	nss := []Namespace{{Name: "db"}, {Name: "alice", Labels: map[string]string{"user": "alice"}}, {Name: "bob"}}
	dst := pod("db", "db", "10.42.1.1", nil)
	aliceClient := pod("c", "alice", "10.42.1.2", map[string]string{"role": "client"})
	aliceOther := pod("o", "alice", "10.42.1.3", nil)
	bobClient := pod("c", "bob", "10.42.1.4", map[string]string{"role": "client"})
	localClient := pod("c", "db", "10.42.1.5", map[string]string{"role": "client"})
	for _, tt := range []struct {
		policy                      string
		aliceC, aliceO, bobC, local bool
	}{
		{and, true, false, false, false},
		{or, true, true, false, true},
	} {
		c := NewCluster(nss, policies(t, tt.policy))
		for _, x := range []struct {
			src  Endpoint
			want bool
		}{{aliceClient, tt.aliceC}, {aliceOther, tt.aliceO}, {bobClient, tt.bobC}, {localClient, tt.local}} {
			got, err := c.Allowed(x.src, dst, 80, corev1.ProtocolTCP)
			if err != nil || got != x.want {
				t.Errorf("%s: %s -> db = %v, %v; want %v", c.Policies[0].Name, x.src, got, err, x.want)
			}
		}
	}
}

func TestDefaultDenyAndTypes(t *testing.T) {
	deny := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-all, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
`
	ingressOnly := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: b}
spec:
  podSelector: {}
`
	c := NewCluster([]Namespace{{Name: "a"}, {Name: "b"}, {Name: "c"}}, policies(t, deny, ingressOnly))
	a := pod("a", "a", "10.42.2.1", nil)
	b := pod("b", "b", "10.42.2.2", nil)
	cc := pod("c", "c", "10.42.2.3", nil)
	for _, tt := range []struct {
		src, dst Endpoint
		want     bool
	}{
		{a, cc, false}, // a's egress is denied
		{cc, a, false}, // a's ingress is denied
		{a, a, false},  // even inside the namespace
		{b, cc, true},  // no policyTypes and no egress rules: Ingress only
		{cc, b, false}, // b's ingress is denied
		{cc, cc, true}, // c has no policies
		{addr("192.0.2.1"), cc, true},
	} {
		got, err := c.Allowed(tt.src, tt.dst, 443, corev1.ProtocolTCP)
		if err != nil || got != tt.want {
			t.Errorf("%s -> %s = %v, %v; want %v", tt.src, tt.dst, got, err, tt.want)
		}
	}
}

func TestPorts(t *testing.T) {
	udp, sctp := corev1.ProtocolUDP, corev1.ProtocolSCTP
	named := intstr.FromString("dns")
	low := intstr.FromInt32(30000)
	end := int32(30010)
	np := networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "n"},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{
				{Protocol: &udp, Port: &named},
				{Port: &low, EndPort: &end}, // protocol defaults to TCP
				{Protocol: &sctp},           // every SCTP port
			}}},
		},
	}
	c := NewCluster([]Namespace{{Name: "n"}}, []networkingv1.NetworkPolicy{np})
	dst := Endpoint{Pod: &Pod{Name: "d", Namespace: "n", IP: netip.MustParseAddr("10.42.3.1"),
		NamedPorts: map[string]NamedPort{"dns": {Port: 5353, Protocol: udp}}}}
	src := addr("192.0.2.9")
	for _, tt := range []struct {
		port  int32
		proto corev1.Protocol
		want  bool
	}{
		{5353, udp, true}, {53, udp, false}, {5353, corev1.ProtocolTCP, false},
		{30000, corev1.ProtocolTCP, true}, {30010, corev1.ProtocolTCP, true}, {30011, corev1.ProtocolTCP, false}, {30005, udp, false},
		{9, sctp, true},
	} {
		got, err := c.Allowed(src, dst, tt.port, tt.proto)
		if err != nil || got != tt.want {
			t.Errorf("%s/%d = %v, %v; want %v", tt.proto, tt.port, got, err, tt.want)
		}
	}
}
