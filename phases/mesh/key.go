package mesh

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// readKey reads the node's private key file. It returns nil without a file.
func (n *Node) readKey() (*wgtypes.Key, fs.FileInfo, error) {
	data, err := os.ReadFile(n.path(KeyFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", KeyFile, err)
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(data)))
	if err != nil {
		// Never echo the file's content: it is (meant to be) a secret.
		return nil, nil, fmt.Errorf("%s does not hold a WireGuard key (base64 of 32 bytes)", KeyFile)
	}
	st, err := os.Stat(n.path(KeyFile))
	if err != nil {
		return nil, nil, err
	}
	return &k, st, nil
}

func keyState(k *wgtypes.Key, st fs.FileInfo) KeyState {
	if k == nil {
		return KeyState{}
	}
	ks := KeyState{Exists: true, PublicKey: k.PublicKey().String(), Mode: uint32(st.Mode().Perm()), Created: st.ModTime().UTC()}
	if g, err := user.LookupGroupId(strconv.Itoa(statGID(st))); err == nil {
		ks.Group = g.Name
	}
	return ks
}

// wantKeyMode is the key file's mode and group: root:systemd-network 0640
// when that group exists, else root 0600.
func wantKeyMode() (fs.FileMode, int) {
	if gid, _ := networkGroup(); gid >= 0 {
		return 0o640, gid
	}
	return 0o600, 0
}

// EnsureKey makes sure the node has a WireGuard private key, generating it
// on the node (crypto/rand, RFC 7748 clamping, via wgtypes) when it has none
// or when its public key is req.Replace (a rotation). The key is written
// atomically to KeyFile and never leaves the node: only the public key is
// returned. A key file with the wrong mode or group is fixed.
func (n *Node) EnsureKey(_ context.Context, req KeyRequest) (KeyResult, error) {
	k, st, err := n.readKey()
	if err != nil {
		return KeyResult{}, err
	}
	mode, gid := wantKeyMode()
	if err := os.MkdirAll(n.path("/etc/castellan/mesh"), 0o755); err != nil {
		return KeyResult{}, err
	}
	created := false
	if k == nil || (req.Replace != "" && k.PublicKey().String() == req.Replace) {
		nk, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			return KeyResult{}, fmt.Errorf("generating a WireGuard key: %w", err)
		}
		k, created = &nk, true
	} else if st.Mode().Perm() == mode && statGID(st) == gid {
		return KeyResult{PublicKey: k.PublicKey().String()}, nil
	}
	if _, err := n.writeFile(KeyFile, []byte(k.String()+"\n"), mode, gid); err != nil {
		return KeyResult{}, fmt.Errorf("writing %s: %w", KeyFile, err)
	}
	return KeyResult{PublicKey: k.PublicKey().String(), Created: created}, nil
}
