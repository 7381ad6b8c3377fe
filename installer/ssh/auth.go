package ssh

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// credentials are the keys one user authenticates with.
type credentials struct {
	user        string
	signers     []ssh.Signer // from key files, parsed once
	keyFiles    []string
	agentSocket string // "" when the agent is not used
}

func loadCredentials(user string, keyFiles []string, useAgent bool, agentSocket string) (*credentials, error) {
	c := &credentials{user: user, keyFiles: keyFiles}
	if useAgent {
		c.agentSocket = agentSocket
	}
	for _, f := range keyFiles {
		s, err := loadKeyFile(f)
		if err != nil {
			return nil, err
		}
		c.signers = append(c.signers, s)
	}
	return c, nil
}

func loadKeyFile(path string) (ssh.Signer, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ssh: reading private key: %w", err)
	}
	s, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		var missing *ssh.PassphraseMissingError
		if errors.As(err, &missing) {
			return nil, fmt.Errorf("ssh: private key %s is encrypted with a passphrase; castellan does not prompt: "+
				"load it into ssh-agent (`ssh-add %s`) and use the agent, or use an unencrypted key file", path, path)
		}
		// Never include the file's content in the error.
		return nil, fmt.Errorf("ssh: private key %s cannot be parsed: %v", path, err)
	}
	return s, nil
}

// describe says what is offered, for messages (never key material).
func (c *credentials) describe() string {
	var parts []string
	if len(c.keyFiles) > 0 {
		parts = append(parts, "key files "+strings.Join(c.keyFiles, ", "))
	}
	if c.agentSocket != "" {
		parts = append(parts, "ssh-agent keys")
	}
	return strings.Join(parts, " and ")
}

// authMethods returns the auth methods for one connection attempt and a
// function releasing the agent connection, to call once the handshake is over.
func (c *credentials) authMethods() ([]ssh.AuthMethod, func(), error) {
	if c.agentSocket == "" {
		return []ssh.AuthMethod{ssh.PublicKeys(c.signers...)}, func() {}, nil
	}
	conn, err := net.Dial("unix", c.agentSocket)
	if err != nil {
		return nil, nil, fmt.Errorf("ssh: connecting to ssh-agent at %s: %w", c.agentSocket, err)
	}
	ag := agent.NewClient(conn)
	cb := func() ([]ssh.Signer, error) {
		agentSigners, err := ag.Signers()
		if err != nil {
			return nil, fmt.Errorf("listing ssh-agent keys: %w", err)
		}
		return append(append([]ssh.Signer(nil), c.signers...), agentSigners...), nil
	}
	return []ssh.AuthMethod{ssh.PublicKeysCallback(cb)}, func() { conn.Close() }, nil
}
