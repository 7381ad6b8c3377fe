package netpol

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Action is what a Change does to one object.
type Action string

// Actions.
const (
	Create Action = "create"
	Update Action = "update"
	Delete Action = "delete"
)

// Change is one object to write.
type Change struct {
	Action    Action
	Namespace string
	Name      string
	// Diff is a unified diff of the object's YAML, live to declared (only what castellan declares).
	Diff string
	// Desired is the object to apply (nil for Delete).
	Desired *networkingv1.NetworkPolicy
	// Live is the object found in the cluster (nil for Create).
	Live *networkingv1.NetworkPolicy
}

// String is "create ns/name".
func (c Change) String() string { return fmt.Sprintf("%s %s/%s", c.Action, c.Namespace, c.Name) }

// Plan is what Apply would write, computed against the live objects.
type Plan struct {
	// Changes in the order Apply makes them: openings first, then the
	// default-deny policies (so declared traffic is allowed before the rest is
	// denied), then the deletions of policies the profile no longer declares.
	Changes []Change
	// Unchanged are the declared objects already live as declared ("ns/name").
	Unchanged []string
}

// Empty reports a plan with nothing to write.
func (p *Plan) Empty() bool { return len(p.Changes) == 0 }

// MissingNamespacesError is returned by Plan when declared policies live in
// namespaces the cluster does not have: castellan does not create
// namespaces (whoever deploys the workload does), and a policy cannot exist
// before its namespace.
type MissingNamespacesError struct{ Namespaces []string }

func (e *MissingNamespacesError) Error() string {
	return fmt.Sprintf("namespace %s does not exist in the cluster: create it before its policies (castellan does not create namespaces), or remove its workloads from the profile", strings.Join(e.Namespaces, ", "))
}

// Applier plans and applies compiled policies on one cluster.
type Applier struct {
	// Client talks to the cluster's API server.
	Client kubernetes.Interface
	// Cluster is the cluster's name (metadata.name): only policies labelled
	// for it (and made by castellan's netpol phase) are ever pruned.
	Cluster string
	// Logger receives one line per write (nil: none).
	Logger *slog.Logger
}

// PruneSelector selects the policies castellan's netpol phase made for cluster.
func PruneSelector(cluster string) labels.Selector {
	return labels.SelectorFromSet(labels.Set{LabelManagedBy: ManagedBy, LabelPhase: Name, LabelCluster: cluster})
}

// Plan compares desired (Compile's policies, or Decode's of an earlier run)
// with the live objects and returns the changes: a declared object that is
// missing is created, one that differs in what castellan declares (spec,
// castellan's labels and annotations; not managedFields, resourceVersion or
// other managers' labels) is updated, and a live policy carrying castellan's
// labels for this cluster that is not declared is deleted. It only reads: a
// list of namespaces and one of NetworkPolicies.
//
// Errors: desired objects without castellan's labels for a.Cluster, a
// *MissingNamespacesError, or the API server's error.
func (a *Applier) Plan(ctx context.Context, desired []networkingv1.NetworkPolicy) (*Plan, error) {
	want := map[string]*networkingv1.NetworkPolicy{}
	namespaces := map[string]bool{}
	sel := PruneSelector(a.Cluster)
	for i := range desired {
		np := &desired[i]
		if !sel.Matches(labels.Set(np.Labels)) {
			return nil, fmt.Errorf("NetworkPolicy %s/%s does not carry castellan's labels for cluster %q: %s", np.Namespace, np.Name, a.Cluster, sel)
		}
		key := np.Namespace + "/" + np.Name
		if want[key] != nil {
			return nil, fmt.Errorf("NetworkPolicy %s is declared twice", key)
		}
		want[key] = np
		namespaces[np.Namespace] = true
	}
	nsList, err := a.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	for _, ns := range nsList.Items {
		delete(namespaces, ns.Name)
	}
	if len(namespaces) > 0 {
		missing := make([]string, 0, len(namespaces))
		for ns := range namespaces {
			missing = append(missing, ns)
		}
		slices.Sort(missing)
		return nil, &MissingNamespacesError{Namespaces: missing}
	}
	live, err := a.Client.NetworkingV1().NetworkPolicies(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing NetworkPolicies: %w", err)
	}
	liveByKey := map[string]*networkingv1.NetworkPolicy{}
	for i := range live.Items {
		np := &live.Items[i]
		liveByKey[np.Namespace+"/"+np.Name] = np
	}
	p := &Plan{}
	var openings, denies, deletes []Change
	for i := range desired {
		d := &desired[i]
		key := d.Namespace + "/" + d.Name
		l := liveByKey[key]
		diff, err := Diff(l, d)
		if err != nil {
			return nil, err
		}
		if diff == "" {
			p.Unchanged = append(p.Unchanged, key)
			continue
		}
		c := Change{Action: Update, Namespace: d.Namespace, Name: d.Name, Diff: diff, Desired: d, Live: l}
		if l == nil {
			c.Action = Create
		}
		if d.Name == DefaultDenyName {
			denies = append(denies, c)
		} else {
			openings = append(openings, c)
		}
	}
	for i := range live.Items {
		l := &live.Items[i]
		key := l.Namespace + "/" + l.Name
		if want[key] != nil || !sel.Matches(labels.Set(l.Labels)) {
			continue
		}
		diff, err := Diff(l, nil)
		if err != nil {
			return nil, err
		}
		deletes = append(deletes, Change{Action: Delete, Namespace: l.Namespace, Name: l.Name, Diff: diff, Live: l})
	}
	byKey := func(a, b Change) int { return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) }
	slices.SortFunc(openings, byKey)
	slices.SortFunc(denies, byKey)
	slices.SortFunc(deletes, byKey)
	p.Changes = slices.Concat(openings, denies, deletes)
	slices.Sort(p.Unchanged)
	return p, nil
}

// Apply makes the plan's changes in order: server-side apply (field manager
// "castellan", forcing ownership of conflicting fields, since the profile is
// the source of truth) for creates and updates, and deletes preconditioned
// on the live object's UID and resourceVersion, so an object changed or
// recreated since the plan is not deleted (the next run plans again). It
// stops at the first failure and returns the changes made until then; a
// rerun continues from the live state. An empty plan sends nothing.
func (a *Applier) Apply(ctx context.Context, p *Plan) ([]Change, error) {
	var done []Change
	force := true
	for _, c := range p.Changes {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		policies := a.Client.NetworkingV1().NetworkPolicies(c.Namespace)
		switch c.Action {
		case Create, Update:
			body, err := applyBody(c.Desired)
			if err != nil {
				return done, err
			}
			if _, err := policies.Patch(ctx, c.Name, types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: FieldManager, Force: &force}); err != nil {
				return done, fmt.Errorf("%s: %w", c, err)
			}
		case Delete:
			uid, rv := c.Live.UID, c.Live.ResourceVersion
			err := policies.Delete(ctx, c.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
			if err != nil {
				return done, fmt.Errorf("%s: %w", c, err)
			}
		default:
			return done, fmt.Errorf("%s: unknown action", c)
		}
		if a.Logger != nil {
			a.Logger.Info("NetworkPolicy written", "action", string(c.Action), "namespace", c.Namespace, "name", c.Name)
		}
		done = append(done, c)
	}
	return done, nil
}
