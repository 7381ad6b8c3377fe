package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

type echoIn struct {
	Text string `json:"text"`
}

var (
	echoOp  = Op[echoIn, echoIn]{Name: "test.echo", ReadOnly: true, Do: func(_ context.Context, in echoIn, _ *slog.Logger) (echoIn, error) { return in, nil }}
	writeOp = Op[echoIn, echoIn]{Name: "test.write", Do: func(_ context.Context, in echoIn, _ *slog.Logger) (echoIn, error) { return in, nil }}
	panicOp = Op[echoIn, echoIn]{Name: "test.panic", ReadOnly: true, Do: func(context.Context, echoIn, *slog.Logger) (echoIn, error) { panic("boom") }}
	failOp  = Op[echoIn, echoIn]{Name: "test.fail", ReadOnly: true, Do: func(context.Context, echoIn, *slog.Logger) (echoIn, error) {
		return echoIn{}, &CodedError{Code: "no-disk", Err: errors.New("no such disk")}
	}}
)

func testRegistry() *Registry { return NewRegistry(echoOp, writeOp, panicOp, failOp) }

// serve runs op on input as `castellan agent OP` would, and decodes the one
// line it writes.
func serve(t *testing.T, r *Registry, op string, input []byte) Response {
	t.Helper()
	var out bytes.Buffer
	if err := r.Serve(context.Background(), op, bytes.NewReader(input), &out, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(out.Bytes(), []byte("\n")); n != 1 {
		t.Fatalf("the agent wrote %d lines: %q", n, out.String())
	}
	resp, err := DecodeResponse(out.Bytes())
	if err != nil {
		t.Fatalf("the agent's own response does not decode: %v: %q", err, out.String())
	}
	return resp
}

func TestServe(t *testing.T) {
	tests := []struct {
		name  string
		op    string
		input string
		code  string // "" for success
		msg   string
	}{
		{"echo", "test.echo", `{"text":"hi"}`, "", ""},
		{"empty input is null", "test.echo", ``, "", ""},
		{"unknown op", "test.none", `{}`, "unknown-op", `unknown operation "test.none"; this agent knows: agent.batch, agent.ping, test.echo`},
		{"not JSON", "test.echo", `{"text":`, "bad-input", "input is not valid JSON"},
		{"unknown field", "test.echo", `{"txt":"hi"}`, "bad-input", `unknown field "txt"`},
		{"trailing data", "test.echo", `{"text":"a"} {"text":"b"}`, "bad-input", "input is not valid JSON"},
		{"oversize", "test.echo", `"` + strings.Repeat("a", MaxInput) + `"`, "bad-input", "input larger than 16 MiB"},
		{"panic", "test.panic", `{}`, "panic", "operation panicked: boom"},
		{"coded error", "test.fail", `{}`, "no-disk", "no such disk"},
	}
	r := testRegistry()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := serve(t, r, tt.op, []byte(tt.input))
			if tt.code == "" {
				if !resp.OK {
					t.Fatalf("error %+v", resp.Error)
				}
				return
			}
			if resp.OK || resp.Error.Code != tt.code || !strings.Contains(resp.Error.Message, tt.msg) {
				t.Errorf("got %+v, want code %s with %q", resp.Error, tt.code, tt.msg)
			}
		})
	}
}

// TestBatch: a batch runs read-only requests in order; an operation that
// changes the node, or a nested batch, is refused without affecting the
// others.
func TestBatch(t *testing.T) {
	r := testRegistry()
	req := func(op string, in any) Request {
		data, _ := json.Marshal(in)
		return Request{Op: op, Input: data}
	}
	in, _ := json.Marshal(BatchRequest{Requests: []Request{
		req("test.echo", echoIn{"one"}),
		req("test.write", echoIn{"two"}),
		req(BatchOp, BatchRequest{}),
		req("test.echo", echoIn{"four"}),
		{Op: "test.echo"},
	}})
	resp := serve(t, r, BatchOp, in)
	var out BatchResult
	if err := resp.Decode("n", BatchOp, &out); err != nil {
		t.Fatal(err)
	}
	codes := []string{}
	for _, r := range out.Responses {
		if r.OK {
			var e echoIn
			_ = json.Unmarshal(r.Result, &e)
			codes = append(codes, "ok:"+e.Text)
		} else {
			codes = append(codes, r.Error.Code)
		}
	}
	if got := strings.Join(codes, " "); got != "ok:one not-read-only bad-input ok:four ok:" {
		t.Errorf("batch answers = %s", got)
	}
}

