package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/engine/enginetest"
	"castellan/installer/profile"
)

// fakePhase is a test double: a phase whose plan and apply are functions and
// whose observations are a list of read-only operations.
type fakePhase struct {
	name    string
	plan    func(ctx context.Context, v *engine.View) (engine.Plan, error)
	apply   func(ctx context.Context, r *engine.Run, p engine.Plan) error
	observe []agent.Handler
	log     *callLog
}

type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *callLog) add(s string) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.calls = append(l.calls, s)
	l.mu.Unlock()
}

func (l *callLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.calls, " ")
}

func (f *fakePhase) Name() string         { return f.name }
func (f *fakePhase) Ops() []agent.Handler { return f.observe }

func (f *fakePhase) Plan(ctx context.Context, v *engine.View) (engine.Plan, error) {
	f.log.add(f.name + ".plan")
	if f.plan == nil {
		return engine.Plan{}, nil
	}
	return f.plan(ctx, v)
}

func (f *fakePhase) Apply(ctx context.Context, r *engine.Run, p engine.Plan) error {
	f.log.add(f.name + ".apply")
	if f.apply == nil {
		return nil
	}
	return f.apply(ctx, r, p)
}

// observingPhase is a fakePhase that declares its observations.
type observingPhase struct{ *fakePhase }

