// Package history is the history page: the state repo's runs (time,
// command, outcome, what changed); enter shows the diff of a run's state
// against the current state; r rolls back to it after a confirmation (a new
// run that applies that run's profile, through the plan page).
package history

import (
	"fmt"
	"strconv"
	"strings"

	"charm.land/bubbles/v2/key"
	"charm.land/bubbles/v2/viewport"
	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"castellan/installer/engine"
	"castellan/installer/report"
	"castellan/installer/state"
	"castellan/installer/tui/common"
)

// Page is the history page.
type Page struct {
	common.Common
	profilePath string
	loaded      bool
	entries     []state.Entry
	open        *state.Record
	err         error
	cursor      int
	offset      int
	diffRun     int // the run whose diff is shown (0: none)
	diff        string
	diffErr     error
	vp          viewport.Model
	confirm     bool
}

// New returns the history page of the profile's state repo (loaded by the
// root: HistoryLoadedMsg).
func New(c common.Common, profilePath string) *Page {
	return &Page{Common: c, profilePath: profilePath, vp: viewport.New()}
}

// Init implements common.Page.
func (p *Page) Init() tea.Cmd { return nil }

// Title implements common.Page.
func (p *Page) Title() string {
	if p.diffRun > 0 {
		return fmt.Sprintf("history › run %d against now", p.diffRun)
	}
	return "history"
}

// Status implements common.Page.
func (p *Page) Status() string {
	if !p.loaded {
		return "reading the state repo"
	}
	return fmt.Sprintf("%d run(s)", len(p.entries))
}

// SetSize implements common.Page.
func (p *Page) SetSize(w, h int) { p.Common.SetSize(w, h) }

// ShortHelp implements help.KeyMap.
func (p *Page) ShortHelp() []key.Binding {
	k := p.KeyMap
	switch {
	case p.confirm:
		return []key.Binding{k.Yes, k.No}
	case p.diffRun > 0:
		return []key.Binding{k.Up, k.Down, k.PageDown, k.Rollback, withHelp(k.Back, "esc", "runs")}
	}
	return []key.Binding{k.Up, k.Down, withHelp(k.Select, "enter", "diff against now"), k.Rollback, k.Back, k.Quit}
}

// FullHelp implements help.KeyMap.
func (p *Page) FullHelp() [][]key.Binding { return [][]key.Binding{p.ShortHelp()} }

func withHelp(b key.Binding, k, desc string) key.Binding {
	b.SetHelp(k, desc)
	return b
}

func (p *Page) selected() *state.Entry {
	if p.cursor < 0 || p.cursor >= len(p.entries) {
		return nil
	}
	return &p.entries[p.cursor]
}

// Update implements common.Page.
func (p *Page) Update(msg tea.Msg) (common.Page, tea.Cmd) {
	switch msg := msg.(type) {
	case common.HistoryLoadedMsg:
		p.loaded, p.entries, p.open, p.err = true, msg.Entries, msg.Open, msg.Err
		p.cursor = min(p.cursor, max(len(p.entries)-1, 0))
	case common.DiffLoadedMsg:
		p.diffRun, p.diff, p.diffErr = msg.Run, msg.Diff, msg.Err
		p.vp.SetContentLines(p.diffLines())
		p.vp.GotoTop()
	case tea.KeyPressMsg:
		return p.key(msg)
	}
	return p, nil
}

func (p *Page) key(km tea.KeyPressMsg) (common.Page, tea.Cmd) {
	k := p.KeyMap
	if p.confirm {
		p.confirm = false
		if e := p.rollbackTarget(); e != nil && key.Matches(km, k.Yes) {
			msg := common.PlanMsg{ProfilePath: p.profilePath, RollbackTo: strconv.Itoa(e.Record.Number)}
			return p, func() tea.Msg { return msg }
		}
		return p, nil
	}
	switch {
	case key.Matches(km, k.Rollback) && p.rollbackTarget() != nil:
		p.confirm = true
		return p, nil
	case key.Matches(km, k.Back) && p.diffRun > 0:
		p.diffRun = 0
		return p, nil
	case key.Matches(km, k.Back):
		return p, func() tea.Msg { return common.BackMsg{} }
	case key.Matches(km, k.Quit):
		return p, func() tea.Msg { return common.QuitMsg{} }
	}
	if p.diffRun > 0 {
		var cmd tea.Cmd
		p.vp, cmd = p.vp.Update(km)
		return p, cmd
	}
	switch {
	case key.Matches(km, k.Up):
		p.cursor = max(p.cursor-1, 0)
	case key.Matches(km, k.Down):
		p.cursor = min(p.cursor+1, max(len(p.entries)-1, 0))
	case key.Matches(km, k.Select):
		if e := p.selected(); e != nil {
			msg := common.DiffMsg{ProfilePath: p.profilePath, Run: e.Record.Number}
			return p, func() tea.Msg { return msg }
		}
	}
	return p, nil
}

