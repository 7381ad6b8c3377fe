package preflight

import (
	"bytes"
	"encoding/binary"
)

// Signature regions: what the first and last bytes of a disk must hold for
// the disk to count as blank. Formatting a disk that holds anything is the
// one mistake an installer must never make, so anything non-zero that is not
// recognised is reported as "data".
const (
	headBytes = 1 << 20 // partition tables, filesystem and LUKS/LVM superblocks
	tailBytes = 1 << 20 // GPT backup header, md/raid superblocks (0.90, 1.0)
)

// Known signatures, checked in order; the first match names the disk's content.
var magics = []struct {
	name   string
	offset int
	magic  []byte
}{
	{"luks", 0, []byte("LUKS\xba\xbe")},
	{"luks2", 16384, []byte("SKUL\xba\xbe")}, // LUKS2 secondary header: the primary may be wiped
	{"xfs", 0, []byte("XFSB")},
	{"LVM2_member", 536, []byte("LVM2 001")},
	{"gpt", 512, []byte("EFI PART")},
	{"btrfs", 65600, []byte("_BHRfS_M")},
	{"swap", 4086, []byte("SWAPSPACE2")},
	{"swap", 4086, []byte("SWAP-SPACE")},
	{"iso9660", 32769, []byte("CD001")},
	{"zfs_member", 8192, []byte{0x0c, 0xb1, 0xba, 0x00}},
	{"linux_raid_member", 4096, []byte{0xfc, 0x4e, 0x2b, 0xa9}}, // md 1.2
}

// DetectSignature names what the head and tail of a disk hold: "" for a
// blank disk (all zeros), a known signature ("ext4", "luks2", "gpt", ...),
// or "data" for non-zero content it does not recognise.
func DetectSignature(head, tail []byte) string {
	if name := detect(head); name != "" {
		return name
	}
	if isZero(head) && isZero(tail) {
		return ""
	}
	if len(tail) >= 4096 && md090(tail) {
		return "linux_raid_member"
	}
	return "data"
}

func detect(b []byte) string {
	at := func(off int, magic []byte) bool {
		return off+len(magic) <= len(b) && bytes.Equal(b[off:off+len(magic)], magic)
	}
	for _, m := range magics {
		if at(m.offset, m.magic) {
			if m.name == "luks" && len(b) >= 8 {
				switch binary.BigEndian.Uint16(b[6:8]) {
				case 1:
					return "luks1"
				case 2:
					return "luks2"
				}
			}
			return m.name
		}
	}
	if at(1080, []byte{0x53, 0xef}) {
		return extVersion(b)
	}
	if at(510, []byte{0x55, 0xaa}) {
		if at(54, []byte("FAT")) || at(82, []byte("FAT32")) {
			return "vfat"
		}
		if !isZero(b[446:510]) {
			return "dos"
		}
	}
	return ""
}

// extVersion tells ext2, ext3 and ext4 apart by their feature flags.
func extVersion(b []byte) string {
	const sb = 1024
	if len(b) < sb+0x68 {
		return "ext4"
	}
	compat := binary.LittleEndian.Uint32(b[sb+0x5c:])
	incompat := binary.LittleEndian.Uint32(b[sb+0x60:])
	const (
		hasJournal = 0x4
		extents    = 0x40
		flexBG     = 0x200
		bit64      = 0x80
	)
	switch {
	case incompat&(extents|flexBG|bit64) != 0:
		return "ext4"
	case compat&hasJournal != 0:
		return "ext3"
	default:
		return "ext2"
	}
}

// md090 finds an md 0.90 superblock, which sits 64 KiB-aligned near the end.
func md090(tail []byte) bool {
	magic := []byte{0xfc, 0x4e, 0x2b, 0xa9}
	for off := len(tail) - 65536; off >= 0; off -= 65536 {
		if off+4 <= len(tail) && bytes.Equal(tail[off:off+4], magic) {
			return true
		}
	}
	return false
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
