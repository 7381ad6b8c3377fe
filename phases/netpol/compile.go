// Package netpol compiles the profile's declared network openings
// (spec.netpol) into Kubernetes NetworkPolicy objects (networking.k8s.io/v1)
// behind a default-deny policy per namespace, explains them in plain words,
// renders them as YAML, and applies them to a cluster with server-side apply:
// the plan is computed against the live objects, so a rerun that changes
// nothing sends nothing, and policies castellan made that the profile no
// longer declares are pruned.
//
// Semantics follow the Kubernetes NetworkPolicy documentation
// (kubernetes.io/docs/concepts/services-networking/network-policies/):
// a pod selected by no policy of a direction is open in that direction; once
// selected, only what some policy allows passes; a peer with a
// namespaceSelector and a podSelector selects the pods matching both.
package netpol

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"castellan/installer/profile"
)

// Labels and annotations castellan puts on every object it compiles. Prune
// deletes only objects carrying LabelManagedBy=castellan, LabelPhase=netpol
// and LabelCluster=<the cluster's name>.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "castellan"
	LabelCluster   = "castellan.dev/cluster"
	LabelPhase     = "castellan.dev/phase" // its value is Name
	LabelWorkload  = "netpol.castellan.dev/workload"
	LabelDirection = "netpol.castellan.dev/direction"
	LabelOpening   = "netpol.castellan.dev/opening"
	// AnnotationNote explains on the object itself what castellan changed
	// from the declared opening (the cluster DNS fix).
	AnnotationNote = "netpol.castellan.dev/note"
	// FieldManager is the server-side apply field manager.
	FieldManager = "castellan"
	// DefaultDenyName names the default-deny policy of each namespace.
	DefaultDenyName = "castellan-default-deny"
)

// The cluster DNS of RKE2: the rke2-coredns chart (rancher/rke2-charts,
// packages/rke2-coredns) sets k8sApp: kube-dns, which becomes the k8s-app
// label of the CoreDNS pods, deployed in kube-system; its Corefile serves
// ".:53", so the pods listen on port 53 themselves (a NetworkPolicy sees the
// pod's port, after the service's translation).
const (
	DNSNamespace = "kube-system"
	DNSPodLabel  = "k8s-app"
	DNSPodValue  = "kube-dns"
)

// Direction of an opening.
type Direction string

// Directions.
const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// Input is what the compiler needs from a profile.
type Input struct {
	// Cluster is the cluster's name (metadata.name), put on every object.
	Cluster string
	// ServiceCIDR is the cluster's service network (spec.rke2.serviceCIDR).
	ServiceCIDR string
	// Namespaces get a default-deny policy though no workload is declared in them.
	Namespaces []string
	// Workloads are the declared workloads, with where they were declared.
	Workloads []profile.SourcedWorkload
}

// InputFrom takes the compiler's input from a loaded profile.
func InputFrom(p *profile.Profile) Input {
	return Input{
		Cluster:     p.Metadata.Name,
		ServiceCIDR: p.Spec.RKE2.ServiceCIDR,
		Namespaces:  p.Spec.NetPol.Namespaces,
		Workloads:   p.Workloads(),
	}
}

// Compiled is the result of Compile.
type Compiled struct {
	// Policies are every object to apply: one per opening, then one
	// default-deny per namespace, ordered by namespace and name.
	Policies []networkingv1.NetworkPolicy
	// Namespaces under default-deny, sorted.
	Namespaces []string
	// Workloads are the compiled workloads, in the order they were declared.
	Workloads []Workload
}

// Workload is one compiled workload: its openings and their policies.
type Workload struct {
	profile.SourcedWorkload
	// Openings, ingress then egress, each by name.
	Openings []Opening
}

// Opening is one compiled opening.
type Opening struct {
	Direction Direction
	Name      string
	// Declared is the opening as written.
	Declared profile.Opening
	// Peer is whom the policy allows: pods (namespaces and pods selected together) or an ipBlock.
	Peer networkingv1.NetworkPolicyPeer
	// Ports are the allowed ports, ordered by number then protocol.
	Ports []networkingv1.NetworkPolicyPort
	// Policy is the name of the NetworkPolicy compiled from it.
	Policy string
	// Note says what castellan changed from the declaration, and why; empty if nothing.
	Note string
}

