package preflight

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"castellan/installer/facts"
)

// Tests against real kernel objects: loop devices with real partition
// tables and filesystems, real mounts in a mount namespace of one thread,
// real swap, real sockets in a network namespace of one thread, real cgroup
// mounts. They need root; under make test they fail without it.

func randName(t *testing.T) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func liveGatherer() gatherer { return gatherer{root: "/", self: "proc/self", live: true} }

// TestGatherLoopDevices builds a disk with a GPT, a btrfs and a swap
// partition on a loop device and checks what the node side makes of it and
// of paths that are not whole disks; then uses it as swap and mounts it, for
// real, and checks the disk is seen in use each way.
func TestGatherLoopDevices(t *testing.T) {
	needRoot(t)
	for _, c := range []string{"parted", "mkfs.btrfs", "mkswap", "swapon", "blkid"} {
		needCommand(t, c)
	}
	img := newImage(t, 300<<20)
	run(t, "parted", "-s", img, "mklabel", "gpt", "mkpart", "data", "btrfs", "1MiB", "201MiB", "mkpart", "sw", "linux-swap", "201MiB", "233MiB")
	dev := loopDevice(t, img, true)
	p1, p2 := dev+"p1", dev+"p2"
	run(t, "mkfs.btrfs", "-q", "-f", "-L", "old-data", p1)
	run(t, "mkswap", "-L", "sw", p2)
	name := filepath.Base(dev)
	link := "/dev/shm/castellan-preflight-" + randName(t)
	if err := os.Symlink(dev, link); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(link) })
	file := "/dev/shm/castellan-preflight-" + randName(t)
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(file) })
	req := FactsRequest{Devices: []string{dev, p1, link, "/dev/zero", file, "/dev/stdin", "/dev/castellan-no-such-disk", dev + "/"}}

	f := liveGatherer().gather(req)
	wantDevices := []facts.Device{
		{Path: dev, Resolved: dev, Kind: facts.DeviceDisk, Disk: name},
		{Path: p1, Resolved: p1, Kind: facts.DevicePartition, Disk: name, Partition: 1},
		{Path: link, Resolved: dev, Kind: facts.DeviceDisk, Disk: name},
		{Path: "/dev/zero", Resolved: "/dev/zero", Kind: facts.DeviceNotBlock, FileType: "character device"},
		{Path: file, Resolved: file, Kind: facts.DeviceNotBlock, FileType: "regular file"},
	}
	if !reflect.DeepEqual(f.Devices[:5], wantDevices) {
		t.Errorf("devices =\n%+v\nwant\n%+v", f.Devices[:5], wantDevices)
	}
	if d := f.Devices[5]; d.Kind != facts.DeviceNotBlock || d.FileType == "" {
		t.Errorf("/dev/stdin = %+v, want not a block device", d)
	}
	if d := f.Devices[6]; d.Kind != facts.DeviceMissing {
		t.Errorf("missing path = %+v", d)
	}
	// "/dev/loopN/" is the same disk, so that naming it twice is refused.
	if d := f.Devices[7]; d.Kind != facts.DeviceDisk || d.Disk != name {
		t.Errorf("%s/ = %+v", dev, d)
	}
	disk, ok := f.DiskNamed(name)
	if !ok {
		t.Fatalf("%s not listed although named: %+v", name, f.Disks)
	}
	uuid := func(p string) string { return strings.TrimSpace(run(t, "blkid", "-p", "-s", "UUID", "-o", "value", p)) }
	wantSigs := []facts.Signature{
		{Type: "gpt", Offset: 512},
		{Type: "btrfs", Device: name + "p1", Offset: 65600, UUID: uuid(p1), Label: "old-data"},
		{Type: "swap", Device: name + "p2", Offset: 4086, Version: "1", UUID: uuid(p2), Label: "sw"},
	}
	if disk.SizeB != 300<<20 || !reflect.DeepEqual(disk.Partitions, []string{name + "p1", name + "p2"}) ||
		!reflect.DeepEqual(disk.Signatures, wantSigs) || disk.Signature != "gpt" || disk.Mounted || disk.Busy || disk.ReadError != "" || len(disk.Holders) != 0 {
		t.Fatalf("disk = %+v\nwant signatures %+v", disk, wantSigs)
	}

	// In use as swap.
	run(t, "swapon", p2)
	swapOn := true
	swapOff := func() {
		if swapOn {
			run(t, "swapoff", p2)
			swapOn = false
		}
	}
	t.Cleanup(swapOff)
	f = liveGatherer().gather(req)
	disk, _ = f.DiskNamed(name)
	if !disk.Mounted || !reflect.DeepEqual(disk.Mounts, []string{"[SWAP]"}) || !disk.Busy {
		t.Errorf("with swap on %s: %+v", p2, disk)
	}
	if !slices.ContainsFunc(f.Swap, func(s facts.SwapArea) bool { return s.Path == p2 && s.Type == "partition" && s.SizeB > 30<<20 }) {
		t.Errorf("swap areas = %+v, want %s", f.Swap, p2)
	}
	swapOff()

	// Mounted in a mount namespace: seen there by its mount point (btrfs
	// shows an anonymous device number: the source path tells), and from the
	// test process's own namespace, which does not show the mount, by the
	// kernel's refusal of an exclusive open.
	mnt := t.TempDir()
	var errs []string
	inThreadNamespaces(t, unix.CLONE_NEWNS, func() {
		if err := unix.Mount(p1, mnt, "btrfs", 0, ""); err != nil {
			panic(fmt.Sprintf("mount %s: %v", p1, err))
		}
		defer unix.Unmount(mnt, 0)
		inside := gatherer{root: "/", self: "proc/thread-self", live: true}.gather(req)
		d, _ := inside.DiskNamed(name)
		if !reflect.DeepEqual(d.Mounts, []string{mnt}) || !d.Mounted || !d.Busy {
			errs = append(errs, fmt.Sprintf("inside the namespace: %+v", d))
		}
		outside := liveGatherer().gather(req)
		d, _ = outside.DiskNamed(name)
		if d.Mounted || !d.Busy {
			errs = append(errs, fmt.Sprintf("from the test's namespace: mounted %v at %q, busy %v, want false, true", d.Mounted, d.Mounts, d.Busy))
		}
	})
	for _, e := range errs {
		t.Error(e)
	}
}

