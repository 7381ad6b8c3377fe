package preflight

import (
	"fmt"
	"strings"
	"time"

	"castellan/installer/facts"
	"castellan/installer/profile"
)

// checkDataDisks checks the profile's data disks against what the node
// says they are: whole block devices, each named once, not in use, large
// enough, and blank unless the profile allows formatting them. The disk
// encryption phase formats only disks that pass.
func checkDataDisks(n profile.Node, f facts.Node) []Problem {
	var ps []Problem
	errf := func(format string, a ...any) { ps = append(ps, Problem{SeverityError, fmt.Sprintf(format, a...)}) }
	warnf := func(format string, a ...any) { ps = append(ps, Problem{SeverityWarning, fmt.Sprintf(format, a...)}) }
	named := map[string]string{} // kernel name -> the first entry naming it
	for i, d := range n.DataDisks {
		where := fmt.Sprintf("spec.nodes[%s].dataDisks[%d]", n.Name, i)
		dev, ok := f.Device(d.Device)
		if !ok {
			errf("data disk %s: the node's agent did not report on it; rerun, and report a bug if this persists", d.Device)
			continue
		}
		switch dev.Kind {
		case facts.DeviceMissing:
			why := ""
			if dev.Error != "" {
				why = " (" + dev.Error + ")"
			}
			errf("data disk %s does not exist%s: attach it, or fix spec.nodes[%s].dataDisks (disks here: %s)", d.Device, why, n.Name, diskNames(f.Disks))
			continue
		case facts.DeviceNotBlock:
			errf("data disk %s is not a block device but a %s: name a whole disk in %s, such as /dev/vdb or one of its /dev/disk/by-id links", d.Device, dev.FileType, where)
			continue
		case facts.DevicePartition:
			errf("data disk %s is partition %d of %s: name the whole disk (/dev/%s) in %s; castellan encrypts whole disks", d.Device, dev.Partition, dev.Disk, dev.Disk, where)
			continue
		}
		if first, dup := named[dev.Disk]; dup {
			errf("data disks %s and %s are one disk (%s) on this node: name it once in spec.nodes[%s].dataDisks", first, d.Device, dev.Disk, n.Name)
			continue
		}
		named[dev.Disk] = d.Device
		disk, ok := f.DiskNamed(dev.Disk)
		if !ok {
			errf("data disk %s is %s, which the node did not list among its disks: rerun, and report a bug if this persists", d.Device, dev.Disk)
			continue
		}
		own := castellansOwn(disk) // checks.go: castellan's encrypted disk, perhaps open
		switch {
		case disk.ReadOnly:
			errf("data disk %s is read-only: castellan must write its encryption header; make it writable or choose another", d.Device)
			continue
		case disk.Mounted:
			errf("data disk %s is in use: %s; castellan never touches a disk in use: unmount it (and remove it from /etc/fstab) or choose another", d.Device, mountList(disk.Mounts))
			continue
		case len(disk.Holders) > 0 && !own:
			errf("data disk %s is in use by %s (device-mapper: LVM or dm-crypt; or md RAID, bcache): castellan never touches a disk in use; free it or choose another", d.Device, strings.Join(disk.Holders, ", "))
			continue
		case disk.Busy && !own:
			errf("data disk %s is in use: the kernel refuses to open it exclusively (mounted in another mount namespace, an active swap area, or held by device-mapper, md or bcache); castellan never touches a disk in use; free it or choose another", d.Device)
			continue
		case disk.SizeB < minDataDisk:
			errf("data disk %s has %s: at least %s is needed", d.Device, bytesHuman(disk.SizeB), bytesHuman(minDataDisk))
			continue
		}
		if disk.ReadError != "" {
			if d.AllowFormat {
				warnf("data disk %s cannot be read (%s); allowFormat is set on %s, so disk encryption will format it whatever it holds", d.Device, disk.ReadError, where)
			} else {
				errf("data disk %s cannot be read (%s): castellan cannot tell whether it holds data, and never formats a disk that may; fix the disk, or set allowFormat: true on %s to format it whatever it holds", d.Device, disk.ReadError, where)
			}
			continue
		}
		if what := diskContent(disk); what != "" && !own {
			if d.AllowFormat {
				warnf("data disk %s holds %s; allowFormat is set on %s: disk encryption will format it and that data will be lost", d.Device, what, where)
			} else {
				errf("data disk %s holds %s: castellan never formats a disk that holds data; if it may be destroyed, set allowFormat: true on %s, or wipe the disk yourself (wipefs -a %s)", d.Device, what, where, d.Device)
			}
		}
	}
	return ps
}

