package preflight

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"castellan/installer/facts"
)

// tree is a fixture of a node's /proc, /sys and /dev under a temporary root.
type tree struct {
	t    *testing.T
	root string
}

func newTree(t *testing.T) *tree { return &tree{t: t, root: t.TempDir()} }

func (tr *tree) file(p, content string) {
	tr.t.Helper()
	full := filepath.Join(tr.root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		tr.t.Fatal(err)
	}
}

func (tr *tree) dir(p string) {
	tr.t.Helper()
	if err := os.MkdirAll(filepath.Join(tr.root, p), 0o755); err != nil {
		tr.t.Fatal(err)
	}
}

func (tr *tree) link(p, target string) {
	tr.t.Helper()
	full := filepath.Join(tr.root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	if err := os.Symlink(target, full); err != nil {
		tr.t.Fatal(err)
	}
}

// blockDev adds a block device to sysfs (size in bytes; part > 0 makes it
// partition part of disk) and its content as a sparse image at /dev/NAME.
func (tr *tree) blockDev(name, disk string, part int, major, minor int, size int64) {
	tr.t.Helper()
	base := "sys/block/" + name
	devPath := "../../devices/pci0000:00/virtio/block/" + name
	if part > 0 {
		base = "sys/block/" + disk + "/" + name
		devPath = "../../devices/pci0000:00/virtio/block/" + disk + "/" + name
		tr.file(base+"/partition", fmt.Sprint(part))
	}
	tr.file(base+"/size", fmt.Sprint(size/512))
	tr.file(base+"/ro", "0")
	tr.dir(base + "/holders")
	tr.dir("sys/class/block/" + name)
	tr.link(fmt.Sprintf("sys/dev/block/%d:%d", major, minor), devPath)
	tr.file("dev/"+name, "")
	if err := os.Truncate(filepath.Join(tr.root, "dev", name), size); err != nil {
		tr.t.Fatal(err)
	}
}

// put writes b at off of the image of /dev/NAME.
func (tr *tree) put(name string, off int64, b []byte) {
	tr.t.Helper()
	f, err := os.OpenFile(filepath.Join(tr.root, "dev", name), os.O_WRONLY, 0)
	if err != nil {
		tr.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		tr.t.Fatal(err)
	}
}

const procNetHeader = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"

// nodeTree is a node with one disk for each way a disk is in use or holds
// something, its ports held in each way, cgroup v2, UEFI with Secure Boot.
func nodeTree(t *testing.T) *tree {
	tr := newTree(t)
	tr.file("proc/sys/kernel/hostname", "node-1\n")
	tr.file("proc/sys/kernel/osrelease", "6.1.0-27-amd64\n")
	tr.file("etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n")
	tr.file("sys/devices/system/cpu/online", "0-1,3\n")
	tr.file("proc/meminfo", "MemTotal:        4014464 kB\nMemFree: 1 kB\n")
	tr.dir("run/systemd/system")
	const G = 1 << 30
	tr.blockDev("vda", "", 0, 254, 0, 20*G)
	tr.blockDev("vda1", "vda", 1, 254, 1, 20*G-(1<<20))
	tr.put("vda", 446, []byte{0x80, 0, 0, 0, 0x83})
	tr.put("vda", 510, []byte{0x55, 0xaa})
	tr.put("vda1", 1080, []byte{0x53, 0xef})
	tr.blockDev("vdb", "", 0, 254, 16, G) // blank, the data disk
	tr.link("dev/disk/by-id/virtio-data", "../../vdb")
	tr.link("dev/disk/by-path/pci-0000:00:05.0", "../../vdb")
	tr.blockDev("vdc", "", 0, 254, 32, G)
	tr.blockDev("vdc1", "vdc", 1, 254, 33, G/2)
	tr.dir("sys/block/vdc/vdc1/holders/dm-0") // an LVM volume or open LUKS on the partition
	tr.put("vdc", 512, []byte("EFI PART"))
	tr.blockDev("vdd", "", 0, 254, 48, G) // ext2 (no ext3/4 feature flags), mounted by device number
	tr.put("vdd", 1080, []byte{0x53, 0xef})
	tr.blockDev("vde", "", 0, 254, 64, G) // btrfs, mounted: anonymous device number
	tr.put("vde", 65600, []byte("_BHRfS_M"))
	tr.blockDev("vdf", "", 0, 254, 80, G) // active swap
	tr.put("vdf", 4086, []byte("SWAPSPACE2"))
	tr.blockDev("vdg", "", 0, 254, 96, G+3072) // md 1.0 member: superblock near the unaligned end
	sb := make([]byte, 256)
	copy(sb, mdMagic)
	binary.LittleEndian.PutUint32(sb[4:], 1)
	off := int64(G+3072)&^0xfff - 0x2000
	binary.LittleEndian.PutUint64(sb[144:], uint64(off)>>9)
	tr.put("vdg", off, sb)
	tr.blockDev("loop0", "", 0, 7, 0, G) // never a data disk unless named
	tr.blockDev("sr0", "", 0, 11, 0, G)
	tr.file("proc/self/mountinfo", strings.Join([]string{
		`22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw`,
		`30 22 254:48 / /srv/old\040data rw,relatime shared:5 - ext4 /dev/vdd rw`,
		`31 22 0:45 / /mnt/b rw,relatime shared:6 - btrfs /dev/vde rw,space_cache=v2`,
		`32 22 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - cgroup2 cgroup2 rw,nsdelegate`,
		`33 22 0:31 / /run rw shared:10 - tmpfs tmpfs rw`,
	}, "\n")+"\n")
	tr.file("proc/swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"+
		"/dev/vdf                                partition\t1048572\t\t0\t\t-2\n"+
		"/swap\\040file                           file\t\t524284\t\t1024\t\t-3\n")
	tr.file("sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
	tr.file("proc/self/net/tcp", procNetHeader+
		"   0: 00000000:192B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0\n"+
		// An established connection whose local port is 10250: it does
		// not keep kubelet from listening there.
		"   1: 0100007F:280A 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1\n")
	tr.file("proc/self/net/tcp6", procNetHeader+
		"   0: 00000000000000000000000001000000:2481 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 100 0 0 10 0\n")
	tr.file("proc/self/net/udp", procNetHeader+
		"  100: 00000000:CA9F 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1003 2 0000000000000000 0\n")
	tr.file("proc/self/net/udp6", procNetHeader)
	tr.file("proc/123/comm", "nginx\n")
	tr.link("proc/123/fd/3", "socket:[1001]")
	tr.link("proc/123/fd/4", "/dev/null")
	tr.file("proc/456/comm", "rke2\n")
	tr.link("proc/456/fd/7", "socket:[1004]")
	tr.file("sys/module/wireguard/initstate", "live\n")
	tr.dir("sys/firmware/efi")
	tr.file("sys/firmware/efi/efivars/SecureBoot-"+efiGlobal, "\x06\x00\x00\x00\x01")
	tr.file("sys/firmware/efi/efivars/SetupMode-"+efiGlobal, "\x06\x00\x00\x00\x00")
	tr.file("sys/kernel/security/tpm0/binary_bios_measurements", "\x00")
	tr.file("dev/tpmrm0", "")
	tr.file("sys/class/tpm/tpm0/tpm_version_major", "2\n")
	return tr
}

func fixtureGatherer(tr *tree) gatherer { return gatherer{root: tr.root, self: "proc/self"} }

// TestGatherFixture gathers a fixture node and checks every fact, so that
// each way a disk is in use (mounted by device number or by source,
// swap, held through a partition), each way a port is held or not, and
// each signature at its offset is read as it is.
func TestGatherFixture(t *testing.T) {
	tr := nodeTree(t)
	f := fixtureGatherer(tr).gather(FactsRequest{
		Ports: []facts.Port{
			{Port: 6443, Protocol: "tcp"}, {Port: 10250, Protocol: "tcp"}, {Port: 9345, Protocol: "tcp"},
			{Port: 51871, Protocol: "udp"}, {Port: 2379, Protocol: "tcp"},
		},
		Devices: []string{"/dev/disk/by-id/virtio-data", "/dev/loop0"},
	})
	if len(f.Problems) > 0 {
		t.Errorf("problems: %q", f.Problems)
	}
	if f.Hostname != "node-1" || f.Kernel != "6.1.0-27-amd64" || f.OS.ID != "debian" || f.OS.VersionID != "12" || f.CPUs != 3 || f.MemoryB != 4014464*1024 || !f.Systemd {
		t.Errorf("basics: %+v", f)
	}
	if f.TPM != (facts.TPM{Present: true, Device: "/dev/tpmrm0", Version: "2.0"}) || f.WireGuard != (facts.WireGuard{Available: true, Source: "loaded"}) {
		t.Errorf("TPM %+v WireGuard %+v", f.TPM, f.WireGuard)
	}
	type diskWant struct {
		mounts     []string
		holders    []string
		partitions []string
		sigs       string // type@offset[/device] ...
		aliases    []string
	}
	want := map[string]diskWant{
		"vda":   {mounts: []string{"/"}, partitions: []string{"vda1"}, sigs: "dos@510 ext2@1080/vda1"},
		"vdb":   {aliases: []string{"/dev/disk/by-id/virtio-data", "/dev/disk/by-path/pci-0000:00:05.0"}},
		"vdc":   {holders: []string{"dm-0"}, partitions: []string{"vdc1"}, sigs: "gpt@512"},
		"vdd":   {mounts: []string{"/srv/old data"}, sigs: "ext2@1080"},
		"vde":   {mounts: []string{"/mnt/b"}, sigs: "btrfs@65600"},
		"vdf":   {mounts: []string{"[SWAP]"}, sigs: "swap@4086"},
		"vdg":   {sigs: fmt.Sprintf("linux_raid_member@%d", int64(1<<30+3072)&^0xfff-0x2000)},
		"loop0": {},
	}
	var names []string
	for _, d := range f.Disks {
		names = append(names, d.Name)
		w, ok := want[d.Name]
		if !ok {
			continue
		}
		var sigs []string
		for _, s := range d.Signatures {
			x := fmt.Sprintf("%s@%d", s.Type, s.Offset)
			if s.Device != "" {
				x += "/" + s.Device
			}
			sigs = append(sigs, x)
		}
		if strings.Join(sigs, " ") != w.sigs || !reflect.DeepEqual(d.Mounts, w.mounts) || d.Mounted != (len(w.mounts) > 0) ||
			!reflect.DeepEqual(d.Holders, w.holders) || !reflect.DeepEqual(d.Partitions, w.partitions) ||
			!reflect.DeepEqual(d.Aliases, w.aliases) || d.ReadError != "" || d.Path != "/dev/"+d.Name {
			t.Errorf("%s: signatures %q mounts %q holders %q partitions %q aliases %q read error %q, want %+v",
				d.Name, sigs, d.Mounts, d.Holders, d.Partitions, d.Aliases, d.ReadError, w)
		}
		if len(d.Signatures) > 0 && d.Signature != d.Signatures[0].Type {
			t.Errorf("%s: Signature %q, first of %q", d.Name, d.Signature, sigs)
		}
	}
	// loop0 and sr0 are never data disks; loop0 would be listed had it been
	// named as a block device (the fixture's is a file: TestGatherLoopDevices).
	if got := strings.Join(names, " "); got != "vda vdb vdc vdd vde vdf vdg" {
		t.Errorf("disks = %s", got)
	}
	if vdg, _ := f.DiskNamed("vdg"); vdg.SizeB != 1<<30+3072 {
		t.Errorf("vdg size %d", vdg.SizeB)
	}
	wantPorts := []facts.Port{
		{Port: 6443, Protocol: "tcp", InUse: true, Process: "nginx"},
		{Port: 10250, Protocol: "tcp"},
		{Port: 9345, Protocol: "tcp", InUse: true, Process: "rke2"},
		{Port: 51871, Protocol: "udp", InUse: true},
		{Port: 2379, Protocol: "tcp"},
	}
	if !reflect.DeepEqual(f.Ports, wantPorts) {
		t.Errorf("ports = %+v\nwant %+v", f.Ports, wantPorts)
	}
	wantDevices := []facts.Device{
		{Path: "/dev/disk/by-id/virtio-data", Resolved: "/dev/vdb", Kind: facts.DeviceNotBlock, FileType: "regular file"},
		{Path: "/dev/loop0", Resolved: "/dev/loop0", Kind: facts.DeviceNotBlock, FileType: "regular file"},
	}
	if !reflect.DeepEqual(f.Devices, wantDevices) {
		t.Errorf("devices = %+v (fixture images are regular files; real block devices in TestGatherLoopDevices)", f.Devices)
	}
	if f.Cgroup.Mode != facts.CgroupUnified || strings.Join(f.Cgroup.Controllers, " ") != "cpuset cpu io memory hugetlb pids rdma misc" {
		t.Errorf("cgroup = %+v", f.Cgroup)
	}
	wantSwap := []facts.SwapArea{
		{Path: "/dev/vdf", Type: "partition", SizeB: 1048572 << 10, Priority: -2},
		{Path: "/swap file", Type: "file", SizeB: 524284 << 10, UsedB: 1024 << 10, Priority: -3},
	}
	if !reflect.DeepEqual(f.Swap, wantSwap) {
		t.Errorf("swap = %+v", f.Swap)
	}
	if f.Firmware != (facts.Firmware{Type: facts.FirmwareUEFI, SecureBoot: facts.SecureBootEnabled, EventLog: true}) {
		t.Errorf("firmware = %+v", f.Firmware)
	}
	if f.Clock.NodeReceived.IsZero() || f.Clock.NodeSent.Before(f.Clock.NodeReceived) {
		t.Errorf("clock stamps = %+v", f.Clock)
	}
}

// TestGatherFirmwareFixtures covers the boot states a node can be in.
func TestGatherFirmwareFixtures(t *testing.T) {
	tests := []struct {
		name  string
		setup func(*tree)
		want  facts.Firmware
		probs int
	}{
		{"BIOS with a TPM event log", func(tr *tree) { tr.file("sys/kernel/security/tpm0/binary_bios_measurements", "x") },
			facts.Firmware{Type: facts.FirmwareBIOS, EventLog: true}, 0},
		{"BIOS, no TPM", func(tr *tree) { tr.dir("sys/kernel/security") }, facts.Firmware{Type: facts.FirmwareBIOS}, 0},
		{"UEFI, Secure Boot off", func(tr *tree) {
			tr.file("sys/firmware/efi/efivars/SecureBoot-"+efiGlobal, "\x06\x00\x00\x00\x00")
		}, facts.Firmware{Type: facts.FirmwareUEFI, SecureBoot: facts.SecureBootDisabled}, 0},
		{"UEFI, setup mode", func(tr *tree) {
			tr.file("sys/firmware/efi/efivars/SecureBoot-"+efiGlobal, "\x06\x00\x00\x00\x00")
			tr.file("sys/firmware/efi/efivars/SetupMode-"+efiGlobal, "\x06\x00\x00\x00\x01")
		}, facts.Firmware{Type: facts.FirmwareUEFI, SecureBoot: facts.SecureBootDisabled, SetupMode: true}, 0},
		{"UEFI, variable missing", func(tr *tree) { tr.dir("sys/firmware/efi/efivars") },
			facts.Firmware{Type: facts.FirmwareUEFI, SecureBoot: facts.SecureBootUnknown}, 1},
		{"UEFI, variable garbled", func(tr *tree) { tr.file("sys/firmware/efi/efivars/SecureBoot-"+efiGlobal, "\x06\x00\x00\x00\x07") },
			facts.Firmware{Type: facts.FirmwareUEFI, SecureBoot: facts.SecureBootUnknown}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTree(t)
			tt.setup(tr)
			got, probs := fixtureGatherer(tr).firmware()
			if got != tt.want || len(probs) != tt.probs {
				t.Errorf("firmware = %+v %q, want %+v and %d problem(s)", got, probs, tt.want, tt.probs)
			}
		})
	}
}

// TestCgroupModes reads each cgroup layout systemd makes from a mount table.
func TestCgroupModes(t *testing.T) {
	tests := []struct {
		name, mountinfo, want string
	}{
		{"unified", "32 22 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw", facts.CgroupUnified},
		{"hybrid", "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n" +
			"32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n" +
			"41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw", facts.CgroupHybrid},
		{"legacy", "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n" +
			"32 31 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n" +
			"40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd", facts.CgroupLegacy},
		{"cgroup2 mounted over a hybrid layout", "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n" +
			"32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n" +
			"50 31 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw", facts.CgroupUnified},
		{"nothing mounted", "22 1 254:1 / / rw - ext4 /dev/vda1 rw", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := fixtureGatherer(newTree(t))
			if got := g.cgroup(parseMountinfo([]byte(tt.mountinfo))); got.Mode != tt.want {
				t.Errorf("mode = %q, want %q", got.Mode, tt.want)
			}
		})
	}
}

