package preflight

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"castellan/installer/facts"
)

// FactsRequest is the input of the preflight.facts agent operation.
type FactsRequest struct {
	// Ports to report on (free or in use, and by whom).
	Ports []facts.Port `json:"ports"`
	// SpacePaths are the directories whose filesystems' free space is reported.
	SpacePaths []string `json:"spacePaths"`
}

// gatherer reads facts from a node's /proc, /sys, /dev and /etc under root
// ("/" on a node; a fixture tree in tests). Nothing is spawned: every fact is
// a file read or a syscall, so a whole gathering costs milliseconds.
type gatherer struct {
	root string
}

func (g gatherer) path(p string) string { return filepath.Join(g.root, p) }

func (g gatherer) read(p string) (string, error) {
	b, err := os.ReadFile(g.path(p))
	return strings.TrimSpace(string(b)), err
}

// Gather collects the facts of this machine. What cannot be read is listed
// in Problems; the rest is returned all the same.
func Gather(req FactsRequest) facts.Node {
	return gatherer{root: "/"}.gather(req, true)
}

// gather collects facts; live adds what only syscalls can tell (statfs, adjtimex).
func (g gatherer) gather(req FactsRequest, live bool) facts.Node {
	var n facts.Node
	n.Hostname, _ = g.read("proc/sys/kernel/hostname")
	n.Kernel, _ = g.read("proc/sys/kernel/osrelease")
	n.Arch = runtime.GOARCH
	n.OS = g.osRelease()
	n.CPUs = g.cpus()
	n.MemoryB = g.memTotal()
	_, err := os.Stat(g.path("run/systemd/system"))
	n.Systemd = err == nil
	disks, err := g.disks()
	if err != nil {
		n.Problems = append(n.Problems, fmt.Sprintf("listing disks: %v", err))
	}
	n.Disks = disks
	n.TPM = g.tpm()
	n.WireGuard = g.wireguard(n.Kernel)
	if live {
		n.Time = timeSync()
		for _, p := range req.SpacePaths {
			n.Space = append(n.Space, freeSpace(p))
		}
	}
	n.Ports = g.ports(req.Ports)
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

// skipDisk leaves out devices that are never data disks.
func skipDisk(name string) bool {
	for _, p := range []string{"loop", "ram", "zram", "dm-", "sr", "fd", "md", "nbd"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func (g gatherer) disks() ([]facts.Disk, error) {
	entries, err := os.ReadDir(g.path("sys/block"))
	if err != nil {
		return nil, err
	}
	mounted := g.mountedDevices()
	aliases := g.diskAliases()
	var out []facts.Disk
	for _, e := range entries {
		name := e.Name()
		if skipDisk(name) {
			continue
		}
		base := "sys/block/" + name
		d := facts.Disk{Name: name, Path: "/dev/" + name, Aliases: aliases[name]}
		if s, err := g.read(base + "/size"); err == nil {
			sectors, _ := strconv.ParseUint(s, 10, 64)
			d.SizeB = sectors * 512
		}
		ro, _ := g.read(base + "/ro")
		d.ReadOnly = ro == "1"
		devs := []string{name}
		if subs, err := os.ReadDir(g.path(base)); err == nil {
			for _, s := range subs {
				if _, err := os.Stat(g.path(base + "/" + s.Name() + "/partition")); err == nil {
					d.Partitions = append(d.Partitions, s.Name())
					devs = append(devs, s.Name())
				}
			}
		}
		for _, dev := range devs {
			dir := base
			if dev != name {
				dir = base + "/" + dev
			}
			if hs, err := os.ReadDir(g.path(dir + "/holders")); err == nil {
				for _, h := range hs {
					d.Holders = append(d.Holders, h.Name())
				}
			}
			if mounted[dev] {
				d.Mounted = true
			}
		}
		d.Signature = g.signature(d)
		out = append(out, d)
	}
	return out, nil
}

func (g gatherer) signature(d facts.Disk) string {
	f, err := os.Open(g.path("dev/" + d.Name))
	if err != nil {
		return "unreadable"
	}
	defer f.Close()
	head := make([]byte, headBytes)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "unreadable"
	}
	head = head[:n]
	var tail []byte
	if d.SizeB > headBytes {
		off := int64(d.SizeB) - tailBytes
		if off < headBytes {
			off = headBytes
		}
		tail = make([]byte, int64(d.SizeB)-off)
		if n, err := f.ReadAt(tail, off); err != nil && !errors.Is(err, io.EOF) {
			return "unreadable"
		} else {
			tail = tail[:n]
		}
	}
	return DetectSignature(head, tail)
}

// mountedDevices returns the kernel names of mounted block devices, from
// /proc/self/mountinfo's major:minor and /sys/dev/block.
func (g gatherer) mountedDevices() map[string]bool {
	out := map[string]bool{}
	data, err := os.ReadFile(g.path("proc/self/mountinfo"))
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		link, err := os.Readlink(g.path("sys/dev/block/" + f[2]))
		if err != nil {
			continue
		}
		out[filepath.Base(link)] = true
	}
	// Swap counts as in use.
	if swaps, err := os.ReadFile(g.path("proc/swaps")); err == nil {
		for _, line := range strings.Split(string(swaps), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "/dev/") {
				out[filepath.Base(f[0])] = true
			}
		}
	}
	return out
}

