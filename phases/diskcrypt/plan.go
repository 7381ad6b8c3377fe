package diskcrypt

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"castellan/installer/engine"
	"castellan/installer/facts"
	"castellan/installer/profile"
)

// diskInput is everything the plan knows about one data disk.
type diskInput struct {
	Cluster, Node string
	// Index is the disk's position in spec.nodes[NODE].dataDisks.
	Index      int
	Disk       profile.DataDisk
	PCRs       []int
	Generation int
	// Facts are preflight's facts of the node (signatures, holders, mounts, TPM).
	Facts facts.Node
	// Obs is this phase's observation of the disk.
	Obs DiskState
	// Record is the state repo's record of the node's disks.
	Record Record
	// Secret reads one of this phase's secrets.
	Secret func(name string) ([]byte, bool, error)
}

// decision is the plan of one disk.
type decision struct {
	changes []engine.Change
	notes   []string
}

// Change data, private to the phase (engine.ChangeData).
type (
	encryptData struct {
		Device     string `json:"device"`
		MountPoint string `json:"mountPoint"`
		// Content is the disk's content digest the plan saw; Wipe erases its
		// signatures first (allowFormat and something on it).
		Content    string `json:"content"`
		Wipe       bool   `json:"wipe,omitempty"`
		SectorSize int    `json:"sectorSize"`
	}
	diskData struct {
		Device     string     `json:"device"`
		MountPoint string     `json:"mountPoint"`
		UUID       string     `json:"uuid"`
		Filesystem Filesystem `json:"filesystem"`
		// Generation is the recovery generation the token holds now; To, for
		// a rotation, the one to reach.
		Generation int `json:"generation"`
		To         int `json:"to,omitempty"`
	}
)

func (in diskInput) field() string {
	return fmt.Sprintf("spec.nodes[%s].dataDisks[%d]", in.Node, in.Index)
}

// decide plans one disk. An error means the disk must not be touched (the
// phase fails for the node, and nothing is changed on it).
func decide(in diskInput) (decision, error) {
	var dec decision
	d := in.Disk
	dev, ok := in.Facts.Device(d.Device)
	if !ok {
		return dec, fmt.Errorf("data disk %s: preflight did not report on it; rerun, and report a bug if this persists", d.Device)
	}
	switch dev.Kind {
	case facts.DeviceMissing:
		return dec, fmt.Errorf("data disk %s does not exist: attach it, or fix %s; nothing was changed", d.Device, in.field())
	case facts.DeviceNotBlock:
		return dec, fmt.Errorf("data disk %s is not a block device but a %s: name a whole disk in %s", d.Device, dev.FileType, in.field())
	case facts.DevicePartition:
		return dec, fmt.Errorf("data disk %s is partition %d of %s: name the whole disk in %s", d.Device, dev.Partition, dev.Disk, in.field())
	}
	disk, ok := in.Facts.DiskNamed(dev.Disk)
	if !ok {
		return dec, fmt.Errorf("data disk %s is %s, which preflight did not list among the node's disks; rerun", d.Device, dev.Disk)
	}
	if in.Obs.Error != "" {
		return dec, fmt.Errorf("data disk %s cannot be read: %s; nothing was changed", d.Device, in.Obs.Error)
	}
	if t, own := in.ownToken(); own {
		return in.planOwn(disk, t)
	}
	// Not castellan's disk (yet): it is formatted only when it is blank, or
	// the profile allows destroying what it holds, and never while in use.
	switch {
	case disk.Mounted:
		return dec, fmt.Errorf("data disk %s is in use (%s): castellan never touches a disk in use; nothing was changed", d.Device, strings.Join(disk.Mounts, ", "))
	case len(disk.Holders) > 0:
		return dec, fmt.Errorf("data disk %s is held by %s (device-mapper, md or bcache): castellan never touches a disk in use; nothing was changed", d.Device, strings.Join(disk.Holders, ", "))
	case disk.Busy:
		return dec, fmt.Errorf("data disk %s is in use (the kernel refuses to open it exclusively): castellan never touches a disk in use; nothing was changed", d.Device)
	case disk.ReadOnly:
		return dec, fmt.Errorf("data disk %s is read-only: nothing was changed", d.Device)
	}
	if !in.Facts.TPM.Present {
		return dec, fmt.Errorf("data disk %s: the node has no TPM 2.0 (/dev/tpmrm0) to unlock it at boot, so castellan does not encrypt it; give the node a (v)TPM, or set spec.diskEncryption.enabled: false", d.Device)
	}
	what := in.content(disk)
	data := encryptData{Device: d.Device, MountPoint: d.MountPoint, Content: in.Obs.Content, SectorSize: sectorSize(disk.SizeB)}
	summary := fmt.Sprintf("encrypt %s (%s, blank): LUKS2 argon2id, TPM2 keyslot on PCRs %s, ext4 mounted at %s; the recovery passphrase and the header are escrowed in the state repo before the disk is written",
		d.Device, sizeHuman(disk.SizeB), pcrList(in.PCRs), d.MountPoint)
	if what != "" {
		if !d.AllowFormat {
			return dec, fmt.Errorf("data disk %s holds %s: castellan never formats a disk that holds data, and left it as it is; if it may be destroyed, set allowFormat: true on %s, or wipe it yourself (wipefs -a %s)", d.Device, what, in.field(), d.Device)
		}
		data.Wipe = true
		summary = fmt.Sprintf("FORMAT %s (%s), DESTROYING what it holds: %s (allowFormat is set on %s); then LUKS2 argon2id, TPM2 keyslot on PCRs %s, ext4 mounted at %s",
			d.Device, sizeHuman(disk.SizeB), what, in.field(), pcrList(in.PCRs), d.MountPoint)
	}
	c := engine.NewChange(in.Node, ActionEncrypt, d.Device, summary, data)
	c.Detail = "steps: escrow a new recovery passphrase -> prepare the header off the disk (luksFormat, castellan token, systemd-cryptenroll) -> escrow the header -> write it to the disk -> crypttab -> unlock with the TPM -> mkfs.ext4 -> fstab -> mount"
	dec.changes = append(dec.changes, c)
	return dec, nil
}

