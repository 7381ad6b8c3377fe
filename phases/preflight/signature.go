package preflight

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"

	"castellan/installer/facts"
)

// What is read of a device to tell whether it is blank, and which formats
// are recognised where. Formatting a disk that holds anything is the one
// mistake an installer must never make, so any non-zero byte in the regions
// read that no format below explains is reported as "data".
//
// Regions read (device of size S):
//   - the head, [0, 1 MiB): partition tables (MBR, GPT at LBA 1 for 512 and
//     4096-byte sectors), filesystem superblocks (ext2/3/4 at 1024, xfs at 0,
//     btrfs at 64 KiB, vfat/ntfs boot sectors, iso9660 at 32 KiB), swap
//     (page size - 10 for 4 to 64 KiB pages), LVM2 labels (sectors 0-3), the
//     LUKS1/LUKS2 primary header, LUKS2 secondary headers up to 512 KiB, md
//     RAID 1.1 (0) and 1.2 (4 KiB) superblocks, bcache (4 KiB), ZFS labels
//     0 and 1 (uberblocks at 128 KiB and 384 KiB);
//   - the tail, [S - 1 MiB, S): the GPT backup header (last LBA), md RAID
//     0.90 (last 64 KiB-aligned block) and 1.0 (8 KiB before the
//     4 KiB-aligned end) superblocks, ZFS labels 2 and 3;
//   - 4 KiB at 1, 2 and 4 MiB: LUKS2 secondary headers of the largest
//     header sizes (cryptsetup's LUKS2_HDR2_OFFSETS);
//   - a LUKS2 header found is then read in full (up to 4 MiB) for its JSON.
//
// Offsets are those of util-linux's libblkid probes and of each format's
// on-disk specification (cryptsetup's LUKS2 on-disk format, the kernel's
// md_p.h, bcache's bcache.h, OpenZFS's vdev label layout, UEFI 2.10 5.3).
const (
	headBytes = 1 << 20
	tailBytes = 1 << 20
)

// luks2HeaderOffsets are where a LUKS2 secondary header may sit: the
// possible sizes of the primary header (cryptsetup lib/luks2/luks2.h).
var luks2HeaderOffsets = []int64{0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000}

// region is bytes read from a device at an offset.
type region struct {
	off int64
	b   []byte
}

// image is what was read of a device of size bytes: a few regions.
type image struct {
	size    int64
	regions []region
}

// at returns the n bytes at off, or nil when they were not all read.
func (im image) at(off int64, n int) []byte {
	if off < 0 || n < 0 {
		return nil
	}
	for _, r := range im.regions {
		if off >= r.off && off+int64(n) <= r.off+int64(len(r.b)) {
			return r.b[off-r.off : off-r.off+int64(n)]
		}
	}
	return nil
}

func (im image) is(off int64, magic string) bool {
	b := im.at(off, len(magic))
	return b != nil && string(b) == magic
}

// readImage reads the regions listed above from r, a device of size bytes.
func readImage(r io.ReaderAt, size int64) (image, error) {
	im := image{size: size}
	read := func(off, n int64) error {
		if n <= 0 {
			return nil
		}
		b := make([]byte, n)
		got, err := r.ReadAt(b, off)
		if err != nil && !(errors.Is(err, io.EOF) && got == len(b)) {
			return fmt.Errorf("reading %d bytes at offset %d: %w", n, off, err)
		}
		im.regions = append(im.regions, region{off, b})
		return nil
	}
	head := min(headBytes, size)
	if err := read(0, head); err != nil {
		return im, err
	}
	tailOff := max(size-tailBytes, head)
	for _, off := range luks2HeaderOffsets {
		if off >= head && off+4096 <= tailOff {
			if err := read(off, 4096); err != nil {
				return im, err
			}
		}
	}
	if err := read(tailOff, size-tailOff); err != nil {
		return im, err
	}
	return im, nil
}

