package diskcrypt

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"strconv"
	"strings"
)

// The LUKS2 on-disk format (cryptsetup's "LUKS2 On-Disk Format
// Specification", docs/on-disk-format-luks2.pdf, and lib/luks2/luks2.h): a
// 4096-byte big-endian binary header, then a JSON area, together hdr_size
// bytes; a second copy of the same header follows at offset hdr_size. The
// keyslots area follows both copies; the data segment starts after it.
//
//	off  len  field
//	  0    6  magic: "LUKS\xba\xbe" (primary), "SKUL\xba\xbe" (secondary)
//	  6    2  version (2)
//	  8    8  hdr_size: binary header + JSON area, 16 KiB to 4 MiB
//	 16    8  seqid: incremented on every update; the copy with the higher one wins
//	 24   48  label
//	 72   32  checksum_alg
//	104   64  salt
//	168   40  uuid
//	208   48  subsystem
//	256    8  hdr_offset: this copy's offset on the device
//	448   64  csum: checksum_alg over hdr_size bytes with csum zeroed
//	4096 ...  JSON, NUL-terminated, NUL-padded to hdr_size
//
// This reader is the diskcrypt phase's own: preflight only reports the token
// types (castellan/installer/facts), while this phase needs the tokens'
// content, the keyslots and the data offset. Both read the same format; a
// test checks that they agree on cryptsetup's own headers.
const (
	luks2BinaryHeader = 4096
	luks2MinHeader    = 0x4000
	luks2MaxHeader    = 0x400000
)

// luks2SecondaryOffsets are where a secondary header may sit: the possible
// sizes of the primary (cryptsetup's LUKS2_HDR2_OFFSETS).
var luks2SecondaryOffsets = []int64{0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000}

// Copy states of a header copy.
const (
	CopyOK      = "ok"
	CopyMissing = "missing" // no magic where the copy belongs
	CopyDamaged = "damaged" // magic present, but the checksum or JSON is wrong
)

// Header is what a LUKS2 header says, as far as this phase needs it.
type Header struct {
	// Primary and Secondary say whether each copy is CopyOK, CopyMissing or
	// CopyDamaged; the fields below come from a copy that is CopyOK (the one
	// with the higher seqid when both are).
	Primary   string `json:"primary"`
	Secondary string `json:"secondary"`
	// Problem says what is wrong with a damaged copy.
	Problem string `json:"problem,omitempty"`
	UUID    string `json:"uuid,omitempty"`
	Label   string `json:"label,omitempty"`
	SeqID   uint64 `json:"seqid,omitempty"`
	// HeaderSize is hdr_size (bytes); DataOffset is where the data segment
	// starts (bytes): the header area, both copies and the keyslots, is
	// [0, DataOffset).
	HeaderSize int64 `json:"headerSize,omitempty"`
	DataOffset int64 `json:"dataOffset,omitempty"`
	// SectorSize is the data segment's encryption sector size (bytes).
	SectorSize int        `json:"sectorSize,omitempty"`
	Keyslots   []Keyslot  `json:"keyslots,omitempty"`
	Tokens     []TokenRef `json:"tokens,omitempty"`
}

// Complete reports whether both copies are intact.
func (h *Header) Complete() bool {
	return h != nil && h.Primary == CopyOK && h.Secondary == CopyOK
}

// Readable reports whether at least one copy is intact.
func (h *Header) Readable() bool {
	return h != nil && (h.Primary == CopyOK || h.Secondary == CopyOK)
}

// Keyslot is one LUKS2 keyslot.
type Keyslot struct {
	ID int `json:"id"`
	// Type is "luks2"; KDF is "argon2id", "argon2i" or "pbkdf2".
	Type string `json:"type"`
	KDF  string `json:"kdf"`
	// Salt is the KDF salt (base64, as stored): unique per keyslot, it tells
	// a keyslot from a later one reusing its number.
	Salt string `json:"salt"`
}

// TokenRef is one LUKS2 token.
type TokenRef struct {
	ID   int    `json:"id"`
	Type string `json:"type"`
	// Keyslots are the keyslots the token is assigned to.
	Keyslots []int `json:"keyslots,omitempty"`
	// Castellan is the content of a castellan token.
	Castellan *Token `json:"castellan,omitempty"`
	// TPM2 is the policy of a systemd-tpm2 token.
	TPM2 *TPM2Token `json:"tpm2,omitempty"`
	// Problem says why the token's content could not be read.
	Problem string `json:"problem,omitempty"`
}

// TPM2Token is what systemd-cryptenroll records in a "systemd-tpm2" token
// (systemd's src/shared/tpm2-util.c, tpm2_make_luks2_json).
type TPM2Token struct {
	PCRs    []int  `json:"pcrs"`
	PCRBank string `json:"pcrBank,omitempty"`
	PIN     bool   `json:"pin,omitempty"`
}

// Keyslot returns keyslot id.
func (h *Header) Keyslot(id int) (Keyslot, bool) {
	if h == nil {
		return Keyslot{}, false
	}
	for _, k := range h.Keyslots {
		if k.ID == id {
			return k, true
		}
	}
	return Keyslot{}, false
}

