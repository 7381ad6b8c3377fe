package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
)

// Spec is what the installer side needs to know of a node operation to call
// it: its name and whether it only reads the node.
type Spec interface {
	// OpName is "phase.op", e.g. "preflight.facts".
	OpName() string
	// IsReadOnly reports whether the operation changes nothing on the node.
	// Planning may call only read-only operations, and only those travel in
	// a batch.
	IsReadOnly() bool
}

// Handler is a node operation as the agent serves it.
type Handler interface {
	Spec
	// Serve decodes the operation's JSON input, runs it and returns the value
	// to encode as its result.
	Serve(ctx context.Context, in json.RawMessage, log *slog.Logger) (any, error)
}

// Op is a typed node operation: a phase package declares one value per
// operation and both sides use it, the agent to serve it and the installer to
// call it, so no call site names an operation by a string.
//
// In and Out travel as JSON (encoding/json): they must be plain data.
type Op[In, Out any] struct {
	// Name is "phase.op", unique in the binary.
	Name string
	// ReadOnly marks an operation that changes nothing on the node.
	ReadOnly bool
	// Do runs on the node, as root, inside `castellan agent`.
	Do func(ctx context.Context, in In, log *slog.Logger) (Out, error)
}

// OpName implements Spec.
func (o Op[In, Out]) OpName() string { return o.Name }

// IsReadOnly implements Spec.
func (o Op[In, Out]) IsReadOnly() bool { return o.ReadOnly }

// Serve implements Handler: the input is decoded strictly (unknown fields are
// an error with code bad-input).
func (o Op[In, Out]) Serve(ctx context.Context, raw json.RawMessage, log *slog.Logger) (any, error) {
	in, err := Decode[In](raw)
	if err != nil {
		return nil, err
	}
	return o.Do(ctx, in, log)
}

// Request is one operation call with its input, as carried in a batch.
type Request struct {
	Op    string          `json:"op"`
	Input json.RawMessage `json:"input"`
}

// Key identifies a request by operation and exact input bytes, so that a
// result observed in a batch answers the same call later.
func (r Request) Key() string { return r.Op + "\x00" + string(r.Input) }

// NewRequest encodes a call of op with in. It fails only when in cannot be
// encoded as JSON.
func NewRequest(op Spec, in any) (Request, error) {
	data, err := json.Marshal(in)
	if err != nil {
		return Request{}, fmt.Errorf("agent %s: encoding input: %w", op.OpName(), err)
	}
	return Request{Op: op.OpName(), Input: data}, nil
}

// Request encodes a call of o with in, for a batch of observations.
func (o Op[In, Out]) Request(in In) (Request, error) { return NewRequest(o, in) }
