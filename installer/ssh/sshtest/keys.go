package sshtest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	xknownhosts "golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/sync/errgroup"
)

// GenerateKey makes a private key of the given type (Ed25519, ECDSA P-256,
// RSA with bits).
func GenerateKey(typ string, bits int) (crypto.Signer, error) {
	switch typ {
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case ECDSA:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA:
		if bits == 0 {
			bits = 2048
		}
		return rsa.GenerateKey(rand.Reader, bits)
	}
	return nil, fmt.Errorf("unknown key type %q", typ)
}

// WriteKey writes key in OpenSSH format, mode 0600, and returns its public
// half. A non-empty passphrase encrypts it.
func WriteKey(path string, key crypto.Signer, passphrase string) (ssh.PublicKey, error) {
	var blk *pem.Block
	var err error
	if passphrase != "" {
		blk, err = ssh.MarshalPrivateKeyWithPassphrase(key, "", []byte(passphrase))
	} else {
		blk, err = ssh.MarshalPrivateKey(key, "")
	}
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
		return nil, err
	}
	pub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(pub), 0o644); err != nil {
		return nil, err
	}
	return pub, nil
}

// setupKeys makes the client key (authorized for both users) and every
// node's host keys.
func (l *Lab) setupKeys(opts Options) error {
	k, err := GenerateKey(Ed25519, 0)
	if err != nil {
		return err
	}
	l.KeyFile = filepath.Join(l.Dir, "id_ed25519")
	pub, err := WriteKey(l.KeyFile, k, "")
	if err != nil {
		return err
	}
	if l.Signer, err = ssh.NewSignerFromKey(k); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(l.Dir, "authorized_keys"), ssh.MarshalAuthorizedKey(pub), 0o644); err != nil {
		return err
	}
	type job struct {
		n   *Node
		typ string
		pub ssh.PublicKey
	}
	var jobs []*job
	for _, n := range l.AllNodes() {
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			return err
		}
		for _, typ := range opts.HostKeyTypes {
			jobs = append(jobs, &job{n: n, typ: typ})
		}
	}
	var g errgroup.Group
	g.SetLimit(runtime.NumCPU())
	for _, j := range jobs {
		g.Go(func() error {
			k, err := GenerateKey(j.typ, opts.RSABits)
			if err != nil {
				return err
			}
			j.pub, err = WriteKey(filepath.Join(j.n.Dir, "ssh_host_"+j.typ+"_key"), k, "")
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, j := range jobs {
		j.n.HostKeys[j.typ] = j.pub
	}
	if opts.HostCA {
		return l.setupHostCA()
	}
	return nil
}

// KnownHostsOptions choose what WriteKnownHosts writes.
type KnownHostsOptions struct {
	Nodes    []*Node  // default: every node (bastion and hidden ones included)
	KeyTypes []string // default: every key type the node has, in AllKeyTypes order
	Hashed   bool     // hash the host names (HashKnownHosts yes)
	Path     string   // default: a new file in the lab directory
}

// KnownHostsLine is the known_hosts line for one of the node's keys, as
// `ssh-keyscan` would print it (hashed like `ssh-keyscan -H` when asked).
func (n *Node) KnownHostsLine(keyType string, hashed bool) string {
	key, ok := n.HostKeys[keyType]
	if !ok {
		return ""
	}
	host := n.Address
	if n.Port != 22 {
		host = fmt.Sprintf("[%s]:%d", n.Address, n.Port)
	}
	if hashed {
		host = xknownhosts.HashHostname(host)
	}
	return host + " " + key.Type() + " " + base64.StdEncoding.EncodeToString(key.Marshal())
}

// WriteKnownHosts writes a known_hosts file and returns its path.
func (l *Lab) WriteKnownHosts(o KnownHostsOptions) string {
	l.t.Helper()
	nodes := o.Nodes
	if nodes == nil {
		nodes = l.AllNodes()
	}
	var b strings.Builder
	for _, n := range nodes {
		types := o.KeyTypes
		if types == nil {
			types = AllKeyTypes
		}
		for _, typ := range types {
			if line := n.KnownHostsLine(typ, o.Hashed); line != "" {
				b.WriteString(line + "\n")
			}
		}
	}
	p := o.Path
	if p == "" {
		p = filepath.Join(l.Dir, "known_hosts-"+randomHex(4))
	}
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		l.t.Fatalf("sshtest: writing known_hosts: %v", err)
	}
	return p
}

// setupHostCA makes the lab's host CA and signs a certificate for every host
// key of every node, valid for the node's addresses.
func (l *Lab) setupHostCA() error {
	k, err := GenerateKey(Ed25519, 0)
	if err != nil {
		return err
	}
	if l.HostCA, err = ssh.NewSignerFromKey(k); err != nil {
		return err
	}
	for _, n := range l.AllNodes() {
		for typ, pub := range n.HostKeys {
			cert, err := l.SignHostCert(pub, n.Name, n.Addresses)
			if err != nil {
				return err
			}
			n.HostCerts[typ] = cert
			p := filepath.Join(n.Dir, "ssh_host_"+typ+"_key-cert.pub")
			if err := os.WriteFile(p, ssh.MarshalAuthorizedKey(cert), 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

// SignHostCert signs a host certificate for pub with the lab's host CA,
// valid from an hour ago, forever, for principals.
func (l *Lab) SignHostCert(pub ssh.PublicKey, id string, principals []string) (*ssh.Certificate, error) {
	if l.HostCA == nil {
		return nil, fmt.Errorf("sshtest: the lab has no host CA (Options.HostCA)")
	}
	cert := &ssh.Certificate{
		Key:             pub,
		Serial:          1,
		CertType:        ssh.HostCert,
		KeyId:           id,
		ValidPrincipals: append([]string(nil), principals...),
		ValidAfter:      uint64(time.Now().Add(-time.Hour).Unix()),
		ValidBefore:     ssh.CertTimeInfinity,
	}
	if err := cert.SignCert(rand.Reader, l.HostCA); err != nil {
		return nil, err
	}
	return cert, nil
}

// CAKnownHostsLine is the known_hosts line trusting the lab's host CA for
// hosts matching pattern (for example "10.*" or "*").
func (l *Lab) CAKnownHostsLine(pattern string) string {
	pub := l.HostCA.PublicKey()
	return "@cert-authority " + pattern + " " + pub.Type() + " " + base64.StdEncoding.EncodeToString(pub.Marshal())
}

// RotateHostKeys gives the node new host keys of the same types (and new
// certificates with Options.HostCA), as a rebuilt host would have, and makes
// its sshd load them (SIGHUP re-executes sshd). It returns once the node
// serves the new keys.
func (n *Node) RotateHostKeys() error {
	l := n.lab
	for typ := range n.HostKeys {
		k, err := GenerateKey(typ, 0)
		if err != nil {
			return err
		}
		pub, err := WriteKey(filepath.Join(n.Dir, "ssh_host_"+typ+"_key"), k, "")
		if err != nil {
			return err
		}
		n.HostKeys[typ] = pub
		if l.HostCA != nil {
			cert, err := l.SignHostCert(pub, n.Name, n.Addresses)
			if err != nil {
				return err
			}
			n.HostCerts[typ] = cert
			p := filepath.Join(n.Dir, "ssh_host_"+typ+"_key-cert.pub")
			if err := os.WriteFile(p, ssh.MarshalAuthorizedKey(cert), 0o644); err != nil {
				return err
			}
		}
	}
	return n.Reload()
}

// Reload makes the node's sshd read its configuration, host keys and
// certificates again (SIGHUP: sshd re-executes itself) and returns once it
// listens again.
func (n *Node) Reload() error {
	listening := func() int {
		b, _ := os.ReadFile(n.LogFile)
		return bytes.Count(b, []byte("Server listening on"))
	}
	before := listening()
	if err := n.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for listening() < before+len(n.Addresses) {
		if time.Now().After(deadline) {
			return fmt.Errorf("sshtest: sshd of %s does not listen again 15s after SIGHUP", n.Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// ServedHostKey is the host key of type algo that the node's sshd presents
// now (a key exchange, no authentication).
func (n *Node) ServedHostKey(algo string) (ssh.PublicKey, error) {
	if n.lab.Bastion == n || len(n.lab.Hidden) > 0 && slices.Contains(n.lab.Hidden, n) {
		return nil, fmt.Errorf("sshtest: ServedHostKey works for direct nodes only")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := n.lab.Dial(ctx, "tcp", net.JoinHostPort(n.Address, strconv.Itoa(n.Port)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	var got ssh.PublicKey
	errGot := errors.New("got the key")
	_, _, _, err = ssh.NewClientConn(conn, conn.RemoteAddr().String(), &ssh.ClientConfig{
		User:              "nobody",
		HostKeyAlgorithms: []string{algo},
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			got = key
			return errGot
		},
	})
	if got != nil {
		return got, nil
	}
	return nil, err
}
