package ssh

import (
	"strings"
	"testing"

	xknownhosts "golang.org/x/crypto/ssh/knownhosts"
)

// TestSelectKnownHosts: the lines a run relies on are selected the way
// OpenSSH matches them, @cert-authority and @revoked lines with wildcards
// included; lines for other hosts are not.
func TestSelectKnownHosts(t *testing.T) {
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
	input := strings.Join([]string{
		"# a comment",
		"192.0.2.1 " + key,
		"[192.0.2.2]:2222 " + key,
		"192.0.2.2 " + key, // the node's address but the wrong port
		xknownhosts.HashHostname("192.0.2.3") + " " + key,
		xknownhosts.HashHostname("192.0.2.99") + " " + key,
		"github.com " + key,
		"*.example.com " + key,
		"*.example.org,!bastion.example.org " + key, // negated for the bastion
		"192.0.2.4,bastion.example.org " + key,
		"@cert-authority *.example.org " + key, // the bastion's CA
		"@cert-authority 192.0.2.? " + key,     // the nodes' CA
		"@cert-authority *.other.net " + key,
		"@revoked * " + key,
		"[2001:db8::7] " + key, // bracketed without a port: accepted, matches nothing here
		"not a known_hosts line",
		"",
	}, "\n")
	hosts := []Host{
		{Name: "a", Address: "192.0.2.1"},
		{Name: "b", Address: "192.0.2.2", Port: 2222},
		{Name: "c", Address: "192.0.2.3", Port: 22},
		{Name: "bastion", Address: "bastion.example.org"},
	}
	got := string(SelectKnownHosts([]byte(input), hosts))
	lines := strings.Split(strings.TrimSpace(got), "\n")
	want := []string{"192.0.2.1 ", "[192.0.2.2]:2222 ", "|1|", "192.0.2.4,bastion.example.org ",
		"@cert-authority *.example.org ", "@cert-authority 192.0.2.? ", "@revoked * "}
	if len(lines) != len(want) {
		t.Fatalf("selected %d lines, want %d:\n%s", len(lines), len(want), got)
	}
	for i, prefix := range want {
		if !strings.HasPrefix(lines[i], prefix) {
			t.Errorf("line %d = %q, want prefix %q", i, lines[i], prefix)
		}
	}
	for _, leaked := range []string{"github.com", "*.example.com", "!bastion", "*.other.net", "2001:db8", "\n192.0.2.2 ssh"} {
		if strings.Contains(got, leaked) {
			t.Errorf("selected a line for %q:\n%s", leaked, got)
		}
	}
}
