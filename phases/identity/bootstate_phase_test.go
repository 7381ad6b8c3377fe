package identity

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"

	"castellan/installer/engine"
	"castellan/installer/nodeid"
	"castellan/installer/profile"
	"castellan/phases/identity/swtpmtest"
)

// The tests of this file run boot state attestation through the engine:
// the nodes' transport is enginetest.FakeNodes (a fake: no SSH), and each
// node's operations are the REAL node-side code on a REAL swtpm with a
// synthesized firmware event log whose events were measured into it. Only
// the transport is fake.

// boot measures events into node's TPM and writes them as its event log.
func (c *swtpmCluster) boot(t *testing.T, node string, events []testEvent) {
	t.Helper()
	n := c.tpm(node)
	measure(t, n.rig, events)
	if err := os.WriteFile(n.log, eventLog(events), 0o600); err != nil {
		t.Fatal(err)
	}
}

// reboot restarts node's swtpm (PCRs reset) and boots it with events.
func (c *swtpmCluster) reboot(t *testing.T, node string, events []testEvent) {
	t.Helper()
	n := c.tpm(node)
	n.rig.reboot(t)
	c.attach(node, n.rig, "")
	c.boot(t, node, events)
}

func (c *swtpmCluster) baseline(t *testing.T, node string) *Baseline {
	t.Helper()
	data, ok := c.store.Files["identity/"+baselineName(node)]
	if !ok {
		t.Fatalf("no baseline of %s in the state repo", node)
	}
	var b Baseline
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	return &b
}

