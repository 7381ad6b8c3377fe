package ssh

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"castellan/installer/localfile"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// MaxKeyFileSize bounds the size of a private key file castellan reads (an
// RSA 16384 key is 13 KiB; the profile's validation uses the same bound).
const MaxKeyFileSize = 64 << 10

// KeyFileProblem says what is wrong with a key file.
type KeyFileProblem int

const (
	// KeyFileMissing: there is no such file.
	KeyFileMissing KeyFileProblem = iota + 1
	// KeyFileNotAFile: a directory, a FIFO, a device, or too large.
	KeyFileNotAFile
	// KeyFileUnreadable: it cannot be read (permissions, I/O).
	KeyFileUnreadable
	// KeyFilePublicKey: it is a public key, not the private key.
	KeyFilePublicKey
	// KeyFileNotAKey: it holds no private key castellan can parse.
	KeyFileNotAKey
	// KeyFileEncrypted: it is protected by a passphrase and no ssh-agent
	// is used (castellan never prompts).
	KeyFileEncrypted
	// KeyFileNotInAgent: it is protected by a passphrase and the ssh-agent
	// does not hold its key (or castellan cannot tell which key it is).
	KeyFileNotInAgent
	// KeyFileAgentUnreachable: it is protected by a passphrase and the
	// ssh-agent cannot be asked.
	KeyFileAgentUnreachable
)

// KeyFileError reports a private key file that cannot be used. Its message
// never holds key material.
type KeyFileError struct {
	Path        string
	Problem     KeyFileProblem
	AgentSocket string
	Err         error // the underlying error, if any
}

func (e *KeyFileError) Error() string {
	detail := ""
	if e.Err != nil {
		detail = ": " + trimSSH(e.Err)
	}
	switch e.Problem {
	case KeyFileMissing:
		return fmt.Sprintf("ssh: private key file %s does not exist", e.Path)
	case KeyFileNotAFile:
		// localfile's reasons read on from the path: "is a directory, not
		// a regular file", "is 2 MiB, more than ...".
		return fmt.Sprintf("ssh: private key file %s %s", e.Path, trimSSH(e.Err))
	case KeyFileUnreadable:
		return fmt.Sprintf("ssh: private key file %s cannot be read%s", e.Path, detail)
	case KeyFilePublicKey:
		return fmt.Sprintf("ssh: %s is a public key: give the private key file (usually the same path without .pub)", e.Path)
	case KeyFileNotAKey:
		return fmt.Sprintf("ssh: %s is not a private key castellan can read (OpenSSH, PKCS#1 or PKCS#8 PEM)%s", e.Path, detail)
	case KeyFileEncrypted:
		return fmt.Sprintf("ssh: private key %s is encrypted with a passphrase and castellan does not prompt: "+
			"load it into ssh-agent (`ssh-add %s`) and use the agent (spec.ssh.agent: true), or use an unencrypted key file", e.Path, e.Path)
	case KeyFileAgentUnreachable:
		return fmt.Sprintf("ssh: private key %s is encrypted with a passphrase, and ssh-agent at %s cannot be asked for its key%s: is ssh-agent running?",
			e.Path, e.AgentSocket, detail)
	}
	return fmt.Sprintf("ssh: private key %s is encrypted with a passphrase, and ssh-agent at %s does not hold its key%s: "+
		"load it with `ssh-add %s`", e.Path, e.AgentSocket, detail, e.Path)
}

func (e *KeyFileError) Unwrap() error { return e.Err }

// keyFile is a parsed key file: a signer, or (encrypted) the public key the
// agent must hold.
type keyFile struct {
	path   string
	signer ssh.Signer
	pub    ssh.PublicKey
}

