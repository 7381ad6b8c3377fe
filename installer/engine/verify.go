package engine

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// CheckStatus says how one check of a verification came out.
type CheckStatus string

// Check statuses, from best to worst. A verification's status is its worst
// check's, warnings counting as ok.
const (
	// CheckOK: the live state matches the profile and what the state repo
	// records.
	CheckOK CheckStatus = "ok"
	// CheckWarning: it matches, but is weaker than it could be (a software
	// key under spec.identity.tpm: insecure-skip, a boot state that cannot
	// be attested).
	CheckWarning CheckStatus = "warning"
	// CheckDrift: the live state departs from the profile or from what the
	// state repo records (a phase's plan would change something, or a check
	// a plan does not make failed: an expired certificate, a changed boot
	// state, a stale handshake).
	CheckDrift CheckStatus = "drift"
	// CheckFailed: it could not be checked (an unreachable node, a state
	// repo that cannot be read, a phase that could not plan).
	CheckFailed CheckStatus = "failed"
)

// worse reports whether s is worse than o for the verification's status
// (failed > drift > ok; a warning counts as ok).
func (s CheckStatus) worse(o CheckStatus) bool { return s.rank() > o.rank() }

func (s CheckStatus) rank() int {
	switch s {
	case CheckFailed:
		return 2
	case CheckDrift:
		return 1
	}
	return 0
}

// Check is one finding of a verification, about one node (or the cluster
// when Node is empty).
type Check struct {
	// Phase is the phase that made the check ("" for the engine's own:
	// a node that could not be observed).
	Phase string `json:"phase,omitempty"`
	Node  string `json:"node,omitempty"`
	// Name says what was checked, in the phase's terms: "certificate",
	// "boot-state", "peers", ...; for a planned change, its Action.
	Name string `json:"check"`
	// Target is what the check is about (a device, a peer), when there are
	// several of a kind.
	Target  string      `json:"target,omitempty"`
	Status  CheckStatus `json:"status"`
	Message string      `json:"message"`
}

// Verifier is implemented by a phase that checks more than its plan shows:
// what a plan does not look at because a rerun would not change it (a
// certificate's expiry and revocation, a fresh TPM quote against the pinned
// boot state, WireGuard handshake ages), and the ok lines worth showing.
// Engine.Verify calls it after the phase's Plan, in the same View (so it
// reads the same observations: no exec of its own unless it needs one), with
// what Plan returned; the plan's changes and refusals are reported by the
// engine already. Verify must not change anything: like Plan it gets a View.
// An error is a check that could not be made (reported as failed: per node
// for NodeErrors).
type Verifier interface {
	Verify(ctx context.Context, v *View, p Plan) ([]Check, error)
}

// DriftError is implemented by errors a phase's plan returns when a node
// departs from what the state repo records in a way apply refuses to act
// on by itself (a changed TPM, a changed boot state): an apply fails with
// it, and a verification reports it as drift rather than as a check that
// could not be made. Drift is a marker method.
type DriftError interface {
	error
	Drift()
}

// IsDrift reports whether err (or an error it wraps) is a DriftError.
func IsDrift(err error) bool {
	var d DriftError
	return errors.As(err, &d)
}

// VerifyResult is what a verification found.
type VerifyResult struct {
	// Status is the worst check's: CheckOK, CheckDrift or CheckFailed.
	Status CheckStatus `json:"status"`
	// Nodes are the nodes verified, in profile order.
	Nodes []string `json:"nodes"`
	// Phases are the phases verified, in order.
	Phases []string `json:"phases"`
	// Checks are cluster-wide first, then by node in profile order; for
	// each, in phase order, each phase's in the order it made them.
	Checks   []Check       `json:"checks"`
	Duration time.Duration `json:"duration"`
}

// Count returns how many checks have status st.
func (r VerifyResult) Count(st CheckStatus) int {
	n := 0
	for _, c := range r.Checks {
		if c.Status == st {
			n++
		}
	}
	return n
}

// NodesWith lists the nodes (in profile order) with a check of status st;
// "" stands for cluster-wide checks and comes first.
func (r VerifyResult) NodesWith(st CheckStatus) []string {
	seen := map[string]bool{}
	for _, c := range r.Checks {
		if c.Status == st {
			seen[c.Node] = true
		}
	}
	var out []string
	if seen[""] {
		out = append(out, "")
	}
	for _, n := range r.Nodes {
		if seen[n] {
			out = append(out, n)
		}
	}
	return out
}

