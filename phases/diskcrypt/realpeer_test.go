package diskcrypt

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// prepareFor runs Prepare for a fresh UUID and returns the request and the
// header area.
func prepareFor(t *testing.T, n *Node, device string, pcrs []int) (PrepareRequest, HeaderArea) {
	t.Helper()
	uuid, err := newUUID()
	if err != nil {
		t.Fatal(err)
	}
	fsUUID, _ := newUUID()
	p, err := NewPassphrase()
	if err != nil {
		t.Fatal(err)
	}
	req := PrepareRequest{UUID: uuid, SectorSize: 4096, Passphrase: p, PCRs: pcrs,
		Token: Token{Version: TokenVersion, Cluster: "lab", Node: "server-1", Device: device,
			Filesystem: Filesystem{Type: "ext4", UUID: fsUUID}, Recovery: Slot{Keyslot: 0, Generation: 1}}}
	area, err := n.Prepare(ctxT(t), req)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	return req, area
}

// TestPrepareAndWriteRealCryptsetup makes a header with the real cryptsetup
// and systemd-cryptenroll (on a software TPM), writes it to an image, and
// checks it with cryptsetup and with this package's reader.
func TestPrepareAndWriteRealCryptsetup(t *testing.T) {
	tpm := startSwtpm(t, "")
	n := testNode(t, tpm)
	dev := image(t, n, "vdb", 64<<20)
	before := fileDigest(t, filepath.Join(n.Root, dev))
	req, area := prepareFor(t, n, dev, []int{7})

	// Prepare did not touch the disk, and left no scratch image.
	if got := fileDigest(t, filepath.Join(n.Root, dev)); got != before {
		t.Fatal("Prepare changed the disk")
	}
	if left, _ := filepath.Glob(filepath.Join(n.scratchDir(), "*")); len(left) > 0 {
		t.Errorf("Prepare left %v", left)
	}
	if len(area.Header) != HeaderAreaLen {
		t.Fatalf("header area %d bytes, want %d", len(area.Header), HeaderAreaLen)
	}

	obs, err := n.Observe(ctxT(t), ObserveRequest{Disks: []DiskRequest{{Device: dev, MountPoint: "/data"}}})
	if err != nil || len(obs.Disks) != 1 || obs.Disks[0].Header != nil || obs.Disks[0].Error != "" {
		t.Fatalf("observation of the blank disk: %+v %v", obs, err)
	}
	res, err := n.Write(ctxT(t), WriteRequest{Device: dev, UUID: req.UUID, Header: area.Header, Content: obs.Disks[0].Content})
	if err != nil || res.Resumed || res.Wiped {
		t.Fatalf("Write: %+v %v", res, err)
	}
	img := filepath.Join(n.Root, dev)

	// cryptsetup agrees: LUKS2, our UUID, argon2id recovery keyslot 0 that
	// the passphrase opens, castellan's token, a systemd-tpm2 token on PCR 7.
	run(t, "", "cryptsetup", "isLuks", "--type", "luks2", img)
	if got := strings.TrimSpace(run(t, "", "cryptsetup", "luksUUID", img)); got != req.UUID {
		t.Errorf("luksUUID %s, want %s", got, req.UUID)
	}
	if !opens(t, img, req.Passphrase) {
		t.Error("the recovery passphrase does not open the disk")
	}
	if opens(t, img, "cbdefghi-jklnrtuv-cbdefghi-jklnrtuv-cbdefghi-jklnrtuv-cbdefghi-jklnrtuv") {
		t.Error("another passphrase opens the disk")
	}
	var meta struct {
		Keyslots map[string]struct {
			KDF struct{ Type string } `json:"kdf"`
		} `json:"keyslots"`
		Tokens map[string]json.RawMessage `json:"tokens"`
	}
	if err := json.Unmarshal([]byte(run(t, "", "cryptsetup", "luksDump", "--dump-json-metadata", img)), &meta); err != nil {
		t.Fatal(err)
	}
	if meta.Keyslots["0"].KDF.Type != "argon2id" {
		t.Errorf("keyslot 0 KDF %q, want argon2id", meta.Keyslots["0"].KDF.Type)
	}
	exported := run(t, "", "cryptsetup", "token", "export", "--token-id", "0", img)
	tok, err := DecodeToken([]byte(exported))
	if err != nil || !reflectEqual(tok, req.Token) {
		t.Errorf("castellan token %s: %+v %v, want %+v", exported, tok, err, req.Token)
	}

	// This package's reader, on the disk.
	obs, _ = n.Observe(ctxT(t), ObserveRequest{Disks: []DiskRequest{{Device: dev, MountPoint: "/data"}}})
	h := obs.Disks[0].Header
	if h == nil || !h.Complete() || h.UUID != req.UUID || h.DataOffset != HeaderAreaLen || h.SectorSize != 4096 {
		t.Fatalf("header read: %+v", h)
	}
	if ts := h.CastellanTokens(); len(ts) != 1 || ts[0].Castellan == nil || !reflectEqual(*ts[0].Castellan, req.Token) {
		t.Errorf("castellan token read: %+v", ts)
	}
	if ts := h.TPM2Tokens(); len(ts) != 1 || ts[0].TPM2 == nil || !slices.Equal(ts[0].TPM2.PCRs, []int{7}) || len(ts[0].Keyslots) != 1 {
		t.Errorf("TPM2 token read: %+v", ts)
	}
	if k, ok := h.Keyslot(0); !ok || k.KDF != "argon2id" || k.Salt == "" {
		t.Errorf("keyslot 0: %+v", k)
	}
	if obs.Disks[0].HeaderArea != area.Digest {
		t.Error("the header area on the disk is not the one prepared")
	}

	// The escrowed header area is what luksHeaderBackup writes, and
	// luksHeaderRestore brings a wiped disk back.
	backup := filepath.Join(t.TempDir(), "backup")
	run(t, "", "cryptsetup", "luksHeaderBackup", img, "--header-backup-file", backup)
	if b, _ := os.ReadFile(backup); !bytes.Equal(b, area.Header) {
		t.Error("luksHeaderBackup differs from the escrowed header area")
	}
	run(t, "", "wipefs", "--all", img)
	if opens(t, img, req.Passphrase) {
		t.Fatal("the disk still opens after wipefs")
	}
	escrow := filepath.Join(t.TempDir(), "escrow")
	if err := os.WriteFile(escrow, area.Header, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "", "cryptsetup", "luksHeaderRestore", "--batch-mode", img, "--header-backup-file", escrow)
	if !opens(t, img, req.Passphrase) {
		t.Error("the restored header does not open with the recovery passphrase")
	}
}

func reflectEqual(a, b Token) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}