// CastellanTokens returns the castellan tokens (normally one).
func (h *Header) CastellanTokens() []TokenRef {
	var out []TokenRef
	if h == nil {
		return nil
	}
	for _, t := range h.Tokens {
		if t.Type == TokenType {
			out = append(out, t)
		}
	}
	return out
}

// TPM2Tokens returns the systemd-tpm2 tokens.
func (h *Header) TPM2Tokens() []TokenRef {
	var out []TokenRef
	if h == nil {
		return nil
	}
	for _, t := range h.Tokens {
		if t.Type == TPM2TokenType {
			out = append(out, t)
		}
	}
	return out
}

// ReadHeader reads the LUKS2 header of a device (or image) of size bytes. It
// returns nil, nil when neither copy's magic is there (not LUKS2); a header
// with Primary or Secondary CopyDamaged when a copy is there but unreadable;
// an error only for I/O errors.
func ReadHeader(r io.ReaderAt, size int64) (*Header, error) {
	h := &Header{Primary: CopyMissing, Secondary: CopyMissing}
	var primary, secondary *parsed
	magic := make([]byte, 6)
	if err := readFull(r, magic, 0, size); err != nil {
		return nil, err
	}
	var problems []string
	if string(magic) == "LUKS\xba\xbe" {
		p, err := readCopy(r, 0, size)
		if err != nil {
			var ioErr *ioError
			if errors.As(err, &ioErr) {
				return nil, ioErr.err
			}
			h.Primary = CopyDamaged
			problems = append(problems, "primary: "+err.Error())
		} else {
			h.Primary, primary = CopyOK, p
		}
	}
	// The secondary sits at the primary's hdr_size; when the primary is
	// unreadable, look at every offset it may have.
	offs := luks2SecondaryOffsets
	if primary != nil {
		offs = []int64{primary.hdrSize}
	}
	for _, off := range offs {
		if off+6 > size {
			break
		}
		if err := readFull(r, magic, off, size); err != nil {
			return nil, err
		}
		if string(magic) != "SKUL\xba\xbe" {
			continue
		}
		s, err := readCopy(r, off, size)
		if err != nil {
			var ioErr *ioError
			if errors.As(err, &ioErr) {
				return nil, ioErr.err
			}
			h.Secondary = CopyDamaged
			problems = append(problems, "secondary: "+err.Error())
		} else {
			h.Secondary, secondary = CopyOK, s
		}
		break
	}
	if h.Primary == CopyMissing && h.Secondary == CopyMissing {
		return nil, nil
	}
	h.Problem = strings.Join(problems, "; ")
	use := primary
	if use == nil || (secondary != nil && secondary.seqid > primary.seqid) {
		use = secondary
	}
	if use != nil {
		h.fill(use)
	}
	return h, nil
}

type ioError struct{ err error }

func (e *ioError) Error() string { return e.err.Error() }

func readFull(r io.ReaderAt, b []byte, off, size int64) error {
	if off+int64(len(b)) > size {
		clear(b)
		return nil
	}
	n, err := r.ReadAt(b, off)
	if err != nil && !(errors.Is(err, io.EOF) && n == len(b)) {
		return fmt.Errorf("reading %d bytes at offset %d: %w", len(b), off, err)
	}
	return nil
}

// parsed is one readable header copy.
type parsed struct {
	hdrSize int64
	seqid   uint64
	label   string
	uuid    string
	meta    luks2JSON
}

// readCopy reads the copy at off of a device of size bytes.
func readCopy(r io.ReaderAt, off, size int64) (*parsed, error) {
	bin := make([]byte, luks2BinaryHeader)
	if err := readFull(r, bin, off, size); err != nil {
		return nil, &ioError{err}
	}
	n := int64(binary.BigEndian.Uint64(bin[8:]))
	if n < luks2MinHeader || n > luks2MaxHeader || off+n > size {
		return nil, fmt.Errorf("header size %d at offset %d does not fit 16 KiB..4 MiB within the device", n, off)
	}
	full := make([]byte, n)
	copy(full, bin)
	if err := readFull(r, full[luks2BinaryHeader:], off+luks2BinaryHeader, size); err != nil {
		return nil, &ioError{err}
	}
	return parseCopy(full, off)
}

