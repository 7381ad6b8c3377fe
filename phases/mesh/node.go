package mesh

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl"
)

// Paths on a node (relative to Node.Root).
const (
	// KeyFile holds the node's WireGuard private key (base64, wg(8)'s
	// format), root:systemd-network 0640: systemd-networkd, which reads it
	// through the .netdev's PrivateKeyFile=, runs as systemd-network
	// (systemd.netdev(5)); nobody else can read it. Without a
	// systemd-network group it is root 0600.
	KeyFile = "/etc/castellan/mesh/private.key"
	// NetdevFile and NetworkFile persist the device for systemd-networkd
	// (systemd.netdev(5), systemd.network(5)).
	NetdevFile  = "/etc/systemd/network/60-castellan-mesh.netdev"
	NetworkFile = "/etc/systemd/network/60-castellan-mesh.network"
	// FirewallFile is the confirmed ruleset as an nft script; FirewallUnit
	// loads it at boot, before the network comes up.
	FirewallFile     = "/etc/castellan/mesh/firewall.nft"
	FirewallUnit     = "/etc/systemd/system/castellan-mesh-firewall.service"
	FirewallUnitLink = "/etc/systemd/system/sysinit.target.wants/castellan-mesh-firewall.service"
	// ConfirmedFile records the confirmed ruleset (JSON): what a revert
	// restores.
	ConfirmedFile = "/var/lib/castellan/mesh/firewall.json"
	// GuardFile and GuardLock are the revert guard's record and lock (tmpfs:
	// a reboot forgets a pending guard, and the boot loads the confirmed
	// rules).
	GuardFile = "/run/castellan/mesh/guard.json"
	GuardLock = "/run/castellan/mesh/guard.lock"
	// NFTBinary loads FirewallFile at boot.
	NFTBinary = "/usr/sbin/nft"
	// NetworkdBinary tells whether systemd-networkd is installed.
	NetworkdBinary = "/lib/systemd/systemd-networkd"
)

// Node is the node side of the mesh: the operations run by the agent, as
// root, on the node. The zero value acts on the real node (files under /,
// the agent's own network namespace); tests root it in a directory and a
// network namespace of their own.
type Node struct {
	// Root prefixes every path ("" is /).
	Root string
	// NetNS is the network namespace to act in; 0 means the current one.
	NetNS netns.NsHandle
	// GuardCommand is the argv that runs the revert guard (OpGuard's input
	// on stdin) as a detached process; nil means this executable's
	// "agent mesh.guard".
	GuardCommand []string
	// GuardEnv is added to the guard's environment.
	GuardEnv []string
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

func (n *Node) path(p string) string { return filepath.Join(n.Root, p) }

func (n *Node) now() time.Time {
	if n.Now != nil {
		return n.Now()
	}
	return time.Now()
}

// inNS runs f on a thread in the node's network namespace (sockets made
// there stay in it).
func (n *Node) inNS(f func() error) error {
	if n.NetNS == 0 {
		return f()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(n.NetNS); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering the network namespace: %w", err)
	}
	defer func() {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		} // else: the thread stays locked and dies with the goroutine
	}()
	return f()
}

func (n *Node) nft() (*nftables.Conn, error) {
	var c *nftables.Conn
	var err error
	if n.NetNS == 0 {
		c, err = nftables.New()
	} else {
		c, err = nftables.New(nftables.WithNetNSFd(int(n.NetNS)))
	}
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

func (n *Node) netlink() (*netlink.Handle, error) {
	if n.NetNS == 0 {
		return netlink.NewHandle()
	}
	return netlink.NewHandleAt(n.NetNS)
}

func (n *Node) wg() (*wgctrl.Client, error) {
	var c *wgctrl.Client
	err := n.inNS(func() error {
		var err error
		c, err = wgctrl.New()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("wgctrl: %w", err)
	}
	return c, nil
}

// fileHash returns the SHA-256 (hex) of a file, "" when it does not exist.
func (n *Node) fileHash(p string) (string, error) {
	data, err := os.ReadFile(n.path(p))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return hashBytes(data), nil
}

func hashBytes(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// writeFile writes data to p atomically (temporary file, fsync, rename,
// fsync of the directory) with mode and group gid (-1: root's), unless p
// already holds exactly that. It reports whether it wrote.
func (n *Node) writeFile(p string, data []byte, mode fs.FileMode, gid int) (bool, error) {
	full := n.path(p)
	if old, err := os.ReadFile(full); err == nil && bytes.Equal(old, data) {
		if st, err := os.Stat(full); err == nil && st.Mode().Perm() == mode && (gid < 0 || statGID(st) == gid) {
			return false, nil
		}
	}
	dir := filepath.Dir(full)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(dir, ".castellan-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return false, err
	}
	if gid >= 0 {
		if err := tmp.Chown(0, gid); err != nil {
			tmp.Close()
			return false, err
		}
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if err := os.Rename(tmp.Name(), full); err != nil {
		return false, err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return true, nil
}

// networkGroup is the gid of systemd-network, or -1 without one.
func networkGroup() (gid int, name string) {
	g, err := user.LookupGroup("systemd-network")
	if err != nil {
		return -1, ""
	}
	id, err := strconv.Atoi(g.Gid)
	if err != nil {
		return -1, ""
	}
	return id, g.Name
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func statGID(st fs.FileInfo) int {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(s.Gid)
	}
	return -1
}