// readKeyFile reads a private key file. An encrypted one gives its public
// key (kept unencrypted in the OpenSSH format, or read from PATH.pub) and
// no signer; nil when neither tells it.
func readKeyFile(path string) (keyFile, error) {
	data, err := readUserFile(path, MaxKeyFileSize)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return keyFile{}, &KeyFileError{Path: path, Problem: KeyFileMissing}
		case errors.Is(err, localfile.ErrNotRegular), errors.Is(err, localfile.ErrTooLarge):
			return keyFile{}, &KeyFileError{Path: path, Problem: KeyFileNotAFile, Err: err}
		}
		return keyFile{}, &KeyFileError{Path: path, Problem: KeyFileUnreadable, Err: err}
	}
	s, err := ssh.ParsePrivateKey(data)
	if err == nil {
		return keyFile{path: path, signer: s, pub: s.PublicKey()}, nil
	}
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		kf := keyFile{path: path, pub: missing.PublicKey}
		if kf.pub == nil {
			if b, err := readUserFile(path+".pub", MaxKeyFileSize); err == nil {
				kf.pub, _, _, _, _ = ssh.ParseAuthorizedKey(b)
			}
		}
		return kf, nil
	}
	if _, _, _, _, perr := ssh.ParseAuthorizedKey(data); perr == nil {
		return keyFile{}, &KeyFileError{Path: path, Problem: KeyFilePublicKey}
	}
	// Never include the file's content in the error.
	return keyFile{}, &KeyFileError{Path: path, Problem: KeyFileNotAKey}
}

// CheckKeyFile checks, without contacting any host, that the private key
// file at path can be used: a regular file (a FIFO or device is refused
// without blocking), at most MaxKeyFileSize bytes, holding a
// private key; an encrypted one only with an ssh-agent at agentSocket ("":
// no agent) that holds its key. It returns nil or a *KeyFileError whose
// Problem tells the cases apart.
func CheckKeyFile(path, agentSocket string) error {
	kf, err := readKeyFile(path)
	if err != nil {
		return err
	}
	if kf.signer != nil {
		return nil
	}
	_, err = agentSignerFor(kf, agentSocket)
	return err
}