// parseCopy parses one header copy b (hdr_size bytes) found at off.
func parseCopy(b []byte, off int64) (*parsed, error) {
	if len(b) < luks2BinaryHeader {
		return nil, fmt.Errorf("%d bytes, the binary header alone is %d", len(b), luks2BinaryHeader)
	}
	magic := "LUKS\xba\xbe"
	if off != 0 {
		magic = "SKUL\xba\xbe"
	}
	if string(b[:6]) != magic {
		return nil, fmt.Errorf("no magic %q at offset %d", magic, off)
	}
	if v := binary.BigEndian.Uint16(b[6:]); v != 2 {
		return nil, fmt.Errorf("version %d, not 2", v)
	}
	size := binary.BigEndian.Uint64(b[8:])
	if size < luks2MinHeader || size > luks2MaxHeader || uint64(len(b)) < size {
		return nil, fmt.Errorf("header size %d: outside 16 KiB..4 MiB or beyond the %d bytes read", size, len(b))
	}
	if at := binary.BigEndian.Uint64(b[256:]); at != uint64(off) || (off != 0 && uint64(off) != size) {
		return nil, fmt.Errorf("records offset %d, read at %d", at, off)
	}
	b = b[:size]
	h := checksum(cString(b[72:104]))
	if h == nil {
		return nil, fmt.Errorf("checksum algorithm %q is not one castellan checks", cString(b[72:104]))
	}
	h.Write(b[:448])
	h.Write(make([]byte, 64))
	h.Write(b[512:])
	sum := h.Sum(nil)
	if string(sum) != string(b[448:448+len(sum)]) {
		return nil, errors.New("checksum mismatch (damaged, or changed behind cryptsetup)")
	}
	js := b[luks2BinaryHeader:]
	end := 0
	for end < len(js) && js[end] != 0 {
		end++
	}
	p := &parsed{hdrSize: int64(size), seqid: binary.BigEndian.Uint64(b[16:]), label: cString(b[24:72]), uuid: cString(b[168:208])}
	if err := json.Unmarshal(js[:end], &p.meta); err != nil {
		return nil, fmt.Errorf("JSON area: %w", err)
	}
	return p, nil
}

// luks2JSON is the part of the JSON area this phase reads.
type luks2JSON struct {
	Keyslots map[string]struct {
		Type string `json:"type"`
		KDF  struct {
			Type string `json:"type"`
			Salt string `json:"salt"`
		} `json:"kdf"`
	} `json:"keyslots"`
	Tokens   map[string]json.RawMessage `json:"tokens"`
	Segments map[string]struct {
		Type       string `json:"type"`
		Offset     string `json:"offset"`
		SectorSize int    `json:"sector_size"`
	} `json:"segments"`
}

// fill copies what p says into h.
func (h *Header) fill(p *parsed) {
	h.UUID, h.Label, h.SeqID, h.HeaderSize = p.uuid, p.label, p.seqid, p.hdrSize
	if s, ok := p.meta.Segments["0"]; ok {
		h.DataOffset, _ = strconv.ParseInt(s.Offset, 10, 64)
		h.SectorSize = s.SectorSize
	}
	for _, id := range sortedIDs(p.meta.Keyslots) {
		k := p.meta.Keyslots[strconv.Itoa(id)]
		h.Keyslots = append(h.Keyslots, Keyslot{ID: id, Type: k.Type, KDF: k.KDF.Type, Salt: k.KDF.Salt})
	}
	for _, id := range sortedIDs(p.meta.Tokens) {
		h.Tokens = append(h.Tokens, parseToken(id, p.meta.Tokens[strconv.Itoa(id)]))
	}
}

// sortedIDs returns the numeric keys of m, sorted; others are left out
// (cryptsetup refuses them).
func sortedIDs[V any](m map[string]V) []int {
	var ids []int
	for k := range m {
		if id, err := strconv.Atoi(k); err == nil && id >= 0 && strconv.Itoa(id) == k {
			ids = append(ids, id)
		}
	}
	sort.Ints(ids)
	return ids
}

// parseToken reads one token's JSON.
func parseToken(id int, raw json.RawMessage) TokenRef {
	t := TokenRef{ID: id}
	var common struct {
		Type     string   `json:"type"`
		Keyslots []string `json:"keyslots"`
	}
	if err := json.Unmarshal(raw, &common); err != nil {
		t.Problem = err.Error()
		return t
	}
	t.Type = common.Type
	for _, k := range common.Keyslots {
		if n, err := strconv.Atoi(k); err == nil {
			t.Keyslots = append(t.Keyslots, n)
		}
	}
	switch t.Type {
	case TokenType:
		tok, err := DecodeToken(raw)
		if err != nil {
			t.Problem = err.Error()
		} else {
			t.Castellan = &tok
		}
	case TPM2TokenType:
		var s struct {
			PCRs    []int  `json:"tpm2-pcrs"`
			PCRBank string `json:"tpm2-pcr-bank"`
			PIN     bool   `json:"tpm2-pin"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Problem = err.Error()
		} else {
			pcrs := append([]int{}, s.PCRs...)
			sort.Ints(pcrs)
			t.TPM2 = &TPM2Token{PCRs: pcrs, PCRBank: s.PCRBank, PIN: s.PIN}
		}
	}
	return t
}

func checksum(alg string) hash.Hash {
	switch alg {
	case "sha1":
		return sha1.New()
	case "sha256":
		return sha256.New()
	case "sha512":
		return sha512.New()
	}
	return nil
}

// cString is a NUL-terminated field, printable ASCII only.
func cString(b []byte) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		if c >= 0x20 && c < 0x7f {
			out = append(out, c)
		}
	}
	return string(out)
}
