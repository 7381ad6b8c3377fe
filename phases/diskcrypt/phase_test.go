package diskcrypt

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"castellan/installer/engine"
)

func TestPhaseEncryptsThenRerunIsNoop(t *testing.T) {
	f := newFlow(t, nil)
	if got := f.actions(); !slices.Equal(got, []string{ActionEncrypt}) {
		t.Fatalf("first plan: %v", got)
	}
	f.mustApply()
	f.checkDone([]int{7}, 1)
	if got := f.actions(); len(got) != 0 {
		t.Fatalf("the rerun plans %v", got)
	}
	res := f.apply()
	if res.Outcome != "unchanged" {
		t.Errorf("rerun outcome %s: %s", res.Outcome, res.Error)
	}
	f.noPlaintext()
}

// TestPhaseRefusesAnExt4DiskAndLeavesIt: a disk with an ext4 filesystem is
// refused with a clear message and is byte for byte the same afterwards;
// with allowFormat it is formatted and encrypted.
func TestPhaseRefusesAnExt4DiskAndLeavesIt(t *testing.T) {
	f := newFlow(t, nil)
	img := filepath.Join(f.n.Root, "dev/vdb")
	run(t, "", "mkfs.ext4", "-q", "-F", "-L", "old-data", img)
	before := fileDigest(t, img)
	res := f.apply()
	if res.Outcome != engine.OutcomeFailed || !strings.Contains(res.NodeErrors["server-1"], `data disk /dev/vdb holds an ext4 filesystem (label "old-data"`) ||
		!strings.Contains(res.NodeErrors["server-1"], "set allowFormat: true on spec.nodes[server-1].dataDisks[0]") {
		t.Fatalf("apply: %s %v", res.Outcome, res.NodeErrors)
	}
	if fileDigest(t, img) != before {
		t.Fatal("the refused disk changed")
	}
	if names := storedSecretNames(f.store); len(names) != 0 {
		t.Errorf("a refused disk left secrets %v", names)
	}

	f.prof.Spec.Nodes[0].DataDisks[0].AllowFormat = true
	p, err := f.plan()
	if err != nil || len(p.Changes) != 1 || !strings.Contains(p.Changes[0].Summary, `DESTROYING what it holds: an ext4 filesystem (label "old-data"`) {
		t.Fatalf("plan with allowFormat: %+v %v", p.Changes, err)
	}
	f.mustApply()
	f.checkDone([]int{7}, 1)
	if strings.Contains(run(t, "", "wipefs", "--no-act", img), "ext4") {
		t.Error("the old ext4 signature is still there")
	}
	if got := f.actions(); len(got) != 0 {
		t.Errorf("rerun plans %v", got)
	}
}

// TestPhaseDoesNotFormatWithoutATPM: a TPM that cannot make the keyslot
// fails the encryption before the disk is written: the disk stays blank.
func TestPhaseDoesNotFormatWithoutATPM(t *testing.T) {
	f := newFlow(t, nil)
	img := filepath.Join(f.n.Root, "dev/vdb")
	before := fileDigest(t, img)
	good := f.n.TPM2Device
	f.n.TPM2Device = "swtpm:path=" + filepath.Join(t.TempDir(), "gone")
	res := f.apply()
	if res.Outcome != engine.OutcomeFailed || !strings.Contains(res.NodeErrors["server-1"], "the TPM keyslot could not be made") ||
		!strings.Contains(res.NodeErrors["server-1"], "/dev/vdb was left as it was") {
		t.Fatalf("apply: %s %v", res.Outcome, res.NodeErrors)
	}
	if fileDigest(t, img) != before {
		t.Fatal("the disk changed")
	}
	f.n.TPM2Device = good
	f.mustApply()
	f.checkDone([]int{7}, 1)
}
