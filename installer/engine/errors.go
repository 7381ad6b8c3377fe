package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
)

// ErrInterrupted is returned when a run was asked to stop between steps.
var ErrInterrupted = errors.New("run interrupted: stopped between steps as asked; rerun to continue")

// interrupted tells an interrupt (first Ctrl-C) or an abort (second Ctrl-C,
// which cancels the run's context) from a failure.
func interrupted(err error) bool {
	return errors.Is(err, ErrInterrupted) || errors.Is(err, context.Canceled)
}

// NodeErrors is the failure of some nodes in one ForEachNode call.
type NodeErrors map[string]error

func (ne NodeErrors) Error() string {
	names := ne.Nodes()
	parts := make([]string, 0, len(names))
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s: %v", n, ne[n]))
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return fmt.Sprintf("%d nodes failed:\n  %s", len(parts), strings.Join(parts, "\n  "))
}

// Nodes lists the failed nodes, sorted.
func (ne NodeErrors) Nodes() []string {
	names := make([]string, 0, len(ne))
	for n := range ne {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Unwrap lets errors.Is and errors.As look into every node's error.
func (ne NodeErrors) Unwrap() []error {
	out := make([]error, 0, len(ne))
	for _, n := range ne.Nodes() {
		out = append(out, ne[n])
	}
	return out
}

// NodeUnavailableError is returned for a node that could not be observed at
// the start of the run (unreachable, refused host key, unsafe agent): the
// run does not try it again, and refers to the event that reported why.
type NodeUnavailableError struct {
	Node  string
	Cause error
	Ref   uint64 // Seq of the event that reported Cause in full
}

func (e *NodeUnavailableError) Error() string {
	return fmt.Sprintf("%s is unavailable: %s", e.Node, firstLine(e.Cause.Error()))
}

func (e *NodeUnavailableError) Unwrap() error { return e.Cause }

// PlanError is a phase that could not plan; the engine reported it as an event.
type PlanError struct {
	Phase string
	Err   error
}

func (e *PlanError) Error() string { return fmt.Sprintf("planning %s: %v", e.Phase, e.Err) }
func (e *PlanError) Unwrap() error { return e.Err }

func firstLine(s string) string {
	line, rest, _ := strings.Cut(s, "\n")
	if rest != "" {
		line += " ..."
	}
	return line
}

// Outcome is how a node or phase ended.
type Outcome string

// Outcomes.
const (
	OutcomeOK          Outcome = "ok"
	OutcomeUnchanged   Outcome = "unchanged"
	OutcomeFailed      Outcome = "failed"
	OutcomeSkipped     Outcome = "skipped"
	OutcomeInterrupted Outcome = "interrupted"
	// OutcomeRunning is a run's outcome while it runs; a record left with it
	// belongs to a run that died (see state).
	OutcomeRunning Outcome = "running"
	// OutcomeDied is a run that ended without recording its end (killed).
	OutcomeDied Outcome = "died"
)

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

func (n *nodeOutcomes) snapshot() map[string]Outcome {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.m) == 0 {
		return nil
	}
	out := make(map[string]Outcome, len(n.m))
	for k, v := range n.m {
		out[k] = v
	}
	return out
}

// NodesFailedError is returned by PlanAll, and makes Apply's run failed,
// when nodes failed (could not be reached, or an observation failed) although
// no phase did: those nodes were neither planned nor changed, so "nothing
// to do" would be untrue for them. Their errors were reported as they
// happened.
type NodesFailedError struct {
	Nodes []string // sorted
}

func (e *NodesFailedError) Error() string {
	return fmt.Sprintf("failed on %d node(s): %s (reported above)", len(e.Nodes), strings.Join(e.Nodes, ", "))
}

// nodesFailed is a *NodesFailedError for the nodes that failed in s, or nil.
func nodesFailed(s *Session) error {
	errs := s.NodeErrors()
	if len(errs) == 0 {
		return nil
	}
	return &NodesFailedError{Nodes: slices.Sorted(maps.Keys(errs))}
}
