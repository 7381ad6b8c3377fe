package diskcrypt

import (
	"slices"
	"testing"
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
