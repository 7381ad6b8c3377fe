package diskcrypt

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// fakeSystemd is a FAKE of systemd and device-mapper, for tests of Setup and
// of the whole phase on this host, which has neither dm-crypt nor systemd as
// PID 1 (the VM lab runs the real ones: vagrant/e2e). Every other command
// goes to the real tool (cryptsetup, systemd-cryptenroll, wipefs,
// mkfs.ext4). It stands in for:
//
//	systemctl daemon-reload                       recorded
//	systemctl start systemd-cryptsetup@NAME.service
//	    needs the crypttab line for NAME and a systemd-tpm2 token in the
//	    header, then "opens" the disk: Root/dev/mapper/NAME links to
//	    Root/dev/dm-0, a PLAIN image file of the data size (nothing is decrypted: mkfs.ext4 then
//	    writes a real filesystem into it), and dm-0 holds the disk in
//	    Root/sys. refuseOpen makes it fail as a TPM that does not unseal.
//	systemctl start UNIT.mount                    needs the fstab line; adds
//	    the mount to Root/proc/self/mountinfo
//	udevadm trigger|settle                        makes Root/dev/disk/by-uuid/UUID
type fakeSystemd struct {
	root       string
	real       Runner
	mu         sync.Mutex
	calls      []string
	refuseOpen bool
}

func (f *fakeSystemd) Run(ctx context.Context, c Cmd) ([]byte, error) {
	f.mu.Lock()
	f.calls = append(f.calls, strings.Join(c.Argv, " "))
	refuse := f.refuseOpen
	f.mu.Unlock()
	switch c.Argv[0] {
	case "udevadm":
		return nil, f.udev()
	case "systemctl":
		switch {
		case len(c.Argv) == 2 && c.Argv[1] == "daemon-reload":
			return nil, nil
		case len(c.Argv) == 3 && c.Argv[1] == "start" && strings.HasPrefix(c.Argv[2], "systemd-cryptsetup@"):
			if refuse {
				return nil, &CommandError{Argv: c.Argv, Err: fmt.Errorf("exit status 1"), Stderr: "Job for " + c.Argv[2] + " failed (fake: the TPM refused)"}
			}
			return nil, f.open(c.Argv[2])
		case len(c.Argv) == 3 && c.Argv[1] == "start" && strings.HasSuffix(c.Argv[2], ".mount"):
			return nil, f.mount(c.Argv[2])
		}
		return nil, fmt.Errorf("fakeSystemd: unexpected %v", c.Argv)
	}
	return f.real.Run(ctx, c)
}

func (f *fakeSystemd) path(p string) string { return filepath.Join(f.root, p) }

// udev links every LUKS disk under Root/dev by its UUID.
func (f *fakeSystemd) udev() error {
	disks, _ := filepath.Glob(f.path("dev/*"))
	for _, d := range disks {
		fd, err := os.Open(d)
		if err != nil {
			continue
		}
		fi, _ := fd.Stat()
		h, _ := ReadHeader(fd, fi.Size())
		fd.Close()
		if h != nil && h.UUID != "" {
			link := f.path("dev/disk/by-uuid/" + h.UUID)
			_ = os.MkdirAll(filepath.Dir(link), 0o755)
			_ = os.Symlink(d, link)
		}
	}
	return nil
}

func (f *fakeSystemd) open(unit string) error {
	crypttab, _ := os.ReadFile(f.path("etc/crypttab"))
	for _, line := range strings.Split(string(crypttab), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 4 || cryptsetupUnit(fields[0]) != unit {
			continue
		}
		uuid := strings.TrimPrefix(fields[1], "UUID=")
		src, err := filepath.EvalSymlinks(f.path("dev/disk/by-uuid/" + uuid))
		if err != nil {
			return fmt.Errorf("fakeSystemd: %s: no device for UUID %s", unit, uuid)
		}
		fd, err := os.Open(src)
		if err != nil {
			return err
		}
		fi, _ := fd.Stat()
		h, _ := ReadHeader(fd, fi.Size())
		fd.Close()
		if h == nil || len(h.TPM2Tokens()) != 1 || fields[3] != CrypttabOptions {
			return fmt.Errorf("fakeSystemd: %s: no TPM2 token or wrong options %q", unit, fields[3])
		}
		mapper := f.path("dev/mapper/" + fields[0])
		_ = os.MkdirAll(filepath.Dir(mapper), 0o755)
		if err := os.Symlink("../dm-0", mapper); err != nil && !os.IsExist(err) {
			return err
		}
		m, err := os.OpenFile(f.path("dev/dm-0"), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		if err := m.Truncate(fi.Size() - h.DataOffset); err != nil {
			m.Close()
			return err
		}
		m.Close()
		kernel := filepath.Base(src)
		for p, v := range map[string]string{"sys/block/dm-0/dm/name": fields[0], "sys/block/dm-0/dev": "253:0"} {
			_ = os.MkdirAll(filepath.Dir(f.path(p)), 0o755)
			if err := os.WriteFile(f.path(p), []byte(v+"\n"), 0o644); err != nil {
				return err
			}
		}
		_ = os.MkdirAll(f.path("sys/block/"+kernel+"/holders/dm-0"), 0o755)
		_ = os.MkdirAll(f.path("sys/dev/block"), 0o755)
		_ = os.Symlink("../../devices/virtual/block/dm-0", f.path("sys/dev/block/253:0"))
		return nil
	}
	return fmt.Errorf("fakeSystemd: %s: no crypttab line", unit)
}

func (f *fakeSystemd) mount(unit string) error {
	fstab, _ := os.ReadFile(f.path("etc/fstab"))
	for _, line := range strings.Split(string(fstab), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 4 || mountUnit(fields[1]) != unit {
			continue
		}
		if _, err := os.Stat(f.path(fields[0])); err != nil {
			return fmt.Errorf("fakeSystemd: %s: %s is not there", unit, fields[0])
		}
		mi, err := os.OpenFile(f.path("proc/self/mountinfo"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer mi.Close()
		_, err = fmt.Fprintf(mi, "99 1 253:0 / %s rw,relatime - %s %s rw\n", fields[1], fields[2], fields[0])
		return err
	}
	return fmt.Errorf("fakeSystemd: %s: no fstab line", unit)
}

func (f *fakeSystemd) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}
