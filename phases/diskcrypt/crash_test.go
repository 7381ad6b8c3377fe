package diskcrypt

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
)

var errCrash = errors.New("installer crashed (test)")

// crashCase is one crash point: an installer step (the phase stops there,
// as if the installer died) or a node operation's step (the operation's
// process is SIGKILLed there), and what the next plan must say.
type crashCase struct {
	installer string // installer step
	op, step  string // node operation and step
	next      []string
	// untouched: the disk must still be byte for byte what it was.
	untouched bool
}

func (c crashCase) name() string {
	if c.installer != "" {
		return "installer/" + c.installer
	}
	return c.op + "/" + c.step
}

// arm makes f crash at c on its next apply.
func (c crashCase) arm(f *flow) {
	if c.installer != "" {
		armed := true
		f.phase = Phase{crash: func(_, _, step string) error {
			if armed && step == c.installer {
				armed = false
				return errCrash
			}
			return nil
		}}
		return
	}
	f.kill[c.op] = c.step
}

// crashThenRerun crashes f at c, checks the plan that follows, and reruns.
func crashThenRerun(t *testing.T, f *flow, c crashCase) {
	t.Helper()
	img := filepath.Join(f.n.Root, "dev/vdb")
	before := fileDigest(t, img)
	c.arm(f)
	res := f.apply()
	if res.Outcome != "failed" {
		t.Fatalf("the crashed run's outcome is %s (%s)", res.Outcome, res.Error)
	}
	f.phase = Phase{}
	if c.untouched && fileDigest(t, img) != before {
		t.Error("the disk changed")
	}
	if got := f.actions(); !slices.Equal(got, c.next) && !(len(got) == 0 && len(c.next) == 0) {
		t.Fatalf("after the crash the plan is %v, want %v", got, c.next)
	}
	f.mustApply()
	if got := f.actions(); len(got) != 0 {
		t.Fatalf("after the rerun the plan is %v", got)
	}
}

// TestCrashAtEachStepOfEncrypt kills the encryption of a blank disk at every
// step boundary, installer side and node side, and checks that the next
// plan names the step's evidence and the rerun completes: the state machine
// of the package doc.
func TestCrashAtEachStepOfEncrypt(t *testing.T) {
	encrypt := []string{ActionEncrypt}
	setup := []string{ActionSetup}
	header := []string{ActionWriteHeader, ActionSetup}
	cases := []crashCase{
		{installer: StepEscrowRecovery, next: encrypt, untouched: true},
		{op: OpPrepare.Name, step: StepScratch, next: encrypt, untouched: true},
		{op: OpPrepare.Name, step: StepLuksFormat, next: encrypt, untouched: true},
		{op: OpPrepare.Name, step: StepTokenImport, next: encrypt, untouched: true},
		{op: OpPrepare.Name, step: StepTPMEnrol, next: encrypt, untouched: true},
		{installer: StepPrepared, next: encrypt, untouched: true},
		{installer: StepEscrowHeader, next: encrypt, untouched: true},
		{op: OpWrite.Name, step: StepSecondary, next: header},
		{op: OpWrite.Name, step: StepKeyslots, next: header},
		{op: OpWrite.Name, step: StepPrimary, next: setup},
		{installer: StepWritten, next: setup},
		{op: OpSetup.Name, step: StepCrypttab, next: setup},
		{op: OpSetup.Name, step: StepOpen, next: setup},
		{op: OpSetup.Name, step: StepMkfs, next: setup},
		{op: OpSetup.Name, step: StepMountPoint, next: setup},
		{op: OpSetup.Name, step: StepFstab, next: setup},
		{op: OpSetup.Name, step: StepMount, next: nil},
	}
	for _, c := range cases {
		t.Run(c.name(), func(t *testing.T) {
			f := newFlow(t, nil)
			crashThenRerun(t, f, c)
			f.checkDone([]int{7}, 1)
			f.noPlaintext()
		})
	}
}

// TestCrashAtEachStepOfRotation raises the recovery generation and kills the
// rotation at each step.
func TestCrashAtEachStepOfRotation(t *testing.T) {
	rotate := []string{ActionRotate}
	cases := []crashCase{
		{installer: StepEscrowRecovery, next: rotate},
		{op: OpRotate.Name, step: StepTestRecovery, next: rotate},
		{op: OpRotate.Name, step: StepPending, next: rotate},
		{op: OpRotate.Name, step: StepAddKeyslot, next: rotate},
		{op: OpRotate.Name, step: StepCommitToken, next: rotate},
		{op: OpRotate.Name, step: StepKillRetired, next: rotate},
		{op: OpRotate.Name, step: StepClearRetired, next: []string{ActionBackup}},
	}
	for _, c := range cases {
		t.Run(c.name(), func(t *testing.T) {
			f := newFlow(t, nil)
			f.mustApply()
			old := f.checkDone([]int{7}, 1)
			uuid := f.uuid()
			oldPass := Passphrase(f.secret(recoverySecret("server-1", uuid, 1)))
			f.prof.Spec.DiskEncryption.RecoveryGeneration = 2
			crashThenRerun(t, f, c)
			tok := f.checkDone([]int{7}, 2)
			if opens(t, filepath.Join(f.n.Root, "dev/vdb"), oldPass) {
				t.Error("the old recovery passphrase still opens the disk")
			}
			if tok.Recovery.Keyslot == old.Recovery.Keyslot {
				t.Errorf("the new passphrase is in the old keyslot %d", tok.Recovery.Keyslot)
			}
			if n := len(f.header().Keyslots); n != 2 {
				t.Errorf("%d keyslots after the rotation, want 2 (recovery and TPM)", n)
			}
			f.noPlaintext()
		})
	}
}

// TestCrashAtEachStepOfReenrolment changes the profile's PCRs and kills the
// re-enrolment at each step.
func TestCrashAtEachStepOfReenrolment(t *testing.T) {
	enrol := []string{ActionEnrolTPM}
	cases := []crashCase{
		{op: OpEnrol.Name, step: StepTestRecovery, next: enrol},
		{op: OpEnrol.Name, step: StepTPMWipe, next: enrol},
		{op: OpEnrol.Name, step: StepTPMEnrol, next: []string{ActionBackup}},
	}
	for _, c := range cases {
		t.Run(c.name(), func(t *testing.T) {
			f := newFlow(t, nil)
			f.mustApply()
			f.checkDone([]int{7}, 1)
			f.prof.Spec.DiskEncryption.PCRs = []int{0, 7}
			crashThenRerun(t, f, c)
			f.checkDone([]int{0, 7}, 1)
			f.noPlaintext()
		})
	}
}

func (f *flow) header() *Header {
	f.t.Helper()
	obs, err := f.n.Observe(ctxT(f.t), ObserveRequest{Disks: []DiskRequest{{Device: "/dev/vdb"}}})
	if err != nil || obs.Disks[0].Header == nil {
		f.t.Fatalf("no header: %v %+v", err, obs)
	}
	return obs.Disks[0].Header
}

func (f *flow) uuid() string { return f.header().UUID }

var _ = fmt.Sprint
