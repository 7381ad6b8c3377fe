// Package plan is the plan page: while Apply.Prepare connects and plans it
// shows the nodes being observed; then, per phase and node, what would
// change, with the host keys to trust (fingerprints) and the disks to
// format (with what is on them) first in line. Nothing runs until the user
// confirms; declining closes the prepared run, which has written nothing.
package plan

import (
	"errors"
	"fmt"
	"strings"

	"charm.land/bubbles/v2/key"
	"charm.land/bubbles/v2/spinner"
	"charm.land/bubbles/v2/viewport"
	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"castellan/installer"
	"castellan/installer/engine"
	"castellan/installer/report"
	"castellan/installer/tui/common"
	"castellan/installer/tui/components/grid"
)

type state int

const (
	planning state = iota
	planned
	failed    // Prepare failed: nothing is held, nothing was written
	recording // the plan failed: it is being committed as a failed run
	recorded
)

// Page is the plan page.
type Page struct {
	common.Common
	state    state
	rollback string // the run a rollback restores, "" for an apply
	grid     *grid.Model
	spin     spinner.Model
	vp       viewport.Model
	plans    []engine.Plan
	failedPh []string
	err      error
	result   *installer.Result
	confirm  bool
	stopping bool
}

// New returns the page for a run being prepared on nodes with phases.
func New(c common.Common, phases, nodes []string, rollback string) *Page {
	p := &Page{Common: c, rollback: rollback, grid: grid.New(c, phases, nodes)}
	p.spin = spinner.New(spinner.WithSpinner(spinner.MiniDot), spinner.WithStyle(c.Styles.Running))
	p.vp = viewport.New()
	p.vp.SoftWrap = false
	return p
}

// Init implements common.Page.
func (p *Page) Init() tea.Cmd {
	if p.Static {
		return nil
	}
	return p.spin.Tick
}

// Title implements common.Page.
func (p *Page) Title() string {
	if p.rollback != "" {
		return "plan › rollback to run " + report.Clean(p.rollback)
	}
	return "plan"
}

// Status implements common.Page.
func (p *Page) Status() string {
	switch p.state {
	case planning:
		return "connecting and planning: nothing is written"
	case planned:
		return "nothing runs until you confirm"
	case recording:
		return "recording the failed plan"
	case recorded:
		return "recorded; nothing was applied"
	}
	return "nothing was written"
}

// SetSize implements common.Page.
func (p *Page) SetSize(w, h int) {
	p.Common.SetSize(w, h)
	p.grid.SetCommon(p.Common)
	p.layout()
}

// Planned reports whether the plan waits for a decision.
func (p *Page) Planned() bool { return p.state == planned }

// ShortHelp implements help.KeyMap.
func (p *Page) ShortHelp() []key.Binding {
	k := p.KeyMap
	switch {
	case p.confirm:
		return []key.Binding{k.Yes, k.No}
	case p.state == planning:
		return []key.Binding{withHelp(k.Interrupt, "ctrl+c", "stop planning")}
	case p.state == planned:
		apply := k.Apply
		if p.changes() == 0 {
			apply.SetHelp("a", "record a no-op run…")
		}
		return []key.Binding{k.Up, k.Down, k.PageDown, apply, withHelp(k.Back, "esc", "decline")}
	case p.state == recording:
		return nil
	}
	return []key.Binding{k.Up, k.Down, withHelp(k.Back, "esc", "back"), k.History, k.Quit}
}

// FullHelp implements help.KeyMap.
func (p *Page) FullHelp() [][]key.Binding { return [][]key.Binding{p.ShortHelp()} }

func withHelp(b key.Binding, k, desc string) key.Binding {
	b.SetHelp(k, desc)
	return b
}

func (p *Page) changes() int {
	n := 0
	for _, pl := range p.plans {
		n += len(pl.Changes)
	}
	return n
}

// Update implements common.Page.
func (p *Page) Update(msg tea.Msg) (common.Page, tea.Cmd) {
	switch msg := msg.(type) {
	case spinner.TickMsg:
		if p.Static || (p.state != planning && p.state != recording) {
			return p, nil
		}
		var cmd tea.Cmd
		p.spin, cmd = p.spin.Update(msg)
		return p, cmd
	case common.EventsMsg:
		for _, e := range msg.Events {
			p.grid.Apply(e)
		}
		for _, n := range msg.Notices {
			p.grid.Log = append(p.grid.Log, grid.Line{Text: "note: " + report.Clean(n), Kind: engine.StatusInfo})
		}
		p.layout()
	case common.PreparedMsg:
		p.prepared(msg)
	case common.RunDoneMsg:
		p.state, p.result, p.err = recorded, msg.Result, nil
		p.layout()
	case tea.KeyPressMsg:
		return p.key(msg)
	}
	return p, nil
}