// agentSignerFor finds the ssh-agent's signer for an encrypted key file.
func agentSignerFor(kf keyFile, agentSocket string) (ssh.Signer, error) {
	if agentSocket == "" {
		return nil, &KeyFileError{Path: kf.path, Problem: KeyFileEncrypted}
	}
	conn, err := net.DialTimeout("unix", agentSocket, 5*time.Second)
	if err != nil {
		return nil, &KeyFileError{Path: kf.path, Problem: KeyFileAgentUnreachable, AgentSocket: agentSocket, Err: err}
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	signers, err := agent.NewClient(conn).Signers()
	if err != nil {
		return nil, &KeyFileError{Path: kf.path, Problem: KeyFileAgentUnreachable, AgentSocket: agentSocket, Err: err}
	}
	return matchSigner(kf, signers, agentSocket)
}

func matchSigner(kf keyFile, signers []ssh.Signer, agentSocket string) (ssh.Signer, error) {
	if kf.pub == nil {
		return nil, &KeyFileError{Path: kf.path, Problem: KeyFileNotInAgent, AgentSocket: agentSocket,
			Err: fmt.Errorf("castellan cannot tell which key it is: put its public key next to it as %s.pub", kf.path)}
	}
	for _, s := range signers {
		if keysEqual(s.PublicKey(), kf.pub) {
			return s, nil
		}
	}
	return nil, &KeyFileError{Path: kf.path, Problem: KeyFileNotInAgent, AgentSocket: agentSocket}
}

// credentials are the keys one user authenticates with.
type credentials struct {
	user        string
	keyFiles    []keyFile
	agentSocket string // "" when the agent is not used
}

func loadCredentials(user string, paths []string, useAgent bool, agentSocket string) (*credentials, error) {
	c := &credentials{user: user}
	if useAgent {
		c.agentSocket = agentSocket
	}
	for _, p := range paths {
		kf, err := readKeyFile(p)
		if err != nil {
			return nil, err
		}
		if kf.signer == nil {
			// Encrypted: its key must come from the agent. Check now,
			// before any host is contacted.
			if _, err := agentSignerFor(kf, c.agentSocket); err != nil {
				return nil, err
			}
		}
		c.keyFiles = append(c.keyFiles, kf)
	}
	return c, nil
}

// describe says what is offered, for messages (never key material).
func (c *credentials) describe() string {
	var parts []string
	if len(c.keyFiles) > 0 {
		names := make([]string, len(c.keyFiles))
		for i, kf := range c.keyFiles {
			names[i] = kf.path
			if kf.signer == nil {
				names[i] += " (through ssh-agent)"
			}
		}
		parts = append(parts, "key file "+strings.Join(names, ", ")+" first")
	}
	if c.agentSocket != "" {
		parts = append(parts, "the keys of ssh-agent")
	}
	return strings.Join(parts, ", then ")
}

// authTrace records how far authentication got in one attempt, so that a
// failure is classified by state, not by message text.
type authTrace struct {
	began     atomic.Bool  // the server asked for public keys
	available atomic.Int32 // keys there were to offer
	offered   atomic.Int32 // keys offered to the server
}

// authMethods returns the auth methods for one connection attempt and a
// function releasing the agent connection, to call once the handshake is
// over. Key files come first (an encrypted one through the agent's signer
// for its key), then the agent's other keys: sshd counts each key offered
// against MaxAuthTries, so the one the user named must not wait behind
// others.
func (c *credentials) authMethods(tr *authTrace) ([]ssh.AuthMethod, func(), error) {
	var ag agent.ExtendedAgent
	release := func() {}
	if c.agentSocket != "" {
		conn, err := net.DialTimeout("unix", c.agentSocket, 5*time.Second)
		if err != nil {
			return nil, nil, errorf("ssh: connecting to ssh-agent at %s: %w", c.agentSocket, err)
		}
		ag = agent.NewClient(conn)
		release = func() { conn.Close() }
	}
	cb := func() ([]ssh.Signer, error) {
		tr.began.Store(true)
		var agentSigners []ssh.Signer
		if ag != nil {
			var err error
			if agentSigners, err = ag.Signers(); err != nil {
				return nil, errorf("ssh: listing ssh-agent keys: %w", err)
			}
		}
		var out []ssh.Signer
		used := make([]bool, len(agentSigners))
		for _, kf := range c.keyFiles {
			s := kf.signer
			if s == nil {
				var err error
				if s, err = matchSigner(kf, agentSigners, c.agentSocket); err != nil {
					return nil, err
				}
			}
			out = append(out, s)
			for i, a := range agentSigners {
				if keysEqual(a.PublicKey(), kf.pub) {
					used[i] = true
				}
			}
		}
		for i, a := range agentSigners {
			if !used[i] {
				out = append(out, a)
			}
		}
		tr.available.Store(int32(len(out)))
		for i, s := range out {
			out[i] = countSigner(s, tr)
		}
		return out, nil
	}
	return []ssh.AuthMethod{ssh.PublicKeysCallback(cb)}, release, nil
}

// countSigner wraps s so that offering it to the server is counted:
// x/crypto asks each signer for its public key once per key it offers.
// The wrapper keeps the algorithms s supports (an RSA key must keep
// offering rsa-sha2-*).
func countSigner(s ssh.Signer, tr *authTrace) ssh.Signer {
	c := &countedSigner{Signer: s, tr: tr}
	switch as := s.(type) {
	case ssh.MultiAlgorithmSigner:
		return &countedMultiSigner{countedSigner: c, as: as}
	case ssh.AlgorithmSigner:
		return &countedAlgoSigner{countedSigner: c, as: as}
	}
	return c
}

type countedSigner struct {
	ssh.Signer
	tr   *authTrace
	seen atomic.Bool
}

func (s *countedSigner) PublicKey() ssh.PublicKey {
	if s.seen.CompareAndSwap(false, true) {
		s.tr.offered.Add(1)
	}
	return s.Signer.PublicKey()
}

type countedAlgoSigner struct {
	*countedSigner
	as ssh.AlgorithmSigner
}

func (s *countedAlgoSigner) SignWithAlgorithm(rand io.Reader, data []byte, algorithm string) (*ssh.Signature, error) {
	return s.as.SignWithAlgorithm(rand, data, algorithm)
}

type countedMultiSigner struct {
	*countedSigner
	as ssh.MultiAlgorithmSigner
}

func (s *countedMultiSigner) SignWithAlgorithm(rand io.Reader, data []byte, algorithm string) (*ssh.Signature, error) {
	return s.as.SignWithAlgorithm(rand, data, algorithm)
}

func (s *countedMultiSigner) Algorithms() []string { return s.as.Algorithms() }
