package ssh

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"castellan/installer/localfile"

	"golang.org/x/crypto/ssh"
)

// known_hosts markers (sshd(8), SSH_KNOWN_HOSTS FILE FORMAT).
const (
	MarkerCertAuthority = "@cert-authority"
	MarkerRevoked       = "@revoked"
)

// MaxKnownHostsSize bounds the size of a known_hosts file castellan reads.
const MaxKnownHostsSize = 16 << 20

// KnownHosts is a known_hosts file read the way OpenSSH reads it (sshd(8),
// section SSH_KNOWN_HOSTS FILE FORMAT; matching as in OpenSSH's hostfile.c
// and match.c): line by line, each line on its own. A line that cannot be
// parsed is skipped with a warning naming file:line, never an error for the
// whole file, so a user's ~/.ssh/known_hosts full of other hosts can be
// used. Host patterns are matched like OpenSSH: case-insensitively, with
// the * and ? wildcards, !negations, and hashed names (|1|salt|hmac).
type KnownHosts struct {
	Path    string
	Entries []KnownHostsEntry
}

// KnownHostsEntry is one parsed line.
type KnownHostsEntry struct {
	Line   int    // 1-based line number
	Marker string // "", MarkerCertAuthority or MarkerRevoked
	Hosts  string // the host patterns as written (comma-separated, or one hashed name)
	Key    ssh.PublicKey
	Text   string // the line as written, without its line ending

	hashed     bool
	salt, hmac []byte
	patterns   []string
}

// KnownHostsWarning is a known_hosts line that was skipped.
type KnownHostsWarning struct {
	Path    string
	Line    int // 1-based
	Problem string
}

func (w KnownHostsWarning) String() string {
	return fmt.Sprintf("%s:%d: %s; line skipped", w.Path, w.Line, w.Problem)
}

// ReadKnownHosts reads and parses the known_hosts file at path. It returns
// the entries, one warning per line that cannot be parsed (which is
// skipped), and an error (a *KnownHostsFileError, wrapping fs.ErrNotExist
// when the file is missing, localfile.ErrNotRegular or ErrTooLarge) when the
// file as a whole cannot be used: it is missing, a directory, a FIFO or
// device (refused without blocking), larger than MaxKnownHostsSize,
// unreadable or too slow to read (30 s), or not a known_hosts file at all
// (binary data, or not one line parses; Line then names the first
// offending line).
func ReadKnownHosts(path string) (*KnownHosts, []KnownHostsWarning, error) {
	data, err := readUserFile(path, MaxKnownHostsSize)
	if err != nil {
		return nil, nil, &KnownHostsFileError{Path: path, Op: "read", Err: err}
	}
	if i := bytes.IndexByte(data, 0); i >= 0 {
		line := 1 + bytes.Count(data[:i], []byte{'\n'})
		return nil, nil, &KnownHostsFileError{Path: path, Line: line, Op: "read",
			Err: errors.New("not a known_hosts file: it holds binary data")}
	}
	kh, warnings := ParseKnownHosts(path, data)
	if len(kh.Entries) == 0 && len(warnings) > 0 {
		return kh, warnings, &KnownHostsFileError{Path: path, Line: warnings[0].Line, Op: "read",
			Err: fmt.Errorf("not a known_hosts file: no line parses (first: %s)", warnings[0].Problem)}
	}
	return kh, warnings, nil
}

// ParseKnownHosts parses known_hosts content; path is only used in the
// warnings. Blank lines and comments are skipped silently; every other line
// becomes an entry or a warning, never both.
func ParseKnownHosts(path string, data []byte) (*KnownHosts, []KnownHostsWarning) {
	kh := &KnownHosts{Path: path}
	var warnings []KnownHostsWarning
	n := 0
	for len(data) > 0 {
		n++
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		line = bytes.TrimSuffix(line, []byte{'\r'})
		e, problem := parseKnownHostsLine(string(line))
		switch {
		case problem != "":
			warnings = append(warnings, KnownHostsWarning{Path: path, Line: n, Problem: problem})
		case e != nil:
			e.Line = n
			kh.Entries = append(kh.Entries, *e)
		}
	}
	return kh, warnings
}

// parseKnownHostsLine parses one line: nil and "" for a blank line or a
// comment, an entry, or a problem.
func parseKnownHostsLine(line string) (*KnownHostsEntry, string) {
	rest := strings.TrimLeft(line, " \t")
	if rest == "" || rest[0] == '#' {
		return nil, ""
	}
	e := &KnownHostsEntry{Text: line}
	field := func() string {
		rest = strings.TrimLeft(rest, " \t")
		i := strings.IndexAny(rest, " \t")
		if i < 0 {
			f := rest
			rest = ""
			return f
		}
		f := rest[:i]
		rest = rest[i:]
		return f
	}
	if rest[0] == '@' {
		switch m := field(); m {
		case MarkerCertAuthority, MarkerRevoked:
			e.Marker = m
		default:
			return nil, fmt.Sprintf("unknown marker %s (only %s and %s exist)", quoteShort(m), MarkerCertAuthority, MarkerRevoked)
		}
	}
	e.Hosts = field()
	if e.Hosts == "" {
		return nil, "no host patterns"
	}
	if strings.HasPrefix(e.Hosts, "|") {
		salt, mac, ok := parseHashedHost(e.Hosts)
		if !ok {
			return nil, "invalid hashed host name (|1|salt|hash)"
		}
		e.hashed, e.salt, e.hmac = true, salt, mac
	} else {
		for _, p := range strings.Split(e.Hosts, ",") {
			if p == "" || p == "!" {
				return nil, "empty host pattern in " + quoteShort(e.Hosts)
			}
			e.patterns = append(e.patterns, strings.ToLower(p))
		}
	}
	keyType := field()
	if keyType == "" {
		return nil, "no key after the host patterns"
	}
	if _, err := strconv.Atoi(keyType); err == nil {
		return nil, "SSH protocol 1 RSA key (no longer supported by OpenSSH)"
	}
	b64 := field()
	if b64 == "" {
		return nil, "no key data after the key type " + quoteShort(keyType)
	}
	blob, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, "key data is not base64"
	}
	key, err := ssh.ParsePublicKey(blob)
	if err != nil {
		return nil, fmt.Sprintf("%s key cannot be parsed: %s", quoteShort(keyType), trimSSH(err))
	}
	if key.Type() != keyType {
		return nil, fmt.Sprintf("key type %s does not match the key data (%s)", quoteShort(keyType), key.Type())
	}
	if _, ok := key.(*ssh.Certificate); ok {
		return nil, "a certificate where a key is expected (trust the CA that signed it with a @cert-authority line)"
	}
	e.Key = key
	return e, ""
}

