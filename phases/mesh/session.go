package mesh

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// tcpSocket is one line of /proc/net/tcp or /proc/net/tcp6 (proc(5)).
type tcpSocket struct {
	Local, Remote netip.AddrPort
	State         uint8 // 1: ESTABLISHED (include/net/tcp_states.h)
	Inode         uint64
}

const tcpEstablished = 1

// maxProcNetLines bounds what parseProcNetTCP reads.
const maxProcNetLines = 1 << 20

// parseProcNetTCP parses /proc/net/tcp (v6: tcp6): a header line, then one
// socket per line, "sl local_address rem_address st ... uid timeout inode
// ...". Addresses are hex in the kernel's byte order: each 32-bit word of the
// address is printed as a host-order integer; ports are big-endian hex.
func parseProcNetTCP(data []byte, v6 bool) ([]tcpSocket, error) {
	var out []tcpSocket
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 64<<10)
	line := 0
	for sc.Scan() {
		line++
		if line == 1 {
			continue // header
		}
		if line > maxProcNetLines {
			return nil, fmt.Errorf("more than %d lines", maxProcNetLines)
		}
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) < 10 {
			return nil, fmt.Errorf("line %d: %d fields, want at least 10", line, len(f))
		}
		local, err := parseHexAddrPort(f[1], v6)
		if err != nil {
			return nil, fmt.Errorf("line %d: local address: %w", line, err)
		}
		remote, err := parseHexAddrPort(f[2], v6)
		if err != nil {
			return nil, fmt.Errorf("line %d: remote address: %w", line, err)
		}
		st, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("line %d: state %q: %w", line, f[3], err)
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: inode %q: %w", line, f[9], err)
		}
		out = append(out, tcpSocket{Local: local, Remote: remote, State: uint8(st), Inode: inode})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

func parseHexAddrPort(s string, v6 bool) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%q is not ADDR:PORT", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: %w", s, err)
	}
	if (v6 && len(raw) != 16) || (!v6 && len(raw) != 4) {
		return netip.AddrPort{}, fmt.Errorf("%q: address of %d bytes", s, len(raw))
	}
	// Each 32-bit word is printed as a native-endian integer.
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(b[i:], binary.NativeEndian.Uint32(raw[i:i+4]))
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: port: %w", s, err)
	}
	addr, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// sshSession finds the TCP connection the agent was started through: it
// walks up from pid through its parents (the launcher, sudo, the shell) to
// the first sshd process (command name sshd, or sshd-session since OpenSSH
// 9.8) holding an established TCP socket, and looks the socket up in that
// process's /proc/PID/net/tcp{,6}. It returns the zero Session when no
// ancestor is such an sshd (the agent does not run under sshd): other
// processes' sockets are never taken for the installer's.
func sshSession(proc string, pid int) (Session, error) {
	for depth := 0; pid > 1 && depth < 64; depth++ {
		comm, _ := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "comm"))
		var inodes map[uint64]bool
		if c := strings.TrimSpace(string(comm)); c == "sshd" || c == "sshd-session" {
			inodes = socketInodes(filepath.Join(proc, strconv.Itoa(pid), "fd"))
		}
		if len(inodes) > 0 {
			for _, name := range []string{"tcp", "tcp6"} {
				data, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "net", name))
				if err != nil {
					continue
				}
				socks, err := parseProcNetTCP(data, name == "tcp6")
				if err != nil {
					return Session{}, fmt.Errorf("/proc/%d/net/%s: %w", pid, name, err)
				}
				for _, s := range socks {
					if s.State == tcpEstablished && inodes[s.Inode] {
						return Session{Remote: s.Remote, Local: s.Local}, nil
					}
				}
			}
		}
		ppid, err := parentPID(proc, pid)
		if err != nil {
			return Session{}, err
		}
		pid = ppid
	}
	return Session{}, nil
}

func socketInodes(fdDir string) map[uint64]bool {
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		return nil
	}
	out := map[uint64]bool{}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil {
			continue
		}
		if s, ok := strings.CutPrefix(l, "socket:["); ok {
			if n, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil {
				out[n] = true
			}
		}
	}
	return out
}

// parentPID reads the parent of pid from /proc/PID/stat (proc(5): the
// fourth field, after the command name in parentheses, which may itself hold
// spaces and parentheses).
func parentPID(proc string, pid int) (int, error) {
	data, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	return parseStatPPID(data)
}

func parseStatPPID(data []byte) (int, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat: no command name")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 2 {
		return 0, fmt.Errorf("stat: too few fields")
	}
	return strconv.Atoi(f[1])
}
