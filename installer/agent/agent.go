// Package agent is how castellan runs code on a node: the installer ships
// its own binary to the node (content-addressed, so checking it costs a
// stat) and calls `sudo castellan agent OP` with JSON on stdin and a JSON
// result on stdout. Phases register the operations their node side offers.
//
// Wire format: the request is the operation's input as JSON on stdin; the
// response on stdout is one Response. Logs go to stderr.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"castellan/installer/buildinfo"
	"runtime/debug"
	"sort"
	"strings"
)

// Handler is a node-side operation: it reads its input and returns a value
// that is encoded as the result.
type Handler func(ctx context.Context, in json.RawMessage, log *slog.Logger) (any, error)

// Registry holds the operations a binary's agent command serves. Phases
// register into it; there is no global registry.
type Registry struct {
	ops map[string]Handler
}

// NewRegistry returns a registry holding the built-in operations (ping).
func NewRegistry() *Registry {
	r := &Registry{ops: map[string]Handler{}}
	r.Register("ping", ping)
	return r
}

// Register adds an operation; names are "phase.op". Registering a name twice
// is a programming error and panics.
func (r *Registry) Register(name string, h Handler) {
	if _, dup := r.ops[name]; dup {
		panic("agent: operation registered twice: " + name)
	}
	r.ops[name] = h
}

// Ops lists the registered operation names.
func (r *Registry) Ops() []string {
	out := make([]string, 0, len(r.ops))
	for n := range r.ops {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Response is what the agent writes to stdout.
type Response struct {
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Error is a structured failure of an operation on a node.
type Error struct {
	// Code is stable and machine-readable, e.g. "unknown-op", "bad-input", "failed".
	Code    string `json:"code"`
	Message string `json:"message"`
	// Node and Op are filled in by the installer side.
	Node string `json:"node,omitempty"`
	Op   string `json:"op,omitempty"`
}

func (e *Error) Error() string {
	where := ""
	if e.Node != "" {
		where = e.Node + ": "
	}
	return fmt.Sprintf("%sagent %s: %s", where, e.Op, e.Message)
}

// CodedError lets a handler choose the error code the installer sees.
type CodedError struct {
	Code string
	Err  error
}

func (e *CodedError) Error() string { return e.Err.Error() }
func (e *CodedError) Unwrap() error { return e.Err }

// maxInput bounds what an operation reads from stdin.
const maxInput = 16 << 20

// Serve runs operation op: it reads the input from stdin, calls the handler
// and writes one Response to stdout. It returns an error only when the
// response could not be written; operation failures are in the response.
func (r *Registry) Serve(ctx context.Context, op string, stdin io.Reader, stdout io.Writer, log *slog.Logger) error {
	resp := r.serve(ctx, op, stdin, log)
	data, err := json.Marshal(resp)
	if err != nil {
		return fmt.Errorf("agent: encoding response of %s: %w", op, err)
	}
	if _, err := stdout.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("agent: writing response of %s: %w", op, err)
	}
	return nil
}

func (r *Registry) serve(ctx context.Context, op string, stdin io.Reader, log *slog.Logger) (resp Response) {
	h, ok := r.ops[op]
	if !ok {
		return Response{Error: &Error{Code: "unknown-op", Message: fmt.Sprintf("unknown operation %q; this agent knows: %s", op, strings.Join(r.Ops(), ", "))}}
	}
	in, err := io.ReadAll(io.LimitReader(stdin, maxInput+1))
	if err != nil {
		return Response{Error: &Error{Code: "bad-input", Message: fmt.Sprintf("reading input: %v", err)}}
	}
	if len(in) > maxInput {
		return Response{Error: &Error{Code: "bad-input", Message: "input larger than 16 MiB"}}
	}
	if len(strings.TrimSpace(string(in))) == 0 {
		in = []byte("null")
	}
	if !json.Valid(in) {
		return Response{Error: &Error{Code: "bad-input", Message: "input is not valid JSON"}}
	}
	defer func() {
		if p := recover(); p != nil {
			log.Error("operation panicked", "op", op, "panic", p, "stack", string(debug.Stack()))
			resp = Response{Error: &Error{Code: "panic", Message: fmt.Sprintf("operation panicked: %v", p)}}
		}
	}()
	out, err := h(ctx, in, log.With("op", op))
	if err != nil {
		code := "failed"
		var ce *CodedError
		if errors.As(err, &ce) {
			code = ce.Code
		}
		return Response{Error: &Error{Code: code, Message: err.Error()}}
	}
	data, err := json.Marshal(out)
	if err != nil {
		return Response{Error: &Error{Code: "failed", Message: fmt.Sprintf("encoding result: %v", err)}}
	}
	return Response{OK: true, Result: data}
}

// PingResult is what the built-in ping operation answers.
type PingResult struct {
	Version string `json:"version"`
	Echo    string `json:"echo,omitempty"`
	UID     int    `json:"uid"`
}

// Decode unmarshals an operation's input strictly.
func Decode[T any](in json.RawMessage) (T, error) {
	var v T
	dec := json.NewDecoder(strings.NewReader(string(in)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return v, &CodedError{Code: "bad-input", Err: fmt.Errorf("decoding input: %w", err)}
	}
	return v, nil
}

func ping(_ context.Context, in json.RawMessage, _ *slog.Logger) (any, error) {
	req, err := Decode[struct {
		Echo string `json:"echo"`
	}](in)
	if err != nil {
		return nil, err
	}
	return PingResult{Version: buildinfo.Version(), Echo: req.Echo, UID: os.Getuid()}, nil
}
