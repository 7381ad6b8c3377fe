// Package facts holds what preflight observes on a node. The types travel
// from the node's agent to the installer as JSON, are shared with later
// phases through the run (Key), and are written into each run's record.
package facts

import "castellan/installer/engine"

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
	// Signature names what the first sectors hold: "" (blank), or e.g.
	// "ext4", "xfs", "luks2", "LVM2_member", "dos" or "gpt" partition table.
	Signature string `json:"signature,omitempty"`
	// Partitions are the kernel names of the disk's partitions.
	Partitions []string `json:"partitions,omitempty"`
	// Holders are device-mapper devices built on this disk (e.g. an open LUKS mapping).
	Holders []string `json:"holders,omitempty"`
	// Mounted is true when the disk or one of its partitions is mounted.
	Mounted bool `json:"mounted,omitempty"`
	// Aliases are the /dev/disk/by-id and by-path links that point at the disk.
	Aliases []string `json:"aliases,omitempty"`
}

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
