package diskcrypt

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// setupNode is an encrypted disk on a node side whose systemd and dm-crypt
// are fakeSystemd (a FAKE: see fakesystemd_test.go).
func setupNode(t *testing.T) (*Node, *fakeSystemd, SetupRequest) {
	t.Helper()
	n, req := encrypted(t, startSwtpm(t, ""))
	sd := &fakeSystemd{root: n.Root, real: ExecRunner{}}
	n.Run, n.Systemd = sd, true
	t.Cleanup(func() { _ = setImmutable(filepath.Join(n.Root, "data"), false) })
	return n, sd, SetupRequest{Device: "/dev/vdb", UUID: req.UUID, MountPoint: "/data", Filesystem: req.Token.Filesystem}
}

func TestSetupStepsAndRerun(t *testing.T) {
	n, sd, req := setupNode(t)
	res, err := n.Setup(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{StepCrypttab, StepOpen, StepMkfs, StepMountPoint, StepFstab, StepMount}
	if strings.Join(res.Done, " ") != strings.Join(want, " ") {
		t.Errorf("done %v, want %v", res.Done, want)
	}
	calls := strings.Join(sd.Calls(), "\n")
	for _, c := range []string{"systemctl daemon-reload", "systemctl start " + cryptsetupUnit(MappingName(req.UUID)), "mkfs.ext4 -q -U " + req.Filesystem.UUID, "systemctl start data.mount"} {
		if !strings.Contains(calls, c) {
			t.Errorf("no %q among:\n%s", c, calls)
		}
	}
	// The mount point's directory on the system disk is immutable.
	if on, err := immutable(filepath.Join(n.Root, "data")); err != nil || !on {
		t.Errorf("mount point immutable = %v, %v", on, err)
	}
	before := len(sd.Calls())
	res, err = n.Setup(ctxT(t), req)
	if err != nil || len(res.Done) != 0 {
		t.Errorf("rerun: %+v %v", res, err)
	}
	if extra := sd.Calls()[before:]; len(extra) != 0 {
		t.Errorf("rerun ran %v", extra)
	}
}

func TestSetupRefusals(t *testing.T) {
	t.Run("the TPM refuses", func(t *testing.T) {
		n, sd, req := setupNode(t)
		sd.refuseOpen = true
		_, err := n.Setup(ctxT(t), req)
		if err == nil || !strings.Contains(err.Error(), "the TPM did not unlock /dev/vdb through systemd-cryptsetup@") {
			t.Errorf("Setup = %v", err)
		}
	})
	t.Run("files in the mount point", func(t *testing.T) {
		n, _, req := setupNode(t)
		writeFile(t, filepath.Join(n.Root, "data/plain.txt"), "not encrypted")
		_, err := n.Setup(ctxT(t), req)
		if err == nil || !strings.Contains(err.Error(), "/data holds 1 entries on the system disk") {
			t.Errorf("Setup = %v", err)
		}
	})
	t.Run("fstab mounts something else there", func(t *testing.T) {
		n, _, req := setupNode(t)
		writeFile(t, filepath.Join(n.Root, "etc/fstab"), "/dev/sdz1 /data xfs defaults 0 0\n")
		_, err := n.Setup(ctxT(t), req)
		if err == nil || !strings.Contains(err.Error(), "/etc/fstab already mounts something else at /data") {
			t.Errorf("Setup = %v", err)
		}
		if b, _ := os.ReadFile(filepath.Join(n.Root, "etc/fstab")); string(b) != "/dev/sdz1 /data xfs defaults 0 0\n" {
			t.Errorf("fstab changed: %q", b)
		}
	})
	t.Run("another filesystem in the opened disk", func(t *testing.T) {
		n, _, req := setupNode(t)
		other := req
		other.Filesystem.UUID = "99999999-0000-4000-8000-000000000000"
		if _, err := n.Setup(ctxT(t), other); err != nil {
			t.Fatal(err)
		}
		_, err := n.Setup(ctxT(t), req)
		if err == nil || !strings.Contains(err.Error(), "holds an ext4 filesystem with UUID 99999999-0000-4000-8000-000000000000, not the") {
			t.Errorf("Setup = %v", err)
		}
	})
	t.Run("a signature in the opened disk is never overwritten", func(t *testing.T) {
		n, _, req := setupNode(t)
		// Once opened, the mapping gets a swap signature (as if someone had
		// used it): blkid finds it, mkfs.ext4 must not run.
		n.crash = func(step string) {
			if step == StepOpen {
				run(t, "", "mkswap", filepath.Join(n.Root, "dev/dm-0"))
			}
		}
		_, err := n.Setup(ctxT(t), req)
		if err == nil || !strings.Contains(err.Error(), "the opened disk already holds something castellan did not make (blkid: ") || !strings.Contains(err.Error(), "TYPE=swap") {
			t.Errorf("Setup = %v", err)
		}
	})
}
