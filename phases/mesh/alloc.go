package mesh

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"time"
)

// Allocation is what the state repo keeps of the mesh's addresses
// (data/mesh/addresses.json): each node's address, and the addresses of
// removed nodes.
//
// Addresses are stable: a node keeps its address for as long as it is in
// the profile. A removed node's address is released, not freed: it is
// given to a new node only once the subnet has no never-used address left
// (oldest release first), so a peer that missed the removal (down during
// that run) cannot route a new node's traffic to the removed node's key.
type Allocation struct {
	Subnet   netip.Prefix          `json:"subnet"`
	Nodes    map[string]netip.Addr `json:"nodes"`
	Released []Released            `json:"released,omitempty"`
}

// Released is the address of a node removed from the profile.
type Released struct {
	Node    string     `json:"node"`
	Address netip.Addr `json:"address"`
	At      time.Time  `json:"at"`
}

// ParseAllocation decodes data/mesh/addresses.json (strictly).
func ParseAllocation(data []byte) (Allocation, error) {
	var a Allocation
	if err := decodeStrict(data, &a); err != nil {
		return a, fmt.Errorf("data/mesh/addresses.json: %w", err)
	}
	return a, nil
}

// Allocate gives every node in nodes (profile order) an address of subnet:
// its recorded one when it has one, else the lowest never-used host address,
// else the oldest released one. Nodes of prev missing from nodes are
// released at now. Changing the subnet of a mesh that has addresses is an
// error (it would renumber every node). The network and broadcast addresses
// of an IPv4 subnet are never given.
func Allocate(prev Allocation, subnet netip.Prefix, nodes []string, now time.Time) (Allocation, error) {
	subnet = subnet.Masked()
	if prev.Subnet.IsValid() && prev.Subnet != subnet && len(prev.Nodes) > 0 {
		return prev, fmt.Errorf("spec.mesh.subnet changed from %s to %s: castellan does not renumber a mesh; put the subnet back", prev.Subnet, subnet)
	}
	out := Allocation{Subnet: subnet, Nodes: map[string]netip.Addr{}}
	used := map[netip.Addr]bool{}
	want := map[string]bool{}
	for _, n := range nodes {
		want[n] = true
	}
	for _, r := range prev.Released {
		used[r.Address] = true
	}
	var removed []string
	for n, a := range prev.Nodes {
		used[a] = true
		if want[n] {
			out.Nodes[n] = a
		} else {
			removed = append(removed, n)
		}
	}
	sort.Strings(removed)
	out.Released = append(out.Released, prev.Released...)
	for _, n := range removed {
		out.Released = append(out.Released, Released{Node: n, Address: prev.Nodes[n], At: now.UTC()})
	}
	next := subnet.Addr().Next()
	last := lastAddr(subnet)
	for _, n := range nodes {
		if _, ok := out.Nodes[n]; ok {
			continue
		}
		for next.IsValid() && subnet.Contains(next) && (used[next] || (subnet.Addr().Is4() && next == last)) {
			next = next.Next()
		}
		if next.IsValid() && subnet.Contains(next) && !(subnet.Addr().Is4() && next == last) {
			out.Nodes[n] = next
			used[next] = true
			continue
		}
		// No never-used address left: the oldest released one.
		sort.SliceStable(out.Released, func(i, j int) bool { return out.Released[i].At.Before(out.Released[j].At) })
		if len(out.Released) == 0 {
			return prev, fmt.Errorf("spec.mesh.subnet %s has no address left for node %s", subnet, n)
		}
		out.Nodes[n] = out.Released[0].Address
		out.Released = out.Released[1:]
	}
	return out, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytesReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data")
	}
	return nil
}
