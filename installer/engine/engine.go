// Package engine runs phases in order against a cluster's nodes. It knows the
// phase contract (Plan observes, Apply changes exactly what was planned) and
// nothing about any particular phase: phases register themselves with the
// installer, which hands the ordered list to the engine.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"
)

// Phase is one step of an install, e.g. preflight or mesh.
type Phase interface {
	// Name is short and stable: it appears in --only, events and the state repo.
	Name() string
	// Plan observes the nodes (read-only) and returns what Apply would change.
	// An empty plan means there is nothing to do.
	Plan(ctx context.Context, r *Run) (Plan, error)
	// Apply makes exactly the planned changes and verifies them. Every step
	// must be safe to repeat after a crash at any point.
	Apply(ctx context.Context, r *Run, p Plan) error
}

// Change is one thing a phase would change on one node (or the cluster when
// Node is empty).
type Change struct {
	Node    string `json:"node,omitempty"`
	Summary string `json:"summary"`
	// Detail is shown under the summary in verbose plans (e.g. a diff).
	Detail string `json:"detail,omitempty"`
}

// Plan is what a phase would change.
type Plan struct {
	Phase   string   `json:"phase"`
	Changes []Change `json:"changes,omitempty"`
	// Notes are observations worth showing although they change nothing.
	Notes []string `json:"notes,omitempty"`
}

// Empty reports whether the plan changes nothing.
func (p Plan) Empty() bool { return len(p.Changes) == 0 }

// ForNode returns the changes planned for one node.
func (p Plan) ForNode(node string) []Change {
	var out []Change
	for _, c := range p.Changes {
		if c.Node == node {
			out = append(out, c)
		}
	}
	return out
}

// Nodes returns the nodes with planned changes, in plan order.
func (p Plan) Nodes() []string {
	var out []string
	seen := map[string]bool{}
	for _, c := range p.Changes {
		if c.Node != "" && !seen[c.Node] {
			seen[c.Node] = true
			out = append(out, c.Node)
		}
	}
	return out
}

// ErrInterrupted is returned when a run was asked to stop between steps.
var ErrInterrupted = errors.New("run interrupted: stopped between steps as asked; rerun to continue")

// Outcome is how a node or phase ended.
type Outcome string

// Outcomes.
const (
	OutcomeOK          Outcome = "ok"
	OutcomeUnchanged   Outcome = "unchanged"
	OutcomeFailed      Outcome = "failed"
	OutcomeSkipped     Outcome = "skipped"
	OutcomeInterrupted Outcome = "interrupted"
)

// PhaseResult records how one phase went.
type PhaseResult struct {
	Name     string             `json:"name"`
	Outcome  Outcome            `json:"outcome"`
	Changes  []Change           `json:"changes,omitempty"`
	Nodes    map[string]Outcome `json:"nodes,omitempty"`
	Error    string             `json:"error,omitempty"`
	Duration time.Duration      `json:"duration"`
}

// Result records a whole run.
type Result struct {
	Phases   []PhaseResult `json:"phases"`
	Outcome  Outcome       `json:"outcome"`
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration"`
}

// Engine runs an ordered list of phases.
type Engine struct {
	Phases []Phase
	// Parallelism bounds how many nodes a phase works on at once (default 50).
	Parallelism int
	Sink        Sink
	Logger      *slog.Logger
}

