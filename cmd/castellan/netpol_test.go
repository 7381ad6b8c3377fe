package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"castellan/installer/kube/kubetest"
	"castellan/phases/netpol"
)

// netpolProfile writes a profile whose workload web holds the block
// verbatim, and returns its path. The SSH key and known_hosts it names do
// not exist: the netpol commands work from the profile alone.
func netpolProfile(t *testing.T, extra string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	body := `apiVersion: castellan/v1alpha1
kind: Cluster
metadata: {name: c}
spec:
  ssh: {user: admin, keyFile: id, knownHosts: known_hosts}
  nodes: [{name: s1, address: 192.0.2.1, role: server}]
  netpol:
    workloadFiles: [web.yaml]
` + extra
	web := `name: web
namespace: shop
podSelector: {app: web}
ingress:
  ingress-nginx:
    namespaceSelector: {kubernetes.io/metadata.name: kube-system}
    podSelector: {app.kubernetes.io/instance: rke2-ingress-nginx}
    ports: {8080: TCP}
  metrics:
    namespaceSelector: {kubernetes.io/metadata.name: infrastructure}
    ports: {8081: TCP}
egress:
  dns:
    ipBlock: 10.43.0.10/32
    ports: {53: UDP}
  kafka:
    namespaceSelector: {kubernetes.io/metadata.name: message-streaming-services}
    podSelector: {strimzi.io/cluster: test2, strimzi.io/kind: Kafka}
    ports: {9093: TCP}
`
	for name, data := range map[string]string{p: body, filepath.Join(dir, "web.yaml"): web} {
		if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func TestNetpolExplain(t *testing.T) {
	p := netpolProfile(t, "")
	code, out, errOut := runCLI(t, "", "netpol", "explain", "-f", p, "web")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"Who may reach web (pods labelled app=web in namespace shop): pods labelled app.kubernetes.io/instance=rke2-ingress-nginx",
		"the cluster DNS (pods labelled k8s-app=kube-dns in namespace kube-system), on UDP 53 and TCP 53 (opening dns)",
		"ipBlock 10.43.0.10/32 is the cluster DNS service's IP",
		"DIRECTION", "web.egress.kafka",
	} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("explain does not say %q:\n%s", want, out)
		}
	}
	code, out, _ = runCLI(t, "", "netpol", "explain", "-f", p, "--json")
	var e netpol.Explanation
	if code != 0 || json.Unmarshal([]byte(out), &e) != nil || len(e.Workloads) != 1 || len(e.Workloads[0].Egress) != 2 {
		t.Errorf("--json: exit %d, %s", code, out)
	}
	if code, _, errOut := runCLI(t, "", "netpol", "explain", "-f", p, "nope"); code != 2 || !strings.Contains(errOut, `no workload "nope"; the profile declares: shop/web`) {
		t.Errorf("unknown workload: exit %d, %s", code, errOut)
	}
}

func TestNetpolRender(t *testing.T) {
	p := netpolProfile(t, "")
	code, out, errOut := runCLI(t, "", "netpol", "render", "-f", p)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	ps, err := netpol.Decode(strings.NewReader(out))
	if err != nil || len(ps) != 5 {
		t.Fatalf("render output does not decode to 5 policies: %v\n%s", err, out)
	}
}

func TestNetpolBadInput(t *testing.T) {
	p := netpolProfile(t, "")
	if err := os.WriteFile(filepath.Join(filepath.Dir(p), "web.yaml"), []byte("name: web\nnamespace: shop\negress:\n  api: {ipBlock: 10.43.1.1/32, ports: {443: TCP}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCLI(t, "", "netpol", "render", "-f", p)
	if code != 2 || !strings.Contains(errOut, "web.yaml:4:9: egress.api.ipBlock: 10.43.1.1/32 lies inside the service network") {
		t.Errorf("exit %d: %s", code, errOut)
	}
	code, _, errOut = runCLI(t, "", "netpol", "plan", "-f", netpolProfile(t, ""))
	if code != 2 || !strings.Contains(errOut, "set spec.cluster.kubeconfig") {
		t.Errorf("plan without cluster access: exit %d, %s", code, errOut)
	}
}

// TestNetpolPlan plans against a real kube-apiserver through the profile's
// spec.cluster.kubeconfig: every object is to be created, and nothing is written.
func TestNetpolPlan(t *testing.T) {
	s := kubetest.Start(t)
	cs := s.Clientset(t)
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := netpolProfile(t, "  cluster: {kubeconfig: "+s.Kubeconfig(t, s.Config)+", context: kubetest}\n")
	code, out, errOut := runCLI(t, "", "netpol", "plan", "-f", p)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "create shop/web.egress.dns\n--- live shop/web.egress.dns\n+++ declared shop/web.egress.dns") || !strings.Contains(out, "5 to create, 0 to update, 0 to delete, 0 unchanged") {
		t.Errorf("plan:\n%s", out)
	}
	list, err := cs.NetworkingV1().NetworkPolicies("").List(context.Background(), metav1.ListOptions{})
	if err != nil || len(list.Items) != 0 {
		t.Errorf("plan wrote policies: %v %v", len(list.Items), err)
	}
}
