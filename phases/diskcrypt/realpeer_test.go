package diskcrypt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
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

// TestWriteRefusesADiskChangedSincePlan: the plan saw a blank disk; someone
// made a filesystem on it since; Write must refuse and leave it as it is.
func TestWriteRefusesADiskChangedSincePlan(t *testing.T) {
	n := testNode(t, startSwtpm(t, ""))
	dev := image(t, n, "vdb", 64<<20)
	img := filepath.Join(n.Root, dev)
	obs, err := n.Observe(ctxT(t), ObserveRequest{Disks: []DiskRequest{{Device: dev}}})
	if err != nil {
		t.Fatal(err)
	}
	req, area := prepareFor(t, n, dev, []int{7})
	run(t, "", "mkfs.ext4", "-q", "-F", img)
	before := fileDigest(t, img)
	_, err = n.Write(ctxT(t), WriteRequest{Device: dev, UUID: req.UUID, Header: area.Header, Content: obs.Disks[0].Content})
	if err == nil || !strings.Contains(err.Error(), "changed since the plan was made") {
		t.Fatalf("Write = %v", err)
	}
	if fileDigest(t, img) != before {
		t.Error("the disk was written")
	}
	// A header that is not the one prepared for the UUID is refused too.
	_, err = n.Write(ctxT(t), WriteRequest{Device: dev, UUID: "00000000-0000-4000-8000-000000000000", Header: area.Header, Content: obs.Disks[0].Content})
	if err == nil || !strings.Contains(err.Error(), "header UUID") {
		t.Errorf("Write with another UUID = %v", err)
	}
}

// TestPrepareWithoutAWorkingTPMLeavesTheDisk: systemd-cryptenroll cannot
// reach a TPM; Prepare fails saying so, the disk is untouched and no scratch
// image is left.
func TestPrepareWithoutAWorkingTPMLeavesTheDisk(t *testing.T) {
	n := testNode(t, nil)
	n.TPM2Device = "swtpm:path=" + filepath.Join(t.TempDir(), "no-tpm-here")
	dev := image(t, n, "vdb", 64<<20)
	before := fileDigest(t, filepath.Join(n.Root, dev))
	uuid, _ := newUUID()
	p, _ := NewPassphrase()
	_, err := n.Prepare(ctxT(t), PrepareRequest{UUID: uuid, SectorSize: 4096, Passphrase: p, PCRs: []int{7},
		Token: Token{Version: 1, Cluster: "c", Node: "n", Device: dev, Filesystem: Filesystem{Type: "ext4", UUID: uuid}, Recovery: Slot{Generation: 1}}})
	if err == nil || !strings.Contains(err.Error(), "the TPM keyslot could not be made") || !strings.Contains(err.Error(), "systemd-cryptenroll") {
		t.Fatalf("Prepare = %v", err)
	}
	if strings.Contains(err.Error(), string(p)) {
		t.Error("the error holds the passphrase")
	}
	if fileDigest(t, filepath.Join(n.Root, dev)) != before {
		t.Error("the disk changed")
	}
	if left, _ := filepath.Glob(filepath.Join(n.scratchDir(), "*")); len(left) > 0 {
		t.Errorf("Prepare left %v", left)
	}
}

// encrypted returns a node with /dev/vdb encrypted (header written) and its
// request.
func encrypted(t *testing.T, tpm *swtpm) (*Node, PrepareRequest) {
	t.Helper()
	n := testNode(t, tpm)
	dev := image(t, n, "vdb", 64<<20)
	obs, err := n.Observe(ctxT(t), ObserveRequest{Disks: []DiskRequest{{Device: dev}}})
	if err != nil {
		t.Fatal(err)
	}
	req, area := prepareFor(t, n, dev, []int{7})
	if _, err := n.Write(ctxT(t), WriteRequest{Device: dev, UUID: req.UUID, Header: area.Header, Content: obs.Disks[0].Content}); err != nil {
		t.Fatal(err)
	}
	return n, req
}

func tpmBlob(t *testing.T, n *Node) string {
	t.Helper()
	img := filepath.Join(n.Root, "dev/vdb")
	var tok struct {
		Blob string `json:"tpm2-blob"`
	}
	for _, id := range []string{"0", "1", "2", "3"} {
		out, err := execOutput("cryptsetup", "token", "export", "--token-id", id, img)
		if err == nil && strings.Contains(out, `"systemd-tpm2"`) {
			if err := json.Unmarshal([]byte(out), &tok); err != nil {
				t.Fatal(err)
			}
			return tok.Blob
		}
	}
	t.Fatal("no systemd-tpm2 token")
	return ""
}