func quoteShort(s string) string {
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return strconv.Quote(s)
}

// parseHashedHost decodes "|1|salt|hmac" (base64, HMAC-SHA1).
func parseHashedHost(s string) (salt, mac []byte, ok bool) {
	rest, found := strings.CutPrefix(s, "|1|")
	if !found {
		return nil, nil, false
	}
	saltB64, macB64, found := strings.Cut(rest, "|")
	if !found {
		return nil, nil, false
	}
	salt, err1 := base64.StdEncoding.DecodeString(saltB64)
	mac, err2 := base64.StdEncoding.DecodeString(macB64)
	if err1 != nil || err2 != nil || len(mac) != sha1.Size || len(salt) == 0 {
		return nil, nil, false
	}
	return salt, mac, true
}

// Hashed says whether the entry's host name is hashed.
func (e *KnownHostsEntry) Hashed() bool { return e.hashed }

// Matches reports whether the entry applies to name, the name a host is
// looked up by (KnownHostsName): hashed entries by their HMAC, others by
// OpenSSH's pattern rules (any positive match and no negated one).
func (e *KnownHostsEntry) Matches(name string) bool {
	name = strings.ToLower(name)
	if e.hashed {
		m := hmac.New(sha1.New, e.salt)
		m.Write([]byte(name))
		return hmac.Equal(m.Sum(nil), e.hmac)
	}
	matched := false
	for _, p := range e.patterns {
		if neg, ok := strings.CutPrefix(p, "!"); ok {
			if wildcardMatch(neg, name) {
				return false
			}
			continue
		}
		if wildcardMatch(p, name) {
			matched = true
		}
	}
	return matched
}

// wildcardMatch matches s against a pattern of literal bytes, * (any
// sequence) and ? (one byte), in O(len(p)*len(s)) at worst.
func wildcardMatch(p, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case pi < len(p) && (p[pi] == '?' || p[pi] == s[si]):
			pi++
			si++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// Lookup returns the entries that apply to name, in file order.
func (kh *KnownHosts) Lookup(name string) []KnownHostsEntry {
	var out []KnownHostsEntry
	for _, e := range kh.Entries {
		if e.Matches(name) {
			out = append(out, e)
		}
	}
	return out
}

// Hashed reports whether the file's host entries are mostly hashed, so that
// new entries should be hashed too (as ssh does with HashKnownHosts).
func (kh *KnownHosts) Hashed() bool {
	hashed, plain := 0, 0
	for _, e := range kh.Entries {
		if e.Marker != "" {
			continue
		}
		if e.hashed {
			hashed++
		} else {
			plain++
		}
	}
	return hashed > 0 && hashed >= plain
}

// KnownHostsName is the name a host is looked up by in known_hosts, as
// OpenSSH writes it: the address (lowercase), or "[address]:port" for a
// port other than 22.
func KnownHostsName(h Host) string { return lookupName(h.Addr()) }

// lookupName turns a dialed host:port into its known_hosts name.
func lookupName(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return strings.ToLower(addr)
	}
	host = strings.ToLower(host)
	if port == "22" {
		return host
	}
	return "[" + host + "]:" + port
}

// knownHostsLine is the known_hosts line for key under name, hashed or not.
func knownHostsLine(name string, key ssh.PublicKey, hashed bool) string {
	if hashed {
		name = hashHostname(name)
	}
	return name + " " + key.Type() + " " + base64.StdEncoding.EncodeToString(key.Marshal())
}

// hashHostname hashes name as OpenSSH's HashKnownHosts does:
// |1|base64(salt)|base64(HMAC-SHA1(salt, name)), with a random 20-byte salt.
func hashHostname(name string) string {
	salt := make([]byte, sha1.Size)
	_, _ = rand.Read(salt)
	m := hmac.New(sha1.New, salt)
	m.Write([]byte(name))
	return "|1|" + base64.StdEncoding.EncodeToString(salt) + "|" + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// fileTimeout bounds the reading of a file a user named (a hung network
// file system must not hang castellan).
const fileTimeout = 30 * time.Second

// readUserFile reads a file a user named with localfile: a regular file
// only (a FIFO, device or directory is refused without blocking), at most
// max bytes, within fileTimeout. Its errors carry the reason without the
// path (the callers' messages name it).
func readUserFile(path string, max int64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), fileTimeout)
	defer cancel()
	data, err := localfile.Read(ctx, path, max)
	var le *localfile.Error
	if errors.As(err, &le) {
		return nil, le.Err
	}
	return data, err
}

func fileKind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	}
	return m.Type().String()
}
