package preflight

import (
	"bytes"
	"castellan/installer/testenv"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"castellan/installer/facts"
)

// needCommand skips without the tool, or fails under make test, which
// installs the tools and sets CASTELLAN_REQUIRE_REAL_PEERS=1.
func needCommand(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err == nil {
		return
	}
	testenv.Missing(t, "%s is not installed (make test-deps installs it)", name)
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

// newImage makes a sparse image file of size bytes.
func newImage(t *testing.T, size int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return img
}

func probeFile(t *testing.T, path string) []facts.Signature {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	sigs, err := Probe(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	return sigs
}

func types(sigs []facts.Signature) string {
	var ts []string
	for _, s := range sigs {
		ts = append(ts, s.Type)
	}
	return strings.Join(ts, ",")
}

// blkid asks util-linux's libblkid (an independent implementation) what an
// image holds, as TYPE or PTTYPE.
func blkid(t *testing.T, img string) string {
	t.Helper()
	needCommand(t, "blkid")
	out, _ := exec.Command("blkid", "-p", "-o", "export", img).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "TYPE="); ok {
			return v
		}
		if v, ok := strings.CutPrefix(line, "PTTYPE="); ok {
			return v
		}
	}
	return ""
}

// TestProbeRealTools formats image files with the real tools a disk may
// have met before castellan, and checks each is recognised, with libblkid
// agreeing on the type.
func TestProbeRealTools(t *testing.T) {
	const M = 1 << 20
	tests := []struct {
		want string
		size int64
		tool []string // {IMG} is replaced by the image path
		uuid bool     // the signature carries the UUID blkid reports
		loop bool     // the tool needs a block device: run it on a loop device
	}{
		{"", 64 * M, nil, false, false},
		{"ext4", 64 * M, []string{"mkfs.ext4", "-q", "-F", "-L", "old-data", "{IMG}"}, true, false},
		{"ext2", 64 * M, []string{"mkfs.ext2", "-q", "-F", "{IMG}"}, true, false},
		{"ext3", 64 * M, []string{"mkfs.ext3", "-q", "-F", "{IMG}"}, true, false},
		{"xfs", 320 * M, []string{"mkfs.xfs", "-q", "-f", "{IMG}"}, true, false},
		{"btrfs", 200 * M, []string{"mkfs.btrfs", "-q", "-f", "{IMG}"}, true, false},
		{"vfat", 64 * M, []string{"mkfs.vfat", "{IMG}"}, true, false},
		{"swap", 64 * M, []string{"mkswap", "{IMG}"}, true, false},
		{"gpt", 64 * M, []string{"parted", "-s", "{IMG}", "mklabel", "gpt"}, false, false},
		{"dos", 64 * M, []string{"parted", "-s", "{IMG}", "mklabel", "msdos", "mkpart", "primary", "1MiB", "32MiB"}, false, false},
		{"LVM2_member", 64 * M, []string{"pvcreate", "-qq", "-ff", "-y", "{IMG}"}, true, true},
		{"bcache", 64 * M, []string{"make-bcache", "-B", "{IMG}"}, true, false},
		{"luks2", 64 * M, []string{"sh", "-c", "echo pw | cryptsetup luksFormat --type luks2 --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \"$0\"", "{IMG}"}, true, false},
		{"luks1", 64 * M, []string{"sh", "-c", "echo pw | cryptsetup luksFormat --type luks1 --batch-mode --pbkdf-force-iterations 1000 \"$0\"", "{IMG}"}, true, false},
	}
	for _, tt := range tests {
		name := tt.want
		if name == "" {
			name = "blank"
		}
		t.Run(name, func(t *testing.T) {
			img := newImage(t, tt.size)
			if tt.tool != nil {
				needCommand(t, tt.tool[0])
				if tt.tool[0] == "sh" {
					needCommand(t, "cryptsetup")
				}
				target := img
				if tt.loop {
					target = loopDevice(t, img)
				}
				args := make([]string, len(tt.tool))
				for i, a := range tt.tool {
					args[i] = strings.ReplaceAll(a, "{IMG}", target)
				}
				cmd := exec.Command(args[0], args[1:]...)
				cmd.Env = append(os.Environ(), "LVM_SUPPRESS_FD_WARNINGS=1")
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("%v: %v\n%s", args, err, out)
				}
			}
			sigs := probeFile(t, img)
			if got := types(sigs); got != tt.want {
				t.Fatalf("Probe = %q (%+v), want %q", got, sigs, tt.want)
			}
			if tt.want == "" {
				return
			}
			if b := blkid(t, img); b != tt.want && !(tt.want == "luks1" || tt.want == "luks2") {
				t.Errorf("blkid says %q, castellan %q", b, tt.want)
			}
			if tt.uuid {
				out, _ := exec.Command("blkid", "-p", "-s", "UUID", "-o", "value", img).Output()
				if want := strings.TrimSpace(string(out)); !strings.EqualFold(sigs[0].UUID, want) {
					t.Errorf("UUID = %q, blkid says %q", sigs[0].UUID, want)
				}
			}
		})
	}
}