// TestEnrolWithAReplacedTPM: the node's TPM was replaced (a new software
// TPM, new seeds): the recovery passphrase opens the disk and Enrol seals
// the key to the new TPM, replacing the old TPM2 keyslot.
func TestEnrolWithAReplacedTPM(t *testing.T) {
	n, req := encrypted(t, startSwtpm(t, ""))
	oldBlob := tpmBlob(t, n)
	n.TPM2Device = startSwtpm(t, "").device()
	area, err := n.Enrol(ctxT(t), EnrolRequest{Device: "/dev/vdb", UUID: req.UUID, Passphrase: req.Passphrase, PCRs: []int{7}})
	if err != nil {
		t.Fatalf("Enrol: %v", err)
	}
	if newBlob := tpmBlob(t, n); newBlob == oldBlob {
		t.Error("the TPM2 token was not replaced")
	}
	h, _ := ReadHeader(bytes.NewReader(area.Header), int64(len(area.Header)))
	if len(h.TPM2Tokens()) != 1 || len(h.Keyslots) != 2 {
		t.Errorf("after re-enrolment: %d TPM2 tokens, %d keyslots; want 1 and 2", len(h.TPM2Tokens()), len(h.Keyslots))
	}
	if !opens(t, filepath.Join(n.Root, "dev/vdb"), req.Passphrase) {
		t.Error("the recovery passphrase no longer opens the disk")
	}
}

// TestEnrolAndRotateWithAWrongPassphraseChangeNothing: the escrowed
// passphrase does not open the disk (a state repo from elsewhere): the TPM
// keyslot is not wiped and no keyslot is added.
func TestEnrolAndRotateWithAWrongPassphraseChangeNothing(t *testing.T) {
	n, req := encrypted(t, startSwtpm(t, ""))
	img := filepath.Join(n.Root, "dev/vdb")
	before := fileDigest(t, img)
	wrong, _ := NewPassphrase()
	_, err := n.Enrol(ctxT(t), EnrolRequest{Device: "/dev/vdb", UUID: req.UUID, Passphrase: wrong, PCRs: []int{0, 7}})
	if err == nil || !strings.Contains(err.Error(), "does not open keyslot 0") {
		t.Errorf("Enrol = %v", err)
	}
	next, _ := NewPassphrase()
	_, err = n.Rotate(ctxT(t), RotateRequest{Device: "/dev/vdb", UUID: req.UUID, Current: wrong, New: next, Generation: 2})
	if err == nil || !strings.Contains(err.Error(), "nothing was changed") {
		t.Errorf("Rotate = %v", err)
	}
	if fileDigest(t, img) != before {
		t.Error("the disk changed")
	}
	for _, p := range []Passphrase{wrong, next} {
		if strings.Contains(fmt.Sprint(err), string(p)) {
			t.Error("an error holds a passphrase")
		}
	}
	// Backwards is refused.
	if _, err := n.Rotate(ctxT(t), RotateRequest{Device: "/dev/vdb", UUID: req.UUID, Current: req.Passphrase, New: next, Generation: 0}); err == nil {
		t.Error("a rotation to generation 0 was accepted")
	}
}

func execOutput(argv ...string) (string, error) {
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	return string(out), err
}

// TestLoopDevice runs Observe and Write on a real block device (a loop
// device): its size comes from BLKGETSIZE64, and Write opens it with O_EXCL,
// so a disk held by anyone else is refused by the kernel before a byte is
// written.
func TestLoopDevice(t *testing.T) {
	needCommands(t, "losetup")
	n := testNode(t, startSwtpm(t, ""))
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 48<<20); err != nil {
		t.Fatal(err)
	}
	loop := strings.TrimSpace(run(t, "", "losetup", "--find", "--show", img))
	t.Cleanup(func() { _ = exec.Command("losetup", "--detach", loop).Run() })
	if err := os.Symlink(loop, filepath.Join(n.Root, "dev/vdb")); err != nil {
		t.Fatal(err)
	}
	obs, err := n.Observe(ctxT(t), ObserveRequest{Disks: []DiskRequest{{Device: "/dev/vdb"}}})
	if err != nil || obs.Disks[0].Error != "" || obs.Disks[0].SizeB != 48<<20 || obs.Disks[0].Kernel != filepath.Base(loop) {
		t.Fatalf("observation %+v %v", obs.Disks, err)
	}
	req, area := prepareFor(t, n, "/dev/vdb", []int{7})

	held, err := os.OpenFile(loop, os.O_RDONLY|syscall.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = n.Write(ctxT(t), WriteRequest{Device: "/dev/vdb", UUID: req.UUID, Header: area.Header, Content: obs.Disks[0].Content})
	held.Close()
	if err == nil || !strings.Contains(err.Error(), "opening /dev/vdb exclusively") {
		t.Fatalf("Write on a held disk = %v", err)
	}
	if h := readImg(t, img); h != nil {
		t.Fatalf("a held disk was written: %+v", h)
	}
	if _, err := n.Write(ctxT(t), WriteRequest{Device: "/dev/vdb", UUID: req.UUID, Header: area.Header, Content: obs.Disks[0].Content}); err != nil {
		t.Fatal(err)
	}
	if !opens(t, loop, req.Passphrase) {
		t.Error("the recovery passphrase does not open the loop device")
	}
}