// diskAliases maps a disk's kernel name to the by-id and by-path links at it.
func (g gatherer) diskAliases() map[string][]string {
	out := map[string][]string{}
	for _, dir := range []string{"dev/disk/by-id", "dev/disk/by-path"} {
		entries, err := os.ReadDir(g.path(dir))
		if err != nil {
			continue
		}
		for _, e := range entries {
			target, err := os.Readlink(g.path(dir + "/" + e.Name()))
			if err != nil {
				continue
			}
			name := filepath.Base(target)
			out[name] = append(out[name], "/"+dir+"/"+e.Name())
		}
	}
	for _, v := range out {
		sort.Strings(v)
	}
	return out
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
	const staUnsync = 0x0040
	return facts.TimeSync{Synchronized: state != unix.TIME_ERROR && tx.Status&staUnsync == 0, Source: "adjtimex"}
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

// ports reports which of the wanted ports are in use, from /proc/net and
// the socket inodes in /proc/*/fd.
func (g gatherer) ports(want []facts.Port) []facts.Port {
	if len(want) == 0 {
		return nil
	}
	inUse := map[string]uint64{} // "tcp/6443" -> socket inode
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		data, err := os.ReadFile(g.path("proc/net/" + proto))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 {
				continue
			}
			// TCP: only listening sockets (state 0A) hold a port for a server.
			if strings.HasPrefix(proto, "tcp") && f[3] != "0A" {
				continue
			}
			_, portHex, ok := strings.Cut(f[1], ":")
			if !ok {
				continue
			}
			port, err := strconv.ParseUint(portHex, 16, 16)
			if err != nil {
				continue
			}
			inode, _ := strconv.ParseUint(f[9], 10, 64)
			inUse[fmt.Sprintf("%s/%d", strings.TrimSuffix(proto, "6"), port)] = inode
		}
	}
	owners := g.socketOwners()
	out := make([]facts.Port, 0, len(want))
	for _, p := range want {
		inode, used := inUse[fmt.Sprintf("%s/%d", p.Protocol, p.Port)]
		p.InUse = used
		if used {
			p.Process = owners[inode]
		}
		out = append(out, p)
	}
	return out
}

// socketOwners maps socket inodes to the command names holding them.
func (g gatherer) socketOwners() map[uint64]string {
	out := map[uint64]string{}
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
		comm, _ := g.read("proc/" + p.Name() + "/comm")
		for _, fd := range fds {
			link, err := os.Readlink(g.path("proc/" + p.Name() + "/fd/" + fd.Name()))
			if err != nil || !strings.HasPrefix(link, "socket:[") {
				continue
			}
			if inode, err := strconv.ParseUint(strings.Trim(link[7:], "[]"), 10, 64); err == nil {
				out[inode] = comm
			}
		}
	}
	return out
}
