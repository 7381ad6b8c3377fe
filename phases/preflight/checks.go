package preflight

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"castellan/installer/facts"
	"castellan/installer/profile"
)

// Thresholds; below the minimum a node fails preflight, below the
// recommendation it gets a warning.
const (
	GiB             = 1 << 30
	minMemory       = 1 * GiB
	serverMemoryRec = 4 * GiB
	agentMemoryRec  = 2 * GiB
	minFreeVarLib   = 2 * GiB
	recFreeVarLib   = 10 * GiB
	minDataDisk     = 512 << 20
)

// Ports RKE2 needs on a node, and which of its own processes may hold them
// (a rerun finds them in use by the cluster itself).
var rke2Ports = []struct {
	port       int
	serverOnly bool
	what       string
	owners     []string
}{
	{6443, true, "Kubernetes API server", []string{"kube-apiserver"}},
	{9345, true, "RKE2 supervisor (node registration)", []string{"rke2"}},
	{2379, true, "etcd clients", []string{"etcd"}},
	{2380, true, "etcd peers", []string{"etcd"}},
	{10250, false, "kubelet", []string{"kubelet"}},
}

// Severity of a problem.
type Severity string

// Severities.
const (
	SeverityError   Severity = "error"
	SeverityWarning Severity = "warning"
)

// Problem is one unmet requirement: what is missing, why it matters, and
// what to do.
type Problem struct {
	Severity Severity
	Msg      string
}

func (p Problem) String() string { return p.Msg }

// requirements are what the profile asks of one node.
type requirements struct {
	node      profile.Node
	tpm       bool
	wireguard bool
	ports     []facts.Port
	owners    map[string][]string // "udp/51871" -> processes that may hold it
	devices   []string            // the data disks' device paths, as the profile names them
}

func requirementsFor(p *profile.Profile, n profile.Node) requirements {
	r := requirements{
		node:      n,
		tpm:       p.Spec.Identity.TPM == profile.TPMRequired,
		wireguard: profile.On(p.Spec.Mesh.Enabled),
		owners:    map[string][]string{},
	}
	for _, d := range n.DataDisks {
		r.devices = append(r.devices, d.Device)
	}
	if r.wireguard {
		r.ports = append(r.ports, facts.Port{Port: p.Spec.Mesh.Port, Protocol: "udp"})
		// The kernel's WireGuard socket has no owning process.
		r.owners[fmt.Sprintf("udp/%d", p.Spec.Mesh.Port)] = []string{""}
	}
	for _, rp := range rke2Ports {
		if rp.serverOnly && n.Role != profile.RoleServer {
			continue
		}
		r.ports = append(r.ports, facts.Port{Port: rp.port, Protocol: "tcp"})
		r.owners[fmt.Sprintf("tcp/%d", rp.port)] = rp.owners
	}
	return r
}

// spacePaths are the directories whose free space preflight checks.
var spacePaths = []string{"/", "/var/lib"}

