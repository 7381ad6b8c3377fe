// Package agent is how castellan runs code on a node: the installer ships
// its own binary to the node (content-addressed, root-owned) and runs
// `castellan agent OP` as root with JSON on stdin and one JSON response on
// stdout. Phases declare their node operations as typed Op values; the
// installer registers every phase's operations in one Registry.
//
// Wire format (stdout of `castellan agent OP`, one line):
//
//	{"ok":true,"result":<OP's output as JSON>}
//	{"ok":false,"error":{"code":"bad-input"|"unknown-op"|"failed"|"panic"|...,"message":"..."}}
//
// The request is OP's input as JSON on stdin (at most MaxInput bytes). Logs go
// to stderr as JSON lines. The built-in operation "agent.batch" carries many
// read-only requests in one exec: its input is a BatchRequest and its result
// a BatchResult with one Response per request, in order.
package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"sort"
	"strings"

	"castellan/installer/buildinfo"
)

// Registry holds the operations a binary's agent command serves. The
// installer builds it from its list of phases; there is no global registry.
type Registry struct {
	ops map[string]Handler
}

// NewRegistry returns a registry holding the built-in operations (Ping and
// the batch operation) and handlers. A name registered twice is a
// programming error and panics.
func NewRegistry(handlers ...Handler) *Registry {
	r := &Registry{ops: map[string]Handler{}}
	r.Register(Ping)
	r.Register(Op[BatchRequest, BatchResult]{Name: BatchOp, ReadOnly: true, Do: r.batch})
	for _, h := range handlers {
		r.Register(h)
	}
	return r
}

// Register adds an operation; names are "phase.op". Registering a name twice
// is a programming error and panics.
func (r *Registry) Register(h Handler) {
	if _, dup := r.ops[h.OpName()]; dup {
		panic("agent: operation registered twice: " + h.OpName())
	}
	r.ops[h.OpName()] = h
}