func (o observingPhase) Observe(v *engine.View, node string) ([]agent.Request, error) {
	var out []agent.Request
	for _, h := range o.observe {
		r, err := agent.NewRequest(h, echo{Node: node})
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

type echo struct {
	Node string `json:"node"`
}

// readOp returns a read-only operation named name that echoes its input.
func readOp(name string) agent.Op[echo, echo] {
	return agent.Op[echo, echo]{Name: name, ReadOnly: true, Do: func(_ context.Context, in echo, _ *slog.Logger) (echo, error) { return in, nil }}
}

// writeOp returns an operation that changes the node.
func writeOp(name string) agent.Op[echo, echo] {
	return agent.Op[echo, echo]{Name: name, Do: func(_ context.Context, in echo, _ *slog.Logger) (echo, error) { return in, nil }}
}

func changeOn(nodes ...string) func(context.Context, *engine.View) (engine.Plan, error) {
	return func(context.Context, *engine.View) (engine.Plan, error) {
		var p engine.Plan
		for _, n := range nodes {
			p.Changes = append(p.Changes, engine.Change{Node: n, Action: "do", Summary: "do something"})
		}
		return p, nil
	}
}

type fixture struct {
	nodes   *enginetest.FakeNodes
	rec     *engine.Recorder
	session *engine.Session
}

func newFixture(t testing.TB, n int, cfg engine.SessionConfig, ops ...agent.Handler) *fixture {
	f := &fixture{nodes: enginetest.NewFakeNodes(ops...), rec: &engine.Recorder{}}
	cfg.ID = "1"
	for i := range n {
		cfg.Nodes = append(cfg.Nodes, profile.Node{Name: fmt.Sprintf("n%d", i)})
	}
	cfg.Access, cfg.Sink = f.nodes, f.rec
	if cfg.Store == nil {
		cfg.Store = enginetest.NewMemStore()
	}
	f.session = engine.NewSession(cfg)
	return f
}

func phases(ps ...*fakePhase) []engine.Phase {
	out := make([]engine.Phase, len(ps))
	for i, p := range ps {
		out[i] = p
	}
	return out
}

func TestApplyOrderAndEmptyPlans(t *testing.T) {
	log := &callLog{}
	f := newFixture(t, 2, engine.SessionConfig{})
	e := &engine.Engine{Phases: phases(
		&fakePhase{name: "a", log: log, plan: changeOn("n0")},
		&fakePhase{name: "b", log: log}, // empty plan: never applied
		&fakePhase{name: "c", log: log, plan: changeOn("n1")},
	)}
	res := e.Apply(context.Background(), f.session, e.Phases, nil)
	if got, want := log.String(), "a.plan a.apply b.plan c.plan c.apply"; got != want {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if res.Outcome != engine.OutcomeOK {
		t.Errorf("outcome = %s, want ok", res.Outcome)
	}
	outcomes := []engine.Outcome{res.Phases[0].Outcome, res.Phases[1].Outcome, res.Phases[2].Outcome}
	if fmt.Sprint(outcomes) != "[ok unchanged ok]" {
		t.Errorf("phase outcomes = %v", outcomes)
	}
	var skipped bool
	for _, ev := range f.rec.Events() {
		if ev.Phase == "b" && ev.Kind == engine.KindPhase && ev.Status == engine.StatusSkipped && ev.Message == "nothing to do" {
			skipped = true
		}
	}
	if !skipped {
		t.Error("no 'nothing to do' event for the empty phase")
	}
}

// TestEventsAreAProtocol: every event has a kind and a sequence number that
// counts from 1 without gaps, in the order the sink receives them; change
// events carry their change.
func TestEventsAreAProtocol(t *testing.T) {
	f := newFixture(t, 3, engine.SessionConfig{Parallelism: 3})
	e := &engine.Engine{Phases: phases(
		&fakePhase{name: "a", plan: changeOn("n0", "n1", "n2"), apply: func(ctx context.Context, r *engine.Run, p engine.Plan) error {
			return r.ForEachNode(ctx, p.Nodes(), "work", func(context.Context, string) error { return nil })
		}},
	)}
	e.Apply(context.Background(), f.session, e.Phases, nil)
	evs := f.rec.Events()
	changes := 0
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d", i, ev.Seq)
		}
		if ev.Kind == "" || ev.Status == "" || ev.Run != "1" {
			t.Errorf("event %+v lacks kind, status or run", ev)
		}
		if ev.Kind == engine.KindChange {
			changes++
			if ev.Change == nil || ev.Change.Action != "do" || ev.Change.Node != ev.Node {
				t.Errorf("change event without its change: %+v", ev)
			}
		}
	}
	if changes != 3 {
		t.Errorf("%d change events, want 3", changes)
	}
}

func TestApplyAllEmptyDoesNothingAndSaysSo(t *testing.T) {
	log := &callLog{}
	f := newFixture(t, 3, engine.SessionConfig{})
	e := &engine.Engine{Phases: phases(&fakePhase{name: "a", log: log}, &fakePhase{name: "b", log: log})}
	res := e.Apply(context.Background(), f.session, e.Phases, nil)
	if res.Outcome != engine.OutcomeUnchanged {
		t.Errorf("outcome = %s, want unchanged", res.Outcome)
	}
	if strings.Contains(log.String(), "apply") {
		t.Errorf("something was applied: %s", log)
	}
	evs := f.rec.Events()
	last := evs[len(evs)-1]
	if last.Kind != engine.KindRun || last.Status != engine.StatusDone || !strings.Contains(last.Message, "nothing to do") {
		t.Errorf("last event = %+v, want a run-level 'nothing to do'", last)
	}
}

// TestFailureIsReportedOnce: a node's error appears in full in exactly one
// event; the phase and run events name the node and refer to that event.
func TestFailureIsReportedOnce(t *testing.T) {
	log := &callLog{}
	f := newFixture(t, 2, engine.SessionConfig{})
	e := &engine.Engine{Phases: phases(
		&fakePhase{name: "a", log: log, plan: changeOn("n0", "n1"), apply: func(ctx context.Context, r *engine.Run, p engine.Plan) error {
			return r.ForEachNode(ctx, p.Nodes(), "work", func(ctx context.Context, node string) error {
				if node == "n1" {
					return errors.New("disk on fire\nsecond line of detail")
				}
				return nil
			})
		}},
		&fakePhase{name: "b", log: log, plan: changeOn("n0")},
	)}
	res := e.Apply(context.Background(), f.session, e.Phases, nil)
	if res.Outcome != engine.OutcomeFailed || res.Error != "phase a: failed on 1 node(s): n1" {
		t.Fatalf("result = %+v", res)
	}
	if res.NodeErrors["n1"] != "disk on fire\nsecond line of detail" {
		t.Errorf("node errors = %v", res.NodeErrors)
	}
	if strings.Contains(log.String(), "b.") {
		t.Errorf("phase b ran after a failed: %s", log)
	}
	if res.Phases[1].Outcome != engine.OutcomeSkipped {
		t.Errorf("phase b outcome = %s, want skipped", res.Phases[1].Outcome)
	}
	if got := res.Phases[0].Nodes; got["n0"] != engine.OutcomeOK || got["n1"] != engine.OutcomeFailed {
		t.Errorf("node outcomes = %v", got)
	}
	var full, refs int
	var fullSeq uint64
	for _, ev := range f.rec.Events() {
		if strings.Contains(ev.Message, "disk on fire") {
			full++
			fullSeq = ev.Seq
		}
	}
	for _, ev := range f.rec.Events() {
		if ev.Status == engine.StatusFailed && (ev.Kind == engine.KindPhase || ev.Kind == engine.KindRun) {
			if ev.Ref != fullSeq || !strings.Contains(ev.Message, "n1") && ev.Kind == engine.KindPhase {
				t.Errorf("failure event %+v does not refer to event %d", ev, fullSeq)
			}
			refs++
		}
	}
	if full != 1 || refs != 2 {
		t.Errorf("the error is in %d events (want 1) and referred to by %d (want 2)", full, refs)
	}
}

func TestForEachNodeBoundsParallelism(t *testing.T) {
	const limit, nodes = 3, 12
	var cur, peak atomic.Int32
	f := newFixture(t, nodes, engine.SessionConfig{Parallelism: limit})
	v := f.session.View("p")
	err := v.ForEachNode(context.Background(), v.NodeNames(), "step", func(ctx context.Context, node string) error {
		n := cur.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		cur.Add(-1)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if peak.Load() != limit {
		t.Errorf("peak parallelism = %d, want %d", peak.Load(), limit)
	}
}

// TestInterruptStopsBetweenSteps: an interrupt lets running steps finish,
// starts no new node and no later phase, and the result says interrupted.
func TestInterruptStopsBetweenSteps(t *testing.T) {
	interrupt, stop := context.WithCancel(context.Background())
	defer stop()
	log := &callLog{}
	var finished atomic.Int32
	f := newFixture(t, 3, engine.SessionConfig{Parallelism: 1, Interrupt: interrupt})
	e := &engine.Engine{Phases: phases(
		&fakePhase{name: "a", log: log, plan: changeOn("n0", "n1", "n2"), apply: func(ctx context.Context, r *engine.Run, p engine.Plan) error {
			return r.ForEachNode(ctx, p.Nodes(), "work", func(ctx context.Context, node string) error {
				if node == "n0" {
					stop() // Ctrl-C arrives while n0's step runs
				}
				time.Sleep(10 * time.Millisecond)
				finished.Add(1)
				return nil
			})
		}},
		&fakePhase{name: "b", log: log, plan: changeOn("n0")},
	)}
	res := e.Apply(context.Background(), f.session, e.Phases, nil)
	if finished.Load() != 1 {
		t.Errorf("%d steps finished, want exactly the one that was running", finished.Load())
	}
	if res.Outcome != engine.OutcomeInterrupted {
		t.Errorf("outcome = %s, want interrupted (%s)", res.Outcome, res.Error)
	}
	if strings.Contains(log.String(), "b.") {
		t.Errorf("phase b ran after the interrupt: %s", log)
	}
	if got := res.Phases[0].Nodes; got["n0"] != engine.OutcomeOK || got["n1"] != engine.OutcomeInterrupted || got["n2"] != engine.OutcomeInterrupted {
		t.Errorf("node outcomes = %v", got)
	}
}

// TestInterruptStopsPlanning: planning honours the interrupt too: after it,
// no new node is started (a 20,000-node plan must not go on for seconds).
func TestInterruptStopsPlanning(t *testing.T) {
	interrupt, stop := context.WithCancel(context.Background())
	defer stop()
	var started atomic.Int32
	f := newFixture(t, 2000, engine.SessionConfig{Parallelism: 4, Interrupt: interrupt})
	e := &engine.Engine{Phases: phases(&fakePhase{name: "a", plan: func(ctx context.Context, v *engine.View) (engine.Plan, error) {
		return engine.Plan{}, v.ForEachNode(ctx, v.NodeNames(), "look", func(context.Context, string) error {
			if started.Add(1) == 10 {
				stop()
			}
			time.Sleep(time.Millisecond)
			return nil
		})
	}})}
	_, err := e.PlanAll(context.Background(), f.session, e.Phases)
	if !errors.Is(err, engine.ErrInterrupted) {
		t.Errorf("err = %v, want interrupted", err)
	}
	// The 10th node stops the run; at most the nodes already holding one
	// of the 4 slots can have started besides.
	if n := started.Load(); n > 10+4 {
		t.Errorf("%d nodes started, want at most 14", n)
	}
	for _, ev := range f.rec.Events() {
		if ev.Kind == engine.KindStep && ev.Status == engine.StatusInterrupted {
			t.Errorf("an interrupted node got an event of its own: %+v", ev)
		}
	}
}

// TestCancelAbortsRunningSteps: cancelling ctx (a second Ctrl-C) reaches the
// running step at once, and the aborted node is not reported as a failure.
func TestCancelAbortsRunningSteps(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f := newFixture(t, 1, engine.SessionConfig{})
	e := &engine.Engine{Phases: phases(
		&fakePhase{name: "a", plan: changeOn("n0"), apply: func(ctx context.Context, r *engine.Run, p engine.Plan) error {
			return r.ForEachNode(ctx, p.Nodes(), "wait", func(ctx context.Context, node string) error {
				cancel()
				<-ctx.Done()
				return fmt.Errorf("waiting: %w", ctx.Err())
			})
		}},
	)}
	res := e.Apply(ctx, f.session, e.Phases, nil)
	if res.Outcome != engine.OutcomeInterrupted || res.Phases[0].Nodes["n0"] != engine.OutcomeInterrupted {
		t.Errorf("result = %+v", res)
	}
	for _, ev := range f.rec.Events() {
		if ev.Status == engine.StatusFailed {
			t.Errorf("abort reported as a failure: %+v", ev)
		}
	}
}

// TestConfirmedPlanMustStillHold: when the nodes changed between the
// confirmation and the apply, nothing unconfirmed is applied; the check
// compares actions and targets, not wording; once an earlier phase has
// applied, later plans may differ from what was confirmed.
func TestConfirmedPlanMustStillHold(t *testing.T) {
	tests := []struct {
		name      string
		confirmed []engine.Plan
		want      string
		outcome   engine.Outcome
	}{
		{"same plans", []engine.Plan{{Phase: "a", Changes: []engine.Change{{Node: "n0", Action: "do", Summary: "do something"}}}, {Phase: "b"}}, "a.plan a.apply b.plan b.apply", engine.OutcomeOK},
		{"same action, other words", []engine.Plan{{Phase: "a", Changes: []engine.Change{{Node: "n0", Action: "do", Summary: "reworded"}}}}, "a.plan a.apply b.plan b.apply", engine.OutcomeOK},
		{"other action", []engine.Plan{{Phase: "a", Changes: []engine.Change{{Node: "n0", Action: "undo", Summary: "do something"}}}}, "a.plan", engine.OutcomeFailed},
		{"confirmed nothing, now something", []engine.Plan{{Phase: "a"}}, "a.plan", engine.OutcomeFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log := &callLog{}
			f := newFixture(t, 1, engine.SessionConfig{})
			e := &engine.Engine{Phases: phases(
				&fakePhase{name: "a", log: log, plan: changeOn("n0")},
				&fakePhase{name: "b", log: log, plan: changeOn("n0")}, // after a applied: may differ from the confirmed plan
			)}
			res := e.Apply(context.Background(), f.session, e.Phases, tt.confirmed)
			if log.String() != tt.want || res.Outcome != tt.outcome {
				t.Errorf("calls %q outcome %s (%s); want %q %s", log, res.Outcome, res.Error, tt.want, tt.outcome)
			}
			if tt.outcome == engine.OutcomeFailed && !strings.Contains(res.Error, "the nodes changed since the plan was confirmed") {
				t.Errorf("error = %q", res.Error)
			}
		})
	}
}

// TestPlanIsReadOnly: through the View a plan gets, an operation that changes
// the node is refused before it reaches the node.
func TestPlanIsReadOnly(t *testing.T) {
	write := writeOp("x.write")
	f := newFixture(t, 1, engine.SessionConfig{}, write)
	e := &engine.Engine{Phases: phases(&fakePhase{name: "a", plan: func(ctx context.Context, v *engine.View) (engine.Plan, error) {
		_, err := engine.Call(ctx, v, "n0", write, echo{})
		return engine.Plan{}, err
	}})}
	_, err := e.PlanAll(context.Background(), f.session, e.Phases)
	if err == nil || !strings.Contains(err.Error(), "cannot call x.write while planning") {
		t.Errorf("err = %v", err)
	}
	if calls := f.nodes.Calls(); len(calls) != 0 {
		t.Errorf("the node saw %v", calls)
	}
}

// TestOneExecPerNode: every phase's observations of a node travel in one
// exec; a no-op rerun (plan for the prompt, then apply) costs one exec per
// node; after a phase changes a node, the next phase's observations of it
// cost one more exec there, and nowhere else.
func TestOneExecPerNode(t *testing.T) {
	a, b, c := readOp("a.look"), readOp("b.look"), readOp("c.look")
	write := writeOp("a.write")
	var seen sync.Map
	look := func(name string, op agent.Op[echo, echo]) *fakePhase {
		return &fakePhase{name: name, observe: []agent.Handler{op}, plan: func(ctx context.Context, v *engine.View) (engine.Plan, error) {
			return engine.Plan{}, v.ForEachNode(ctx, v.NodeNames(), "look", func(ctx context.Context, node string) error {
				out, err := engine.Call(ctx, v, node, op, echo{Node: node})
				if err == nil && out.Node != node {
					err = fmt.Errorf("answer for %s", out.Node)
				}
				seen.Store(name+node, true)
				return err
			})
		}}
	}
	ps := []engine.Phase{observingPhase{look("a", a)}, observingPhase{look("b", b)}, observingPhase{look("c", c)}}
	f := newFixture(t, 3, engine.SessionConfig{}, a, b, c, write)
	e := &engine.Engine{Phases: ps}
	plans, err := e.PlanAll(context.Background(), f.session, ps)
	if err != nil {
		t.Fatal(err)
	}
	res := e.Apply(context.Background(), f.session, ps, plans)
	if res.Outcome != engine.OutcomeUnchanged {
		t.Fatalf("result %+v", res)
	}
	for _, n := range []string{"n0", "n1", "n2"} {
		if got := f.nodes.Execs(n); got != 1 {
			t.Errorf("%s: %d execs for a no-op plan and apply, want 1", n, got)
		}
	}

	// Now phase a changes n1: b's and c's observations of n1 are fetched
	// again, in one exec; n0 and n2 cost nothing more.
	f2 := newFixture(t, 3, engine.SessionConfig{}, a, b, c, write)
	pa := look("a", a)
	pa.plan = changeOn("n1")
	pa.apply = func(ctx context.Context, r *engine.Run, p engine.Plan) error {
		_, err := engine.Call(ctx, r, "n1", write, echo{Node: "n1"})
		return err
	}
	ps = []engine.Phase{observingPhase{pa}, observingPhase{look("b", b)}, observingPhase{look("c", c)}}
	res = e.Apply(context.Background(), f2.session, ps, nil)
	if res.Outcome != engine.OutcomeOK {
		t.Fatalf("result %+v", res)
	}
	want := map[string]int{"n0": 1, "n1": 3, "n2": 1} // observe, write, observe again
	for n, w := range want {
		if got := f2.nodes.Execs(n); got != w {
			t.Errorf("%s: %d execs, want %d", n, got, w)
		}
	}
}

// TestUnavailableNodeIsNotTriedAgain: a node that cannot be observed is
// reported once, in full, and every phase refers to that report.
func TestUnavailableNodeIsNotTriedAgain(t *testing.T) {
	op := readOp("a.look")
	f := newFixture(t, 2, engine.SessionConfig{}, op)
	f.nodes.SetUnreachable("n1", errors.New("ssh: cannot reach n1 (10.0.0.2:22) after 4 attempt(s): connection refused"))
	var ps []engine.Phase
	for _, name := range []string{"a", "b", "c"} {
		ps = append(ps, observingPhase{&fakePhase{name: name, observe: []agent.Handler{op}, plan: func(ctx context.Context, v *engine.View) (engine.Plan, error) {
			return engine.Plan{}, v.ForEachNode(ctx, v.NodeNames(), "look", func(ctx context.Context, node string) error {
				_, err := engine.Call(ctx, v, node, op, echo{Node: node})
				return err
			})
		}}})
	}
	_, err := (&engine.Engine{Phases: ps}).PlanAll(context.Background(), f.session, ps)
	if err == nil {
		t.Fatal("plan succeeded with an unreachable node")
	}
	if got := f.nodes.Execs("n1"); got != 1 {
		t.Errorf("n1 was tried %d times, want once", got)
	}
	full := 0
	for _, ev := range f.rec.Events() {
		if strings.Contains(ev.Message, "connection refused") {
			full++
		}
	}
	if full != 1 {
		t.Errorf("the error was printed %d times, want once", full)
	}
}

// TestNodeFailureOutsidePhasesFailsTheRun: a node that cannot be reached,
// in a run whose phases plan nothing on nodes (as --only netpol), makes the
// plan fail and the run failed: it is not "unchanged", its exit code is
// not 0, and nothing is applied, with or without a confirmed plan.
func TestNodeFailureOutsidePhasesFailsTheRun(t *testing.T) {
	op := readOp("a.look")
	f := newFixture(t, 2, engine.SessionConfig{}, op)
	f.nodes.SetUnreachable("n1", errors.New("ssh: cannot reach n1 (10.0.0.2:22) after 4 attempt(s): connection refused"))
	applied := false
	ps := []engine.Phase{observingPhase{&fakePhase{name: "a", observe: []agent.Handler{op}, plan: func(context.Context, *engine.View) (engine.Plan, error) {
		return engine.Plan{Changes: []engine.Change{{Action: "apply-to-cluster", Summary: "a change on no node"}}}, nil
	}, apply: func(context.Context, *engine.Run, engine.Plan) error {
		applied = true
		return nil
	}}}}
	e := &engine.Engine{Phases: ps}
	_, err := e.PlanAll(context.Background(), f.session, ps)
	var nf *engine.NodesFailedError
	if !errors.As(err, &nf) || !slices.Equal(nf.Nodes, []string{"n1"}) {
		t.Fatalf("plan with n1 unreachable: %v", err)
	}
	res := e.Apply(context.Background(), f.session, ps, nil)
	if res.Outcome != engine.OutcomeFailed || !strings.Contains(res.Error, "failed on 1 node(s): n1") || res.NodeErrors["n1"] == "" {
		t.Errorf("apply with n1 unreachable: %s %q %v", res.Outcome, res.Error, res.NodeErrors)
	}
	// Without a confirmed plan (--yes), as with one: nothing is applied.
	if applied || len(res.Phases) != 1 || res.Phases[0].Outcome != engine.OutcomeSkipped {
		t.Errorf("apply with n1 unreachable applied %v, phases %+v; want nothing applied, a skipped", applied, res.Phases)
	}
}

// TestOutputsBelongToTheirPhase: only the owner publishes under a key; later
// phases read it; recorded outputs reach the run's record.
func TestOutputsBelongToTheirPhase(t *testing.T) {
	key := engine.NewKey[string]("a", "answer", true)
	secretKey := engine.NewKey[string]("a", "token", false)
	f := newFixture(t, 1, engine.SessionConfig{})
	var got string
	var foreign error
	e := &engine.Engine{Phases: phases(
		&fakePhase{name: "a", plan: func(_ context.Context, v *engine.View) (engine.Plan, error) {
			if err := engine.Publish(v, secretKey, "n0", "not recorded"); err != nil {
				return engine.Plan{}, err
			}
			return engine.Plan{}, engine.Publish(v, key, "n0", "42")
		}},
		&fakePhase{name: "b", plan: func(_ context.Context, v *engine.View) (engine.Plan, error) {
			got, _ = engine.Lookup(v, key, "n0")
			foreign = engine.Publish(v, key, "n0", "43")
			return engine.Plan{}, nil
		}},
	)}
	e.Apply(context.Background(), f.session, e.Phases, nil)
	if got != "42" {
		t.Errorf("b read %q", got)
	}
	if foreign == nil || !strings.Contains(foreign.Error(), `phase "b" cannot publish a.answer`) {
		t.Errorf("publishing another phase's output: %v", foreign)
	}
	out := f.session.Outputs()
	if string(out["a.answer"]["n0"]) != `"42"` || out["a.token"] != nil {
		t.Errorf("recorded outputs = %s", out)
	}
}

// TestStoreIsScopedToThePhase: a phase writes secrets and data under its own
// name and reads others'.
func TestStoreIsScopedToThePhase(t *testing.T) {
	store := enginetest.NewMemStore()
	f := newFixture(t, 1, engine.SessionConfig{Store: store})
	e := &engine.Engine{Phases: phases(
		&fakePhase{name: "a", plan: changeOn("n0"), apply: func(_ context.Context, r *engine.Run, _ engine.Plan) error {
			if err := r.PutSecret("key", []byte("s3cret")); err != nil {
				return err
			}
			return r.PutData("addr", []byte("10.0.0.1"))
		}},
		&fakePhase{name: "b", plan: func(_ context.Context, v *engine.View) (engine.Plan, error) {
			d, ok, err := v.DataOf("a", "addr")
			if err != nil || !ok || string(d) != "10.0.0.1" {
				return engine.Plan{}, fmt.Errorf("b reads a's data: %q %v %v", d, ok, err)
			}
			if _, ok, _ := v.Data("addr"); ok {
				return engine.Plan{}, errors.New("b's own data should be empty")
			}
			return engine.Plan{}, nil
		}},
	)}
	res := e.Apply(context.Background(), f.session, e.Phases, nil)
	if res.Outcome != engine.OutcomeOK {
		t.Fatalf("%+v", res)
	}
	if got := strings.Join(store.Names(), ","); got != "data a/addr,secret a/key" {
		t.Errorf("store holds %s", got)
	}
}

func TestSelect(t *testing.T) {
	e := &engine.Engine{Phases: phases(&fakePhase{name: "a"}, &fakePhase{name: "b"}, &fakePhase{name: "c"})}
	tests := []struct {
		names   []string
		want    string
		wantErr string
	}{
		{nil, "a b c", ""},
		{[]string{"c", "a"}, "a c", ""},
		{[]string{"a", "x"}, "", "unknown phase x; phases are: a, b, c"},
		{[]string{}, "", "no phase selected; phases are: a, b, c"},
		{[]string{""}, "", "empty phase name; phases are: a, b, c"},
	}
	for _, tt := range tests {
		got, err := e.Select(tt.names)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("Select(%q) err = %v, want %q", tt.names, err, tt.wantErr)
			}
			continue
		}
		if names := strings.Join(engine.PhaseNames(got), " "); names != tt.want {
			t.Errorf("Select(%v) = %v, want %s", tt.names, names, tt.want)
		}
	}
}

