package preflight

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"castellan/installer/facts"
	"castellan/installer/profile"
)

// goodNode is a node that meets every requirement of testProfile.
func goodNode() facts.Node {
	return facts.Node{
		OS: facts.OS{ID: "debian", VersionID: "12", PrettyName: "Debian GNU/Linux 12 (bookworm)"}, Kernel: "6.1.0-27-amd64",
		Arch: "amd64", CPUs: 2, MemoryB: 8 * GiB, Systemd: true,
		Disks:     []facts.Disk{{Name: "vda", Path: "/dev/vda", SizeB: 20 * GiB, Mounted: true}, {Name: "vdb", Path: "/dev/vdb", SizeB: 2 * GiB, Aliases: []string{"/dev/disk/by-id/virtio-data"}}},
		TPM:       facts.TPM{Present: true, Device: "/dev/tpmrm0", Version: "2.0"},
		WireGuard: facts.WireGuard{Available: true, Source: "module"},
		Time:      facts.TimeSync{Synchronized: true},
		Space:     []facts.FreeSpace{{Path: "/", FreeB: 30 * GiB, TotalB: 40 * GiB}, {Path: "/var/lib", FreeB: 30 * GiB, TotalB: 40 * GiB}},
		Ports:     []facts.Port{{Port: 51871, Protocol: "udp"}, {Port: 6443, Protocol: "tcp"}},
	}
}

