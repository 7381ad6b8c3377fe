package preflight

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"castellan/installer/facts"
)

// FactsRequest is the input of the preflight.facts agent operation.
type FactsRequest struct {
	// Ports to report on (free or in use, and by whom).
	Ports []facts.Port `json:"ports"`
	// SpacePaths are the directories whose filesystems' free space is reported.
	SpacePaths []string `json:"spacePaths"`
	// Devices are device paths to resolve on the node (the profile's data
	// disks); whole disks among them are reported in Disks even where
	// preflight would not list them (loop, md, dm).
	Devices []string `json:"devices,omitempty"`
}

// gatherer reads facts from a node's /proc, /sys, /dev and /etc under root
// ("/" on a node; a fixture tree in tests). Nothing is spawned: every fact is
// a file read or a syscall, so a whole gathering costs milliseconds.
type gatherer struct {
	root string
	// self is the /proc directory of the gathering task, relative to root:
	// "proc/self" on a node. Tests that gather from inside namespaces of
	// their own OS thread use "proc/thread-self".
	self string
	// live adds what only syscalls can tell (statfs, adjtimex, mounting
	// efivarfs or securityfs privately); off for fixture trees.
	live bool
}

func (g gatherer) path(p string) string { return filepath.Join(g.root, p) }

func (g gatherer) read(p string) (string, error) {
	b, err := os.ReadFile(g.path(p))
	return strings.TrimSpace(string(b)), err
}

// Gather collects the facts of this machine. What cannot be read is listed
// in Problems; the rest is returned all the same.
func Gather(req FactsRequest) facts.Node {
	return gatherer{root: "/", self: "proc/self", live: true}.gather(req)
}

func (g gatherer) gather(req FactsRequest) facts.Node {
	var n facts.Node
	n.Clock.NodeReceived = time.Now() // T2 (T1 and T4 are the installer's: the engine times the exec)
	problem := func(format string, a ...any) { n.Problems = append(n.Problems, fmt.Sprintf(format, a...)) }
	n.Hostname, _ = g.read("proc/sys/kernel/hostname")
	n.Kernel, _ = g.read("proc/sys/kernel/osrelease")
	n.Arch = runtime.GOARCH
	n.OS = g.osRelease()
	n.CPUs = g.cpus()
	n.MemoryB = g.memTotal()
	_, err := os.Stat(g.path("run/systemd/system"))
	n.Systemd = err == nil
	mi, err := os.ReadFile(g.path(g.self + "/mountinfo"))
	if err != nil {
		problem("reading the mount table: %v", err)
	}
	mounts := parseMountinfo(mi)
	swaps, err := os.ReadFile(g.path("proc/swaps"))
	if err != nil {
		problem("reading the active swap areas: %v", err)
	}
	swapLines := parseSwaps(swaps)
	for _, s := range swapLines {
		n.Swap = append(n.Swap, facts.SwapArea{Path: s.Path, Type: s.Type, SizeB: s.SizeKiB << 10, UsedB: s.UsedKiB << 10, Priority: s.Priority})
	}
	include := map[string]bool{}
	for _, p := range req.Devices {
		d := g.device(p)
		n.Devices = append(n.Devices, d)
		if d.Disk != "" {
			include[d.Disk] = true
		}
	}
	disks, err := g.disks(include, mounts, swapLines)
	if err != nil {
		problem("listing disks: %v", err)
	}
	n.Disks = disks
	n.TPM = g.tpm()
	n.WireGuard = g.wireguard(n.Kernel)
	n.Cgroup = g.cgroup(mounts)
	fw, ps := g.firmware()
	n.Firmware = fw
	for _, p := range ps {
		problem("%s", p)
	}
	if g.live {
		n.Time = timeSync()
		for _, p := range req.SpacePaths {
			n.Space = append(n.Space, freeSpace(p))
		}
	}
	n.Ports = g.ports(req.Ports)
	n.Clock.NodeSent = time.Now() // T3
	return n
}

func (g gatherer) osRelease() facts.OS {
	var o facts.OS
	data, err := os.ReadFile(g.path("etc/os-release"))
	if err != nil {
		data, _ = os.ReadFile(g.path("usr/lib/os-release"))
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"'`)
		switch k {
		case "ID":
			o.ID = v
		case "VERSION_ID":
			o.VersionID = v
		case "PRETTY_NAME":
			o.PrettyName = v
		}
	}
	return o
}

// cpus counts online CPUs from /sys (cpu lists like "0-3,6").
func (g gatherer) cpus() int {
	s, err := g.read("sys/devices/system/cpu/online")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 == nil && err2 == nil && b >= a {
			n += b - a + 1
		}
	}
	return n
}