// Ops lists the registered operation names, sorted.
func (r *Registry) Ops() []string {
	out := make([]string, 0, len(r.ops))
	for n := range r.ops {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Lookup returns the handler of an operation.
func (r *Registry) Lookup(name string) (Handler, bool) {
	h, ok := r.ops[name]
	return h, ok
}

// Response is what the agent writes to stdout.
type Response struct {
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Error is a structured failure of an operation on a node.
type Error struct {
	// Code is stable and machine-readable: "unknown-op", "bad-input",
	// "not-read-only", "failed", "panic", or one a handler chose (CodedError).
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

// MaxInput bounds what an operation reads from stdin (bytes).
const MaxInput = 16 << 20

// MaxResponse bounds the response the installer accepts from a node (bytes).
const MaxResponse = 64 << 20

// Serve runs operation op: it reads the input from stdin, calls the handler
// and writes one Response line to stdout. It returns an error only when the
// response could not be written; operation failures are in the response.
func (r *Registry) Serve(ctx context.Context, op string, stdin io.Reader, stdout io.Writer, log *slog.Logger) error {
	in, rerr := readInput(stdin)
	var resp Response
	if rerr != nil {
		resp = Response{Error: rerr}
	} else {
		resp = r.call(ctx, op, in, log)
	}
	data, err := json.Marshal(resp)
	if err != nil {
		return fmt.Errorf("agent: encoding response of %s: %w", op, err)
	}
	if _, err := stdout.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("agent: writing response of %s: %w", op, err)
	}
	return nil
}

func readInput(stdin io.Reader) (json.RawMessage, *Error) {
	in, err := io.ReadAll(io.LimitReader(stdin, MaxInput+1))
	if err != nil {
		return nil, &Error{Code: "bad-input", Message: fmt.Sprintf("reading input: %v", err)}
	}
	if len(in) > MaxInput {
		return nil, &Error{Code: "bad-input", Message: fmt.Sprintf("input larger than %d MiB", MaxInput>>20)}
	}
	if len(bytes.TrimSpace(in)) == 0 {
		in = []byte("null")
	}
	if !json.Valid(in) {
		return nil, &Error{Code: "bad-input", Message: "input is not valid JSON"}
	}
	return in, nil
}

// call runs one operation; a panic in it becomes an error response.
func (r *Registry) call(ctx context.Context, op string, in json.RawMessage, log *slog.Logger) (resp Response) {
	h, ok := r.ops[op]
	if !ok {
		return Response{Error: &Error{Code: "unknown-op", Message: fmt.Sprintf("unknown operation %q; this agent knows: %s", op, strings.Join(r.Ops(), ", "))}}
	}
	defer func() {
		if p := recover(); p != nil {
			log.Error("operation panicked", "op", op, "panic", p, "stack", string(debug.Stack()))
			resp = Response{Error: &Error{Code: "panic", Message: fmt.Sprintf("operation panicked: %v", p)}}
		}
	}()
	out, err := h.Serve(ctx, in, log.With("op", op))
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

// BatchOp is the name of the built-in operation that runs many read-only
// requests in one exec.
const BatchOp = "agent.batch"

// BatchRequest is the input of the batch operation.
type BatchRequest struct {
	Requests []Request `json:"requests"`
}

// BatchResult is its output: one Response per request, in order.
type BatchResult struct {
	Responses []Response `json:"responses"`
}

// batch runs each request in order. Only read-only operations may travel in
// a batch (a batch is how plans observe nodes); others get a not-read-only
// error response, and nothing else in the batch is affected.
func (r *Registry) batch(ctx context.Context, in BatchRequest, log *slog.Logger) (BatchResult, error) {
	out := BatchResult{Responses: make([]Response, len(in.Requests))}
	for i, req := range in.Requests {
		h, ok := r.ops[req.Op]
		switch {
		case req.Op == BatchOp:
			out.Responses[i] = Response{Error: &Error{Code: "bad-input", Message: "a batch cannot hold a batch"}}
		case ok && !h.IsReadOnly():
			out.Responses[i] = Response{Error: &Error{Code: "not-read-only", Message: fmt.Sprintf("%s changes the node; a batch carries only read-only operations", req.Op)}}
		default:
			input := req.Input
			if len(bytes.TrimSpace(input)) == 0 {
				input = json.RawMessage("null")
			}
			out.Responses[i] = r.call(ctx, req.Op, input, log)
		}
	}
	return out, nil
}

// PingRequest is the input of Ping.
type PingRequest struct {
	Echo string `json:"echo"`
}

// PingResult is what Ping answers.
type PingResult struct {
	Version string `json:"version"`
	Echo    string `json:"echo,omitempty"`
	UID     int    `json:"uid"`
}

// Ping answers with the agent's version, the echoed text and its uid: a
// round trip that proves the agent runs, and as whom.
var Ping = Op[PingRequest, PingResult]{
	Name:     "agent.ping",
	ReadOnly: true,
	Do: func(_ context.Context, in PingRequest, _ *slog.Logger) (PingResult, error) {
		return PingResult{Version: buildinfo.Version(), Echo: in.Echo, UID: os.Getuid()}, nil
	},
}

// Decode unmarshals an operation's input strictly: unknown fields and
// trailing data are errors with code bad-input.
func Decode[T any](in json.RawMessage) (T, error) {
	var v T
	dec := json.NewDecoder(bytes.NewReader(in))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return v, &CodedError{Code: "bad-input", Err: fmt.Errorf("decoding input: %w", err)}
	}
	if dec.More() {
		return v, &CodedError{Code: "bad-input", Err: errors.New("decoding input: trailing data after the JSON value")}
	}
	return v, nil
}

// DecodeResponse reads the agent's response from its standard output: the
// last non-empty line must be one Response object. Anything before it (a
// login shell or sudo may print) is ignored. It fails on empty output, on
// output above MaxResponse bytes, on a line that is not a JSON Response, and
// on a Response that is neither ok nor carries an error.
func DecodeResponse(stdout []byte) (Response, error) {
	if len(stdout) > MaxResponse {
		return Response{}, fmt.Errorf("the agent's response is larger than %d MiB", MaxResponse>>20)
	}
	line := bytes.TrimSpace(stdout)
	if i := bytes.LastIndexByte(line, '\n'); i >= 0 {
		line = bytes.TrimSpace(line[i+1:])
	}
	if len(line) == 0 {
		return Response{}, errors.New("the agent gave no response")
	}
	var resp Response
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("the agent's response is not JSON: %w", err)
	}
	if dec.More() {
		return Response{}, errors.New("the agent's response has trailing data")
	}
	if resp.OK == (resp.Error != nil) {
		return Response{}, errors.New("the agent's response is malformed: exactly one of ok and error must be set")
	}
	if resp.OK && len(resp.Result) == 0 {
		resp.Result = json.RawMessage("null")
	}
	return resp, nil
}

// Result decodes a successful response's result into out (nil discards it),
// or returns the response's *Error with node and op filled in.
func (resp Response) Decode(node, op string, out any) error {
	if !resp.OK {
		e := *resp.Error
		e.Node, e.Op = node, op
		return &e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(resp.Result, out); err != nil {
		return fmt.Errorf("%s: agent %s: decoding result: %w", node, op, err)
	}
	return nil
}
