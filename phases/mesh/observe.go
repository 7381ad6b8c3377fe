package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Observe reads the node's mesh without changing anything: the key file
// (its public key only), the live device and peers (wgctrl), the persisted
// files' hashes, the live nftables table's digest and what was confirmed,
// a pending revert guard, and the SSH session the agent runs under. What
// cannot be read is listed in Problems; the rest is still valid.
func (n *Node) Observe(_ context.Context, req ObserveRequest) (Observation, error) {
	var o Observation
	problem := func(format string, args ...any) { o.Problems = append(o.Problems, fmt.Sprintf(format, args...)) }
	if err := checkInterfaceName(req.Interface); err != nil {
		return o, err
	}
	k, st, err := n.readKey()
	if err != nil {
		problem("key: %v", err)
	}
	o.Key = keyState(k, st)
	if d, err := n.observeDevice(req.Interface); err != nil {
		problem("device %s: %v", req.Interface, err)
	} else {
		o.Device = d
	}
	o.Files = map[string]string{}
	if target, err := os.Readlink(n.path(FirewallUnitLink)); err == nil {
		o.Files[FirewallUnitLink] = linkHash(target)
	}
	for _, p := range []string{NetdevFile, NetworkFile, FirewallFile, FirewallUnit} {
		h, err := n.fileHash(p)
		if err != nil {
			problem("%s: %v", p, err)
		} else if h != "" {
			o.Files[p] = h
		}
	}
	if c, err := n.nft(); err != nil {
		problem("%v", err)
	} else if d, err := TableDigest(c); err != nil {
		problem("%v", err)
	} else {
		o.Firewall.Live = d
	}
	if rec, err := n.readConfirmed(); err != nil {
		problem("%v", err)
	} else if rec != nil {
		o.Firewall.Confirmed = rec.Applied
	}
	if g, err := n.readGuard(); err != nil {
		problem("%v", err)
	} else if g != nil && g.State == GuardPending {
		o.Firewall.Guard = g
	}
	if s, err := sshSession("/proc", os.Getpid()); err != nil {
		problem("ssh session: %v", err)
	} else {
		o.Session = s
	}
	o.NFT = exists(n.path(NFTBinary))
	o.Networkd = exists(n.path(NetworkdBinary))
	return o, nil
}

func (n *Node) observeDevice(name string) (*DeviceState, error) {
	nl, err := n.netlink()
	if err != nil {
		return nil, fmt.Errorf("rtnetlink: %w", err)
	}
	defer nl.Close()
	link, err := nl.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	wc, err := n.wg()
	if err != nil {
		return nil, err
	}
	defer wc.Close()
	dev, err := wc.Device(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s exists but is not a WireGuard device", name)
	}
	if err != nil {
		return nil, err
	}
	d := &DeviceState{Name: dev.Name, Type: dev.Type.String(), ListenPort: dev.ListenPort, Up: link.Attrs().Flags&net.FlagUp != 0}
	if dev.PublicKey != [32]byte{} {
		d.PublicKey = dev.PublicKey.String()
	}
	addrs, err := nl.AddrList(link, unix.AF_UNSPEC)
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && !p.Addr().IsLinkLocalUnicast() {
			d.Addresses = append(d.Addresses, p)
		}
	}
	for _, p := range dev.Peers {
		ps := PeerState{PublicKey: p.PublicKey.String(), KeepaliveSeconds: int(p.PersistentKeepaliveInterval.Seconds()),
			ReceiveBytes: p.ReceiveBytes, TransmitBytes: p.TransmitBytes}
		if p.Endpoint != nil {
			ps.Endpoint = p.Endpoint.AddrPort()
			ps.Endpoint = netip.AddrPortFrom(ps.Endpoint.Addr().Unmap(), ps.Endpoint.Port())
		}
		if !p.LastHandshakeTime.IsZero() && p.LastHandshakeTime.Unix() > 0 {
			ps.LastHandshake = p.LastHandshakeTime.UTC()
		}
		for _, a := range p.AllowedIPs {
			if pr, ok := prefixOf(&a); ok {
				ps.AllowedIPs = append(ps.AllowedIPs, pr)
			}
		}
		d.Peers = append(d.Peers, ps)
	}
	sort.Slice(d.Peers, func(i, j int) bool { return d.Peers[i].PublicKey < d.Peers[j].PublicKey })
	return d, nil
}

// confirmedRecord is ConfirmedFile: the ruleset last confirmed on the node.
type confirmedRecord struct {
	Applied Applied `json:"applied"`
	Ruleset Ruleset `json:"ruleset"`
}

func (n *Node) readConfirmed() (*confirmedRecord, error) {
	data, err := os.ReadFile(n.path(ConfirmedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r confirmedRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", ConfirmedFile, err)
	}
	return &r, nil
}

func (n *Node) readGuard() (*GuardState, error) {
	data, err := os.ReadFile(n.path(GuardFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var g GuardState
	if err := json.Unmarshal(data, &g); err != nil {
		return nil, fmt.Errorf("%s: %w", GuardFile, err)
	}
	return &g, nil
}

// linkHash stands for a symbolic link to target in Observation.Files.
func linkHash(target string) string { return hashBytes([]byte("symlink\x00" + target)) }