// check compares a node's facts with what the profile requires of it.
func check(r requirements, f facts.Node) []Problem {
	var ps []Problem
	errf := func(format string, a ...any) {
		ps = append(ps, Problem{SeverityError, fmt.Sprintf(format, a...)})
	}
	warnf := func(format string, a ...any) {
		ps = append(ps, Problem{SeverityWarning, fmt.Sprintf(format, a...)})
	}
	if !f.Systemd {
		errf("systemd is not running: castellan installs RKE2, WireGuard and disk unlocking as systemd units; use a systemd distribution")
	}
	if f.Arch != "amd64" && f.Arch != "arm64" {
		errf("architecture %q is not supported: RKE2 ships for amd64 and arm64", f.Arch)
	}
	if !supportedOS(f.OS) {
		warnf("%s is not a distribution castellan is tested on (Debian 12, Ubuntu 22.04/24.04, RHEL-compatible 9): expect surprises", osName(f.OS))
	}
	if f.MemoryB < minMemory {
		errf("%s of memory: at least %s is needed to run a Kubernetes node", bytesHuman(f.MemoryB), bytesHuman(minMemory))
	} else if rec := memoryRec(r.node.Role); f.MemoryB < rec-rec/16 {
		// MemTotal is what the kernel manages: a few percent below the RAM
		// the machine was given, so a 2 GiB VM is not below 2 GiB.
		warnf("%s of memory: an RKE2 %s should have %s or more; workloads may be evicted", bytesHuman(f.MemoryB), r.node.Role, bytesHuman(rec))
	}
	if r.tpm && !f.TPM.Present {
		errf("no TPM 2.0 resource manager (/dev/tpmrm0): the node's identity key is created inside its TPM and disks unlock with it; enable the machine's (v)TPM 2.0, or set spec.identity.tpm: insecure-skip (recorded in every run)")
	} else if r.tpm && f.TPM.Version != "" && f.TPM.Version != "2.0" {
		errf("TPM version %s: castellan needs TPM 2.0", f.TPM.Version)
	}
	if r.wireguard && !f.WireGuard.Available {
		errf("kernel WireGuard is not available (no wireguard module for kernel %s): the node mesh needs it; use a kernel of 5.6 or later, or install the wireguard module", f.Kernel)
	}
	if !f.Time.Synchronized {
		warnf("the clock is not synchronised (NTP): certificates and tokens are time-bound; enable systemd-timesyncd or chrony")
	}
	for _, s := range f.Space {
		if s.Path != "/var/lib" || s.TotalB == 0 {
			continue
		}
		if s.FreeB < minFreeVarLib {
			errf("%s free on %s: at least %s is needed for the agent, RKE2 and its images", bytesHuman(s.FreeB), s.Path, bytesHuman(minFreeVarLib))
		} else if s.FreeB < recFreeVarLib {
			warnf("%s free on %s: RKE2's images and etcd want %s or more", bytesHuman(s.FreeB), s.Path, bytesHuman(recFreeVarLib))
		}
	}
	for _, p := range f.Ports {
		key := fmt.Sprintf("%s/%d", p.Protocol, p.Port)
		if p.InUse && !slices.Contains(r.owners[key], p.Process) {
			holder := p.Process
			if holder == "" {
				holder = "the kernel"
			}
			errf("port %s is in use by %s: %s needs it; stop that service or change the port in the profile", key, holder, portPurpose(key))
		}
	}
	ps = append(ps, checkDataDisks(r.node, f)...)
	ps = append(ps, checkKubeletHost(f)...)
	ps = append(ps, checkClock(f.Clock)...)
	ps = append(ps, checkFirmware(r, f)...)
	return ps
}

func memoryRec(role profile.Role) uint64 {
	if role == profile.RoleServer {
		return serverMemoryRec
	}
	return agentMemoryRec
}

func portPurpose(key string) string {
	for _, rp := range rke2Ports {
		if key == fmt.Sprintf("tcp/%d", rp.port) {
			return rp.what
		}
	}
	return "the WireGuard mesh"
}

func supportedOS(o facts.OS) bool {
	switch o.ID {
	case "debian":
		return o.VersionID == "12" || o.VersionID == "13"
	case "ubuntu":
		return o.VersionID == "22.04" || o.VersionID == "24.04"
	case "rhel", "rocky", "almalinux", "ol":
		return strings.HasPrefix(o.VersionID, "9")
	}
	return false
}

func osName(o facts.OS) string {
	if o.PrettyName != "" {
		return o.PrettyName
	}
	if o.ID == "" {
		return "an unknown OS"
	}
	return o.ID + " " + o.VersionID
}

func diskNames(ds []facts.Disk) string {
	if len(ds) == 0 {
		return "none"
	}
	names := make([]string, len(ds))
	for i, d := range ds {
		names[i] = path.Base(d.Path)
	}
	return strings.Join(names, ", ")
}

func bytesHuman(b uint64) string {
	switch {
	case b >= GiB:
		return fmt.Sprintf("%.1f GiB", float64(b)/GiB)
	case b >= 1<<20:
		return fmt.Sprintf("%d MiB", b>>20)
	}
	return fmt.Sprintf("%d B", b)
}

// castellansOwn reports whether a data disk holds castellan's own disk
// encryption and nothing else: one LUKS2 header (either copy) carrying
// castellan's token, held by nothing but device-mapper (its open dm-crypt
// mapping), not mounted itself, no partitions. Such a disk belongs to the
// disk encryption phase, which checks that its token names this cluster and
// node: neither "holds data" nor "in use by device-mapper" applies to it.
func castellansOwn(d facts.Disk) bool {
	if len(d.Signatures) != 1 || d.Signatures[0].Type != "luks2" || d.Signatures[0].Device != "" ||
		d.Signatures[0].LUKS == nil || !d.Signatures[0].LUKS.Castellan || d.Mounted || len(d.Partitions) > 0 {
		return false
	}
	for _, h := range d.Holders {
		if !strings.HasPrefix(h, "dm-") {
			return false
		}
	}
	return true
}
