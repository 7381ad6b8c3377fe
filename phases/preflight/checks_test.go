package preflight

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"castellan/installer/facts"
	"castellan/installer/profile"
)

// goodNode is a node that meets every requirement of testProfile.
func goodNode() facts.Node {
	return facts.Node{
		OS: facts.OS{ID: "debian", VersionID: "12", PrettyName: "Debian GNU/Linux 12 (bookworm)"}, Kernel: "6.1.0-27-amd64",
		Arch: "amd64", CPUs: 2, MemoryB: 8 * GiB, Systemd: true,
		Disks: []facts.Disk{
			{Name: "vda", Path: "/dev/vda", SizeB: 20 * GiB, Mounted: true, Mounts: []string{"/"}, Signature: "dos", Signatures: []facts.Signature{{Type: "dos", Offset: 510}}, Partitions: []string{"vda1"}},
			{Name: "vdb", Path: "/dev/vdb", SizeB: 2 * GiB, Aliases: []string{"/dev/disk/by-id/virtio-data"}},
		},
		Devices: []facts.Device{
			{Path: "/dev/vdb", Resolved: "/dev/vdb", Kind: facts.DeviceDisk, Disk: "vdb"},
			{Path: "/dev/disk/by-id/virtio-data", Resolved: "/dev/vdb", Kind: facts.DeviceDisk, Disk: "vdb"},
			{Path: "/dev/vda1", Resolved: "/dev/vda1", Kind: facts.DevicePartition, Disk: "vda", Partition: 1},
			{Path: "/dev/shm/x", Resolved: "/dev/shm/x", Kind: facts.DeviceNotBlock, FileType: "regular file"},
			{Path: "/dev/mem", Resolved: "/dev/mem", Kind: facts.DeviceNotBlock, FileType: "character device"},
		},
		TPM:       facts.TPM{Present: true, Device: "/dev/tpmrm0", Version: "2.0"},
		WireGuard: facts.WireGuard{Available: true, Source: "module"},
		Time:      facts.TimeSync{Synchronized: true},
		Space:     []facts.FreeSpace{{Path: "/", FreeB: 30 * GiB, TotalB: 40 * GiB}, {Path: "/var/lib", FreeB: 30 * GiB, TotalB: 40 * GiB}},
		Ports:     []facts.Port{{Port: 51871, Protocol: "udp"}, {Port: 6443, Protocol: "tcp"}},
		Cgroup:    facts.Cgroup{Mode: facts.CgroupUnified, Controllers: []string{"cpuset", "cpu", "io", "memory", "pids"}},
		Clock:     facts.Clock{Measured: true, Offset: 3 * time.Millisecond, Bound: 40 * time.Millisecond},
		Firmware:  facts.Firmware{Type: facts.FirmwareUEFI, SecureBoot: facts.SecureBootEnabled, EventLog: true},
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
		{name: "data disk missing", node: func(n *facts.Node) {
			n.Disks = n.Disks[:1]
			n.Devices[0] = facts.Device{Path: "/dev/vdb", Kind: facts.DeviceMissing}
		},
			errors: []string{"data disk /dev/vdb does not exist: attach it, or fix spec.nodes[s1].dataDisks (disks here: vda)"}},
		{name: "data disk by alias", profile: func(p *profile.Profile) { p.Spec.Nodes[0].DataDisks[0].Device = "/dev/disk/by-id/virtio-data" }},
		{name: "data disk mounted", node: func(n *facts.Node) { n.Disks[1].Mounted, n.Disks[1].Mounts = true, []string{"/srv/old", "[SWAP]"} },
			errors: []string{"data disk /dev/vdb is in use: mounted at /srv/old, an active swap area; castellan never touches a disk in use: unmount it (and remove it from /etc/fstab) or choose another"}},
		{name: "data disk held by device mapper", node: func(n *facts.Node) { n.Disks[1].Holders = []string{"dm-0"} },
			errors: []string{"data disk /dev/vdb is in use by dm-0 (device-mapper: LVM or dm-crypt; or md RAID, bcache)"}},
		{name: "data disk busy in another mount namespace", node: func(n *facts.Node) { n.Disks[1].Busy = true },
			errors: []string{"data disk /dev/vdb is in use: the kernel refuses to open it exclusively (mounted in another mount namespace, an active swap area, or held by device-mapper, md or bcache)"}},
		{name: "data disk tiny", node: func(n *facts.Node) { n.Disks[1].SizeB = 100 << 20 }, errors: []string{"data disk /dev/vdb has 100 MiB"}},
		{name: "data disk read-only", node: func(n *facts.Node) { n.Disks[1].ReadOnly = true }, errors: []string{"data disk /dev/vdb is read-only"}},
		{name: "data disk holds a filesystem", node: func(n *facts.Node) {
			n.Disks[1].Signatures = []facts.Signature{{Type: "ext4", Offset: 1080, Label: "old", UUID: "5e1c0f2a-0000-4000-8000-000000000001"}}
		},
			errors: []string{`data disk /dev/vdb holds an ext4 filesystem (label "old", UUID 5e1c0f2a-0000-4000-8000-000000000001): castellan never formats a disk that holds data; if it may be destroyed, set allowFormat: true on spec.nodes[s1].dataDisks[0], or wipe the disk yourself (wipefs -a /dev/vdb)`}},
		{name: "data disk holds a filesystem, allowFormat set", node: func(n *facts.Node) {
			n.Disks[1].Signatures = []facts.Signature{{Type: "xfs"}}
		}, profile: func(p *profile.Profile) { p.Spec.Nodes[0].DataDisks[0].AllowFormat = true },
			warnings: []string{"data disk /dev/vdb holds an XFS filesystem; allowFormat is set on spec.nodes[s1].dataDisks[0]: disk encryption will format it and that data will be lost"}},
		{name: "data disk holds a partition table and partitions", node: func(n *facts.Node) {
			n.Disks[1].Partitions = []string{"vdb1"}
			n.Disks[1].Signatures = []facts.Signature{{Type: "gpt", Offset: 512}, {Type: "swap", Device: "vdb1", Offset: 4086, UUID: "u"}}
		},
			errors: []string{"data disk /dev/vdb holds a GPT partition table; a swap area (UUID u) on vdb1: castellan never formats"}},
		{name: "data disk with partitions the kernel knows, table wiped", node: func(n *facts.Node) { n.Disks[1].Partitions = []string{"vdb1", "vdb2"} },
			errors: []string{"data disk /dev/vdb holds partitions the kernel still knows (vdb1, vdb2): castellan never formats"}},
		{name: "data disk holds LUKS2 with tokens", node: func(n *facts.Node) {
			n.Disks[1].Signatures = []facts.Signature{{Type: "luks2", UUID: "u2", LUKS: &facts.LUKS{Version: 2, UUID: "u2", ChecksumOK: true, Keyslots: 2, TokenTypes: []string{"systemd-tpm2"}}}}
		},
			errors: []string{"data disk /dev/vdb holds a LUKS2 encryption header (UUID u2, 2 keyslot(s), tokens systemd-tpm2): castellan never formats"}},
		// castellansOwn (checks.go): castellan's encrypted disk, open or not, is the disk encryption phase's.
		{name: "data disk is castellan's LUKS2, open", node: func(n *facts.Node) {
			n.Disks[1].Signatures = []facts.Signature{{Type: "luks2", UUID: "u2", LUKS: &facts.LUKS{Version: 2, UUID: "u2", ChecksumOK: true, Keyslots: 2, TokenTypes: []string{"castellan", "systemd-tpm2"}, Castellan: true}}}
			n.Disks[1].Holders, n.Disks[1].Busy = []string{"dm-0"}, true
		}},
		{name: "data disk is castellan's LUKS2, half written (secondary copy only)", node: func(n *facts.Node) {
			n.Disks[1].Signatures = []facts.Signature{{Type: "luks2", Offset: 16384, LUKS: &facts.LUKS{Version: 2, HeaderOffset: 16384, ChecksumOK: true, Keyslots: 1, TokenTypes: []string{"castellan"}, Castellan: true}}}
		}},
		{name: "data disk is castellan's LUKS2 but held by md", node: func(n *facts.Node) {
			n.Disks[1].Signatures = []facts.Signature{{Type: "luks2", LUKS: &facts.LUKS{Version: 2, ChecksumOK: true, TokenTypes: []string{"castellan"}, Castellan: true}}}
			n.Disks[1].Holders = []string{"md0"}
		}, errors: []string{"data disk /dev/vdb is in use by md0"}},
		{name: "data disk holds LUKS2, primary wiped", node: func(n *facts.Node) {
			n.Disks[1].Signatures = []facts.Signature{{Type: "luks2", Offset: 16384, LUKS: &facts.LUKS{Version: 2, HeaderOffset: 16384, ChecksumOK: true}}}
		},
			errors: []string{"data disk /dev/vdb holds a LUKS2 encryption header (its secondary copy at byte 16384: the primary is damaged or wiped, 0 keyslot(s))"}},
		{name: "data disk holds unknown data", node: func(n *facts.Node) { n.Disks[1].Signatures = []facts.Signature{{Type: "data", Offset: 700000}} },
			errors: []string{"data disk /dev/vdb holds non-zero data at byte 700000 that castellan does not recognise: castellan never formats"}},
		{name: "data disk holds a RAID member", node: func(n *facts.Node) {
			n.Disks[1].Signatures = []facts.Signature{{Type: "linux_raid_member", Version: "1.0", Offset: 2147475456}}
		},
			errors: []string{"data disk /dev/vdb holds an md RAID member superblock (version 1.0): castellan never formats"}},
		{name: "data disk unreadable", node: func(n *facts.Node) { n.Disks[1].ReadError = "/dev/vdb: input/output error" },
			errors: []string{"data disk /dev/vdb cannot be read (/dev/vdb: input/output error): castellan cannot tell whether it holds data, and never formats a disk that may; fix the disk, or set allowFormat: true on spec.nodes[s1].dataDisks[0]"}},
		{name: "data disk unreadable, allowFormat set", node: func(n *facts.Node) { n.Disks[1].ReadError = "EIO" },
			profile:  func(p *profile.Profile) { p.Spec.Nodes[0].DataDisks[0].AllowFormat = true },
			warnings: []string{"data disk /dev/vdb cannot be read (EIO); allowFormat is set on spec.nodes[s1].dataDisks[0], so disk encryption will format it whatever it holds"}},
		{name: "a partition named as a data disk", profile: func(p *profile.Profile) { p.Spec.Nodes[0].DataDisks[0].Device = "/dev/vda1" },
			errors: []string{"data disk /dev/vda1 is partition 1 of vda: name the whole disk (/dev/vda) in spec.nodes[s1].dataDisks[0]; castellan encrypts whole disks"}},
		{name: "one disk named twice through a link", profile: func(p *profile.Profile) {
			p.Spec.Nodes[0].DataDisks = append(p.Spec.Nodes[0].DataDisks, profile.DataDisk{Device: "/dev/disk/by-id/virtio-data"})
		},
			errors: []string{"data disks /dev/vdb and /dev/disk/by-id/virtio-data are one disk (vdb) on this node: name it once in spec.nodes[s1].dataDisks"}},
		{name: "one disk named twice, once with a trailing slash", node: func(n *facts.Node) {
			n.Devices = append(n.Devices, facts.Device{Path: "/dev/vdb/", Resolved: "/dev/vdb", Kind: facts.DeviceDisk, Disk: "vdb"})
		}, profile: func(p *profile.Profile) {
			p.Spec.Nodes[0].DataDisks = append(p.Spec.Nodes[0].DataDisks, profile.DataDisk{Device: "/dev/vdb/"})
		},
			errors: []string{"data disks /dev/vdb and /dev/vdb/ are one disk (vdb) on this node"}},
		{name: "a regular file named as a data disk", profile: func(p *profile.Profile) { p.Spec.Nodes[0].DataDisks[0].Device = "/dev/shm/x" },
			errors: []string{"data disk /dev/shm/x is not a block device but a regular file: name a whole disk in spec.nodes[s1].dataDisks[0]"}},
		{name: "a character device named as a data disk", profile: func(p *profile.Profile) { p.Spec.Nodes[0].DataDisks[0].Device = "/dev/mem" },
			errors: []string{"data disk /dev/mem is not a block device but a character device"}},
		{name: "cgroup v1 hybrid", node: func(n *facts.Node) { n.Cgroup = facts.Cgroup{Mode: facts.CgroupHybrid} },
			errors: []string{"the node runs cgroup v1 (hybrid hierarchy): kubelet refuses to start on cgroup v1 since Kubernetes 1.35 (failCgroupV1), and RKE2 runs that kubelet; boot with cgroup v2: add systemd.unified_cgroup_hierarchy=1 to the kernel command line"}},
		{name: "cgroup v1 legacy", node: func(n *facts.Node) { n.Cgroup = facts.Cgroup{Mode: facts.CgroupLegacy} }, errors: []string{"the node runs cgroup v1 (legacy hierarchy)"}},
		{name: "no cgroup hierarchy", node: func(n *facts.Node) { n.Cgroup = facts.Cgroup{} }, errors: []string{"no cgroup hierarchy is mounted at /sys/fs/cgroup"}},
		{name: "swap on", node: func(n *facts.Node) {
			n.Swap = []facts.SwapArea{{Path: "/dev/vda2", Type: "partition", SizeB: GiB}, {Path: "/swapfile", Type: "file", SizeB: 512 << 20}}
		},
			errors: []string{"swap is on (/dev/vda2, 1.0 GiB partition; /swapfile, 512 MiB file): kubelet refuses to start with swap on (failSwapOn) and castellan does not configure it for swap; turn it off: swapoff -a, remove the swap entries from /etc/fstab"}},
		{name: "clock 2 s ahead", node: func(n *facts.Node) { n.Clock.Offset, n.Clock.Bound = 2*time.Second, 50*time.Millisecond },
			warnings: []string{"the node's clock is 2s ahead of this machine's (±50ms, measured over the agent call): etcd warns above 1 s"}},
		{name: "clock 1.5 s off but the measurement cannot tell", node: func(n *facts.Node) { n.Clock.Offset, n.Clock.Bound = -1500*time.Millisecond, 600*time.Millisecond }},
		{name: "clock 10 min behind", node: func(n *facts.Node) { n.Clock.Offset, n.Clock.Bound = -10*time.Minute, 80*time.Millisecond },
			errors: []string{"the node's clock is 10m0s behind this machine's (±80ms, measured over the agent call): certificates break at this skew"}},
		{name: "clock 2 min behind", node: func(n *facts.Node) { n.Clock.Offset = -2 * time.Minute }, warnings: []string{"the node's clock is 2m0s behind"}},
		{name: "clock not measured", node: func(n *facts.Node) { n.Clock = facts.Clock{} }},
		{name: "BIOS", node: func(n *facts.Node) { n.Firmware = facts.Firmware{Type: facts.FirmwareBIOS, EventLog: true} },
			warnings: []string{"the node boots with BIOS firmware: its TPM measures the firmware and boot sector, not the boot loader or kernel, and PCR 7 holds no Secure Boot policy"}},
		{name: "Secure Boot off", node: func(n *facts.Node) { n.Firmware.SecureBoot = facts.SecureBootDisabled },
			warnings: []string{"Secure Boot is off: PCR 7 records it off, so a disk key bound to PCR 7 unlocks under any boot loader and kernel"}},
		{name: "Secure Boot setup mode", node: func(n *facts.Node) { n.Firmware.SecureBoot, n.Firmware.SetupMode = facts.SecureBootDisabled, true },
			warnings: []string{"Secure Boot is in setup mode (no Platform Key enrolled)"}},
		{name: "Secure Boot unknown", node: func(n *facts.Node) { n.Firmware.SecureBoot = facts.SecureBootUnknown },
			warnings: []string{"the Secure Boot state could not be read"}},
		{name: "no event log", node: func(n *facts.Node) { n.Firmware.EventLog = false },
			warnings: []string{"no TPM event log (/sys/kernel/security/tpm0/binary_bios_measurements)"}},
		{name: "no event log, TPM skipped", node: func(n *facts.Node) { n.Firmware.EventLog = false; n.TPM = facts.TPM{} },
			profile: func(p *profile.Profile) { p.Spec.Identity.TPM = profile.TPMInsecureSkip }},
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
