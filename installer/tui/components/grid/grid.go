// Package grid turns the engine's event stream into what the plan and
// progress pages show: a phase x node grid with a status per cell, the
// transfers in flight, a log per node, and the first failure in full. It is
// the TUI's counterpart of report.Printer: another view of the same events.
package grid

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"charm.land/bubbles/v2/progress"
	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"

	"castellan/installer/engine"
	"castellan/installer/report"
	"castellan/installer/tui/common"
)

// ConnectColumn is the column of the engine's own per-node step (the one
// agent exec that observes a node), which belongs to no phase.
const ConnectColumn = "connect"

// Status is a cell's state.
type Status int

// Cell states.
const (
	Pending Status = iota
	Running
	Planned
	Done
	Unchanged
	Failed
	Interrupted
)

// Cell is one phase on one node.
type Cell struct {
	Status Status
	Step   string
	// Transfer names the step that reported bytes: Done of Total.
	Transfer    string
	Done, Total int64
}

// Failure is the first error of a run, in full.
type Failure struct {
	Node, Phase, Step string
	Message           string
}

// Line is one line of the log.
type Line struct {
	Node string // "" for the whole run
	Text string
	Kind engine.Status
}

// Model is the state built from the events.
type Model struct {
	common  common.Common
	Phases  []string // columns, in run order (ConnectColumn first when the run observes)
	Nodes   []string // rows
	cells   map[string]*Cell
	active  string // the phase running now
	Log     []Line
	Failure *Failure
	// Run is the run's last status (started, done, failed, interrupted) and
	// its message.
	Run        engine.Status
	RunMessage string
	Started    time.Time
	Elapsed    time.Duration // set when the run ended
	bar        progress.Model
}

// New returns a grid for a run's phases and nodes.
func New(c common.Common, phases, nodes []string) *Model {
	cols := slices.Clone(phases)
	bar := progress.New(progress.WithWidth(20), progress.WithoutPercentage(), progress.WithFillCharacters('█', '░'), progress.WithColors(lipgloss.Cyan))
	return &Model{common: c, Phases: cols, Nodes: slices.Clone(nodes), cells: map[string]*Cell{}, bar: bar}
}

// SetCommon updates the size and styles.
func (m *Model) SetCommon(c common.Common) { m.common = c }

func (m *Model) cell(phase, node string) *Cell {
	if phase == "" {
		phase = ConnectColumn
	}
	k := phase + "\x00" + node
	c := m.cells[k]
	if c == nil {
		c = &Cell{}
		m.cells[k] = c
	}
	return c
}

// Cell returns the state of phase on node.
func (m *Model) Cell(phase, node string) Cell { return *m.cell(phase, node) }

func (m *Model) ensureNode(n string) {
	if n != "" && !slices.Contains(m.Nodes, n) {
		m.Nodes = append(m.Nodes, n)
	}
}

func (m *Model) ensurePhase(p string) {
	if p != "" && !slices.Contains(m.Phases, p) {
		m.Phases = append(m.Phases, p)
	}
}

