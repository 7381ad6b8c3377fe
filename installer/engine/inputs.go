package engine

import "fmt"

// Input names a value the application layer hands one phase for one run,
// beside the profile: something a person asked for on the command line that
// does not describe the cluster, such as the explicit re-enrolment of a
// node whose TPM changed. Like a Key, an Input is declared next to its type
// in a small package under installer/ that the application layer and the
// phase both import; only the owning phase reads it.
type Input[T any] struct {
	owner, name string
}

// NewInput declares the input name of the phase owner.
func NewInput[T any](owner, name string) Input[T] {
	return Input[T]{owner: owner, name: name}
}

// String is "owner.name".
func (in Input[T]) String() string { return in.owner + "." + in.name }

// Owner is the phase that reads this input.
func (in Input[T]) Owner() string { return in.owner }

// Inputs are a run's inputs (SessionConfig.Inputs). The zero value holds
// none.
type Inputs struct {
	values map[string]any
}

// SetInput sets the value of in.
func SetInput[T any](ins *Inputs, in Input[T], value T) {
	if ins.values == nil {
		ins.values = map[string]any{}
	}
	ins.values[in.String()] = value
}

// InputOf returns the value of in for this run: the zero value when the run
// was given none. It fails when v belongs to another phase than in's owner.
func InputOf[T any](v *View, in Input[T]) (T, error) {
	var zero T
	if v.phase != in.owner {
		return zero, fmt.Errorf("engine: phase %q cannot read input %s: it belongs to phase %q", v.phase, in, in.owner)
	}
	val, ok := v.cfg.Inputs.values[in.String()]
	if !ok {
		return zero, nil
	}
	t, ok := val.(T)
	if !ok {
		return zero, fmt.Errorf("engine: input %s holds a %T", in, val)
	}
	return t, nil
}