func TestRenderPaths(t *testing.T) {
	f := newFixture(t, 1, engine.SessionConfig{})
	r := f.session.Run("mesh")
	r.Render("n0", "etc/wireguard/../wg.conf", []byte("x"))
	r.Render("", "/policy.yaml", []byte("y"))
	if got := strings.Join(f.session.RenderedPaths(), " "); got != "cluster/mesh/policy.yaml n0/mesh/etc/wg.conf" {
		t.Errorf("rendered paths = %s", got)
	}
}

func TestChangeData(t *testing.T) {
	type disk struct{ Device string }
	c := engine.NewChange("n0", "format", "/dev/vdb", "format /dev/vdb", disk{"/dev/vdb"})
	data, _ := json.Marshal(c)
	var back engine.Change
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	d, err := engine.ChangeData[disk](back)
	if err != nil || d.Device != "/dev/vdb" {
		t.Errorf("ChangeData = %+v, %v", d, err)
	}
	if _, err := engine.ChangeData[disk](engine.Change{Action: "x"}); err == nil {
		t.Error("no error for a change without data")
	}
}

// TestCallTimedFromObservation: an answer from the run's observation comes
// with the timing of the exec that produced it (a phase measures a node's
// clock offset with it), not a zero or the time of the lookup.
func TestCallTimedFromObservation(t *testing.T) {
	op := readOp("a.look")
	f := newFixture(t, 1, engine.SessionConfig{}, op)
	var timing engine.Timing
	var callDone time.Time
	p := observingPhase{&fakePhase{name: "a", observe: []agent.Handler{op}, plan: func(ctx context.Context, v *engine.View) (engine.Plan, error) {
		time.Sleep(20 * time.Millisecond)
		_, tm, err := engine.CallTimed(ctx, v, "n0", op, echo{Node: "n0"})
		timing, callDone = tm, time.Now()
		return engine.Plan{}, err
	}}}
	start := time.Now()
	if _, err := (&engine.Engine{Phases: []engine.Phase{p}}).PlanAll(context.Background(), f.session, []engine.Phase{p}); err != nil {
		t.Fatal(err)
	}
	if f.nodes.Execs("n0") != 1 {
		t.Fatalf("%d execs", f.nodes.Execs("n0"))
	}
	if timing.Sent.Before(start) || callDone.Sub(timing.Sent) < 20*time.Millisecond {
		t.Errorf("timing %+v is not the observation exec's (started %v, answered at %v)", timing, start, callDone)
	}
}
