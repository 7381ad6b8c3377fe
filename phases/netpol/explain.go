package netpol

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Explanation says, per workload, who may reach it on which ports and what
// it may reach, from the compiled policies alone (no cluster needed).
type Explanation struct {
	Workloads []WorkloadExplanation `json:"workloads"`
}

// WorkloadExplanation is one workload's explanation.
type WorkloadExplanation struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// PodSelector selects the workload's pods (empty: every pod of the namespace).
	PodSelector map[string]string `json:"podSelector,omitempty"`
	// DeclaredAt is file:line:column of the declaration.
	DeclaredAt string `json:"declaredAt"`
	// Reach is who may reach the workload (its ingress), in words.
	Reach string `json:"reach"`
	// Reaches is what the workload may reach (its egress), in words.
	Reaches string `json:"reaches"`
	Ingress []Rule `json:"ingress"`
	Egress  []Rule `json:"egress"`
}

// Rule is one compiled opening, explained.
type Rule struct {
	Opening string `json:"opening"`
	// Peer is whom the opening allows, in words.
	Peer string `json:"peer"`
	// NamespaceSelector, PodSelector and IPBlock are the compiled peer.
	NamespaceSelector map[string]string `json:"namespaceSelector,omitempty"`
	PodSelector       map[string]string `json:"podSelector,omitempty"`
	IPBlock           string            `json:"ipBlock,omitempty"`
	Ports             []Port            `json:"ports"`
	// Policy is the NetworkPolicy that carries the opening.
	Policy string `json:"policy"`
	// Notes say what castellan changed from the declaration and what the other side must open.
	Notes []string `json:"notes,omitempty"`
}

// Port is a port number and its protocol.
type Port struct {
	Port     int32  `json:"port"`
	Protocol string `json:"protocol"`
}

func (p Port) String() string { return fmt.Sprintf("%s %d", p.Protocol, p.Port) }

// Explain explains the compiled workloads; with names, only the workloads
// called so ("name" or "namespace/name"). It returns an error naming the
// known workloads if a name matches none, or is ambiguous.
func (c *Compiled) Explain(names ...string) (*Explanation, error) {
	selected := c.Workloads
	if len(names) > 0 {
		selected = nil
		for _, n := range names {
			var hits []Workload
			for _, w := range c.Workloads {
				if n == w.Name || n == w.Namespace+"/"+w.Name {
					hits = append(hits, w)
				}
			}
			switch len(hits) {
			case 0:
				return nil, fmt.Errorf("no workload %q; the profile declares: %s", n, strings.Join(c.workloadNames(), ", "))
			case 1:
				selected = append(selected, hits[0])
			default:
				return nil, fmt.Errorf("workload %q is declared in several namespaces; name one as NAMESPACE/%s", n, n)
			}
		}
	}
	e := &Explanation{Workloads: []WorkloadExplanation{}}
	for _, w := range selected {
		e.Workloads = append(e.Workloads, c.explainWorkload(w))
	}
	return e, nil
}

func (c *Compiled) workloadNames() []string {
	var out []string
	for _, w := range c.Workloads {
		out = append(out, w.Namespace+"/"+w.Name)
	}
	return out
}

func (c *Compiled) explainWorkload(w Workload) WorkloadExplanation {
	we := WorkloadExplanation{
		Name:        w.Name,
		Namespace:   w.Namespace,
		PodSelector: w.PodSelector,
		DeclaredAt:  w.String(),
		Ingress:     []Rule{},
		Egress:      []Rule{},
	}
	for _, op := range w.Openings {
		r := Rule{
			Opening: op.Name,
			Peer:    peerWords(op.Peer, w.Namespace),
			Policy:  op.Policy,
		}
		if s := op.Peer.NamespaceSelector; s != nil {
			r.NamespaceSelector = s.MatchLabels
		}
		if s := op.Peer.PodSelector; s != nil {
			r.PodSelector = s.MatchLabels
		}
		if op.Peer.IPBlock != nil {
			r.IPBlock = op.Peer.IPBlock.CIDR
		}
		for _, p := range op.Ports {
			r.Ports = append(r.Ports, Port{Port: p.Port.IntVal, Protocol: string(*p.Protocol)})
		}
		if op.Note != "" {
			r.Notes = append(r.Notes, op.Note)
		}
		if n := c.otherSide(w, op); n != "" {
			r.Notes = append(r.Notes, n)
		}
		if op.Direction == Ingress {
			we.Ingress = append(we.Ingress, r)
		} else {
			we.Egress = append(we.Egress, r)
		}
	}
	self := fmt.Sprintf("%s (%s)", w.Name, podWords(w.PodSelector, w.Namespace))
	we.Reach = sentence("Who may reach "+self, we.Ingress,
		fmt.Sprintf("Nobody else: namespace %s is default-deny.", w.Namespace),
		fmt.Sprintf("Nobody: namespace %s is default-deny and %s declares no ingress opening.", w.Namespace, w.Name))
	we.Reaches = sentence("What "+w.Name+" may reach", we.Egress,
		fmt.Sprintf("Nothing else: namespace %s is default-deny.", w.Namespace),
		fmt.Sprintf("Nothing: namespace %s is default-deny and %s declares no egress opening.", w.Namespace, w.Name))
	return we
}

