// Package engine runs phases in order against a cluster's nodes. It knows the
// phase contract (Plan observes through a read-only View, Apply changes
// exactly what was planned through a Run) and nothing about any particular
// phase: the installer hands it the ordered list.
//
// Cost model: before planning, the engine collects every phase's
// observations of a node (Observer) and sends them in one agent exec per
// node; plans read their answers. A no-op rerun therefore costs one SSH
// connection and one exec per node. After a phase changes a node, the next
// phase's observations of that node are fetched again, in one exec.
package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"castellan/installer/agent"
)

// Engine runs an ordered list of phases.
type Engine struct {
	Phases []Phase
}

// Select returns the engine's phases restricted to names (all when names is
// nil), in engine order. Unknown names, and an empty selection, are errors
// listing the valid ones.
func (e *Engine) Select(names []string) ([]Phase, error) {
	if names == nil {
		return e.Phases, nil
	}
	valid := make([]string, 0, len(e.Phases))
	for _, p := range e.Phases {
		valid = append(valid, p.Name())
	}
	want := map[string]bool{}
	for _, n := range names {
		if strings.TrimSpace(n) == "" {
			return nil, fmt.Errorf("empty phase name; phases are: %s", strings.Join(valid, ", "))
		}
		want[n] = true
	}
	if len(want) == 0 {
		return nil, fmt.Errorf("no phase selected; phases are: %s", strings.Join(valid, ", "))
	}
	var out []Phase
	for _, p := range e.Phases {
		if want[p.Name()] {
			out = append(out, p)
			delete(want, p.Name())
		}
	}
	if len(want) > 0 {
		var unknown []string
		for n := range want {
			unknown = append(unknown, n)
		}
		sort.Strings(unknown)
		return nil, fmt.Errorf("unknown phase %s; phases are: %s", strings.Join(unknown, ", "), strings.Join(valid, ", "))
	}
	return out, nil
}

// PhaseResult records how one phase went.
type PhaseResult struct {
	Name    string             `json:"name"`
	Outcome Outcome            `json:"outcome"`
	Changes []Change           `json:"changes,omitempty"`
	Nodes   map[string]Outcome `json:"nodes,omitempty"`
	// Error says why the phase failed, briefly; a node's error in full is in
	// Result.NodeErrors.
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration"`
}

// Result records a whole run.
type Result struct {
	Phases  []PhaseResult `json:"phases"`
	Outcome Outcome       `json:"outcome"`
	Error   string        `json:"error,omitempty"`
	// NodeErrors holds each failed node's first error, in full.
	NodeErrors map[string]string `json:"nodeErrors,omitempty"`
	Duration   time.Duration     `json:"duration"`
}

// observe makes sure every targeted, available node has answered the
// observations of phases: nodes whose observation is complete cost nothing;
// the others get one agent exec. A node that cannot be observed is marked
// unavailable for the rest of the session.
func (e *Engine) observe(ctx context.Context, s *Session, phases []Phase) {
	need := map[string][]agent.Request{}
	var nodes []string
	for _, node := range s.NodeNames() {
		if s.isUnavailable(node) {
			continue
		}
		reqs, err := observations(s, phases, node)
		if err != nil {
			s.markUnavailable(node, StepObserve, err)
			continue
		}
		missing, ask := s.missing(node, reqs)
		if ask {
			need[node] = missing
			nodes = append(nodes, node)
		}
	}
	if len(nodes) == 0 {
		return
	}
	v := s.View("")
	err := v.ForEachNode(ctx, nodes, StepObserve, func(ctx context.Context, node string) error {
		var resps []agent.Response
		timing, err := timed(func() error {
			var err error
			resps, err = s.cfg.Access.Batch(ctx, node, need[node])
			return err
		})
		if err != nil {
			return err
		}
		st, err := s.cfg.Access.Agent(ctx, node)
		if err != nil {
			return err
		}
		s.storeObservation(node, st.Installed, need[node], resps, timing)
		return nil
	})
	var ne NodeErrors
	if errors.As(err, &ne) {
		for node, nerr := range ne {
			if !interrupted(nerr) {
				s.markUnavailable(node, "", nerr)
			}
		}
	}
}