// ownToken returns the disk's castellan token when it is this node's of
// this cluster.
func (in diskInput) ownToken() (Token, bool) {
	h := in.Obs.Header
	if h == nil || !h.Readable() {
		return Token{}, false
	}
	for _, t := range h.CastellanTokens() {
		if t.Castellan != nil && t.Castellan.Cluster == in.Cluster && t.Castellan.Node == in.Node {
			return *t.Castellan, true
		}
	}
	return Token{}, false
}

// content says in words what a disk that is not castellan's holds ("" for
// a blank one).
func (in diskInput) content(disk facts.Disk) string {
	var parts []string
	if h := in.Obs.Header; h != nil {
		for _, t := range h.CastellanTokens() {
			if t.Castellan != nil {
				parts = append(parts, fmt.Sprintf("castellan's encryption of cluster %q node %q (LUKS2 UUID %s)", t.Castellan.Cluster, t.Castellan.Node, h.UUID))
			}
		}
	}
	for _, s := range disk.Signatures {
		parts = append(parts, describeSignature(s))
	}
	if len(disk.Partitions) > 0 {
		parts = append(parts, "partitions "+strings.Join(disk.Partitions, ", "))
	}
	if disk.ReadError != "" {
		parts = append(parts, "content that could not be read ("+disk.ReadError+")")
	}
	if len(parts) == 0 && in.Obs.Header != nil {
		parts = append(parts, fmt.Sprintf("a LUKS2 header (UUID %s)", in.Obs.Header.UUID))
	}
	return strings.Join(parts, "; ")
}

var signatureNames = map[string]string{
	"gpt": "a GPT partition table", "dos": "a DOS partition table", "LVM2_member": "an LVM physical volume",
	"linux_raid_member": "an md RAID member", "swap": "a swap area", "zfs_member": "a ZFS pool member",
	"bcache": "a bcache device", "luks1": "a LUKS1 header", "luks2": "a LUKS2 header", "luks": "a LUKS header",
	"iso9660": "an ISO 9660 filesystem", "ext2": "an ext2 filesystem", "ext3": "an ext3 filesystem",
	"ext4": "an ext4 filesystem", "xfs": "an XFS filesystem", "btrfs": "a btrfs filesystem",
	"vfat": "a FAT filesystem", "ntfs": "an NTFS filesystem",
}

