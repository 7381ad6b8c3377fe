package profile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ClusterAccess says how cluster-level phases (network policies, services)
// reach the Kubernetes API. Until the rke2 phase publishes the admin
// kubeconfig of the cluster it installs, they need a kubeconfig named here;
// for a cluster castellan did not install this is the way in for good.
type ClusterAccess struct {
	// Kubeconfig is a kubeconfig file with admin rights on the cluster (relative paths are
	// resolved against the profile's directory).
	Kubeconfig string `yaml:"kubeconfig,omitempty"`
	// Context in the kubeconfig to use (default: its current-context).
	Context string `yaml:"context,omitempty"`
}

// SourcedWorkload is a workload and where it was declared.
type SourcedWorkload struct {
	Workload
	// File declares the workload: the profile's path as given, or a workload file's path
	// (relative to the directory the profile was given in when it lies below it).
	File string
	// Pos is where the workload starts in File.
	Pos Pos
	// Field is the workload's field path in File: spec.netpol.workloads[N] in the profile,
	// empty in a workload file.
	Field string
}

// String is "file:line:column", where the workload is declared.
func (w SourcedWorkload) String() string {
	return fmt.Sprintf("%s:%d:%d", w.File, w.Pos.Line, w.Pos.Column)
}

// Workloads returns every workload of spec.netpol: those written in the
// profile, in order, then those of spec.netpol.workloadFiles, in the order of
// the patterns and, within one pattern, of the file names. Workload files are
// read by Validate (Load): a profile that was only parsed has none.
func (p *Profile) Workloads() []SourcedWorkload {
	out := make([]SourcedWorkload, 0, len(p.Spec.NetPol.Workloads)+len(p.workloadFiles))
	for i, w := range p.Spec.NetPol.Workloads {
		field := fmt.Sprintf("spec.netpol.workloads[%d]", i)
		out = append(out, SourcedWorkload{Workload: w, File: p.File, Pos: p.posOf(field), Field: field})
	}
	return append(out, p.workloadFiles...)
}

// ClusterDNS is the cluster DNS service's IP that RKE2 configures when it is
// not set explicitly: the tenth address of the service network (10.43.0.10
// for the default 10.43.0.0/16), as k3s' server start-up derives it
// (pkg/cli/server: GetIndexedIP(serviceCIDR, 10)), which RKE2 runs.
// It returns false if serviceCIDR is not a valid, large enough CIDR.
func ClusterDNS(serviceCIDR string) (netip.Addr, bool) {
	pfx, err := netip.ParsePrefix(serviceCIDR)
	if err != nil {
		return netip.Addr{}, false
	}
	a := pfx.Masked().Addr()
	for range 10 {
		a = a.Next()
	}
	if !a.IsValid() || !pfx.Contains(a) {
		return netip.Addr{}, false
	}
	return a, true
}

// DNSPort is the port of the cluster DNS service and of its pods.
const DNSPort = 53

// IsClusterDNSOpening reports whether an egress opening is written as the
// cluster DNS service's IP (an ipBlock of exactly that address) on port 53
// only: the netpol phase compiles it to the DNS pods instead, because the
// service IP itself matches nothing (see serviceNetwork).
func IsClusterDNSOpening(o Opening, serviceCIDR string) bool {
	dns, ok := ClusterDNS(serviceCIDR)
	if !ok || o.IPBlock == "" {
		return false
	}
	pfx, err := netip.ParsePrefix(o.IPBlock)
	if err != nil || !pfx.IsSingleIP() || pfx.Addr() != dns || len(o.Ports) == 0 {
		return false
	}
	for port, proto := range o.Ports {
		if port != DNSPort || (proto != "UDP" && proto != "TCP") {
			return false
		}
	}
	return true
}

// systemNamespaces hold RKE2's own components (CoreDNS, ingress-nginx,
// metrics-server, Calico and its operator). Their traffic is not declared in
// a profile, so a default-deny policy there would cut the cluster off itself.
var systemNamespaces = map[string]bool{"kube-system": true, "kube-public": true, "kube-node-lease": true, "calico-system": true, "tigera-operator": true}