// Apply takes one event into the model.
func (m *Model) Apply(e engine.Event) {
	if m.Started.IsZero() && !e.Time.IsZero() {
		m.Started = e.Time
	}
	m.ensureNode(e.Node)
	m.ensurePhase(e.Phase)
	if e.Phase == "" && e.Node != "" && (e.Kind == engine.KindStep || e.Kind == engine.KindProgress) && !slices.Contains(m.Phases, ConnectColumn) {
		// The engine's own step (observing nodes): a column of its own, shown
		// once a run has it (a confirmed plan's run observed at the prompt).
		m.Phases = append([]string{ConnectColumn}, m.Phases...)
	}
	phase, step, msg := report.Clean(e.Phase), report.Clean(e.Step), report.Clean(e.Message)
	switch e.Kind {
	case engine.KindRun:
		m.Run, m.RunMessage = e.Status, msg
		if e.Status == engine.StatusStarted {
			m.Started = e.Time
			m.logf("", e.Status, "run started: %s", msg)
			break
		}
		m.Elapsed = e.Elapsed
		m.active = ""
		if (e.Status == engine.StatusFailed || e.Status == engine.StatusInterrupted) && m.Failure == nil && e.Ref == 0 {
			m.Failure = &Failure{Message: msg}
		}
		m.logf("", e.Status, "run %s: %s", e.Status, msg)
	case engine.KindPhase:
		m.phase(e, phase, msg)
	case engine.KindStep:
		c := m.cell(e.Phase, e.Node)
		c.Step = step
		where := strings.TrimSpace(phase + " " + step)
		switch e.Status {
		case engine.StatusStarted:
			c.Status = Running
			c.Done, c.Total = 0, 0
		case engine.StatusDone:
			c.Status = Done
			m.logf(e.Node, e.Status, "✓ %s (%s)", where, report.Duration(e.Elapsed))
		case engine.StatusInterrupted:
			c.Status = Interrupted
			m.logf(e.Node, e.Status, "⊘ %s interrupted", where)
		default:
			c.Status = Failed
			m.logf(e.Node, e.Status, "✗ %s: %s", where, msg)
			if m.Failure == nil && e.Ref == 0 {
				m.Failure = &Failure{Node: report.Clean(e.Node), Phase: phase, Step: step, Message: msg}
			}
		}
	case engine.KindProgress:
		c := m.cell(e.Phase, e.Node)
		c.Status, c.Step, c.Transfer, c.Done, c.Total = Running, step, step, e.Done, e.Total
		if e.Total > 0 && e.Done == e.Total {
			m.logf(e.Node, e.Status, "%s: %s sent", step, report.Bytes(e.Total))
		}
	case engine.KindChange:
		verb := "plan"
		if e.Step == engine.StepApply {
			verb = "will"
		}
		m.logf(e.Node, e.Status, "→ %s %s: %s", phase, verb, msg)
	case engine.KindMessage:
		mark := " "
		if e.Status == engine.StatusWarning {
			mark = "!"
		}
		m.logf(e.Node, e.Status, "%s %s", mark, strings.TrimSpace(phase+": "+msg))
	}
}

func (m *Model) phase(e engine.Event, phase, msg string) {
	switch e.Status {
	case engine.StatusStarted:
		m.active = e.Phase
		m.logf("", e.Status, "%s started", phase)
		return
	case engine.StatusPlanned:
		for _, n := range m.Nodes {
			if c := m.cell(e.Phase, n); c.Status != Failed {
				c.Status = Planned
			}
		}
		m.logf("", e.Status, "%s planned: %s", phase, msg)
		return
	}
	final := map[engine.Status]Status{
		engine.StatusDone: Done, engine.StatusSkipped: Unchanged,
		engine.StatusFailed: Interrupted, engine.StatusInterrupted: Interrupted,
	}[e.Status]
	for _, n := range m.Nodes {
		c := m.cell(e.Phase, n)
		switch {
		case c.Status == Failed || c.Status == Interrupted:
		case e.Status == engine.StatusDone && c.Status == Pending:
			c.Status = Unchanged // the phase had nothing to do there
		case e.Status == engine.StatusFailed && c.Status != Running:
		default:
			c.Status = final
		}
	}
	if m.active == e.Phase {
		m.active = ""
	}
	if (e.Status == engine.StatusFailed || e.Status == engine.StatusInterrupted) && m.Failure == nil && e.Ref == 0 {
		m.Failure = &Failure{Phase: phase, Message: msg}
	}
	m.logf("", e.Status, "%s %s: %s", phase, e.Status, msg)
}

func (m *Model) logf(node string, kind engine.Status, format string, a ...any) {
	m.Log = append(m.Log, Line{Node: node, Kind: kind, Text: fmt.Sprintf(format, a...)})
}

// Running reports whether the run is going.
func (m *Model) Running() bool {
	return m.Run == engine.StatusStarted
}

// ElapsedAt is the run's elapsed time at now.
func (m *Model) ElapsedAt(now time.Time) time.Duration {
	if m.Started.IsZero() {
		return 0
	}
	if !m.Running() && m.Elapsed > 0 {
		return m.Elapsed
	}
	return now.Sub(m.Started)
}

// glyph is how a cell's state reads, with or without colour.
func (m *Model) glyph(c *Cell, spin string) string {
	s := m.common.Styles
	switch c.Status {
	case Running:
		return s.Running.Render(spin)
	case Planned:
		return s.Dim.Render("○")
	case Done:
		return s.OK.Render("✓")
	case Unchanged:
		return s.Dim.Render("=")
	case Failed:
		return s.Failed.Render("✗")
	case Interrupted:
		return s.Warning.Render("⊘")
	}
	return s.Dim.Render("·")
}

