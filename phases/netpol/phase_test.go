package netpol

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"castellan/installer/engine"
	"castellan/installer/engine/enginetest"
	"castellan/installer/kube/kubetest"
	"castellan/installer/profile"
)

// copyProfile copies testdata's profile (name) and workload files into a
// temporary directory, adds spec.cluster for kubeconfig, and loads it as
// the offline commands do.
func copyProfile(t *testing.T, name, kubeconfig string) *profile.Profile {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	data = append(data, []byte("  cluster: {kubeconfig: "+kubeconfig+"}\n")...)
	if err := os.WriteFile(filepath.Join(dir, "profile.yaml"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "workloads"), 0o755); err != nil {
		t.Fatal(err)
	}
	orders, err := os.ReadFile("testdata/workloads/orders.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "workloads", "orders.yaml"), orders, 0o600); err != nil {
		t.Fatal(err)
	}
	return loadProfile(t, filepath.Join(dir, "profile.yaml"))
}

// runPhase plans and applies the phase through the engine, as a run does.
func runPhase(t *testing.T, p *profile.Profile) (engine.Plan, engine.Result, *engine.Session) {
	t.Helper()
	s := engine.NewSession(engine.SessionConfig{ID: "t", Profile: p, Nodes: p.Spec.Nodes, Access: enginetest.NewFakeNodes(), Store: enginetest.NewMemStore()})
	e := &engine.Engine{Phases: []engine.Phase{Phase{}}}
	plans, err := e.PlanAll(context.Background(), s, e.Phases)
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	return plans[0], e.Apply(context.Background(), s, e.Phases, plans), s
}

// TestPhaseThroughEngine: the engine plans the phase (one change per object,
// the diff as detail, the DNS fix as a note), applies it, renders the
// objects for the state repo, and plans nothing the second time.
func TestPhaseThroughEngine(t *testing.T) {
	srv := kubetest.Start(t)
	admin := srv.Clientset(t)
	for _, ns := range []string{"shop", "message-streaming-services", "quiet"} {
		if _, err := admin.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	kubeconfig := srv.Kubeconfig(t, srv.Config)
	p := copyProfile(t, "profile.yaml", kubeconfig)
	c, err := Compile(InputFrom(p))
	if err != nil {
		t.Fatal(err)
	}

	plan, res, s := runPhase(t, p)
	if len(plan.Changes) != len(c.Policies) || plan.Changes[0].Node != "" || plan.Changes[0].Action != "create" || !strings.Contains(plan.Changes[0].Detail, "+kind: NetworkPolicy") {
		t.Fatalf("first plan: %d changes for %d policies: %+v", len(plan.Changes), len(c.Policies), plan.Changes[0])
	}
	if len(plan.Notes) != 2 || !strings.Contains(plan.Notes[0], "cluster DNS") {
		t.Errorf("notes: %q", plan.Notes)
	}
	if res.Outcome != engine.OutcomeOK {
		t.Fatalf("apply: %s %s", res.Outcome, res.Error)
	}
	assertLive(t, admin, c.Policies)
	rendered, ok := s.Rendered()["cluster/netpol/"+RenderedFile]
	if !ok {
		t.Fatalf("nothing rendered: %v", s.RenderedPaths())
	}
	back, err := Decode(bytes.NewReader(rendered))
	if err != nil || len(back) != len(c.Policies) {
		t.Fatalf("rendered file: %d policies, %v", len(back), err)
	}

	again, res, _ := runPhase(t, p)
	if !again.Empty() || res.Outcome != engine.OutcomeUnchanged {
		t.Errorf("rerun: %d changes, outcome %s", len(again.Changes), res.Outcome)
	}

	// A changed profile prunes through the engine too.
	v2 := copyProfile(t, "profile-v2.yaml", kubeconfig)
	plan, res, _ = runPhase(t, v2)
	var deletes int
	for _, ch := range plan.Changes {
		if ch.Action == "delete" {
			deletes++
		}
	}
	if deletes != 4 || res.Outcome != engine.OutcomeOK {
		t.Errorf("changed profile: %d deletes, outcome %s %s", deletes, res.Outcome, res.Error)
	}
	c2, _ := Compile(InputFrom(v2))
	assertLive(t, admin, c2.Policies)
}

func TestPhaseWithoutClusterAccess(t *testing.T) {
	p := loadProfile(t, "testdata/profile.yaml")
	_, err := Phase{}.Plan(context.Background(), engine.NewSession(engine.SessionConfig{Profile: p}).View(Name))
	if err == nil || !strings.Contains(err.Error(), "spec.cluster.kubeconfig") {
		t.Errorf("openings without cluster access: %v", err)
	}
	empty, err := profile.Parse("empty.yaml", []byte("apiVersion: castellan/v1alpha1\nkind: Cluster\nmetadata: {name: c}\nspec:\n  ssh: {user: admin, keyFile: k, knownHosts: kh}\n  nodes: [{name: s1, address: 192.0.2.1, role: server}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := Phase{}.Plan(context.Background(), engine.NewSession(engine.SessionConfig{Profile: empty}).View(Name))
	if err != nil || !plan.Empty() || len(plan.Notes) != 1 {
		t.Errorf("nothing declared, no access: %v %+v", err, plan)
	}
}