// TestGatherPortsInNetns holds ports with real sockets in a network
// namespace of one thread and reads them back as the node side does.
func TestGatherPortsInNetns(t *testing.T) {
	want := []facts.Port{
		{Port: 6443, Protocol: "tcp"}, {Port: 10250, Protocol: "tcp"}, {Port: 9345, Protocol: "tcp"},
		{Port: 51871, Protocol: "udp"}, {Port: 2379, Protocol: "tcp"}, {Port: 6443, Protocol: "udp"},
	}
	var got, gotProc []facts.Port
	var listening []socket
	var setupErr, diagErr error
	inThreadNamespaces(t, unix.CLONE_NEWNET, func() {
		var closers []func() error
		defer func() {
			for _, c := range closers {
				c()
			}
		}()
		ln, err := net.Listen("tcp4", "127.0.0.1:6443")
		if err != nil {
			setupErr = err
			return
		}
		closers = append(closers, ln.Close)
		// A connection from local port 10250: established, not listening.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 10250}}
		c, err := d.Dial("tcp4", "127.0.0.1:6443")
		if err != nil {
			setupErr = err
			return
		}
		closers = append(closers, c.Close)
		s, err := ln.Accept()
		if err != nil {
			setupErr = err
			return
		}
		closers = append(closers, s.Close)
		ln6, err := net.Listen("tcp6", "[::1]:9345")
		if err != nil {
			setupErr = err
			return
		}
		closers = append(closers, ln6.Close)
		u, err := net.ListenPacket("udp4", "0.0.0.0:51871")
		if err != nil {
			setupErr = err
			return
		}
		closers = append(closers, u.Close)
		// Both ways the node side reads sockets: sock_diag (live) and
		// /proc/net (a node without sock_diag), each asked directly too,
		// so a failing sock_diag cannot hide behind the fallback.
		got = gatherer{root: "/", self: "proc/thread-self", live: true}.ports(want)
		gotProc = gatherer{root: "/", self: "proc/thread-self"}.ports(want)
		listening, diagErr = sockDiag(unix.AF_INET, unix.IPPROTO_TCP, 1<<tcpListen)
	})
	if setupErr != nil {
		t.Fatal(setupErr)
	}
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	me := strings.TrimSpace(string(comm))
	expect := []facts.Port{
		{Port: 6443, Protocol: "tcp", InUse: true, Process: me},
		{Port: 10250, Protocol: "tcp"},
		{Port: 9345, Protocol: "tcp", InUse: true, Process: me},
		{Port: 51871, Protocol: "udp", InUse: true, Process: me},
		{Port: 2379, Protocol: "tcp"},
		{Port: 6443, Protocol: "udp"},
	}
	if !reflect.DeepEqual(got, expect) {
		t.Errorf("ports (sock_diag) =\n%+v\nwant\n%+v", got, expect)
	}
	if !reflect.DeepEqual(gotProc, expect) {
		t.Errorf("ports (/proc/net) =\n%+v\nwant\n%+v", gotProc, expect)
	}
	if diagErr != nil || len(listening) != 1 || listening[0].Local != netip.MustParseAddrPort("127.0.0.1:6443") || listening[0].State != tcpListen || listening[0].Inode == 0 {
		t.Errorf("sock_diag's listening IPv4 TCP sockets: %+v, %v; want 127.0.0.1:6443 alone", listening, diagErr)
	}
}

