// Package policyeval decides whether Kubernetes NetworkPolicies
// (networking.k8s.io/v1) allow a connection, written from the Kubernetes
// documentation (kubernetes.io/docs/concepts/services-networking/network-policies/)
// and independent of any compiler of policies, so tests can check what a
// set of policies really allows.
//
// The rules it implements, as the documentation states them:
//   - A pod is isolated for ingress (egress) if any policy in its namespace
//     selects it (podSelector) and has Ingress (Egress) in its policyTypes;
//     a pod not isolated in a direction allows everything in that direction.
//   - Policies are additive: a connection an isolated pod's policies allow
//     in any rule of any policy is allowed.
//   - A connection between two pods needs the source's egress and the
//     destination's ingress to allow it.
//   - A peer with only podSelector selects pods in the policy's namespace;
//     with only namespaceSelector every pod of the selected namespaces; with
//     both, the pods matching podSelector in the namespaces matching
//     namespaceSelector (one peer, both conditions); an ipBlock the addresses
//     in its CIDR minus its except ranges. A rule with no peers allows every
//     peer; a rule with no ports allows every port.
//   - A port without protocol means TCP; endPort makes a range.
package policyeval

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Namespace is a namespace and its labels. The API server sets
// kubernetes.io/metadata.name on every namespace; Cluster.Namespace adds it.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Pod is a pod: its namespace, labels, IP and named container ports.
type Pod struct {
	Name      string
	Namespace string
	Labels    map[string]string
	IP        netip.Addr
	// NamedPorts maps a container port's name to its number and protocol.
	NamedPorts map[string]NamedPort
}

// NamedPort is a named container port.
type NamedPort struct {
	Port     int32
	Protocol corev1.Protocol
}

// Endpoint is either end of a connection: a pod, or an address outside the cluster's pods.
type Endpoint struct {
	Pod *Pod
	IP  netip.Addr
}

func (e Endpoint) String() string {
	if e.Pod != nil {
		return e.Pod.Namespace + "/" + e.Pod.Name
	}
	return e.IP.String()
}

func (e Endpoint) addr() netip.Addr {
	if e.Pod != nil {
		return e.Pod.IP
	}
	return e.IP
}

// Cluster is the namespaces and policies a decision is made in.
type Cluster struct {
	Namespaces map[string]Namespace
	Policies   []networkingv1.NetworkPolicy
}

// NewCluster indexes namespaces by name, adding the kubernetes.io/metadata.name label.
func NewCluster(namespaces []Namespace, policies []networkingv1.NetworkPolicy) *Cluster {
	c := &Cluster{Namespaces: map[string]Namespace{}, Policies: policies}
	for _, ns := range namespaces {
		l := map[string]string{}
		for k, v := range ns.Labels {
			l[k] = v
		}
		l[corev1.LabelMetadataName] = ns.Name
		c.Namespaces[ns.Name] = Namespace{Name: ns.Name, Labels: l}
	}
	return c
}

// Allowed decides whether src may open a connection to dst's port over
// protocol: the source's egress and the destination's ingress must both
// allow it (an address that is not a pod has no policies of its own).
// Errors: a selector that does not parse, a pod in an unknown namespace.
func (c *Cluster) Allowed(src, dst Endpoint, port int32, protocol corev1.Protocol) (bool, error) {
	if src.Pod != nil {
		ok, err := c.direction(*src.Pod, networkingv1.PolicyTypeEgress, dst, dst, port, protocol)
		if err != nil || !ok {
			return false, err
		}
	}
	if dst.Pod != nil {
		return c.direction(*dst.Pod, networkingv1.PolicyTypeIngress, src, dst, port, protocol)
	}
	return true, nil
}

// direction decides for the pod self, in one direction, with peer the other
// end; target is the connection's destination (whose port is matched).
func (c *Cluster) direction(self Pod, dir networkingv1.PolicyType, peer, target Endpoint, port int32, protocol corev1.Protocol) (bool, error) {
	isolated := false
	for i := range c.Policies {
		np := &c.Policies[i]
		if np.Namespace != self.Namespace || !hasType(np, dir) {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			return false, fmt.Errorf("%s/%s podSelector: %w", np.Namespace, np.Name, err)
		}
		if !sel.Matches(labels.Set(self.Labels)) {
			continue
		}
		isolated = true
		var rules []rule
		if dir == networkingv1.PolicyTypeIngress {
			for _, r := range np.Spec.Ingress {
				rules = append(rules, rule{peers: r.From, ports: r.Ports})
			}
		} else {
			for _, r := range np.Spec.Egress {
				rules = append(rules, rule{peers: r.To, ports: r.Ports})
			}
		}
		for _, r := range rules {
			ok, err := c.ruleAllows(np.Namespace, r, peer, target, port, protocol)
			if err != nil {
				return false, fmt.Errorf("%s/%s: %w", np.Namespace, np.Name, err)
			}
			if ok {
				return true, nil
			}
		}
	}
	return !isolated, nil
}

