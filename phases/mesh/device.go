package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// DefaultKeepaliveSeconds is every peer's persistent keepalive: it keeps
// stateful middleboxes open and makes a rebooted peer's handshake quick.
const DefaultKeepaliveSeconds = 25

// Check reports a configuration that cannot be applied.
func (c DeviceConfig) Check() error {
	if err := checkInterfaceName(c.Interface); err != nil {
		return err
	}
	if !c.Address.IsValid() || c.Address.Bits() == c.Address.Addr().BitLen() {
		return fmt.Errorf("device address %v: want the node's mesh address with the subnet's prefix length", c.Address)
	}
	if c.ListenPort < 1 || c.ListenPort > 65535 {
		return fmt.Errorf("listen port %d is not 1-65535", c.ListenPort)
	}
	seen := map[string]bool{}
	for _, p := range c.Peers {
		if _, err := wgtypes.ParseKey(p.PublicKey); err != nil {
			return fmt.Errorf("peer %s: public key: %w", p.Name, err)
		}
		if seen[p.PublicKey] || seen[p.Address.String()] {
			return fmt.Errorf("peer %s: public key or address used twice", p.Name)
		}
		seen[p.PublicKey], seen[p.Address.String()] = true, true
		if !p.Address.IsValid() || !c.Address.Contains(p.Address) || p.Address == c.Address.Addr() {
			return fmt.Errorf("peer %s: mesh address %v is not another address of %v", p.Name, p.Address, c.Address.Masked())
		}
		if !p.Endpoint.IsValid() || p.Endpoint.Port() == 0 {
			return fmt.Errorf("peer %s: endpoint %v is not ADDRESS:PORT", p.Name, p.Endpoint)
		}
	}
	return nil
}

// Configure brings the live device to c and persists it (Files). Only what
// differs changes: peers are added, updated or removed one by one (an
// unchanged peer keeps its session), the address and port are set when
// they differ, files are written when their content differs. The device is
// created as a kernel WireGuard link when missing (rtnetlink); the private
// key comes from KeyFile, which must exist (EnsureKey).
func (n *Node) Configure(_ context.Context, c DeviceConfig) (ConfigureResult, error) {
	var res ConfigureResult
	if err := c.Check(); err != nil {
		return res, err
	}
	key, _, err := n.readKey()
	if err != nil {
		return res, err
	}
	if key == nil {
		return res, fmt.Errorf("no WireGuard key in %s yet (the ensure-key step makes it)", KeyFile)
	}
	nl, err := n.netlink()
	if err != nil {
		return res, fmt.Errorf("rtnetlink: %w", err)
	}
	defer nl.Close()
	link, err := nl.LinkByName(c.Interface)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		if err := nl.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: c.Interface}}); err != nil {
			return res, fmt.Errorf("creating WireGuard device %s: %w (is the wireguard kernel module available?)", c.Interface, err)
		}
		res.Changed = append(res.Changed, "device "+c.Interface+" created")
		link, err = nl.LinkByName(c.Interface)
	}
	if err != nil {
		return res, fmt.Errorf("device %s: %w", c.Interface, err)
	}
	wc, err := n.wg()
	if err != nil {
		return res, err
	}
	defer wc.Close()
	dev, err := wc.Device(c.Interface)
	if err != nil {
		return res, fmt.Errorf("device %s is not a WireGuard device: %w", c.Interface, err)
	}
	cfg, changes := wgDiff(dev, *key, c)
	if len(changes) > 0 {
		if err := wc.ConfigureDevice(c.Interface, cfg); err != nil {
			return res, fmt.Errorf("configuring %s: %w", c.Interface, err)
		}
		res.Changed = append(res.Changed, changes...)
	}
	ch, err := syncAddress(nl, link, c.Address)
	if err != nil {
		return res, err
	}
	res.Changed = append(res.Changed, ch...)
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := nl.LinkSetUp(link); err != nil {
			return res, fmt.Errorf("setting %s up: %w", c.Interface, err)
		}
		res.Changed = append(res.Changed, c.Interface+" up")
	}
	files := c.Files()
	for _, p := range []string{NetdevFile, NetworkFile} {
		wrote, err := n.writeFile(p, files[p], 0o644, -1)
		if err != nil {
			return res, fmt.Errorf("writing %s: %w", p, err)
		}
		if wrote {
			res.Changed = append(res.Changed, "file "+p+" written")
		}
	}
	return res, nil
}

