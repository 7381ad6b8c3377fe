package installer

import (
	"errors"
	"fmt"
)

// InputError is bad input: a profile, flag or revision problem found before
// any node was touched. The CLI exits with code 2 for it.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

func inputErr(err error) error {
	if err == nil {
		return nil
	}
	var ie *InputError
	if errors.As(err, &ie) {
		return err
	}
	return &InputError{Err: err}
}

// PushError is a run that succeeded and is committed locally, but whose
// state repo could not be pushed to spec.state.remote. The CLI exits with a
// code of its own for it, so automation notices.
type PushError struct {
	Run int
	Err error
}

func (e *PushError) Error() string {
	return fmt.Sprintf("run %d is committed locally but was not pushed: %v", e.Run, e.Err)
}

func (e *PushError) Unwrap() error { return e.Err }

// RunError is a run that failed or was interrupted; it is committed, and its
// events have reported why.
type RunError struct {
	Run     int
	Outcome string
	Err     string
}

func (e *RunError) Error() string { return fmt.Sprintf("run %d %s: %s", e.Run, e.Outcome, e.Err) }

// ErrAborted is returned when the user declined the plan.
var ErrAborted = errors.New("aborted: nothing was changed")