func (g gatherer) memTotal() uint64 {
	f, err := os.Open(g.path("proc/meminfo"))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, _ := strconv.ParseUint(fields[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func (g gatherer) tpm() facts.TPM {
	t := facts.TPM{}
	if _, err := os.Stat(g.path("dev/tpmrm0")); err == nil {
		t.Present, t.Device = true, "/dev/tpmrm0"
	}
	if v, err := g.read("sys/class/tpm/tpm0/tpm_version_major"); err == nil {
		t.Version = v + ".0"
	} else if t.Present {
		t.Version = "2.0" // only TPM 2.0 has a resource manager device
	}
	return t
}

func (g gatherer) wireguard(kernel string) facts.WireGuard {
	if _, err := os.Stat(g.path("sys/module/wireguard")); err == nil {
		if _, err := os.Stat(g.path("sys/module/wireguard/initstate")); err == nil {
			return facts.WireGuard{Available: true, Source: "loaded"}
		}
		return facts.WireGuard{Available: true, Source: "builtin"}
	}
	modDir := "lib/modules/" + kernel
	if b, err := os.ReadFile(g.path(modDir + "/modules.builtin")); err == nil && bytes.Contains(b, []byte("/wireguard.ko")) {
		return facts.WireGuard{Available: true, Source: "builtin"}
	}
	if b, err := os.ReadFile(g.path(modDir + "/modules.dep")); err == nil && bytes.Contains(b, []byte("/wireguard.ko")) {
		return facts.WireGuard{Available: true, Source: "module"}
	}
	return facts.WireGuard{}
}

// timeSync asks the kernel whether the clock is synchronised (what
// timedatectl's NTPSynchronized reports).
func timeSync() facts.TimeSync {
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	if err != nil {
		return facts.TimeSync{Source: "unknown: " + err.Error()}
	}
	return timeSyncFrom(state, tx.Status, tx.Maxerror)
}

// timeSyncFrom reads adjtimex(2)'s answer: the clock is synchronised when
// the state is not TIME_ERROR and STA_UNSYNC is clear (the test systemd's
// timedatectl and chrony's tracking use).
func timeSyncFrom(state int, status int32, maxErrorUs int64) facts.TimeSync {
	const staUnsync = 0x0040 // STA_UNSYNC, include/uapi/linux/timex.h
	ts := facts.TimeSync{Synchronized: state != unix.TIME_ERROR && status&staUnsync == 0, Source: "adjtimex"}
	if ts.Synchronized {
		ts.MaxErrorUs = maxErrorUs
	}
	return ts
}

func freeSpace(p string) facts.FreeSpace {
	// The directory may not exist yet (first install): measure its nearest parent.
	for q := p; ; q = filepath.Dir(q) {
		var st unix.Statfs_t
		if err := unix.Statfs(q, &st); err == nil {
			return facts.FreeSpace{Path: p, FreeB: st.Bavail * uint64(st.Bsize), TotalB: st.Blocks * uint64(st.Bsize)}
		}
		if q == "/" {
			return facts.FreeSpace{Path: p}
		}
	}
}

// ports reports which of the wanted ports are in use, from the gathering
// task's network namespace (/proc/self/net) and the socket inodes in
// /proc/*/fd. A TCP port is in use when a socket listens on it (an
// established connection's local port does not stop a server binding it);
// a UDP port when any socket is bound to it.
func (g gatherer) ports(want []facts.Port) []facts.Port {
	if len(want) == 0 {
		return nil
	}
	inUse := map[string]uint64{} // "tcp/6443" -> socket inode
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		tcp := strings.HasPrefix(proto, "tcp")
		for _, s := range g.sockets(proto) {
			if tcp && s.State != tcpListen {
				continue
			}
			inUse[fmt.Sprintf("%s/%d", strings.TrimSuffix(proto, "6"), s.Local.Port())] = s.Inode
		}
	}
	out := make([]facts.Port, 0, len(want))
	inodes := make([]uint64, len(want)) // of out[i], when in use
	held := map[uint64]bool{}
	for i, p := range want {
		inodes[i], p.InUse = inUse[fmt.Sprintf("%s/%d", p.Protocol, p.Port)]
		if p.InUse {
			held[inodes[i]] = true
		}
		out = append(out, p)
	}
	owners := g.socketOwners(held)
	for i := range out {
		if out[i].InUse {
			out[i].Process = owners[inodes[i]]
		}
	}
	return out
}

// sockets lists the sockets of proto ("tcp", "tcp6", "udp", "udp6") in the
// gathering task's network namespace that ports needs: listening ones for
// TCP, all for UDP. Live, from sock_diag (which walks only the listening
// TCP sockets); from /proc/net/PROTO for a fixture tree, or when sock_diag
// is not available. What cannot be read is no socket.
func (g gatherer) sockets(proto string) []socket {
	if g.live {
		family, protocol, states := uint8(unix.AF_INET), uint8(unix.IPPROTO_TCP), uint32(1<<tcpListen)
		if strings.HasSuffix(proto, "6") {
			family = unix.AF_INET6
		}
		if strings.HasPrefix(proto, "udp") {
			protocol, states = unix.IPPROTO_UDP, ^uint32(0)
		}
		if socks, err := sockDiag(family, protocol, states); err == nil {
			return socks
		}
	}
	data, err := os.ReadFile(g.path(g.self + "/net/" + proto))
	if err != nil {
		return nil
	}
	return parseProcNet(data)
}

// socketOwners maps the socket inodes in want to the command names of the
// processes holding them, from the links in /proc/PID/fd (proc(5)). It
// walks /proc only while an inode in want is still unnamed: nothing when
// want is empty (no wanted port is in use, the common case), which keeps a
// node's cost independent of how many processes and open files it has.
func (g gatherer) socketOwners(want map[uint64]bool) map[uint64]string {
	out := map[uint64]string{}
	if len(want) == 0 {
		return out
	}
	procs, err := os.ReadDir(g.path("proc"))
	if err != nil {
		return out
	}
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		fds, err := os.ReadDir(g.path("proc/" + p.Name() + "/fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			link, err := os.Readlink(g.path("proc/" + p.Name() + "/fd/" + fd.Name()))
			if err != nil || !strings.HasPrefix(link, "socket:[") {
				continue
			}
			inode, err := strconv.ParseUint(strings.Trim(link[7:], "[]"), 10, 64)
			if err != nil || !want[inode] {
				continue
			}
			if _, named := out[inode]; !named {
				comm, _ := g.read("proc/" + p.Name() + "/comm")
				out[inode] = comm
			}
		}
		if len(out) == len(want) {
			break
		}
	}
	return out
}
