package diskcrypt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// HeaderArea is a LUKS2 header area, [0, data offset): both header copies
// and the keyslots, what `cryptsetup luksHeaderBackup` writes and
// `luksHeaderRestore` reads back. It holds no passphrase (the keyslots are
// encrypted with keys derived from them), but it is stored as a secret all
// the same: with an old passphrase it opens the disk.
type HeaderArea struct {
	Header []byte `json:"header"`
	// Digest is its SHA-256, hex.
	Digest string `json:"digest"`
}

func headerArea(b []byte) HeaderArea {
	sum := sha256.Sum256(b)
	return HeaderArea{Header: b, Digest: hex.EncodeToString(sum[:])}
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func checkUUID(u string) error {
	if !uuidRE.MatchString(u) {
		return fmt.Errorf("%q is not a lowercase UUID", u)
	}
	return nil
}

func checkPassphrase(p Passphrase, what string) error {
	if len(p) < 20 || strings.ContainsAny(string(p), "\x00\n") {
		return fmt.Errorf("the %s is not one castellan generates (at least 20 characters, no NUL or newline)", what)
	}
	return nil
}

func checkPCRs(pcrs []int) error {
	if len(pcrs) == 0 {
		return errors.New("no PCR to bind the TPM keyslot to")
	}
	for _, p := range pcrs {
		if p < 0 || p > 23 {
			return fmt.Errorf("PCR %d is not between 0 and 23", p)
		}
	}
	return nil
}

// pcrList is systemd-cryptenroll's --tpm2-pcrs syntax: "7" or "0+7".
func pcrList(pcrs []int) string {
	s := make([]string, len(pcrs))
	for i, p := range pcrs {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, "+")
}

func (n *Node) pbkdfArgs() []string {
	args := []string{"--pbkdf", "argon2id"}
	if n.PBKDF != nil {
		args = append(args, "--pbkdf-memory", strconv.Itoa(n.PBKDF.MemoryKiB), "--pbkdf-force-iterations", strconv.Itoa(n.PBKDF.Iterations))
	}
	return args
}

// run runs argv and says which step failed.
func (n *Node) run(ctx context.Context, step string, c Cmd) ([]byte, error) {
	out, err := n.Run.Run(ctx, c)
	if err != nil {
		return out, fmt.Errorf("%s: %w", step, err)
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// Prepare

// PrepareRequest is the input of OpPrepare.
type PrepareRequest struct {
	// UUID is the LUKS UUID castellan chose; the recovery passphrase is
	// already escrowed under it.
	UUID string `json:"uuid"`
	// SectorSize is the encryption sector size (512 or 4096 bytes).
	SectorSize int        `json:"sectorSize"`
	Passphrase Passphrase `json:"passphrase"`
	Token      Token      `json:"token"`
	PCRs       []int      `json:"pcrs"`
}

// Prepare makes a disk's LUKS2 header without touching the disk: in a
// sparse scratch image on /run it formats LUKS2 (argon2id, the recovery
// passphrase in keyslot 0), imports castellan's token and enrols the TPM
// (systemd-cryptenroll, which unseals once to verify), then returns the
// header area. A TPM that cannot make the keyslot fails here, and the disk
// stays exactly as it was. The scratch image is removed before returning
// (and by the next Prepare after a crash).
func (n *Node) Prepare(ctx context.Context, in PrepareRequest) (HeaderArea, error) {
	if err := checkUUID(in.UUID); err != nil {
		return HeaderArea{}, err
	}
	if err := checkPassphrase(in.Passphrase, "recovery passphrase"); err != nil {
		return HeaderArea{}, err
	}
	if err := checkPCRs(in.PCRs); err != nil {
		return HeaderArea{}, err
	}
	if in.SectorSize != 512 && in.SectorSize != 4096 {
		return HeaderArea{}, fmt.Errorf("sector size %d: 512 or 4096", in.SectorSize)
	}
	if in.Token.Recovery.Keyslot != 0 {
		return HeaderArea{}, fmt.Errorf("the token's recovery keyslot is %d; a new header has it in keyslot 0", in.Token.Recovery.Keyslot)
	}
	token, err := EncodeToken(in.Token)
	if err != nil {
		return HeaderArea{}, err
	}
	dir := n.scratchDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return HeaderArea{}, fmt.Errorf("%s: %w", StepScratch, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return HeaderArea{}, fmt.Errorf("%s: %w", StepScratch, err)
	}
	if old, err := filepath.Glob(filepath.Join(dir, "*.img")); err == nil {
		for _, f := range old {
			_ = os.Remove(f)
		}
	}
	img := filepath.Join(dir, in.UUID+".img")
	f, err := os.OpenFile(img, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return HeaderArea{}, fmt.Errorf("%s: %w", StepScratch, err)
	}
	defer os.Remove(img)
	if err := f.Truncate(scratchSize); err != nil {
		f.Close()
		return HeaderArea{}, fmt.Errorf("%s: %w", StepScratch, err)
	}
	f.Close()
	n.step(StepScratch)

	args := []string{"cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
		"--cipher", "aes-xts-plain64", "--key-size", "512", "--hash", "sha256"}
	args = append(args, n.pbkdfArgs()...)
	args = append(args, "--sector-size", strconv.Itoa(in.SectorSize),
		"--luks2-metadata-size", strconv.Itoa(MetadataSize), "--luks2-keyslots-size", strconv.Itoa(KeyslotsSize),
		"--key-slot", "0", "--uuid", in.UUID, "--label", "castellan", "--key-file", "-", img)
	if _, err := n.run(ctx, StepLuksFormat, Cmd{Argv: args, Stdin: in.Passphrase.bytes()}); err != nil {
		return HeaderArea{}, err
	}
	n.step(StepLuksFormat)
	if _, err := n.run(ctx, StepTokenImport, Cmd{Argv: []string{"cryptsetup", "token", "import", img}, Stdin: token}); err != nil {
		return HeaderArea{}, err
	}
	n.step(StepTokenImport)
	if err := n.enrolTPM(ctx, img, in.Passphrase, in.PCRs); err != nil {
		return HeaderArea{}, err
	}
	n.step(StepTPMEnrol)

	area, err := os.ReadFile(img)
	if err != nil {
		return HeaderArea{}, err
	}
	area = area[:HeaderAreaLen]
	if err := checkArea(area, in.UUID); err != nil {
		return HeaderArea{}, fmt.Errorf("the header cryptsetup made: %w", err)
	}
	h, _ := ReadHeader(bytes.NewReader(area), int64(len(area)))
	if t := h.TPM2Tokens(); len(t) != 1 || t[0].TPM2 == nil || !slices.Equal(t[0].TPM2.PCRs, sortedCopy(in.PCRs)) {
		return HeaderArea{}, fmt.Errorf("the header cryptsetup made has no TPM2 token for PCRs %v", in.PCRs)
	}
	return headerArea(area), nil
}

func sortedCopy(s []int) []int {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// enrolTPM adds a TPM2 keyslot to the LUKS2 device or image at path,
// unlocking it with passphrase. systemd-cryptenroll 252 reads the unlocking
// key from a file it seeks in (a pipe fails with ESPIPE), so the passphrase
// goes through an anonymous memory file (memfd) named /proc/self/fd/3.
func (n *Node) enrolTPM(ctx context.Context, path string, p Passphrase, pcrs []int) error {
	_, err := n.run(ctx, StepTPMEnrol, Cmd{
		Argv: []string{"systemd-cryptenroll", "--tpm2-device=" + n.TPM2Device, "--tpm2-pcrs=" + pcrList(pcrs),
			"--unlock-key-file=/proc/self/fd/3", path},
		Files: []Input{{Data: p.bytes(), Seekable: true}},
	})
	if err != nil {
		return fmt.Errorf("the TPM keyslot could not be made: %w", err)
	}
	return nil
}

// checkArea checks that b is a whole header area made for uuid: both copies
// intact, castellan's token in it, the data starting where b ends.
func checkArea(b []byte, uuid string) error {
	h, err := ReadHeader(bytes.NewReader(b), int64(len(b)))
	switch {
	case err != nil:
		return err
	case h == nil:
		return errors.New("no LUKS2 header")
	case !h.Complete():
		return fmt.Errorf("header copies: primary %s, secondary %s (%s)", h.Primary, h.Secondary, h.Problem)
	case h.UUID != uuid:
		return fmt.Errorf("header UUID %s, want %s", h.UUID, uuid)
	case h.DataOffset != int64(len(b)):
		return fmt.Errorf("data offset %d, the area is %d bytes", h.DataOffset, len(b))
	case h.HeaderSize != MetadataSize:
		return fmt.Errorf("header size %d, want %d", h.HeaderSize, MetadataSize)
	}
	if ts := h.CastellanTokens(); len(ts) != 1 || ts[0].Castellan == nil {
		return errors.New("no castellan token")
	}
	return nil
}

// ---------------------------------------------------------------------------
// Write

// WriteRequest is the input of OpWrite.
type WriteRequest struct {
	Device string `json:"device"`
	UUID   string `json:"uuid"`
	// Header is the header area Prepare made (escrowed before this call).
	Header []byte `json:"header"`
	// Content is the disk's Content digest when the plan was made: the node
	// refuses to write when the disk changed since, unless the disk already
	// holds a copy of this header (a rerun after a crash).
	Content string `json:"content"`
	// Wipe erases the disk's signatures first (wipefs --all): the plan saw
	// something on it and the profile allows formatting it.
	Wipe bool `json:"wipe,omitempty"`
}

// WriteResult says what Write did.
type WriteResult struct {
	Wiped   bool `json:"wiped,omitempty"`
	Resumed bool `json:"resumed,omitempty"`
}

// Write puts a prepared header area on the disk, in an order that leaves a
// recognisable state at every point: the secondary header copy first (the
// disk then carries castellan's token, though preflight and cryptsetup see
// no primary), then the keyslots, then the primary; each written with
// fdatasync before the next. The disk is opened exclusively (O_EXCL), so a
// disk mounted or held by anything is refused by the kernel itself.
func (n *Node) Write(ctx context.Context, in WriteRequest) (WriteResult, error) {
	var res WriteResult
	if err := checkUUID(in.UUID); err != nil {
		return res, err
	}
	if err := checkArea(in.Header, in.UUID); err != nil {
		return res, fmt.Errorf("the header to write: %w", err)
	}
	hdr, _ := ReadHeader(bytes.NewReader(in.Header), int64(len(in.Header)))
	dev := n.path(in.Device)
	f, err := os.Open(dev)
	if err != nil {
		return res, err
	}
	size, err := deviceSize(f)
	if err == nil && size < int64(len(in.Header))+1<<20 {
		err = fmt.Errorf("%s has %d bytes: too small for a %d-byte header and data", in.Device, size, len(in.Header))
	}
	var content string
	var cur *Header
	if err == nil {
		content, err = contentDigest(f, size)
	}
	if err == nil {
		cur, err = ReadHeader(f, size)
	}
	f.Close()
	if err != nil {
		return res, err
	}
	res.Resumed = cur != nil && cur.UUID == in.UUID
	if !res.Resumed && content != in.Content {
		return res, fmt.Errorf("%s changed since the plan was made (its first or last MiB differs): nothing was written; run castellan again to plan with what it holds now", in.Device)
	}
	if in.Wipe && !res.Resumed {
		// wipefs opens the disk exclusively itself and refuses a disk in use.
		if _, err := n.run(ctx, StepWipe, Cmd{Argv: []string{"wipefs", "--all", dev}}); err != nil {
			return res, err
		}
		res.Wiped = true
		n.step(StepWipe)
	}
	w, err := openExclusive(dev)
	if err != nil {
		return res, fmt.Errorf("opening %s exclusively: %w (is it mounted, or held by device-mapper, md or bcache?)", in.Device, err)
	}
	defer w.Close()
	hs := hdr.HeaderSize
	parts := []struct {
		step     string
		from, to int64
	}{
		{StepSecondary, hs, 2 * hs},
		{StepKeyslots, 2 * hs, int64(len(in.Header))},
		{StepPrimary, 0, hs},
	}
	for _, p := range parts {
		if _, err := w.WriteAt(in.Header[p.from:p.to], p.from); err != nil {
			return res, fmt.Errorf("%s: %w", p.step, err)
		}
		if err := unix.Fdatasync(int(w.Fd())); err != nil {
			return res, fmt.Errorf("%s: fdatasync: %w", p.step, err)
		}
		n.step(p.step)
	}
	back := make([]byte, len(in.Header))
	if _, err := w.ReadAt(back, 0); err != nil {
		return res, fmt.Errorf("reading the header back: %w", err)
	}
	if !bytes.Equal(back, in.Header) {
		return res, fmt.Errorf("%s: the header read back differs from the one written", in.Device)
	}
	return res, nil
}

// openExclusive opens a block device for writing with O_EXCL: the kernel
// refuses it when the device is mounted or held (open(2)). A regular file
// (an image in tests) is opened for writing.
func openExclusive(p string) (*os.File, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	flags := os.O_RDWR
	if fi.Mode()&fs.ModeDevice != 0 {
		flags |= unix.O_EXCL
	}
	return os.OpenFile(p, flags, 0)
}

// ---------------------------------------------------------------------------
// Reading the header area

// HeaderRequest is the input of OpHeader.
type HeaderRequest struct {
	Device string `json:"device"`
	UUID   string `json:"uuid"`
}

// ReadArea returns the disk's header area (for the escrowed backup), after
// checking that it is whole and castellan's header for uuid.
func (n *Node) ReadArea(_ context.Context, in HeaderRequest) (HeaderArea, error) {
	f, err := os.Open(n.path(in.Device))
	if err != nil {
		return HeaderArea{}, err
	}
	defer f.Close()
	size, err := deviceSize(f)
	if err != nil {
		return HeaderArea{}, err
	}
	h, err := ReadHeader(f, size)
	if err != nil {
		return HeaderArea{}, err
	}
	if h == nil || !h.Readable() {
		return HeaderArea{}, fmt.Errorf("%s holds no readable LUKS2 header", in.Device)
	}
	if h.DataOffset <= 0 || h.DataOffset > 64<<20 || h.DataOffset > size {
		return HeaderArea{}, fmt.Errorf("%s: data offset %d is not a header area castellan reads", in.Device, h.DataOffset)
	}
	area := make([]byte, h.DataOffset)
	if _, err := f.ReadAt(area, 0); err != nil {
		return HeaderArea{}, err
	}
	if err := checkArea(area, in.UUID); err != nil {
		return HeaderArea{}, fmt.Errorf("%s: %w", in.Device, err)
	}
	return headerArea(area), nil
}

// ownHeader reads the header of device and checks it is castellan's for
// uuid, whole, returning it and castellan's token.
func (n *Node) ownHeader(device, uuid string) (*Header, TokenRef, error) {
	f, err := os.Open(n.path(device))
	if err != nil {
		return nil, TokenRef{}, err
	}
	defer f.Close()
	size, err := deviceSize(f)
	if err != nil {
		return nil, TokenRef{}, err
	}
	h, err := ReadHeader(f, size)
	switch {
	case err != nil:
		return nil, TokenRef{}, err
	case h == nil:
		return nil, TokenRef{}, fmt.Errorf("%s holds no LUKS2 header", device)
	case !h.Complete():
		return nil, TokenRef{}, fmt.Errorf("%s: LUKS2 header copies: primary %s, secondary %s", device, h.Primary, h.Secondary)
	case h.UUID != uuid:
		return nil, TokenRef{}, fmt.Errorf("%s holds LUKS2 UUID %s, not %s", device, h.UUID, uuid)
	}
	ts := h.CastellanTokens()
	if len(ts) != 1 || ts[0].Castellan == nil {
		return nil, TokenRef{}, fmt.Errorf("%s has no readable castellan token", device)
	}
	return h, ts[0], nil
}

// testPassphrase checks that p opens keyslot of device (cryptsetup open
// --test-passphrase: nothing is activated), the passphrase on stdin.
//
// --disable-external-tokens: without it, cryptsetup 2.6 (Debian 12) first
// tries the token plugins (libcryptsetup-token-systemd-tpm2, shipped with
// systemd), and on a node whose TPM unseals the disk's TPM2 token the test
// succeeds whatever the passphrase, even with --key-slot naming another
// keyslot (measured on the lab's VMs: exit 0 for a wrong passphrase).
func (n *Node) testPassphrase(ctx context.Context, step, device string, keyslot int, p Passphrase) error {
	_, err := n.run(ctx, step, Cmd{
		Argv: []string{"cryptsetup", "open", "--test-passphrase", "--disable-external-tokens",
			"--key-slot", strconv.Itoa(keyslot), "--key-file", "-", n.path(device)},
		Stdin: p.bytes(),
	})
	return err
}

// importToken replaces castellan's token (id) with t.
func (n *Node) importToken(ctx context.Context, step, device string, id int, t Token) error {
	raw, err := EncodeToken(t)
	if err != nil {
		return err
	}
	_, err = n.run(ctx, step, Cmd{Argv: []string{"cryptsetup", "token", "import", "--token-id", strconv.Itoa(id), "--token-replace", n.path(device)}, Stdin: raw})
	return err
}

// ---------------------------------------------------------------------------
// Enrol

// EnrolRequest is the input of OpEnrol.
type EnrolRequest struct {
	Device     string     `json:"device"`
	UUID       string     `json:"uuid"`
	Passphrase Passphrase `json:"passphrase"`
	PCRs       []int      `json:"pcrs"`
}

// Enrol (re-)makes the disk's TPM keyslot: it first checks that the
// escrowed recovery passphrase opens the recovery keyslot (so that the disk
// can never be left without a working key), then removes every TPM2
// keyslot (systemd-cryptenroll --wipe-slot=tpm2) and enrols the TPM with
// the profile's PCRs. A crash between the two leaves a disk with no TPM
// keyslot, which the next plan enrols again. It returns the new header area.
func (n *Node) Enrol(ctx context.Context, in EnrolRequest) (HeaderArea, error) {
	if err := checkPassphrase(in.Passphrase, "recovery passphrase"); err != nil {
		return HeaderArea{}, err
	}
	if err := checkPCRs(in.PCRs); err != nil {
		return HeaderArea{}, err
	}
	h, tok, err := n.ownHeader(in.Device, in.UUID)
	if err != nil {
		return HeaderArea{}, err
	}
	rec := tok.Castellan.Recovery
	for _, t := range h.TPM2Tokens() {
		if slices.Contains(t.Keyslots, rec.Keyslot) {
			return HeaderArea{}, fmt.Errorf("%s: the recovery keyslot %d is also the TPM2 token's: refusing to wipe it", in.Device, rec.Keyslot)
		}
	}
	if err := n.testPassphrase(ctx, StepTestRecovery, in.Device, rec.Keyslot, in.Passphrase); err != nil {
		return HeaderArea{}, fmt.Errorf("the escrowed recovery passphrase (generation %d) does not open keyslot %d of %s, so the TPM keyslot was left as it is: %w", rec.Generation, rec.Keyslot, in.Device, err)
	}
	n.step(StepTestRecovery)
	if len(h.TPM2Tokens()) > 0 {
		if _, err := n.run(ctx, StepTPMWipe, Cmd{Argv: []string{"systemd-cryptenroll", "--wipe-slot=tpm2", n.path(in.Device)}}); err != nil {
			return HeaderArea{}, err
		}
		n.step(StepTPMWipe)
	}
	if err := n.enrolTPM(ctx, n.path(in.Device), in.Passphrase, in.PCRs); err != nil {
		return HeaderArea{}, err
	}
	n.step(StepTPMEnrol)
	return n.ReadArea(ctx, HeaderRequest{Device: in.Device, UUID: in.UUID})
}

// ---------------------------------------------------------------------------
// Rotate

// RotateRequest is the input of OpRotate.
type RotateRequest struct {
	Device string `json:"device"`
	UUID   string `json:"uuid"`
	// Current is the passphrase of the token's recovery generation; New is
	// generation Generation's, escrowed before this call.
	Current    Passphrase `json:"current"`
	New        Passphrase `json:"new"`
	Generation int        `json:"generation"`
}

// Rotate moves the disk's recovery passphrase to generation Generation as
// explicit steps, each recorded in castellan's token before or after it is
// made, so a rerun after a crash at any point continues where it stopped:
//
//  1. the current passphrase is tested on the recovery keyslot;
//  2. token: pending = {free keyslot N, Generation};
//  3. keyslot N gets the new passphrase (luksAddKey, unlocked by the
//     current one; if N exists already, the new passphrase must open it);
//  4. token: recovery = {N, Generation}, the old keyslot retired (with its
//     KDF salt), pending cleared;
//  5. retired keyslots still carrying their salt are removed (luksKillSlot,
//     authorised by the new passphrase);
//  6. token: retired cleared.
//
// With the token already at Generation, only 5 and 6 run. It returns the
// new header area.
func (n *Node) Rotate(ctx context.Context, in RotateRequest) (HeaderArea, error) {
	if err := checkPassphrase(in.New, "new recovery passphrase"); err != nil {
		return HeaderArea{}, err
	}
	h, tok, err := n.ownHeader(in.Device, in.UUID)
	if err != nil {
		return HeaderArea{}, err
	}
	t := *tok.Castellan
	switch {
	case t.Recovery.Generation > in.Generation:
		return HeaderArea{}, fmt.Errorf("%s: its recovery passphrase is at generation %d, newer than %d: castellan never rotates backwards", in.Device, t.Recovery.Generation, in.Generation)
	case t.Recovery.Generation < in.Generation:
		if err := checkPassphrase(in.Current, "current recovery passphrase"); err != nil {
			return HeaderArea{}, err
		}
		if t.Pending == nil || t.Pending.Generation != in.Generation {
			if err := n.testPassphrase(ctx, StepTestRecovery, in.Device, t.Recovery.Keyslot, in.Current); err != nil {
				return HeaderArea{}, fmt.Errorf("the escrowed recovery passphrase (generation %d) does not open keyslot %d of %s; nothing was changed: %w", t.Recovery.Generation, t.Recovery.Keyslot, in.Device, err)
			}
			n.step(StepTestRecovery)
			free := -1
			for i := 0; i < 8; i++ {
				if _, used := h.Keyslot(i); !used {
					free = i
					break
				}
			}
			if free < 0 {
				return HeaderArea{}, fmt.Errorf("%s: no free keyslot among 0-7 for the new recovery passphrase", in.Device)
			}
			t.Pending = &Slot{Keyslot: free, Generation: in.Generation}
			if err := n.importToken(ctx, StepPending, in.Device, tok.ID, t); err != nil {
				return HeaderArea{}, err
			}
			n.step(StepPending)
		}
		slot := t.Pending.Keyslot
		if _, exists := h.Keyslot(slot); exists {
			if err := n.testPassphrase(ctx, StepAddKeyslot, in.Device, slot, in.New); err != nil {
				return HeaderArea{}, fmt.Errorf("%s: keyslot %d, where the new recovery passphrase was to go, exists and does not open with it; nothing more was changed: %w", in.Device, slot, err)
			}
		} else {
			args := []string{"cryptsetup", "luksAddKey", "--batch-mode"}
			args = append(args, n.pbkdfArgs()...)
			args = append(args, "--key-slot", strconv.Itoa(slot), "--key-file", "-", n.path(in.Device), "/proc/self/fd/3")
			if _, err := n.run(ctx, StepAddKeyslot, Cmd{Argv: args, Stdin: in.Current.bytes(), Files: []Input{{Data: in.New.bytes()}}}); err != nil {
				return HeaderArea{}, err
			}
		}
		n.step(StepAddKeyslot)
		old, _ := h.Keyslot(t.Recovery.Keyslot)
		if old.Salt != "" && t.Recovery.Keyslot != slot {
			t.Retired = append(t.Retired, Retired{Keyslot: t.Recovery.Keyslot, Salt: old.Salt})
		}
		t.Recovery = Slot{Keyslot: slot, Generation: in.Generation}
		t.Pending = nil
		if err := n.importToken(ctx, StepCommitToken, in.Device, tok.ID, t); err != nil {
			return HeaderArea{}, err
		}
		n.step(StepCommitToken)
		if h, _, err = n.ownHeader(in.Device, in.UUID); err != nil {
			return HeaderArea{}, err
		}
	}
	if len(t.Retired) > 0 {
		for _, r := range t.Retired {
			k, exists := h.Keyslot(r.Keyslot)
			if !exists || k.Salt != r.Salt || r.Keyslot == t.Recovery.Keyslot {
				continue // gone already, or the number now belongs to another keyslot
			}
			if _, err := n.run(ctx, StepKillRetired, Cmd{
				Argv:  []string{"cryptsetup", "luksKillSlot", "--batch-mode", "--key-file", "-", n.path(in.Device), strconv.Itoa(r.Keyslot)},
				Stdin: in.New.bytes(),
			}); err != nil {
				return HeaderArea{}, err
			}
			n.step(StepKillRetired)
		}
		t.Retired = nil
		if err := n.importToken(ctx, StepClearRetired, in.Device, tok.ID, t); err != nil {
			return HeaderArea{}, err
		}
		n.step(StepClearRetired)
	}
	return n.ReadArea(ctx, HeaderRequest{Device: in.Device, UUID: in.UUID})
}

// ---------------------------------------------------------------------------
// Setup

// SetupRequest is the input of OpSetup.
type SetupRequest struct {
	Device     string     `json:"device"`
	UUID       string     `json:"uuid"`
	MountPoint string     `json:"mountPoint"`
	Filesystem Filesystem `json:"filesystem"`
}

// SetupResult lists the steps Setup carried out (the others were done).
type SetupResult struct {
	Done []string `json:"done,omitempty"`
}

// Setup makes an encrypted disk unlock and mount at boot, and now, each
// step checked against its evidence first:
//
//	crypttab     the disk's /etc/crypttab line (CrypttabLine)
//	open         /dev/mapper/castellan-UUID exists: systemd-cryptsetup@ started,
//	             the same unit, with the TPM, as at boot
//	mkfs         the opened disk holds ext4 with the token's filesystem UUID;
//	             mkfs.ext4 runs only where blkid --probe finds nothing
//	mount-point  the mount point exists, is empty, and is immutable while
//	             nothing is mounted on it (nothing writes plaintext beneath it)
//	fstab        the disk's /etc/fstab line (FstabLine)
//	mount        the mount unit started; the mapping is mounted there
func (n *Node) Setup(ctx context.Context, in SetupRequest) (SetupResult, error) {
	var res SetupResult
	if err := checkUUID(in.UUID); err != nil {
		return res, err
	}
	if in.Filesystem.Type != "ext4" || checkUUID(in.Filesystem.UUID) != nil {
		return res, fmt.Errorf("filesystem %s %s: castellan makes ext4 with a lowercase UUID", in.Filesystem.Type, in.Filesystem.UUID)
	}
	if !filepath.IsAbs(in.MountPoint) || filepath.Clean(in.MountPoint) != in.MountPoint || in.MountPoint == "/" {
		return res, fmt.Errorf("mount point %q is not a clean absolute path", in.MountPoint)
	}
	if _, _, err := n.ownHeader(in.Device, in.UUID); err != nil {
		return res, err
	}
	name := MappingName(in.UUID)
	mapper := n.path("dev/mapper/" + name)

	// crypttab
	crypttab := n.path("etc/crypttab")
	if old, err := readOptional(crypttab); err != nil {
		return res, fmt.Errorf("%s: %w", StepCrypttab, err)
	} else if st := crypttabState(old, in.UUID); len(st.Conflicts) > 0 {
		return res, fmt.Errorf("%s: /etc/crypttab already has a line for UUID=%s under another name (%q): remove it, castellan names the mapping %s", StepCrypttab, in.UUID, st.Conflicts[0], name)
	}
	changed, err := ensureLine(crypttab, CrypttabLine(in.UUID), func(f []string) bool { return f[0] == name })
	if err != nil {
		return res, fmt.Errorf("%s: %w", StepCrypttab, err)
	}
	if changed {
		res.Done = append(res.Done, StepCrypttab)
		if err := n.daemonReload(ctx); err != nil {
			return res, err
		}
	}
	n.step(StepCrypttab)

	// open
	if _, err := os.Stat(mapper); err != nil {
		if err := n.waitForUUID(ctx, in.Device, in.UUID); err != nil {
			return res, err
		}
		if err := n.systemctl(ctx, StepOpen, "start", cryptsetupUnit(name)); err != nil {
			return res, fmt.Errorf("the TPM did not unlock %s through %s (the boot's own path): %w", in.Device, cryptsetupUnit(name), err)
		}
		if _, err := os.Stat(mapper); err != nil {
			return res, fmt.Errorf("%s: %s started but /dev/mapper/%s is not there: %w", StepOpen, cryptsetupUnit(name), name, err)
		}
		res.Done = append(res.Done, StepOpen)
	}
	n.step(StepOpen)

	// mkfs
	fsUUID, err := fileExt4UUID(mapper)
	if err != nil {
		return res, fmt.Errorf("%s: %w", StepMkfs, err)
	}
	switch fsUUID {
	case in.Filesystem.UUID:
	case "":
		// mke2fs overwrites whatever is there when it does not run on a
		// terminal, so ask libblkid (blkid --probe: exit status 2 when it
		// finds nothing) first: a fresh LUKS volume reads as noise, and
		// anything recognisable in it is not castellan's to overwrite.
		out, err := n.Run.Run(ctx, Cmd{Argv: []string{"blkid", "--probe", "--output", "export", mapper}})
		var ce *CommandError
		switch {
		case err == nil:
			return res, fmt.Errorf("%s: the opened disk already holds something castellan did not make (blkid: %s): left as it is", StepMkfs, strings.Join(strings.Fields(string(out)), " "))
		case errors.As(err, &ce) && ce.ExitCode() == 2:
		default:
			return res, fmt.Errorf("%s: %w", StepMkfs, err)
		}
		if _, err := n.run(ctx, StepMkfs, Cmd{Argv: []string{"mkfs.ext4", "-q", "-U", in.Filesystem.UUID, "-L", "castellan", mapper}}); err != nil {
			return res, err
		}
		if got, err := fileExt4UUID(mapper); err != nil || got != in.Filesystem.UUID {
			return res, fmt.Errorf("%s: after mkfs.ext4 the disk holds ext4 UUID %q (%v), not %s", StepMkfs, got, err, in.Filesystem.UUID)
		}
		res.Done = append(res.Done, StepMkfs)
	default:
		return res, fmt.Errorf("%s: the opened disk holds an ext4 filesystem with UUID %s, not the %s castellan made: left as it is", StepMkfs, fsUUID, in.Filesystem.UUID)
	}
	n.step(StepMkfs)

	// mount point
	mp := n.path(in.MountPoint)
	mounted, source, err := n.mountedAt(in.MountPoint)
	if err != nil {
		return res, err
	}
	mapDev, err := n.mapperKernel(name)
	if err != nil {
		return res, err
	}
	if mounted && source != mapDev {
		return res, fmt.Errorf("%s: %s has %s mounted on it, not the encrypted disk: unmount it, castellan never mounts over anything", StepMountPoint, in.MountPoint, source)
	}
	if !mounted {
		if err := os.MkdirAll(mp, 0o755); err != nil {
			return res, fmt.Errorf("%s: %w", StepMountPoint, err)
		}
		entries, err := os.ReadDir(mp)
		if err != nil {
			return res, fmt.Errorf("%s: %w", StepMountPoint, err)
		}
		if len(entries) > 0 {
			return res, fmt.Errorf("%s: %s holds %d entries on the system disk: they would be hidden under the encrypted disk and stay unencrypted; move them away first", StepMountPoint, in.MountPoint, len(entries))
		}
		if on, err := immutable(mp); err != nil || !on {
			if err := setImmutable(mp, true); err != nil {
				return res, fmt.Errorf("%s: making %s immutable while nothing is mounted on it (so nothing is written there unencrypted): %w", StepMountPoint, in.MountPoint, err)
			}
			res.Done = append(res.Done, StepMountPoint)
		}
	}
	n.step(StepMountPoint)

	// fstab
	fstab := n.path("etc/fstab")
	if old, err := readOptional(fstab); err != nil {
		return res, fmt.Errorf("%s: %w", StepFstab, err)
	} else if st := fstabState(old, in.UUID, in.MountPoint); len(st.Conflicts) > 0 {
		return res, fmt.Errorf("%s: /etc/fstab already mounts something else at %s (%q): remove that line or choose another mountPoint", StepFstab, in.MountPoint, st.Conflicts[0])
	}
	dev := "/dev/mapper/" + name
	changed, err = ensureLine(fstab, FstabLine(in.UUID, in.MountPoint, in.Filesystem.Type), func(f []string) bool { return f[0] == dev })
	if err != nil {
		return res, fmt.Errorf("%s: %w", StepFstab, err)
	}
	if changed {
		res.Done = append(res.Done, StepFstab)
		if err := n.daemonReload(ctx); err != nil {
			return res, err
		}
	}
	n.step(StepFstab)

	// mount
	if !mounted {
		if err := n.systemctl(ctx, StepMount, "start", mountUnit(in.MountPoint)); err != nil {
			return res, err
		}
		mounted, source, err = n.mountedAt(in.MountPoint)
		if err != nil {
			return res, err
		}
		if !mounted || source != mapDev {
			return res, fmt.Errorf("%s: %s started, but %s is not mounted from /dev/mapper/%s", StepMount, mountUnit(in.MountPoint), in.MountPoint, name)
		}
		res.Done = append(res.Done, StepMount)
	}
	n.step(StepMount)
	return res, nil
}

func fileExt4UUID(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return readExt4UUID(f)
}

// mountedAt says whether something is mounted at p and which block device
// (kernel name) it is.
func (n *Node) mountedAt(p string) (bool, string, error) {
	raw, err := os.ReadFile(n.path("proc/self/mountinfo"))
	if err != nil {
		return false, "", err
	}
	st := n.mountPoint(p, parseMountinfo(raw))
	return st.Mounted, st.Source, nil
}

// mapperKernel is the kernel name (dm-N) of /dev/mapper/name.
func (n *Node) mapperKernel(name string) (string, error) {
	target, err := filepath.EvalSymlinks(n.path("dev/mapper/" + name))
	if err != nil {
		return "", err
	}
	return filepath.Base(target), nil
}

func (n *Node) daemonReload(ctx context.Context) error {
	if !n.Systemd {
		return nil
	}
	_, err := n.run(ctx, "systemctl daemon-reload", Cmd{Argv: []string{"systemctl", "daemon-reload"}})
	return err
}

func (n *Node) systemctl(ctx context.Context, step string, args ...string) error {
	if !n.Systemd {
		return fmt.Errorf("%s: systemctl %s: this node side runs without systemd", step, strings.Join(args, " "))
	}
	_, err := n.run(ctx, step, Cmd{Argv: append([]string{"systemctl"}, args...)})
	return err
}

// waitForUUID waits (up to 15 s) for udev's /dev/disk/by-uuid link of the
// freshly written header, which the crypttab line names; when it is not
// there yet, it first asks udev to look at the disk again (the kernel sends
// a change event when a writer closes a disk, but udev may still be at it).
func (n *Node) waitForUUID(ctx context.Context, device, uuid string) error {
	link := n.path("dev/disk/by-uuid/" + uuid)
	if _, err := os.Stat(link); err == nil {
		return nil
	}
	_, _ = n.Run.Run(ctx, Cmd{Argv: []string{"udevadm", "trigger", "--action=change", n.path(device)}})
	_, _ = n.Run.Run(ctx, Cmd{Argv: []string{"udevadm", "settle", "--timeout=10"}})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(link); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: udev made no /dev/disk/by-uuid/%s for %s within 15 s, which its crypttab line names", StepOpen, uuid, device)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
