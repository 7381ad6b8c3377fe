package preflight

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	"castellan/installer/facts"
)

// EFI variables are files of efivarfs named NAME-VENDORGUID, holding a
// 4-byte little-endian attribute word followed by the value (the kernel's
// Documentation/filesystems/efivarfs.rst). SecureBoot and SetupMode are
// global variables (UEFI 2.10, section 3.3) of one byte: 1 on, 0 off.
const (
	efiGlobal      = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
	efivarsDir     = "sys/firmware/efi/efivars"
	securityfsDir  = "sys/kernel/security"
	tpmEventLog    = "tpm0/binary_bios_measurements"
	efivarfsMagic  = 0xde5e81e4 // EFIVARFS_MAGIC, include/uapi/linux/magic.h
	securityfsMagc = 0x73636673 // SECURITYFS_MAGIC
)

// parseEFIBool decodes a one-byte boolean EFI variable as efivarfs shows
// it: 4 bytes of attributes, then the value, 0 or 1.
func parseEFIBool(b []byte) (attrs uint32, on bool, err error) {
	if len(b) != 5 {
		return 0, false, fmt.Errorf("EFI variable: %d bytes, want 4 of attributes and 1 of value", len(b))
	}
	attrs = binary.LittleEndian.Uint32(b)
	switch b[4] {
	case 0:
		return attrs, false, nil
	case 1:
		return attrs, true, nil
	}
	return attrs, false, fmt.Errorf("EFI variable: value %d, want 0 or 1", b[4])
}

// firmware reads how the node booted. A problem reading one part is
// returned with what could be read.
func (g gatherer) firmware() (facts.Firmware, []string) {
	var fw facts.Firmware
	var problems []string
	if _, err := os.Stat(g.path("sys/firmware/efi")); err != nil {
		fw.Type = facts.FirmwareBIOS
	} else {
		fw.Type = facts.FirmwareUEFI
		fw.SecureBoot = facts.SecureBootUnknown
		err := g.withMount("efivarfs", efivarsDir, efivarfsMagic, func(dir string) error {
			b, err := os.ReadFile(dir + "/SecureBoot-" + efiGlobal)
			if err != nil {
				return fmt.Errorf("reading the Secure Boot state: %w", err)
			}
			_, on, err := parseEFIBool(b)
			if err != nil {
				return fmt.Errorf("reading the Secure Boot state: %w", err)
			}
			fw.SecureBoot = facts.SecureBootDisabled
			if on {
				fw.SecureBoot = facts.SecureBootEnabled
			}
			if b, err := os.ReadFile(dir + "/SetupMode-" + efiGlobal); err == nil {
				if _, on, err := parseEFIBool(b); err == nil {
					fw.SetupMode = on
				}
			}
			return nil
		})
		if err != nil {
			problems = append(problems, err.Error())
		}
	}
	err := g.withMount("securityfs", securityfsDir, securityfsMagc, func(dir string) error {
		_, err := os.Stat(dir + "/" + tpmEventLog)
		switch {
		case err == nil:
			fw.EventLog = true
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("TPM event log: %w", err)
		}
		return nil
	})
	if err != nil {
		problems = append(problems, err.Error())
	}
	return fw, problems
}

// withMount calls fn with the directory where the filesystem fstype is
// mounted at rel (relative to the gatherer's root). systemd mounts efivarfs
// and securityfs at boot; where they are not mounted on a live node, they
// are mounted for fn's duration only, in a mount namespace private to one
// OS thread that ends afterwards (onSpareThread): the node's own mount
// table never changes and nothing is left to unmount. Fixture trees are
// read as they are.
func (g gatherer) withMount(fstype, rel string, magic int64, fn func(dir string) error) error {
	dir := g.path(rel)
	var st unix.Statfs_t
	if !g.live || (unix.Statfs(dir, &st) == nil && int64(st.Type) == magic) {
		return fn(dir)
	}
	var err error
	onSpareThread(func() {
		if err = unix.Unshare(unix.CLONE_NEWNS); err != nil {
			err = fmt.Errorf("%s is not mounted at /%s, and a private mount namespace to mount it in cannot be made: %w", fstype, rel, err)
			return
		}
		if err = unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			err = fmt.Errorf("making a private mount namespace for %s: %w", fstype, err)
			return
		}
		if err = unix.Mount(fstype, dir, fstype, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			err = fmt.Errorf("%s is not mounted at /%s and cannot be mounted there: %w", fstype, rel, err)
			return
		}
		err = fn(dir)
	})
	return err
}
