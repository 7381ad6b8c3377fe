package identity

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"castellan/installer/engine"
	"castellan/phases/identity/swtpmtest"
	"castellan/phases/identity/tpm2check"
)

func TestMain(m *testing.M) {
	swtpmtest.RunBridgeIfAsked()
	os.Exit(m.Run())
}

// toolsOn runs tpm2check's script with tpm2-tools against tp.
func toolsOn(t *testing.T, tp *swtpmtest.TPM) tpm2check.Runner {
	tcti := tp.ToolsTCTI(t)
	return func(ctx context.Context, script string) (string, error) {
		cmd := exec.CommandContext(ctx, "sh", "-c", script)
		cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI="+tcti)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		}
		return string(out), nil
	}
}

// TestTPM2ToolsSeeTheNodeKey: after the phase enrolled a node, tpm2-tools
// (not castellan's TPM code) load the node key under the TPM's own SRK,
// report it fixedTPM and sign-only, sign a fresh challenge that verifies
// with the node certificate, and compute the EK hash the run recorded. The
// same check run against another TPM fails. This is the check the VM lab's
// e2e runs on each node.
func TestTPM2ToolsSeeTheNodeKey(t *testing.T) {
	swtpmtest.RequireTools(t)
	c := newSWTPMCluster(t)
	a, b := newRig(t, c.ca), newRig(t, c.ca)
	c.attach("n1", a, "")
	r := c.apply(Phase{}, c.profile("", "n1"), nil, engine.Inputs{}, true)
	if r.planErr != nil || r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("enrolment: %v %+v", r.planErr, r.res)
	}
	cert := c.installed(t, "n1")
	keyJSON, err := os.ReadFile(filepath.Join(c.tpm("n1").dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, rg := range []*rig{a, b} {
		if err := rg.conn.(io.Closer).Close(); err != nil { // swtpm serves one connection at a time
			t.Fatal(err)
		}
	}
	res, err := tpm2check.Check(context.Background(), toolsOn(t, a.tp), keyJSON, cert)
	if err != nil {
		t.Fatalf("tpm2-tools on the node's TPM: %v", err)
	}
	if want := r.enrolment(t, "n1").EKHash; res.EKHash != want {
		t.Errorf("tpm2-tools compute EK %s, castellan recorded %s", res.EKHash, want)
	}
	t.Logf("tpm2-tools: attributes %s, EK %s", res.Attributes, res.EKHash)
	if _, err := tpm2check.Check(context.Background(), toolsOn(t, b.tp), keyJSON, cert); err == nil {
		t.Fatal("the node key loaded in another TPM")
	} else {
		t.Logf("another TPM: %v", err)
	}
}