// observations are the requests of every Observer phase for node, without
// duplicates.
func observations(s *Session, phases []Phase, node string) ([]agent.Request, error) {
	var out []agent.Request
	seen := map[string]bool{}
	for _, p := range phases {
		o, ok := p.(Observer)
		if !ok {
			continue
		}
		reqs, err := o.Observe(s.View(p.Name()), node)
		if err != nil {
			return nil, fmt.Errorf("%s: listing observations: %w", p.Name(), err)
		}
		for _, r := range reqs {
			if !seen[r.Key()] {
				seen[r.Key()] = true
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// missing returns the requests node has not answered yet, and whether an
// exec is needed (something missing, or nothing known of the node yet).
func (s *Session) missing(node string, reqs []agent.Request) ([]agent.Request, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.observed[node]
	if o == nil {
		return reqs, true
	}
	if !o.agentKnown {
		// The agent is not there: nothing can be observed until a phase
		// installs it (which invalidates this).
		return nil, false
	}
	var out []agent.Request
	for _, r := range reqs {
		if _, ok := o.responses[r.Key()]; !ok {
			out = append(out, r)
		}
	}
	return out, len(out) > 0
}

func (s *Session) storeObservation(node string, installed bool, reqs []agent.Request, resps []agent.Response, timing Timing) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.observed[node]
	if o == nil {
		o = &observation{responses: map[string]agent.Response{}}
		s.observed[node] = o
	}
	o.agentKnown = installed
	if len(reqs) > 0 {
		o.timing = timing
	}
	for i, r := range reqs {
		if i < len(resps) {
			o.responses[r.Key()] = resps[i]
		}
	}
}

func (s *Session) isUnavailable(node string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unavailable[node] != nil
}

// markUnavailable records that node cannot be worked on in this session.
// When step is set, the failure has not been reported yet and is reported
// now.
func (s *Session) markUnavailable(node, step string, err error) {
	if step != "" {
		s.View("").reportNodeFailure(node, step, err, 0)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.reported[node]
	if f == nil {
		f = &failure{err: err}
	}
	s.unavailable[node] = f
}

// PlanAll plans every phase without changing anything. A phase whose plan
// fails is reported (a *PlanError in the returned error) and the later ones
// are still planned; an interrupt stops planning between phases.
func (e *Engine) PlanAll(ctx context.Context, s *Session, phases []Phase) ([]Plan, error) {
	start := time.Now()
	s.emit(Event{Kind: KindRun, Status: StatusStarted, Message: fmt.Sprintf("planning %d phase(s) on %d node(s)", len(phases), len(s.cfg.Nodes))})
	e.observe(ctx, s, phases)
	var plans []Plan
	var errs []error
	for _, p := range phases {
		if s.interrupted() || ctx.Err() != nil {
			errs = append(errs, ErrInterrupted)
			break
		}
		plan, err := e.plan(ctx, s, p, StepPlan)
		if err != nil {
			errs = append(errs, &PlanError{Phase: p.Name(), Err: err})
			continue
		}
		plans = append(plans, plan)
	}
	if len(errs) == 0 {
		if err := nodesFailed(s); err != nil {
			errs = append(errs, err)
		}
	}
	err := errors.Join(errs...)
	if err != nil {
		s.emit(Event{Kind: KindRun, Status: StatusFailed, Message: "planning failed", Elapsed: time.Since(start)})
	} else {
		s.emit(Event{Kind: KindRun, Status: StatusDone, Message: "planned", Elapsed: time.Since(start)})
	}
	return plans, err
}

// plan runs one phase's Plan and reports it: a planned event with its
// summary and one change event per change (Step says whether the changes
// are only planned or about to be applied).
func (e *Engine) plan(ctx context.Context, s *Session, p Phase, step string) (Plan, error) {
	name := p.Name()
	v := s.View(name)
	start := time.Now()
	plan, err := p.Plan(ctx, v)
	plan.Phase = name
	if err != nil {
		_, _ = e.reportPhaseFailure(s, name, "could not plan", err, time.Since(start))
		return plan, err
	}
	v.Emit(Event{Kind: KindPhase, Status: StatusPlanned, Step: step, Message: plan.Summary(), Elapsed: time.Since(start)})
	for _, n := range plan.Notes {
		v.Emit(Event{Kind: KindMessage, Status: StatusInfo, Message: n})
	}
	for i := range plan.Changes {
		c := plan.Changes[i]
		v.Emit(Event{Kind: KindChange, Node: c.Node, Step: step, Status: StatusPlanned, Message: c.Summary, Change: &c})
	}
	return plan, nil
}

// reportPhaseFailure emits a phase's failure: briefly, referring to the
// nodes' errors reported before, or in full when no node's error explains it.
// It returns the message and the Seq of the event to refer to.
func (e *Engine) reportPhaseFailure(s *Session, phase, what string, err error, elapsed time.Duration) (string, uint64) {
	msg, ref := s.describe(err)
	if what != "" {
		msg = what + ": " + msg
	}
	seq := s.View(phase).Emit(Event{Kind: KindPhase, Status: statusOf(err), Message: msg, Ref: ref, Elapsed: elapsed})
	if ref == 0 {
		ref = seq
	}
	return msg, ref
}

func statusOf(err error) Status {
	if interrupted(err) {
		return StatusInterrupted
	}
	return StatusFailed
}

// Describe turns an error of a phase into a brief message for people: node
// errors become the list of failed nodes (their errors were reported in full
// as they happened).
func (s *Session) Describe(err error) string {
	msg, _ := s.describe(err)
	return msg
}

// describe turns an error into a brief message: node errors become the list
// of failed nodes (their errors were reported in full as they happened),
// with the Seq of the first report.
func (s *Session) describe(err error) (string, uint64) {
	var ne NodeErrors
	if !errors.As(err, &ne) {
		if interrupted(err) {
			return "interrupted: stopped between steps as asked; rerun to continue", 0
		}
		return err.Error(), 0
	}
	var failed, stopped []string
	var ref uint64
	s.mu.Lock()
	for _, n := range ne.Nodes() {
		if interrupted(ne[n]) {
			stopped = append(stopped, n)
			continue
		}
		failed = append(failed, n)
		if f := s.reported[n]; f != nil && (ref == 0 || f.seq < ref) {
			ref = f.seq
		}
	}
	s.mu.Unlock()
	var parts []string
	if len(failed) > 0 {
		parts = append(parts, fmt.Sprintf("failed on %d node(s): %s", len(failed), list(failed)))
	}
	if len(stopped) > 0 {
		parts = append(parts, fmt.Sprintf("%d node(s) interrupted", len(stopped)))
	}
	return strings.Join(parts, "; "), ref
}

// list names up to 10 nodes.
func list(nodes []string) string {
	if len(nodes) <= 10 {
		return strings.Join(nodes, ", ")
	}
	return strings.Join(nodes[:10], ", ") + fmt.Sprintf(" and %d more", len(nodes)-10)
}

// Apply runs the phases in order: each is planned just before it is applied
// (earlier phases change what later ones observe) and applied only when its
// plan is not empty. It stops at the first failed phase, and before the
// first phase when a node could not be reached or observed (nothing is
// applied then, with or without confirmed plans: a NodesFailedError). The
// session's Interrupt stops the run between steps; cancelling ctx aborts it.
//
// confirmed are the plans a person approved (nil when nobody was asked). As
// long as no phase of this run has changed anything, a phase's fresh plan
// must be the confirmed one (same actions on the same targets): otherwise
// the nodes changed while the prompt waited, and the run stops before
// applying what nobody saw. Once a phase has applied, later plans may
// differ: they see what it did.
func (e *Engine) Apply(ctx context.Context, s *Session, phases []Phase, confirmed []Plan) Result {
	start := time.Now()
	res := Result{Outcome: OutcomeUnchanged}
	s.emit(Event{Kind: KindRun, Status: StatusStarted, Message: fmt.Sprintf("%d phase(s) on %d node(s)", len(phases), len(s.cfg.Nodes))})
	stopAt := -1
	var failure error
	var ref uint64
	for i, p := range phases {
		if s.interrupted() || ctx.Err() != nil {
			stopAt, failure = i, ErrInterrupted
			break
		}
		e.observe(ctx, s, phases[i:])
		if i == 0 {
			// A node that could not be reached or observed before any
			// phase stops the run here, nothing applied: what a plan
			// confirmed at the prompt does too (PlanAll fails with the
			// same error), even when no phase would touch that node.
			if err := nodesFailed(s); err != nil {
				stopAt, failure = 0, err
				break
			}
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
		pr, seq, err := e.applyPhase(ctx, s, p, expect)
		res.Phases = append(res.Phases, pr)
		if pr.Outcome == OutcomeOK {
			res.Outcome = OutcomeOK
		}
		if err != nil {
			stopAt, failure, ref = i+1, err, seq
			break
		}
	}
	brief := ""
	if stopAt < 0 {
		if err := nodesFailed(s); err != nil {
			res.Outcome, res.Error, failure = OutcomeFailed, err.Error(), err
			brief = res.Error
		}
	}
	if stopAt >= 0 {
		for _, rest := range phases[stopAt:] {
			res.Phases = append(res.Phases, PhaseResult{Name: rest.Name(), Outcome: OutcomeSkipped})
		}
		res.Outcome = OutcomeFailed
		if interrupted(failure) {
			res.Outcome = OutcomeInterrupted
		}
		if stopAt > 0 && res.Phases[stopAt-1].Error != "" {
			last := res.Phases[stopAt-1]
			res.Error = fmt.Sprintf("phase %s: %s", last.Name, last.Error)
			brief = fmt.Sprintf("phase %s %s (reported above)", last.Name, last.Outcome)
		} else {
			res.Error, _ = s.describe(failure)
			brief = res.Error
		}
	}
	res.NodeErrors = s.NodeErrors()
	res.Duration = time.Since(start)
	switch res.Outcome {
	case OutcomeFailed, OutcomeInterrupted:
		s.emit(Event{Kind: KindRun, Status: statusOf(failure), Message: brief, Ref: ref, Elapsed: res.Duration})
	case OutcomeUnchanged:
		s.emit(Event{Kind: KindRun, Status: StatusDone, Message: "nothing to do: every phase's plan was empty, no node was changed", Elapsed: res.Duration})
	default:
		s.emit(Event{Kind: KindRun, Status: StatusDone, Message: "all phases done", Elapsed: res.Duration})
	}
	return res
}

// applyPhase plans one phase and applies its plan. The error says why the
// run must stop here; the Seq is the event that reported it.
func (e *Engine) applyPhase(ctx context.Context, s *Session, p Phase, expect *Plan) (PhaseResult, uint64, error) {
	name := p.Name()
	start := time.Now()
	res := PhaseResult{Name: name}
	v := s.View(name)
	done := func(err error, what string) (PhaseResult, uint64, error) {
		res.Duration = time.Since(start)
		res.Nodes = v.outcomes.snapshot()
		if err == nil {
			return res, 0, nil
		}
		res.Outcome = OutcomeFailed
		if interrupted(err) {
			res.Outcome = OutcomeInterrupted
		}
		var seq uint64
		res.Error, seq = e.reportPhaseFailure(s, name, what, err, res.Duration)
		return res, seq, err
	}
	v.Emit(Event{Kind: KindPhase, Status: StatusStarted})
	plan, err := p.Plan(ctx, v)
	plan.Phase = name
	if err != nil {
		return done(err, "could not plan")
	}
	if expect != nil && !expect.Same(plan) {
		err := fmt.Errorf("the nodes changed since the plan was confirmed (it said %q, now %q); nothing of this phase was applied: review castellan plan and run again", expect.Summary(), plan.Summary())
		return done(err, "")
	}
	res.Changes = plan.Changes
	for _, n := range plan.Notes {
		v.Emit(Event{Kind: KindMessage, Status: StatusInfo, Message: n})
	}
	if plan.Empty() {
		res.Outcome = OutcomeUnchanged
		v.Emit(Event{Kind: KindPhase, Status: StatusSkipped, Message: "nothing to do", Elapsed: time.Since(start)})
		return done(nil, "")
	}
	for i := range plan.Changes {
		c := plan.Changes[i]
		v.Emit(Event{Kind: KindChange, Node: c.Node, Step: StepApply, Status: StatusPlanned, Message: c.Summary, Change: &c})
	}
	if err := v.Checkpoint(); err != nil {
		return done(err, "")
	}
	if err := p.Apply(ctx, s.Run(name), plan); err != nil {
		return done(err, "")
	}
	res.Outcome = OutcomeOK
	v.Emit(Event{Kind: KindPhase, Status: StatusDone, Message: plan.Summary(), Elapsed: time.Since(start)})
	return done(nil, "")
}

// PhaseNames lists the names of phases, in order.
func PhaseNames(phases []Phase) []string {
	out := make([]string, len(phases))
	for i, p := range phases {
		out[i] = p.Name()
	}
	return slices.Clip(out)
}