func (r *run) bootState(t *testing.T, node string) nodeid.BootState {
	t.Helper()
	raw, ok := r.session.Outputs()[nodeid.BootStateKey.String()][node]
	if !ok {
		t.Fatalf("no recorded boot state of %s: %v", node, r.session.Outputs())
	}
	var b nodeid.BootState
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBootStateRefusedThenAccepted: enrolment pins each node's boot state
// (with the event log's events); a no-op rerun matches it in the one exec
// per node; a PCR extended on one node (as tpm2_pcrextend does) makes the
// next run refuse that node, and only it, naming the PCR, saying the log
// does not explain it and how to accept, changing nothing; accepting it
// explicitly makes the new value the baseline and is recorded; a boot
// loader update is named event by event; a node whose identity was wiped
// is not re-pinned behind the user's back.
func TestBootStateRefusedThenAccepted(t *testing.T) {
	c := newSWTPMCluster(t)
	for _, n := range []string{"n1", "n2"} {
		c.attach(n, newRig(t, c.ca), "")
		c.boot(t, n, uefiBoot("grub 2.06-13"))
	}
	prof := c.profile("", "n1", "n2")
	r := c.apply(Phase{}, prof, nil, engine.Inputs{}, true)
	if r.planErr != nil || r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("enrolment: %v %+v", r.planErr, r.res)
	}
	for _, n := range []string{"n1", "n2"} {
		b := c.baseline(t, n)
		bs := r.bootState(t, n)
		if b.How != "enrolment" || b.Run != "1" || b.EventLog != "replayed" || len(b.PCRs) != 4 || bs.Result != "pinned" || bs.How != "enrolment" ||
			bs.Digest != BootDigest(b.PCRs) || bs.AKName != r.enrolment(t, n).AKName || !slices.Equal(bs.PCRs, attestedPCRs) {
			t.Errorf("%s: baseline %+v, recorded %+v", n, b, bs)
		}
		if !slices.ContainsFunc(b.Events, func(e BootEvent) bool { return e.PCR == 4 && e.Data == `\EFI\debian\grubx64.efi` }) {
			t.Errorf("%s: the baseline does not hold GRUB's event: %+v", n, b.Events)
		}
	}

	// A no-op rerun: the quote travels in the one exec per node.
	stored := maps(c.store)
	before := map[string]int{"n1": c.nodes.Execs("n1"), "n2": c.nodes.Execs("n2")}
	r = c.apply(Phase{}, prof, nil, engine.Inputs{}, true)
	if r.planErr != nil || len(r.changes()) != 0 || r.res.Outcome != engine.OutcomeUnchanged {
		t.Fatalf("rerun: %v %q %+v", r.planErr, r.changes(), r.res)
	}
	for _, n := range []string{"n1", "n2"} {
		if got := c.nodes.Execs(n) - before[n]; got != 1 {
			t.Errorf("%s: %d execs for a no-op plan and apply with attestation, want 1", n, got)
		}
		if bs := r.bootState(t, n); bs.Result != "matched" {
			t.Errorf("%s: recorded %+v", n, bs)
		}
	}
	if !equalMaps(maps(c.store), stored) {
		t.Fatal("a no-op rerun changed the state repo")
	}

	// Something extends PCR 4 on n1 after boot.
	cert := c.installed(t, "n1")
	swtpmtest.Extend(t, c.tpm("n1").rig.conn, 4, bytes.Repeat([]byte{0x42}, 32))
	for _, confirm := range []bool{true, false} {
		r = c.apply(Phase{}, prof, nil, engine.Inputs{}, confirm)
		var err error = r.planErr
		if !confirm {
			if r.res.Outcome != engine.OutcomeFailed {
				t.Fatalf("apply: %+v", r.res)
			}
			if len(r.res.NodeErrors) != 1 || r.res.NodeErrors["n1"] == "" {
				t.Errorf("node errors %v: want n1 only", r.res.NodeErrors)
			}
			err = errors.New(r.res.NodeErrors["n1"])
		} else {
			var changed *BootStateChangedError
			if !errors.As(err, &changed) || changed.Node != "n1" || len(changed.Changed) != 1 || changed.Changed[0].Index != 4 || !engine.IsDrift(err) {
				t.Fatalf("plan: %v", err)
			}
			var ne engine.NodeErrors
			if !errors.As(err, &ne) || len(ne) != 1 {
				t.Errorf("plan failed on %v, want n1 only", ne)
			}
		}
		for _, want := range []string{"node n1: its boot state changed since the baseline pinned by run 1", "PCR 4 (boot loader code) was ",
			"PCR 4: the event log does not replay to its value", "castellan apply --accept-boot-state n1", "Nothing was done to it"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("refusal does not say %q:\n%v", want, err)
			}
		}
		if !equalMaps(maps(c.store), stored) {
			t.Fatal("a refused run changed the state repo")
		}
		if !c.installed(t, "n1").Equal(cert) {
			t.Fatal("a refused run changed the node")
		}
	}

	// Accepted explicitly.
	var ins engine.Inputs
	engine.SetInput(&ins, nodeid.AcceptBootState, []string{"n1"})
	old := c.baseline(t, "n1")
	r = c.apply(Phase{}, prof, nil, ins, true)
	if r.planErr != nil || r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("accept: %v %+v", r.planErr, r.res)
	}
	nb := c.baseline(t, "n1")
	if got := r.changes(); len(got) != 1 || got[0] != "n1 accept-boot-state boot-state "+BootDigest(nb.PCRs) {
		t.Fatalf("plan %q", got)
	}
	bs := r.bootState(t, "n1")
	if bs.Result != "accepted" || bs.PreviousDigest != BootDigest(old.PCRs) || !slices.Equal(bs.Changed, []int{4}) || nb.How != "accepted" || nb.Run != "1" {
		t.Errorf("recorded %+v, baseline %+v", bs, nb)
	}
	if v, _ := nb.value(0); v != old.PCRs[0].SHA256 {
		t.Error("the accepted baseline changed PCR 0")
	}
	if r := c.apply(Phase{}, prof, nil, engine.Inputs{}, true); r.planErr != nil || len(r.changes()) != 0 {
		t.Fatalf("rerun after accepting: %v %q", r.planErr, r.changes())
	}

	// A GRUB update on n2 (a reboot): the refusal names the images.
	c.reboot(t, "n2", uefiBoot("grub 2.06-14"))
	r = c.apply(Phase{}, prof, nil, engine.Inputs{}, true)
	if r.planErr == nil || !strings.Contains(r.planErr.Error(), `PCR 4: new EV_EFI_BOOT_SERVICES_APPLICATION \EFI\debian\grubx64.efi (sha256 `) ||
		!strings.Contains(r.planErr.Error(), `gone EV_EFI_BOOT_SERVICES_APPLICATION \EFI\debian\grubx64.efi`) || strings.Contains(r.planErr.Error(), "node n1") {
		t.Fatalf("plan after a GRUB update on n2: %v", r.planErr)
	}

	// n2's identity is wiped and it is enrolled again: the new AK's quote
	// must still match the pinned baseline, which it does not; nothing is
	// issued. Accepted, it enrols.
	for _, f := range []string{AKFile, KeyFile, CertFile} {
		if err := os.Remove(c.tpm("n2").dir + "/" + f); err != nil {
			t.Fatal(err)
		}
	}
	recs := c.records(t)
	r = c.apply(Phase{}, prof, []string{"n2"}, engine.Inputs{}, false)
	if r.res.Outcome != engine.OutcomeFailed || !strings.Contains(r.res.NodeErrors["n2"], "its boot state changed") {
		t.Fatalf("enrolment against a changed boot state: %+v", r.res)
	}
	if got := c.records(t)["n2"]; got.CertSerial != recs["n2"].CertSerial {
		t.Fatal("a certificate was issued to a node whose boot state changed")
	}
	engine.SetInput(&ins, nodeid.AcceptBootState, []string{"n2"})
	r = c.apply(Phase{}, prof, []string{"n2"}, ins, true)
	if r.planErr != nil || r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("enrolment accepting the boot state: %v %+v", r.planErr, r.res)
	}
	if bs := r.bootState(t, "n2"); bs.Result != "accepted" || !slices.Equal(bs.Changed, []int{4}) {
		t.Errorf("recorded %+v", bs)
	}
	for _, n := range []string{"n1", "n2"} {
		noTransients(t, c.tpm(n).rig)
	}
}