// TestGatherCgroupMounts mounts each cgroup layout at /sys/fs/cgroup in a
// mount namespace of one thread and reads the mode back.
func TestGatherCgroupMounts(t *testing.T) {
	g := gatherer{root: "/", self: "proc/thread-self", live: true}
	read := func() facts.Cgroup {
		mi, err := os.ReadFile("/proc/thread-self/mountinfo")
		if err != nil {
			panic(err)
		}
		return g.cgroup(parseMountinfo(mi))
	}
	var errs []string
	check := func(what string, got facts.Cgroup, mode string) {
		if got.Mode != mode {
			errs = append(errs, fmt.Sprintf("%s: mode %q, want %q", what, got.Mode, mode))
		}
	}
	mount := func(src, dir, fstype, opts string) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			panic(err)
		}
		if err := unix.Mount(src, dir, fstype, 0, opts); err != nil {
			panic(fmt.Sprintf("mount %s at %s: %v", fstype, dir, err))
		}
	}
	inThreadNamespaces(t, unix.CLONE_NEWNS, func() {
		mount("cgroup2", "/sys/fs/cgroup", "cgroup2", "")
		c := read()
		check("cgroup2 at /sys/fs/cgroup", c, facts.CgroupUnified)
		ctl, _ := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
		if strings.Join(c.Controllers, " ") != strings.Join(strings.Fields(string(ctl)), " ") {
			errs = append(errs, fmt.Sprintf("controllers %q, the file says %q", c.Controllers, ctl))
		}
		mount("tmpfs", "/sys/fs/cgroup", "tmpfs", "mode=755")
		mount("cgroup", "/sys/fs/cgroup/castellan-test", "cgroup", "none,name=castellan-test")
		check("tmpfs with a v1 hierarchy", read(), facts.CgroupLegacy)
		mount("cgroup2", "/sys/fs/cgroup/unified", "cgroup2", "")
		check("tmpfs with v1 and v2 at unified", read(), facts.CgroupHybrid)
		for _, d := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup/castellan-test"} {
			unix.Unmount(d, 0)
		}
	})
	for _, e := range errs {
		t.Error(e)
	}
}

// TestWithMountPrivate mounts securityfs the way the gatherer does where it
// is not mounted, reads it, and checks the test process's mount table is
// as it was.
func TestWithMountPrivate(t *testing.T) {
	needRoot(t)
	before := mountinfoOfThisProcess(t)
	var names []string
	err := liveGatherer().withMount("securityfs", securityfsDir, securityfsMagc, func(dir string) error {
		entries, err := os.ReadDir(dir)
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(names, "lsm") {
		t.Errorf("securityfs holds %q, want lsm among them", names)
	}
	if after := mountinfoOfThisProcess(t); after != before {
		t.Errorf("the mount table changed:\nbefore\n%s\nafter\n%s", before, after)
	}
}

// TestGatherThisMachine gathers the facts of the machine the test runs on
// and compares them with what the kernel says through other means.
func TestGatherThisMachine(t *testing.T) {
	before := mountinfoOfThisProcess(t)
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
	if f.CPUs < 1 || f.MemoryB < 64<<20 || f.OS.ID == "" {
		t.Errorf("cpus %d memory %d os %+v", f.CPUs, f.MemoryB, f.OS)
	}
	if len(f.Space) != 2 || f.Space[1].TotalB == 0 || f.Space[1].Path != "/var/lib/castellan-does-not-exist" {
		t.Errorf("space of a missing dir should be its parent's: %+v", f.Space)
	}
	_, tpmErr := os.Stat("/dev/tpmrm0")
	if f.TPM.Present != (tpmErr == nil) {
		t.Errorf("TPM present = %v, /dev/tpmrm0 stat: %v", f.TPM.Present, tpmErr)
	}
	// Kubelet's own test of the cgroup version: is /sys/fs/cgroup a cgroup2 filesystem.
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err == nil {
		if v2 := st.Type == unix.CGROUP2_SUPER_MAGIC; v2 != (f.Cgroup.Mode == facts.CgroupUnified) {
			t.Errorf("cgroup mode %q, statfs says cgroup2: %v", f.Cgroup.Mode, v2)
		}
	}
	_, efiErr := os.Stat("/sys/firmware/efi")
	if (f.Firmware.Type == facts.FirmwareUEFI) != (efiErr == nil) {
		t.Errorf("firmware %q, /sys/firmware/efi: %v", f.Firmware.Type, efiErr)
	}
	if swaps, _ := os.ReadFile("/proc/swaps"); (len(f.Swap) == 0) != (strings.Count(string(swaps), "\n") <= 1) {
		t.Errorf("swap = %+v, /proc/swaps:\n%s", f.Swap, swaps)
	}
	if after := mountinfoOfThisProcess(t); after != before {
		t.Errorf("gathering changed the mount table:\nbefore\n%s\nafter\n%s", before, after)
	}
	entries, _ := filepath.Glob("/sys/block/*")
	if len(entries) > 0 && os.Geteuid() == 0 && len(f.Disks) == 0 {
		t.Errorf("no disks found although /sys/block has %d entries", len(entries))
	}
}
