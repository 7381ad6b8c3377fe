// Package progress is the page of a running apply or rollback: a phase x
// node grid with a status per cell, the uploads in flight, the elapsed
// time, and a log that follows the selected node. Ctrl-C asks, then stops
// the run between steps; a second Ctrl-C aborts the running steps. When the
// run fails, the failing node, step and error come first.
package progress

import (
	"errors"
	"fmt"
	"strings"
	"time"

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

type stop int

const (
	running  stop = iota
	asking        // Ctrl-C was pressed: stop between steps?
	stopping      // interrupted: no new step starts
	aborting      // the running steps are cancelled
)

// Page is the progress page.
type Page struct {
	common.Common
	verb     string // apply, rollback
	grid     *grid.Model
	spin     spinner.Model
	log      viewport.Model
	selected int
	all      bool // the log shows every node
	follow   bool
	stop     stop
	done     bool
	result   *installer.Result
	err      error
	notices  []string
}

// tickMsg redraws the elapsed time.
type tickMsg struct{}

// New returns the page of a run of verb on nodes with phases.
func New(c common.Common, verb string, phases, nodes []string) *Page {
	p := &Page{Common: c, verb: verb, grid: grid.New(c, phases, nodes), follow: true}
	p.spin = spinner.New(spinner.WithSpinner(spinner.MiniDot), spinner.WithStyle(c.Styles.Running))
	p.log = viewport.New()
	return p
}

// Init implements common.Page.
func (p *Page) Init() tea.Cmd {
	if p.Static {
		return nil
	}
	return tea.Batch(p.spin.Tick, tick())
}

func tick() tea.Cmd {
	return tea.Tick(time.Second, func(time.Time) tea.Msg { return tickMsg{} })
}

// Title implements common.Page.
func (p *Page) Title() string { return p.verb }

// Status implements common.Page.
func (p *Page) Status() string {
	el := report.Duration(p.grid.ElapsedAt(p.Now()).Truncate(time.Second))
	switch {
	case p.done && p.result != nil && p.result.Record != nil:
		return fmt.Sprintf("run %d %s in %s", p.result.Record.Number, p.result.Record.Outcome, report.Duration(p.result.Record.Duration))
	case p.done:
		return "ended"
	}
	return el + " elapsed"
}

// Done reports whether the run ended.
func (p *Page) Done() bool { return p.done }

// SetSize implements common.Page.
func (p *Page) SetSize(w, h int) {
	p.Common.SetSize(w, h)
	p.grid.SetCommon(p.Common)
}

// ShortHelp implements help.KeyMap.
func (p *Page) ShortHelp() []key.Binding {
	k := p.KeyMap
	nav := []key.Binding{withHelp(k.PrevNode, "↑↓", "node"), withHelp(k.AllNodes, "a", p.allLabel()), withHelp(k.PageUp, "pgup/pgdn", "scroll log")}
	switch {
	case p.done:
		return append(nav, k.History, withHelp(k.Back, "esc", "profile"), k.Quit)
	case p.stop == asking:
		return []key.Binding{k.Yes, k.No}
	case p.stop == stopping:
		return append(nav, withHelp(k.Interrupt, "ctrl+c", "abort running steps"))
	case p.stop == aborting:
		return nav
	}
	return append(nav, withHelp(k.Interrupt, "ctrl+c", "stop…"))
}

func (p *Page) allLabel() string {
	if p.all {
		return "log: selected node"
	}
	return "log: all nodes"
}

// FullHelp implements help.KeyMap.
func (p *Page) FullHelp() [][]key.Binding { return [][]key.Binding{p.ShortHelp()} }

func withHelp(b key.Binding, k, desc string) key.Binding {
	b.SetHelp(k, desc)
	return b
}

// Update implements common.Page.
func (p *Page) Update(msg tea.Msg) (common.Page, tea.Cmd) {
	switch msg := msg.(type) {
	case spinner.TickMsg:
		if p.Static || p.done {
			return p, nil
		}
		var cmd tea.Cmd
		p.spin, cmd = p.spin.Update(msg)
		return p, cmd
	case tickMsg:
		if p.Static || p.done {
			return p, nil
		}
		return p, tick()
	case common.EventsMsg:
		for _, e := range msg.Events {
			p.grid.Apply(e)
		}
		for _, n := range msg.Notices {
			p.notices = append(p.notices, report.Clean(strings.TrimSpace(n)))
			p.grid.Log = append(p.grid.Log, grid.Line{Text: report.Clean(strings.TrimSpace(n)), Kind: engine.StatusWarning})
		}
	case common.RunDoneMsg:
		p.done, p.result, p.err = true, msg.Result, msg.Err
	case tea.KeyPressMsg:
		return p.key(msg)
	}
	return p, nil
}

func (p *Page) key(km tea.KeyPressMsg) (common.Page, tea.Cmd) {
	k := p.KeyMap
	if p.stop == asking && !p.done {
		switch {
		case key.Matches(km, k.Yes), key.Matches(km, k.Interrupt):
			p.stop = stopping
			return p, func() tea.Msg { return common.InterruptMsg{} }
		case key.Matches(km, k.No):
			p.stop = running
		}
		return p, nil
	}
	switch {
	case key.Matches(km, k.Interrupt) && !p.done:
		switch p.stop {
		case running:
			p.stop = asking
		case stopping:
			p.stop = aborting
			return p, func() tea.Msg { return common.AbortMsg{} }
		}
	case key.Matches(km, k.PrevNode):
		p.selected = (p.selected + len(p.grid.Nodes) - 1) % max(len(p.grid.Nodes), 1)
		p.follow = true
	case key.Matches(km, k.NextNode):
		p.selected = (p.selected + 1) % max(len(p.grid.Nodes), 1)
		p.follow = true
	case key.Matches(km, k.AllNodes):
		p.all, p.follow = !p.all, true
	case key.Matches(km, k.PageUp):
		p.log.PageUp()
		p.follow = p.log.AtBottom()
	case key.Matches(km, k.PageDown):
		p.log.PageDown()
		p.follow = p.log.AtBottom()
	case p.done && key.Matches(km, k.History):
		return p, func() tea.Msg { return common.HistoryMsg{} }
	case p.done && key.Matches(km, k.Back):
		return p, func() tea.Msg { return common.BackMsg{} }
	case p.done && key.Matches(km, k.Quit):
		return p, func() tea.Msg { return common.QuitMsg{} }
	}
	return p, nil
}

// head is the line with the run's state.
func (p *Page) head() string {
	s := p.Styles
	el := report.Duration(p.grid.ElapsedAt(p.Now()).Truncate(time.Second))
	switch {
	case p.done:
		return p.outcome()
	case p.stop == asking:
		return s.Prompt.Render("Stop the run after the steps running now? Nothing new starts; a rerun continues. (y/n)")
	case p.stop == stopping:
		return s.Warning.Render("⊘ stopping between steps: the running steps finish · ctrl+c again aborts them")
	case p.stop == aborting:
		return s.Failed.Render("⊘ aborting the running steps; the run is committed as interrupted")
	}
	return s.Running.Render(p.spin.View()) + " " + s.Header.Render(p.verb+" running") + s.Dim.Render(" · "+el+" elapsed")
}

func (p *Page) outcome() string {
	s := p.Styles
	if p.result == nil || p.result.Record == nil {
		msg := "the run could not start"
		if p.err != nil {
			msg += ": " + report.Clean(p.err.Error())
		}
		return s.Failed.Render("✗ " + msg)
	}
	r := p.result.Record
	line := fmt.Sprintf("run %d %s in %s · commit %s", r.Number, strings.ToUpper(string(r.Outcome)), report.Duration(r.Duration), p.result.Commit)
	var pe *installer.PushError
	switch {
	case errors.As(p.err, &pe):
		return s.Warning.Render("! " + line + " · not pushed: " + report.Clean(pe.Err.Error()))
	case r.Failed():
		return s.Failed.Render("✗ " + line)
	}
	return s.OK.Render("✓ " + line)
}

// summary lines after the run: state repo, trusted keys, warnings.
func (p *Page) summary() []string {
	if !p.done || p.result == nil || p.result.Record == nil {
		return nil
	}
	s := p.Styles
	r := p.result.Record
	out := []string{s.Dim.Render("state repo " + report.Clean(p.result.StateDir))}
	for _, k := range r.TrustedHostKeys {
		out = append(out, s.Warning.Render("trusted new host key "+report.Clean(k)))
	}
	for _, w := range r.Warnings {
		out = append(out, s.Warning.Render("WARNING: "+report.Clean(w)))
	}
	return out
}

func (p *Page) failure() []string {
	f := p.grid.Failure
	if f == nil {
		return nil
	}
	s := p.Styles
	where := strings.Join(nonEmpty(f.Node, f.Phase, f.Step), " · ")
	if where == "" {
		where = "run"
	}
	out := []string{s.Failed.Render("✗ FAILED  " + where)}
	lines := strings.Split(ansi.Wrap(f.Message, max(p.Width-4, 20), " "), "\n")
	if len(lines) > 6 {
		lines = append(lines[:5], fmt.Sprintf("… (%d more lines in the log)", len(lines)-5))
	}
	for _, l := range lines {
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

// View implements common.Page.
func (p *Page) View() string {
	s := p.Styles
	var top []string
	if p.done {
		top = append(top, p.failure()...)
		top = append(top, p.head())
		top = append(top, p.summary()...)
	} else {
		top = append(top, p.head())
		top = append(top, p.failure()...)
	}
	top = append(top, "")
	selected := -1
	if !p.all {
		selected = p.selected
	}
	top = append(top, strings.Split(p.grid.View(selected, p.spin.View()), "\n")...)
	transfers := p.grid.Transfers()
	if len(transfers) > 3 {
		transfers = append(transfers[:2], fmt.Sprintf("… and %d more transfers", len(transfers)-2))
	}
	top = append(top, transfers...)
	node := ""
	title := "log · all nodes"
	if !p.all && p.selected < len(p.grid.Nodes) {
		node = p.grid.Nodes[p.selected]
		title = "log · " + report.Clean(node)
	}
	rule := strings.Repeat("─", max(p.Width-ansi.StringWidth(title)-3, 0))
	top = append(top, s.Dim.Render("── "+title+" "+rule))
	h := max(p.Height-len(top), 2)
	p.log.SetWidth(p.Width)
	p.log.SetHeight(h)
	p.log.SetContentLines(p.grid.LogLines(node, p.Width))
	if p.follow {
		p.log.GotoBottom()
	}
	return strings.Join(append(top, p.log.View()), "\n")
}