// TestBootStatePinnedAtFirstRun: a node enrolled before castellan attested
// boot state (no baseline) gets one pinned by its next run, which says so;
// so do PCRs the profile adds to attestPCRs.
func TestBootStatePinnedAtFirstRun(t *testing.T) {
	c := newSWTPMCluster(t)
	c.attach("n1", newRig(t, c.ca), "")
	c.boot(t, "n1", uefiBoot("grub 2.06-13"))
	prof := c.profile("", "n1")
	if r := c.apply(Phase{}, prof, nil, engine.Inputs{}, false); r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("enrolment: %+v", r.res)
	}
	delete(c.store.Files, "identity/"+baselineName("n1"))
	r := c.apply(Phase{}, prof, nil, engine.Inputs{}, true)
	if r.planErr != nil || r.res.Outcome != engine.OutcomeOK || len(r.plans[0].Changes) != 1 {
		t.Fatalf("first attested run: %v %+v", r.planErr, r.res)
	}
	ch := r.plans[0].Changes[0]
	if ch.Action != string(ActionPinBootState) || !strings.Contains(ch.Summary, "enrolled before castellan attested boot state") {
		t.Errorf("change %+v", ch)
	}
	if b := c.baseline(t, "n1"); b.How != "first-attestation" || r.bootState(t, "n1").How != "first-attestation" {
		t.Errorf("baseline %+v", b)
	}
	wider := c.profile("{attestPCRs: [0, 2, 4, 7, 9]}", "n1")
	r = c.apply(Phase{}, wider, nil, engine.Inputs{}, true)
	if r.planErr != nil || len(r.plans[0].Changes) != 1 || !strings.Contains(r.plans[0].Changes[0].Summary, "pin PCRs 9 of the node's boot state") {
		t.Fatalf("added PCR: %v %+v", r.planErr, r.plans)
	}
	if b := c.baseline(t, "n1"); len(b.PCRs) != 5 || b.How != "added-pcrs" {
		t.Errorf("baseline %+v", b)
	}
	if r := c.apply(Phase{}, wider, nil, engine.Inputs{}, true); len(r.changes()) != 0 || r.planErr != nil {
		t.Fatalf("rerun: %v %q", r.planErr, r.changes())
	}
}

// TestForgedQuotesRefusedThroughTheEngine: n1's transport answers the
// run's quote with a quote n1 made in an earlier run (a replay), or with
// one made by another enrolled TPM: both are refused, as drift, naming why.
func TestForgedQuotesRefusedThroughTheEngine(t *testing.T) {
	c := newSWTPMCluster(t)
	c.attach("n1", newRig(t, c.ca), "")
	other := newRig(t, c.ca)
	if _, _, err := enrol(t, other, Policy{Cluster: "lab", Node: "other", EKRoots: ekRoots(t, c.ca)}); err != nil {
		t.Fatal(err)
	}
	c.attach("other", other, other.node.Dir)
	prof := c.profile("", "n1")
	if r := c.apply(Phase{}, prof, nil, engine.Inputs{}, false); r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("enrolment: %+v", r.res)
	}
	log := slog.New(slog.DiscardHandler)
	quoteBy := func(node string) func(json.RawMessage) (any, error) {
		h := c.host(node)
		for _, op := range h.Handlers() {
			if op.OpName() == OpQuote.Name {
				return func(in json.RawMessage) (any, error) { return op.Serve(context.Background(), in, log) }
			}
		}
		t.Fatal("no quote handler")
		return nil
	}
	// An earlier run's quote of n1.
	var replay any
	real := quoteBy("n1")
	c.nodes.Handle("n1", OpQuote, func(in json.RawMessage) (any, error) {
		q, err := real(in)
		replay = q
		return q, err
	})
	if r := c.apply(Phase{}, prof, nil, engine.Inputs{}, true); r.planErr != nil || replay == nil {
		t.Fatalf("rerun: %v", r.planErr)
	}
	for what, fn := range map[string]func(json.RawMessage) (any, error){
		"another nonce than this run's (a replayed quote)": func(json.RawMessage) (any, error) { return replay, nil },
		"a quote by another AK":                            quoteBy("other"),
	} {
		c.nodes.Handle("n1", OpQuote, fn)
		r := c.apply(Phase{}, prof, nil, engine.Inputs{}, true)
		var ae *AttestationError
		if !errors.As(r.planErr, &ae) || ae.Node != "n1" || !strings.Contains(r.planErr.Error(), what) || !engine.IsDrift(r.planErr) {
			t.Errorf("%s: %v", what, r.planErr)
		}
	}
}

