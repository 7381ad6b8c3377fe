package ssh

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// AcceptedKey is a host key that known_hosts did not know, accepted because
// Config.AcceptNewHostKeys is set. It is trusted in memory by the Pool that
// accepted it (pending) until Pool.TrustHostKeys writes Line to
// KnownHostsFile.
type AcceptedKey struct {
	Host           string // name used in messages (the bastion's label for the bastion)
	Addr           string // host:port dialed
	KeyType        string
	Fingerprint    string // SHA256:...
	Line           string // the known_hosts line that trusts it (hashed when the file is)
	KnownHostsFile string
	At             time.Time // when it was first seen
	keyBlob        string    // the key in SSH wire format (a string keeps AcceptedKey comparable)
	name           string    // known_hosts lookup name
}

// hostKeyChecker verifies host keys against one known_hosts file, accepts
// unknown ones in memory when allowed, and writes them on request. It is
// shared by all connections of a Pool.
type hostKeyChecker struct {
	file      string
	acceptNew bool
	hash      bool
	log       *slog.Logger

	mu       sync.Mutex
	kh       *KnownHosts
	warnings []KnownHostsWarning
	pending  map[string]*AcceptedKey // by lookup name
	order    []string                // pending names, in the order accepted
	trusted  []AcceptedKey           // written by trust
}

func newHostKeyChecker(file string, acceptNew, hash bool, log *slog.Logger) (*hostKeyChecker, error) {
	k := &hostKeyChecker{file: file, acceptNew: acceptNew, hash: hash, log: log, pending: map[string]*AcceptedKey{}}
	if err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

// load (re)reads known_hosts. Without it, with AcceptNewHostKeys, the file
// is treated as empty: it is created only when keys are trusted.
func (k *hostKeyChecker) load() error {
	kh, warnings, err := ReadKnownHosts(k.file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			if k.acceptNew {
				k.kh, k.warnings = &KnownHosts{Path: k.file}, nil
				return nil
			}
			return &KnownHostsFileError{Path: k.file, Op: "read", Err: errors.New("the file does not exist: create it with the hosts' keys " +
				"(checked out-of-band), or use --accept-new-host-keys to accept them on first contact")}
		}
		return err
	}
	for _, w := range warnings {
		if !slices.Contains(k.warnings, w) {
			k.log.Warn("known_hosts line skipped", "file", w.Path, "line", w.Line, "problem", w.Problem)
		}
	}
	k.kh, k.warnings = kh, warnings
	return nil
}

// certAlgorithms are the host certificate algorithms offered when
// known_hosts trusts a CA for the host.
var certAlgorithms = []string{
	ssh.CertAlgoED25519v01,
	ssh.CertAlgoECDSA256v01, ssh.CertAlgoECDSA384v01, ssh.CertAlgoECDSA521v01,
	ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01,
}

// preferredHostKeyAlgorithms for hosts known_hosts does not know yet. No
// SHA-1 RSA, no DSA.
var preferredHostKeyAlgorithms = []string{
	ssh.KeyAlgoED25519,
	ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256,
}

// algorithms returns the host key algorithms to offer when connecting to
// name: certificate algorithms first when known_hosts trusts a CA for it,
// then the key types known_hosts (or this run, for a pending key) holds for
// it in file order, or the preferred order (Ed25519 first, like OpenSSH)
// when none. Without this the x/crypto default order (ECDSA first) would
// negotiate a key type known_hosts does not hold, and the check would fail
// as if the key had changed.
func (k *hostKeyChecker) algorithms(name string) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return hostKeyAlgorithms(k.kh, k.pending[name], name)
}

func hostKeyAlgorithms(kh *KnownHosts, pending *AcceptedKey, name string) []string {
	var algos []string
	var types []string
	ca := false
	for _, e := range kh.Lookup(name) {
		switch e.Marker {
		case MarkerCertAuthority:
			ca = true
		case "":
			if !slices.Contains(types, e.Key.Type()) {
				types = append(types, e.Key.Type())
			}
		}
	}
	if pending != nil {
		types = []string{pending.KeyType}
	}
	if ca {
		algos = append(algos, certAlgorithms...)
	}
	if len(types) == 0 {
		return append(algos, preferredHostKeyAlgorithms...)
	}
	for _, t := range types {
		algos = append(algos, algorithmsForKeyType(t)...)
	}
	return algos
}

// algorithmsForKeyType: an RSA key can sign with SHA-512, SHA-256 or SHA-1.
func algorithmsForKeyType(t string) []string {
	if t == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{t}
}

func keysEqual(a, b ssh.PublicKey) bool {
	return a != nil && b != nil && bytes.Equal(a.Marshal(), b.Marshal())
}

func describeEntry(e KnownHostsEntry) string {
	return fmt.Sprintf("line %d: %s %s", e.Line, e.Key.Type(), ssh.FingerprintSHA256(e.Key))
}

