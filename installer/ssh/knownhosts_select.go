package ssh

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
)

// SelectKnownHosts returns the lines of a known_hosts file that name one of
// hosts (plainly or hashed, as "addr" or "[addr]:port"), so a run records the
// keys of its own nodes and not every host a user's ~/.ssh/known_hosts holds.
// Lines with wildcards or negations are left out: they do not name a host.
func SelectKnownHosts(data []byte, hosts []Host) []byte {
	names := map[string]bool{}
	for _, h := range hosts {
		names[knownHostsName(h)] = true
	}
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		_, patterns, _, _, _, err := ssh.ParseKnownHosts([]byte(line))
		if err != nil {
			continue // comments, blank lines, garbage
		}
		for _, p := range patterns {
			if names[p] || hashedMatch(p, names) {
				out.WriteString(line + "\n")
				break
			}
		}
	}
	return out.Bytes()
}

// knownHostsName is how known_hosts writes a host: "addr", or "[addr]:port"
// for a port other than 22.
func knownHostsName(h Host) string {
	a := h.Address
	if a == "" {
		a = h.Name
	}
	if h.Port == 0 || h.Port == 22 {
		return a
	}
	return "[" + a + "]:" + strconv.Itoa(h.Port)
}

// hashedMatch checks a hashed pattern (|1|salt|hmac) against the names.
func hashedMatch(p string, names map[string]bool) bool {
	rest, ok := strings.CutPrefix(p, "|1|")
	if !ok {
		return false
	}
	saltB64, macB64, ok := strings.Cut(rest, "|")
	if !ok {
		return false
	}
	salt, err1 := base64.StdEncoding.DecodeString(saltB64)
	want, err2 := base64.StdEncoding.DecodeString(macB64)
	if err1 != nil || err2 != nil {
		return false
	}
	for n := range names {
		m := hmac.New(sha1.New, salt)
		m.Write([]byte(n))
		if hmac.Equal(m.Sum(nil), want) {
			return true
		}
	}
	return false
}
