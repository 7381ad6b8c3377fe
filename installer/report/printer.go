// Package report renders a run for people and machines: the headless
// printer turns the engine's event stream into text lines (with per-node
// prefixes) or JSON lines, and summaries render plans, run results and
// history. Whatever came from a profile or a node is escaped: no control
// character reaches the terminal or a JSON line raw.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"castellan/installer/engine"
)

// Format is an output format.
type Format string

// Formats.
const (
	Text Format = "text"
	JSON Format = "json"
)

// ParseFormat checks an --output value.
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case Text, JSON:
		return Format(s), nil
	}
	return "", fmt.Errorf("unknown output format %q: use text or json", s)
}

// Printer is an engine.Sink that writes events as they happen.
//
// Text: one line per event worth a line: a node's error in full the first
// time (later lines refer to it), warnings, changes about to be applied,
// steps done, phases and the run ending. Nodes interrupted by Ctrl-C are
// counted in one line per phase, not one line each.
//
// JSON: every event as one JSON object per line (engine.Event's fields).
type Printer struct {
	mu     sync.Mutex
	w      io.Writer
	format Format
	// Verbose also prints step starts, the observation of each node and
	// every progress percent.
	Verbose     bool
	width       int // node column width
	lastPct     map[string]int64
	interrupted map[string][]string // phase -> nodes stopped by an abort
}

// NewPrinter writes events to w. nodes are the run's node names (they size
// the prefix column).
func NewPrinter(w io.Writer, format Format, nodes []string) *Printer {
	width := 7 // "cluster"
	for _, n := range nodes {
		width = max(width, len([]rune(Clean(n))))
	}
	return &Printer{w: w, format: format, width: width, lastPct: map[string]int64{}, interrupted: map[string][]string{}}
}

// Emit implements engine.Sink.
func (p *Printer) Emit(e engine.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.format == JSON {
		data, err := json.Marshal(e)
		if err == nil {
			fmt.Fprintf(p.w, "%s\n", EscapeJSON(data))
		}
		return
	}
	if line, ok := p.text(e); ok {
		fmt.Fprintln(p.w, line)
	}
}

// text renders one event as a line, or says it is not worth a line.
func (p *Printer) text(e engine.Event) (string, bool) {
	prefix := ""
	if e.Phase != "" || e.Node != "" {
		phase := e.Phase
		if phase == "" {
			phase = "-"
		}
		prefix = fmt.Sprintf("%-11s %-*s ", Clean(phase), p.width, Clean(e.Node))
	}
	msg := indent(Clean(e.Message))
	switch e.Kind {
	case engine.KindRun:
		return p.runLine(e, msg)
	case engine.KindPhase:
		return p.phaseLine(e, prefix, msg)
	case engine.KindChange:
		// Planned changes are printed as a plan; the ones about to be
		// applied, as they go.
		return prefix + "will " + msg, e.Step == engine.StepApply
	case engine.KindStep:
		return p.stepLine(e, prefix, msg)
	case engine.KindProgress:
		return p.progressLine(e, prefix)
	case engine.KindMessage:
		if e.Status == engine.StatusWarning {
			return prefix + "warning: " + msg, true
		}
		return prefix + msg, true
	}
	return prefix + string(e.Status) + " " + msg, true
}

func (p *Printer) runLine(e engine.Event, msg string) (string, bool) {
	name := "run " + Clean(e.Run)
	if e.Run == "plan" {
		name = "plan"
	}
	switch e.Status {
	case engine.StatusStarted:
		return name + ": " + msg, true
	case engine.StatusDone:
		return fmt.Sprintf("%s done: %s (%s)", name, msg, Duration(e.Elapsed)), true
	case engine.StatusInterrupted:
		return fmt.Sprintf("%s INTERRUPTED: %s", name, msg), true
	default:
		return fmt.Sprintf("%s FAILED: %s", name, msg), true
	}
}

func (p *Printer) phaseLine(e engine.Event, prefix, msg string) (string, bool) {
	switch e.Status {
	case engine.StatusStarted:
		return prefix + "started", p.Verbose
	case engine.StatusPlanned:
		return prefix + "planned: " + msg, p.Verbose
	case engine.StatusSkipped:
		return prefix + msg, true
	case engine.StatusDone:
		return fmt.Sprintf("%sdone: %s (%s)", prefix, msg, Duration(e.Elapsed)), true
	case engine.StatusInterrupted:
		line := prefix + "INTERRUPTED"
		if nodes := p.interrupted[e.Phase]; len(nodes) > 0 {
			line += fmt.Sprintf(": %d node(s) stopped mid-step", len(nodes))
			delete(p.interrupted, e.Phase)
		}
		return line, true
	default:
		return prefix + "FAILED: " + msg, true
	}
}

func (p *Printer) stepLine(e engine.Event, prefix, msg string) (string, bool) {
	step := Clean(e.Step)
	switch e.Status {
	case engine.StatusStarted:
		return prefix + step + "...", p.Verbose
	case engine.StatusDone:
		return fmt.Sprintf("%s%s done (%s)", prefix, step, Duration(e.Elapsed)), p.Verbose || e.Step != engine.StepObserve
	case engine.StatusInterrupted:
		p.interrupted[e.Phase] = append(p.interrupted[e.Phase], e.Node)
		return "", false
	default:
		return fmt.Sprintf("%s%s FAILED: %s", prefix, step, msg), true
	}
}

func (p *Printer) progressLine(e engine.Event, prefix string) (string, bool) {
	if e.Total <= 0 {
		return "", false
	}
	pct := e.Done * 100 / e.Total
	key := e.Phase + "/" + e.Node + "/" + e.Step
	step := int64(25)
	if p.Verbose {
		step = 1
	}
	last, seen := p.lastPct[key]
	if seen && (pct/step == last/step && e.Done != e.Total || e.Done == e.Total && last == 100) {
		return "", false
	}
	p.lastPct[key] = pct
	return fmt.Sprintf("%s%s %3d%% (%s of %s)", prefix, Clean(e.Step), pct, Bytes(e.Done), Bytes(e.Total)), true
}

func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n    ") }

// Bytes renders a byte count for people.
func Bytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// Duration renders a duration rounded for people.
func Duration(d time.Duration) string {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Millisecond).String()
}

// sortedKeys returns a map's keys, sorted.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