// wgDiff is the wgctrl configuration that brings dev to c, and the changes
// in words (none: nothing to do).
func wgDiff(dev *wgtypes.Device, key wgtypes.Key, c DeviceConfig) (wgtypes.Config, []string) {
	var cfg wgtypes.Config
	var changes []string
	if dev.PrivateKey != key {
		cfg.PrivateKey = &key
		changes = append(changes, "private key set from "+KeyFile)
	}
	if dev.ListenPort != c.ListenPort {
		port := c.ListenPort
		cfg.ListenPort = &port
		changes = append(changes, fmt.Sprintf("listen port %d", port))
	}
	want := map[wgtypes.Key]Peer{}
	for _, p := range c.Peers {
		k, _ := wgtypes.ParseKey(p.PublicKey)
		want[k] = p
	}
	for _, have := range dev.Peers {
		if _, ok := want[have.PublicKey]; !ok {
			cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: have.PublicKey, Remove: true})
			changes = append(changes, "peer "+have.PublicKey.String()+" removed")
		}
	}
	keepalive := time.Duration(c.KeepaliveSeconds) * time.Second
	for _, p := range c.normalize().Peers {
		k, _ := wgtypes.ParseKey(p.PublicKey)
		allowed := []net.IPNet{ipNet(hostPrefix(p.Address))}
		ep := net.UDPAddrFromAddrPort(p.Endpoint)
		idx := slices.IndexFunc(dev.Peers, func(x wgtypes.Peer) bool { return x.PublicKey == k })
		if idx >= 0 {
			have := dev.Peers[idx]
			if have.Endpoint != nil && unmapPort(have.Endpoint.AddrPort()) == unmapPort(p.Endpoint) && have.PersistentKeepaliveInterval == keepalive && sameIPNets(have.AllowedIPs, allowed) {
				continue
			}
		}
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: k, Endpoint: ep, PersistentKeepaliveInterval: &keepalive, ReplaceAllowedIPs: true, AllowedIPs: allowed})
		if idx >= 0 {
			changes = append(changes, "peer "+p.Name+" updated")
		} else {
			changes = append(changes, "peer "+p.Name+" added")
		}
	}
	return cfg, changes
}

func ipNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// unmapPort turns an IPv4-mapped IPv6 endpoint (how the kernel and
// wireguard-go may report an IPv4 one) into the IPv4 one.
func unmapPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func sameIPNets(a, b []net.IPNet) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		pa, oka := prefixOf(&a[i])
		pb, okb := prefixOf(&b[i])
		if !oka || !okb || pa != pb {
			return false
		}
	}
	return true
}

// syncAddress makes want the device's only address (IPv6 link-local ones
// aside).
func syncAddress(nl *netlink.Handle, link netlink.Link, want netip.Prefix) ([]string, error) {
	addrs, err := nl.AddrList(link, unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", link.Attrs().Name, err)
	}
	var changes []string
	found := false
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if !ok || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if p == want {
			found = true
			continue
		}
		if err := nl.AddrDel(link, &a); err != nil {
			return changes, fmt.Errorf("removing address %v from %s: %w", p, link.Attrs().Name, err)
		}
		changes = append(changes, fmt.Sprintf("address %v removed", p))
	}
	if !found {
		n := ipNet(want)
		if err := nl.AddrAdd(link, &netlink.Addr{IPNet: &n}); err != nil {
			return changes, fmt.Errorf("adding address %v to %s: %w", want, link.Attrs().Name, err)
		}
		changes = append(changes, fmt.Sprintf("address %v added", want))
	}
	return changes, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
