// Package report renders a run for people and machines: the headless
// printer turns the engine's event stream into text lines (with per-node
// prefixes) or JSON lines, and summaries render plans, run results and
// history.
package report

import (
	"encoding/json"
	"fmt"
	"io"
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
type Printer struct {
	mu     sync.Mutex
	w      io.Writer
	format Format
	// Verbose also prints step starts and every progress percent.
	Verbose bool
	width   int // node column width
	lastPct map[string]int64
	now     func() time.Time
}

// NewPrinter writes events to w. nodes are the run's node names (they size
// the prefix column).
func NewPrinter(w io.Writer, format Format, nodes []string) *Printer {
	width := 7 // "cluster"
	for _, n := range nodes {
		width = max(width, len(n))
	}
	return &Printer{w: w, format: format, width: width, lastPct: map[string]int64{}, now: time.Now}
}

// Emit implements engine.Sink.
func (p *Printer) Emit(e engine.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.format == JSON {
		data, err := json.Marshal(e)
		if err == nil {
			fmt.Fprintf(p.w, "%s\n", data)
		}
		return
	}
	line, ok := p.text(e)
	if ok {
		fmt.Fprintln(p.w, line)
	}
}

// text renders one event as a line, or says it is not worth a line.
func (p *Printer) text(e engine.Event) (string, bool) {
	prefix := fmt.Sprintf("%-11s %-*s ", e.Phase, p.width, e.Node)
	if e.Phase == "" && e.Node == "" {
		prefix = ""
	}
	msg := e.Message
	switch e.Status {
	case engine.StatusStarted:
		switch {
		case e.Phase == "" && e.Node == "":
			return "run " + e.Run + ": " + msg, true
		case e.Node == "" && e.Step == "":
			return prefix + "started", true
		case e.Step == "plan":
			return "", false
		default:
			return prefix + e.Step + "...", p.Verbose
		}
	case engine.StatusProgress:
		if e.Total <= 0 {
			return "", false
		}
		pct := e.Done * 100 / e.Total
		key := e.Phase + "/" + e.Node + "/" + e.Step
		step := int64(25)
		if p.Verbose {
			step = 1
		}
		if last, seen := p.lastPct[key]; seen && pct/step == last/step && e.Done != e.Total {
			return "", false
		}
		if e.Done == e.Total && p.lastPct[key] == 100 {
			return "", false
		}
		p.lastPct[key] = pct
		return fmt.Sprintf("%s%s %3d%% (%s of %s)", prefix, e.Step, pct, Bytes(e.Done), Bytes(e.Total)), true
	case engine.StatusDone:
		what := "done"
		if e.Step != "" && e.Step != "plan" {
			what = e.Step + " done"
		}
		if e.Step == "plan" {
			return "", false
		}
		if msg != "" {
			what += ": " + msg
		}
		if e.Phase == "" && e.Node == "" {
			return fmt.Sprintf("run %s %s (%s)", e.Run, what, Duration(e.Elapsed)), true
		}
		return fmt.Sprintf("%s%s (%s)", prefix, what, Duration(e.Elapsed)), true
	case engine.StatusFailed:
		what := "FAILED"
		if e.Step != "" {
			what = e.Step + " FAILED"
		}
		if e.Phase == "" && e.Node == "" {
			return fmt.Sprintf("run %s FAILED: %s", e.Run, indent(msg)), true
		}
		return fmt.Sprintf("%s%s: %s", prefix, what, indent(msg)), true
	case engine.StatusSkipped:
		return prefix + msg, true
	case engine.StatusWarning:
		return prefix + "warning: " + msg, true
	case engine.StatusInfo:
		if e.Step == "plan" {
			return prefix + "will " + msg, true
		}
		return prefix + msg, true
	}
	return prefix + string(e.Status) + " " + msg, true
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
