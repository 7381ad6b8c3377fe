package report

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing"

	"castellan/installer/engine"
	"castellan/installer/state"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// stream is a run as the engine reports it: an agent installed on one node,
// another node failing with a multi-line error, a third aborted mid-step,
// and text from nodes carrying escape sequences.
func stream() []engine.Event {
	change := engine.Change{Node: "server-1", Action: "install-agent", Target: "/var/lib/castellan/bin/castellan-0123", Summary: "install the castellan agent (11.0 MiB)"}
	evs := []engine.Event{
		{Kind: engine.KindRun, Status: engine.StatusStarted, Message: "1 phase(s) on 3 node(s)"},
		{Kind: engine.KindStep, Node: "server-1", Step: engine.StepObserve, Status: engine.StatusStarted},
		{Kind: engine.KindStep, Node: "server-1", Step: engine.StepObserve, Status: engine.StatusDone, Elapsed: 80 * time.Millisecond},
		{Kind: engine.KindPhase, Phase: "preflight", Status: engine.StatusStarted},
		{Kind: engine.KindChange, Phase: "preflight", Node: "server-1", Step: engine.StepApply, Status: engine.StatusPlanned, Message: change.Summary, Change: &change},
		{Kind: engine.KindStep, Phase: "preflight", Node: "server-1", Step: "agent", Status: engine.StatusStarted},
		{Kind: engine.KindProgress, Phase: "preflight", Node: "server-1", Step: "upload agent", Status: engine.StatusProgress, Done: 0, Total: 11 << 20},
		{Kind: engine.KindProgress, Phase: "preflight", Node: "server-1", Step: "upload agent", Status: engine.StatusProgress, Done: 3 << 20, Total: 11 << 20},
		{Kind: engine.KindProgress, Phase: "preflight", Node: "server-1", Step: "upload agent", Status: engine.StatusProgress, Done: 6 << 20, Total: 11 << 20},
		{Kind: engine.KindProgress, Phase: "preflight", Node: "server-1", Step: "upload agent", Status: engine.StatusProgress, Done: 11 << 20, Total: 11 << 20},
		{Kind: engine.KindMessage, Phase: "preflight", Node: "server-1", Status: engine.StatusInfo, Message: "Debian GNU/Linux 12 \x1b[31m(bookworm)\x1b[0m, kernel 6.1.0"},
		{Kind: engine.KindMessage, Phase: "preflight", Node: "server-1", Status: engine.StatusWarning, Message: "the clock is not synchronised (NTP)"},
		{Kind: engine.KindStep, Phase: "preflight", Node: "server-1", Step: "agent", Status: engine.StatusDone, Elapsed: 2500 * time.Millisecond},
		{Kind: engine.KindStep, Phase: "preflight", Node: "agent-1", Step: "agent", Status: engine.StatusFailed, Message: "preflight: data disk /dev/vdz does not exist\nsecond line\u202e of detail"},
		{Kind: engine.KindStep, Phase: "preflight", Node: "agent-2", Step: "agent", Status: engine.StatusInterrupted},
		{Kind: engine.KindPhase, Phase: "preflight", Status: engine.StatusFailed, Message: "failed on 1 node(s): agent-1; 1 node(s) interrupted", Ref: 14},
		{Kind: engine.KindRun, Status: engine.StatusFailed, Message: "phase preflight failed (reported above)", Ref: 14, Elapsed: 3 * time.Second},
	}
	for i := range evs {
		evs[i].Seq = uint64(i + 1)
		evs[i].Run = "7"
		evs[i].Time = t0.Add(time.Duration(i) * time.Second)
	}
	return evs
}

func TestTextPrinterGolden(t *testing.T) {
	var out bytes.Buffer
	p := NewPrinter(&out, Text, []string{"server-1", "agent-1", "agent-2"})
	for _, e := range stream() {
		p.Emit(e)
	}
	golden(t, "events.txt", out.Bytes())
	if bytes.ContainsAny(out.Bytes(), "\x1b\u202e") {
		t.Error("a control character reached the text output")
	}
}

func TestJSONPrinterGolden(t *testing.T) {
	var out bytes.Buffer
	p := NewPrinter(&out, JSON, nil)
	for _, e := range stream() {
		p.Emit(e)
	}
	golden(t, "events.jsonl", out.Bytes())
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var e engine.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not an event: %v: %s", err, line)
		}
		if strings.ContainsAny(line, "\x1b\u202e") {
			t.Errorf("a control character is raw in %s", line)
		}
	}
}

func TestPlanGolden(t *testing.T) {
	var out bytes.Buffer
	WritePlan(&out, []engine.Plan{
		{Phase: "preflight", Changes: []engine.Change{
			{Node: "server-1", Action: "trust-host-key", Summary: "trust new host key ssh-ed25519 SHA256:abc of server-1 (192.168.56.10:22), and record it"},
			{Node: "server-1", Action: "install-agent", Summary: "install the castellan agent (11.0 MiB) at /var/lib/castellan/bin/castellan-0123"},
		}, Notes: []string{"server-1 runs Debian 12"}},
		{Phase: "identity", Changes: []engine.Change{{Node: "server-1", Action: "enrol", Summary: "enrol", Detail: "EK sha256:ff\nAK new"}}},
		{Phase: "mesh"},
	}, []string{"netpol"}, nil)
	WritePlan(&out, nil, nil, nil)
	WritePlan(&out, []engine.Plan{{Phase: "netpol"}}, nil, []string{"agent-1", "server-1"})
	golden(t, "plan.txt", out.Bytes())
}

