package mesh

import (
	"bytes"
	"fmt"
	"net/netip"
	"sort"
)

// Files renders what persists a node's mesh across reboots, by path:
// systemd-networkd's .netdev (the WireGuard device: key file, port, peers)
// and .network (its address), per systemd.netdev(5) and systemd.network(5).
// They hold no secret (the .netdev names the key file), so the state repo
// records them as they are.
func (c DeviceConfig) Files() map[string][]byte {
	c = c.normalize()
	var nd bytes.Buffer
	nd.WriteString("# Written by castellan (mesh phase); castellan apply replaces it.\n")
	fmt.Fprintf(&nd, "[NetDev]\nName=%s\nKind=wireguard\nDescription=castellan host mesh\n\n", c.Interface)
	fmt.Fprintf(&nd, "[WireGuard]\nPrivateKeyFile=%s\nListenPort=%d\n", KeyFile, c.ListenPort)
	for _, p := range c.Peers {
		fmt.Fprintf(&nd, "\n# %s\n[WireGuardPeer]\nPublicKey=%s\nAllowedIPs=%s\nEndpoint=%s\n", p.Name, p.PublicKey, hostPrefix(p.Address), p.Endpoint)
		if c.KeepaliveSeconds > 0 {
			fmt.Fprintf(&nd, "PersistentKeepalive=%d\n", c.KeepaliveSeconds)
		}
	}
	var nw bytes.Buffer
	nw.WriteString("# Written by castellan (mesh phase); castellan apply replaces it.\n")
	fmt.Fprintf(&nw, "[Match]\nName=%s\n\n[Network]\nAddress=%s\n", c.Interface, c.Address)
	return map[string][]byte{NetdevFile: nd.Bytes(), NetworkFile: nw.Bytes()}
}

// hostPrefix is a's single-address prefix (/32 or /128).
func hostPrefix(a netip.Addr) netip.Prefix {
	return netip.PrefixFrom(a, a.BitLen())
}

func (c DeviceConfig) normalize() DeviceConfig {
	out := c
	out.Peers = append([]Peer(nil), c.Peers...)
	sort.Slice(out.Peers, func(i, j int) bool { return out.Peers[i].Name < out.Peers[j].Name })
	return out
}

// FirewallFiles renders the boot persistence of a confirmed ruleset: the nft
// script and the unit that loads it (before network-pre.target, so the
// underlay is closed before any interface comes up).
func FirewallFiles(rs Ruleset) map[string][]byte {
	return map[string][]byte{FirewallFile: rs.RenderNFT(), FirewallUnit: []byte(firewallUnit)}
}

// firewallUnit loads only table inet castellan. It is not Debian's
// nftables.service: that one's /etc/nftables.conf starts with
// "flush ruleset", which would also wipe Calico's and kube-proxy's tables.
const firewallUnit = `# Written by castellan (mesh phase).
[Unit]
Description=castellan mesh: underlay firewall (table inet castellan)
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target shutdown.target
Conflicts=shutdown.target
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + NFTBinary + ` -f ` + FirewallFile + `

[Install]
WantedBy=sysinit.target
`
