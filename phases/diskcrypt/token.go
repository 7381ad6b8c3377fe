package diskcrypt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"castellan/installer/facts"
)

// Token types in a LUKS2 header.
const (
	// TokenType is castellan's own token (facts.CastellanToken).
	TokenType = facts.CastellanToken
	// TPM2TokenType is systemd-cryptenroll's TPM2 token.
	TPM2TokenType = "systemd-tpm2"
)

// TokenVersion is the version of the token's content this castellan writes.
const TokenVersion = 1

// Token is the content of castellan's LUKS2 token (`cryptsetup token
// import`): the disk's identity and which keyslot holds the recovery
// passphrase. It holds nothing secret. Its JSON, inside the token object
// {"type": "castellan", "keyslots": [], "castellan": {...}}:
//
//	version     1
//	cluster     metadata.name of the profile
//	node        the node's name
//	device      the device path as the profile named it when formatted
//	filesystem  {"type": "ext4", "uuid": "..."}: the filesystem castellan makes inside
//	recovery    {"keyslot": N, "generation": G}: the recovery passphrase's keyslot,
//	            and its generation (secrets/diskcrypt/NODE/UUID/recovery-G.age)
//	pending     {"keyslot": N, "generation": G}: a rotation under way (the new
//	            passphrase goes, or went, into keyslot N)
//	retired     [{"keyslot": N, "salt": "..."}]: old recovery keyslots still to
//	            remove, each known by its KDF salt so that a later keyslot
//	            reusing the number is never removed
type Token struct {
	Version    int        `json:"version"`
	Cluster    string     `json:"cluster"`
	Node       string     `json:"node"`
	Device     string     `json:"device"`
	Filesystem Filesystem `json:"filesystem"`
	Recovery   Slot       `json:"recovery"`
	Pending    *Slot      `json:"pending,omitempty"`
	Retired    []Retired  `json:"retired,omitempty"`
}

// Filesystem is the filesystem castellan makes inside the encrypted disk.
type Filesystem struct {
	Type string `json:"type"`
	UUID string `json:"uuid"`
}

// Slot is a recovery passphrase's keyslot and generation.
type Slot struct {
	Keyslot    int `json:"keyslot"`
	Generation int `json:"generation"`
}

// Retired is a recovery keyslot to remove: its number and KDF salt.
type Retired struct {
	Keyslot int    `json:"keyslot"`
	Salt    string `json:"salt"`
}

// tokenObject is the LUKS2 token object around the content.
type tokenObject struct {
	Type      string   `json:"type"`
	Keyslots  []string `json:"keyslots"`
	Castellan *Token   `json:"castellan"`
}

// EncodeToken returns the token object `cryptsetup token import` reads.
func EncodeToken(t Token) ([]byte, error) {
	return json.Marshal(tokenObject{Type: TokenType, Keyslots: []string{}, Castellan: &t})
}

// DecodeToken reads a castellan token object (strictly: unknown fields are
// errors, since a token castellan cannot fully read must not be rewritten).
func DecodeToken(raw []byte) (Token, error) {
	var o tokenObject
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil {
		return Token{}, fmt.Errorf("castellan token: %w", err)
	}
	if o.Type != TokenType {
		return Token{}, fmt.Errorf("castellan token: type %q", o.Type)
	}
	if o.Castellan == nil {
		return Token{}, errors.New("castellan token: no content")
	}
	t := *o.Castellan
	if t.Version != TokenVersion {
		return Token{}, fmt.Errorf("castellan token: version %d; this castellan reads version %d", t.Version, TokenVersion)
	}
	if t.Recovery.Generation < 1 || t.Recovery.Keyslot < 0 {
		return Token{}, fmt.Errorf("castellan token: recovery keyslot %d generation %d", t.Recovery.Keyslot, t.Recovery.Generation)
	}
	return t, nil
}
