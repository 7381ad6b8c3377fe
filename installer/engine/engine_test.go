package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"castellan/installer/profile"
)

// fakePhase is a test double: a phase whose plan and apply are functions.
type fakePhase struct {
	name  string
	plan  func(ctx context.Context, r *Run) (Plan, error)
	apply func(ctx context.Context, r *Run, p Plan) error
	log   *callLog
}

type callLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *callLog) add(s string) {
	l.mu.Lock()
	l.calls = append(l.calls, s)
	l.mu.Unlock()
}

func (l *callLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.calls, " ")
}

func (f *fakePhase) Name() string { return f.name }

func (f *fakePhase) Plan(ctx context.Context, r *Run) (Plan, error) {
	f.log.add(f.name + ".plan")
	if f.plan == nil {
		return Plan{}, nil
	}
	return f.plan(ctx, r)
}

func (f *fakePhase) Apply(ctx context.Context, r *Run, p Plan) error {
	f.log.add(f.name + ".apply")
	if f.apply == nil {
		return nil
	}
	return f.apply(ctx, r, p)
}

func changeOn(nodes ...string) func(context.Context, *Run) (Plan, error) {
	return func(context.Context, *Run) (Plan, error) {
		var p Plan
		for _, n := range nodes {
			p.Changes = append(p.Changes, Change{Node: n, Summary: "do something"})
		}
		return p, nil
	}
}

func testRun(nodes int) *Run {
	cfg := RunConfig{ID: "run-1"}
	for i := range nodes {
		cfg.Nodes = append(cfg.Nodes, profile.Node{Name: fmt.Sprintf("n%d", i)})
	}
	return NewRun(cfg)
}

