package netpol

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"castellan/installer/kube"
	"castellan/installer/kube/kubetest"
	"castellan/installer/profile"
)

// requests counts the HTTP requests a client sends, by method.
type requests struct {
	mu     sync.Mutex
	byVerb map[string]int
	next   http.RoundTripper
}

func (r *requests) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.byVerb[req.Method]++
	r.mu.Unlock()
	return r.next.RoundTrip(req)
}

func (r *requests) reset() {
	r.mu.Lock()
	r.byVerb = map[string]int{}
	r.mu.Unlock()
}

// writes counts every request that is not a read.
func (r *requests) writes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for verb, c := range r.byVerb {
		if verb != http.MethodGet && verb != http.MethodHead {
			n += c
		}
	}
	return n
}

func (r *requests) reads() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byVerb[http.MethodGet]
}

// countingClient is a clientset whose requests are counted.
func countingClient(t *testing.T, cfg *rest.Config) (*kubernetes.Clientset, *requests) {
	t.Helper()
	counter := &requests{byVerb: map[string]int{}}
	cfg = rest.CopyConfig(cfg)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { counter.next = rt; return counter })
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs, counter
}

// castellanPolicies lists the live policies the prune selector selects, by "ns/name".
func castellanPolicies(t *testing.T, cs kubernetes.Interface, cluster string) map[string]networkingv1.NetworkPolicy {
	t.Helper()
	list, err := cs.NetworkingV1().NetworkPolicies("").List(context.Background(), metav1.ListOptions{LabelSelector: PruneSelector(cluster).String()})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]networkingv1.NetworkPolicy{}
	for _, np := range list.Items {
		out[np.Namespace+"/"+np.Name] = np
	}
	return out
}

// assertLive checks that exactly want's policies are live (castellan's),
// each as declared.
func assertLive(t *testing.T, cs kubernetes.Interface, want []networkingv1.NetworkPolicy) {
	t.Helper()
	live := castellanPolicies(t, cs, "shopfloor")
	if len(live) != len(want) {
		var names []string
		for k := range live {
			names = append(names, k)
		}
		slices.Sort(names)
		t.Errorf("%d castellan policies live, want %d: %v", len(live), len(want), names)
	}
	for i := range want {
		key := want[i].Namespace + "/" + want[i].Name
		l, ok := live[key]
		if !ok {
			t.Errorf("%s is not live", key)
			continue
		}
		if d, err := Diff(&l, &want[i]); err != nil || d != "" {
			t.Errorf("%s differs from what was declared: %v\n%s", key, err, d)
		}
	}
}

func actions(p *Plan) string {
	var s []string
	for _, c := range p.Changes {
		s = append(s, c.String())
	}
	return strings.Join(s, "\n")
}

