package engine_test

import (
	"slices"
	"strings"
	"testing"

	"castellan/installer/engine"
)

// TestInputs: a phase reads the inputs the application layer set for it
// (the zero value when none was set), and never another phase's.
func TestInputs(t *testing.T) {
	reEnrol := engine.NewInput[[]string]("a", "re-enrol")
	other := engine.NewInput[int]("a", "unset")
	var ins engine.Inputs
	engine.SetInput(&ins, reEnrol, []string{"n1"})
	f := newFixture(t, 2, engine.SessionConfig{Inputs: ins})

	got, err := engine.InputOf(f.session.View("a"), reEnrol)
	if err != nil || !slices.Equal(got, []string{"n1"}) {
		t.Fatalf("InputOf = %v, %v", got, err)
	}
	if n, err := engine.InputOf(f.session.View("a"), other); err != nil || n != 0 {
		t.Fatalf("unset input = %v, %v", n, err)
	}
	if _, err := engine.InputOf(f.session.Run("b").View, reEnrol); err == nil || !strings.Contains(err.Error(), `belongs to phase "a"`) {
		t.Fatalf("another phase read the input: %v", err)
	}
	// A session without inputs answers the zero value.
	empty := newFixture(t, 1, engine.SessionConfig{})
	if got, err := engine.InputOf(empty.session.View("a"), reEnrol); err != nil || got != nil {
		t.Fatalf("no inputs: %v, %v", got, err)
	}
}