// callback returns the HostKeyCallback for one connection attempt to the
// host hostName at addr. The *HostKeyError it refuses with is also stored
// in *refused, so that the caller can return it unwrapped and skip
// retries; a key accepted as new is added to *accepted.
func (k *hostKeyChecker) callback(hostName string, refused **HostKeyError, accepted *[]AcceptedKey, verified *bool) ssh.HostKeyCallback {
	return func(addr string, _ net.Addr, key ssh.PublicKey) error {
		k.mu.Lock()
		defer k.mu.Unlock()
		ak, he := k.check(hostName, addr, key)
		if he != nil {
			*refused = he
			k.log.Warn("host key refused", "host", hostName, "addr", addr, "type", he.KeyType,
				"fingerprint", he.Fingerprint, "changed", he.Changed, "revoked", he.Revoked)
			return he
		}
		if ak != nil {
			*accepted = append(*accepted, *ak)
		}
		*verified = true
		return nil
	}
}

// check decides on key, offered by hostName at addr. Called with k.mu held.
// It returns the key accepted as new (nil if known_hosts vouches for it),
// or the refusal.
func (k *hostKeyChecker) check(hostName, addr string, key ssh.PublicKey) (*AcceptedKey, *HostKeyError) {
	name := lookupName(addr)
	entries := k.kh.Lookup(name)
	host, _ := splitHostPort(addr)
	plainKey := key
	cert, isCert := key.(*ssh.Certificate)
	if isCert {
		plainKey = cert.Key
	}
	he := &HostKeyError{
		Host: hostName, Addr: addr, KeyType: plainKey.Type(), Fingerprint: ssh.FingerprintSHA256(plainKey),
		KnownHostsFile: k.file, Line: knownHostsLine(name, plainKey, false),
	}
	var cas, plain []KnownHostsEntry
	for _, e := range entries {
		switch e.Marker {
		case MarkerRevoked:
			if keysEqual(e.Key, plainKey) || isCert && keysEqual(e.Key, cert.SignatureKey) {
				he.Revoked = true
				return nil, he
			}
		case MarkerCertAuthority:
			cas = append(cas, e)
			he.TrustedCAs = append(he.TrustedCAs, describeEntry(e))
		default:
			plain = append(plain, e)
		}
	}
	if isCert {
		he.CertProblem = k.checkCert(host, cert, cas)
		if he.CertProblem == "" {
			return nil, nil
		}
		// Like ssh: a certificate no trusted CA vouches for is checked as
		// the plain key it certifies.
	}
	for _, e := range plain {
		if keysEqual(e.Key, plainKey) {
			return nil, nil
		}
	}
	if p := k.pending[name]; p != nil {
		if p.keyBlob == string(plainKey.Marshal()) {
			return nil, nil
		}
		he.Changed, he.Pinned = true, true
		he.Known = []string{p.KeyType + " " + p.Fingerprint}
		return nil, he
	}
	if len(plain) > 0 {
		he.Changed = true
		for _, e := range plain {
			he.Known = append(he.Known, describeEntry(e))
			he.KnownLines = append(he.KnownLines, e.Line)
		}
		return nil, he
	}
	if !k.acceptNew {
		return nil, he
	}
	hashed := k.hash || k.kh.Hashed()
	ak := &AcceptedKey{
		Host: hostName, Addr: addr, KeyType: plainKey.Type(), Fingerprint: he.Fingerprint,
		Line: knownHostsLine(name, plainKey, hashed), KnownHostsFile: k.file, At: time.Now().UTC(),
		keyBlob: string(plainKey.Marshal()), name: name,
	}
	k.pending[name] = ak
	k.order = append(k.order, name)
	k.log.Info("accepted new host key for this run (not written to known_hosts yet)", "host", hostName, "addr", addr,
		"type", ak.KeyType, "fingerprint", ak.Fingerprint)
	return ak, nil
}

// checkCert validates a host certificate against the CA entries for the
// host: "" when one of them vouches for it, else why not.
func (k *hostKeyChecker) checkCert(host string, cert *ssh.Certificate, cas []KnownHostsEntry) string {
	if len(cas) == 0 {
		return "known_hosts trusts no certificate authority for this host"
	}
	if cert.CertType != ssh.HostCert {
		return "it is not a host certificate"
	}
	for _, ca := range cas {
		if !keysEqual(ca.Key, cert.SignatureKey) {
			continue
		}
		checker := &ssh.CertChecker{
			IsRevoked: func(c *ssh.Certificate) bool {
				for _, e := range k.kh.Lookup(lookupName(host)) {
					if e.Marker == MarkerRevoked && keysEqual(e.Key, c.Key) {
						return true
					}
				}
				return false
			},
		}
		if err := checker.CheckCert(host, cert); err != nil {
			return trimSSH(err)
		}
		return ""
	}
	return fmt.Sprintf("it is signed by %s %s, a CA known_hosts does not trust for this host",
		cert.SignatureKey.Type(), ssh.FingerprintSHA256(cert.SignatureKey))
}

