package diskcrypt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Node is the node side of the phase: the operations the agent serves, on
// the machine it runs on. The zero value is not usable; DefaultNode is what
// the agent uses.
type Node struct {
	// Root is where the node's filesystem is: "/" on a node; a test tree
	// elsewhere. /etc/crypttab, /etc/fstab, /proc, /sys, /dev, /run and the
	// mount points are read and written under it. Device paths are taken
	// under Root too.
	Root string
	// Run runs the distribution's tools.
	Run Runner
	// TPM2Device is systemd-cryptenroll's --tpm2-device: "auto" (the node's
	// /dev/tpmrm0) on nodes; tests use a software TPM ("swtpm:path=...").
	TPM2Device string
	// PBKDF overrides cryptsetup's argon2id costs (tests); nil keeps
	// cryptsetup's own benchmark (about 2 s and up to 1 GiB of memory on the
	// node itself).
	PBKDF *PBKDF
	// Systemd runs systemctl for the units of the crypttab and fstab lines.
	// Off only where there is no systemd (tests).
	Systemd bool
	// crash, when set (tests only), is called at each step boundary of a
	// changing operation, so a test can kill the operation there.
	crash func(step string)
}

// PBKDF are argon2id costs for cryptsetup (cryptsetup(8): --pbkdf-memory
// in KiB, --pbkdf-force-iterations).
type PBKDF struct {
	MemoryKiB  int `json:"memoryKiB"`
	Iterations int `json:"iterations"`
}

// DefaultNode is the node side as the agent runs it.
func DefaultNode() *Node {
	return &Node{Root: "/", Run: ExecRunner{}, TPM2Device: "auto", Systemd: true, crash: nodeCrashpoint}
}

// Header layout castellan formats with (cryptsetup luksFormat
// --luks2-metadata-size, --luks2-keyslots-size): two 16 KiB header copies,
// then a keyslots area of 2 MiB - 32 KiB, room for 8 keyslots of a 512-bit
// key (258048 bytes each: the recovery passphrase, the TPM, and the spares
// that rotation and re-enrolment use for a while). The data then starts at
// 2 MiB (1 MiB aligned), and the header area, what a header backup holds,
// is 2 MiB.
const (
	MetadataSize  = 16 << 10
	KeyslotsSize  = 2<<20 - 2*MetadataSize
	HeaderAreaLen = 2*MetadataSize + KeyslotsSize
	// scratchSize is the sparse image a header is prepared in.
	scratchSize = HeaderAreaLen + 1<<20
)

// Step names: the boundaries where a crash is tested, and what the errors
// name.
const (
	StepScratch      = "scratch"
	StepLuksFormat   = "luks-format"
	StepTokenImport  = "token-import"
	StepTPMEnrol     = "tpm-enrol"
	StepWipe         = "wipe"
	StepSecondary    = "write-secondary"
	StepKeyslots     = "write-keyslots"
	StepPrimary      = "write-primary"
	StepTestRecovery = "test-recovery"
	StepTPMWipe      = "tpm-wipe"
	StepPending      = "token-pending"
	StepAddKeyslot   = "add-keyslot"
	StepCommitToken  = "token-commit"
	StepKillRetired  = "kill-retired"
	StepClearRetired = "token-clear-retired"
	StepCrypttab     = "crypttab"
	StepOpen         = "open"
	StepMkfs         = "mkfs"
	StepMountPoint   = "mount-point"
	StepFstab        = "fstab"
	StepMount        = "mount"
)

func (n *Node) path(p string) string { return filepath.Join(n.Root, p) }

func (n *Node) step(s string) {
	if n.crash != nil {
		n.crash(s)
	}
}

// scratchDir holds the images headers are prepared in: root-only, on
// /run's tmpfs, so whatever a crash leaves there is gone at reboot (and the
// next prepare removes it). It never holds a passphrase.
func (n *Node) scratchDir() string { return n.path("run/castellan/diskcrypt") }