// Probe reads the regions of a device (or image) of size bytes where
// signatures live and names everything it finds there, in offset order; an
// empty result means those regions are all zeros. LUKS2 headers are read in
// full and parsed. The error is an I/O error: the device could not be read
// and may hold anything.
func Probe(r io.ReaderAt, size int64) ([]facts.Signature, error) {
	im, err := readImage(r, size)
	if err != nil {
		return nil, err
	}
	sigs := detect(im)
	for i := range sigs {
		if sigs[i].Type == "luks2" {
			l := readLUKS2(r, sigs[i].Offset, size)
			sigs[i].LUKS = l
			if sigs[i].UUID == "" {
				sigs[i].UUID = l.UUID
			}
		}
	}
	return sigs, nil
}

// detect names what im holds. Every signature's Offset lies within the bytes
// read, at a non-zero byte; an empty result means every byte read is zero.
func detect(im image) []facts.Signature {
	var out []facts.Signature
	add := func(s facts.Signature) { out = append(out, s) }

	// LUKS: "LUKS\xba\xbe" then a big-endian version.
	if im.is(0, "LUKS\xba\xbe") {
		if v := im.at(6, 2); v != nil {
			switch binary.BigEndian.Uint16(v) {
			case 1:
				add(facts.Signature{Type: "luks1", Version: "1", UUID: cString(im.at(168, 40))})
			case 2:
				add(facts.Signature{Type: "luks2", Version: "2", UUID: cString(im.at(168, 40)), Label: cString(im.at(24, 48))})
			default:
				add(facts.Signature{Type: "luks", Version: fmt.Sprint(binary.BigEndian.Uint16(v))})
			}
		}
	} else {
		// The primary header wiped or damaged: a secondary one still opens the disk.
		for _, off := range luks2HeaderOffsets {
			if im.is(off, "SKUL\xba\xbe") {
				add(facts.Signature{Type: "luks2", Offset: off, Version: "2", UUID: cString(im.at(off+168, 40)), Label: cString(im.at(off+24, 48))})
				break
			}
		}
	}
	if im.is(0, "XFSB") {
		add(facts.Signature{Type: "xfs", UUID: uuid(im.at(32, 16)), Label: cString(im.at(108, 12))})
	}
	for sector := int64(0); sector < 4; sector++ {
		off := sector * 512
		if im.is(off, "LABELONE") && im.is(off+24, "LVM2 001") {
			s := facts.Signature{Type: "LVM2_member", Offset: off, Version: "LVM2 001"}
			if ph := im.at(off+20, 4); ph != nil {
				s.UUID = lvmUUID(im.at(off+int64(binary.LittleEndian.Uint32(ph)), 32))
			}
			add(s)
			break
		}
	}
	gpt := false
	for _, lba := range []int64{512, 4096} {
		if im.is(lba, "EFI PART") {
			add(facts.Signature{Type: "gpt", Offset: lba})
			gpt = true
			break
		}
	}
	if !gpt {
		// The backup GPT header sits in the last LBA; alone, it still says
		// the disk was partitioned.
		for _, lba := range []int64{512, 4096} {
			if off := im.size - lba; off > 0 && im.is(off, "EFI PART") {
				add(facts.Signature{Type: "gpt", Offset: off, Version: "backup header"})
				gpt = true
				break
			}
		}
	}
	bootSector := im.is(510, "\x55\xaa")
	fat := bootSector && (im.is(54, "FAT") || im.is(82, "FAT32"))
	switch {
	case fat && im.is(82, "FAT32"):
		add(facts.Signature{Type: "vfat", Offset: 82, Version: "FAT32", Label: trimLabel(im.at(71, 11)), UUID: fatSerial(im.at(67, 4))})
	case fat:
		add(facts.Signature{Type: "vfat", Offset: 54, Label: trimLabel(im.at(43, 11)), UUID: fatSerial(im.at(39, 4))})
	}
	ntfs := im.is(3, "NTFS    ")
	if ntfs {
		add(facts.Signature{Type: "ntfs", Offset: 3})
	}
	if bootSector && !fat && !ntfs && !gpt {
		if pt := im.at(446, 64); pt != nil && !isZero(pt) {
			add(facts.Signature{Type: "dos", Offset: 510})
		}
	}
	if im.is(1080, "\x53\xef") {
		add(facts.Signature{Type: extVersion(im), Offset: 1080, UUID: uuid(im.at(1024+0x68, 16)), Label: cString(im.at(1024+0x78, 16))})
	}
	if im.is(65600, "_BHRfS_M") {
		add(facts.Signature{Type: "btrfs", Offset: 65600, UUID: uuid(im.at(65536+32, 16)), Label: cString(im.at(65536+0x12b, 256))})
	}
	for _, page := range []int64{4096, 8192, 16384, 32768, 65536} {
		if im.is(page-10, "SWAPSPACE2") {
			add(facts.Signature{Type: "swap", Offset: page - 10, Version: "1", UUID: uuid(im.at(1036, 16)), Label: cString(im.at(1052, 16))})
			break
		}
		if im.is(page-10, "SWAP-SPACE") {
			add(facts.Signature{Type: "swap", Offset: page - 10, Version: "0"})
			break
		}
	}
	if im.is(32769, "CD001") {
		add(facts.Signature{Type: "iso9660", Offset: 32769, Label: trimLabel(im.at(32768+40, 32))})
	}
	if s, ok := mdRAID(im); ok {
		add(s)
	}
	// bcache: the superblock at 4 KiB, its magic 24 bytes in (bcache.h).
	if im.is(4096+24, "\xc6\x85\x73\xf6\x4e\x1a\x45\xca\x82\x65\xf5\x7f\x48\xba\x6d\x81") {
		add(facts.Signature{Type: "bcache", Offset: 4096 + 24, UUID: uuid(im.at(4096+40, 16))})
	}
	if s, ok := zfs(im); ok {
		add(s)
	}
	if len(out) == 0 {
		if off, ok := firstNonZero(im); ok {
			add(facts.Signature{Type: "data", Offset: off})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	return out
}

// extVersion tells ext2, ext3 and ext4 apart by their feature flags.
func extVersion(im image) string {
	compat := im.at(1024+0x5c, 4)
	incompat := im.at(1024+0x60, 4)
	if compat == nil || incompat == nil {
		return "ext4"
	}
	const (
		hasJournal = 0x4
		extents    = 0x40
		bit64      = 0x80
		flexBG     = 0x200
	)
	switch {
	case binary.LittleEndian.Uint32(incompat)&(extents|flexBG|bit64) != 0:
		return "ext4"
	case binary.LittleEndian.Uint32(compat)&hasJournal != 0:
		return "ext3"
	default:
		return "ext2"
	}
}

// mdMagic is MD_SB_MAGIC (0xa92b4efc) as stored little-endian.
const mdMagic = "\xfc\x4e\x2b\xa9"

// mdRAID finds an md RAID member's superblock (the kernel's
// include/uapi/linux/raid/md_p.h): version 0.90 in the last 64 KiB-aligned
// 64 KiB of the device (either byte order), version 1.0 8 KiB before the
// 4 KiB-aligned end, 1.1 at 0, 1.2 at 4 KiB. A 1.x superblock records its
// own offset in sectors (super_offset, at 144), which must match.
func mdRAID(im image) (facts.Signature, bool) {
	if im.size > 0x10000 {
		off := im.size&^0xffff - 0x10000
		if b := im.at(off, 16); b != nil {
			var order binary.ByteOrder
			switch {
			case string(b[:4]) == mdMagic:
				order = binary.LittleEndian
			case string(b[:4]) == "\xa9\x2b\x4e\xfc":
				order = binary.BigEndian
			}
			if order != nil && order.Uint32(b[4:]) == 0 {
				return facts.Signature{Type: "linux_raid_member", Offset: off,
					Version: fmt.Sprintf("0.%d.%d", order.Uint32(b[8:]), order.Uint32(b[12:]))}, true
			}
		}
	}
	v1 := func(off int64, version string) (facts.Signature, bool) {
		b := im.at(off, 256)
		if b == nil || string(b[:4]) != mdMagic || binary.LittleEndian.Uint32(b[4:]) != 1 ||
			binary.LittleEndian.Uint64(b[144:]) != uint64(off)>>9 {
			return facts.Signature{}, false
		}
		return facts.Signature{Type: "linux_raid_member", Offset: off, Version: version, UUID: uuid(b[16:32]), Label: cString(b[32:64])}, true
	}
	if im.size > 0x10000 {
		if s, ok := v1(im.size&^0xfff-0x2000, "1.0"); ok {
			return s, true
		}
	}
	if s, ok := v1(0, "1.1"); ok {
		return s, true
	}
	return v1(0x1000, "1.2")
}

// zfs finds a ZFS pool member: four vdev labels of 256 KiB (two at the
// start, two at the 256 KiB-aligned end), each holding 128 uberblocks of
// 1 KiB from 128 KiB in, each starting with the magic 0x00bab10c in the
// writer's byte order. Like libblkid, four uberblocks make a match.
func zfs(im image) (facts.Signature, bool) {
	const label = 256 << 10
	align := im.size % label
	offs := []int64{0, label, im.size - 2*label - align, im.size - label - align}
	found, first := 0, int64(-1)
	for _, l := range offs {
		if l < 0 {
			continue
		}
		for i := int64(0); i < 128; i++ {
			off := l + 128<<10 + i*1024
			b := im.at(off, 8)
			if b == nil {
				continue
			}
			if v := binary.LittleEndian.Uint64(b); v == 0x00bab10c || v == 0x0cb1ba0000000000 {
				found++
				if first < 0 {
					first = off
				}
			}
		}
	}
	if found < 4 {
		return facts.Signature{}, false
	}
	return facts.Signature{Type: "zfs_member", Offset: first}, true
}

func firstNonZero(im image) (int64, bool) {
	rs := append([]region(nil), im.regions...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].off < rs[j].off })
	for _, r := range rs {
		for j, c := range r.b {
			if c != 0 {
				return r.off + int64(j), true
			}
		}
	}
	return 0, false
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

// cString is a NUL-terminated string field, with anything unprintable dropped.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return printable(b)
}

