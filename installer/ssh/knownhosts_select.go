package ssh

import (
	"strings"
)

// SelectKnownHosts returns the lines of a known_hosts file that apply to one
// of hosts the way OpenSSH matches them (plain or hashed names, wildcards,
// negations; "addr" or "[addr]:port"): the keys, @cert-authority and
// @revoked lines a run relies on, and not every host a user's
// ~/.ssh/known_hosts holds. Lines that cannot be parsed are left out.
func SelectKnownHosts(data []byte, hosts []Host) []byte {
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = KnownHostsName(h)
	}
	kh, _ := ParseKnownHosts("", data)
	var out strings.Builder
	for _, e := range kh.Entries {
		for _, n := range names {
			if e.Matches(n) {
				out.WriteString(e.Text + "\n")
				break
			}
		}
	}
	return []byte(out.String())
}