// ---------------------------------------------------------------------------
// Observation (read-only, in-process)

// ObserveRequest is the input of OpObserve: the data disks of the node.
type ObserveRequest struct {
	Disks []DiskRequest `json:"disks"`
}

// DiskRequest names one data disk.
type DiskRequest struct {
	Device     string `json:"device"`
	MountPoint string `json:"mountPoint"`
}

// Observation is OpObserve's result: one DiskState per requested disk, in
// order.
type Observation struct {
	Disks []DiskState `json:"disks"`
}

// DiskState is what a data disk is on the node, as far as encryption goes.
type DiskState struct {
	Device string `json:"device"`
	// Error says why the disk could not be read; nothing else is then set.
	Error string `json:"error,omitempty"`
	// Kernel is the disk's kernel name (vdb); SizeB its size in bytes.
	Kernel string `json:"kernel,omitempty"`
	SizeB  int64  `json:"sizeBytes,omitempty"`
	// Content is the SHA-256 (hex) of the disk's first and last MiB, where
	// signatures live: the installer passes it back when it formats, and
	// the node refuses if the disk changed since the plan.
	Content string `json:"content,omitempty"`
	// Header is the LUKS2 header, nil when there is none.
	Header *Header `json:"header,omitempty"`
	// HeaderArea is the SHA-256 (hex) of the header area [0, DataOffset).
	HeaderArea string `json:"headerArea,omitempty"`
	// Mapping is the disk's device-mapper mapping, when one holds it.
	Mapping *Mapping `json:"mapping,omitempty"`
	// Crypttab and Fstab are the lines for this disk (for a disk with a
	// castellan token).
	Crypttab TabState `json:"crypttab"`
	Fstab    TabState `json:"fstab"`
	// MountPoint is the state of the profile's mount point.
	MountPoint MountPointState `json:"mountPoint"`
	// TPM says whether the TPM opens the disk now, for a disk with a
	// systemd-tpm2 token.
	TPM TPMProbe `json:"tpm"`
}

// Mapping is a device-mapper device built on the disk.
type Mapping struct {
	// Name is its /dev/mapper name; Kernel its kernel name (dm-0).
	Name   string `json:"name"`
	Kernel string `json:"kernel"`
	// Filesystem is what the opened disk holds, for castellan's mapping:
	// the ext4 UUID, "" when none.
	FilesystemUUID string `json:"filesystemUUID,omitempty"`
	// Mounts are where it is mounted.
	Mounts []string `json:"mounts,omitempty"`
	// Error says why the mapping could not be read.
	Error string `json:"error,omitempty"`
}

// MountPointState is what the profile's mount point is.
type MountPointState struct {
	Exists bool `json:"exists"`
	// Mounted is true when something is mounted there; Source says what
	// (the mapping's kernel name when it is castellan's).
	Mounted bool   `json:"mounted,omitempty"`
	Source  string `json:"source,omitempty"`
	// Entries counts what is in the directory (when nothing is mounted).
	Entries int `json:"entries,omitempty"`
	// NotDir is true when the path exists and is not a directory.
	NotDir bool   `json:"notDir,omitempty"`
	Error  string `json:"error,omitempty"`
}

// TPM probe results.
const (
	TPMOpens     = "opens"     // the systemd-tpm2 token unlocks the disk now
	TPMRefused   = "refused"   // a TPM is there, but it does not unseal the key
	TPMNoDevice  = "no-device" // no TPM resource manager on the node
	TPMNotProbed = "not-probed"
)