func sentence(lead string, rules []Rule, rest, none string) string {
	if len(rules) == 0 {
		return lead + ": " + none
	}
	parts := make([]string, len(rules))
	for i, r := range rules {
		parts[i] = fmt.Sprintf("%s, on %s (opening %s)", r.Peer, portWords(r.Ports), r.Opening)
	}
	return lead + ": " + strings.Join(parts, "; ") + ". " + rest
}

func portWords(ps []Port) string {
	words := make([]string, len(ps))
	for i, p := range ps {
		words[i] = p.String()
	}
	return andList(words)
}

func andList(words []string) string {
	switch len(words) {
	case 0:
		return ""
	case 1:
		return words[0]
	}
	return strings.Join(words[:len(words)-1], ", ") + " and " + words[len(words)-1]
}

func labelWords(m map[string]string) string {
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ", ")
}

// podWords names pods by selector in a namespace.
func podWords(sel map[string]string, namespace string) string {
	if len(sel) == 0 {
		return "every pod in namespace " + namespace
	}
	return fmt.Sprintf("pods labelled %s in namespace %s", labelWords(sel), namespace)
}

// namespaceName is the one namespace a selector names by its
// kubernetes.io/metadata.name label (which the API server sets on every
// namespace), or "".
func namespaceName(sel *metav1.LabelSelector) string {
	if sel == nil || len(sel.MatchLabels) != 1 || len(sel.MatchExpressions) != 0 {
		return ""
	}
	return sel.MatchLabels[corev1.LabelMetadataName]
}

// peerWords says whom a peer selects; own is the policy's namespace.
func peerWords(p networkingv1.NetworkPolicyPeer, own string) string {
	if p.IPBlock != nil {
		if strings.HasSuffix(p.IPBlock.CIDR, "/32") || strings.HasSuffix(p.IPBlock.CIDR, "/128") {
			return "the address " + strings.Split(p.IPBlock.CIDR, "/")[0]
		}
		return "addresses in " + p.IPBlock.CIDR
	}
	var pods map[string]string
	if p.PodSelector != nil {
		pods = p.PodSelector.MatchLabels
	}
	var what string
	switch ns := namespaceName(p.NamespaceSelector); {
	case p.NamespaceSelector == nil:
		what = podWords(pods, own)
	case ns != "":
		what = podWords(pods, ns)
	case len(pods) == 0:
		what = "every pod in the namespaces labelled " + labelWords(p.NamespaceSelector.MatchLabels)
	default:
		what = fmt.Sprintf("pods labelled %s in the namespaces labelled %s", labelWords(pods), labelWords(p.NamespaceSelector.MatchLabels))
	}
	if namespaceName(p.NamespaceSelector) == DNSNamespace && len(pods) == 1 && pods[DNSPodLabel] == DNSPodValue {
		what = "the cluster DNS (" + what + ")"
	}
	return what
}

// peerNamespace is the one namespace an opening's peer lies in, or "" (an
// ipBlock, or namespaces selected by other labels).
func peerNamespace(p networkingv1.NetworkPolicyPeer, own string) string {
	switch {
	case p.IPBlock != nil:
		return ""
	case p.NamespaceSelector == nil:
		return own
	}
	return namespaceName(p.NamespaceSelector)
}