// Compile turns the declared openings into NetworkPolicy objects. It
// expects a validated profile's input (profile.Load checks names, selectors,
// ports and the service-network trap) and returns an error only for input
// that validation would have refused.
//
// Each opening becomes one policy named WORKLOAD.DIRECTION.OPENING (three
// DNS labels joined by dots: a DNS-1123 subdomain, as NetworkPolicy names
// must be, and unique because no part holds a dot) that selects the
// workload's pods, has the one policy type of its direction, and allows its
// single peer on its ports. A namespaceSelector and a podSelector of one
// opening form one peer, which selects the pods matching both.
//
// An egress opening written as the cluster DNS service's IP on port 53
// (profile.IsClusterDNSOpening) is compiled to the DNS pods themselves on
// UDP and TCP 53: under Calico with kube-proxy, policy sees the connection
// after the service IP was translated to a pod IP, so the service IP would
// match nothing. TCP is added because DNS answers too large for UDP are
// retried over TCP (RFC 7766 requires TCP support of every resolver).
//
// Every namespace holding a workload, and every listed namespace, gets the
// policy castellan-default-deny: all its pods, both policy types, no rule.
func Compile(in Input) (*Compiled, error) {
	c := &Compiled{}
	namespaces := map[string]bool{}
	for _, ns := range in.Namespaces {
		namespaces[ns] = true
	}
	names := map[string]string{}
	for _, sw := range in.Workloads {
		w := sw.Workload
		if w.Name == "" || w.Namespace == "" {
			return nil, fmt.Errorf("%s: workload without name or namespace", sw)
		}
		namespaces[w.Namespace] = true
		cw := Workload{SourcedWorkload: sw}
		for _, dir := range []struct {
			d   Direction
			ops map[string]profile.Opening
		}{{Ingress, w.Ingress}, {Egress, w.Egress}} {
			for _, name := range slices.Sorted(maps.Keys(dir.ops)) {
				op, err := compileOpening(in, w, dir.d, name, dir.ops[name])
				if err != nil {
					return nil, fmt.Errorf("%s: %s.%s: %w", sw, dir.d, name, err)
				}
				key := w.Namespace + "/" + op.Policy
				if prev, dup := names[key]; dup {
					return nil, fmt.Errorf("%s: policy %s is also compiled from %s", sw, key, prev)
				}
				names[key] = sw.String()
				cw.Openings = append(cw.Openings, op)
				c.Policies = append(c.Policies, openingPolicy(in.Cluster, w, op))
			}
		}
		c.Workloads = append(c.Workloads, cw)
	}
	c.Namespaces = slices.Sorted(maps.Keys(namespaces))
	for _, ns := range c.Namespaces {
		c.Policies = append(c.Policies, defaultDeny(in.Cluster, ns))
	}
	sortPolicies(c.Policies)
	return c, nil
}

func sortPolicies(ps []networkingv1.NetworkPolicy) {
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].Namespace != ps[j].Namespace {
			return ps[i].Namespace < ps[j].Namespace
		}
		return ps[i].Name < ps[j].Name
	})
}

// PolicyName is the name of the policy compiled from an opening.
func PolicyName(workload string, dir Direction, opening string) string {
	return workload + "." + string(dir) + "." + opening
}