// TPMProbe is whether the TPM opens the disk: `cryptsetup open
// --test-passphrase --token-only --token-type systemd-tpm2`, the unlock
// path of the boot without activating anything. It is the one observation
// made by a tool, since only systemd's token plugin knows how to unseal its
// token.
type TPMProbe struct {
	Result string `json:"result,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Observe reads the state of the requested disks in-process (no tool
// spawned), except the TPM probe of disks with a TPM2 token.
func (n *Node) Observe(ctx context.Context, in ObserveRequest) (Observation, error) {
	var out Observation
	mountsRaw, err := os.ReadFile(n.path("proc/self/mountinfo"))
	mounts := parseMountinfo(mountsRaw)
	if err != nil {
		mounts = nil
	}
	crypttab, cErr := readOptional(n.path("etc/crypttab"))
	fstab, fErr := readOptional(n.path("etc/fstab"))
	for _, d := range in.Disks {
		s := n.observeDisk(ctx, d, mounts)
		if s.Header != nil && s.Header.UUID != "" {
			s.Crypttab = crypttabState(crypttab, s.Header.UUID)
			s.Fstab = fstabState(fstab, s.Header.UUID, d.MountPoint)
		} else {
			s.Fstab = fstabState(fstab, "", d.MountPoint)
			s.Fstab.Ours = nil
		}
		if cErr != nil {
			s.Crypttab.Error = cErr.Error()
		}
		if fErr != nil {
			s.Fstab.Error = fErr.Error()
		}
		s.MountPoint = n.mountPoint(d.MountPoint, mounts)
		out.Disks = append(out.Disks, s)
	}
	return out, nil
}

func readOptional(p string) ([]byte, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

func (n *Node) observeDisk(ctx context.Context, d DiskRequest, mounts []mount) DiskState {
	s := DiskState{Device: d.Device}
	dev := n.path(d.Device)
	resolved, err := filepath.EvalSymlinks(dev)
	if err != nil {
		s.Error = fmt.Sprintf("resolving %s: %v", d.Device, err)
		return s
	}
	s.Kernel = filepath.Base(resolved)
	f, err := os.Open(dev)
	if err != nil {
		s.Error = fmt.Sprintf("opening %s: %v", d.Device, err)
		return s
	}
	defer f.Close()
	size, err := deviceSize(f)
	if err != nil {
		s.Error = fmt.Sprintf("%s: %v", d.Device, err)
		return s
	}
	s.SizeB = size
	if s.Content, err = contentDigest(f, size); err != nil {
		s.Error = fmt.Sprintf("%s: %v", d.Device, err)
		return s
	}
	if s.Header, err = ReadHeader(f, size); err != nil {
		s.Error = fmt.Sprintf("%s: %v", d.Device, err)
		return s
	}
	if s.Header == nil {
		return s
	}
	if s.Header.Readable() && s.Header.DataOffset > 0 && s.Header.DataOffset <= size && s.Header.DataOffset <= 64<<20 {
		area := make([]byte, s.Header.DataOffset)
		if _, err := f.ReadAt(area, 0); err == nil {
			sum := sha256.Sum256(area)
			s.HeaderArea = hex.EncodeToString(sum[:])
		}
	}
	s.Mapping = n.mapping(s.Kernel, mounts)
	if s.Mapping != nil && s.Header.UUID != "" && s.Mapping.Name == MappingName(s.Header.UUID) {
		if mf, err := os.Open(n.path("dev/mapper/" + s.Mapping.Name)); err == nil {
			s.Mapping.FilesystemUUID, err = readExt4UUID(mf)
			if err != nil {
				s.Mapping.Error = err.Error()
			}
			mf.Close()
		} else {
			s.Mapping.Error = err.Error()
		}
	}
	if len(s.Header.TPM2Tokens()) > 0 {
		s.TPM = n.probeTPM(ctx, d.Device)
	}
	return s
}

// deviceSize is the size of a block device (BLKGETSIZE64) or a regular file.
func deviceSize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Mode().IsRegular() {
		return fi.Size(), nil
	}
	if fi.Mode()&fs.ModeDevice == 0 || fi.Mode()&fs.ModeCharDevice != 0 {
		return 0, fmt.Errorf("not a block device but %s", fi.Mode().Type())
	}
	var size uint64
	if err := ioctlUint64(f, unix.BLKGETSIZE64, &size); err != nil {
		return 0, fmt.Errorf("BLKGETSIZE64: %w", err)
	}
	return int64(size), nil
}

// contentDigest hashes the first and last MiB of a device of size bytes.
func contentDigest(r io.ReaderAt, size int64) (string, error) {
	h := sha256.New()
	for _, off := range []int64{0, max(size-1<<20, 0)} {
		n := min(int64(1<<20), size-off)
		if n <= 0 {
			continue
		}
		b := make([]byte, n)
		if _, err := r.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("reading %d bytes at %d: %w", n, off, err)
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// mapping finds the device-mapper device holding disk kernel (from
// /sys/block/KERNEL/holders) and where it is mounted.
func (n *Node) mapping(kernel string, mounts []mount) *Mapping {
	holders, err := os.ReadDir(n.path("sys/block/" + kernel + "/holders"))
	if err != nil {
		return nil
	}
	for _, h := range holders {
		if !strings.HasPrefix(h.Name(), "dm-") {
			continue
		}
		m := &Mapping{Kernel: h.Name()}
		name, err := os.ReadFile(n.path("sys/block/" + h.Name() + "/dm/name"))
		if err != nil {
			m.Error = err.Error()
			return m
		}
		m.Name = strings.TrimSpace(string(name))
		if dev, err := os.ReadFile(n.path("sys/block/" + h.Name() + "/dev")); err == nil {
			maj, minr, ok := strings.Cut(strings.TrimSpace(string(dev)), ":")
			if ok {
				for _, mt := range mounts {
					if strconv.Itoa(mt.Major) == maj && strconv.Itoa(mt.Minor) == minr {
						m.Mounts = append(m.Mounts, mt.MountPoint)
					}
				}
			}
		}
		return m
	}
	return nil
}

// mountPoint reads the state of the mount point p.
func (n *Node) mountPoint(p string, mounts []mount) MountPointState {
	var st MountPointState
	if p == "" {
		return st
	}
	for _, m := range mounts {
		if m.MountPoint == p {
			st.Mounted = true
			if link, err := os.Readlink(n.path(fmt.Sprintf("sys/dev/block/%d:%d", m.Major, m.Minor))); err == nil {
				st.Source = filepath.Base(link)
			} else {
				st.Source = m.Source
			}
		}
	}
	fi, err := os.Stat(n.path(p))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return st
	case err != nil:
		st.Error = err.Error()
		return st
	}
	st.Exists = true
	if !fi.IsDir() {
		st.NotDir = true
		return st
	}
	if !st.Mounted {
		entries, err := os.ReadDir(n.path(p))
		if err != nil {
			st.Error = err.Error()
		}
		st.Entries = len(entries)
	}
	return st
}

// probeTPM asks systemd's token plugin, through cryptsetup, whether the TPM
// unseals the disk's key now. It activates nothing.
func (n *Node) probeTPM(ctx context.Context, device string) TPMProbe {
	if n.TPM2Device != "auto" {
		return TPMProbe{Result: TPMNotProbed, Detail: "the probe uses the node's own TPM (tpm2-device=auto); this node side uses " + n.TPM2Device}
	}
	if entries, err := os.ReadDir(n.path("sys/class/tpmrm")); err != nil || len(entries) == 0 {
		return TPMProbe{Result: TPMNoDevice, Detail: "no TPM resource manager (/sys/class/tpmrm is empty)"}
	}
	_, err := n.Run.Run(ctx, Cmd{Argv: []string{"cryptsetup", "open", "--test-passphrase", "--token-only", "--token-type", TPM2TokenType, n.path(device)}})
	if err != nil {
		return TPMProbe{Result: TPMRefused, Detail: err.Error()}
	}
	return TPMProbe{Result: TPMOpens}
}