func testProfile(t *testing.T, mod func(*profile.Profile)) (*profile.Profile, profile.Node) {
	t.Helper()
	p, err := profile.Parse("t.yaml", []byte(`apiVersion: castellan/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  ssh: {user: admin, keyFile: k, knownHosts: kh}
  nodes:
    - {name: s1, address: 192.0.2.1, role: server, dataDisks: [{device: /dev/vdb}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if mod != nil {
		mod(p)
	}
	return p, p.Spec.Nodes[0]
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name     string
		profile  func(*profile.Profile)
		node     func(*facts.Node)
		errors   []string // substrings, in order
		warnings []string
	}{
		{name: "everything fine"},
		{name: "no TPM", node: func(n *facts.Node) { n.TPM = facts.TPM{} },
			errors: []string{"no TPM 2.0 resource manager (/dev/tpmrm0): the node's identity key is created inside its TPM"}},
		{name: "no TPM but insecure-skip", node: func(n *facts.Node) { n.TPM = facts.TPM{} },
			profile: func(p *profile.Profile) { p.Spec.Identity.TPM = profile.TPMInsecureSkip }},
		{name: "TPM 1.2", node: func(n *facts.Node) { n.TPM.Version = "1.2" }, errors: []string{"TPM version 1.2: castellan needs TPM 2.0"}},
		{name: "no WireGuard", node: func(n *facts.Node) { n.WireGuard = facts.WireGuard{} },
			errors: []string{"kernel WireGuard is not available (no wireguard module for kernel 6.1.0-27-amd64)"}},
		{name: "no WireGuard, mesh off", node: func(n *facts.Node) { n.WireGuard = facts.WireGuard{} },
			profile: func(p *profile.Profile) { off := false; p.Spec.Mesh.Enabled = &off }},
		{name: "no systemd", node: func(n *facts.Node) { n.Systemd = false }, errors: []string{"systemd is not running"}},
		{name: "little memory", node: func(n *facts.Node) { n.MemoryB = 512 << 20 }, errors: []string{"512 MiB of memory: at least 1.0 GiB is needed"}},
		{name: "a 4 GiB VM is 4 GiB", node: func(n *facts.Node) { n.MemoryB = 3900 << 20 }},
		{name: "some memory", node: func(n *facts.Node) { n.MemoryB = 2 * GiB }, warnings: []string{"2.0 GiB of memory: an RKE2 server should have 4.0 GiB or more"}},
		{name: "unknown OS", node: func(n *facts.Node) { n.OS = facts.OS{ID: "gentoo", PrettyName: "Gentoo"} }, warnings: []string{"Gentoo is not a distribution castellan is tested on"}},
		{name: "clock not synced", node: func(n *facts.Node) { n.Time.Synchronized = false }, warnings: []string{"the clock is not synchronised"}},
		{name: "disk full", node: func(n *facts.Node) { n.Space[1].FreeB = GiB }, errors: []string{"1.0 GiB free on /var/lib: at least 2.0 GiB is needed"}},
		{name: "api port taken", node: func(n *facts.Node) {
			n.Ports[1] = facts.Port{Port: 6443, Protocol: "tcp", InUse: true, Process: "nginx"}
		},
			errors: []string{"port tcp/6443 is in use by nginx: Kubernetes API server needs it"}},
		{name: "api port held by our own apiserver", node: func(n *facts.Node) {
			n.Ports[1] = facts.Port{Port: 6443, Protocol: "tcp", InUse: true, Process: "kube-apiserver"}
		}},
		{name: "mesh port held by the kernel's WireGuard", node: func(n *facts.Node) { n.Ports[0].InUse = true }},
		{name: "mesh port held by a process", node: func(n *facts.Node) { n.Ports[0].InUse, n.Ports[0].Process = true, "openvpn" },
			errors: []string{"port udp/51871 is in use by openvpn: the WireGuard mesh needs it"}},
		{name: "data disk missing", node: func(n *facts.Node) { n.Disks = n.Disks[:1] },
			errors: []string{"data disk /dev/vdb does not exist: attach it, or fix spec.nodes[s1].dataDisks (disks here: vda)"}},
		{name: "data disk by alias", profile: func(p *profile.Profile) { p.Spec.Nodes[0].DataDisks[0].Device = "/dev/disk/by-id/virtio-data" }},
		{name: "data disk mounted", node: func(n *facts.Node) { n.Disks[1].Mounted = true }, errors: []string{"data disk /dev/vdb (or a partition of it) is mounted"}},
		{name: "data disk held by device mapper", node: func(n *facts.Node) { n.Disks[1].Holders = []string{"dm-0"} },
			errors: []string{"data disk /dev/vdb is in use by dm-0 (device mapper: LVM, dm-crypt or RAID)"}},
		{name: "data disk tiny", node: func(n *facts.Node) { n.Disks[1].SizeB = 100 << 20 }, errors: []string{"data disk /dev/vdb has 100 MiB"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, n := testProfile(t, tt.profile)
			f := goodNode()
			if tt.node != nil {
				tt.node(&f)
			}
			var errs, warns []string
			for _, pr := range check(requirementsFor(p, n), f) {
				if pr.Severity == SeverityError {
					errs = append(errs, pr.Msg)
				} else {
					warns = append(warns, pr.Msg)
				}
			}
			matchAll(t, "errors", errs, tt.errors)
			matchAll(t, "warnings", warns, tt.warnings)
		})
	}
}

func matchAll(t *testing.T, what string, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s = %q, want %d matching %q", what, got, len(want), want)
	}
	for i := range want {
		if !strings.Contains(got[i], want[i]) {
			t.Errorf("%s[%d] = %q, want it to contain %q", what, i, got[i], want[i])
		}
	}
}

func TestRequirementsPorts(t *testing.T) {
	p, server := testProfile(t, nil)
	agentNode := server
	agentNode.Role = profile.RoleAgent
	var sp, ap []int
	for _, x := range requirementsFor(p, server).ports {
		sp = append(sp, x.Port)
	}
	for _, x := range requirementsFor(p, agentNode).ports {
		ap = append(ap, x.Port)
	}
	if got := fmt.Sprint(sp); got != "[51871 6443 9345 2379 2380 10250]" {
		t.Errorf("server ports = %v", got)
	}
	if got := fmt.Sprint(ap); got != "[51871 10250]" {
		t.Errorf("agent ports = %v", got)
	}
}

// TestGatherThisMachine gathers the facts of the machine the test runs on
// and compares them with what the kernel says through other means.
func TestGatherThisMachine(t *testing.T) {
	f := Gather(FactsRequest{SpacePaths: []string{"/", "/var/lib/castellan-does-not-exist"}})
	if len(f.Problems) > 0 {
		t.Errorf("problems gathering facts: %v", f.Problems)
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	if f.Kernel != unix.ByteSliceToString(u.Release[:]) {
		t.Errorf("kernel = %q, uname says %q", f.Kernel, unix.ByteSliceToString(u.Release[:]))
	}
	if f.Arch != runtime.GOARCH || f.CPUs < 1 || f.MemoryB < 64<<20 {
		t.Errorf("arch %s cpus %d memory %d", f.Arch, f.CPUs, f.MemoryB)
	}
	if f.OS.ID == "" {
		t.Errorf("no OS id: %+v", f.OS)
	}
	if len(f.Space) != 2 || f.Space[1].TotalB == 0 || f.Space[1].Path != "/var/lib/castellan-does-not-exist" {
		t.Errorf("space of a missing dir should be its parent's: %+v", f.Space)
	}
	_, tpmErr := os.Stat("/dev/tpmrm0")
	if f.TPM.Present != (tpmErr == nil) {
		t.Errorf("TPM present = %v, /dev/tpmrm0 stat: %v", f.TPM.Present, tpmErr)
	}
	entries, _ := filepath.Glob("/sys/block/*")
	if len(entries) > 0 && os.Geteuid() == 0 && len(f.Disks) == 0 {
		t.Errorf("no disks found although /sys/block has %d entries", len(entries))
	}
}
