package netpol

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestExplainGolden(t *testing.T) {
	c := compileProfile(t, "testdata/profile.yaml")
	e, err := c.Explain()
	if err != nil {
		t.Fatal(err)
	}
	var text, js bytes.Buffer
	if err := e.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	golden(t, "explain.txt", text.Bytes())
	golden(t, "explain.json", js.Bytes())

	var back Explanation
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Workloads) != 3 {
		t.Fatalf("JSON does not read back: %v, %d workloads", err, len(back.Workloads))
	}
}

// TestExplainWeb states plainly who may reach the workload and what
// it may reach, including the DNS fix (the acceptance).
func TestExplainWeb(t *testing.T) {
	c := compileProfile(t, "testdata/profile.yaml")
	e, err := c.Explain("web")
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Workloads) != 1 {
		t.Fatalf("%d workloads explained", len(e.Workloads))
	}
	w := e.Workloads[0]
	for _, want := range []string{
		"Who may reach web (pods labelled app=web in namespace shop): pods labelled app.kubernetes.io/instance=rke2-ingress-nginx in namespace kube-system, on TCP 8080 (opening ingress-nginx); every pod in namespace infrastructure, on TCP 8081 (opening metrics). Nobody else: namespace shop is default-deny.",
	} {
		if w.Reach != want {
			t.Errorf("reach:\n got %s\nwant %s", w.Reach, want)
		}
	}
	if !strings.Contains(w.Reaches, "the cluster DNS (pods labelled k8s-app=kube-dns in namespace kube-system), on UDP 53 and TCP 53 (opening dns)") {
		t.Errorf("reaches does not name the DNS pods: %s", w.Reaches)
	}
	var dnsNote string
	for _, r := range w.Egress {
		if r.Opening == "dns" && len(r.Notes) > 0 {
			dnsNote = r.Notes[0]
		}
	}
	for _, want := range []string{"10.43.0.10/32", "DNAT", "k8s-app=kube-dns", "UDP and TCP 53", "RFC 7766"} {
		if !strings.Contains(dnsNote, want) {
			t.Errorf("the DNS note does not say %q: %s", want, dnsNote)
		}
	}
	// kafka lives in a default-deny namespace that opens ingress from web: said so.
	var kafkaNote string
	for _, r := range w.Egress {
		if r.Opening == "kafka" && len(r.Notes) > 0 {
			kafkaNote = r.Notes[0]
		}
	}
	if !strings.Contains(kafkaNote, "the other side is open: kafka (opening web)") {
		t.Errorf("kafka note: %q", kafkaNote)
	}

	if _, err := c.Explain("nope"); err == nil || !strings.Contains(err.Error(), "shop/web, message-streaming-services/kafka, shop/orders") {
		t.Errorf("unknown workload: %v", err)
	}
	if _, err := c.Explain("shop/orders"); err != nil {
		t.Errorf("namespace/name: %v", err)
	}
}

func TestExplainOtherSideMissing(t *testing.T) {
	c := compileProfile(t, "testdata/profile.yaml")
	e, err := c.Explain("orders")
	if err != nil {
		t.Fatal(err)
	}
	// orders accepts web on 8443 and web opens egress to it: covered.
	for _, r := range e.Workloads[0].Ingress {
		if r.Opening == "web" && (len(r.Notes) != 1 || !strings.Contains(r.Notes[0], "the other side is open: web (opening orders)")) {
			t.Errorf("orders.ingress.web notes: %q", r.Notes)
		}
	}
	// Remove web's egress to orders: the note must say that nothing passes.
	for i := range c.Workloads {
		if c.Workloads[i].Name == "web" {
			var kept []Opening
			for _, op := range c.Workloads[i].Openings {
				if op.Name != "orders" {
					kept = append(kept, op)
				}
			}
			c.Workloads[i].Openings = kept
		}
	}
	e, err = c.Explain("orders")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range e.Workloads[0].Ingress {
		if r.Opening == "web" && (len(r.Notes) != 1 || !strings.Contains(r.Notes[0], "no workload declared there sends to orders on TCP 8443: until one does, this opening lets nothing through")) {
			t.Errorf("orders.ingress.web notes without web's egress: %q", r.Notes)
		}
	}
}
