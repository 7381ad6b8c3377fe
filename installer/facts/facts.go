// Package facts holds what preflight observes on a node. The types travel
// from the node's agent to the installer as JSON, are shared with later
// phases through the run (Key), and are written into each run's record.
//
// Fields are only ever added: run records written by earlier versions must
// still decode.
package facts

import (
	"time"

	"castellan/installer/engine"
)

// Key is the output under which the preflight phase publishes each node's
// facts; later phases read it with engine.Lookup. It is recorded in the run
// record.
var Key = engine.NewKey[Node]("preflight", "facts", true)

// Node is everything preflight learned about one node.
type Node struct {
	Hostname string `json:"hostname"`
	OS       OS     `json:"os"`
	Kernel   string `json:"kernel"`
	// Arch is the Go architecture name (amd64, arm64).
	Arch      string      `json:"arch"`
	CPUs      int         `json:"cpus"`
	MemoryB   uint64      `json:"memoryBytes"`
	Systemd   bool        `json:"systemd"`
	Disks     []Disk      `json:"disks"`
	TPM       TPM         `json:"tpm"`
	WireGuard WireGuard   `json:"wireguard"`
	Time      TimeSync    `json:"time"`
	Space     []FreeSpace `json:"space"`
	Ports     []Port      `json:"ports"`
	// Devices are the device paths the installer asked about (the profile's
	// data disks), as the node resolves them.
	Devices []Device `json:"devices,omitempty"`
	// Cgroup is the cgroup hierarchy the node booted with.
	Cgroup Cgroup `json:"cgroup"`
	// Swap lists the active swap areas (/proc/swaps); empty when swap is off.
	Swap []SwapArea `json:"swap,omitempty"`
	// Clock is the node's wall clock compared with the installer's.
	Clock Clock `json:"clock"`
	// Firmware is how the node booted: UEFI or BIOS, Secure Boot, TPM event log.
	Firmware Firmware `json:"firmware"`
	// Problems are facts that could not be read (the rest is still valid).
	Problems []string `json:"problems,omitempty"`
}

// OS identifies the distribution from /etc/os-release.
type OS struct {
	ID         string `json:"id"`
	VersionID  string `json:"versionId"`
	PrettyName string `json:"prettyName"`
}

