package ssh

import (
	"strings"
	"testing"

	xknownhosts "golang.org/x/crypto/ssh/knownhosts"
)

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
		"*.example.org " + key,
		"192.0.2.4,bastion.example.org " + key,
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
	if len(lines) != 4 {
		t.Fatalf("selected %d lines, want 4:\n%s", len(lines), got)
	}
	for i, prefix := range []string{"192.0.2.1 ", "[192.0.2.2]:2222 ", "|1|", "192.0.2.4,bastion.example.org "} {
		if !strings.HasPrefix(lines[i], prefix) {
			t.Errorf("line %d = %q, want prefix %q", i, lines[i], prefix)
		}
	}
	for _, leaked := range []string{"github.com", "*.example.org", "\n192.0.2.2 ssh"} {
		if strings.Contains(got, leaked) {
			t.Errorf("selected a line for %q:\n%s", leaked, got)
		}
	}
}