func TestDecodeResponse(t *testing.T) {
	tests := []struct {
		name, stdout, err string
	}{
		{"plain", `{"ok":true,"result":1}` + "\n", ""},
		{"noise before", "Welcome to node1\nlast login: never\n" + `{"ok":true}` + "\n", ""},
		{"empty", "\n\n", "gave no response"},
		{"not JSON", "hello\n", "not JSON"},
		{"unknown field", `{"ok":true,"extra":1}`, "not JSON"},
		{"both", `{"ok":true,"error":{"code":"x","message":"y"}}`, "malformed"},
		{"neither", `{"ok":false}`, "malformed"},
		{"trailing", `{"ok":true} {}`, "trailing data"},
		{"oversize", strings.Repeat(" ", MaxResponse+1), "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeResponse([]byte(tt.stdout))
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Errorf("err = %v, want %q", err, tt.err)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name, stdout string
		installed    bool
		arch, rest   string
		err, unsafe  string
	}{
		{"ok", "castellan-agent ok\n{\"ok\":true}\n", true, "", "{\"ok\":true}\n", "", ""},
		{"missing arm", "castellan-agent missing aarch64\n", false, "arm64", "", "", ""},
		{"noise first", "motd\ncastellan-agent ok\nX", true, "", "X", "", ""},
		{"unsafe mode", "castellan-agent unsafe /var/lib/castellan mode-775\n", false, "", "", "", "mode 775 lets group or others write"},
		{"unsafe content", "castellan-agent unsafe /x content-sha256-abc\n", false, "", "", "", "is not the binary castellan shipped"},
		{"unknown machine", "castellan-agent missing riscv64\n", false, "", "", "unsupported node architecture", ""},
		{"garbage status", "castellan-agent what\n", false, "", "", "unexpected launcher output", ""},
		{"nothing", "", false, "", "", "printed no status", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, rest, err := parseStatus([]byte(tt.stdout))
			switch {
			case tt.err != "":
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("err = %v, want %q", err, tt.err)
				}
			case tt.unsafe != "":
				if st.unsafe == nil || !strings.Contains((&UnsafeAgentError{Path: st.unsafe.Path, Reason: st.unsafe.Reason, Fix: st.unsafe.Fix}).Error(), tt.unsafe) {
					t.Errorf("unsafe = %+v, want %q", st.unsafe, tt.unsafe)
				}
			default:
				if err != nil || st.Installed != tt.installed || st.Arch != tt.arch || string(rest) != tt.rest {
					t.Errorf("got %+v %q %v", st, rest, err)
				}
			}
		})
	}
}

// FuzzDecodeResponse: whatever a node prints, decoding never panics, stays
// within bounds, and what it accepts is a well-formed Response that
// re-encodes to a line it accepts again.
func FuzzDecodeResponse(f *testing.F) {
	for _, s := range []string{`{"ok":true,"result":{"a":1}}`, "noise\n{\"ok\":false,\"error\":{\"code\":\"x\",\"message\":\"y\"}}", "", "{", `{"ok":true} 1`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, err := DecodeResponse(data)
		if err != nil {
			return
		}
		if resp.OK == (resp.Error != nil) {
			t.Fatalf("accepted a malformed response %+v", resp)
		}
		again, err := json.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeResponse(again)
		if err != nil || back.OK != resp.OK {
			t.Fatalf("re-encoded response does not decode: %v: %s", err, again)
		}
	})
}

// FuzzServe: whatever arrives on stdin, the agent answers exactly one line
// that the installer decodes.
func FuzzServe(f *testing.F) {
	r := testRegistry()
	for _, s := range []string{`{"text":"x"}`, `null`, `{"requests":[{"op":"test.echo","input":{"text":"a"}}]}`, "\xff", `[]`} {
		f.Add("test.echo", []byte(s))
		f.Add(BatchOp, []byte(s))
	}
	f.Fuzz(func(t *testing.T, op string, input []byte) {
		var out bytes.Buffer
		if err := r.Serve(context.Background(), op, bytes.NewReader(input), &out, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
		if bytes.Count(out.Bytes(), []byte("\n")) != 1 {
			t.Fatalf("%d lines", bytes.Count(out.Bytes(), []byte("\n")))
		}
		if _, err := DecodeResponse(out.Bytes()); err != nil {
			t.Fatalf("undecodable answer: %v: %q", err, out.String())
		}
	})
}