func testRecord() *state.Record {
	return &state.Record{
		Number: 7, Command: "apply", Who: "ops <ops@example.org>", Started: t0, Finished: t0.Add(3 * time.Second), Duration: 3 * time.Second,
		Nodes: []string{"server-1", "agent-1", "agent-2"}, Outcome: engine.OutcomeFailed,
		Error: "phase preflight: failed on 1 node(s): agent-1",
		Phases: []engine.PhaseResult{
			{Name: "preflight", Outcome: engine.OutcomeFailed, Changes: []engine.Change{
				{Node: "server-1", Action: "install-agent", Summary: "install the castellan agent"},
				{Node: "agent-2", Action: "install-agent", Summary: "install the castellan agent"},
			}, Nodes: map[string]engine.Outcome{"server-1": engine.OutcomeOK, "agent-1": engine.OutcomeFailed, "agent-2": engine.OutcomeInterrupted}},
			{Name: "identity", Outcome: engine.OutcomeSkipped},
		},
		NodeErrors:      map[string]string{"agent-1": "preflight: data disk /dev/vdz does not exist"},
		TrustedHostKeys: []string{"server-1 (192.168.56.10:22) ssh-ed25519 SHA256:abc"},
		Warnings:        []string{"spec.identity.tpm is insecure-skip"},
	}
}

func TestSummaryGolden(t *testing.T) {
	var out bytes.Buffer
	WriteSummary(&out, testRecord(), "/srv/state", "0123456789ab")
	ok := testRecord()
	ok.Outcome, ok.Error, ok.NodeErrors = engine.OutcomeOK, "", nil
	ok.Phases[0].Outcome = engine.OutcomeOK
	ok.Phases[0].Nodes = map[string]engine.Outcome{"server-1": engine.OutcomeOK, "agent-2": engine.OutcomeOK}
	WriteSummary(&out, ok, "/srv/state", "0123456789ab")
	golden(t, "summary.txt", out.Bytes())
}

func TestHistoryGolden(t *testing.T) {
	var out bytes.Buffer
	died := &state.Record{Number: 8, Command: "apply", Who: "ops", Started: t0.Add(time.Hour), Nodes: []string{"server-1"}, Outcome: engine.OutcomeDied}
	roll := testRecord()
	roll.Number, roll.Command, roll.RollbackOf, roll.Outcome = 6, "rollback", 2, engine.OutcomeOK
	WriteHistory(&out, []state.Entry{
		{Hash: plumbing.NewHash("0123456789abcdef0123456789abcdef01234567"), Record: testRecord()},
		{Hash: plumbing.NewHash("fedcba9876543210fedcba9876543210fedcba98"), Record: roll},
	}, died)
	WriteHistory(&out, nil, nil)
	golden(t, "history.txt", out.Bytes())
}

func TestClean(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain text, tabs\tand\nnewlines", "plain text, tabs\tand\nnewlines"},
		{"red \x1b[31mtext", `red \x1b[31mtext`},
		{"bell\a and NUL\x00", `bell\x07 and NUL\x00`},
		{"C1 \u009b CSI", `C1 \x9b CSI`},
		{"DEL \x7f", `DEL \x7f`},
		{"bidi \u202eevil", `bidi \u202eevil`},
		{"zero\u200bwidth", `zero\u200bwidth`},
		{"bad utf8 \xff\xfe", `bad utf8 \xff\xfe`},
		{"café ✓ 日本", "café ✓ 日本"},
	}
	for _, tt := range tests {
		if got := Clean(tt.in); got != tt.want {
			t.Errorf("Clean(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzClean: nothing Clean returns holds a character a terminal could
// interpret, and clean text is returned unchanged.
func FuzzClean(f *testing.F) {
	for _, s := range []string{"a\x1bb", "\u202e", "ok", "\xff", "\u009b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := Clean(s)
		for _, r := range out {
			if unsafeRune(r) {
				t.Fatalf("Clean(%q) = %q keeps %U", s, out, r)
			}
		}
		if !strings.ContainsFunc(s, unsafeRune) && strings.ToValidUTF8(s, "") == s && out != s {
			t.Fatalf("Clean changed clean text %q to %q", s, out)
		}
		var plain, escaped string
		raw := []byte(mustJSON(s))
		esc := EscapeJSON(raw)
		if err := json.Unmarshal(raw, &plain); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(esc, &escaped); err != nil || escaped != plain {
			t.Fatalf("EscapeJSON changed the value of %q: %q, want %q (%v)", s, escaped, plain, err)
		}
		if bytes.ContainsFunc(esc, func(r rune) bool { return r >= 0x7f && unsafeRune(r) }) {
			t.Fatalf("EscapeJSON(%q) keeps a raw control: %q", raw, esc)
		}
	})
}

func mustJSON(s string) string {
	data, _ := json.Marshal(s)
	return string(data)
}