// TestProbeLUKS2Tokens formats a real LUKS2 header with cryptsetup, adds
// tokens with cryptsetup token import, and reads them back from the header.
func TestProbeLUKS2Tokens(t *testing.T) {
	needCommand(t, "cryptsetup")
	img := newImage(t, 32<<20)
	run(t, "sh", "-c", "echo pw | cryptsetup luksFormat --type luks2 --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --label data \"$0\"", img)
	sigs := probeFile(t, img)
	if len(sigs) != 1 || sigs[0].LUKS == nil {
		t.Fatalf("Probe = %+v", sigs)
	}
	l := sigs[0].LUKS
	uuid := strings.TrimSpace(run(t, "cryptsetup", "luksUUID", img))
	if l.Version != 2 || l.UUID != uuid || l.Label != "data" || !l.ChecksumOK || l.Keyslots != 1 || len(l.TokenTypes) != 0 || l.Castellan || l.Error != "" {
		t.Fatalf("LUKS = %+v, cryptsetup's UUID %s", l, uuid)
	}
	for _, tok := range []string{`{"type":"example-vendor","keyslots":[]}`, `{"type":"castellan","keyslots":["0"]}`} {
		cmd := exec.Command("cryptsetup", "token", "import", img)
		cmd.Stdin = strings.NewReader(tok)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("token import: %v\n%s", err, out)
		}
	}
	l = probeFile(t, img)[0].LUKS
	if strings.Join(l.TokenTypes, ",") != "example-vendor,castellan" || !l.Castellan || !l.ChecksumOK {
		t.Fatalf("after token import: %+v", l)
	}

	// The primary header wiped (as wipefs -a leaves a LUKS2 disk, or a
	// damaged one): the secondary header still opens the disk.
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	sigs = probeFile(t, img)
	if len(sigs) != 1 || sigs[0].Type != "luks2" || sigs[0].LUKS == nil || sigs[0].LUKS.HeaderOffset != 16384 || !sigs[0].LUKS.Castellan || sigs[0].UUID != uuid {
		t.Fatalf("primary wiped: %+v %+v", sigs, sigs[0].LUKS)
	}
	// One byte of the JSON changed behind cryptsetup's back: the checksum says so.
	f, _ = os.OpenFile(img, os.O_RDWR, 0)
	f.WriteAt([]byte(" "), 16384+4096+1)
	f.Close()
	l = probeFile(t, img)[0].LUKS
	if l.ChecksumOK || !strings.Contains(l.Error, "checksum mismatch") || len(l.TokenTypes) != 0 {
		t.Fatalf("damaged header: %+v", l)
	}
}