func compileOpening(in Input, w profile.Workload, dir Direction, name string, o profile.Opening) (Opening, error) {
	op := Opening{Direction: dir, Name: name, Declared: o, Policy: PolicyName(w.Name, dir, name)}
	if len(o.Ports) == 0 {
		return op, fmt.Errorf("no ports")
	}
	switch {
	case dir == Egress && profile.IsClusterDNSOpening(o, in.ServiceCIDR):
		op.Peer = networkingv1.NetworkPolicyPeer{
			NamespaceSelector: selector(map[string]string{corev1.LabelMetadataName: DNSNamespace}),
			PodSelector:       selector(map[string]string{DNSPodLabel: DNSPodValue}),
		}
		op.Ports = ports(map[int]string{profile.DNSPort: "UDP"})
		op.Ports = append(op.Ports, ports(map[int]string{profile.DNSPort: "TCP"})...)
		op.Note = fmt.Sprintf("ipBlock %s is the cluster DNS service's IP, inside the service network %s: Calico sees a connection after kube-proxy translated the service IP to a DNS pod's IP (DNAT), so the ipBlock would match nothing. castellan allows the DNS pods themselves (%s=%s in namespace %s) on UDP and TCP %d instead (TCP carries answers too large for UDP, RFC 7766).",
			o.IPBlock, in.ServiceCIDR, DNSPodLabel, DNSPodValue, DNSNamespace, profile.DNSPort)
	case o.IPBlock != "":
		pfx, err := netip.ParsePrefix(o.IPBlock)
		if err != nil || pfx.Masked() != pfx {
			return op, fmt.Errorf("ipBlock %q is not a CIDR", o.IPBlock)
		}
		op.Peer = networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: pfx.String()}}
		op.Ports = ports(o.Ports)
	case o.NamespaceSelector != nil || o.PodSelector != nil:
		// One peer: the pods matching the podSelector in the namespaces
		// matching the namespaceSelector. Two peers would allow either.
		op.Peer = networkingv1.NetworkPolicyPeer{}
		if o.NamespaceSelector != nil {
			op.Peer.NamespaceSelector = selector(o.NamespaceSelector)
		}
		if o.PodSelector != nil {
			op.Peer.PodSelector = selector(o.PodSelector)
		}
		op.Ports = ports(o.Ports)
	default:
		return op, fmt.Errorf("no peer")
	}
	return op, nil
}

func selector(labels map[string]string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: maps.Clone(labels)}
}

// ports orders ports by number, then protocol.
func ports(m map[int]string) []networkingv1.NetworkPolicyPort {
	nums := slices.Sorted(maps.Keys(m))
	out := make([]networkingv1.NetworkPolicyPort, 0, len(nums))
	for _, n := range nums {
		proto := corev1.Protocol(strings.ToUpper(m[n]))
		port := intstr.FromInt32(int32(n))
		out = append(out, networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &port})
	}
	return out
}

func baseLabels(cluster string) map[string]string {
	return map[string]string{LabelManagedBy: ManagedBy, LabelCluster: cluster, LabelPhase: Name}
}

func openingPolicy(cluster string, w profile.Workload, op Opening) networkingv1.NetworkPolicy {
	labels := baseLabels(cluster)
	labels[LabelWorkload] = w.Name
	labels[LabelDirection] = string(op.Direction)
	labels[LabelOpening] = op.Name
	np := networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: networkingv1.SchemeGroupVersion.String(), Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: op.Policy, Namespace: w.Namespace, Labels: labels},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: maps.Clone(w.PodSelector)},
		},
	}
	if len(np.Spec.PodSelector.MatchLabels) == 0 {
		np.Spec.PodSelector.MatchLabels = nil
	}
	if op.Note != "" {
		np.Annotations = map[string]string{AnnotationNote: op.Note}
	}
	peer := *op.Peer.DeepCopy()
	portsCopy := make([]networkingv1.NetworkPolicyPort, len(op.Ports))
	for i := range op.Ports {
		portsCopy[i] = *op.Ports[i].DeepCopy()
	}
	switch op.Direction {
	case Ingress:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{peer}, Ports: portsCopy}}
	case Egress:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{peer}, Ports: portsCopy}}
	}
	return np
}

// defaultDeny selects every pod of the namespace for both policy types and
// allows nothing: the documentation's "default deny all ingress and all
// egress traffic".
func defaultDeny(cluster, namespace string) networkingv1.NetworkPolicy {
	return networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: networkingv1.SchemeGroupVersion.String(), Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: DefaultDenyName, Namespace: namespace, Labels: baseLabels(cluster)},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		},
	}
}
