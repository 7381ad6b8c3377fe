package engine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"castellan/installer/agent"
	"castellan/installer/engine"
)

// TestNonceIsStableWithinASessionOnly: the same phase, purpose and node get
// the same nonce all session long (an Observe and the Plan that asks the
// same call), and any other phase, purpose, node or session another one.
func TestNonceIsStableWithinASessionOnly(t *testing.T) {
	f := newFixture(t, 2, engine.SessionConfig{})
	g := newFixture(t, 2, engine.SessionConfig{})
	a := f.session.View("identity").Nonce("n0", "quote")
	if len(a) != engine.NonceSize {
		t.Fatalf("nonce of %d bytes", len(a))
	}
	if b := f.session.View("identity").Nonce("n0", "quote"); !bytes.Equal(a, b) {
		t.Error("the same view asked twice got two nonces")
	}
	f.session.SetID("7") // a confirmed plan becomes the run: same session
	if b := f.session.View("identity").Nonce("n0", "quote"); !bytes.Equal(a, b) {
		t.Error("the nonce changed when the plan became a run")
	}
	others := map[string][]byte{
		"other node":    f.session.View("identity").Nonce("n1", "quote"),
		"other purpose": f.session.View("identity").Nonce("n0", "enrol"),
		"other phase":   f.session.View("mesh").Nonce("n0", "quote"),
		"other session": g.session.View("identity").Nonce("n0", "quote"),
		// Length prefixes: ("ab","c") and ("a","bc") differ.
		"shifted parts": f.session.View("identity").Nonce("te", "quo"),
	}
	for what, n := range others {
		if bytes.Equal(a, n) {
			t.Errorf("%s: same nonce", what)
		}
	}
}

// driftErr is a plan error that says a node departs from the record.
type driftErr struct{ msg string }

func (d driftErr) Error() string { return d.msg }
func (driftErr) Drift()          {}

// verifyingPhase adds a Verifier to a fakePhase.
type verifyingPhase struct {
	*fakePhase
	verify func(ctx context.Context, v *engine.View, p engine.Plan) ([]engine.Check, error)
}

func (p verifyingPhase) Verify(ctx context.Context, v *engine.View, pl engine.Plan) ([]engine.Check, error) {
	p.log.add(p.name + ".verify")
	return p.verify(ctx, v, pl)
}

