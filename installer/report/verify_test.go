package report

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"castellan/installer/engine"
)

// verification is a castellan verify result as the engine makes it: ok
// lines, a warning, drift from a plan and from a check, a node that could
// not be reached, and a message with a control character from a node.
func verification() *Verification {
	return &Verification{
		Cluster: "lab", Started: t0, StateCommit: "3f2a9c1d0b7e",
		VerifyResult: engine.VerifyResult{
			Status: engine.CheckFailed, Nodes: []string{"server-1", "agent-1", "agent-2"}, Phases: []string{"preflight", "identity", "diskcrypt", "mesh"},
			Duration: 1340 * time.Millisecond,
			Checks: []engine.Check{
				{Phase: "identity", Name: "trust", Status: engine.CheckOK, Message: "root CA valid until 2036-11-27; revocation list number 3 (1 revoked) valid until 2027-11-30"},
				{Phase: "preflight", Node: "server-1", Name: "plan", Status: engine.CheckOK, Message: "matches the profile: nothing to change"},
				{Phase: "identity", Node: "server-1", Name: "certificate", Status: engine.CheckOK, Message: "serial 4711 valid until 2027-05-29 (180 days), chains to the cluster root, not revoked"},
				{Phase: "identity", Node: "server-1", Name: "key", Status: engine.CheckOK, Message: "TPM-resident key 2115df70b6d19c86…, certified by the enrolled attestation key 000b6f1e2d3c4b5a… over this run's nonce"},
				{Phase: "identity", Node: "server-1", Name: "boot-state", Status: engine.CheckOK, Message: "PCRs 0, 2, 4, 7 match the baseline pinned by run 1 (2026-11-30, enrolment); quoted by the enrolled AK over this run's nonce"},
				{Phase: "diskcrypt", Node: "server-1", Name: "disk", Target: "/dev/vdb", Status: engine.CheckOK, Message: "LUKS2 0f1e open as castellan-0f1e, TPM2 keyslot on PCRs 7 (the TPM unseals it now), ext4 mounted at /var/lib/castellan/data/vdb"},
				{Phase: "mesh", Node: "server-1", Name: "handshakes", Status: engine.CheckOK, Message: "last handshakes: agent-1 12s ago"},
				{Phase: "preflight", Node: "agent-1", Name: "warning", Status: engine.CheckWarning, Message: "the node boots with BIOS\x1b[2J: PCR 7 binds nothing"},
				{Phase: "identity", Node: "agent-1", Name: "plan", Status: engine.CheckDrift, Message: "node agent-1: its boot state changed since the baseline pinned by run 1 (2026-11-30, enrolment): PCR 4 (boot loader code) was 1a2b3c4d5e6f7a8b…, now 9f8e7d6c5b4a3928…\nsecond line"},
				{Phase: "diskcrypt", Node: "agent-1", Name: "unlock-and-mount", Target: "/dev/vdb", Status: engine.CheckDrift, Message: "a rerun would unlock /dev/vdb with the TPM and mount it at /var/lib/castellan/data/vdb: mount it"},
				{Phase: "mesh", Node: "agent-1", Name: "underlay", Status: engine.CheckDrift, Message: "table inet castellan differs from the ruleset castellan confirmed (digest 69a49db3de35, confirmed 5e1c0f2a0000): a rule was changed, added or deleted by hand"},
				{Node: "agent-2", Name: "reach", Status: engine.CheckFailed, Message: "could not be observed: ssh: cannot reach agent-2 (192.168.56.13:22) after 3 attempt(s): connection refused"},
			},
		},
	}
}

func TestVerifyGolden(t *testing.T) {
	v := verification()
	var b bytes.Buffer
	WriteVerify(&b, v, VerifyOptions{})
	golden(t, "verify.txt", b.Bytes())
	b.Reset()
	WriteVerify(&b, v, VerifyOptions{Problems: true})
	golden(t, "verify-problems.txt", b.Bytes())
	b.Reset()
	if err := WriteVerifyJSON(&b, v); err != nil {
		t.Fatal(err)
	}
	golden(t, "verify.json", b.Bytes())
	var back map[string]any
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || back["status"] != "failed" || back["counts"].(map[string]any)["drift"] != 3.0 {
		t.Errorf("JSON: %v %v", back, err)
	}

	ok := verification()
	ok.Checks, ok.Status = ok.Checks[:7], engine.CheckOK
	b.Reset()
	WriteVerify(&b, ok, VerifyOptions{})
	golden(t, "verify-ok.txt", b.Bytes())
}