// workload checks one workload. prefix is its field path with a trailing
// dot ("spec.netpol.workloads[0]." in the profile, "" in a workload file);
// seen maps namespace/name to where each workload was declared.
func (v *validator) workload(prefix string, w Workload, seen map[string]string) {
	if !dnsLabel.MatchString(w.Name) {
		v.errf(prefix+"name", "expected a DNS label, got %q", w.Name)
	}
	if !dnsLabel.MatchString(w.Namespace) {
		v.errf(prefix+"namespace", "expected a namespace name, got %q", w.Namespace)
	} else if systemNamespaces[w.Namespace] {
		v.errf(prefix+"namespace", "%s holds the cluster's own components, whose traffic a profile does not declare: castellan does not put it under default-deny; move the workload to a namespace of its own", w.Namespace)
	}
	key := w.Namespace + "/" + w.Name
	here := v.p.posOf(prefix + "name")
	if where, dup := seen[key]; dup {
		v.errf(prefix+"name", "workload %s is declared twice (first at %s)", key, where)
	} else {
		seen[key] = fmt.Sprintf("%s:%d:%d", v.p.File, here.Line, here.Column)
	}
	v.labels(prefix+"podSelector", w.PodSelector)
	for _, dir := range []struct {
		name string
		ops  map[string]Opening
	}{{"ingress", w.Ingress}, {"egress", w.Egress}} {
		for _, name := range sortedKeys(dir.ops) {
			f := prefix + dir.name + "." + name
			v.opening(f, name, dir.ops[name])
			v.serviceNetwork(f, dir.name, dir.ops[name])
		}
	}
}

// serviceNetwork refuses an ipBlock inside the cluster's service network,
// except the cluster DNS opening the netpol phase knows how to compile.
//
// Calico (like every NetworkPolicy implementation behind kube-proxy) sees a
// connection after kube-proxy has translated the service's virtual IP to the
// IP of one backing pod (DNAT): "k8s NP is defined in terms of pods, not
// services" (projectcalico/calico#2088), and Calico's "Kubernetes services"
// guide (docs.tigera.io/calico/latest/about/kubernetes-training/about-kubernetes-services,
// "Services and network policy") says policy must name the backing pods.
// So an ipBlock of service IPs matches nothing, egress or ingress.
func (v *validator) serviceNetwork(f, dir string, o Opening) {
	if o.IPBlock == "" {
		return
	}
	svc, err := netip.ParsePrefix(v.p.Spec.RKE2.ServiceCIDR)
	if err != nil {
		return // reported by networks()
	}
	pfx, err := netip.ParsePrefix(o.IPBlock)
	if err != nil || pfx.Bits() < svc.Bits() || !svc.Contains(pfx.Addr()) {
		return
	}
	for port, proto := range o.Ports {
		if port < 1 || port > 65535 || (proto != "TCP" && proto != "UDP" && proto != "SCTP") {
			return // opening() reports it; judge the opening once it is well-formed
		}
	}
	if dir == "egress" && IsClusterDNSOpening(o, v.p.Spec.RKE2.ServiceCIDR) {
		return
	}
	what := "traffic never comes from a service IP"
	if dir == "egress" {
		what = "policy sees the pod the service IP was translated to (DNAT by kube-proxy), never the service IP"
	}
	fix := "select the service's pods instead: namespaceSelector {kubernetes.io/metadata.name: NAMESPACE} and podSelector {the pods' labels}"
	if dns, ok := ClusterDNS(v.p.Spec.RKE2.ServiceCIDR); ok && pfx.IsSingleIP() && pfx.Addr() == dns {
		fix = fmt.Sprintf("%s is the cluster DNS service: as an egress opening on port 53 only (UDP or TCP) castellan compiles it to the DNS pods; for other ports %s", dns, fix)
	}
	v.errf(f+".ipBlock", "%s lies inside the service network %s (spec.rke2.serviceCIDR) and would match nothing under Calico: %s; %s", o.IPBlock, svc, what, fix)
}

// inlineWorkloads checks spec.netpol.workloads and returns where each was declared.
func (v *validator) inlineWorkloads() map[string]string {
	seen := map[string]string{}
	for i, w := range v.p.Spec.NetPol.Workloads {
		v.workload(fmt.Sprintf("spec.netpol.workloads[%d].", i), w, seen)
	}
	return seen
}

// ReadWorkloadFiles reads and checks the workload files of
// spec.netpol.workloadFiles, as Validate does unless SkipFileChecks is set:
// commands that work offline from the profile alone (netpol explain and
// render) load it with SkipFileChecks, so that SSH keys and known_hosts may
// be missing, and then call this. Problems come back as Errors, each naming
// its file:line:column.
func (p *Profile) ReadWorkloadFiles() error {
	v := &validator{p: p}
	seen := v.inlineWorkloads()
	v.errs = nil // reported by Validate already
	v.netpolFiles(seen)
	if len(v.errs) > 0 {
		return v.errs.sorted()
	}
	return nil
}

// netpolNamespaces checks spec.netpol.namespaces.
func (v *validator) netpolNamespaces() {
	seen := map[string]int{}
	for i, ns := range v.p.Spec.NetPol.Namespaces {
		f := fmt.Sprintf("spec.netpol.namespaces[%d]", i)
		switch j, dup := seen[ns]; {
		case !dnsLabel.MatchString(ns):
			v.errf(f, "expected a namespace name, got %q", ns)
		case systemNamespaces[ns]:
			v.errf(f, "%s holds the cluster's own components, whose traffic a profile does not declare: castellan does not put it under default-deny", ns)
		case dup:
			v.errf(f, "namespace %s is already listed as spec.netpol.namespaces[%d]", ns, j)
		default:
			seen[ns] = i
		}
	}
}

