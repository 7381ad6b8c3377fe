package state

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"filippo.io/age"
	"filippo.io/age/agessh"

	"castellan/installer/localfile"
	"castellan/installer/profile"
)

// IdentityEnv names the environment variable that points at the age identity
// file used to read secrets back (default: DefaultIdentityFile()).
const IdentityEnv = "CASTELLAN_AGE_IDENTITY"

// DefaultIdentityFile is where castellan keeps the local age identity it
// creates on first use when the profile names no recipients:
// $XDG_CONFIG_HOME/castellan/age-identity.txt (~/.config/... on Linux).
func DefaultIdentityFile() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("locating the user config directory for the age identity: %w", err)
	}
	return filepath.Join(dir, "castellan", "age-identity.txt"), nil
}

// Keys are the age recipients secrets are encrypted to and the identities
// that can read them back on this machine.
type Keys struct {
	Recipients []age.Recipient
	Identities []age.Identity
	// RecipientStrings are the recipients as written, kept in recipients.txt.
	RecipientStrings []string
	// Notices say what LoadKeys decided that the user should know.
	Notices []string
}

// LoadKeys builds the keys for a profile's recipients. identityFile is the
// age identity file to decrypt with ("" for $CASTELLAN_AGE_IDENTITY or the
// default path). With no recipients in the profile, the identity file's own
// recipient is used, and when create is set the file is created (with a
// notice) if missing; without create, a missing identity is an error.
func LoadKeys(recipients []string, identityFile string, create bool) (*Keys, error) {
	k := &Keys{}
	if identityFile == "" {
		identityFile = os.Getenv(IdentityEnv)
	}
	if identityFile == "" {
		def, err := DefaultIdentityFile()
		if err != nil {
			return nil, err
		}
		identityFile = def
	}
	ids, err := readIdentities(identityFile)
	switch {
	case errors.Is(err, os.ErrNotExist) && len(recipients) == 0 && !create:
		return nil, fmt.Errorf("no age identity at %s: the state repo's secrets cannot be read; set %s to the identity that encrypted them", identityFile, IdentityEnv)
	case errors.Is(err, os.ErrNotExist) && len(recipients) == 0:
		id, cerr := createIdentity(identityFile)
		if cerr != nil {
			return nil, cerr
		}
		ids = []age.Identity{id}
		k.Notices = append(k.Notices, fmt.Sprintf(
			"created a local age identity at %s: state secrets are encrypted to it. Back it up, or list your team's age recipients in spec.state.recipients", identityFile))
	case errors.Is(err, os.ErrNotExist):
		k.Notices = append(k.Notices, fmt.Sprintf(
			"no age identity at %s: secrets are encrypted to spec.state.recipients but cannot be read back on this machine; set %s to one of their identity files", identityFile, IdentityEnv))
	case err != nil:
		return nil, err
	}
	k.Identities = ids
	for _, s := range recipients {
		r, err := profile.ParseRecipient(s)
		if err != nil {
			return nil, fmt.Errorf("recipient %q: %w", s, err)
		}
		k.Recipients = append(k.Recipients, r)
		k.RecipientStrings = append(k.RecipientStrings, s)
	}
	if len(recipients) == 0 {
		for _, id := range ids {
			if x, ok := id.(*age.X25519Identity); ok {
				k.Recipients = append(k.Recipients, x.Recipient())
				k.RecipientStrings = append(k.RecipientStrings, x.Recipient().String())
			}
		}
		if len(k.Recipients) == 0 {
			return nil, fmt.Errorf("identity file %s holds no age X25519 identity to encrypt to; list recipients in spec.state.recipients", identityFile)
		}
	}
	return k, nil
}

// maxIdentityFile bounds an age identity file (bytes).
const maxIdentityFile = 64 << 10

func readIdentities(path string) ([]age.Identity, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data, err := localfile.Read(ctx, path, maxIdentityFile)
	if err != nil {
		return nil, fmt.Errorf("reading age identity: %w", err)
	}
	if bytes.Contains(data, []byte("PRIVATE KEY-----")) {
		id, err := agessh.ParseIdentity(data)
		if err != nil {
			return nil, fmt.Errorf("parsing SSH identity %s: %w", path, err)
		}
		return []age.Identity{id}, nil
	}
	ids, err := age.ParseIdentities(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("parsing age identity %s: %w", path, err)
	}
	return ids, nil
}

func createIdentity(path string) (*age.X25519Identity, error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return nil, fmt.Errorf("generating age identity: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	content := fmt.Sprintf("# castellan state repo identity\n# public key: %s\n%s\n", id.Recipient(), id)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating age identity: %w", err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing age identity %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("writing age identity %s: %w", path, err)
	}
	return id, nil
}

var secretName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$`)

// secretPath is where a secret lives in the repo.
func secretPath(name string) (string, error) {
	if !secretName.MatchString(name) || strings.Contains(name, "..") {
		return "", fmt.Errorf("invalid secret name %q: use lowercase letters, digits, '.', '_', '-' and '/'", name)
	}
	return filepath.Join(secretsDir, filepath.FromSlash(name)+".age"), nil
}

// dataPath is where a phase's data lives in the repo.
func dataPath(name string) (string, error) {
	if !secretName.MatchString(name) || strings.Contains(name, "..") {
		return "", fmt.Errorf("invalid state data name %q: use lowercase letters, digits, '.', '_', '-' and '/'", name)
	}
	return filepath.Join(dataDir, filepath.FromSlash(name)), nil
}

func (k *Keys) encrypt(plain []byte) ([]byte, error) {
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, k.Recipients...)
	if err != nil {
		return nil, fmt.Errorf("encrypting: %w", err)
	}
	if _, err := w.Write(plain); err != nil {
		return nil, fmt.Errorf("encrypting: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("encrypting: %w", err)
	}
	return buf.Bytes(), nil
}

func (k *Keys) decrypt(name string, cipher []byte) ([]byte, error) {
	if len(k.Identities) == 0 {
		return nil, fmt.Errorf("cannot read secret %s: no age identity on this machine; set %s", name, IdentityEnv)
	}
	r, err := age.Decrypt(bytes.NewReader(cipher), k.Identities...)
	if err != nil {
		return nil, fmt.Errorf("cannot read secret %s: %w; is %s one of spec.state.recipients' identities?", name, err, IdentityEnv)
	}
	plain, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading secret %s: %w", name, err)
	}
	return plain, nil
}
