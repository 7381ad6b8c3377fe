package engine

import (
	"sync"
	"time"
)

// Status says what an event reports.
type Status string

// Event statuses. Started/Done/Failed/Skipped bracket a run, phase, node or
// step; Progress carries bytes; Info and Warning are messages.
const (
	StatusStarted  Status = "started"
	StatusProgress Status = "progress"
	StatusDone     Status = "done"
	StatusFailed   Status = "failed"
	StatusSkipped  Status = "skipped"
	StatusInfo     Status = "info"
	StatusWarning  Status = "warning"
)

// Event is one thing that happened in a run. The scope is the most specific
// of Run, Phase, Node and Step that is set. The headless printer and the TUI
// are two views of the same stream of events.
type Event struct {
	Time    time.Time `json:"time"`
	Run     string    `json:"run"`
	Phase   string    `json:"phase,omitempty"`
	Node    string    `json:"node,omitempty"`
	Step    string    `json:"step,omitempty"`
	Status  Status    `json:"status"`
	Message string    `json:"message,omitempty"`
	// Done and Total are bytes, for transfers.
	Done  int64 `json:"done,omitempty"`
	Total int64 `json:"total,omitempty"`
	// Elapsed is set on Done and Failed events.
	Elapsed time.Duration `json:"elapsed,omitempty"`
}

// Sink receives events. Implementations must be safe for concurrent use;
// Emit must not block for long, since it is called on the run's hot path.
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