// clusterAccess checks spec.cluster.
func (v *validator) clusterAccess(opts ValidateOptions) {
	c := v.p.Spec.Cluster
	if c.Context != "" && c.Kubeconfig == "" {
		v.errf("spec.cluster.context", "a context needs the kubeconfig it is in: set spec.cluster.kubeconfig")
	}
	v.readable("spec.cluster.kubeconfig", c.Kubeconfig, opts, "kubeconfig")
}

// maxWorkloadFileSize bounds what a workload file may hold; a real one is a
// few hundred bytes.
const maxWorkloadFileSize = 1 << 20

// netpolFiles reads spec.netpol.workloadFiles, decodes each file strictly
// and checks its workload, with errors naming the workload file's
// file:line:column.
func (v *validator) netpolFiles(seen map[string]string) {
	v.p.workloadFiles = nil
	for i, pattern := range v.p.Spec.NetPol.WorkloadFiles {
		f := fmt.Sprintf("spec.netpol.workloadFiles[%d]", i)
		if pattern == "" {
			v.errf(f, "expected a file name or glob pattern such as netpol/*.yaml")
			continue
		}
		matches, err := filepath.Glob(v.p.Resolve(pattern))
		if err != nil {
			v.errf(f, "%q is not a valid glob pattern: %v", pattern, err)
			continue
		}
		if len(matches) == 0 {
			v.errf(f, "%s matches no file", v.p.Resolve(pattern))
			continue
		}
		sort.Strings(matches)
		for _, match := range matches {
			file := v.p.display(match)
			w, pos, err := readWorkloadFile(match, file)
			if err != nil {
				var es Errors
				if errors.As(err, &es) {
					v.errs = append(v.errs, es...)
				} else {
					v.errf(f, "%v", err)
				}
				continue
			}
			sub := &validator{p: &Profile{Cluster: v.p.Cluster, File: file, pos: pos}}
			sub.workload("", *w, seen)
			v.errs = append(v.errs, sub.errs...)
			v.p.workloadFiles = append(v.p.workloadFiles, SourcedWorkload{Workload: *w, File: file, Pos: pos[""]})
		}
	}
}

// display names a file found beside the profile as the user named the
// profile: relative to the directory the profile was given in, or absolute
// if it lies outside it.
func (p *Profile) display(file string) string {
	rel, err := filepath.Rel(p.Dir, file)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return file
	}
	return filepath.Join(filepath.Dir(p.File), rel)
}

// readWorkloadFile reads the workload file at path; name is used in errors.
func readWorkloadFile(path, name string) (*Workload, map[string]Pos, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot read workload file %s: %v", path, unwrapPathErr(err))
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxWorkloadFileSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("reading workload file %s: %w", path, err)
	}
	return parseWorkload(name, data)
}

// ParseWorkload decodes one workload file strictly, as the profile loader
// decodes a profile: the block of openings (ingress, egress) exactly as in
// spec.netpol.workloads[], with the workload's name, namespace and
// podSelector added. name is used in errors. Problems come back as Errors,
// each with file:line:column and field path; this checks the structure
// (field names, types, duplicates), and Load checks the meaning of the
// workload files a profile lists.
func ParseWorkload(name string, data []byte) (*Workload, error) {
	w, _, err := parseWorkload(name, data)
	return w, err
}

func parseWorkload(name string, data []byte) (*Workload, map[string]Pos, error) {
	if len(data) > maxWorkloadFileSize {
		return nil, nil, Errors{{File: name, Msg: fmt.Sprintf("workload file is larger than %d bytes; is this the right file?", maxWorkloadFileSize)}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil, Errors{{File: name, Pos: Pos{1, 1}, Msg: "workload file is empty; it needs name, namespace and the openings (ingress, egress)"}}
		}
		return nil, nil, Errors{syntaxError(name, err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, nil, Errors{{File: name, Pos: nodePos(&extra), Msg: "workload file holds more than one YAML document; keep one workload per file"}}
	} else if !errors.Is(err, io.EOF) {
		return nil, nil, Errors{syntaxError(name, err)}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil, nil, Errors{{File: name, Pos: Pos{1, 1}, Msg: "workload file is empty; it needs name, namespace and the openings (ingress, egress)"}}
	}
	d := newDecoder(name)
	var w Workload
	d.decode(root, reflect.ValueOf(&w).Elem(), "")
	if len(d.errs) > 0 {
		return nil, nil, d.errs.sorted()
	}
	d.pos[""] = nodePos(root)
	return &w, d.pos, nil
}
