package diskcrypt

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"castellan/phases/preflight"
)

// TestPreflightReadsCastellansHeader: preflight's own LUKS2 reader (which
// decides, before this phase runs, that a disk is castellan's) parses the
// headers castellan writes, whole and half-written, and agrees with this
// package's reader. (A test-only import of another phase: the arrows are
// about the code that ships.)
func TestPreflightReadsCastellansHeader(t *testing.T) {
	n := testNode(t, startSwtpm(t, ""))
	dev := image(t, n, "vdb", 64<<20)
	req, area := prepareFor(t, n, dev, []int{7})
	img := filepath.Join(n.Root, dev)
	probe := func() []preflightSig {
		f, err := os.Open(img)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		sigs, err := preflight.Probe(f, 64<<20)
		if err != nil {
			t.Fatal(err)
		}
		var out []preflightSig
		for _, s := range sigs {
			ps := preflightSig{typ: s.Type, off: s.Offset}
			if s.LUKS != nil {
				ps.castellan, ps.tokens, ps.uuid, ps.ok = s.LUKS.Castellan, s.LUKS.TokenTypes, s.LUKS.UUID, s.LUKS.ChecksumOK
			}
			out = append(out, ps)
		}
		return out
	}
	// Half written: the secondary copy only.
	w, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(area.Header[MetadataSize:2*MetadataSize], MetadataSize); err != nil {
		t.Fatal(err)
	}
	w.Close()
	sigs := probe()
	if len(sigs) != 1 || sigs[0].typ != "luks2" || sigs[0].off != MetadataSize || !sigs[0].castellan || !sigs[0].ok {
		t.Errorf("preflight on the secondary copy alone: %+v", sigs)
	}
	h := readImg(t, img)
	if h == nil || h.Primary != CopyMissing || h.Secondary != CopyOK || h.UUID != req.UUID || len(h.CastellanTokens()) != 1 {
		t.Errorf("this reader on the secondary copy alone: %+v", h)
	}
	// Whole.
	obs, _ := n.Observe(ctxT(t), ObserveRequest{Disks: []DiskRequest{{Device: dev}}})
	if _, err := n.Write(ctxT(t), WriteRequest{Device: dev, UUID: req.UUID, Header: area.Header, Content: obs.Disks[0].Content}); err != nil {
		t.Fatal(err)
	}
	sigs = probe()
	h = readImg(t, img)
	var types []string
	for _, tok := range h.Tokens {
		types = append(types, tok.Type)
	}
	if len(sigs) != 1 || sigs[0].typ != "luks2" || sigs[0].off != 0 || !sigs[0].castellan || sigs[0].uuid != req.UUID || !slices.Equal(sigs[0].tokens, types) {
		t.Errorf("preflight %+v, this reader's tokens %v", sigs, types)
	}
}

type preflightSig struct {
	typ       string
	off       int64
	castellan bool
	ok        bool
	tokens    []string
	uuid      string
}