func (p *Page) prepared(msg common.PreparedMsg) {
	if msg.Err != nil {
		p.state, p.err = failed, msg.Err
		p.layout()
		return
	}
	p.plans = msg.Plans
	var pe *engine.PlanError
	for _, err := range unwrapAll(msg.PlanErr) {
		if errors.As(err, &pe) {
			p.failedPh = append(p.failedPh, pe.Phase)
		}
	}
	p.state = planned
	if msg.PlanErr != nil {
		// As on the command line: a failed plan is not asked about; the
		// root commits it as a failed run, and nothing is applied.
		p.state, p.err = recording, msg.PlanErr
	}
	p.layout()
}

func unwrapAll(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func (p *Page) key(km tea.KeyPressMsg) (common.Page, tea.Cmd) {
	k := p.KeyMap
	if p.confirm {
		p.confirm = false
		if key.Matches(km, k.Yes) {
			return p, func() tea.Msg { return common.ApplyMsg{} }
		}
		return p, nil
	}
	switch p.state {
	case planning:
		if key.Matches(km, k.Interrupt) {
			if p.stopping {
				return p, func() tea.Msg { return common.AbortMsg{} }
			}
			p.stopping = true
			return p, func() tea.Msg { return common.InterruptMsg{} }
		}
		return p, nil
	case recording:
		return p, nil
	case planned:
		switch {
		case key.Matches(km, k.Apply):
			p.confirm = true
			return p, nil
		case key.Matches(km, k.Back), key.Matches(km, k.Quit), key.Matches(km, k.Interrupt):
			return p, func() tea.Msg { return common.DeclineMsg{} }
		}
	default:
		switch {
		case key.Matches(km, k.Back):
			return p, func() tea.Msg { return common.BackMsg{} }
		case key.Matches(km, k.Quit):
			return p, func() tea.Msg { return common.QuitMsg{} }
		case key.Matches(km, k.History) && p.result != nil:
			return p, func() tea.Msg { return common.HistoryMsg{} }
		}
	}
	var cmd tea.Cmd
	p.vp, cmd = p.vp.Update(km)
	return p, cmd
}

// top is what stays above the scrolling part: the failure first, then the
// summary.
func (p *Page) top() []string {
	s := p.Styles
	var out []string
	if f := p.grid.Failure; f != nil && (p.state == recording || p.state == recorded || p.state == failed) {
		out = append(out, p.failureBox(f)...)
	}
	switch p.state {
	case planned:
		n, nodes := p.changes(), map[string]bool{}
		keys, formats := 0, 0
		for _, pl := range p.plans {
			for _, c := range pl.Changes {
				nodes[c.Node] = true
				switch {
				case c.Action == "trust-host-key":
					keys++
				case destructive(c.Action):
					formats++
				}
			}
		}
		line := s.Header.Render(fmt.Sprintf("%d change(s) on %d node(s)", n, len(nodes)))
		if keys > 0 {
			line += s.Warning.Render(fmt.Sprintf(" · %d host key(s) to trust", keys))
		}
		if formats > 0 {
			line += s.Failed.Render(fmt.Sprintf(" · %d disk(s) to format", formats))
		}
		if n == 0 {
			line = s.OK.Render("No changes: the nodes match the profile.")
		}
		out = append(out, line)
	case failed:
		out = append(out, s.Failed.Render("✗ Could not prepare the run: nothing was written anywhere."))
		for _, l := range strings.Split(ansi.Wrap(report.Clean(p.err.Error()), max(p.Width-2, 20), " "), "\n") {
			out = append(out, "  "+l)
		}
	case recording:
		out = append(out, s.Failed.Render(fmt.Sprintf("✗ %d phase(s) could not plan: %s", len(p.failedPh), strings.Join(p.failedPh, ", "))))
		out = append(out, p.spin.View()+" committing the failed plan to the state repo; nothing is applied")
	case recorded:
		msg := "✗ The plan failed; nothing was applied."
		if p.result != nil && p.result.Record != nil {
			msg = fmt.Sprintf("✗ The plan failed: recorded as run %d (%s) in %s, commit %s; nothing was applied.",
				p.result.Record.Number, p.result.Record.Outcome, report.Clean(p.result.StateDir), p.result.Commit)
		}
		for _, l := range strings.Split(ansi.Wrap(msg, max(p.Width, 20), " "), "\n") {
			out = append(out, s.Failed.Render(l))
		}
	}
	return out
}

func (p *Page) failureBox(f *grid.Failure) []string {
	s := p.Styles
	where := strings.Join(nonEmpty(f.Node, f.Phase, f.Step), " · ")
	if where == "" {
		where = "run"
	}
	out := []string{s.Failed.Render("✗ FAILED  " + where)}
	for _, l := range strings.Split(ansi.Wrap(f.Message, max(p.Width-4, 20), " "), "\n") {
		out = append(out, "  "+s.ErrorText.Render(l))
	}
	return out
}

func nonEmpty(v ...string) []string {
	var out []string
	for _, s := range v {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// destructive reports actions that destroy what is on a device.
func destructive(action string) bool {
	for _, w := range []string{"format", "wipe", "erase"} {
		if strings.Contains(action, w) {
			return true
		}
	}
	return false
}

// planLines renders the plans per phase and node.
func (p *Page) planLines() []string {
	s := p.Styles
	width := max(p.Width-6, 20)
	var out []string
	for _, pl := range p.plans {
		name := s.Section.Render(report.Clean(pl.Phase))
		if pl.Empty() {
			out = append(out, name+"  "+s.Dim.Render("nothing to do"))
		} else {
			out = append(out, name+"  "+s.Dim.Render(pl.Summary()))
		}
		var nodes []string
		for _, c := range pl.Changes {
			if !contains(nodes, c.Node) {
				nodes = append(nodes, c.Node)
			}
		}
		for _, n := range nodes {
			label := n
			if label == "" {
				label = "cluster"
			}
			out = append(out, "  "+s.Header.Render(report.Clean(label)))
			for _, c := range pl.Changes {
				if c.Node != n {
					continue
				}
				out = append(out, p.change(c, width)...)
			}
		}
		for _, note := range pl.Notes {
			for _, l := range strings.Split(ansi.Wrap("note: "+report.Clean(note), width, " "), "\n") {
				out = append(out, "  "+s.Dim.Render(l))
			}
		}
	}
	for _, f := range p.failedPh {
		out = append(out, s.Section.Render(report.Clean(f))+"  "+s.Failed.Render("✗ could not plan"))
	}
	return out
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// change renders one change: host keys with their fingerprint, destructive
// actions marked, details below.
func (p *Page) change(c engine.Change, width int) []string {
	s := p.Styles
	var out []string
	mark, style := s.Added.Render("+"), s.Value
	switch {
	case c.Action == "trust-host-key":
		mark = s.Warning.Render("!")
		out = append(out, "    "+mark+" "+s.Warning.Render("trust host key ")+s.Value.Render(report.Clean(c.Target)))
		mark, style = " ", s.Dim
	case destructive(c.Action):
		mark = s.Failed.Render("!")
		out = append(out, "    "+mark+" "+s.Failed.Render(report.Clean(c.Action)+" "+report.Clean(c.Target))+s.Failed.Render("  (its data is destroyed)"))
		mark, style = " ", s.Label
	}
	for i, l := range strings.Split(ansi.Wrap(report.Clean(c.Summary), width, " "), "\n") {
		if i > 0 {
			mark = " "
		}
		out = append(out, "    "+mark+" "+style.Render(l))
	}
	if d := strings.TrimRight(c.Detail, "\n"); d != "" {
		for _, l := range strings.Split(ansi.Wrap(report.Clean(d), width-2, " "), "\n") {
			out = append(out, "        "+s.Dim.Render(l))
		}
	}
	return out
}

// bottom is the question or the invitation to confirm.
func (p *Page) bottom() []string {
	s := p.Styles
	switch {
	case p.confirm && p.changes() == 0:
		return []string{s.Prompt.Render("Record a run that changes nothing? (y/n)")}
	case p.confirm:
		return []string{s.Prompt.Render(fmt.Sprintf("Apply these %d change(s) now? (y/n)", p.changes()))}
	case p.state == planned:
		return []string{s.Dim.Render("Nothing has been written. a applies (after one more question); esc declines.")}
	case p.state == planning && p.stopping:
		return []string{s.Warning.Render("stopping between steps… ctrl+c again aborts")}
	}
	return nil
}

// layout sets the viewport's size and content.
func (p *Page) layout() {
	top, bottom := p.top(), p.bottom()
	h := max(p.Height-len(top)-len(bottom), 3)
	p.vp.SetWidth(p.Width)
	p.vp.SetHeight(h)
	switch p.state {
	case planning:
		// The grid, then the log following the last lines.
		p.vp.SetContentLines(append(strings.Split(p.grid.View(-1, p.spin.View()), "\n"), append([]string{""}, p.grid.LogLines("", p.Width)...)...))
		p.vp.GotoBottom()
	case planned:
		p.vp.SetContentLines(p.planLines())
	default:
		lines := p.planLines()
		if p.grid.Failure != nil || len(lines) == 0 {
			lines = append(lines, "")
			lines = append(lines, p.grid.LogLines("", p.Width)...)
		}
		p.vp.SetContentLines(lines)
	}
}

// View implements common.Page.
func (p *Page) View() string {
	if p.state == planning {
		p.layout() // the spinner moved
	}
	top, bottom := p.top(), p.bottom()
	parts := append(append(top, p.vp.View()), bottom...)
	return strings.Join(parts, "\n")
}
