package preflight

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"castellan/installer/facts"
)

// skipDisk leaves out devices that are never data disks unless the
// profile names them: loop and RAM disks, device-mapper and md arrays
// (they are built on disks listed themselves), optical and floppy drives.
func skipDisk(name string) bool {
	for _, p := range []string{"loop", "ram", "zram", "dm-", "sr", "fd", "md", "nbd"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// disks lists the whole disks of /sys/block (and those in include, by
// kernel name, even when skipDisk leaves them out), with their partitions,
// holders, mounts and signatures.
func (g gatherer) disks(include map[string]bool, mounts []mountInfo, swaps []swapLine) ([]facts.Disk, error) {
	entries, err := os.ReadDir(g.path("sys/block"))
	if err != nil {
		return nil, err
	}
	inUse := g.mountedDevices(mounts, swaps)
	aliases := g.diskAliases()
	var out []facts.Disk
	for _, e := range entries {
		name := e.Name()
		if skipDisk(name) && !include[name] {
			continue
		}
		base := "sys/block/" + name
		d := facts.Disk{Name: name, Path: "/dev/" + name, Aliases: aliases[name]}
		if s, err := g.read(base + "/size"); err == nil {
			sectors, _ := strconv.ParseUint(s, 10, 64)
			d.SizeB = sectors * 512 // always 512-byte units (block/genhd.c)
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
			d.Mounts = append(d.Mounts, inUse[dev]...)
		}
		d.Mounted = len(d.Mounts) > 0
		for _, dev := range devs {
			size := d.SizeB
			if dev != name {
				s, _ := g.read(base + "/" + dev + "/size")
				sectors, _ := strconv.ParseUint(s, 10, 64)
				size = sectors * 512
			}
			if dev == name && g.busy(name) {
				d.Busy = true
			}
			sigs, err := g.probe(dev, size)
			if err != nil {
				if d.ReadError == "" {
					d.ReadError = err.Error()
				}
				continue
			}
			for _, s := range sigs {
				if dev != name {
					s.Device = dev
				}
				d.Signatures = append(d.Signatures, s)
			}
		}
		if len(d.Signatures) > 0 {
			d.Signature = d.Signatures[0].Type
		}
		out = append(out, d)
	}
	return out, nil
}

// probe reads the signatures of /dev/NAME, a device of size bytes.
func (g gatherer) probe(name string, size uint64) ([]facts.Signature, error) {
	f, err := os.Open(g.path("dev/" + name))
	if err != nil {
		return nil, fmt.Errorf("opening /dev/%s: %w", name, err)
	}
	defer f.Close()
	sigs, err := Probe(f, int64(size))
	if err != nil {
		return nil, fmt.Errorf("/dev/%s: %w", name, err)
	}
	return sigs, nil
}

// busy reports whether the kernel refuses an exclusive open of /dev/NAME:
// it is then mounted (in any mount namespace), an active swap area, or held
// by device-mapper, md or bcache (open(2), O_EXCL on block devices). The
// exclusive open is closed at once; it reads and changes nothing.
func (g gatherer) busy(name string) bool {
	fd, err := unix.Open(g.path("dev/"+name), unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		return errors.Is(err, unix.EBUSY)
	}
	unix.Close(fd)
	return false
}

// mountedDevices maps kernel device names to where they are in use:
// mount points from the mount table (by major:minor through
// /sys/dev/block, and by source path, since btrfs mounts show an anonymous
// device number), and "[SWAP]" for active swap areas.
func (g gatherer) mountedDevices(mounts []mountInfo, swaps []swapLine) map[string][]string {
	out := map[string][]string{}
	add := func(name, where string) {
		for _, w := range out[name] {
			if w == where {
				return
			}
		}
		out[name] = append(out[name], where)
	}
	for _, m := range mounts {
		if link, err := os.Readlink(g.path(fmt.Sprintf("sys/dev/block/%d:%d", m.Major, m.Minor))); err == nil {
			add(filepath.Base(link), m.MountPoint)
		} else if name, ok := g.blockName(m.Source); ok {
			add(name, m.MountPoint)
		}
	}
	for _, s := range swaps {
		if name, ok := g.blockName(s.Path); ok {
			add(name, "[SWAP]")
		}
	}
	return out
}

// blockName is the kernel name of the block device at p (/dev/vdb1,
// /dev/disk/by-uuid/..., /dev/mapper/x), following links under root.
func (g gatherer) blockName(p string) (string, bool) {
	if !strings.HasPrefix(p, "/dev/") {
		return "", false
	}
	r, err := g.resolve(p)
	if err != nil || path.Dir(r) != "/dev" {
		return "", false
	}
	name := path.Base(r)
	if _, err := os.Stat(g.path("sys/class/block/" + name)); err != nil {
		return "", false
	}
	return name, true
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

// resolve follows symbolic links in p one component at a time, treating
// absolute targets as relative to the gatherer's root, the way the kernel
// resolves them on the node. It returns the path reached, or how far it got
// with the error that stopped it.
func (g gatherer) resolve(p string) (string, error) {
	cur := "/"
	rest := strings.Split(path.Clean("/"+p), "/")
	for hops := 0; len(rest) > 0; {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, c)
		fi, err := os.Lstat(g.path(next))
		if err != nil {
			return next, err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > 40 { // the kernel's limit, MAXSYMLINKS
			return next, syscall.ELOOP
		}
		target, err := os.Readlink(g.path(next))
		if err != nil {
			return next, err
		}
		if path.IsAbs(target) {
			cur = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return cur, nil
}

// device says what the device path p is on the node: a whole disk, a
// partition (and of which disk), missing, or not a block device at all.
func (g gatherer) device(p string) facts.Device {
	d := facts.Device{Path: p}
	resolved, rerr := g.resolve(p)
	if rerr == nil {
		d.Resolved = resolved
	}
	// The kernel follows the links itself (also /proc's magic links, such as
	// /dev/stdin's, which are not paths).
	fi, err := os.Stat(g.path(p))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			d.Kind = facts.DeviceMissing
			return d
		}
		d.Kind, d.Error = facts.DeviceMissing, err.Error()
		return d
	}
	if fi.Mode()&fs.ModeDevice == 0 || fi.Mode()&fs.ModeCharDevice != 0 {
		d.Kind, d.FileType = facts.DeviceNotBlock, fileType(fi.Mode())
		return d
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		d.Kind, d.Error = facts.DeviceMissing, "no device number"
		return d
	}
	major, minor := unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))
	sys := fmt.Sprintf("sys/dev/block/%d:%d", major, minor)
	link, err := os.Readlink(g.path(sys))
	if err != nil {
		d.Kind, d.Error = facts.DeviceMissing, fmt.Sprintf("block device %d:%d is not in /sys/dev/block: %v", major, minor, err)
		return d
	}
	name := filepath.Base(link)
	if num, err := g.read(sys + "/partition"); err == nil {
		d.Kind = facts.DevicePartition
		d.Partition, _ = strconv.Atoi(num)
		d.Disk = filepath.Base(filepath.Dir(link))
		return d
	}
	d.Kind, d.Disk = facts.DeviceDisk, name
	return d
}

// fileType names what a path that is not a block device is, for messages.
func fileType(m fs.FileMode) string {
	switch {
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m.IsDir():
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m.IsRegular():
		return "regular file"
	}
	return "special file"
}

// cgroup tells the cgroup hierarchy from what is mounted at /sys/fs/cgroup
// (the topmost mount there wins): cgroup2 is the unified hierarchy; a tmpfs
// holding v1 hierarchies is legacy, or hybrid when a cgroup2 is also mounted
// at /sys/fs/cgroup/unified (systemd's layouts). Kubelet's own test is the
// same question: is /sys/fs/cgroup a cgroup2 filesystem.
func (g gatherer) cgroup(mounts []mountInfo) facts.Cgroup {
	var top string
	v1, unified := false, false
	for _, m := range mounts {
		switch {
		case m.MountPoint == "/sys/fs/cgroup":
			top = m.FSType
			v1, unified = false, false // mounted over: what was below is hidden
		case m.MountPoint == "/sys/fs/cgroup/unified" && m.FSType == "cgroup2":
			unified = true
		case strings.HasPrefix(m.MountPoint, "/sys/fs/cgroup/") && m.FSType == "cgroup":
			v1 = true
		}
	}
	var c facts.Cgroup
	switch {
	case top == "cgroup2":
		c.Mode = facts.CgroupUnified
		if s, err := g.read("sys/fs/cgroup/cgroup.controllers"); err == nil {
			c.Controllers = strings.Fields(s)
		}
	case top == "cgroup":
		c.Mode = facts.CgroupLegacy // one v1 hierarchy mounted at the top
	case v1 && unified:
		c.Mode = facts.CgroupHybrid
	case v1:
		c.Mode = facts.CgroupLegacy
	}
	return c
}