type rule struct {
	peers []networkingv1.NetworkPolicyPeer
	ports []networkingv1.NetworkPolicyPort
}

// hasType is the policy's effective policyTypes: as written, or when empty
// Ingress plus Egress if it has egress rules (the documented default).
func hasType(np *networkingv1.NetworkPolicy, t networkingv1.PolicyType) bool {
	types := np.Spec.PolicyTypes
	if len(types) == 0 {
		types = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(np.Spec.Egress) > 0 {
			types = append(types, networkingv1.PolicyTypeEgress)
		}
	}
	for _, x := range types {
		if x == t {
			return true
		}
	}
	return false
}

func (c *Cluster) ruleAllows(policyNS string, r rule, peer, target Endpoint, port int32, protocol corev1.Protocol) (bool, error) {
	ok, err := portsAllow(r.ports, target, port, protocol)
	if err != nil || !ok {
		return false, err
	}
	if len(r.peers) == 0 {
		return true, nil
	}
	for _, p := range r.peers {
		ok, err := c.peerMatches(policyNS, p, peer)
		if err != nil {
			return false, err
		}
		if ok {
			return true, nil
		}
	}
	return false, nil
}

func (c *Cluster) peerMatches(policyNS string, p networkingv1.NetworkPolicyPeer, e Endpoint) (bool, error) {
	if p.IPBlock != nil {
		pfx, err := netip.ParsePrefix(p.IPBlock.CIDR)
		if err != nil {
			return false, fmt.Errorf("ipBlock %q: %w", p.IPBlock.CIDR, err)
		}
		a := e.addr()
		if !a.IsValid() || !pfx.Contains(a) {
			return false, nil
		}
		for _, ex := range p.IPBlock.Except {
			xp, err := netip.ParsePrefix(ex)
			if err != nil {
				return false, fmt.Errorf("ipBlock except %q: %w", ex, err)
			}
			if xp.Contains(a) {
				return false, nil
			}
		}
		return true, nil
	}
	if e.Pod == nil {
		return false, nil // selectors select pods only
	}
	if p.NamespaceSelector == nil {
		if e.Pod.Namespace != policyNS {
			return false, nil
		}
	} else {
		ns, ok := c.Namespaces[e.Pod.Namespace]
		if !ok {
			return false, fmt.Errorf("pod %s in unknown namespace %s", e.Pod.Name, e.Pod.Namespace)
		}
		sel, err := metav1.LabelSelectorAsSelector(p.NamespaceSelector)
		if err != nil {
			return false, fmt.Errorf("namespaceSelector: %w", err)
		}
		if !sel.Matches(labels.Set(ns.Labels)) {
			return false, nil
		}
	}
	if p.PodSelector == nil {
		return true, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(p.PodSelector)
	if err != nil {
		return false, fmt.Errorf("podSelector: %w", err)
	}
	return sel.Matches(labels.Set(e.Pod.Labels)), nil
}

func portsAllow(ports []networkingv1.NetworkPolicyPort, target Endpoint, port int32, protocol corev1.Protocol) (bool, error) {
	if len(ports) == 0 {
		return true, nil
	}
	for _, p := range ports {
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		if proto != protocol {
			continue
		}
		if p.Port == nil {
			return true, nil // every port of this protocol
		}
		lo := p.Port.IntVal
		if p.Port.Type == intstr.String {
			if target.Pod == nil {
				continue // a named port names a container port of a pod
			}
			np, ok := target.Pod.NamedPorts[p.Port.StrVal]
			if !ok || np.Protocol != proto {
				continue
			}
			lo = np.Port
		}
		hi := lo
		if p.EndPort != nil {
			if p.Port.Type == intstr.String {
				return false, fmt.Errorf("endPort with a named port %q", p.Port.StrVal)
			}
			hi = *p.EndPort
		}
		if port >= lo && port <= hi {
			return true, nil
		}
	}
	return false, nil
}