func mountList(ms []string) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		if m == "[SWAP]" {
			parts[i] = "an active swap area"
		} else {
			parts[i] = "mounted at " + m
		}
	}
	return strings.Join(parts, ", ")
}

// diskContent says in words what a disk holds; "" for a blank disk.
func diskContent(d facts.Disk) string {
	var parts []string
	table := false
	for _, s := range d.Signatures {
		if s.Type == "gpt" || s.Type == "dos" {
			table = true
		}
		parts = append(parts, describeSignature(s))
	}
	if len(d.Partitions) > 0 && !table {
		parts = append(parts, fmt.Sprintf("partitions the kernel still knows (%s)", strings.Join(d.Partitions, ", ")))
	}
	return strings.Join(parts, "; ")
}

var signatureNames = map[string]string{
	"gpt":               "a GPT partition table",
	"dos":               "a DOS (MBR) partition table",
	"LVM2_member":       "an LVM physical volume",
	"linux_raid_member": "an md RAID member superblock",
	"swap":              "a swap area",
	"zfs_member":        "a ZFS pool label",
	"bcache":            "a bcache superblock",
	"luks1":             "a LUKS1 encryption header",
	"luks2":             "a LUKS2 encryption header",
	"luks":              "a LUKS encryption header",
	"iso9660":           "an ISO 9660 filesystem",
	"ext2":              "an ext2 filesystem",
	"ext3":              "an ext3 filesystem",
	"ext4":              "an ext4 filesystem",
	"xfs":               "an XFS filesystem",
	"btrfs":             "a btrfs filesystem",
	"vfat":              "a FAT filesystem",
	"ntfs":              "an NTFS filesystem",
}

func describeSignature(s facts.Signature) string {
	if s.Type == "data" {
		out := fmt.Sprintf("non-zero data at byte %d that castellan does not recognise", s.Offset)
		if s.Device != "" {
			out += " on " + s.Device
		}
		return out
	}
	name, ok := signatureNames[s.Type]
	if !ok {
		name = "a signature of type " + s.Type
	}
	var details []string
	if s.Label != "" {
		details = append(details, fmt.Sprintf("label %q", s.Label))
	}
	if s.UUID != "" {
		details = append(details, "UUID "+s.UUID)
	}
	switch {
	case s.Type == "linux_raid_member" && s.Version != "":
		details = append([]string{"version " + s.Version}, details...)
	case s.Type == "gpt" && s.Version != "":
		details = append(details, "only its "+s.Version+" at byte "+fmt.Sprint(s.Offset))
	}
	if l := s.LUKS; l != nil {
		if l.HeaderOffset != 0 {
			details = append(details, fmt.Sprintf("its secondary copy at byte %d: the primary is damaged or wiped", l.HeaderOffset))
		}
		if l.Error != "" {
			details = append(details, l.Error)
		} else {
			details = append(details, fmt.Sprintf("%d keyslot(s)", l.Keyslots))
			if len(l.TokenTypes) > 0 {
				details = append(details, "tokens "+strings.Join(l.TokenTypes, ", "))
			}
		}
	}
	out := name
	if len(details) > 0 {
		out += " (" + strings.Join(details, ", ") + ")"
	}
	if s.Device != "" {
		out += " on " + s.Device
	}
	return out
}

// checkKubeletHost checks what kubelet itself refuses to start on.
func checkKubeletHost(f facts.Node) []Problem {
	var ps []Problem
	errf := func(format string, a ...any) { ps = append(ps, Problem{SeverityError, fmt.Sprintf(format, a...)}) }
	switch f.Cgroup.Mode {
	case facts.CgroupUnified:
		// The controllers are recorded, not checked: a v2 root may lack
		// them while a v1 hierarchy still holds them on a node being
		// moved to v2, and kubelet names what it misses itself.
	case facts.CgroupHybrid, facts.CgroupLegacy:
		errf("the node runs cgroup v1 (%s hierarchy): kubelet refuses to start on cgroup v1 since Kubernetes 1.35 (failCgroupV1), and RKE2 runs that kubelet; boot with cgroup v2: add systemd.unified_cgroup_hierarchy=1 to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub), remove systemd.legacy_systemd_cgroup_controller and cgroup_no_v1 if set, and reboot", f.Cgroup.Mode)
	default:
		errf("no cgroup hierarchy is mounted at /sys/fs/cgroup: kubelet needs cgroup v2 there; boot with systemd, which mounts it")
	}
	// Swap: kubelet's failSwapOn defaults to true, so with swap on it exits
	// at start, long after castellan installed it; castellan does not
	// configure kubelet's swap support (NodeSwap), so swap fails here.
	if len(f.Swap) > 0 {
		var areas []string
		for _, s := range f.Swap {
			areas = append(areas, fmt.Sprintf("%s, %s %s", s.Path, bytesHuman(s.SizeB), s.Type))
		}
		errf("swap is on (%s): kubelet refuses to start with swap on (failSwapOn) and castellan does not configure it for swap; turn it off: swapoff -a, remove the swap entries from /etc/fstab, and disable swap units or zram (systemctl mask the .swap units listed by systemctl list-units --type swap)", strings.Join(areas, "; "))
	}
	return ps
}