// Verify reports, for every targeted node and the cluster, whether the live
// state matches the profile and what the state repo records. It changes
// nothing: every phase is planned through its View (a phase whose plan
// would change something has drifted: each change is a drift check; a
// DriftError is a drift check; any other plan error a failed one), then a
// Verifier phase adds its own checks. Warnings the phases emit become
// warning checks. The cost is a no-op plan's: one agent exec per node
// carries every phase's observations, and the checks read them.
//
// A node with no change, error or check of a phase gets an ok check
// ("plan": nothing to change; warnings aside). A node that could not be
// observed gets one failed check, and no other.
func (e *Engine) Verify(ctx context.Context, s *Session, phases []Phase) VerifyResult {
	start := time.Now()
	res := VerifyResult{Nodes: s.NodeNames(), Phases: PhaseNames(phases)}
	s.emit(Event{Kind: KindRun, Status: StatusStarted, Message: fmt.Sprintf("verifying %d phase(s) on %d node(s)", len(phases), len(s.cfg.Nodes))})
	s.collectWarnings(true)
	defer s.collectWarnings(false)
	e.observe(ctx, s, phases)

	unavailable := map[string]bool{}
	for _, n := range res.Nodes {
		if err := s.View("").unavailableErr(n); err != nil {
			unavailable[n] = true
			var un *NodeUnavailableError
			msg := err.Error()
			if errors.As(err, &un) {
				msg = un.Cause.Error()
			}
			res.Checks = append(res.Checks, Check{Node: n, Name: "reach", Status: CheckFailed, Message: "could not be observed: " + msg})
		}
	}

	for _, p := range phases {
		if s.interrupted() || ctx.Err() != nil {
			res.Checks = append(res.Checks, Check{Phase: p.Name(), Name: "verify", Status: CheckFailed, Message: "interrupted before this phase was checked"})
			continue
		}
		v := s.View(p.Name())
		pstart := time.Now()
		plan, err := p.Plan(ctx, v)
		var checks []Check
		for _, c := range plan.Changes {
			checks = append(checks, Check{Node: c.Node, Name: c.Action, Target: c.Target, Status: CheckDrift, Message: "a rerun would " + c.Summary})
		}
		checks = append(checks, errorChecks(err, "plan", unavailable)...)
		if vr, ok := p.(Verifier); ok && !planFailedWhole(err) {
			more, verr := vr.Verify(ctx, v, plan)
			for _, c := range more {
				if !unavailable[c.Node] {
					checks = append(checks, c)
				}
			}
			checks = append(checks, errorChecks(verr, "verify", unavailable)...)
		}
		checked := map[string]bool{}
		for _, c := range checks {
			checked[c.Node] = true
		}
		for _, n := range res.Nodes {
			if !checked[n] && !unavailable[n] {
				checks = append(checks, Check{Node: n, Name: "plan", Status: CheckOK, Message: "matches the profile: nothing to change"})
			}
		}
		for _, w := range s.takeWarnings(p.Name()) {
			if !unavailable[w.Node] {
				checks = append(checks, Check{Node: w.Node, Name: "warning", Status: CheckWarning, Message: w.Message})
			}
		}
		for i := range checks {
			checks[i].Phase = p.Name()
		}
		res.Checks = append(res.Checks, checks...)
		status := worstOf(checks)
		v.Emit(Event{Kind: KindPhase, Status: StatusDone, Step: StepVerify, Message: string(status), Elapsed: time.Since(pstart)})
	}
	res.Checks = sortChecks(res.Checks, res.Nodes)
	res.Status = worstOf(res.Checks)
	res.Duration = time.Since(start)
	msg := fmt.Sprintf("verified: %s (%d ok, %d warning(s), %d drift, %d failed)", res.Status,
		res.Count(CheckOK), res.Count(CheckWarning), res.Count(CheckDrift), res.Count(CheckFailed))
	s.emit(Event{Kind: KindRun, Status: StatusDone, Message: msg, Elapsed: res.Duration})
	return res
}

// StepVerify is a phase's verification, in events.
const StepVerify = "verify"

func worstOf(checks []Check) CheckStatus {
	st := CheckOK
	for _, c := range checks {
		if c.Status.worse(st) {
			st = c.Status
		}
	}
	return st
}

// planFailedWhole reports whether a plan error is not about some nodes only
// (then the phase's Verify, which builds on the plan, is not called).
func planFailedWhole(err error) bool {
	if err == nil {
		return false
	}
	_, rest := splitNodeErrors(err)
	return len(rest) > 0
}

// errorChecks turns a plan or verify error into checks: one per node for
// node errors (drift for a DriftError, failed otherwise; nothing for a node
// already reported unreachable), one cluster-wide for the rest.
func errorChecks(err error, name string, unavailable map[string]bool) []Check {
	if err == nil {
		return nil
	}
	ne, rest := splitNodeErrors(err)
	var out []Check
	for _, n := range ne.Nodes() {
		var un *NodeUnavailableError
		if unavailable[n] || errors.As(ne[n], &un) {
			continue
		}
		out = append(out, Check{Node: n, Name: name, Status: statusOfErr(ne[n]), Message: ne[n].Error()})
	}
	for _, r := range rest {
		out = append(out, Check{Name: name, Status: statusOfErr(r), Message: r.Error()})
	}
	return out
}

func statusOfErr(err error) CheckStatus {
	if IsDrift(err) {
		return CheckDrift
	}
	return CheckFailed
}

// splitNodeErrors separates the node errors in err (err itself, or the
// parts of a join) from the other errors.
func splitNodeErrors(err error) (NodeErrors, []error) {
	ne := NodeErrors{}
	var rest []error
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case NodeErrors:
			for k, v := range e {
				if _, dup := ne[k]; !dup {
					ne[k] = v
				}
			}
		case interface{ Unwrap() []error }:
			for _, part := range e.Unwrap() {
				walk(part)
			}
		default:
			rest = append(rest, err)
		}
	}
	walk(err)
	return ne, rest
}

// sortChecks orders checks: cluster-wide first, then by node in profile
// order; within a node, as made.
func sortChecks(checks []Check, nodes []string) []Check {
	order := map[string]int{"": -1}
	for i, n := range nodes {
		order[n] = i
	}
	sort.SliceStable(checks, func(i, j int) bool { return order[checks[i].Node] < order[checks[j].Node] })
	return checks
}

// collectWarnings starts (or stops) keeping the warning messages phases
// emit, for Verify to report as checks.
func (s *Session) collectWarnings(on bool) {
	s.emitMu.Lock()
	defer s.emitMu.Unlock()
	s.collecting = on
	s.warnings = nil
}

// takeWarnings returns and forgets the warnings phase emitted.
func (s *Session) takeWarnings(phase string) []Event {
	s.emitMu.Lock()
	defer s.emitMu.Unlock()
	var out, kept []Event
	for _, w := range s.warnings {
		if w.Phase == phase {
			out = append(out, w)
		} else {
			kept = append(kept, w)
		}
	}
	s.warnings = kept
	return out
}