// verify runs castellan verify's engine step for the identity phase.
func (c *swtpmCluster) verify(p *profile.Profile) engine.VerifyResult {
	s := engine.NewSession(engine.SessionConfig{ID: "verify", Profile: p, Nodes: p.Spec.Nodes, Access: c.nodes, Store: c.store})
	return (&engine.Engine{}).Verify(context.Background(), s, []engine.Phase{Phase{}})
}

func checksOf(res engine.VerifyResult) map[string]engine.Check {
	out := map[string]engine.Check{}
	for _, c := range res.Checks {
		out[c.Node+"/"+c.Name] = c
	}
	return out
}

// TestVerifyIdentity: castellan verify's identity checks, in one exec per
// node and writing nothing: all ok after enrolment (certificate, TPM key
// certified in this run, boot state against the baseline, trust anchors);
// a PCR extended on n1 is drift on n1 only; a certificate removed from n2
// is drift there (its renewal), its boot state still ok.
func TestVerifyIdentity(t *testing.T) {
	c := newSWTPMCluster(t)
	for _, n := range []string{"n1", "n2"} {
		c.attach(n, newRig(t, c.ca), "")
		c.boot(t, n, uefiBoot("grub 2.06-13"))
	}
	prof := c.profile("", "n1", "n2")
	if r := c.apply(Phase{}, prof, nil, engine.Inputs{}, false); r.res.Outcome != engine.OutcomeOK {
		t.Fatalf("enrolment: %+v", r.res)
	}
	stored := maps(c.store)
	before := c.nodes.Execs("n1")
	res := c.verify(prof)
	if res.Status != engine.CheckOK {
		t.Fatalf("verify after enrolment: %+v", res)
	}
	if got := c.nodes.Execs("n1") - before; got != 1 {
		t.Errorf("verify cost %d execs on n1, want 1", got)
	}
	got := checksOf(res)
	for _, k := range []string{"/trust", "n1/certificate", "n1/key", "n1/boot-state", "n2/certificate", "n2/key", "n2/boot-state"} {
		if got[k].Status != engine.CheckOK {
			t.Errorf("%s: %+v", k, got[k])
		}
	}
	if !strings.Contains(got["n1/boot-state"].Message, "PCRs 0, 2, 4, 7 match the baseline pinned by run 1") ||
		!strings.Contains(got["n1/key"].Message, "TPM-resident key") {
		t.Errorf("messages: %q, %q", got["n1/boot-state"].Message, got["n1/key"].Message)
	}

	swtpmtest.Extend(t, c.tpm("n1").rig.conn, 7, bytes.Repeat([]byte{7}, 32))
	if err := os.Remove(c.tpm("n2").dir + "/" + CertFile); err != nil {
		t.Fatal(err)
	}
	res = c.verify(prof)
	got = checksOf(res)
	if res.Status != engine.CheckDrift || got["n1/plan"].Status != engine.CheckDrift || !strings.Contains(got["n1/plan"].Message, "PCR 7 (Secure Boot policy)") ||
		got["n2/renew"].Status != engine.CheckDrift || !strings.Contains(got["n2/renew"].Message, "no certificate on the node") ||
		got["n2/certificate"].Status != "" || got["n2/boot-state"].Status != engine.CheckOK {
		t.Errorf("verify after drift: %+v", res.Checks)
	}
	if !equalMaps(maps(c.store), stored) {
		t.Fatal("verify changed the state repo")
	}
}