func readImg(t *testing.T, p string) *Header {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	h, err := ReadHeader(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestReadHeaderDamage: a flipped byte in a copy makes it damaged, the other
// still read; both damaged or absent says so.
func TestReadHeaderDamage(t *testing.T) {
	area := realHeader(t)
	flip := func(off int) []byte {
		b := bytes.Clone(area)
		b[off] ^= 0xff
		return b
	}
	for _, c := range []struct {
		name               string
		b                  []byte
		primary, secondary string
	}{
		{"whole", area, CopyOK, CopyOK},
		{"primary JSON flipped", flip(luks2BinaryHeader + 10), CopyDamaged, CopyOK},
		{"secondary JSON flipped", flip(MetadataSize + luks2BinaryHeader + 10), CopyOK, CopyDamaged},
		{"primary magic gone", flip(0), CopyMissing, CopyOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, err := ReadHeader(bytes.NewReader(c.b), int64(len(c.b)))
			if err != nil || h == nil {
				t.Fatalf("ReadHeader: %v %v", h, err)
			}
			if h.Primary != c.primary || h.Secondary != c.secondary {
				t.Errorf("copies %s/%s, want %s/%s (%s)", h.Primary, h.Secondary, c.primary, c.secondary, h.Problem)
			}
			if h.UUID != tUUID || len(h.CastellanTokens()) != 1 {
				t.Errorf("the readable copy was not used: %+v", h)
			}
		})
	}
	zero := make([]byte, 1<<20)
	if h, err := ReadHeader(bytes.NewReader(zero), int64(len(zero))); h != nil || err != nil {
		t.Errorf("zeros: %+v %v", h, err)
	}
}

// FuzzReadHeader: any bytes, including a real header mutated, are read
// without panicking, and whatever is reported as whole re-parses the same.
func FuzzReadHeader(f *testing.F) {
	f.Add([]byte("LUKS\xba\xbe\x00\x02"))
	f.Add(synthHeader(`{"keyslots":{"0":{"type":"luks2","kdf":{"type":"argon2id","salt":"cw=="}}},"tokens":{"0":{"type":"castellan","keyslots":[],"castellan":{"version":1,"cluster":"c","node":"n","device":"/dev/vdb","filesystem":{"type":"ext4","uuid":"u"},"recovery":{"keyslot":0,"generation":1}}},"1":{"type":"systemd-tpm2","keyslots":["1"],"tpm2-pcrs":[7]}},"segments":{"0":{"type":"crypt","offset":"32768","sector_size":4096}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ReadHeader(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("an in-memory read failed: %v", err)
		}
		if h == nil {
			return
		}
		if h.Primary != CopyOK && h.Primary != CopyMissing && h.Primary != CopyDamaged {
			t.Fatalf("primary %q", h.Primary)
		}
		if h.Readable() {
			again, _ := ReadHeader(bytes.NewReader(b), int64(len(b)))
			a, _ := json.Marshal(h)
			c, _ := json.Marshal(again)
			if !bytes.Equal(a, c) {
				t.Fatal("two reads differ")
			}
			for _, tok := range h.CastellanTokens() {
				if tok.Castellan != nil {
					raw, err := EncodeToken(*tok.Castellan)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := DecodeToken(raw); err != nil {
						t.Fatalf("a token read does not round-trip: %v", err)
					}
				}
			}
		}
	})
}

// synthHeader builds a primary header copy (16 KiB, sha256) around js.
func synthHeader(js string) []byte {
	b := make([]byte, MetadataSize)
	copy(b, "LUKS\xba\xbe")
	binary.BigEndian.PutUint16(b[6:], 2)
	binary.BigEndian.PutUint64(b[8:], MetadataSize)
	copy(b[72:], "sha256")
	copy(b[168:], "0f1e2d3c-4b5a-4697-8877-665544332211")
	copy(b[luks2BinaryHeader:], js)
	h := checksum("sha256")
	h.Write(b)
	copy(b[448:], h.Sum(nil))
	return b
}

// FuzzDecodeToken: a token decoded re-encodes to one that decodes the same.
func FuzzDecodeToken(f *testing.F) {
	raw, _ := EncodeToken(ownToken())
	f.Add(raw)
	f.Add([]byte(`{"type":"castellan","keyslots":[],"castellan":{"version":1,"recovery":{"keyslot":2,"generation":3},"retired":[{"keyslot":0,"salt":"x"}],"pending":{"keyslot":4,"generation":4}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := DecodeToken(b)
		if err != nil {
			return
		}
		raw, err := EncodeToken(tok)
		if err != nil {
			t.Fatal(err)
		}
		again, err := DecodeToken(raw)
		if err != nil || !reflectEqual(tok, again) {
			t.Fatalf("round trip: %+v -> %+v (%v)", tok, again, err)
		}
	})
}