// TestVerifyReportsDriftChecksAndFailures: a phase whose plan is empty is
// ok on every node; a planned change is drift; a DriftError from a plan is
// drift on that node and any other plan error a failed check; a Verifier's
// checks are added after its plan, in the same view, answered from the one
// observation exec per node; warnings become warning checks; an
// unreachable node is one failed check and nothing else; nothing is
// applied.
func TestVerifyReportsDriftChecksAndFailures(t *testing.T) {
	log := &callLog{}
	obs := readOp("x.observe")
	f := newFixture(t, 4, engine.SessionConfig{Parallelism: 4}, obs)
	f.nodes.SetUnreachable("n3", errors.New("connection refused"))
	quiet := &fakePhase{name: "quiet", log: log}
	changing := &fakePhase{name: "changing", log: log, plan: changeOn("n1")}
	refusing := &fakePhase{name: "refusing", log: log, plan: func(ctx context.Context, v *engine.View) (engine.Plan, error) {
		return engine.Plan{}, v.ForEachNode(ctx, []string{"n0", "n1", "n2"}, "look", func(_ context.Context, n string) error {
			switch n {
			case "n0":
				return driftErr{"n0's boot state changed"}
			case "n2":
				return errors.New("cannot read n2's disks")
			}
			return nil
		})
	}}
	checker := verifyingPhase{fakePhase: &fakePhase{name: "checker", log: log, observe: []agent.Handler{obs}}}
	checker.verify = func(ctx context.Context, v *engine.View, _ engine.Plan) ([]engine.Check, error) {
		var out []engine.Check
		for _, n := range v.NodeNames() {
			got, err := engine.Call(ctx, v, n, obs, echo{Node: n})
			if errors.As(err, new(*engine.NodeUnavailableError)) {
				continue
			}
			if err != nil || got.Node != n {
				return nil, fmt.Errorf("%s: %v %v", n, got, err)
			}
			st := engine.CheckOK
			if n == "n2" {
				st = engine.CheckDrift
			}
			out = append(out, engine.Check{Node: n, Name: "handshake", Status: st, Message: "handshake of " + n})
		}
		v.Warn("n1", "n1 has a software key")
		return out, nil
	}
	observingChecker := struct {
		observingPhase
		engine.Verifier
	}{observingPhase{checker.fakePhase}, checker}
	e := &engine.Engine{Phases: []engine.Phase{quiet, changing, refusing, observingChecker}}
	res := e.Verify(context.Background(), f.session, e.Phases)
	if res.Status != engine.CheckFailed {
		t.Errorf("status %s, want failed (n2 could not be checked, n3 not reached)", res.Status)
	}
	var got []string
	for _, c := range res.Checks {
		got = append(got, fmt.Sprintf("%s/%s/%s:%s", c.Phase, c.Node, c.Name, c.Status))
	}
	want := []string{
		"quiet/n0/plan:ok", "changing/n0/plan:ok", "refusing/n0/plan:drift", "checker/n0/handshake:ok",
		"quiet/n1/plan:ok", "changing/n1/do:drift", "refusing/n1/plan:ok", "checker/n1/handshake:ok", "checker/n1/warning:warning",
		"quiet/n2/plan:ok", "changing/n2/plan:ok", "refusing/n2/plan:failed", "checker/n2/handshake:drift",
		"/n3/reach:failed",
	}
	if !slices.Equal(got, want) {
		t.Errorf("checks\n got %q\nwant %q", got, want)
	}
	if strings.Contains(log.String(), "apply") || !strings.Contains(log.String(), "checker.plan checker.verify") {
		t.Errorf("calls %q: want every plan, the verifier after its plan, no apply", log)
	}
	for _, n := range []string{"n0", "n1", "n2", "n3"} {
		if got := f.nodes.Execs(n); got != 1 {
			t.Errorf("%s: %d execs, want 1 (the observation)", n, got)
		}
	}
	if last := res.Checks[len(res.Checks)-1]; last.Message != "could not be observed: connection refused" {
		t.Errorf("unreachable node: %q", last.Message)
	}
	if d := res.NodesWith(engine.CheckDrift); !slices.Equal(d, []string{"n0", "n1", "n2"}) {
		t.Errorf("drifted nodes %q", d)
	}

	// Without the failures, drift is the status; without drift, ok.
	g := newFixture(t, 2, engine.SessionConfig{})
	if r := (&engine.Engine{}).Verify(context.Background(), g.session, []engine.Phase{changing}); r.Status != engine.CheckDrift {
		t.Errorf("status %s, want drift", r.Status)
	}
	g = newFixture(t, 2, engine.SessionConfig{})
	if r := (&engine.Engine{}).Verify(context.Background(), g.session, []engine.Phase{quiet}); r.Status != engine.CheckOK || r.Count(engine.CheckOK) != 2 {
		t.Errorf("status %s, %d ok checks; want ok, 2", r.Status, r.Count(engine.CheckOK))
	}
}

// TestVerifyAPlanThatFailsWhole: a plan error that is not about nodes is
// one failed cluster-wide check, and the phase's Verifier is not asked.
func TestVerifyAPlanThatFailsWhole(t *testing.T) {
	log := &callLog{}
	p := verifyingPhase{fakePhase: &fakePhase{name: "p", log: log, plan: func(context.Context, *engine.View) (engine.Plan, error) {
		return engine.Plan{}, errors.New("the state repo is inconsistent")
	}}, verify: func(context.Context, *engine.View, engine.Plan) ([]engine.Check, error) { return nil, nil }}
	f := newFixture(t, 1, engine.SessionConfig{})
	res := (&engine.Engine{}).Verify(context.Background(), f.session, []engine.Phase{p})
	if res.Status != engine.CheckFailed || res.Checks[0].Node != "" || res.Checks[0].Message != "the state repo is inconsistent" {
		t.Errorf("result %+v", res)
	}
	if strings.Contains(log.String(), "verify") {
		t.Errorf("the verifier was asked after its plan failed: %s", log)
	}
}
