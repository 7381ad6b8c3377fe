package diskcrypt

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// MappingName is the device-mapper name of a castellan disk with LUKS UUID
// uuid: /dev/mapper/castellan-UUID. Derived from the header, it survives a
// device renamed between boots (vdb -> vdc) and a profile that names the
// disk another way.
func MappingName(uuid string) string { return "castellan-" + uuid }

// CrypttabOptions are the options of castellan's /etc/crypttab lines
// (crypttab(5), systemd 252):
//
//   - luks: the disk is LUKS;
//   - tpm2-device=auto: unlock with the systemd-tpm2 token through the
//     node's TPM, with nobody present;
//   - headless=true: never ask for a passphrase at the console; if the TPM
//     refuses (replaced, or the boot measured differently), the unit fails
//     at once instead of waiting for a person;
//   - nofail: the unit is wanted, not required, by cryptsetup.target: a disk
//     that does not unlock never stops the boot, and the node comes up
//     reachable over SSH so a rerun can repair it (rotate, re-enrol).
const CrypttabOptions = "luks,tpm2-device=auto,headless=true,nofail"

// FstabOptions are the options of castellan's /etc/fstab lines: nofail, for
// the same reason, so local-fs.target never waits for a disk that did not
// unlock. Services whose data lives on the disk must order themselves after
// the mount (RequiresMountsFor=), and the mount point is immutable while
// nothing is mounted on it, so nothing writes plaintext beneath it.
const FstabOptions = "defaults,nofail"

// CrypttabLine is castellan's /etc/crypttab line for the disk with LUKS UUID
// uuid. The source is UUID=, so the line holds whatever the kernel names
// the disk.
func CrypttabLine(uuid string) string {
	return fmt.Sprintf("%s UUID=%s none %s", MappingName(uuid), uuid, CrypttabOptions)
}

// FstabLine is castellan's /etc/fstab line mounting the disk's filesystem at
// mountPoint (fsck pass 2).
func FstabLine(uuid, mountPoint, fsType string) string {
	return fmt.Sprintf("/dev/mapper/%s %s %s %s 0 2", MappingName(uuid), mountPoint, fsType, FstabOptions)
}

// tabLine is one non-comment line of crypttab or fstab, split on blanks.
type tabLine struct {
	text   string
	fields []string
}

// parseTab splits a crypttab or fstab file into lines, keeping every line
// (comments and blank ones too) so that it can be written back unchanged.
func parseTab(b []byte) []tabLine {
	var out []tabLine
	s := string(b)
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	for _, l := range strings.Split(s, "\n") {
		t := tabLine{text: l}
		trimmed := strings.TrimSpace(l)
		if trimmed != "" && !strings.HasPrefix(trimmed, "#") {
			t.fields = strings.Fields(trimmed)
		}
		out = append(out, t)
	}
	return out
}

// TabState is what crypttab or fstab holds for one disk.
type TabState struct {
	// Ours are the lines that belong to the disk (crypttab: its mapping's
	// name; fstab: its mapping's device).
	Ours []string `json:"ours,omitempty"`
	// Conflicts are other lines that would clash with the disk's (fstab: the
	// same mount point for another device; crypttab: another line for the
	// same LUKS UUID).
	Conflicts []string `json:"conflicts,omitempty"`
	// Error says why the file could not be read.
	Error string `json:"error,omitempty"`
}

// crypttabState finds the disk's lines in a crypttab.
func crypttabState(b []byte, uuid string) TabState {
	var st TabState
	name := MappingName(uuid)
	for _, l := range parseTab(b) {
		switch {
		case len(l.fields) == 0:
		case l.fields[0] == name:
			st.Ours = append(st.Ours, l.text)
		case len(l.fields) > 1 && strings.EqualFold(l.fields[1], "UUID="+uuid):
			st.Conflicts = append(st.Conflicts, l.text)
		}
	}
	return st
}

// fstabState finds the disk's lines in an fstab.
func fstabState(b []byte, uuid, mountPoint string) TabState {
	var st TabState
	dev := "/dev/mapper/" + MappingName(uuid)
	for _, l := range parseTab(b) {
		switch {
		case len(l.fields) < 2:
		case l.fields[0] == dev:
			st.Ours = append(st.Ours, l.text)
		case unescapeTab(l.fields[1]) == mountPoint:
			st.Conflicts = append(st.Conflicts, l.text)
		}
	}
	return st
}

// unescapeTab undoes fstab's octal escapes (\040 for a space).
func unescapeTab(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) && isOctal(s[i+1:i+4]) {
			v := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			b.WriteByte(v)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(s string) bool {
	if len(s) != 3 {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '7' {
			return false
		}
	}
	return s[0] <= '3'
}

// ensureLine makes path hold line as the only line for which ours is true,
// keeping every other line as it is. It writes only when something
// changes, atomically (a temporary file in the same directory, fsync,
// rename, fsync of the directory), keeping the file's mode (0644 for a new
// file). It reports whether it wrote.
func ensureLine(path, line string, ours func(fields []string) bool) (bool, error) {
	old, err := os.ReadFile(path)
	mode := fs.FileMode(0o644)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return false, err
	default:
		if fi, err := os.Stat(path); err == nil {
			mode = fi.Mode().Perm()
		}
	}
	var kept []string
	present := 0
	mine := 0
	for _, l := range parseTab(old) {
		if len(l.fields) > 0 && ours(l.fields) {
			mine++
			if l.text == line {
				present++
			}
			continue
		}
		kept = append(kept, l.text)
	}
	if mine == 1 && present == 1 {
		return false, nil
	}
	kept = append(kept, line)
	data := []byte(strings.Join(kept, "\n") + "\n")
	if bytes.Equal(data, old) {
		return false, nil
	}
	return true, writeAtomic(path, data, mode)
}

// writeAtomic replaces path with data: a reader sees the old file or the
// new one, never a part, and a crash leaves one of them.
func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".castellan-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