// Select returns the engine's phases restricted to names (all when empty),
// in engine order; unknown names are an error listing the valid ones.
func (e *Engine) Select(names []string) ([]Phase, error) {
	if len(names) == 0 {
		return e.Phases, nil
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var out []Phase
	for _, p := range e.Phases {
		if want[p.Name()] {
			out = append(out, p)
			delete(want, p.Name())
		}
	}
	if len(want) > 0 {
		var unknown, valid []string
		for n := range want {
			unknown = append(unknown, n)
		}
		for _, p := range e.Phases {
			valid = append(valid, p.Name())
		}
		sort.Strings(unknown)
		return nil, fmt.Errorf("unknown phase %s; phases are: %s", strings.Join(unknown, ", "), strings.Join(valid, ", "))
	}
	return out, nil
}

// PlanAll plans every phase without changing anything. A phase whose plan
// fails is reported and the others are still planned.
func (e *Engine) PlanAll(ctx context.Context, r *Run, phases []Phase) ([]Plan, error) {
	r.init(e)
	var plans []Plan
	var errs []error
	for _, p := range phases {
		pr := r.phaseRun(p.Name())
		r.emit(Event{Phase: p.Name(), Step: "plan", Status: StatusStarted})
		start := time.Now()
		plan, err := p.Plan(ctx, pr)
		plan.Phase = p.Name()
		if err != nil {
			r.emit(Event{Phase: p.Name(), Step: "plan", Status: StatusFailed, Message: err.Error(), Elapsed: time.Since(start)})
			errs = append(errs, &PlanError{Phase: p.Name(), Err: err})
			continue
		}
		r.emit(Event{Phase: p.Name(), Step: "plan", Status: StatusDone, Message: planSummary(plan), Elapsed: time.Since(start)})
		plans = append(plans, plan)
		if ctx.Err() != nil {
			break
		}
	}
	return plans, errors.Join(errs...)
}

// PlanError is a phase that could not plan; PlanAll has reported it as an event.
type PlanError struct {
	Phase string
	Err   error
}

func (e *PlanError) Error() string { return fmt.Sprintf("planning %s: %v", e.Phase, e.Err) }
func (e *PlanError) Unwrap() error { return e.Err }

func planSummary(p Plan) string {
	if p.Empty() {
		return "nothing to do"
	}
	if n := len(p.Nodes()); n > 0 {
		return fmt.Sprintf("%d change(s) on %d node(s)", len(p.Changes), n)
	}
	return fmt.Sprintf("%d change(s)", len(p.Changes))
}

// Apply runs the phases in order: each is planned just before it is applied
// (earlier phases change what later ones observe) and applied only when its
// plan is not empty. It stops at the first failed phase. interrupt, when it
// is done, stops the run between steps; ctx cancels everything at once.
//
// confirmed are the plans a person approved (nil when nobody was asked). As
// long as no phase of this run has changed anything, a phase's fresh plan
// must be the confirmed one: otherwise the nodes changed while the prompt
// waited, and the run stops before applying what nobody saw. Once an earlier
// phase has applied, later plans may differ; they see what it did.
func (e *Engine) Apply(ctx, interrupt context.Context, r *Run, phases []Phase, confirmed []Plan) Result {
	r.init(e)
	r.interrupt = interrupt
	start := time.Now()
	res := Result{Outcome: OutcomeUnchanged}
	r.emit(Event{Status: StatusStarted, Message: fmt.Sprintf("%d phase(s) on %d node(s)", len(phases), len(r.Nodes))})
	for i, p := range phases {
		if err := r.Checkpoint(); err != nil {
			for _, rest := range phases[i:] {
				res.Phases = append(res.Phases, PhaseResult{Name: rest.Name(), Outcome: OutcomeSkipped})
			}
			res.Outcome, res.Error = OutcomeInterrupted, err.Error()
			break
		}
		var expect *Plan
		if confirmed != nil && res.Outcome == OutcomeUnchanged {
			expect = &Plan{Phase: p.Name()}
			for _, c := range confirmed {
				if c.Phase == p.Name() {
					expect = &c
				}
			}
		}
		pr := e.applyPhase(ctx, r, p, expect)
		res.Phases = append(res.Phases, pr)
		if pr.Outcome == OutcomeOK {
			res.Outcome = OutcomeOK
		}
		if pr.Outcome == OutcomeFailed || pr.Outcome == OutcomeInterrupted {
			res.Outcome, res.Error = pr.Outcome, fmt.Sprintf("phase %s: %s", pr.Name, pr.Error)
			for _, rest := range phases[i+1:] {
				res.Phases = append(res.Phases, PhaseResult{Name: rest.Name(), Outcome: OutcomeSkipped})
			}
			break
		}
	}
	res.Duration = time.Since(start)
	switch res.Outcome {
	case OutcomeFailed, OutcomeInterrupted:
		r.emit(Event{Status: StatusFailed, Message: res.Error, Elapsed: res.Duration})
	case OutcomeUnchanged:
		r.emit(Event{Status: StatusDone, Message: "nothing to do: every phase's plan was empty, no node was changed", Elapsed: res.Duration})
	default:
		r.emit(Event{Status: StatusDone, Message: "all phases done", Elapsed: res.Duration})
	}
	return res
}

func (e *Engine) applyPhase(ctx context.Context, r *Run, p Phase, expect *Plan) (res PhaseResult) {
	name := p.Name()
	pr := r.phaseRun(name)
	start := time.Now()
	res = PhaseResult{Name: name, Nodes: map[string]Outcome{}}
	defer func() {
		res.Duration = time.Since(start)
		for n, o := range pr.nodeOutcomes() {
			res.Nodes[n] = o
		}
		if len(res.Nodes) == 0 {
			res.Nodes = nil
		}
	}()
	fail := func(err error) PhaseResult {
		res.Outcome, res.Error = OutcomeFailed, err.Error()
		if interrupted(err) {
			res.Outcome = OutcomeInterrupted
		}
		r.emit(Event{Phase: name, Status: StatusFailed, Message: err.Error(), Elapsed: time.Since(start)})
		return res
	}
	r.emit(Event{Phase: name, Status: StatusStarted})
	plan, err := p.Plan(ctx, pr)
	if err != nil {
		return fail(fmt.Errorf("plan: %w", err))
	}
	plan.Phase = name
	if expect != nil && !samePlan(*expect, plan) {
		return fail(fmt.Errorf("the nodes changed since the plan was confirmed (it said %q, now %q); nothing of this phase was applied: review castellan plan and run again", planSummary(*expect), planSummary(plan)))
	}
	res.Changes = plan.Changes
	for _, note := range plan.Notes {
		r.emit(Event{Phase: name, Status: StatusInfo, Message: note})
	}
	if plan.Empty() {
		res.Outcome = OutcomeUnchanged
		r.emit(Event{Phase: name, Status: StatusSkipped, Message: "nothing to do", Elapsed: time.Since(start)})
		return res
	}
	for _, c := range plan.Changes {
		r.emit(Event{Phase: name, Node: c.Node, Step: "plan", Status: StatusInfo, Message: c.Summary})
	}
	if err := r.Checkpoint(); err != nil {
		return fail(err)
	}
	if err := p.Apply(ctx, pr, plan); err != nil {
		return fail(err)
	}
	res.Outcome = OutcomeOK
	r.emit(Event{Phase: name, Status: StatusDone, Message: planSummary(plan), Elapsed: time.Since(start)})
	return res
}

// samePlan reports whether two plans make the same changes in the same order.
func samePlan(a, b Plan) bool {
	if len(a.Changes) != len(b.Changes) {
		return false
	}
	for i := range a.Changes {
		if a.Changes[i].Node != b.Changes[i].Node || a.Changes[i].Summary != b.Changes[i].Summary {
			return false
		}
	}
	return true
}

// interrupted tells an interrupt (first Ctrl-C) or an abort (second Ctrl-C,
// which cancels the run's context) from a failure.
func interrupted(err error) bool {
	return errors.Is(err, ErrInterrupted) || errors.Is(err, context.Canceled)
}

// NodeErrors is the failure of some nodes in one ForEachNode call.
type NodeErrors map[string]error

func (ne NodeErrors) Error() string {
	names := make([]string, 0, len(ne))
	for n := range ne {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s: %v", n, ne[n]))
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return fmt.Sprintf("%d nodes failed:\n  %s", len(parts), strings.Join(parts, "\n  "))
}

// Unwrap lets errors.Is and errors.As look into every node's error.
func (ne NodeErrors) Unwrap() []error {
	out := make([]error, 0, len(ne))
	for _, err := range ne {
		out = append(out, err)
	}
	return out
}

// nodeOutcomes is the per-node result of one phase.
type nodeOutcomes struct {
	mu sync.Mutex
	m  map[string]Outcome
}

func (n *nodeOutcomes) set(node string, o Outcome) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.m == nil {
		n.m = map[string]Outcome{}
	}
	n.m[node] = o
}

// DefaultParallelism is how many nodes a phase works on at once by default:
// one SSH connection each, so it is cheap for the installer (measured: 50
// nodes' facts in about a second on 2 cores).
const DefaultParallelism = 50
