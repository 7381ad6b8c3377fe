package diskcrypt

import (
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// mount is one line of /proc/self/mountinfo (proc(5)).
type mount struct {
	Major, Minor int
	MountPoint   string
	FSType       string
	Source       string
}

// parseMountinfo reads /proc/self/mountinfo: "ID PARENT MAJ:MIN ROOT
// MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS", with
// octal escapes in paths. Malformed lines are skipped.
func parseMountinfo(b []byte) []mount {
	var out []mount
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 {
			continue
		}
		majmin := strings.SplitN(f[2], ":", 2)
		if len(majmin) != 2 {
			continue
		}
		maj, err1 := strconv.Atoi(majmin[0])
		minr, err2 := strconv.Atoi(majmin[1])
		if err1 != nil || err2 != nil {
			continue
		}
		m := mount{Major: maj, Minor: minr, MountPoint: unescapeTab(f[4])}
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				if i+1 < len(f) {
					m.FSType = f[i+1]
				}
				if i+2 < len(f) {
					m.Source = unescapeTab(f[i+2])
				}
				break
			}
		}
		out = append(out, m)
	}
	return out
}

// ext4 superblock (the kernel's Documentation/filesystems/ext4/super.rst):
// 1024 bytes in; s_magic 0xEF53 at 0x38, s_uuid at 0x68.
const (
	ext4SuperOffset = 1024
	ext4Magic       = 0xef53
)

// readExt4UUID returns the UUID of the ext2/3/4 filesystem on r, or "" when
// there is none.
func readExt4UUID(r io.ReaderAt) (string, error) {
	sb := make([]byte, 0x78)
	if _, err := r.ReadAt(sb, ext4SuperOffset); err != nil {
		return "", fmt.Errorf("reading the ext4 superblock: %w", err)
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != ext4Magic {
		return "", nil
	}
	u := sb[0x68:0x78]
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}

// unitEscape escapes s for a systemd unit name (systemd.unit(5), "String
// Escaping for Inclusion in Unit Names"; systemd-escape): "/" becomes "-",
// ASCII letters, digits, ":", "_" and "." (not first) stay, every other
// byte becomes "\xHH".
func unitEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '/':
			b.WriteByte('-')
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == ':', c == '_', c == '.' && i > 0:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, `\x%02x`, c)
		}
	}
	return b.String()
}

// pathUnitEscape escapes a path for a unit name (systemd-escape --path):
// the slashes at both ends dropped, "/" for the root.
func pathUnitEscape(p string) string {
	p = strings.Trim(p, "/")
	if p == "" {
		return "-"
	}
	return unitEscape(p)
}

// cryptsetupUnit is the unit systemd-cryptsetup-generator makes of a
// crypttab line named name.
func cryptsetupUnit(name string) string {
	return "systemd-cryptsetup@" + unitEscape(name) + ".service"
}

// mountUnit is the unit systemd-fstab-generator makes of an fstab line
// mounting at mountPoint.
func mountUnit(mountPoint string) string { return pathUnitEscape(mountPoint) + ".mount" }
