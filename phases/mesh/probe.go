package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// MaxProbeTargets bounds one probe request.
const MaxProbeTargets = 1024

// Probe sends ICMP echo requests (RFC 792, RFC 4443) to each target, over
// whatever route the node has to it (for mesh addresses: the mesh device),
// and reports which answered. Each target gets one echo a second until one
// is answered or the timeout passes (default 12 s: longer than WireGuard's
// 5 s handshake retry, so a handshake packet lost while firewalls change is
// retried within it). It needs a raw ICMP socket (root, as the agent is).
func (n *Node) Probe(ctx context.Context, req ProbeRequest) (ProbeResponse, error) {
	if len(req.Targets) > MaxProbeTargets {
		return ProbeResponse{}, fmt.Errorf("%d targets, at most %d", len(req.Targets), MaxProbeTargets)
	}
	timeout := time.Duration(req.TimeoutMillis) * time.Millisecond
	if timeout <= 0 {
		timeout = 12 * time.Second
	}
	res := ProbeResponse{Results: make([]ProbeResult, len(req.Targets))}
	done := make(chan struct{}, len(req.Targets))
	for i, t := range req.Targets {
		go func() {
			defer func() { done <- struct{}{} }()
			r := ProbeResult{Target: t}
			rtt, err := n.ping(ctx, t, timeout, uint16(i))
			if err != nil {
				r.Error = err.Error()
			} else {
				r.OK, r.RTTMicros = true, rtt.Microseconds()
			}
			res.Results[i] = r
		}()
	}
	for range req.Targets {
		<-done
	}
	return res, nil
}

func (n *Node) ping(ctx context.Context, target netip.Addr, timeout time.Duration, seq uint16) (time.Duration, error) {
	if !target.IsValid() {
		return 0, errors.New("invalid address")
	}
	target = target.Unmap()
	network, listen := "ip4:icmp", "0.0.0.0"
	var echoType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	proto := 1
	if target.Is6() {
		network, listen = "ip6:ipv6-icmp", "::"
		echoType, replyType, proto = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	var c *icmp.PacketConn
	err := n.inNS(func() error {
		var err error
		c, err = icmp.ListenPacket(network, listen)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("icmp socket: %w", err)
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	id := os.Getpid() & 0xffff
	dst := &net.IPAddr{IP: target.AsSlice()}
	buf := make([]byte, 1500)
	for attempt := 0; attempt < 256 && time.Now().Before(deadline); attempt++ {
		msg := icmp.Message{Type: echoType, Body: &icmp.Echo{ID: id, Seq: int(seq)<<8 | attempt, Data: []byte("castellan mesh probe")}}
		wb, err := msg.Marshal(nil)
		if err != nil {
			return 0, err
		}
		start := time.Now()
		if _, err := c.WriteTo(wb, dst); err != nil {
			return 0, fmt.Errorf("sending echo: %w", err)
		}
		wait := start.Add(time.Second)
		if wait.After(deadline) {
			wait = deadline
		}
		for {
			_ = c.SetReadDeadline(wait)
			nr, peer, err := c.ReadFrom(buf)
			if err != nil {
				break // this attempt timed out
			}
			rm, err := icmp.ParseMessage(proto, buf[:nr])
			if err != nil || rm.Type != replyType {
				continue
			}
			echo, ok := rm.Body.(*icmp.Echo)
			pa, _ := netip.ParseAddr(peer.String())
			if ok && echo.ID == id && echo.Seq&0xff == attempt && pa.Unmap() == target {
				return time.Since(start), nil
			}
		}
	}
	return 0, fmt.Errorf("no echo reply from %s within %s", target, timeout)
}