// TestResolveFixture follows links the way the node's kernel would, inside
// the gatherer's root.
func TestResolveFixture(t *testing.T) {
	tr := newTree(t)
	tr.file("dev/vdb", "")
	tr.link("dev/disk/by-id/rel", "../../vdb")
	tr.link("dev/disk/by-id/abs", "/dev/vdb")
	tr.link("dev/disk/by-id/chain", "abs")
	tr.link("dev/loop-a", "loop-b")
	tr.link("dev/loop-b", "loop-a")
	tr.link("dev/dangling", "nothing-here")
	g := fixtureGatherer(tr)
	for _, p := range []string{"/dev/disk/by-id/rel", "/dev/disk/by-id/abs", "/dev/disk/by-id/chain", "/dev/vdb/", "/dev/disk/../vdb"} {
		if got, err := g.resolve(p); got != "/dev/vdb" || err != nil {
			t.Errorf("resolve(%s) = %q, %v", p, got, err)
		}
	}
	if _, err := g.resolve("/dev/loop-a"); err == nil {
		t.Error("a loop of links resolved")
	}
	if d := g.device("/dev/loop-a"); d.Kind != facts.DeviceMissing || !strings.Contains(d.Error, "too many levels of symbolic links") {
		t.Errorf("device(loop) = %+v", d)
	}
	if d := g.device("/dev/dangling"); d.Kind != facts.DeviceMissing || d.Error != "" {
		t.Errorf("device(dangling) = %+v", d)
	}
}