// noCommonAlgorithm turns a failed host key algorithm negotiation into a
// HostKeyError when known_hosts restricted the algorithms: the host no
// longer has a key of any type known_hosts holds for it.
func (k *hostKeyChecker) noCommonAlgorithm(hostName, addr string, err error) *HostKeyError {
	var ne *ssh.AlgorithmNegotiationError
	if !errors.As(err, &ne) || ne.What != "host key" {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	name := lookupName(addr)
	he := &HostKeyError{Host: hostName, Addr: addr, KnownHostsFile: k.file, Changed: true, NoCommonAlgorithm: true}
	for _, e := range k.kh.Lookup(name) {
		switch e.Marker {
		case "":
			he.Known = append(he.Known, describeEntry(e))
			he.KnownLines = append(he.KnownLines, e.Line)
		case MarkerCertAuthority:
			he.TrustedCAs = append(he.TrustedCAs, describeEntry(e))
		}
	}
	if p := k.pending[name]; p != nil {
		he.Pinned = true
		he.Known = []string{p.KeyType + " " + p.Fingerprint}
	}
	if len(he.Known) == 0 {
		return nil
	}
	return he
}

func (k *hostKeyChecker) pendingKeys() []AcceptedKey {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]AcceptedKey, 0, len(k.order))
	for _, n := range k.order {
		if p := k.pending[n]; p != nil {
			out = append(out, *p)
		}
	}
	return out
}

func (k *hostKeyChecker) pendingKey(name string) (AcceptedKey, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if p := k.pending[name]; p != nil {
		return *p, true
	}
	return AcceptedKey{}, false
}

func (k *hostKeyChecker) trustedKeys() []AcceptedKey {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.trusted)
}

func (k *hostKeyChecker) knownHostsWarnings() []KnownHostsWarning {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.warnings)
}

// trust writes keys (accepted as new by this checker) to known_hosts. The
// file is read again first: a key it already holds is not written twice,
// and a key for a host it now holds another key for is refused (a
// *HostKeyError; nothing is written then). The new lines are appended with
// one write (O_APPEND, like ssh); if that fails the file is cut back to its
// previous size, so it never holds half a line.
func (k *hostKeyChecker) trust(keys []AcceptedKey) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	var todo []*AcceptedKey
	for _, key := range keys {
		name := key.name
		if name == "" {
			name = lookupName(key.Addr)
		}
		p := k.pending[name]
		if p == nil || p.Fingerprint != key.Fingerprint {
			if slices.ContainsFunc(k.trusted, func(t AcceptedKey) bool { return t.name == name && t.Fingerprint == key.Fingerprint }) {
				continue
			}
			return errorf("ssh: trusting the host key %s %s of %s (%s): it is not a key this pool accepted", key.KeyType, key.Fingerprint, key.Host, key.Addr)
		}
		if !slices.Contains(todo, p) {
			todo = append(todo, p)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	// Read the file as it is now: another process may have written it.
	if err := k.load(); err != nil {
		return err
	}
	var lines strings.Builder
	var write []*AcceptedKey
	for _, p := range todo {
		var other []KnownHostsEntry
		have := false
		for _, e := range k.kh.Lookup(p.name) {
			if e.Marker != "" {
				continue
			}
			if string(e.Key.Marshal()) == p.keyBlob {
				have = true
			} else {
				other = append(other, e)
			}
		}
		switch {
		case have:
		case len(other) > 0:
			he := &HostKeyError{Host: p.Host, Addr: p.Addr, KeyType: p.KeyType, Fingerprint: p.Fingerprint,
				KnownHostsFile: k.file, Changed: true, Line: p.Line}
			for _, e := range other {
				he.Known = append(he.Known, describeEntry(e))
				he.KnownLines = append(he.KnownLines, e.Line)
			}
			return he
		default:
			lines.WriteString(p.Line + "\n")
			write = append(write, p)
		}
	}
	if lines.Len() > 0 {
		if err := appendKnownHosts(k.file, lines.String()); err != nil {
			return err
		}
		if err := k.load(); err != nil {
			return err
		}
	}
	for _, p := range todo {
		delete(k.pending, p.name)
		k.order = slices.DeleteFunc(k.order, func(n string) bool { return n == p.name })
		k.trusted = append(k.trusted, *p)
	}
	for _, p := range write {
		k.log.Info("host key written to known_hosts", "host", p.Host, "addr", p.Addr, "type", p.KeyType,
			"fingerprint", p.Fingerprint, "known_hosts", k.file)
	}
	return nil
}

// appendKnownHosts appends lines to the known_hosts file at path (created
// 0600, with its directory 0700, when missing) in one write, after a
// newline if the file does not end with one. On failure the file is cut
// back to its previous size. Errors are *KnownHostsFileError (Op "write").
func appendKnownHosts(path, lines string) error {
	fail := func(err error) error { return &KnownHostsFileError{Path: path, Op: "write", Err: err} }
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fail(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fail(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	if !st.Mode().IsRegular() {
		return fail(fmt.Errorf("is not a regular file (%s)", fileKind(st.Mode())))
	}
	size := st.Size()
	if size > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, size-1); err != nil {
			return fail(err)
		}
		if last[0] != '\n' {
			lines = "\n" + lines
		}
	}
	if _, err := f.WriteString(lines); err != nil {
		_ = f.Truncate(size)
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Truncate(size)
		return fail(err)
	}
	return nil
}