// Disk is a whole block device.
type Disk struct {
	// Name is the kernel name (vdb); Path is /dev/vdb.
	Name string `json:"name"`
	Path string `json:"path"`
	// SizeB is the size in bytes.
	SizeB    uint64 `json:"sizeBytes"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// Signature is the type of the first of Signatures: "" (blank: the
	// regions signatures live in are all zeros), a known signature ("ext4",
	// "luks2", "gpt", ...), or "data" for content nothing here recognises.
	Signature string `json:"signature,omitempty"`
	// Signatures is everything found on the disk and its partitions, in
	// device and offset order.
	Signatures []Signature `json:"signatures,omitempty"`
	// ReadError says why the disk's signatures could not be read; the disk
	// may then hold anything.
	ReadError string `json:"readError,omitempty"`
	// Partitions are the kernel names of the disk's partitions.
	Partitions []string `json:"partitions,omitempty"`
	// Holders are the kernel devices built on this disk or its partitions
	// (device-mapper: LVM or an open LUKS mapping; md RAID; bcache), from
	// /sys/block/DISK/holders and /sys/block/DISK/PART/holders.
	Holders []string `json:"holders,omitempty"`
	// Mounted is true when the disk or one of its partitions is mounted or
	// is an active swap area; Mounts says where ("[SWAP]" for swap).
	Mounted bool     `json:"mounted,omitempty"`
	Mounts  []string `json:"mounts,omitempty"`
	// Busy is true when the kernel refused an exclusive open of the disk:
	// it is mounted (perhaps in a mount namespace preflight cannot see), an
	// active swap area, or held by device-mapper, md or bcache.
	Busy bool `json:"busy,omitempty"`
	// Aliases are the /dev/disk/by-id and by-path links that point at the disk.
	Aliases []string `json:"aliases,omitempty"`
}

// Signature is one thing found on a disk: a filesystem, a partition table,
// a volume manager or RAID member, an encryption header, swap, or unknown
// non-zero data. Types are named as blkid names them.
type Signature struct {
	// Type: ext2, ext3, ext4, xfs, btrfs, vfat, ntfs, iso9660, swap, gpt,
	// dos, LVM2_member, luks1, luks2, linux_raid_member, bcache, zfs_member,
	// or "data" for non-zero bytes nothing here recognises.
	Type string `json:"type"`
	// Device is the partition it was found on (vdb1); empty for the whole disk.
	Device string `json:"device,omitempty"`
	// Offset is the byte offset of the magic (or, for "data", of the first
	// non-zero byte) from the start of the device.
	Offset int64 `json:"offset"`
	// Version, UUID and Label as the format records them, when it does.
	Version string `json:"version,omitempty"`
	UUID    string `json:"uuid,omitempty"`
	Label   string `json:"label,omitempty"`
	// LUKS is the parsed LUKS2 header, for Type luks2.
	LUKS *LUKS `json:"luks,omitempty"`
}

// CastellanToken is the type of the LUKS2 token castellan's disk
// encryption writes into the headers of the disks it formats.
const CastellanToken = "castellan"

// LUKS is what a LUKS2 header says (cryptsetup's LUKS2 on-disk format
// specification: a binary header, then a JSON area).
type LUKS struct {
	Version   int    `json:"version"`
	UUID      string `json:"uuid,omitempty"`
	Label     string `json:"label,omitempty"`
	Subsystem string `json:"subsystem,omitempty"`
	// HeaderOffset is where the header that was read sits: 0 for the
	// primary, its size for the secondary (read when the primary is damaged).
	HeaderOffset int64 `json:"headerOffset"`
	// HeaderSize is the binary header plus the JSON area, in bytes.
	HeaderSize int64 `json:"headerSize"`
	// ChecksumOK is true when the header's checksum matches its content.
	ChecksumOK bool `json:"checksumOK"`
	// Keyslots counts the keyslots; TokenTypes are the tokens' types, in
	// token order ("systemd-tpm2", "castellan", ...).
	Keyslots   int      `json:"keyslots"`
	TokenTypes []string `json:"tokenTypes,omitempty"`
	// Castellan is true when a token of type CastellanToken exists.
	Castellan bool `json:"castellan,omitempty"`
	// Error says why the header could not be read in full.
	Error string `json:"error,omitempty"`
}

// Device is what a device path named by the installer is on the node, after
// following symbolic links there.
type Device struct {
	// Path is as asked; Resolved is the path the links lead to.
	Path     string `json:"path"`
	Resolved string `json:"resolved,omitempty"`
	// Kind is DeviceDisk, DevicePartition, DeviceMissing or DeviceNotBlock.
	Kind string `json:"kind"`
	// Disk is the kernel name of the whole disk (for a partition, its disk).
	Disk string `json:"disk,omitempty"`
	// Partition is the partition number, for DevicePartition.
	Partition int `json:"partition,omitempty"`
	// FileType says what a DeviceNotBlock path is ("character device",
	// "regular file", "directory", ...).
	FileType string `json:"fileType,omitempty"`
	// Error says why the path could not be resolved.
	Error string `json:"error,omitempty"`
}

// Device kinds.
const (
	DeviceDisk      = "disk"
	DevicePartition = "partition"
	DeviceMissing   = "missing"
	DeviceNotBlock  = "not-block"
)

// TPM says whether a TPM 2.0 resource manager is usable.
type TPM struct {
	Present bool   `json:"present"`
	Device  string `json:"device,omitempty"`
	// Version is the TPM major version ("2.0") from sysfs, when the kernel says.
	Version string `json:"version,omitempty"`
}

// WireGuard says whether kernel WireGuard can be used.
type WireGuard struct {
	// Available is true when the module is loaded, built in, or loadable.
	Available bool   `json:"available"`
	Source    string `json:"source,omitempty"` // loaded, builtin, module
}

// TimeSync says whether the clock is synchronised (certificates need it).
type TimeSync struct {
	Synchronized bool   `json:"synchronized"`
	Source       string `json:"source,omitempty"`
	// MaxErrorUs is the kernel's bound on the clock's error, in
	// microseconds (adjtimex maxerror); 0 when unknown.
	MaxErrorUs int64 `json:"maxErrorMicroseconds,omitempty"`
}

// FreeSpace is the free space of the filesystem holding Path.
type FreeSpace struct {
	Path   string `json:"path"`
	FreeB  uint64 `json:"freeBytes"`
	TotalB uint64 `json:"totalBytes"`
}

// Port is whether a local port is free.
type Port struct {
	Port     int    `json:"port"`
	Protocol string `json:"protocol"` // tcp, udp
	InUse    bool   `json:"inUse"`
	// Process is who holds it, when known.
	Process string `json:"process,omitempty"`
}

// Cgroup modes, as systemd names them.
const (
	CgroupUnified = "unified" // cgroup v2 only, at /sys/fs/cgroup
	CgroupHybrid  = "hybrid"  // v1 controllers; v2 at /sys/fs/cgroup/unified
	CgroupLegacy  = "legacy"  // cgroup v1 only
)

// Cgroup is the cgroup hierarchy mounted at /sys/fs/cgroup.
type Cgroup struct {
	// Mode is CgroupUnified, CgroupHybrid, CgroupLegacy, or "" when nothing
	// is mounted at /sys/fs/cgroup.
	Mode string `json:"mode"`
	// Controllers are the v2 controllers of the root cgroup
	// (/sys/fs/cgroup/cgroup.controllers), for the unified mode.
	Controllers []string `json:"controllers,omitempty"`
}

// SwapArea is one active swap area, from /proc/swaps.
type SwapArea struct {
	Path     string `json:"path"`
	Type     string `json:"type"` // partition, file
	SizeB    uint64 `json:"sizeBytes"`
	UsedB    uint64 `json:"usedBytes"`
	Priority int    `json:"priority"`
}

// Clock compares the node's wall clock with the installer's, measured in
// the agent exec that gathered the facts, the way NTP does on the wire
// (RFC 5905, section 8): the installer sends T1 (its clock) with the
// request, the node records T2 when the request reaches it and T3 when it
// answers, and the installer records T4 when the answer is back.
//
//	Offset = ((T2 - T1) + (T3 - T4)) / 2     node minus installer
//	Bound  = ((T4 - T1) - (T3 - T2)) / 2     half the round trip, the node's work left out
//
// Whatever the delays each way, the true offset lies within Offset ± Bound.
type Clock struct {
	InstallerSent     time.Time `json:"installerSent,omitzero"`     // T1
	NodeReceived      time.Time `json:"nodeReceived,omitzero"`      // T2
	NodeSent          time.Time `json:"nodeSent,omitzero"`          // T3
	InstallerReceived time.Time `json:"installerReceived,omitzero"` // T4
	// Measured is true once the installer has filled in T4, Offset and Bound.
	Measured bool          `json:"measured,omitempty"`
	Offset   time.Duration `json:"offsetNanoseconds,omitempty"`
	Bound    time.Duration `json:"boundNanoseconds,omitempty"`
}

// Firmware types.
const (
	FirmwareUEFI = "uefi"
	FirmwareBIOS = "bios"
)

// Secure Boot states.
const (
	SecureBootEnabled  = "enabled"
	SecureBootDisabled = "disabled"
	SecureBootUnknown  = "unknown"
)

// Firmware is how the node booted, which decides what its TPM's PCRs can
// attest.
type Firmware struct {
	// Type is FirmwareUEFI (/sys/firmware/efi exists) or FirmwareBIOS.
	Type string `json:"type"`
	// SecureBoot is the SecureBoot EFI variable: SecureBootEnabled,
	// SecureBootDisabled, SecureBootUnknown (UEFI, variable unreadable), or
	// "" on BIOS.
	SecureBoot string `json:"secureBoot,omitempty"`
	// SetupMode is the SetupMode EFI variable: no Platform Key is enrolled,
	// so nothing is verified at boot.
	SetupMode bool `json:"setupMode,omitempty"`
	// EventLog is true when the firmware's TPM event log is readable at
	// /sys/kernel/security/tpm0/binary_bios_measurements.
	EventLog bool `json:"eventLog"`
}

// Disk returns the disk at path (its /dev path or one of its aliases).
func (n Node) Disk(path string) (Disk, bool) {
	for _, d := range n.Disks {
		if d.Path == path {
			return d, true
		}
		for _, a := range d.Aliases {
			if a == path {
				return d, true
			}
		}
	}
	return Disk{}, false
}

// DiskNamed returns the disk with the kernel name name (vdb).
func (n Node) DiskNamed(name string) (Disk, bool) {
	for _, d := range n.Disks {
		if d.Name == name {
			return d, true
		}
	}
	return Disk{}, false
}

// Device returns what the node said about a device path the installer asked about.
func (n Node) Device(path string) (Device, bool) {
	for _, d := range n.Devices {
		if d.Path == path {
			return d, true
		}
	}
	return Device{}, false
}
