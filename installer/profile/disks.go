package profile

import (
	"fmt"
	"path"
	"strings"
)

var (
	// deviceChars are the characters of a device path; devicePath is a
	// clean one. What it names is checked below.
	deviceChars = lazyMustCompile(`^/dev/[A-Za-z0-9/_.:+-]+$`)
	devicePath  = lazyMustCompile(`^/dev/[A-Za-z0-9][A-Za-z0-9/_.:+-]*$`)
	// Partition names of the kernel's disk drivers: sda1, vdb2, xvdc3, hda1;
	// nvme0n1p1, mmcblk0p1, loop0p1, nbd0p1, md0p1.
	letterPartition = lazyMustCompile(`^((?:sd|vd|xvd|hd)[a-z]+)([0-9]+)$`)
	pPartition      = lazyMustCompile(`^((?:nvme[0-9]+n[0-9]+|mmcblk[0-9]+|loop[0-9]+|nbd[0-9]+|md[0-9]+))p([0-9]+)$`)
	// udev names the links of a partition after its disk's with -partN
	// (60-persistent-storage.rules); other by-id names, which may end in
	// digits (wwn-0x5000c500a1b2c3d4), are resolved on the node.
	linkPartition = lazyMustCompile(`^(/dev/disk/by-(?:id|path)/.+)-part([0-9]+)$`)
)

// notDisks are device paths that are never a data disk, with what they are.
var notDisks = map[string]string{
	"/dev/stdin": "the standard input", "/dev/stdout": "the standard output", "/dev/stderr": "the standard error",
	"/dev/null": "the null device", "/dev/zero": "the zero device", "/dev/full": "the full device",
	"/dev/random": "a random number source", "/dev/urandom": "a random number source",
	"/dev/mem": "physical memory", "/dev/kmem": "kernel memory", "/dev/port": "I/O port access",
	"/dev/kmsg": "the kernel log", "/dev/log": "the syslog socket", "/dev/console": "the system console",
	"/dev/ptmx": "the pseudo-terminal multiplexer", "/dev/tty": "a terminal", "/dev/initctl": "init's control pipe",
	"/dev/core": "kernel memory", "/dev/fuse": "the FUSE device", "/dev/kvm": "the KVM device",
	"/dev/cdrom": "an optical drive", "/dev/dvd": "an optical drive", "/dev/loop-control": "the loop control device",
	"/dev/btrfs-control": "the btrfs control device", "/dev/autofs": "the autofs device",
	"/dev/uinput": "the input injection device", "/dev/userfaultfd": "the userfaultfd device",
	"/dev/vhost-net": "a vhost device", "/dev/vhost-vsock": "a vhost device", "/dev/mapper/control": "the device-mapper control device",
	"/dev/disk": "a directory of disk links", "/dev/mapper": "a directory of device-mapper devices",
}

// notDiskDirs are directories under /dev whose entries are never a data disk.
var notDiskDirs = map[string]string{
	"/dev/fd/": "a file descriptor of the running process", "/dev/shm/": "shared memory (a tmpfs)",
	"/dev/pts/": "a pseudo-terminal", "/dev/mqueue/": "a message queue", "/dev/hugepages/": "a hugepage file",
	"/dev/net/": "a network device", "/dev/input/": "an input device", "/dev/snd/": "a sound device",
	"/dev/dri/": "a graphics device", "/dev/bus/": "a bus device", "/dev/char/": "a character device link",
	"/dev/cpu/": "a CPU device", "/dev/usb/": "a USB device", "/dev/vfio/": "a VFIO device",
}

// notDiskNames are kernel device names that are never a data disk.
var notDiskNames = []struct {
	re   lazyRegexp
	what string
}{
	{lazyMustCompile(`^(tty|pty|vcs|vcsa|vcsu|hvc|ttyS|ttyUSB|ttyAMA)[0-9a-z]*$`), "a terminal"},
	{lazyMustCompile(`^tpm(rm)?[0-9]+$`), "the TPM"},
	{lazyMustCompile(`^(rtc|watchdog|hidraw|sg|bsg)[0-9]*$`), "a device of another kind"},
	{lazyMustCompile(`^sr[0-9]+$`), "an optical drive"},
	{lazyMustCompile(`^(ram|zram)[0-9]+$`), "a RAM disk (its data is lost at reboot)"},
}

