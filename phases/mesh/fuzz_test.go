package mesh

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"
)

// FuzzParseProcNetTCP: the agent parses /proc/net/tcp{,6} to find the SSH
// session; no input makes it panic, and what it returns is valid.
func FuzzParseProcNetTCP(f *testing.F) {
	f.Add([]byte("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:0016 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1\n"), false)
	f.Add([]byte("header\n   0: 00000000000000000000000001000000:0016 00000000000000000000000001000000:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 999 1\n"), true)
	f.Add([]byte("h\n0: zz:1 0:0 01 a b c d e 1\n"), false)
	f.Fuzz(func(t *testing.T, data []byte, v6 bool) {
		socks, err := parseProcNetTCP(data, v6)
		if err != nil {
			return
		}
		for _, s := range socks {
			if !s.Local.IsValid() || !s.Remote.IsValid() || s.Local.Addr().Is6() != v6 && !s.Local.Addr().Is4() {
				t.Fatalf("invalid socket %+v", s)
			}
		}
	})
}

func TestParseProcNetTCP(t *testing.T) {
	socks, err := parseProcNetTCP([]byte("  sl  local_address rem_address   st\n   0: 0B0AFA0A:0016 6400FA0A:C350 01 00000000:00000000 00:00000000 00000000     0        0 4242 1\n"), false)
	if err != nil || len(socks) != 1 {
		t.Fatal(socks, err)
	}
	s := socks[0]
	if s.Local != netip.MustParseAddrPort("10.250.10.11:22") || s.Remote != netip.MustParseAddrPort("10.250.0.100:50000") || s.State != tcpEstablished || s.Inode != 4242 {
		t.Errorf("%+v", s)
	}
	if pp, err := parseStatPPID([]byte("123 (a (weird) name) S 45 123 123 0")); err != nil || pp != 45 {
		t.Errorf("ppid %d %v", pp, err)
	}
}

// FuzzObservation: what a node answers to mesh.observe is decoded and
// checked by the installer before use; no answer makes that panic, and an
// answer that passes Check has valid keys.
func FuzzObservation(f *testing.F) {
	f.Add([]byte(`{"key":{"exists":true,"publicKey":"HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="},"device":{"name":"wg-castellan","type":"userspace","listenPort":51871,"up":true,"peers":[{"publicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=","endpoint":"192.0.2.1:51871","allowedIPs":["10.99.0.2/32"]}]},"firewall":{"live":"ab"},"session":{"remote":"192.0.2.9:50000","local":"192.0.2.1:22"}}`))
	f.Add([]byte(`{"key":{"exists":true,"publicKey":"short"}}`))
	f.Add([]byte(`{"device":{"peers":[{"publicKey":""}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var o Observation
		if err := json.Unmarshal(data, &o); err != nil {
			return
		}
		if err := o.Check(); err != nil {
			return
		}
		if o.Key.Exists && len(o.Key.PublicKey) != 44 {
			t.Fatalf("a key that is not a WireGuard key passed: %q", o.Key.PublicKey)
		}
	})
}

// FuzzParseStored: the state repo's mesh data is parsed strictly.
func FuzzParseStored(f *testing.F) {
	f.Add([]byte(`{"subnet":"10.99.0.0/24","nodes":{"a":"10.99.0.1"}}`))
	f.Add([]byte(`{"a":{"publicKey":"x","signature":"AAAA","certSerial":"1","created":"2026-01-01T00:00:00Z"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if a, err := ParseAllocation(data); err == nil {
			_, _ = Allocate(a, netip.MustParsePrefix("10.99.0.0/24"), []string{"a", "b"}, time.Time{})
		}
		_, _ = ParseKeyRecords(data)
	})
}