func TestApplyOrderAndEmptyPlans(t *testing.T) {
	log := &callLog{}
	rec := &Recorder{}
	e := &Engine{Sink: rec, Phases: []Phase{
		&fakePhase{name: "a", log: log, plan: changeOn("n0")},
		&fakePhase{name: "b", log: log}, // empty plan: never applied
		&fakePhase{name: "c", log: log, plan: changeOn("n1")},
	}}
	res := e.Apply(context.Background(), context.Background(), testRun(2), e.Phases, nil)
	if got, want := log.String(), "a.plan a.apply b.plan c.plan c.apply"; got != want {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if res.Outcome != OutcomeOK {
		t.Errorf("outcome = %s, want ok", res.Outcome)
	}
	outcomes := []Outcome{res.Phases[0].Outcome, res.Phases[1].Outcome, res.Phases[2].Outcome}
	if fmt.Sprint(outcomes) != "[ok unchanged ok]" {
		t.Errorf("phase outcomes = %v", outcomes)
	}
	var skipped bool
	for _, ev := range rec.Events() {
		if ev.Phase == "b" && ev.Status == StatusSkipped && ev.Message == "nothing to do" {
			skipped = true
		}
	}
	if !skipped {
		t.Error("no 'nothing to do' event for the empty phase")
	}
}

func TestApplyAllEmptyDoesNothingAndSaysSo(t *testing.T) {
	log := &callLog{}
	rec := &Recorder{}
	e := &Engine{Sink: rec, Phases: []Phase{&fakePhase{name: "a", log: log}, &fakePhase{name: "b", log: log}}}
	res := e.Apply(context.Background(), context.Background(), testRun(3), e.Phases, nil)
	if res.Outcome != OutcomeUnchanged {
		t.Errorf("outcome = %s, want unchanged", res.Outcome)
	}
	if strings.Contains(log.String(), "apply") {
		t.Errorf("something was applied: %s", log)
	}
	evs := rec.Events()
	last := evs[len(evs)-1]
	if last.Status != StatusDone || !strings.Contains(last.Message, "nothing to do") {
		t.Errorf("last event = %+v, want a run-level 'nothing to do'", last)
	}
}

func TestApplyStopsAtFailedPhase(t *testing.T) {
	log := &callLog{}
	e := &Engine{Phases: []Phase{
		&fakePhase{name: "a", log: log, plan: changeOn("n0", "n1"), apply: func(ctx context.Context, r *Run, p Plan) error {
			return r.ForEachNode(ctx, p.Nodes(), "work", func(ctx context.Context, node string) error {
				if node == "n1" {
					return errors.New("disk on fire")
				}
				return nil
			})
		}},
		&fakePhase{name: "b", log: log, plan: changeOn("n0")},
	}}
	res := e.Apply(context.Background(), context.Background(), testRun(2), e.Phases, nil)
	if res.Outcome != OutcomeFailed || !strings.Contains(res.Error, "n1: disk on fire") {
		t.Fatalf("result = %+v", res)
	}
	if strings.Contains(log.String(), "b.") {
		t.Errorf("phase b ran after a failed: %s", log)
	}
	if res.Phases[1].Outcome != OutcomeSkipped {
		t.Errorf("phase b outcome = %s, want skipped", res.Phases[1].Outcome)
	}
	if got := res.Phases[0].Nodes; got["n0"] != OutcomeOK || got["n1"] != OutcomeFailed {
		t.Errorf("node outcomes = %v", got)
	}
}

func TestForEachNodeBoundsParallelism(t *testing.T) {
	const limit, nodes = 3, 12
	var cur, peak atomic.Int32
	e := &Engine{Parallelism: limit}
	r := testRun(nodes)
	r.init(e)
	r = r.phaseRun("p")
	err := r.ForEachNode(context.Background(), r.NodeNames(), "step", func(ctx context.Context, node string) error {
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

// TestInterruptStopsBetweenSteps: an interrupt lets running steps finish, starts
// no new node and no later phase, and the result says interrupted.
func TestInterruptStopsBetweenSteps(t *testing.T) {
	interrupt, stop := context.WithCancel(context.Background())
	defer stop()
	log := &callLog{}
	var finished atomic.Int32
	e := &Engine{Parallelism: 1, Phases: []Phase{
		&fakePhase{name: "a", log: log, plan: changeOn("n0", "n1", "n2"), apply: func(ctx context.Context, r *Run, p Plan) error {
			return r.ForEachNode(ctx, p.Nodes(), "work", func(ctx context.Context, node string) error {
				if node == "n0" {
					stop() // Ctrl-C arrives while n0's step runs
				}
				time.Sleep(10 * time.Millisecond)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				finished.Add(1)
				return nil
			})
		}},
		&fakePhase{name: "b", log: log, plan: changeOn("n0")},
	}}
	res := e.Apply(context.Background(), interrupt, testRun(3), e.Phases, nil)
	if finished.Load() != 1 {
		t.Errorf("%d steps finished, want exactly the one that was running", finished.Load())
	}
	if res.Outcome != OutcomeInterrupted {
		t.Errorf("outcome = %s, want interrupted (%s)", res.Outcome, res.Error)
	}
	if strings.Contains(log.String(), "b.") {
		t.Errorf("phase b ran after the interrupt: %s", log)
	}
	if got := res.Phases[0].Nodes; got["n0"] != OutcomeOK || got["n1"] != OutcomeInterrupted {
		t.Errorf("node outcomes = %v", got)
	}
}

// TestCancelAbortsRunningSteps: cancelling ctx (a second Ctrl-C) reaches the
// running step at once.
func TestCancelAbortsRunningSteps(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{Phases: []Phase{
		&fakePhase{name: "a", log: &callLog{}, plan: changeOn("n0"), apply: func(ctx context.Context, r *Run, p Plan) error {
			return r.ForEachNode(ctx, p.Nodes(), "wait", func(ctx context.Context, node string) error {
				cancel()
				<-ctx.Done()
				return fmt.Errorf("waiting: %w", ctx.Err())
			})
		}},
	}}
	res := e.Apply(ctx, context.Background(), testRun(1), e.Phases, nil)
	if res.Outcome != OutcomeInterrupted || !strings.Contains(res.Error, "context canceled") {
		t.Errorf("result = %+v", res)
	}
	if got := res.Phases[0].Nodes["n0"]; got != OutcomeInterrupted {
		t.Errorf("node outcome = %s", got)
	}
}

// TestConfirmedPlanMustStillHold: when the nodes changed between the
// confirmation and the apply, nothing unconfirmed is applied; once an earlier
// phase has applied, later plans may differ from what was confirmed.
func TestConfirmedPlanMustStillHold(t *testing.T) {
	tests := []struct {
		name      string
		confirmed []Plan
		want      string
		outcome   Outcome
	}{
		{"same plans", []Plan{{Phase: "a", Changes: []Change{{Node: "n0", Summary: "do something"}}}, {Phase: "b"}}, "a.plan a.apply b.plan b.apply", OutcomeOK},
		{"first phase drifted", []Plan{{Phase: "a", Changes: []Change{{Node: "n0", Summary: "something else"}}}}, "a.plan", OutcomeFailed},
		{"confirmed nothing, now something", []Plan{{Phase: "a"}}, "a.plan", OutcomeFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log := &callLog{}
			e := &Engine{Phases: []Phase{
				&fakePhase{name: "a", log: log, plan: changeOn("n0")},
				&fakePhase{name: "b", log: log, plan: changeOn("n0")}, // after a applied: may differ from the confirmed (empty) plan
			}}
			res := e.Apply(context.Background(), context.Background(), testRun(1), e.Phases, tt.confirmed)
			if log.String() != tt.want || res.Outcome != tt.outcome {
				t.Errorf("calls %q outcome %s (%s); want %q %s", log, res.Outcome, res.Error, tt.want, tt.outcome)
			}
			if tt.outcome == OutcomeFailed && !strings.Contains(res.Error, "the nodes changed since the plan was confirmed") {
				t.Errorf("error = %q", res.Error)
			}
		})
	}
}

func TestPlanAllTouchesNothing(t *testing.T) {
	log := &callLog{}
	e := &Engine{Phases: []Phase{
		&fakePhase{name: "a", log: log, plan: changeOn("n0")},
		&fakePhase{name: "b", log: log, plan: func(context.Context, *Run) (Plan, error) { return Plan{}, errors.New("cannot see") }},
		&fakePhase{name: "c", log: log, plan: changeOn("n1")},
	}}
	plans, err := e.PlanAll(context.Background(), testRun(2), e.Phases)
	if got := log.String(); got != "a.plan b.plan c.plan" {
		t.Errorf("calls = %q", got)
	}
	if err == nil || !strings.Contains(err.Error(), "planning b: cannot see") {
		t.Errorf("err = %v", err)
	}
	if len(plans) != 2 || plans[0].Phase != "a" || plans[1].Phase != "c" {
		t.Errorf("plans = %+v", plans)
	}
}

func TestSelect(t *testing.T) {
	e := &Engine{Phases: []Phase{&fakePhase{name: "a"}, &fakePhase{name: "b"}, &fakePhase{name: "c"}}}
	tests := []struct {
		names   []string
		want    string
		wantErr string
	}{
		{nil, "a b c", ""},
		{[]string{"c", "a"}, "a c", ""},
		{[]string{"a", "x"}, "", "unknown phase x; phases are: a, b, c"},
	}
	for _, tt := range tests {
		got, err := e.Select(tt.names)
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("Select(%v) err = %v, want %q", tt.names, err, tt.wantErr)
			}
			continue
		}
		var names []string
		for _, p := range got {
			names = append(names, p.Name())
		}
		if strings.Join(names, " ") != tt.want {
			t.Errorf("Select(%v) = %v, want %s", tt.names, names, tt.want)
		}
	}
}

func TestRenderPaths(t *testing.T) {
	r := testRun(1)
	r.init(&Engine{})
	p := r.phaseRun("mesh")
	p.Render("n0", "etc/wireguard/../wg.conf", []byte("x"))
	p.Render("", "/policy.yaml", []byte("y"))
	if got := strings.Join(r.RenderedPaths(), " "); got != "cluster/mesh/policy.yaml n0/mesh/etc/wg.conf" {
		t.Errorf("rendered paths = %s", got)
	}
}