// TestProbeRegions places each signature castellan cannot make with a real
// tool here (no md or ZFS in the host kernel) at the offset its format
// puts it, and checks it is found there, that libblkid (an independent
// implementation) agrees, and that the same bytes one block off are not
// taken for it (which a wrong offset would).
func TestProbeRegions(t *testing.T) {
	const size = 64<<20 + 3<<10 // not 64 KiB-aligned: the tail offsets depend on alignment
	md1 := func(off int64) func([]byte) {
		return func(b []byte) {
			sb := b[off:]
			copy(sb, mdMagic)
			binary.LittleEndian.PutUint32(sb[4:], 1)
			copy(sb[16:], bytes.Repeat([]byte{0xab}, 16))
			copy(sb[32:], "node1:data")
			binary.LittleEndian.PutUint64(sb[144:], uint64(off)>>9)
		}
	}
	md090 := func(b []byte) {
		off := int64(size)&^0xffff - 0x10000
		copy(b[off:], mdMagic)
		binary.LittleEndian.PutUint32(b[off+8:], 90)
	}
	zfsLabels := func(b []byte) {
		for _, l := range []int64{0, 256 << 10} {
			for i := int64(0); i < 2; i++ {
				binary.LittleEndian.PutUint64(b[l+128<<10+i*1024:], 0x00bab10c)
			}
		}
	}
	tests := []struct {
		name    string
		write   func([]byte)
		want    string
		version string
		offset  int64
		blkid   string
	}{
		{"md 1.2 at 4 KiB", md1(4096), "linux_raid_member", "1.2", 4096, "linux_raid_member"},
		{"md 1.1 at 0", md1(0), "linux_raid_member", "1.1", 0, "linux_raid_member"},
		{"md 1.0 near the end", md1(int64(size)&^0xfff - 0x2000), "linux_raid_member", "1.0", int64(size)&^0xfff - 0x2000, "linux_raid_member"},
		{"md 0.90 at the end", md090, "linux_raid_member", "0.90.0", int64(size)&^0xffff - 0x10000, "linux_raid_member"},
		{"md 1.0 one block off is only data", md1(int64(size)&^0xfff - 0x3000), "data", "", int64(size)&^0xfff - 0x3000, ""},
		{"zfs labels 0 and 1", zfsLabels, "zfs_member", "", 128 << 10, "zfs_member"},
		{"GPT backup header only", func(b []byte) { copy(b[size-512:], "EFI PART") }, "gpt", "backup header", size - 512, ""},
		{"LVM label in sector 0", func(b []byte) { copy(b[0:], "LABELONE"); copy(b[24:], "LVM2 001") }, "LVM2_member", "LVM2 001", 0, ""},
		{"swap with 64 KiB pages", func(b []byte) { copy(b[65526:], "SWAPSPACE2") }, "swap", "1", 65526, ""},
		{"LUKS2 secondary at 4 MiB, beyond the head", func(b []byte) { copy(b[4<<20:], "SKUL\xba\xbe\x00\x02") }, "luks2", "2", 4 << 20, ""},
		{"one byte deep in the head", func(b []byte) { b[700000] = 1 }, "data", "", 700000, ""},
		{"one byte in the last sector", func(b []byte) { b[size-1] = 1 }, "data", "", size - 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := make([]byte, size)
			tt.write(b)
			img := filepath.Join(t.TempDir(), "disk.img")
			if err := os.WriteFile(img, b, 0o600); err != nil {
				t.Fatal(err)
			}
			sigs := probeFile(t, img)
			if len(sigs) != 1 || sigs[0].Type != tt.want || sigs[0].Version != tt.version || sigs[0].Offset != tt.offset {
				t.Fatalf("Probe = %+v, want one %s version %q at %d", sigs, tt.want, tt.version, tt.offset)
			}
			if tt.blkid != "" {
				if got := blkid(t, img); got != tt.blkid {
					t.Errorf("blkid says %q for the image castellan calls %s: the fixture is not what it claims", got, tt.want)
				}
			}
		})
	}
}

// FuzzDetect: only all-zero input is blank, and every signature found
// points inside the bytes read, at bytes that are not all zero.
func FuzzDetect(f *testing.F) {
	f.Add([]byte("LUKS\xba\xbe\x00\x02"), []byte{}, int64(8<<20))
	f.Add(bytes.Repeat([]byte{0}, 2048), []byte{0, 1}, int64(4096))
	f.Add(append(bytes.Repeat([]byte{0}, 1080), 0x53, 0xef), []byte(nil), int64(1<<30))
	f.Add(append(bytes.Repeat([]byte{0}, 4096), []byte(mdMagic+"\x01\x00\x00\x00")...), []byte(mdMagic), int64(65536*3))
	f.Fuzz(func(t *testing.T, head, tail []byte, size int64) {
		size = max(size, int64(len(head)+len(tail)))
		im := image{size: size, regions: []region{{0, head}, {size - int64(len(tail)), tail}}}
		sigs := detect(im)
		if (len(sigs) == 0) != (isZero(head) && isZero(tail)) {
			t.Fatalf("detect = %+v for blank=%v", sigs, isZero(head) && isZero(tail))
		}
		for _, s := range sigs {
			b := im.at(s.Offset, 1)
			if b == nil {
				t.Fatalf("%s at %d: outside the bytes read", s.Type, s.Offset)
			}
			n := 1
			for n < 8 && im.at(s.Offset, n+1) != nil {
				n++
			}
			if isZero(im.at(s.Offset, n)) {
				t.Fatalf("%s at %d: points at zeros", s.Type, s.Offset)
			}
		}
	})
}