// describeSignature names one of preflight's signatures.
func describeSignature(s facts.Signature) string {
	if s.Type == "data" {
		return fmt.Sprintf("unrecognised non-zero data at byte %d", s.Offset)
	}
	name, ok := signatureNames[s.Type]
	if !ok {
		name = "a " + s.Type + " signature"
	}
	var details []string
	if s.Label != "" {
		details = append(details, fmt.Sprintf("label %q", s.Label))
	}
	if s.UUID != "" {
		details = append(details, "UUID "+s.UUID)
	}
	if l := s.LUKS; l != nil && len(l.TokenTypes) > 0 {
		details = append(details, "tokens "+strings.Join(l.TokenTypes, ", "))
	}
	if len(details) > 0 {
		name += " (" + strings.Join(details, ", ") + ")"
	}
	if s.Device != "" {
		name += " on " + s.Device
	}
	return name
}

// planOwn plans a disk that carries this node's castellan token: only what
// is missing, each step from its evidence (see the package doc).
func (in diskInput) planOwn(disk facts.Disk, t Token) (decision, error) {
	var dec decision
	d := in.Disk
	h := in.Obs.Header
	uuid := h.UUID
	base := diskData{Device: d.Device, MountPoint: d.MountPoint, UUID: uuid, Filesystem: t.Filesystem, Generation: t.Recovery.Generation}
	add := func(action, summary, detail string, data diskData) {
		c := engine.NewChange(in.Node, action, d.Device, summary, data)
		c.Detail = detail
		dec.changes = append(dec.changes, c)
	}
	if disk.Mounted {
		return dec, fmt.Errorf("data disk %s (castellan's, LUKS2 UUID %s) is itself mounted (%s), not through its encrypted mapping: unmount it; nothing was changed", d.Device, uuid, strings.Join(disk.Mounts, ", "))
	}
	for _, holder := range disk.Holders {
		if in.Obs.Mapping == nil || holder != in.Obs.Mapping.Kernel || in.Obs.Mapping.Name != MappingName(uuid) {
			return dec, fmt.Errorf("data disk %s (castellan's, LUKS2 UUID %s) is held by %s, which is not its mapping %s: free it; nothing was changed", d.Device, uuid, holder, MappingName(uuid))
		}
	}
	if t.Device != d.Device {
		dec.notes = append(dec.notes, fmt.Sprintf("%s was encrypted as %s (LUKS2 UUID %s): the same disk, under another name", d.Device, t.Device, uuid))
	}

	// The header's two copies.
	written := false
	if !h.Complete() {
		raw, ok, err := in.Secret(headerSecret(in.Node, uuid))
		if err != nil {
			return dec, err
		}
		if !ok {
			return dec, fmt.Errorf("data disk %s: its LUKS2 header (UUID %s) is damaged (primary copy %s, secondary %s: %s) and the state repo holds no escrowed header for it; nothing was changed: repair it by hand (cryptsetup repair %s)", d.Device, uuid, h.Primary, h.Secondary, h.Problem, d.Device)
		}
		esc, err := ReadHeader(bytes.NewReader(raw), int64(len(raw)))
		if err != nil || esc == nil || !esc.Complete() || esc.UUID != uuid {
			return dec, fmt.Errorf("data disk %s: its header is damaged and the escrowed one (secrets/%s/%s) is not a whole header for UUID %s", d.Device, Name, headerSecret(in.Node, uuid), uuid)
		}
		add(ActionWriteHeader, fmt.Sprintf("write the LUKS2 header of %s again from the escrow (primary copy %s, secondary %s: a write was cut off, or the header was damaged)", d.Device, h.Primary, h.Secondary), "", base)
		written = true
		// Plan the rest on the header that will be there.
		h = esc
		if ts := esc.CastellanTokens(); len(ts) == 1 && ts[0].Castellan != nil {
			t = *ts[0].Castellan
			base.Generation, base.Filesystem = t.Recovery.Generation, t.Filesystem
		}
	}

	// The escrowed recovery passphrase of the token's generation.
	if _, ok, err := in.Secret(recoverySecret(in.Node, uuid, t.Recovery.Generation)); err != nil {
		return dec, err
	} else if !ok {
		return dec, fmt.Errorf("data disk %s (LUKS2 UUID %s) has its recovery passphrase at generation %d, and the state repo holds no secrets/%s/%s: without it the disk opens only with its TPM. Restore the state repo from its remote or a backup; or, as root on %s while the disk is open, add a passphrase of your own (cryptsetup luksAddKey --token-only %s) and keep it safe. Nothing was changed",
			d.Device, uuid, t.Recovery.Generation, Name, recoverySecret(in.Node, uuid, t.Recovery.Generation), in.Node, d.Device)
	}

	// Rotation: pending, retired, or a generation behind the profile's.
	to := in.Generation
	if t.Pending != nil {
		to = t.Pending.Generation
	}
	switch {
	case t.Pending != nil || t.Recovery.Generation < in.Generation:
		data := base
		data.To = to
		add(ActionRotate, fmt.Sprintf("rotate the recovery passphrase of %s from generation %d to %d: escrow the new one, add it, then remove the old keyslot", d.Device, t.Recovery.Generation, to), "", data)
	case len(t.Retired) > 0:
		data := base
		data.To = t.Recovery.Generation
		add(ActionRotate, fmt.Sprintf("finish the rotation of %s's recovery passphrase (generation %d): remove %d old keyslot(s)", d.Device, t.Recovery.Generation, len(t.Retired)), "", data)
	case t.Recovery.Generation > in.Generation:
		dec.notes = append(dec.notes, fmt.Sprintf("%s's recovery passphrase is at generation %d, newer than spec.diskEncryption.recoveryGeneration (%d): castellan never rotates backwards", d.Device, t.Recovery.Generation, in.Generation))
	}

	// The TPM keyslot.
	want := sortedCopy(in.PCRs)
	var why []string
	tpm := h.TPM2Tokens()
	switch {
	case len(tpm) == 0:
		why = append(why, "it has no TPM2 keyslot")
	case len(tpm) > 1:
		why = append(why, fmt.Sprintf("it has %d TPM2 keyslots", len(tpm)))
	default:
		tok := tpm[0]
		switch {
		case tok.TPM2 == nil:
			why = append(why, "its TPM2 token cannot be read ("+tok.Problem+")")
		case !slices.Equal(tok.TPM2.PCRs, want):
			why = append(why, fmt.Sprintf("its TPM2 keyslot is bound to PCRs %s, the profile says %s", pcrList(tok.TPM2.PCRs), pcrList(want)))
		}
		for _, k := range tok.Keyslots {
			if _, ok := h.Keyslot(k); !ok {
				why = append(why, fmt.Sprintf("its TPM2 token names keyslot %d, which does not exist", k))
			}
		}
		if len(tok.Keyslots) == 0 {
			why = append(why, "its TPM2 token is assigned to no keyslot")
		}
	}
	if len(why) == 0 && !written {
		switch in.Obs.TPM.Result {
		case TPMRefused:
			why = append(why, "the TPM no longer unseals its key: the TPM was replaced, or the boot measured differently; cryptsetup says: "+firstLine(in.Obs.TPM.Detail))
		case TPMNoDevice:
			return dec, fmt.Errorf("data disk %s: the node has no TPM any more (%s), so the disk cannot unlock at boot; give the node its (v)TPM back, then rerun: castellan re-enrols it with the escrowed recovery passphrase", d.Device, in.Obs.TPM.Detail)
		}
	}
	if len(why) > 0 {
		add(ActionEnrolTPM, fmt.Sprintf("re-enrol the TPM keyslot of %s on PCRs %s (%s), after checking that the escrowed recovery passphrase opens it", d.Device, pcrList(want), strings.Join(why, "; ")), "", base)
	}

	// The escrowed header: refreshed by every change above; otherwise when
	// the state repo's copy is missing or is not the disk's.
	if len(dec.changes) == 0 {
		r, recorded := in.Record.disk(uuid)
		_, escrowed, err := in.Secret(headerSecret(in.Node, uuid))
		if err != nil {
			return dec, err
		}
		switch {
		case !escrowed:
			add(ActionBackup, fmt.Sprintf("escrow the LUKS2 header of %s (UUID %s): the state repo has none", d.Device, uuid), "", base)
		case !recorded || r.HeaderDigest != in.Obs.HeaderArea:
			add(ActionBackup, fmt.Sprintf("escrow the LUKS2 header of %s (UUID %s) again: it changed since it was escrowed", d.Device, uuid), "", base)
		case r.Device != d.Device || r.MountPoint != d.MountPoint || !slices.Equal(r.PCRs, want) || r.Generation != t.Recovery.Generation:
			add(ActionBackup, fmt.Sprintf("record %s (UUID %s) in the state repo as the profile names it", d.Device, uuid), "", base)
		}
	}

	// Unlocked and mounted.
	missing, err := in.setupMissing(uuid, t, written)
	if err != nil {
		return dec, err
	}
	if len(missing) > 0 {
		add(ActionSetup, fmt.Sprintf("unlock %s with the TPM and mount it at %s: %s", d.Device, d.MountPoint, strings.Join(missing, ", ")), "", base)
	}
	return dec, nil
}

