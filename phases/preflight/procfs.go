package preflight

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"strconv"
	"strings"
)

// Parsers of the kernel's text files under /proc. Each takes the file's
// bytes and skips lines it cannot read rather than failing: a node's facts
// are gathered even when one line is odd.

// mountInfo is one line of /proc/PID/mountinfo (proc(5), "/proc/pid/mountinfo").
type mountInfo struct {
	ID, Parent   int
	Major, Minor uint32
	// Root is the path of the mount's root within its filesystem;
	// MountPoint is where it is mounted; both unescaped.
	Root, MountPoint string
	FSType           string
	// Source is filesystem-specific: a device path for block filesystems.
	Source string
}

// parseMountinfo reads /proc/PID/mountinfo:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//	(1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)   (10)         (11)
//
// Field 7 is zero or more optional fields ended by the separator "-".
// Space, tab, newline and backslash in paths are escaped as \ooo (octal).
func parseMountinfo(data []byte) []mountInfo {
	var out []mountInfo
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, " ")
		if len(f) < 10 {
			continue
		}
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(f) {
			continue
		}
		id, err1 := strconv.Atoi(f[0])
		parent, err2 := strconv.Atoi(f[1])
		maj, min, ok := strings.Cut(f[2], ":")
		ma, err3 := strconv.ParseUint(maj, 10, 32)
		mi, err4 := strconv.ParseUint(min, 10, 32)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || !ok {
			continue
		}
		out = append(out, mountInfo{
			ID: id, Parent: parent, Major: uint32(ma), Minor: uint32(mi),
			Root: unescapeOctal(f[3]), MountPoint: unescapeOctal(f[4]),
			FSType: unescapeOctal(f[sep+1]), Source: unescapeOctal(f[sep+2]),
		})
	}
	return out
}

// unescapeOctal undoes the kernel's \ooo escapes (fs/proc_namespace.c, mangle).
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) && isOctal(s[i+1:i+4]) {
			v, _ := strconv.ParseUint(s[i+1:i+4], 8, 8)
			b.WriteByte(byte(v))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(s string) bool {
	if len(s) != 3 || s[0] > '3' {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '7' {
			return false
		}
	}
	return true
}

// socket is one line of /proc/net/{tcp,tcp6,udp,udp6} (proc(5)).
type socket struct {
	Local netip.AddrPort
	// State is the kernel's TCP state number (include/net/tcp_states.h):
	// 0x0A is TCP_LISTEN; unconnected UDP sockets show 0x07 (TCP_CLOSE).
	State uint8
	Inode uint64
}

// tcpListen is TCP_LISTEN in include/net/tcp_states.h.
const tcpListen = 0x0A

// parseProcNet reads /proc/net/tcp, tcp6, udp or udp6:
//
//	sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
//	0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 ...
//
// Addresses are the kernel's in-memory bytes printed as 32-bit words in
// host byte order (little-endian here), ports in hex.
func parseProcNet(data []byte) []socket {
	var out []socket
	lines := strings.Split(string(data), "\n")
	if len(lines) > 0 {
		lines = lines[1:] // the header
	}
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		addrHex, portHex, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		addr, ok := procNetAddr(addrHex)
		if !ok {
			continue
		}
		port, err := strconv.ParseUint(portHex, 16, 16)
		if err != nil {
			continue
		}
		st, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			continue
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			continue
		}
		out = append(out, socket{Local: netip.AddrPortFrom(addr, uint16(port)), State: uint8(st), Inode: inode})
	}
	return out
}

// procNetAddr decodes an address of /proc/net/*: 8 hex digits for IPv4, 32
// for IPv6, each group of 8 one 32-bit word in host (little-endian) order.
func procNetAddr(s string) (netip.Addr, bool) {
	raw, err := hex.DecodeString(s)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, false
	}
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.LittleEndian.PutUint32(b[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	a, _ := netip.AddrFromSlice(b)
	return a, true
}

// parseSwaps reads /proc/swaps (sizes in KiB; the file name escaped like
// mountinfo's paths):
//
//	Filename				Type		Size		Used		Priority
//	/dev/vda2                               partition	1048572		0		-2
func parseSwaps(data []byte) []swapLine {
	var out []swapLine
	lines := bytes.Split(data, []byte("\n"))
	if len(lines) > 0 {
		lines = lines[1:]
	}
	for _, line := range lines {
		// Only spaces and tabs separate fields: the kernel escapes those in
		// the file name, not other white space (mm/swapfile.c, swap_show).
		f := strings.FieldsFunc(string(line), func(r rune) bool { return r == ' ' || r == '\t' })
		if len(f) < 5 {
			continue
		}
		size, err1 := strconv.ParseUint(f[2], 10, 64)
		used, err2 := strconv.ParseUint(f[3], 10, 64)
		prio, err3 := strconv.Atoi(f[4])
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		out = append(out, swapLine{Path: unescapeOctal(f[0]), Type: f[1], SizeKiB: size, UsedKiB: used, Priority: prio})
	}
	return out
}

type swapLine struct {
	Path             string
	Type             string
	SizeKiB, UsedKiB uint64
	Priority         int
}
