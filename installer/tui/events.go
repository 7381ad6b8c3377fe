package tui

import (
	"context"
	"sync"

	tea "charm.land/bubbletea/v2"

	"castellan/installer/engine"
	"castellan/installer/tui/common"
)

// queue bridges the engine's events, emitted on the run's goroutines, to the
// bubbletea program: Emit appends and returns at once (a Sink must not hold
// up the run, and a program's Send would block until the UI reads), and one
// command at a time waits for what arrived and hands it over as a single
// EventsMsg, in Seq order. It never drops an event: memory grows with the
// run's events only until the UI takes them.
type queue struct {
	mu      sync.Mutex
	events  []engine.Event
	notices []string
	ready   chan struct{}
}

func newQueue() *queue { return &queue{ready: make(chan struct{}, 1)} }

// Emit implements engine.Sink.
func (q *queue) Emit(e engine.Event) {
	q.mu.Lock()
	q.events = append(q.events, e)
	q.mu.Unlock()
	q.signal()
}

func (q *queue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// Write takes a notice of the installer (Config.Notice).
func (q *queue) Write(p []byte) (int, error) {
	q.mu.Lock()
	q.notices = append(q.notices, string(p))
	q.mu.Unlock()
	q.signal()
	return len(p), nil
}

// wait returns the command that waits for the next events (nil once ctx is
// done).
func (q *queue) wait(ctx context.Context) tea.Cmd {
	return func() tea.Msg {
		select {
		case <-q.ready:
		case <-ctx.Done():
			return nil
		}
		q.mu.Lock()
		msg := common.EventsMsg{Events: q.events, Notices: q.notices}
		q.events, q.notices = nil, nil
		q.mu.Unlock()
		return msg
	}
}