// View renders the grid: one row per node, one column per phase; selected is
// the highlighted row (-1 for none). spin is the spinner's frame.
func (m *Model) View(selected int, spin string) string {
	s := m.common.Styles
	nameW := 4
	for _, n := range m.Nodes {
		nameW = max(nameW, min(ansi.StringWidth(report.Clean(n)), 20))
	}
	avail := m.common.Width - nameW - 3
	colW := make([]int, len(m.Phases))
	total := 0
	for i, p := range m.Phases {
		colW[i] = max(ansi.StringWidth(p), 6) + 1
		total += colW[i]
	}
	for total > avail && total > 0 { // shrink the widest column until it fits
		w := slices.Index(colW, slices.Max(colW))
		if colW[w] <= 4 {
			break
		}
		colW[w]--
		total--
	}
	var b strings.Builder
	head := strings.Repeat(" ", nameW+3)
	for i, p := range m.Phases {
		name := ansi.Truncate(p, colW[i]-1, "…")
		name += strings.Repeat(" ", colW[i]-ansi.StringWidth(name))
		if p == m.active {
			head += s.Header.Render(name)
		} else {
			head += s.TableHead.Render(strings.TrimRight(name, " ")) + strings.Repeat(" ", colW[i]-ansi.StringWidth(strings.TrimRight(name, " ")))
		}
	}
	b.WriteString(strings.TrimRight(head, " "))
	for r, n := range m.Nodes {
		b.WriteByte('\n')
		name := ansi.Truncate(report.Clean(n), nameW, "…")
		marker := "  "
		if r == selected {
			marker = s.Cursor.Render("› ")
			name = s.Selected.Render(name)
		}
		line := marker + name + strings.Repeat(" ", nameW-ansi.StringWidth(ansi.Strip(name))+1)
		for i, p := range m.Phases {
			c := m.cell(p, n)
			text := m.glyph(c, spin)
			if c.Status == Running {
				extra := c.Step
				if c.Total > 0 {
					extra = fmt.Sprintf("%d%%", c.Done*100/c.Total)
				}
				text += " " + ansi.Truncate(extra, colW[i]-3, "")
			}
			line += text + strings.Repeat(" ", max(colW[i]-ansi.StringWidth(text), 0))
		}
		b.WriteString(strings.TrimRight(line, " "))
	}
	return b.String()
}

// Transfers renders a progress bar per node with a transfer in its running
// phase (the agent's upload), one line each.
func (m *Model) Transfers() []string {
	type xfer struct {
		label string
		c     *Cell
	}
	var xs []xfer
	labelW := 0
	for _, n := range m.Nodes {
		for _, p := range m.Phases {
			c := m.cell(p, n)
			if p != m.active || c.Total <= 0 || (c.Status != Running && c.Done != c.Total) {
				continue
			}
			label := fmt.Sprintf("%s %s", ansi.Truncate(report.Clean(n), 14, "…"), c.Transfer)
			labelW = max(labelW, ansi.StringWidth(label))
			xs = append(xs, xfer{label, c})
		}
	}
	var out []string
	m.bar.SetWidth(max(m.common.Width-labelW-30, 10))
	for _, x := range xs {
		pct := float64(x.c.Done) / float64(x.c.Total)
		label := x.label + strings.Repeat(" ", labelW-ansi.StringWidth(x.label))
		out = append(out, fmt.Sprintf("%s %s %3.0f%% %s/%s", label, m.bar.ViewAs(pct), pct*100, report.Bytes(x.c.Done), report.Bytes(x.c.Total)))
	}
	return out
}

// LogLines renders the log of node (and the run's own lines), or of every
// node when node is "", wrapped to width.
func (m *Model) LogLines(node string, width int) []string {
	s := m.common.Styles
	var out []string
	for _, l := range m.Log {
		if node != "" && l.Node != "" && l.Node != node {
			continue
		}
		text := l.Text
		if node == "" && l.Node != "" {
			text = report.Clean(l.Node) + " " + text
		}
		style := lipgloss.NewStyle()
		switch l.Kind {
		case engine.StatusFailed:
			style = s.ErrorText
		case engine.StatusWarning, engine.StatusInterrupted:
			style = s.Warning
		case engine.StatusDone:
			style = s.OK
		}
		for _, w := range strings.Split(ansi.Wrap(text, max(width, 10), " "), "\n") {
			out = append(out, style.Render(w))
		}
	}
	return out
}
