package profile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"castellan/installer/localfile"
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
		out = append(out, SourcedWorkload{Workload: w, File: p.File, Pos: p.Position(field), Field: field})
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
		v.errf(prefix+"name", "expected a DNS label, got %s", quote(w.Name))
	}
	if !dnsLabel.MatchString(w.Namespace) {
		v.errf(prefix+"namespace", "expected a namespace name, got %s", quote(w.Namespace))
	} else if systemNamespaces[w.Namespace] {
		v.errf(prefix+"namespace", "%s holds the cluster's own components, whose traffic a profile does not declare: castellan does not put it under default-deny; move the workload to a namespace of its own", w.Namespace)
	}
	key := w.Namespace + "/" + w.Name
	here := v.p.Position(prefix + "name")
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
func (p *Profile) ReadWorkloadFiles(ctx context.Context) error {
	v := &validator{ctx: ctx, p: p, files: map[string]fileResult{}}
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
			v.errf(f, "expected a namespace name, got %s", quote(ns))
		case systemNamespaces[ns]:
			v.errf(f, "%s holds the cluster's own components, whose traffic a profile does not declare: castellan does not put it under default-deny", ns)
		case dup:
			v.errf(f, "namespace %s is already listed as spec.netpol.namespaces[%d]", ns, j)
		default:
			seen[ns] = i
		}
	}
}

// MaxKubeconfigSize bounds the kubeconfig file (one with a few clusters and
// embedded certificates is a few tens of KiB).
const MaxKubeconfigSize = 1 << 20

// clusterAccess checks spec.cluster: the kubeconfig must be a regular file
// holding a YAML mapping (kubernetes.io/docs/concepts/configuration/
// organize-cluster-access-kubeconfig); the context is looked up when the
// cluster is reached. Its content holds credentials: no message quotes it.
func (v *validator) clusterAccess() {
	c := v.p.Spec.Cluster
	if c.Context != "" && c.Kubeconfig == "" {
		v.errf("spec.cluster.context", "a context needs the kubeconfig it is in: set spec.cluster.kubeconfig")
	}
	data, ok, err := v.read("spec.cluster.kubeconfig", c.Kubeconfig, MaxKubeconfigSize)
	if !ok {
		return
	}
	if err != nil {
		v.errf("spec.cluster.kubeconfig", "cannot read kubeconfig %v", err)
		return
	}
	var doc map[string]any
	if yaml.Unmarshal(data, &doc) != nil || doc["clusters"] == nil {
		v.errf("spec.cluster.kubeconfig", "%s is not a kubeconfig (a YAML file with clusters, users and contexts, such as RKE2 writes to /etc/rancher/rke2/rke2.yaml)", v.p.Resolve(c.Kubeconfig))
	}
}

// MaxWorkloadFileSize bounds a workload file; a real one is a few hundred bytes.
const MaxWorkloadFileSize = 256 << 10

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
			v.errf(f, "%s is not a valid glob pattern: %v", quote(pattern), err)
			continue
		}
		if len(matches) == 0 {
			v.errf(f, "%s matches no file", v.p.Resolve(pattern))
			continue
		}
		sort.Strings(matches)
		for _, match := range matches {
			file := v.p.display(match)
			wf, err := v.readWorkloadFile(match, file)
			if err != nil {
				var es Errors
				if errors.As(err, &es) {
					v.errs = append(v.errs, es...)
				} else {
					v.errf(f, "%v", err)
				}
				continue
			}
			sub := &validator{ctx: v.ctx, p: &Profile{Cluster: v.p.Cluster, File: file, pos: wf.pos, set: wf.set, bad: wf.bad}, opts: v.opts, files: v.files}
			sub.workload("", wf.w, seen)
			v.errs = append(v.errs, sub.errs...)
			v.p.workloadFiles = append(v.p.workloadFiles, SourcedWorkload{Workload: wf.w, File: file, Pos: wf.pos[""]})
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

// parsedWorkload is a decoded workload file, with where each field is.
type parsedWorkload struct {
	w        Workload
	pos      map[string]Pos
	set, bad map[string]bool
}

// readWorkloadFile reads the workload file at path (a regular file of at most
// MaxWorkloadFileSize bytes, within FileTimeout); name is used in errors.
func (v *validator) readWorkloadFile(path, name string) (*parsedWorkload, error) {
	ctx, cancel := context.WithTimeout(v.ctx, FileTimeout)
	defer cancel()
	data, err := localfile.Read(ctx, path, MaxWorkloadFileSize)
	if err != nil {
		return nil, fmt.Errorf("cannot read workload file %v", err)
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
	wf, err := parseWorkload(name, data)
	if err != nil {
		return nil, err
	}
	return &wf.w, nil
}

func parseWorkload(name string, data []byte) (*parsedWorkload, error) {
	if len(data) > MaxWorkloadFileSize {
		return nil, Errors{{File: name, Pos: posAt(data, MaxWorkloadFileSize), Msg: fmt.Sprintf("workload file is larger than %s; is this the right file?", localfile.Size(MaxWorkloadFileSize))}}
	}
	if e := checkText(name, data); e != nil {
		return nil, Errors{e}
	}
	empty := Errors{{File: name, Pos: Pos{1, 1}, Msg: "workload file is empty; it needs name, namespace and the openings (ingress, egress)"}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, empty
		}
		return nil, Errors{syntaxError(name, data, err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, Errors{{File: name, Pos: nodePos(&extra), Msg: "workload file holds more than one YAML document; keep one workload per file"}}
	} else if !errors.Is(err, io.EOF) {
		return nil, Errors{syntaxError(name, data, err)}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if isNull(root) && root.Style&yaml.TaggedStyle == 0 {
		return nil, empty
	}
	d := newDecoder(name)
	wf := &parsedWorkload{}
	d.decode(root, reflect.ValueOf(&wf.w).Elem(), "")
	if len(d.errs) > 0 {
		return nil, d.errs.sorted()
	}
	d.pos[""] = nodePos(root)
	wf.pos, wf.set, wf.bad = d.pos, d.set, d.bad
	return wf, nil
}