func subset(small, big map[string]string) bool {
	for k, v := range small {
		if bv, ok := big[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// otherSide says, for an opening whose peer lies in a namespace castellan
// also puts under default-deny, whether a workload declared there opens the
// other direction too: a connection needs the sender's egress and the
// receiver's ingress. It claims a match only when it is sure of it, assuming
// a workload's pods carry at least its podSelector's labels.
func (c *Compiled) otherSide(w Workload, op Opening) string {
	ns := peerNamespace(op.Peer, w.Namespace)
	if ns == "" || !slices.Contains(c.Namespaces, ns) {
		return ""
	}
	want, verb := Egress, "sends to "+w.Name
	if op.Direction == Egress {
		want, verb = Ingress, "accepts "+w.Name
	}
	var peerPods map[string]string
	if op.Peer.PodSelector != nil {
		peerPods = op.Peer.PodSelector.MatchLabels
	}
	var covered []string
	for _, other := range c.Workloads {
		if other.Namespace != ns || !subset(peerPods, other.PodSelector) {
			continue
		}
		for _, o2 := range other.Openings {
			if o2.Direction != want || o2.Peer.IPBlock != nil {
				continue
			}
			if peerNamespace(o2.Peer, other.Namespace) != w.Namespace {
				continue
			}
			var sel map[string]string
			if o2.Peer.PodSelector != nil {
				sel = o2.Peer.PodSelector.MatchLabels
			}
			if !subset(sel, w.PodSelector) || !coversPorts(o2.Ports, op.Ports) {
				continue
			}
			covered = append(covered, fmt.Sprintf("%s (opening %s)", other.Name, o2.Name))
		}
	}
	if len(covered) > 0 {
		return fmt.Sprintf("namespace %s is default-deny too; the other side is open: %s %s on these ports.", ns, andList(covered), verb)
	}
	return fmt.Sprintf("namespace %s is default-deny too, and no workload declared there %s on %s: until one does, this opening lets nothing through.", ns, verb, portWords(toPorts(op.Ports)))
}

func toPorts(ps []networkingv1.NetworkPolicyPort) []Port {
	out := make([]Port, len(ps))
	for i, p := range ps {
		out[i] = Port{Port: p.Port.IntVal, Protocol: string(*p.Protocol)}
	}
	return out
}

func coversPorts(have, want []networkingv1.NetworkPolicyPort) bool {
	set := map[Port]bool{}
	for _, p := range toPorts(have) {
		set[p] = true
	}
	for _, p := range toPorts(want) {
		if !set[p] {
			return false
		}
	}
	return true
}

// WriteText writes the explanation in words and as a table, per workload.
func (e *Explanation) WriteText(w io.Writer) error {
	var b strings.Builder
	for i, we := range e.Workloads {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "%s/%s (%s), declared at %s\n\n", we.Namespace, we.Name, podWords(we.PodSelector, we.Namespace), we.DeclaredAt)
		fmt.Fprintf(&b, "%s\n\n%s\n\n", wrap(we.Reach, 100), wrap(we.Reaches, 100))
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "DIRECTION\tOPENING\tPEER\tPORTS\tPOLICY")
		for _, rules := range []struct {
			dir   string
			rules []Rule
		}{{"ingress (from)", we.Ingress}, {"egress (to)", we.Egress}} {
			for _, r := range rules.rules {
				ports := make([]string, len(r.Ports))
				for i, p := range r.Ports {
					ports[i] = p.String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", rules.dir, r.Opening, r.Peer, strings.Join(ports, ", "), r.Policy)
			}
		}
		fmt.Fprintf(tw, "both\t(default)\teverything else\tdenied\t%s\n", DefaultDenyName)
		tw.Flush()
		var notes []string
		for _, r := range slices.Concat(we.Ingress, we.Egress) {
			for _, n := range r.Notes {
				notes = append(notes, r.Opening+": "+n)
			}
		}
		if len(notes) > 0 {
			b.WriteString("\nNotes:\n")
			for _, n := range notes {
				b.WriteString(indentWrap("- "+n, "  ", 100))
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes the explanation as indented JSON.
func (e *Explanation) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(e)
}

// wrap breaks text into lines of at most width characters, at spaces.
func wrap(text string, width int) string {
	return strings.TrimSuffix(indentWrap(text, "", width), "\n")
}

// indentWrap wraps text, indenting continuation lines with indent, and ends it with a newline.
func indentWrap(text, indent string, width int) string {
	var b strings.Builder
	line := 0
	for i, word := range strings.Fields(text) {
		if i > 0 {
			if line+1+len(word) > width {
				b.WriteString("\n" + indent)
				line = len(indent)
			} else {
				b.WriteString(" ")
				line++
			}
		}
		b.WriteString(word)
		line += len(word)
	}
	b.WriteString("\n")
	return b.String()
}
