package ssh

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/skeema/knownhosts"
	"golang.org/x/crypto/ssh"
	xknownhosts "golang.org/x/crypto/ssh/knownhosts"
)

// AcceptedKey is a host key recorded into known_hosts because
// AcceptNewHostKeys was set. The caller commits these to the run's record.
type AcceptedKey struct {
	Host           string // name used in messages
	Addr           string // host:port
	KeyType        string
	Fingerprint    string // SHA256:...
	Line           string // the line appended to KnownHostsFile
	KnownHostsFile string
	At             time.Time
}

// hostKeyChecker verifies host keys against one known_hosts file and, when
// allowed, records unknown ones. It is shared by all connections of a Pool.
type hostKeyChecker struct {
	file      string
	acceptNew bool
	hash      bool
	log       *slog.Logger

	mu       sync.Mutex
	db       *knownhosts.HostKeyDB
	accepted []AcceptedKey
}

func newHostKeyChecker(file string, acceptNew, hash bool, log *slog.Logger) (*hostKeyChecker, error) {
	if acceptNew {
		if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
			return nil, fmt.Errorf("ssh: creating the directory of known_hosts: %w", err)
		}
		f, err := os.OpenFile(file, os.O_CREATE|os.O_RDONLY, 0o600)
		if err != nil {
			return nil, fmt.Errorf("ssh: creating known_hosts: %w", err)
		}
		f.Close()
	}
	k := &hostKeyChecker{file: file, acceptNew: acceptNew, hash: hash, log: log}
	if err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *hostKeyChecker) load() error {
	db, err := knownhosts.NewDB(k.file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("ssh: known_hosts file %s does not exist: create it with the hosts' keys "+
				"(checked out-of-band), or use --accept-new-host-keys to record them on first contact", k.file)
		}
		return fmt.Errorf("ssh: reading known_hosts: %w", err)
	}
	k.db = db
	return nil
}

// algorithms returns the host key algorithms to offer when connecting to
// addr: the ones known_hosts holds for it, in file order, or the preferred
// order (Ed25519 first, like OpenSSH) when the host is unknown; its key is
// then refused or recorded by the callback.
func (k *hostKeyChecker) algorithms(addr string) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return hostKeyAlgorithms(k.db, addr)
}

// hostKeyAlgorithms picks the algorithms to offer for addr. Without this the
// x/crypto default order (ECDSA first, Ed25519 last) would negotiate a key
// type known_hosts does not hold and the check would fail as if the key had
// changed.
func hostKeyAlgorithms(db *knownhosts.HostKeyDB, addr string) []string {
	algos := db.HostKeyAlgorithms(addr)
	if len(algos) == 0 {
		return slices.Clone(preferredHostKeyAlgorithms)
	}
	return algos
}

// preferredHostKeyAlgorithms for hosts known_hosts does not know yet. No
// SHA-1 RSA, no DSA.
var preferredHostKeyAlgorithms = []string{
	ssh.KeyAlgoED25519,
	ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256,
}

func (k *hostKeyChecker) knownEntries(addr string) []string {
	var out []string
	for _, key := range k.db.HostKeys(addr) {
		out = append(out, key.Type()+" "+ssh.FingerprintSHA256(key.PublicKey))
	}
	return out
}

// callback returns the HostKeyCallback for one connection attempt. The
// *HostKeyError it refuses with is also stored in *refused so that the caller
// can return it unwrapped and skip retries.
func (k *hostKeyChecker) callback(hostName string, refused **HostKeyError, accepted *[]AcceptedKey) ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		k.mu.Lock()
		defer k.mu.Unlock()
		err := k.db.HostKeyCallback()(hostname, remote, key)
		if err == nil {
			return nil
		}
		he := &HostKeyError{
			Host:           hostName,
			Addr:           hostname,
			KeyType:        key.Type(),
			Fingerprint:    ssh.FingerprintSHA256(key),
			KnownHostsFile: k.file,
			Line:           knownhosts.Line([]string{hostname}, key),
		}
		var revoked *xknownhosts.RevokedError
		var keyErr *xknownhosts.KeyError
		switch {
		case errors.As(err, &revoked):
			he.Revoked = true
		case errors.As(err, &keyErr) && len(keyErr.Want) > 0:
			he.Changed = true
			for _, w := range keyErr.Want {
				he.Known = append(he.Known, fmt.Sprintf("line %d: %s %s", w.Line, w.Key.Type(), ssh.FingerprintSHA256(w.Key)))
			}
		case errors.As(err, &keyErr):
			if k.acceptNew {
				ak, err := k.record(hostName, hostname, key)
				if err != nil {
					return err
				}
				*accepted = append(*accepted, ak)
				return nil
			}
		default:
			return fmt.Errorf("checking the host key of %s against %s: %w", hostName, k.file, err)
		}
		*refused = he
		k.log.Warn("host key refused", "host", hostName, "addr", hostname, "type", he.KeyType,
			"fingerprint", he.Fingerprint, "changed", he.Changed, "revoked", he.Revoked)
		return he
	}
}

// record appends key for addr to known_hosts and reloads it. Called with
// k.mu held.
func (k *hostKeyChecker) record(hostName, addr string, key ssh.PublicKey) (AcceptedKey, error) {
	entry := knownhosts.Normalize(addr)
	if k.hash {
		entry = xknownhosts.HashHostname(entry)
	}
	line := entry + " " + key.Type() + " " + base64.StdEncoding.EncodeToString(key.Marshal())
	f, err := os.OpenFile(k.file, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return AcceptedKey{}, fmt.Errorf("recording the host key of %s: %w", hostName, err)
	}
	defer f.Close()
	prefix := ""
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
			prefix = "\n"
		}
	}
	if _, err := io.WriteString(f, prefix+line+"\n"); err != nil {
		return AcceptedKey{}, fmt.Errorf("recording the host key of %s: %w", hostName, err)
	}
	if err := f.Sync(); err != nil {
		return AcceptedKey{}, fmt.Errorf("recording the host key of %s: %w", hostName, err)
	}
	if err := k.load(); err != nil {
		return AcceptedKey{}, err
	}
	ak := AcceptedKey{
		Host: hostName, Addr: addr, KeyType: key.Type(), Fingerprint: ssh.FingerprintSHA256(key),
		Line: line, KnownHostsFile: k.file, At: time.Now().UTC(),
	}
	k.accepted = append(k.accepted, ak)
	k.log.Info("accepted new host key", "host", hostName, "addr", addr, "type", ak.KeyType, "fingerprint", ak.Fingerprint, "known_hosts", k.file)
	return ak, nil
}

func (k *hostKeyChecker) allAccepted() []AcceptedKey {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.accepted)
}

// noCommonAlgorithm turns x/crypto's "no common algorithm for host key"
// handshake failure into a HostKeyError when known_hosts restricted the
// algorithms: the host no longer has a key of any known type.
func (k *hostKeyChecker) noCommonAlgorithm(hostName, addr string, err error) *HostKeyError {
	if err == nil || !strings.Contains(err.Error(), "no common algorithm for host key") {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	known := k.knownEntries(addr)
	if len(known) == 0 {
		return nil
	}
	return &HostKeyError{
		Host: hostName, Addr: addr, KnownHostsFile: k.file,
		Changed: true, NoCommonAlgorithm: true, Known: known,
	}
}
