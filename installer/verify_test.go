package installer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"castellan/installer/engine"
	"castellan/installer/report"
	"castellan/installer/ssh/sshtest"
	"castellan/phases/identity"
)

// verifyCLI runs the real castellan binary's verify inside the lab's client
// namespace and returns its exit code and output.
func verifyCLI(t *testing.T, lab *sshtest.Lab, prof string, args ...string) (int, string) {
	t.Helper()
	bin := buildCastellan(t)
	argv := append([]string{"netns", "exec", lab.ClientNS, bin, "verify", "-f", prof, "--agent-binary", buildAgent(t)}, args...)
	cmd := exec.Command("ip", argv...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String() + stderr.String()
	}
	t.Fatalf("castellan verify: %v %s", err, stderr.String())
	return 0, ""
}

// snapshot is what verify must leave as it was: the state repo's files and
// git directory, known_hosts, and the nodes' identity directories.
func snapshot(t *testing.T, dirs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range dirs {
		_ = filepath.Walk(d, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				data, _ := os.ReadFile(p)
				out[p] = string(data)
			}
			return nil
		})
	}
	return out
}

// TestVerifyOverRealSSH: castellan verify against real sshd nodes with the
// real agent (insecure-skip: no TPM here; the quote against swtpm is tested
// in phases/identity). After an apply it finds everything matching (the
// software keys and unattested boot states as warnings), exit code 0, in one
// exec per node, writing nothing anywhere; a node's certificate removed by
// hand is drift on that node, exit code 4, in text and JSON; a node whose
// host key known_hosts no longer holds could not be checked, exit code 1.
func TestVerifyOverRealSSH(t *testing.T) {
	lab := newLab(t, 2)
	prof := testCluster(t, lab, "", "")
	res, err := applyYes(t, testConfig(t, lab, nil), prof)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	idDirs := []string{lab.Nodes[0].PrivatePath(identity.DefaultDir), lab.Nodes[1].PrivatePath(identity.DefaultDir)}
	before := snapshot(t, append(idDirs, res.StateDir)...)

	v := NewVerify(testConfig(t, lab, nil))
	v.ProfilePath = prof
	rep, err := v.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != engine.CheckOK || rep.Count(engine.CheckDrift) != 0 || rep.Count(engine.CheckFailed) != 0 {
		var b bytes.Buffer
		report.WriteVerify(&b, rep, report.VerifyOptions{})
		t.Fatalf("verify after apply:\n%s", b.String())
	}
	for _, n := range lab.Nodes {
		if got := v.access.execCount(n.Name); got != 1 {
			t.Errorf("%s: %d execs for verify, want 1", n.Name, got)
		}
	}
	checks := map[string]engine.Check{}
	for _, c := range rep.Checks {
		checks[c.Node+"/"+c.Phase+"/"+c.Name] = c
	}
	for k, st := range map[string]engine.CheckStatus{
		"n0/identity/certificate": engine.CheckOK, "n0/identity/key": engine.CheckWarning, "n0/identity/boot-state": engine.CheckWarning,
		"/identity/trust": engine.CheckOK, "n1/preflight/plan": engine.CheckOK,
	} {
		if checks[k].Status != st {
			t.Errorf("%s: %+v, want %s", k, checks[k], st)
		}
	}
	if rep.StateCommit == "" {
		t.Error("the report does not say which state repo commit it checked against")
	}

	code, out := verifyCLI(t, lab, prof)
	t.Logf("castellan verify after apply (exit %d):\n%s", code, out)
	if code != 0 || !strings.Contains(out, "castellan verify: cluster test, 2 node(s)") || !strings.Contains(out, ": OK\n") ||
		!strings.Contains(out, "Everything matches the profile and the state repo.") {
		t.Errorf("castellan verify: exit %d\n%s", code, out)
	}
	if after := snapshot(t, append(idDirs, res.StateDir)...); !equalSnap(before, after) {
		t.Error("verify changed the state repo or a node's identity directory")
	}

	// By hand on n1: its certificate goes.
	if err := os.Remove(filepath.Join(idDirs[1], identity.CertFile)); err != nil {
		t.Fatal(err)
	}
	code, out = verifyCLI(t, lab, prof, "--problems")
	t.Logf("castellan verify --problems with n1's certificate removed (exit %d):\n%s", code, out)
	if code != 4 || !strings.Contains(out, ": DRIFT\n") || !strings.Contains(out, "n1    DRIFT   identity  renew key ") ||
		!strings.Contains(out, "no certificate on the node") || strings.Contains(out, "n0 ") || !strings.Contains(out, "Drift on n1") {
		t.Errorf("after removing n1's certificate: exit %d\n%s", code, out)
	}
	code, out = verifyCLI(t, lab, prof, "-o", "json")
	var doc struct {
		Status string         `json:"status"`
		Checks []engine.Check `json:"checks"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 4 || doc.Status != "drift" ||
		!containsCheck(doc.Checks, engine.Check{Phase: "identity", Node: "n1", Name: "renew", Status: engine.CheckDrift}) {
		t.Errorf("JSON after removing n1's certificate: exit %d %v\n%s", code, err, out)
	}

	// known_hosts loses n1: it cannot be checked, which wins over drift.
	khFile := lab.WriteKnownHosts(sshtest.KnownHostsOptions{Nodes: lab.Nodes[:1]})
	body, _ := os.ReadFile(prof)
	var lines []string
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "knownHosts:") {
			l = "    knownHosts: " + khFile
		}
		lines = append(lines, l)
	}
	if err := os.WriteFile(prof, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out = verifyCLI(t, lab, prof)
	if code != 1 || !strings.Contains(out, ": FAILED\n") || !strings.Contains(out, "could not be observed") {
		t.Errorf("an unknown host key: exit %d\n%s", code, out)
	}
}

func equalSnap(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func containsCheck(cs []engine.Check, want engine.Check) bool {
	for _, c := range cs {
		if c.Phase == want.Phase && c.Node == want.Node && c.Name == want.Name && c.Status == want.Status {
			return true
		}
	}
	return false
}