// rollbackTarget is the run r would roll back to: the one whose diff is
// shown, or the selected one.
func (p *Page) rollbackTarget() *state.Entry {
	if p.diffRun > 0 {
		for i := range p.entries {
			if p.entries[i].Record.Number == p.diffRun {
				return &p.entries[i]
			}
		}
		return nil
	}
	return p.selected()
}

func command(r *state.Record) string {
	if r.Command == "rollback" {
		return fmt.Sprintf("rollback→%d", r.RollbackOf)
	}
	return report.Clean(r.Command)
}

// who is a run's author without the e-mail address.
func who(s string) string {
	name, _, _ := strings.Cut(s, " <")
	return report.Clean(name)
}

func changed(r *state.Record) string {
	var out []string
	for _, ph := range r.Phases {
		if ph.Outcome == engine.OutcomeOK || ph.Outcome == engine.OutcomeFailed {
			out = append(out, report.Clean(ph.Name))
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}

func (p *Page) outcome(o engine.Outcome) string {
	s := p.Styles
	switch o {
	case engine.OutcomeOK:
		return s.OK.Render("✓ ok")
	case engine.OutcomeUnchanged:
		return s.Dim.Render("= unchanged")
	case engine.OutcomeRunning:
		return s.Running.Render("… running")
	case engine.OutcomeInterrupted:
		return s.Warning.Render("⊘ interrupted")
	}
	return s.Failed.Render("✗ " + string(o))
}

const rowFormat = "%3s  %-16s  %-11s  %-13s  %-10s  %6s  %s"

// rows renders the runs table.
func (p *Page) rows() (head string, rows []string) {
	head = fmt.Sprintf(rowFormat, "RUN", "WHEN (UTC)", "COMMAND", "RESULT", "CHANGED", "TOOK", "BY")
	pad := func(styled string, w int) string {
		return styled + strings.Repeat(" ", max(w-ansi.StringWidth(styled), 0))
	}
	row := func(r *state.Record, took string) string {
		when := r.Started.UTC().Format("2006-01-02 15:04")
		line := fmt.Sprintf("%3d  %-16s  %-11s  ", r.Number, when, ansi.Truncate(command(r), 11, "…"))
		line += pad(p.outcome(r.Outcome), 13) + "  "
		line += fmt.Sprintf("%-10s  %6s  %s", ansi.Truncate(changed(r), 10, "…"), took, who(r.Who))
		return line
	}
	for _, e := range p.entries {
		rows = append(rows, row(e.Record, report.Duration(e.Record.Duration)))
	}
	return head, rows
}

// details describe the selected run.
func (p *Page) details(e *state.Entry) []string {
	s := p.Styles
	r := e.Record
	out := []string{s.Section.Render(fmt.Sprintf("Run %d", r.Number)) + s.Dim.Render(fmt.Sprintf("  commit %s · %s on %s · castellan %s", e.Hash.String()[:12], who(r.Who), report.Clean(r.Host), report.Clean(r.Version)))}
	nodes := strings.Join(r.Nodes, ", ")
	out = append(out, "  nodes: "+report.Clean(nodes))
	for _, ph := range r.Phases {
		line := fmt.Sprintf("  %-12s %s", report.Clean(ph.Name), p.outcome(ph.Outcome))
		if n := len(ph.Changes); n > 0 {
			line += s.Dim.Render(fmt.Sprintf("  %d change(s)", n))
		}
		out = append(out, line)
	}
	for _, k := range r.TrustedHostKeys {
		out = append(out, s.Warning.Render("  trusted host key "+report.Clean(k)))
	}
	if r.Error != "" {
		for _, l := range strings.Split(ansi.Wrap("error: "+report.Clean(r.Error), max(p.Width-4, 20), " "), "\n") {
			out = append(out, "  "+s.ErrorText.Render(l))
		}
	}
	return out
}

func (p *Page) diffLines() []string {
	s := p.Styles
	if p.diffErr != nil {
		return []string{s.Failed.Render("✗ " + report.Clean(p.diffErr.Error()))}
	}
	if p.diff == "" {
		return []string{s.OK.Render(fmt.Sprintf("No differences: the state of run %d is the current state.", p.diffRun))}
	}
	var out []string
	for _, l := range strings.Split(strings.TrimRight(report.Clean(p.diff), "\n"), "\n") {
		switch {
		case strings.HasPrefix(l, "+++"), strings.HasPrefix(l, "---"), strings.HasPrefix(l, "diff "):
			out = append(out, s.Header.Render(l))
		case strings.HasPrefix(l, "+"):
			out = append(out, s.Added.Render(l))
		case strings.HasPrefix(l, "-"):
			out = append(out, s.Removed.Render(l))
		case strings.HasPrefix(l, "@@"):
			out = append(out, s.Running.Render(l))
		default:
			out = append(out, l)
		}
	}
	return out
}

// View implements common.Page.
func (p *Page) View() string {
	s := p.Styles
	var top []string
	switch {
	case !p.loaded:
		return s.Dim.Render("reading the state repo…")
	case p.err != nil:
		return s.Failed.Render("✗ ") + strings.Join(strings.Split(ansi.Wrap(report.Clean(p.err.Error()), max(p.Width-2, 20), " "), "\n"), "\n  ")
	}
	if p.open != nil {
		msg := fmt.Sprintf("Run %d started %s and is not committed: %s", p.open.Number, p.open.Started.UTC().Format("2006-01-02 15:04"), p.open.Outcome)
		if p.open.Outcome == engine.OutcomeDied {
			msg += " (the next apply commits what it left)"
		}
		top = append(top, s.Warning.Render(ansi.Truncate(msg, p.Width, "…")))
	}
	if len(p.entries) == 0 {
		top = append(top, s.Dim.Render("No runs yet."))
		return strings.Join(top, "\n")
	}
	var bottom []string
	if p.confirm {
		if e := p.rollbackTarget(); e != nil {
			bottom = append(bottom, s.Prompt.Render(fmt.Sprintf("Roll back to run %d? Its profile is planned as a new run, for you to confirm. (y/n)", e.Record.Number)))
		}
	}
	if p.diffRun > 0 {
		top = append(top, s.Header.Render(fmt.Sprintf("State of run %d → now", p.diffRun))+s.Dim.Render("  (- run's, + current)"))
		p.vp.SetWidth(p.Width)
		p.vp.SetHeight(max(p.Height-len(top)-len(bottom), 3))
		return strings.Join(append(append(top, p.vp.View()), bottom...), "\n")
	}
	head, rows := p.rows()
	e := p.selected()
	var details []string
	if e != nil {
		details = append([]string{""}, p.details(e)...)
	}
	tableH := max(min(len(rows), p.Height-len(top)-len(bottom)-len(details)-1), 3)
	if p.cursor < p.offset {
		p.offset = p.cursor
	}
	if p.cursor >= p.offset+tableH {
		p.offset = p.cursor - tableH + 1
	}
	top = append(top, "  "+s.TableHead.Render(ansi.Truncate(head, p.Width-2, "")))
	for i := p.offset; i < min(p.offset+tableH, len(rows)); i++ {
		line := ansi.Truncate(rows[i], p.Width-2, "…")
		if i == p.cursor {
			top = append(top, s.Cursor.Render("› ")+s.Selected.Render(ansi.Strip(line)))
		} else {
			top = append(top, "  "+line)
		}
	}
	out := append(top, details...)
	if room := p.Height - len(out) - len(bottom); room > 0 {
		out = append(out, make([]string, room)...)
	}
	return strings.Join(append(out, bottom...), "\n")
}