func trimLabel(b []byte) string {
	s := printable(bytes.TrimRight(b, " \x00"))
	if s == "NO NAME" {
		return ""
	}
	return s
}

func printable(b []byte) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c >= 0x20 && c < 0x7f {
			out = append(out, c)
		}
	}
	return string(out)
}

// uuid formats 16 bytes as 8-4-4-4-12 hex digits; "" when all zero or missing.
func uuid(b []byte) string {
	if len(b) != 16 || isZero(b) {
		return ""
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// lvmUUID formats LVM's 32-character PV UUID as lvm prints it (6-4-4-4-4-4-6).
func lvmUUID(b []byte) string {
	if len(b) != 32 || isZero(b) {
		return ""
	}
	s := printable(b)
	if len(s) != 32 {
		return ""
	}
	return s[0:6] + "-" + s[6:10] + "-" + s[10:14] + "-" + s[14:18] + "-" + s[18:22] + "-" + s[22:26] + "-" + s[26:32]
}

// fatSerial formats a FAT volume serial number as blkid does (XXXX-XXXX).
func fatSerial(b []byte) string {
	if len(b) != 4 || isZero(b) {
		return ""
	}
	v := binary.LittleEndian.Uint32(b)
	return fmt.Sprintf("%04X-%04X", v>>16, v&0xffff)
}