// setupMissing lists the parts of Setup still to do, or why they cannot be.
func (in diskInput) setupMissing(uuid string, t Token, rewritten bool) ([]string, error) {
	d, o := in.Disk, in.Obs
	name := MappingName(uuid)
	var missing []string
	if len(o.Crypttab.Conflicts) > 0 {
		return nil, fmt.Errorf("data disk %s: /etc/crypttab opens UUID=%s under another name (%q): remove that line, castellan names it %s", d.Device, uuid, o.Crypttab.Conflicts[0], name)
	}
	if len(o.Fstab.Conflicts) > 0 {
		return nil, fmt.Errorf("data disk %s: /etc/fstab already mounts something else at %s (%q): remove that line, or choose another mountPoint in %s", d.Device, d.MountPoint, o.Fstab.Conflicts[0], in.field())
	}
	if o.Crypttab.Error != "" || o.Fstab.Error != "" {
		return nil, fmt.Errorf("data disk %s: reading /etc/crypttab or /etc/fstab: %s%s", d.Device, o.Crypttab.Error, o.Fstab.Error)
	}
	if len(o.Crypttab.Ours) != 1 || o.Crypttab.Ours[0] != CrypttabLine(uuid) {
		missing = append(missing, "its /etc/crypttab line")
	}
	open := o.Mapping != nil && o.Mapping.Name == name
	switch {
	case !open || rewritten:
		missing = append(missing, "unlock it")
	case o.Mapping.FilesystemUUID == "":
		missing = append(missing, "make its ext4 filesystem")
	case o.Mapping.FilesystemUUID != t.Filesystem.UUID:
		return nil, fmt.Errorf("data disk %s: its opened mapping holds ext4 UUID %s, not the %s castellan made; nothing was changed", d.Device, o.Mapping.FilesystemUUID, t.Filesystem.UUID)
	}
	mp := o.MountPoint
	mountedHere := open && mp.Mounted && mp.Source == o.Mapping.Kernel
	switch {
	case mp.Error != "":
		return nil, fmt.Errorf("data disk %s: mount point %s: %s", d.Device, d.MountPoint, mp.Error)
	case mp.NotDir:
		return nil, fmt.Errorf("data disk %s: mount point %s exists and is not a directory", d.Device, d.MountPoint)
	case mp.Mounted && !mountedHere:
		return nil, fmt.Errorf("data disk %s: %s has %s mounted on it: castellan never mounts over anything; unmount it or choose another mountPoint in %s", d.Device, d.MountPoint, mp.Source, in.field())
	case !mp.Mounted && mp.Entries > 0:
		return nil, fmt.Errorf("data disk %s: mount point %s holds %d entries on the system disk: they would be hidden under the encrypted disk and stay unencrypted; move them away, then rerun", d.Device, d.MountPoint, mp.Entries)
	}
	if open && !mountedHere {
		for _, m := range o.Mapping.Mounts {
			return nil, fmt.Errorf("data disk %s is mounted at %s, the profile says %s: castellan never moves a mounted disk; unmount it (and remove its /etc/fstab line), then rerun", d.Device, m, d.MountPoint)
		}
	}
	if len(o.Fstab.Ours) != 1 || o.Fstab.Ours[0] != FstabLine(uuid, d.MountPoint, t.Filesystem.Type) {
		missing = append(missing, "its /etc/fstab line")
	}
	if !mountedHere {
		missing = append(missing, "mount it")
	}
	return missing, nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// sectorSize is LUKS2's encryption sector: 4096 bytes when the disk's size
// allows it (dm-crypt needs the data to be a whole number of sectors),
// else 512.
func sectorSize(size uint64) int {
	if size%4096 == 0 {
		return 4096
	}
	return 512
}

func sizeHuman(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%d MiB", b>>20)
	}
	return fmt.Sprintf("%d B", b)
}

func joinErrors(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return errors.Join(errs...)
}
