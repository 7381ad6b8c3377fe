package preflight

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
	"slices"
	"sort"
	"strconv"

	"castellan/installer/facts"
)

// The LUKS2 header (cryptsetup's "LUKS2 On-Disk Format Specification",
// docs/on-disk-format-luks2.pdf, and lib/luks2/luks2.h): a 4096-byte binary
// header, big-endian, then a JSON area, together hdr_size bytes; the same
// header is stored twice, the secondary copy at offset hdr_size.
//
//	off  len  field
//	  0    6  magic: "LUKS\xba\xbe" (primary), "SKUL\xba\xbe" (secondary)
//	  6    2  version (2)
//	  8    8  hdr_size: binary header + JSON area, 16 KiB to 4 MiB
//	 16    8  seqid
//	 24   48  label
//	 72   32  checksum_alg ("sha256")
//	104   64  salt
//	168   40  uuid
//	208   48  subsystem
//	256    8  hdr_offset: this header's offset on the device
//	264  184  padding
//	448   64  csum: checksum_alg over the whole hdr_size bytes with csum zeroed
//	512 3584  padding
//	4096 ...  JSON, NUL-terminated, NUL-padded to hdr_size
const (
	luks2BinaryHeader = 4096
	luks2MinHeader    = 0x4000
	luks2MaxHeader    = 0x400000
)

// readLUKS2 reads and parses the LUKS2 header at off of r, a device of size
// bytes. Whatever goes wrong is said in the result's Error.
func readLUKS2(r io.ReaderAt, off, size int64) *facts.LUKS {
	bin := make([]byte, luks2BinaryHeader)
	if _, err := r.ReadAt(bin, off); err != nil {
		return &facts.LUKS{Version: 2, HeaderOffset: off, Error: fmt.Sprintf("reading the header: %v", err)}
	}
	n := int64(binary.BigEndian.Uint64(bin[8:]))
	if n < luks2MinHeader || n > luks2MaxHeader || off+n > size {
		l, err := parseLUKS2(bin, off)
		if err != nil {
			l.Error = err.Error()
		}
		return l
	}
	full := make([]byte, n)
	copy(full, bin)
	if _, err := r.ReadAt(full[luks2BinaryHeader:], off+luks2BinaryHeader); err != nil {
		return &facts.LUKS{Version: 2, HeaderOffset: off, Error: fmt.Sprintf("reading the JSON area: %v", err)}
	}
	l, err := parseLUKS2(full, off)
	if err != nil {
		l.Error = err.Error()
	}
	return l
}

// parseLUKS2 parses a LUKS2 header area b (the binary header and JSON area,
// hdr_size bytes) read at offset off of its device. It returns what it could
// read even with an error: a header whose checksum does not match is still
// reported, with ChecksumOK false.
func parseLUKS2(b []byte, off int64) (*facts.LUKS, error) {
	l := &facts.LUKS{HeaderOffset: off}
	if len(b) < luks2BinaryHeader {
		return l, fmt.Errorf("LUKS2 header: %d bytes, the binary header alone is %d", len(b), luks2BinaryHeader)
	}
	magic := "LUKS\xba\xbe"
	if off != 0 {
		magic = "SKUL\xba\xbe"
	}
	if string(b[:6]) != magic {
		return l, fmt.Errorf("LUKS2 header: no magic %q at offset %d", magic, off)
	}
	l.Version = int(binary.BigEndian.Uint16(b[6:]))
	l.Label = cString(b[24:72])
	l.UUID = cString(b[168:208])
	l.Subsystem = cString(b[208:256])
	if l.Version != 2 {
		return l, fmt.Errorf("LUKS2 header: version %d", l.Version)
	}
	size := binary.BigEndian.Uint64(b[8:])
	if size < luks2MinHeader || size > luks2MaxHeader {
		return l, fmt.Errorf("LUKS2 header: size %d is outside 16 KiB..4 MiB", size)
	}
	l.HeaderSize = int64(size)
	if at := binary.BigEndian.Uint64(b[256:]); at != uint64(off) || (off != 0 && uint64(off) != size) {
		return l, fmt.Errorf("LUKS2 header: records offset %d, read at %d", at, off)
	}
	if uint64(len(b)) < size {
		return l, fmt.Errorf("LUKS2 header: %d bytes read of its %d", len(b), size)
	}
	b = b[:size]
	alg := cString(b[72:104])
	h := luks2Hash(alg)
	if h == nil {
		return l, fmt.Errorf("LUKS2 header: checksum algorithm %q is not one castellan checks", alg)
	}
	h.Write(b[:448])
	h.Write(make([]byte, 64))
	h.Write(b[512:])
	sum := h.Sum(nil)
	l.ChecksumOK = string(sum) == string(b[448:448+len(sum)])
	if !l.ChecksumOK {
		return l, errors.New("LUKS2 header: checksum mismatch (damaged, or changed behind cryptsetup)")
	}
	js := b[luks2BinaryHeader:]
	end := 0
	for end < len(js) && js[end] != 0 {
		end++
	}
	var meta struct {
		Keyslots map[string]json.RawMessage `json:"keyslots"`
		Tokens   map[string]struct {
			Type string `json:"type"`
		} `json:"tokens"`
	}
	if err := json.Unmarshal(js[:end], &meta); err != nil {
		return l, fmt.Errorf("LUKS2 header: JSON area: %w", err)
	}
	l.Keyslots = len(meta.Keyslots)
	ids := make([]string, 0, len(meta.Tokens))
	for id := range meta.Tokens {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		a, errA := strconv.Atoi(ids[i])
		b, errB := strconv.Atoi(ids[j])
		if errA != nil || errB != nil {
			return ids[i] < ids[j]
		}
		return a < b
	})
	for _, id := range ids {
		l.TokenTypes = append(l.TokenTypes, meta.Tokens[id].Type)
	}
	l.Castellan = slices.Contains(l.TokenTypes, facts.CastellanToken)
	return l, nil
}

func luks2Hash(alg string) hash.Hash {
	switch alg {
	case "sha1":
		return sha1.New()
	case "sha224":
		return sha256.New224()
	case "sha256":
		return sha256.New()
	case "sha384":
		return sha512.New384()
	case "sha512":
		return sha512.New()
	}
	return nil
}
