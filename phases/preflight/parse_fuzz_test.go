package preflight

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"castellan/installer/facts"
)

// escapeOctal escapes a path as the kernel does in mountinfo and /proc/swaps
// (fs/proc_namespace.c: space, tab, newline and backslash as \ooo).
func escapeOctal(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c == ' ' || c == '\t' || c == '\n' || c == '\\' {
			fmt.Fprintf(&b, `\%03o`, c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

func formatMountinfo(m mountInfo, optional string) string {
	if optional != "" {
		optional += " "
	}
	return fmt.Sprintf("%d %d %d:%d %s %s rw,relatime %s- %s %s rw", m.ID, m.Parent, m.Major, m.Minor,
		escapeOctal(m.Root), escapeOctal(m.MountPoint), optional, escapeOctal(m.FSType), escapeOctal(m.Source))
}

func TestParseMountinfo(t *testing.T) {
	in := "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n" +
		"37 35 0:45 / /srv/with\\040space\\134back rw - btrfs /dev/vdb rw\n" +
		"38 35 8:1 / /no-optional rw - ext4 /dev/sda1 rw\n" +
		"garbage line\n" +
		"39 35 8:1 / /no-separator rw shared:1 ext4 /dev/sda1 rw\n"
	got := parseMountinfo([]byte(in))
	want := []mountInfo{
		{ID: 36, Parent: 35, Major: 98, Minor: 0, Root: "/mnt1", MountPoint: "/mnt2", FSType: "ext3", Source: "/dev/root"},
		{ID: 37, Parent: 35, Major: 0, Minor: 45, Root: "/", MountPoint: `/srv/with space\back`, FSType: "btrfs", Source: "/dev/vdb"},
		{ID: 38, Parent: 35, Major: 8, Minor: 1, Root: "/", MountPoint: "/no-optional", FSType: "ext4", Source: "/dev/sda1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseMountinfo =\n%+v\nwant\n%+v", got, want)
	}
}

// FuzzParseMountinfo: a line written as the kernel writes it reads back as
// it was, whatever bytes its paths hold; anything else never panics and
// never yields a line the kernel could not have written.
func FuzzParseMountinfo(f *testing.F) {
	f.Add(uint32(254), uint32(1), "/", "/srv/a b", "ext4", "/dev/vda1", "shared:1 master:2", []byte("22 1 254:1 / / rw - ext4 /dev/vda1 rw\n"))
	f.Add(uint32(0), uint32(45), "/@", "/mnt/\\x", "btrfs", "/dev/vdb", "", []byte("x - y"))
	f.Fuzz(func(t *testing.T, major, minor uint32, root, mnt, fstype, source, optional string, raw []byte) {
		for _, s := range []string{root, mnt, fstype, source} {
			if s == "" {
				return // the kernel never writes an empty field
			}
		}
		if strings.ContainsAny(optional, "\n\t") || strings.Contains(" "+optional+" ", " - ") || strings.Contains(optional, "  ") || strings.HasPrefix(optional, " ") || strings.HasSuffix(optional, " ") {
			return
		}
		m := mountInfo{ID: 7, Parent: 1, Major: major, Minor: minor, Root: root, MountPoint: mnt, FSType: fstype, Source: source}
		got := parseMountinfo([]byte(formatMountinfo(m, optional) + "\n"))
		if len(got) != 1 || got[0] != m {
			t.Fatalf("round trip of %+v (optional %q) = %+v", m, optional, got)
		}
		parsed := parseMountinfo(raw)
		if len(parsed) > strings.Count(string(raw), "\n")+1 {
			t.Fatalf("%d entries from %d lines", len(parsed), strings.Count(string(raw), "\n")+1)
		}
		for _, m := range parsed {
			if m.Root == "" || m.MountPoint == "" || m.FSType == "" || m.Source == "" {
				continue
			}
			if again := parseMountinfo([]byte(formatMountinfo(m, ""))); len(again) != 1 || again[0] != m {
				t.Fatalf("%+v parsed from %q reads back as %+v", m, raw, again)
			}
		}
	})
}

// formatProcNet writes a socket as the kernel's /proc/net/{tcp,udp}[6] do
// (net/ipv4/tcp_ipv4.c get_tcp4_sock, net/ipv6/tcp_ipv6.c get_tcp6_sock):
// addresses as 32-bit words in host order (little-endian here).
func formatProcNet(i int, s socket) string {
	a := s.Local.Addr().AsSlice()
	var addr strings.Builder
	for w := 0; w < len(a); w += 4 {
		fmt.Fprintf(&addr, "%08X", binary.LittleEndian.Uint32(a[w:]))
	}
	zero := strings.Repeat("0", addr.Len())
	return fmt.Sprintf("%4d: %s:%04X %s:0000 %02X 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000000000000 100 0 0 10 0",
		i, addr.String(), s.Local.Port(), zero, s.State, s.Inode)
}

func TestParseProcNet(t *testing.T) {
	in := procNetHeader +
		"   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n" +
		"   1: 00000000000000000000000001000000:2481 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7 1\n" +
		"   2: short line\n"
	got := parseProcNet([]byte(in))
	want := []socket{
		{Local: netip.MustParseAddrPort("127.0.0.1:8080"), State: tcpListen, Inode: 4242},
		{Local: netip.MustParseAddrPort("[::1]:9345"), State: tcpListen, Inode: 7},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseProcNet = %+v, want %+v", got, want)
	}
}

// FuzzParseProcNet: sockets written as the kernel writes them read back
// as they were (address, port, state, inode); anything else never panics.
func FuzzParseProcNet(f *testing.F) {
	f.Add([]byte{127, 0, 0, 1}, uint16(6443), uint8(0x0A), uint64(1), []byte(procNetHeader+"0: 0100007F:1F90 x"))
	f.Add(bytes.Repeat([]byte{0xfe}, 16), uint16(0), uint8(7), uint64(1<<40), []byte("\n\n"))
	f.Fuzz(func(t *testing.T, ip []byte, port uint16, state uint8, inode uint64, raw []byte) {
		addr, ok := netip.AddrFromSlice(ip)
		if !ok {
			return
		}
		s := socket{Local: netip.AddrPortFrom(addr, port), State: state, Inode: inode}
		got := parseProcNet([]byte(procNetHeader + formatProcNet(0, s) + "\n"))
		if len(got) != 1 || got[0] != s {
			t.Fatalf("round trip of %+v = %+v", s, got)
		}
		for _, s := range parseProcNet(raw) {
			if !s.Local.Addr().IsValid() {
				t.Fatalf("invalid address parsed from %q", raw)
			}
		}
	})
}

// FuzzParseSwaps: a swap area written as the kernel writes it reads back.
func FuzzParseSwaps(f *testing.F) {
	f.Add("/dev/vda2", "partition", uint64(1048572), uint64(0), int64(-2))
	f.Add("/swap file\\", "file", uint64(1), uint64(1), int64(5))
	f.Add("/a/very/long/path/to/a/swap/file/beyond/forty/columns", "file", uint64(1), uint64(1), int64(5))
	f.Add("/swap\ffile\r", "file", uint64(1), uint64(1), int64(5))
	f.Fuzz(func(t *testing.T, p, typ string, size, used uint64, prio int64) {
		if p == "" || strings.ContainsAny(p, "\x00") || typ != "partition" && typ != "file" {
			return
		}
		prio = int64(int32(prio))
		// As mm/swapfile.c's swap_show: the escaped name padded to 40
		// columns with at least one space, then tab-separated numbers.
		name := escapeOctal(p)
		line := fmt.Sprintf("%s%s%s\t%d\t%d\t%d\n", name, strings.Repeat(" ", max(40-len(name), 1)), typ, size, used, prio)
		got := parseSwaps([]byte("Filename\tType\tSize\tUsed\tPriority\n" + line))
		want := swapLine{Path: p, Type: typ, SizeKiB: size, UsedKiB: used, Priority: int(prio)}
		if len(got) != 1 || got[0] != want {
			t.Fatalf("round trip of %+v = %+v (line %q)", want, got, line)
		}
	})
}

// FuzzParseEFIBool: a variable decodes only when it is 4 bytes of
// attributes and one byte 0 or 1, and then to exactly those.
func FuzzParseEFIBool(f *testing.F) {
	f.Add([]byte("\x06\x00\x00\x00\x01"))
	f.Add([]byte("\x07\x00\x00\x00\x00"))
	f.Add([]byte("\x06\x00\x00\x00\x02"))
	f.Add([]byte("\x06\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		attrs, on, err := parseEFIBool(b)
		valid := len(b) == 5 && b[4] <= 1
		if (err == nil) != valid {
			t.Fatalf("parseEFIBool(%x) error %v, valid %v", b, err, valid)
		}
		if err == nil && (attrs != binary.LittleEndian.Uint32(b) || on != (b[4] == 1)) {
			t.Fatalf("parseEFIBool(%x) = %#x %v", b, attrs, on)
		}
	})
}

// luks2Header writes a LUKS2 header area as cryptsetup does (its on-disk
// format specification), at offset off (0: primary; size: secondary).
func luks2Header(size, off int64, label, uuid string, keyslots int, tokens []string) []byte {
	b := make([]byte, size)
	if off == 0 {
		copy(b, "LUKS\xba\xbe")
	} else {
		copy(b, "SKUL\xba\xbe")
	}
	binary.BigEndian.PutUint16(b[6:], 2)
	binary.BigEndian.PutUint64(b[8:], uint64(size))
	binary.BigEndian.PutUint64(b[16:], 1)
	copy(b[24:71], label)
	copy(b[72:], "sha256")
	copy(b[168:207], uuid)
	binary.BigEndian.PutUint64(b[256:], uint64(off))
	meta := map[string]any{"keyslots": map[string]any{}, "tokens": map[string]any{}, "segments": map[string]any{}, "digests": map[string]any{}, "config": map[string]any{}}
	for i := range keyslots {
		meta["keyslots"].(map[string]any)[fmt.Sprint(i)] = map[string]any{"type": "luks2"}
	}
	for i, typ := range tokens {
		meta["tokens"].(map[string]any)[fmt.Sprint(i)] = map[string]any{"type": typ, "keyslots": []string{}}
	}
	js, _ := json.Marshal(meta)
	copy(b[4096:], js)
	sum := sha256.Sum256(b)
	copy(b[448:], sum[:])
	return b
}

// FuzzLUKS2Header: a header written per the specification reads back with
// its label, UUID, keyslots and tokens and a good checksum, from either
// copy; any one byte changed in it is caught (the checksum, the magic or a
// field's check); arbitrary bytes never panic, and a castellan token is
// reported exactly when one is listed.
func FuzzLUKS2Header(f *testing.F) {
	f.Add("data", "0b5e4c1d-7a2e-4c8e-9f10-2b3c4d5e6f70", uint8(2), "castellan,systemd-tpm2", uint8(0), uint16(5000), uint8(1), []byte("LUKS\xba\xbe\x00\x02"))
	f.Add("", "", uint8(0), "", uint8(3), uint16(0), uint8(0x80), []byte{})
	f.Fuzz(func(t *testing.T, label, uuid string, keyslots uint8, tokenList string, sizeIdx uint8, flipAt uint16, flip uint8, raw []byte) {
		if l, err := parseLUKS2(raw, 0); err == nil && l.Castellan != slices.Contains(l.TokenTypes, facts.CastellanToken) {
			t.Fatalf("arbitrary header: castellan %v with tokens %q", l.Castellan, l.TokenTypes)
		}
		label, uuid = printable([]byte(label)), printable([]byte(uuid))
		if len(label) > 47 || len(uuid) > 39 {
			return
		}
		tokenList = printable([]byte(tokenList))
		var tokens []string
		if tokenList != "" {
			tokens = strings.Split(tokenList, ",")
		}
		size := luks2HeaderOffsets[int(sizeIdx)%len(luks2HeaderOffsets)]
		for _, off := range []int64{0, size} {
			b := luks2Header(size, off, label, uuid, int(keyslots%33), tokens)
			if len(b) < 4096+len(tokenList)*40+int(keyslots%33)*30+200 {
				return // the JSON would not fit this header size
			}
			l, err := parseLUKS2(b, off)
			if err != nil || !l.ChecksumOK || l.Label != label || l.UUID != uuid || l.Keyslots != int(keyslots%33) ||
				strings.Join(l.TokenTypes, ",") != strings.Join(tokens, ",") || l.Castellan != slices.Contains(tokens, facts.CastellanToken) || l.HeaderSize != size {
				t.Fatalf("header at %d: %+v, %v", off, l, err)
			}
			if flip == 0 {
				continue
			}
			at := int(flipAt) % len(b)
			if at >= 448 && at < 448+32 {
				at += 32 // the checksum itself: sha256 fills only the first 32 of its 64 bytes
			}
			if at >= 480 && at < 512 {
				continue // the unused half of the checksum field is not covered
			}
			b[at] ^= flip
			if l, err := parseLUKS2(b, off); err == nil {
				t.Fatalf("byte %d of the header at %d changed (^%#x), still read as good: %+v", at, off, flip, l)
			}
		}
	})
}

// TestMeasureClock checks the offset and bound of the NTP-style
// measurement: for any true offset and any delays each way, the true
// offset lies within Offset ± Bound.
func TestMeasureClock(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	t1 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for range 10000 {
		theta := time.Duration(rng.Int64N(int64(20*time.Minute))) - 10*time.Minute
		d1 := time.Duration(rng.Int64N(int64(3 * time.Second)))
		d2 := time.Duration(rng.Int64N(int64(100 * time.Millisecond)))
		work := time.Duration(rng.Int64N(int64(time.Second)))
		c := facts.Clock{NodeReceived: t1.Add(d1 + theta)}
		c.NodeSent = c.NodeReceived.Add(work)
		elapsed := d1 + work + d2
		measureClock(&c, t1, elapsed)
		if !c.Measured || c.Bound != (d1+d2)/2 || c.InstallerReceived != t1.Add(elapsed) {
			t.Fatalf("θ %v d1 %v d2 %v work %v: %+v", theta, d1, d2, work, c)
		}
		if diff := c.Offset - theta; diff < -c.Bound-time.Nanosecond || diff > c.Bound+time.Nanosecond {
			t.Fatalf("θ %v d1 %v d2 %v work %v: offset %v ± %v misses it", theta, d1, d2, work, c.Offset, c.Bound)
		}
	}
	// Symmetric delays: exact.
	c := facts.Clock{NodeReceived: t1.Add(90*time.Second + 50*time.Millisecond)}
	c.NodeSent = c.NodeReceived.Add(200 * time.Millisecond)
	measureClock(&c, t1, 300*time.Millisecond)
	if c.Offset != 90*time.Second || c.Bound != 50*time.Millisecond {
		t.Errorf("symmetric: %+v", c)
	}
	// A node that did not stamp its answer stays unmeasured.
	c = facts.Clock{}
	measureClock(&c, t1, time.Second)
	if c.Measured {
		t.Errorf("unstamped answer measured: %+v", c)
	}
}

// TestClockOverGather measures this machine against itself through the
// node side's stamps: the offset is within its bound of zero.
func TestClockOverGather(t *testing.T) {
	sent := time.Now()
	f := gatherer{root: t.TempDir(), self: "proc/self"}.gather(FactsRequest{})
	measureClock(&f.Clock, sent, time.Since(sent))
	if !f.Clock.Measured || f.Clock.InstallerSent.IsZero() || f.Clock.Offset < -f.Clock.Bound-time.Millisecond || f.Clock.Offset > f.Clock.Bound+time.Millisecond {
		t.Errorf("same machine: %+v", f.Clock)
	}
}

func TestTimeSyncFrom(t *testing.T) {
	const staUnsync, staPLL = 0x40, 0x01
	tests := []struct {
		state   int
		status  int32
		maxErr  int64
		want    bool
		wantErr int64
	}{
		{0, staPLL, 1500, true, 1500}, // TIME_OK
		{1, staPLL, 10, true, 10},     // TIME_INS: a leap second pending, still synchronised
		{5, staPLL, 10, false, 0},     // TIME_ERROR
		{0, staUnsync | staPLL, 16000000, false, 0},
	}
	for _, tt := range tests {
		got := timeSyncFrom(tt.state, tt.status, tt.maxErr)
		if got.Synchronized != tt.want || got.MaxErrorUs != tt.wantErr || got.Source != "adjtimex" {
			t.Errorf("timeSyncFrom(%d, %#x, %d) = %+v", tt.state, tt.status, tt.maxErr, got)
		}
	}
}

// TestParseLUKS2Placement: a header is only taken where it says it is, so a
// LUKS2 image stored inside a disk (a file in a filesystem, a copied
// header) is not read as the disk's own header.
func TestParseLUKS2Placement(t *testing.T) {
	for _, tt := range []struct {
		name          string
		size, records int64 // header size, and the offset it records
		readAt        int64
		ok            bool
	}{
		{"primary where it says", 16384, 0, 0, true},
		{"secondary where it says", 16384, 16384, 16384, true},
		{"secondary of a 32 KiB header found at 16 KiB", 32768, 32768, 16384, false},
		{"secondary recording offset 0", 16384, 0, 16384, false},
		{"primary recording another offset", 16384, 16384, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := luks2Header(tt.size, tt.records, "l", "u", 1, nil)
			if tt.readAt == 0 {
				copy(b, "LUKS\xba\xbe")
			} else {
				copy(b, "SKUL\xba\xbe")
			}
			binary.BigEndian.PutUint64(b[256:], uint64(tt.records))
			clear(b[448:512])
			sum := sha256.Sum256(b)
			copy(b[448:], sum[:])
			l, err := parseLUKS2(b, tt.readAt)
			if (err == nil) != tt.ok {
				t.Errorf("parseLUKS2 = %+v, %v; want ok %v", l, err, tt.ok)
			}
		})
	}
}

// FuzzParseInetDiagMsg: an inet_diag_msg built from a socket's fields
// decodes back to them (IPv4 from the first 4 address bytes, IPv6 from 16;
// inode 32-bit); any other bytes decode or are refused, never panic.
func FuzzParseInetDiagMsg(f *testing.F) {
	f.Add([]byte{127, 0, 0, 1}, uint16(6443), uint8(0x0A), uint32(1), []byte{2, 10})
	f.Add(bytes.Repeat([]byte{0xfe}, 16), uint16(0), uint8(7), uint32(1<<31), make([]byte, 72))
	f.Fuzz(func(t *testing.T, ip []byte, port uint16, state uint8, inode uint32, raw []byte) {
		if s, err := parseInetDiagMsg(raw); err == nil && (len(raw) < inetDiagMsgLen || s.Local.Port() != binary.BigEndian.Uint16(raw[4:6])) {
			t.Fatalf("%x decoded as %+v", raw, s)
		}
		addr, ok := netip.AddrFromSlice(ip)
		if !ok {
			return
		}
		msg := make([]byte, inetDiagMsgLen+len(raw)) // attributes after it are ignored
		msg[0], msg[1] = unix.AF_INET, state
		if addr.Is6() {
			msg[0] = unix.AF_INET6
		}
		binary.BigEndian.PutUint16(msg[4:], port)
		copy(msg[8:], addr.AsSlice())
		binary.NativeEndian.PutUint32(msg[68:], inode)
		copy(msg[inetDiagMsgLen:], raw)
		want := socket{Local: netip.AddrPortFrom(addr, port), State: state, Inode: uint64(inode)}
		if got, err := parseInetDiagMsg(msg); err != nil || got != want {
			t.Fatalf("round trip of %+v = %+v, %v", want, got, err)
		}
	})
}
