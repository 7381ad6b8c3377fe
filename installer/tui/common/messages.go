package common

import (
	"castellan/installer"
	"castellan/installer/engine"
	"castellan/installer/state"
)

// The named messages pages send the root (what the user asked for) and the
// root sends pages (what the installer's verbs answered). Pages never call a
// verb themselves: the root does, in commands, so that a page's screen
// depends on its messages only.

// OpenProfileMsg asks to open the profile at Path in the editor (a new one
// when New is set or the file does not exist).
type OpenProfileMsg struct {
	Path string
	New  bool
}

// ProfileSavedMsg says the editor saved the profile at Path.
type ProfileSavedMsg struct{ Path string }

// PlanMsg asks to prepare an apply of the saved profile (a rollback to run
// RollbackTo when set): load, lock, connect and plan, writing nothing.
type PlanMsg struct {
	ProfilePath       string
	AcceptNewHostKeys bool
	RollbackTo        string
}

// PreparedMsg is a prepared run (Pending, with its Plans and PlanErr) or
// why there is none (Err).
type PreparedMsg struct {
	Pending *installer.Pending
	Plans   []engine.Plan
	// PlanErr is why planning failed (Pending.Err): the run is then
	// committed as failed and nothing is applied.
	PlanErr error
	Err     error
	// Rollback is the run a rollback restores (0 for an apply).
	Rollback string
}

// ApplyMsg confirms the prepared run: Pending.Apply runs it.
type ApplyMsg struct{}

// DeclineMsg declines the prepared run: Pending.Close releases it, having
// written nothing.
type DeclineMsg struct{}

// RunStartedMsg says the root started applying a prepared run.
type RunStartedMsg struct{ Nodes []string }

// RunDoneMsg is the end of a run: its result (nil when the run could not
// start) and error.
type RunDoneMsg struct {
	Result *installer.Result
	Err    error
}

// EventsMsg carries the engine's events (in Seq order) and the installer's
// notices that arrived since the last one.
type EventsMsg struct {
	Events  []engine.Event
	Notices []string
}

// InterruptMsg asks the running verb to stop between steps (the first
// Ctrl-C); AbortMsg cancels its context (the second).
type (
	InterruptMsg struct{}
	AbortMsg     struct{}
)

// HistoryMsg asks to show the state repo's history of the profile at
// ProfilePath.
type HistoryMsg struct{ ProfilePath string }

// HistoryLoadedMsg is what History.Run answered.
type HistoryLoadedMsg struct {
	Entries []state.Entry
	Open    *state.Record
	Err     error
}

// DiffMsg asks for the diff of run Run's state against the current state;
// DiffLoadedMsg is the answer.
type (
	DiffMsg struct {
		ProfilePath string
		Run         int
	}
	DiffLoadedMsg struct {
		Run  int
		Diff string
		Err  error
	}
)

// BackMsg asks the root for the previous page.
type BackMsg struct{}

// QuitMsg asks the root to quit (closing what is open).
type QuitMsg struct{}