// device checks one data disk's device path and returns its textual
// identity (the cleaned path), or "" when it is not a usable disk name. The
// caller reports a path that is not written clean.
// Whether the path exists and is a block device, and which by-id link
// resolves to which disk, is checked on the node by preflight.
func (v *validator) device(field, dev string) string {
	const example = "name a whole disk such as /dev/vdb or /dev/disk/by-id/..."
	clean := path.Clean(dev)
	if !deviceChars.MatchString(dev) || !devicePath.MatchString(clean) || strings.Contains(dev, "..") {
		v.errf(field, "expected a block device path under /dev (letters, digits and /_.:+-), got %s", quote(dev))
		return ""
	}
	if what, ok := notDisks[clean]; ok {
		v.errf(field, "%s is %s, not a data disk; %s", clean, what, example)
		return ""
	}
	for dir, what := range notDiskDirs {
		if strings.HasPrefix(clean+"/", dir) {
			v.errf(field, "%s is %s, not a data disk; %s", clean, what, example)
			return ""
		}
	}
	if !strings.Contains(strings.TrimPrefix(clean, "/dev/"), "/") {
		name := strings.TrimPrefix(clean, "/dev/")
		for _, nd := range notDiskNames {
			if nd.re.MatchString(name) {
				v.errf(field, "%s is %s, not a data disk; %s", clean, nd.what, example)
				return ""
			}
		}
		for _, re := range []lazyRegexp{letterPartition, pPartition} {
			if m := re.FindStringSubmatch(name); m != nil {
				v.errf(field, "%s is partition %s of %s: name the whole disk, /dev/%s (castellan encrypts whole disks)", clean, m[2], m[1], m[1])
				return ""
			}
		}
	}
	if m := linkPartition.FindStringSubmatch(clean); m != nil {
		v.errf(field, "%s is partition %s of %s: name the whole disk, %s (castellan encrypts whole disks)", clean, m[2], m[1], m[1])
		return ""
	}
	switch {
	case strings.HasPrefix(clean, "/dev/disk/by-partuuid/"), strings.HasPrefix(clean, "/dev/disk/by-partlabel/"):
		v.errf(field, "%s names a partition: name the whole disk, e.g. by /dev/disk/by-id/... (castellan encrypts whole disks)", clean)
		return ""
	case strings.HasPrefix(clean, "/dev/disk/by-uuid/"), strings.HasPrefix(clean, "/dev/disk/by-label/"):
		v.errf(field, "%s names a filesystem, which formatting replaces, so the name would not survive the first run; name the disk by /dev/disk/by-id/...", clean)
		return ""
	}
	return clean
}

// castellanDir is castellan's directory on nodes; only DefaultDataMountRoot
// inside it holds data disks.
const castellanDir = "/var/lib/castellan"

// Mount points castellan refuses on a node: systemMounts exactly,
// systemTrees nor anything inside them, since mounting a disk there would
// hide what the system or castellan keeps there.
var (
	systemMounts = []string{"/", "/home", "/var", "/var/lib", "/var/log", "/var/cache", "/var/spool", "/var/mail",
		"/opt", "/srv", "/mnt", "/media", castellanDir, DefaultDataMountRoot}
	systemTrees = []string{"/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
		"/root", "/run", "/sbin", "/sys", "/tmp", "/usr", "/var/lock", "/var/run", "/var/tmp"}
	// hiddenDirs are directory names whose content a mount would hide from
	// the tools that read them (sshd's authorized_keys, gpg's keys).
	hiddenDirs = []string{".ssh", ".gnupg"}
)

func (v *validator) disks(base string, disks []DataDisk) {
	devices := map[string]int{}
	mounts := map[string]int{}
	for j, d := range disks {
		p := fmt.Sprintf("%s.dataDisks[%d]", base, j)
		if !v.p.isBad(p + ".device") {
			if key := v.device(p+".device", d.Device); key != "" {
				k, dup := devices[key]
				switch {
				case dup && key != d.Device:
					v.errf(p+".device", "%s is %s, the same disk as dataDisks[%d] (%s)", quote(d.Device), key, k, disks[k].Device)
				case dup:
					v.errf(p+".device", "%s is the same disk as dataDisks[%d] (%s)", d.Device, k, disks[k].Device)
				case key != d.Device:
					v.errf(p+".device", "write %s as %s", quote(d.Device), key)
				}
				if !dup {
					devices[key] = j
				}
			}
		}
		if v.p.isBad(p + ".mountPoint") {
			continue
		}
		mp := d.MountPoint
		suggest := path.Join(DefaultDataMountRoot, path.Base(path.Clean(d.Device)))
		if d.Device == "" {
			suggest = path.Join(DefaultDataMountRoot, "disk1")
		}
		sys, inside := systemDir(mp, systemMounts, systemTrees)
		switch {
		case !path.IsAbs(mp) || path.Clean(mp) != mp || strings.ContainsAny(mp, " \t\n'\"\\$`"):
			v.errf(p+".mountPoint", "expected a clean absolute path without spaces or quotes, got %s", quote(mp))
		case mp == DefaultDataMountRoot:
			v.errf(p+".mountPoint", "%s holds the mount points of castellan's data disks; choose one inside it, such as %s", mp, suggest)
		case strings.HasPrefix(mp, castellanDir+"/") && !strings.HasPrefix(mp, DefaultDataMountRoot+"/"):
			v.errf(p+".mountPoint", "%s is inside %s, castellan's own directory (its agent lives there); choose a dedicated path such as %s", mp, castellanDir, suggest)
		case inside:
			v.errf(p+".mountPoint", "%s is inside %s, a system directory; choose a dedicated path such as %s", mp, sys, suggest)
		case sys != "":
			v.errf(p+".mountPoint", "%s is a system directory; choose a dedicated path such as %s", mp, suggest)
		case hasHiddenDir(mp):
			v.errf(p+".mountPoint", "%s is inside a directory of keys (%s); choose a dedicated path such as %s", mp, strings.Join(hiddenDirs, ", "), suggest)
		default:
			if k, dup := mounts[mp]; dup {
				v.errf(p+".mountPoint", "mount point %s is already used by dataDisks[%d]", mp, k)
			}
			mounts[mp] = j
		}
	}
}

func hasHiddenDir(p string) bool {
	for _, c := range strings.Split(p, "/") {
		for _, h := range hiddenDirs {
			if c == h {
				return true
			}
		}
	}
	return false
}
