package engine

import (
	"sync"
	"time"
)

// Kind says what an event is about. The stream of a run is a protocol: the
// headless text and JSON printers and the TUI are views of the same events.
//
//	run       a run or a plan started (Status started) or ended (done, failed, interrupted)
//	phase     a phase started, planned (Message: the plan's summary), ended or was skipped
//	change    one planned change of a phase (Change set)
//	step      a node step started or ended (Node and Step set)
//	progress  bytes done of a node step (Done, Total)
//	message   an info or a warning (Status info or warning)
type Kind string

// Event kinds.
const (
	KindRun      Kind = "run"
	KindPhase    Kind = "phase"
	KindChange   Kind = "change"
	KindStep     Kind = "step"
	KindProgress Kind = "progress"
	KindMessage  Kind = "message"
)

// Status says how the thing an event is about stands.
type Status string

// Event statuses.
const (
	StatusStarted     Status = "started"
	StatusPlanned     Status = "planned"
	StatusDone        Status = "done"
	StatusFailed      Status = "failed"
	StatusSkipped     Status = "skipped"
	StatusInterrupted Status = "interrupted"
	StatusProgress    Status = "progress"
	StatusInfo        Status = "info"
	StatusWarning     Status = "warning"
)

// Steps the engine itself reports. Phases declare their own step names as
// constants too.
const (
	// StepObserve is the one agent exec per node that carries the
	// observations of every phase.
	StepObserve = "observe"
	// StepPlan is a phase planning one node.
	StepPlan = "plan"
	// StepApply is a phase applying its changes on one node.
	StepApply = "apply"
)

// Event is one thing that happened in a run.
type Event struct {
	// Seq numbers the run's events from 1, in the order sinks receive them.
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Kind    Kind      `json:"kind"`
	Run     string    `json:"run"`
	Phase   string    `json:"phase,omitempty"`
	Node    string    `json:"node,omitempty"`
	Step    string    `json:"step,omitempty"`
	Status  Status    `json:"status"`
	Message string    `json:"message,omitempty"`
	// Change is the planned change of a change event.
	Change *Change `json:"change,omitempty"`
	// Done and Total are bytes, for progress events.
	Done  int64 `json:"done,omitempty"`
	Total int64 `json:"total,omitempty"`
	// Elapsed is set when something ends.
	Elapsed time.Duration `json:"elapsed,omitempty"`
	// Ref, on a failure, is the Seq of the event that reported its cause in
	// full (a node's error is reported once; phase and run refer to it).
	Ref uint64 `json:"ref,omitempty"`
}

// Sink receives events. Implementations must be safe for concurrent use;
// Emit must not block for long, since it is called on the run's hot path.
// Events reach a sink in Seq order.
type Sink interface {
	Emit(Event)
}

// SinkFunc adapts a function to a Sink.
type SinkFunc func(Event)

// Emit calls f.
func (f SinkFunc) Emit(e Event) { f(e) }

// Fanout sends every event to each sink in order.
type Fanout []Sink

// Emit sends e to every sink.
func (f Fanout) Emit(e Event) {
	for _, s := range f {
		s.Emit(e)
	}
}

// Recorder keeps every event; tests and the run record use it.
type Recorder struct {
	mu     sync.Mutex
	events []Event
}

// Emit records e.
func (r *Recorder) Emit(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

// Events returns a copy of what was recorded.
func (r *Recorder) Events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}