// Clock thresholds on the node's offset from the installer, counted from
// the measurement's side nearest zero (|Offset| - Bound): a slow exec
// widens the bound and never fails a node whose clock may be right.
//
//   - clockWarn: etcd's members compare clocks and log "the clock
//     difference against peer ... is too high" above 1 s (etcd's rafthttp
//     prober); logs and events of the nodes stop lining up.
//   - clockFail: certificates. Kubernetes' CSR signer backdates NotBefore by
//     5 minutes to absorb clock skew (pkg/controller/certificates/signer),
//     and RKE2's own certificates start at their CA's creation (rancher/
//     dynamiclistener), so a node more than that behind the issuer rejects
//     fresh certificates as "not yet valid", and one ahead sees them and
//     tokens expire early. Two nodes within 2m30s of the installer are
//     within 5 minutes of each other; castellan's own certificates are
//     issued with the installer's clock. etcd itself keeps working (its
//     elections and leases use monotonic timers): it is the TLS between
//     its members and clients that fails.
const (
	clockWarn = time.Second
	clockFail = 150 * time.Second
)

func checkClock(c facts.Clock) []Problem {
	if !c.Measured {
		return nil // see gatherAndCheck: not measured until the engine records when execs were sent
	}
	off := c.Offset
	dir := "ahead of"
	if off < 0 {
		off, dir = -off, "behind"
	}
	least := off - c.Bound
	what := fmt.Sprintf("the node's clock is %s %s this machine's (±%s, measured over the agent call)", roundDuration(off), dir, roundDuration(c.Bound))
	switch {
	case least > clockFail:
		return []Problem{{SeverityError, what + ": certificates break at this skew: a node behind the machine that issues a certificate rejects it as not yet valid (Kubernetes backdates certificates by 5 minutes, RKE2's start when their CA was made) and one ahead sees certificates and tokens expire early; set the time (enable NTP: systemd-timesyncd or chrony, and let it synchronise), or fix this machine's clock if it is the wrong one"}}
	case least > clockWarn:
		return []Problem{{SeverityWarning, what + ": etcd warns above 1 s of difference between its members, and logs stop lining up; enable NTP (systemd-timesyncd or chrony)"}}
	}
	return nil
}

func roundDuration(d time.Duration) string {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	}
	return d.Round(time.Millisecond).String()
}

// checkFirmware warns where the node's boot cannot be vouched for by its
// TPM: what PCR 7 (Secure Boot policy) means decides what a disk key bound
// to it protects, and what boot attestation can say.
func checkFirmware(r requirements, f facts.Node) []Problem {
	var ps []Problem
	warnf := func(format string, a ...any) { ps = append(ps, Problem{SeverityWarning, fmt.Sprintf(format, a...)}) }
	switch {
	case f.Firmware.Type == facts.FirmwareBIOS:
		warnf("the node boots with BIOS firmware: its TPM measures the firmware and boot sector, not the boot loader or kernel, and PCR 7 holds no Secure Boot policy; a disk key bound to PCR 7 then binds to this machine's TPM and boot path, no more, and boot attestation cannot vouch for the kernel; boot it with UEFI and Secure Boot where the machine allows")
	case f.Firmware.SetupMode:
		warnf("Secure Boot is in setup mode (no Platform Key enrolled): nothing is verified at boot and PCR 7 records that, so a disk key bound to PCR 7 unlocks under any boot loader and kernel; enrol the platform keys in the firmware setup (restore the factory keys) and enable Secure Boot")
	case f.Firmware.SecureBoot == facts.SecureBootDisabled:
		warnf("Secure Boot is off: PCR 7 records it off, so a disk key bound to PCR 7 unlocks under any boot loader and kernel; enable Secure Boot in the firmware setup")
	case f.Firmware.SecureBoot == facts.SecureBootUnknown:
		warnf("the Secure Boot state could not be read (the SecureBoot EFI variable): what PCR 7 binds a disk key to is unknown")
	}
	if r.tpm && f.TPM.Present && !f.Firmware.EventLog {
		warnf("no TPM event log (/sys/kernel/security/tpm0/binary_bios_measurements): the PCR values cannot be replayed and explained, so boot attestation cannot tell what booted")
	}
	return ps
}