// TestAPIServer applies the compiled policies to a real kube-apiserver (its
// validation is the check that they are well-formed), reruns without a
// single write, repairs drift, prunes what the profile no longer declares
// (and nothing else), and rolls back to an earlier run's objects.
func TestAPIServer(t *testing.T) {
	s := kubetest.Start(t)
	admin := s.Clientset(t)
	ctx := context.Background()

	// Cluster access as the phase will have it: through the profile's kubeconfig.
	cfg, err := kube.Load(s.Kubeconfig(t, s.Config), "kubetest")
	if err != nil {
		t.Fatal(err)
	}
	cs, counter := countingClient(t, cfg)
	a := &Applier{Client: cs, Cluster: "shopfloor"}
	v1 := compileProfile(t, "testdata/profile.yaml")

	var missing *MissingNamespacesError
	if _, err := a.Plan(ctx, v1.Policies); !errors.As(err, &missing) || strings.Join(missing.Namespaces, ",") != "message-streaming-services,quiet,shop" {
		t.Fatalf("plan before the namespaces exist: %v", err)
	}
	for _, ns := range []string{"shop", "message-streaming-services", "quiet", "infrastructure"} {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Policies castellan must never prune: someone else's, and castellan's of another cluster.
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(80)
	foreign := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "team-allow-monitoring", Namespace: "shop", Labels: map[string]string{"team": "shop"}},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}}}},
		},
	}
	otherCluster := foreign.DeepCopy()
	otherCluster.Name = "other-cluster-policy"
	otherCluster.Labels = baseLabels("another-cluster")
	for _, np := range []*networkingv1.NetworkPolicy{foreign, otherCluster} {
		if _, err := admin.NetworkingV1().NetworkPolicies("shop").Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// First apply: every object is created, openings before default-deny.
	p1, err := a.Plan(ctx, v1.Policies)
	if err != nil {
		t.Fatal(err)
	}
	if len(p1.Changes) != len(v1.Policies) || len(p1.Unchanged) != 0 {
		t.Fatalf("first plan:\n%s", actions(p1))
	}
	lastOpening, firstDeny := -1, len(p1.Changes)
	for i, c := range p1.Changes {
		if c.Action != Create || !strings.Contains(c.Diff, "+kind: NetworkPolicy") {
			t.Errorf("first plan: %s with diff\n%s", c, c.Diff)
		}
		if c.Name == DefaultDenyName {
			firstDeny = min(firstDeny, i)
		} else {
			lastOpening = i
		}
	}
	if lastOpening > firstDeny {
		t.Errorf("a default-deny comes before an opening:\n%s", actions(p1))
	}
	if done, err := a.Apply(ctx, p1); err != nil || len(done) != len(p1.Changes) {
		t.Fatalf("apply: %d of %d done: %v", len(done), len(p1.Changes), err)
	}
	assertLive(t, admin, v1.Policies)
	live := castellanPolicies(t, admin, "shopfloor")
	if mf := live["shop/web.egress.dns"].ManagedFields; len(mf) != 1 || mf[0].Manager != FieldManager || mf[0].Operation != metav1.ManagedFieldsOperationApply {
		t.Errorf("managed fields of web.egress.dns: %+v", mf)
	}

	// Rerun: nothing to do, and nothing is sent but two lists.
	counter.reset()
	p2, err := a.Plan(ctx, v1.Policies)
	if err != nil {
		t.Fatal(err)
	}
	if !p2.Empty() || len(p2.Unchanged) != len(v1.Policies) {
		t.Fatalf("rerun plan is not empty:\n%s", actions(p2))
	}
	if _, err := a.Apply(ctx, p2); err != nil {
		t.Fatal(err)
	}
	if w, r := counter.writes(), counter.reads(); w != 0 || r != 2 {
		t.Errorf("rerun sent %d writes and %d reads; want 0 and 2 (namespaces, policies)", w, r)
	}

	// Drift: someone edits a policy (another manager); the plan shows it and apply repairs it.
	edited := live["shop/web.ingress.metrics"]
	edited.Spec.Ingress[0].Ports[0].Port = ptrTo(intstr.FromInt32(9999))
	edited.Labels["team"] = "shop"
	if _, err := admin.NetworkingV1().NetworkPolicies("shop").Update(ctx, &edited, metav1.UpdateOptions{FieldManager: "kubectl-edit"}); err != nil {
		t.Fatal(err)
	}
	p3, err := a.Plan(ctx, v1.Policies)
	if err != nil {
		t.Fatal(err)
	}
	if len(p3.Changes) != 1 || p3.Changes[0].String() != "update shop/web.ingress.metrics" ||
		!strings.Contains(p3.Changes[0].Diff, "-    - port: 9999\n+    - port: 8081") || strings.Contains(p3.Changes[0].Diff, "team") {
		t.Fatalf("drift plan:\n%s\n%s", actions(p3), p3.Changes[0].Diff)
	}
	if _, err := a.Apply(ctx, p3); err != nil {
		t.Fatal(err)
	}
	assertLive(t, admin, v1.Policies)
	repaired, err := admin.NetworkingV1().NetworkPolicies("shop").Get(ctx, "web.ingress.metrics", metav1.GetOptions{})
	if err != nil || repaired.Labels["team"] != "shop" {
		t.Errorf("the other manager's label did not survive the repair: %v %v", repaired.Labels, err)
	}

	// A changed profile: updates, and prunes what it no longer declares.
	v2 := compileProfile(t, "testdata/profile-v2.yaml")
	p4, err := a.Plan(ctx, v2.Policies)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"update shop/web.ingress.ingress-nginx",
		"delete message-streaming-services/castellan-default-deny",
		"delete message-streaming-services/kafka.ingress.web",
		"delete quiet/castellan-default-deny",
		"delete shop/web.ingress.metrics",
	}, "\n")
	if got := actions(p4); got != want {
		t.Fatalf("plan of the changed profile:\n%s\nwant:\n%s", got, want)
	}
	if _, err := a.Apply(ctx, p4); err != nil {
		t.Fatal(err)
	}
	assertLive(t, admin, v2.Policies)
	for _, name := range []string{foreign.Name, otherCluster.Name} {
		if _, err := admin.NetworkingV1().NetworkPolicies("shop").Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("prune touched %s: %v", name, err)
		}
	}

	// Rollback: an earlier run's rendered objects, applied again.
	var rendered bytes.Buffer
	if err := Render(&rendered, v1.Policies); err != nil {
		t.Fatal(err)
	}
	earlier, err := Decode(&rendered)
	if err != nil {
		t.Fatal(err)
	}
	p5, err := a.Plan(ctx, earlier)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Apply(ctx, p5); err != nil {
		t.Fatal(err)
	}
	assertLive(t, admin, v1.Policies)
	counter.reset()
	if p6, err := a.Plan(ctx, v1.Policies); err != nil || !p6.Empty() {
		t.Errorf("after rollback the profile of run 1 plans changes: %v\n%s", err, actions(p6))
	}
	if counter.writes() != 0 {
		t.Errorf("planning sent %d writes", counter.writes())
	}

	// A delete planned against an object that changed since is refused
	// (preconditions), not applied to the new object.
	p7, err := a.Plan(ctx, v2.Policies)
	if err != nil {
		t.Fatal(err)
	}
	var del *Change
	for i := range p7.Changes {
		if p7.Changes[i].Action == Delete {
			del = &p7.Changes[i]
			break
		}
	}
	if del == nil {
		t.Fatalf("no delete planned:\n%s", actions(p7))
	}
	touched, err := admin.NetworkingV1().NetworkPolicies(del.Namespace).Get(ctx, del.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	touched.Annotations = map[string]string{"touched": "yes"}
	if _, err := admin.NetworkingV1().NetworkPolicies(del.Namespace).Update(ctx, touched, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = a.Apply(ctx, &Plan{Changes: []Change{*del}})
	if !apierrors.IsConflict(err) {
		t.Errorf("stale delete: %v; want a conflict", err)
	}
}

// TestAPIServerRefusesBadObjects: the API server is the judge of
// well-formedness, so a malformed object must fail there (this proves the
// tier validates, and what the apply error looks like).
func TestAPIServerRefusesBadObjects(t *testing.T) {
	s := kubetest.Start(t)
	cs := s.Clientset(t)
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	a := &Applier{Client: cs, Cluster: "c"}
	c, err := Compile(Input{Cluster: "c", ServiceCIDR: profile.DefaultServiceCIDR, Workloads: []profile.SourcedWorkload{{Workload: profile.Workload{
		Name: "web", Namespace: "shop",
		Ingress: map[string]profile.Opening{"x": {IPBlock: "192.0.2.0/24", Ports: map[int]string{80: "TCP"}}},
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	c.Policies[1].Spec.Ingress[0].From[0].IPBlock.CIDR = "192.0.2.0/33"
	p, err := a.Plan(ctx, c.Policies)
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Apply(ctx, p)
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "web.ingress.x") {
		t.Errorf("a malformed CIDR was not refused by the API server: %v", err)
	}
}

func ptrTo[T any](v T) *T { return &v }
