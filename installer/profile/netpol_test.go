package profile

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeIn writes body to name in dir and returns its path.
func writeIn(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// issueBlock is the block of openings of issue 20, verbatim.
const issueBlock = `ingress:
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

func TestWorkloadFiles(t *testing.T) {
	path := writeProfile(t, validProfile+`  netpol:
    workloads:
      - name: inline
        namespace: apps
        ingress:
          web: {podSelector: {app: web}, ports: {80: TCP}}
    workloadFiles: [netpol/*.yaml, extra.yaml]
    namespaces: [quiet]
`)
	dir := filepath.Dir(path)
	writeIn(t, dir, "netpol/b-orders.yaml", "name: orders\nnamespace: shop\npodSelector: {app: orders}\n"+issueBlock)
	writeIn(t, dir, "netpol/a-billing.yaml", "name: billing\nnamespace: shop\n"+issueBlock)
	writeIn(t, dir, "extra.yaml", "name: extra\nnamespace: other\negress:\n  out: {ipBlock: 192.0.2.0/24, ports: {443: TCP}}\n")
	p, err := Load(path, ValidateOptions{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	ws := p.Workloads()
	var got []string
	for _, w := range ws {
		got = append(got, w.Namespace+"/"+w.Name+"@"+filepath.Base(w.File)+":"+w.Field)
	}
	want := []string{"apps/inline@cluster.yaml:spec.netpol.workloads[0]", "shop/billing@a-billing.yaml:", "shop/orders@b-orders.yaml:", "other/extra@extra.yaml:"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("workloads\n got %v\nwant %v", got, want)
	}
	orders := ws[2]
	if orders.PodSelector["app"] != "orders" || orders.Egress["kafka"].PodSelector["strimzi.io/kind"] != "Kafka" || orders.Egress["dns"].Ports[53] != "UDP" {
		t.Errorf("orders decoded wrongly: %+v", orders.Workload)
	}
	if orders.Pos != (Pos{1, 1}) || ws[0].Pos.Line != 19 {
		t.Errorf("positions: orders %v, inline %v", orders.Pos, ws[0].Pos)
	}

	// Offline commands skip file checks, then read the workload files alone.
	q, err := Load(path, ValidateOptions{SkipFileChecks: true})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(q.Workloads()); n != 1 {
		t.Fatalf("with SkipFileChecks, %d workloads; want the inline one only", n)
	}
	if err := q.ReadWorkloadFiles(context.Background()); err != nil || len(q.Workloads()) != 4 {
		t.Fatalf("ReadWorkloadFiles: %v, %d workloads", err, len(q.Workloads()))
	}
}

// TestWorkloadFileErrors pins errors inside workload files: they name the
// workload file's line and column, not the profile's.
func TestWorkloadFileErrors(t *testing.T) {
	tests := []struct {
		name, file, want string
	}{
		{
			name: "unknown field",
			file: "name: web\nnamespace: shop\ningres: {}\n",
			want: `web.yaml:3:1: unknown field "ingres"; expected one of: name, namespace, podSelector, ingress, egress`,
		},
		{
			name: "bad port type",
			file: "name: web\nnamespace: shop\n" + strings.Replace(issueBlock, "8081: TCP", "http: TCP", 1),
			want: `web.yaml:10:13: ingress.metrics.ports.http: expected a whole number as key, got the text "http"`,
		},
		{
			name: "service IP trap",
			file: "name: web\nnamespace: shop\negress:\n  api:\n    ipBlock: 10.43.12.7/32\n    ports: {443: TCP}\n",
			want: `web.yaml:5:5: egress.api.ipBlock: 10.43.12.7/32 lies inside the service network 10.43.0.0/16 (spec.rke2.serviceCIDR) and would match nothing under Calico: policy sees the pod the service IP was translated to (DNAT by kube-proxy), never the service IP; select the service's pods instead: namespaceSelector {kubernetes.io/metadata.name: NAMESPACE} and podSelector {the pods' labels}`,
		},
		{
			name: "missing namespace",
			file: "name: web\n" + issueBlock,
			want: `web.yaml:1:1: namespace: expected a namespace name, got ""`,
		},
		{
			name: "two workloads in one file",
			file: "name: web\nnamespace: shop\n---\nname: api\nnamespace: shop\n",
			want: `web.yaml:3:1: workload file holds more than one YAML document; keep one workload per file`,
		},
		{
			name: "a list instead of a workload",
			file: "- name: web\n",
			want: `web.yaml:1:1: expected a mapping, got a list`,
		},
		{
			name: "declared in the profile too",
			file: "name: inline\nnamespace: apps\n",
			want: `web.yaml:1:1: name: workload apps/inline is declared twice (first at {dir}/cluster.yaml:19:9)`,
		},
		{
			name: "empty",
			file: "",
			want: `web.yaml:1:1: workload file is empty; it needs name, namespace and the openings (ingress, egress)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeProfile(t, validProfile+"  netpol:\n    workloads:\n      - name: inline\n        namespace: apps\n    workloadFiles: [web.yaml]\n")
			dir := filepath.Dir(path)
			wf := writeIn(t, dir, "web.yaml", tt.file)
			_, err := Load(path, ValidateOptions{})
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Load: %v; want Errors", err)
			}
			got := strings.ReplaceAll(strings.Replace(errs[0].Error(), wf, "web.yaml", 1), dir, "{dir}")
			if got != tt.want {
				t.Errorf("first error\n got: %s\nwant: %s\n all: %v", got, tt.want, err)
			}
		})
	}
}

func TestNetpolProfileErrors(t *testing.T) {
	netpol := func(s string) string { return validProfile + "  netpol:\n" + s }
	tests := []struct {
		name, body, want string
	}{
		{
			name: "pattern matching nothing",
			body: netpol("    workloadFiles: [netpol/*.yaml]\n"),
			want: `cluster.yaml:18:21: spec.netpol.workloadFiles[0]: {dir}/netpol/*.yaml matches no file`,
		},
		{
			name: "service IP for ingress",
			body: netpol("    workloads:\n      - name: api\n        namespace: apps\n        ingress:\n          lb:\n            ipBlock: 10.43.0.0/16\n            ports: {80: TCP}\n"),
			want: `cluster.yaml:23:13: spec.netpol.workloads[0].ingress.lb.ipBlock: 10.43.0.0/16 lies inside the service network 10.43.0.0/16 (spec.rke2.serviceCIDR) and would match nothing under Calico: traffic never comes from a service IP; select the service's pods instead: namespaceSelector {kubernetes.io/metadata.name: NAMESPACE} and podSelector {the pods' labels}`,
		},
		{
			name: "DNS service IP on another port",
			body: netpol("    workloads:\n      - name: api\n        namespace: apps\n        egress:\n          dns-metrics:\n            ipBlock: 10.43.0.10/32\n            ports: {9153: TCP}\n"),
			want: `cluster.yaml:23:13: spec.netpol.workloads[0].egress.dns-metrics.ipBlock: 10.43.0.10/32 lies inside the service network 10.43.0.0/16 (spec.rke2.serviceCIDR) and would match nothing under Calico: policy sees the pod the service IP was translated to (DNAT by kube-proxy), never the service IP; 10.43.0.10 is the cluster DNS service: as an egress opening on port 53 only (UDP or TCP) castellan compiles it to the DNS pods; for other ports select the service's pods instead: namespaceSelector {kubernetes.io/metadata.name: NAMESPACE} and podSelector {the pods' labels}`,
		},
		{
			name: "DNS IP follows the service network",
			body: strings.Replace(validProfile, "spec:\n", "spec:\n  rke2: {serviceCIDR: 10.96.0.0/16}\n", 1) + "  netpol:\n    workloads:\n      - name: api\n        namespace: apps\n        egress:\n          dns: {ipBlock: 10.43.0.10/32, ports: {53: UDP}}\n          dns2: {ipBlock: 10.96.0.10/32, ports: {9153: TCP}}\n",
			want: `cluster.yaml:24:18: spec.netpol.workloads[0].egress.dns2.ipBlock: 10.96.0.10/32 lies inside the service network 10.96.0.0/16 (spec.rke2.serviceCIDR) and would match nothing under Calico: policy sees the pod the service IP was translated to (DNAT by kube-proxy), never the service IP; 10.96.0.10 is the cluster DNS service: as an egress opening on port 53 only (UDP or TCP) castellan compiles it to the DNS pods; for other ports select the service's pods instead: namespaceSelector {kubernetes.io/metadata.name: NAMESPACE} and podSelector {the pods' labels}`,
		},
		{
			name: "kube-system",
			body: netpol("    namespaces: [apps, kube-system]\n"),
			want: `cluster.yaml:18:24: spec.netpol.namespaces[1]: kube-system holds the cluster's own components, whose traffic a profile does not declare: castellan does not put it under default-deny`,
		},
		{
			name: "namespace twice",
			body: netpol("    namespaces: [apps, apps]\n"),
			want: `cluster.yaml:18:24: spec.netpol.namespaces[1]: namespace apps is already listed as spec.netpol.namespaces[0]`,
		},
		{
			name: "unreadable kubeconfig",
			body: validProfile + "  cluster:\n    kubeconfig: missing.kubeconfig\n",
			want: `cluster.yaml:18:5: spec.cluster.kubeconfig: cannot read kubeconfig {dir}/missing.kubeconfig: no such file or directory`,
		},
		{
			name: "a key file is no kubeconfig",
			body: validProfile + "  cluster:\n    kubeconfig: id_test\n",
			want: `cluster.yaml:18:5: spec.cluster.kubeconfig: {dir}/id_test is not a kubeconfig (a YAML file with clusters, users and contexts, such as RKE2 writes to /etc/rancher/rke2/rke2.yaml)`,
		},
		{
			name: "context without kubeconfig",
			body: validProfile + "  cluster:\n    context: admin@prod\n",
			want: `cluster.yaml:18:5: spec.cluster.context: a context needs the kubeconfig it is in: set spec.cluster.kubeconfig`,
		},
	}
	t.Setenv("SSH_AUTH_SOCK", "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeProfile(t, tt.body)
			_, err := Load(path, ValidateOptions{})
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Load: %v; want Errors", err)
			}
			got := strings.ReplaceAll(strings.Replace(errs[0].Error(), path, "cluster.yaml", 1), filepath.Dir(path), "{dir}")
			if got != tt.want {
				t.Errorf("first error\n got: %s\nwant: %s\n all: %v", got, tt.want, err)
			}
		})
	}
}

func TestIssueBlockIsValid(t *testing.T) {
	body := validProfile + "  netpol:\n    workloads:\n      - name: web\n        namespace: shop\n" + indent(issueBlock, "        ")
	path := writeProfile(t, body)
	writeIn(t, filepath.Dir(path), "admin.kubeconfig", "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: https://127.0.0.1:6443}}]\nusers: [{name: u, user: {}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n")
	body += "  cluster:\n    kubeconfig: admin.kubeconfig\n"
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Load(path, ValidateOptions{})
	if err != nil {
		t.Fatalf("the issue's block (with the DNS service IP) must load: %v", err)
	}
	if !IsClusterDNSOpening(p.Spec.NetPol.Workloads[0].Egress["dns"], p.Spec.RKE2.ServiceCIDR) {
		t.Error("the dns opening is not recognised as the cluster DNS opening")
	}
	if p.Spec.Cluster.Kubeconfig != "admin.kubeconfig" {
		t.Errorf("kubeconfig = %q", p.Spec.Cluster.Kubeconfig)
	}
}

func indent(s, by string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = by + l
		}
	}
	return strings.Join(lines, "")
}

func TestClusterDNS(t *testing.T) {
	for cidr, want := range map[string]string{
		"10.43.0.0/16":  "10.43.0.10",
		"10.96.0.0/12":  "10.96.0.10",
		"10.43.7.9/16":  "10.43.0.10", // host bits are masked, as the apiserver does
		"fd00:43::/112": "fd00:43::a",
		"10.43.0.0/29":  "", // 8 addresses: there is no tenth
		"nonsense":      "",
	} {
		got, ok := ClusterDNS(cidr)
		if want == "" {
			if ok {
				t.Errorf("ClusterDNS(%s) = %v; want none", cidr, got)
			}
			continue
		}
		if !ok || got != netip.MustParseAddr(want) {
			t.Errorf("ClusterDNS(%s) = %v, %v; want %s", cidr, got, ok, want)
		}
	}
}

func TestIsClusterDNSOpening(t *testing.T) {
	for _, tt := range []struct {
		o    Opening
		want bool
	}{
		{Opening{IPBlock: "10.43.0.10/32", Ports: map[int]string{53: "UDP"}}, true},
		{Opening{IPBlock: "10.43.0.10/32", Ports: map[int]string{53: "TCP"}}, true},
		{Opening{IPBlock: "10.43.0.10/32", Ports: map[int]string{53: "SCTP"}}, false},
		{Opening{IPBlock: "10.43.0.10/32", Ports: map[int]string{53: "UDP", 9153: "TCP"}}, false},
		{Opening{IPBlock: "10.43.0.0/24", Ports: map[int]string{53: "UDP"}}, false},
		{Opening{IPBlock: "10.43.0.11/32", Ports: map[int]string{53: "UDP"}}, false},
		{Opening{IPBlock: "10.43.0.10/32"}, false},
	} {
		if got := IsClusterDNSOpening(tt.o, DefaultServiceCIDR); got != tt.want {
			t.Errorf("IsClusterDNSOpening(%+v) = %v", tt.o, got)
		}
	}
}
