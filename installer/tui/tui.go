// Package tui is castellan's interactive terminal UI: write a profile,
// review the plan, watch the install, browse the history and roll back. It
// is a second view on the same engine as the command line: it holds no
// install logic, drives the installer's verbs (Apply.Prepare, then
// Pending.Apply or Pending.Close; Rollback; History; Diff) and renders the
// engine's event stream, as report.Printer does for text.
//
// Layout (after soft-serve's pkg/ui): common holds the shared context
// (styles, key map, size, clock) and the named messages; components are
// reusable parts (header, footer, the event grid); pages are the screens
// (start, profile, plan, progress, history); the root model here is a small
// state machine that switches pages and runs the verbs in commands.
package tui

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"charm.land/bubbles/v2/key"
	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"castellan/installer"
	"castellan/installer/engine"
	"castellan/installer/report"
	"castellan/installer/tui/common"
	"castellan/installer/tui/components/footer"
	"castellan/installer/tui/components/header"
	"castellan/installer/tui/pages/history"
	"castellan/installer/tui/pages/plan"
	profilepage "castellan/installer/tui/pages/profile"
	"castellan/installer/tui/pages/progress"
	"castellan/installer/tui/pages/start"
)

// Options configure the TUI.
type Options struct {
	// ProfilePath opens this profile at once (a new one if it does not
	// exist); empty shows the start page.
	ProfilePath string
	// Dir is where the start page looks for profiles (default: the working
	// directory).
	Dir string
	// AcceptNewHostKeys starts with "trust new host keys" on.
	AcceptNewHostKeys bool
	// AgentBinaries, IdentityFile, Dial, Logger and Parallelism are passed
	// to the verbs' installer.Config.
	AgentBinaries []string
	IdentityFile  string
	Dial          func(ctx context.Context, network, addr string) (net.Conn, error)
	Logger        *slog.Logger
	Parallelism   int
	// Interrupt, once done, stops a run between steps as the first Ctrl-C
	// does (the CLI's signal handling: SIGTERM).
	Interrupt context.Context
	// Static and Now make screens reproducible (golden tests): no
	// animation, a fixed clock.
	Static bool
	Now    func() time.Time
}

// Model is the root of the TUI.
type Model struct {
	common common.Common
	opts   Options
	ctx    context.Context
	queue  *queue
	footer *footer.Footer

	page  common.Page
	stack []common.Page // pages to go back to
	flash string        // an error to show until the next key

	profile  string      // the profile last opened or saved
	runPage  common.Page // the page the events go to
	pending  *installer.Pending
	runCtx   context.Context    // the verb's context, from Prepare to Apply
	abort    context.CancelFunc // cancels the verb's context (second Ctrl-C)
	stop     context.CancelFunc // stops between steps (first Ctrl-C)
	running  bool               // a verb is applying
	inflight *sync.WaitGroup
}

// New returns the root model. ctx bounds everything the TUI starts.
func New(ctx context.Context, opts Options) *Model {
	if opts.Dir == "" {
		opts.Dir, _ = os.Getwd()
	}
	c := common.New(80, 24)
	c.Static = opts.Static
	if opts.Now != nil {
		c.Now = opts.Now
	}
	c.Dir = opts.Dir
	m := &Model{common: c, opts: opts, ctx: ctx, queue: newQueue(), footer: footer.New(c), inflight: &sync.WaitGroup{}}
	m.page = start.New(c, opts.Dir)
	if opts.ProfilePath != "" {
		if p, err := profilepage.New(c, opts.ProfilePath, false, opts.AcceptNewHostKeys); err != nil {
			m.flash = err.Error()
		} else {
			m.stack = append(m.stack, m.page)
			m.page, m.profile = p, p.Path()
		}
	}
	return m
}

// Run runs the TUI on in and out until the user quits, then waits for a
// verb still running to commit its run.
func Run(ctx context.Context, in io.Reader, out io.Writer, opts Options) error {
	m := New(ctx, opts)
	p := tea.NewProgram(m, tea.WithContext(ctx), tea.WithInput(in), tea.WithOutput(out), tea.WithoutSignalHandler())
	_, err := p.Run()
	m.shutdown()
	if errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// shutdown releases a prepared run and lets a running one end: it is
// stopped between steps and committed.
func (m *Model) shutdown() {
	if m.pending != nil {
		m.pending.Close()
		m.pending = nil
	}
	if m.stop != nil {
		m.stop()
	}
	m.inflight.Wait()
}

// Init implements tea.Model.
func (m *Model) Init() tea.Cmd {
	return tea.Batch(m.page.Init(), m.queue.wait(m.ctx))
}

// typing is implemented by pages that are taking text.
type typing interface{ Typing() bool }

// Update implements tea.Model.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.common.SetSize(msg.Width, msg.Height)
		return m, nil
	case tea.KeyPressMsg:
		m.flash = ""
		if t, ok := m.page.(typing); (!ok || !t.Typing()) && key.Matches(msg, m.common.KeyMap.Help) {
			m.footer.ShowAll = !m.footer.ShowAll
			return m, nil
		}
	case common.EventsMsg:
		if m.runPage != nil {
			m.runPage.Update(msg)
		}
		return m, m.queue.wait(m.ctx)
	case common.OpenProfileMsg:
		p, err := profilepage.New(m.common, msg.Path, msg.New, m.opts.AcceptNewHostKeys)
		if err != nil {
			m.flash = err.Error()
			return m, nil
		}
		m.profile = p.Path()
		return m, m.push(p)
	case common.PlanMsg:
		return m, m.prepare(msg)
	case common.PreparedMsg:
		return m, m.prepared(msg)
	case common.ApplyMsg:
		return m, m.apply()
	case common.DeclineMsg:
		m.release()
		m.pop()
		return m, nil
	case common.InterruptMsg:
		if m.stop != nil {
			m.stop()
		}
		return m, nil
	case common.AbortMsg:
		if m.abort != nil {
			m.abort()
		}
		return m, nil
	case common.RunDoneMsg:
		m.running = false
		if m.abort != nil {
			m.abort()
		}
		m.runCtx, m.abort, m.stop = nil, nil, nil
		if m.runPage != nil {
			m.runPage.Update(msg)
		}
		return m, nil
	case common.HistoryMsg:
		path := msg.ProfilePath
		if path == "" {
			path = m.profile
		}
		return m, m.history(path)
	case common.DiffMsg:
		return m, m.diff(msg)
	case common.BackMsg:
		m.pop()
		return m, nil
	case common.QuitMsg:
		m.release()
		return m, tea.Quit
	}
	var cmd tea.Cmd
	m.page, cmd = m.page.Update(msg)
	return m, cmd
}

func (m *Model) push(p common.Page) tea.Cmd {
	m.stack = append(m.stack, m.page)
	m.page = p
	return p.Init()
}

// pop goes back one page; back to the profile from a run's pages.
func (m *Model) pop() {
	if len(m.stack) == 0 {
		return
	}
	m.page = m.stack[len(m.stack)-1]
	m.stack = m.stack[:len(m.stack)-1]
}

// release declines a prepared run.
func (m *Model) release() {
	if m.pending != nil && !m.running {
		m.pending.Close()
		m.pending = nil
		if m.abort != nil {
			m.abort()
		}
		m.runCtx, m.abort, m.stop = nil, nil, nil
	}
}

func (m *Model) config(interrupt context.Context) *installer.Config {
	return &installer.Config{
		Sink: m.queue, Notice: m.queue, Logger: m.opts.Logger, Dial: m.opts.Dial,
		AgentBinaries: m.opts.AgentBinaries, IdentityFile: m.opts.IdentityFile,
		Parallelism: m.opts.Parallelism, Interrupt: interrupt,
	}
}

// runContexts are a verb's context (cancelled by the second Ctrl-C) and
// its interrupt (the first), which the CLI's own interrupt also stops.
func (m *Model) runContexts() (ctx, interrupt context.Context) {
	ctx, abort := context.WithCancel(m.ctx)
	interrupt, stop := context.WithCancel(ctx)
	if m.opts.Interrupt != nil {
		context.AfterFunc(m.opts.Interrupt, stop)
	}
	m.runCtx, m.abort, m.stop = ctx, abort, stop
	return ctx, interrupt
}

func phaseNames() []string { return engine.PhaseNames(installer.Phases()) }

// prepare loads the profile and starts Apply.Prepare (or Rollback.Prepare)
// in a command; the plan page shows its events.
func (m *Model) prepare(msg common.PlanMsg) tea.Cmd {
	prof, err := installer.LoadProfile(msg.ProfilePath, msg.AcceptNewHostKeys)
	if err != nil {
		m.flash = err.Error()
		return nil
	}
	var nodes []string
	for _, n := range prof.Spec.Nodes {
		nodes = append(nodes, n.Name)
	}
	page := plan.New(m.common, phaseNames(), nodes, msg.RollbackTo)
	m.runPage = page
	ctx, interrupt := m.runContexts()
	cfg := m.config(interrupt)
	m.inflight.Add(1)
	prepare := func() tea.Msg {
		defer m.inflight.Done()
		var p *installer.Pending
		var err error
		if msg.RollbackTo != "" {
			v := installer.NewRollback(cfg)
			v.ProfilePath, v.Profile, v.To, v.AcceptNewHostKeys = msg.ProfilePath, prof, msg.RollbackTo, msg.AcceptNewHostKeys
			p, err = v.Prepare(ctx, true)
		} else {
			v := installer.NewApply(cfg)
			v.ProfilePath, v.Profile, v.AcceptNewHostKeys = msg.ProfilePath, prof, msg.AcceptNewHostKeys
			p, err = v.Prepare(ctx, true)
		}
		out := common.PreparedMsg{Pending: p, Err: err, Rollback: msg.RollbackTo}
		if p != nil {
			out.Plans, out.PlanErr = p.Plans(), p.Err()
		}
		return out
	}
	m.profile = msg.ProfilePath
	return tea.Batch(m.push(page), prepare)
}

func (m *Model) prepared(msg common.PreparedMsg) tea.Cmd {
	m.pending = msg.Pending
	if msg.Err != nil && m.abort != nil {
		m.abort()
		m.runCtx, m.abort, m.stop = nil, nil, nil
	}
	if m.runPage != nil {
		m.runPage.Update(msg)
	}
	if msg.Pending != nil && msg.Pending.Err() != nil {
		// A plan that failed is recorded as a failed run, as the CLI does.
		return m.run(msg.Pending)
	}
	return nil
}

// apply runs the confirmed plan on the progress page.
func (m *Model) apply() tea.Cmd {
	p := m.pending
	if p == nil {
		return nil
	}
	verb := "apply"
	if pp, ok := m.page.(*plan.Page); ok && strings.Contains(pp.Title(), "rollback") {
		verb = "rollback"
	}
	var nodes []string
	for _, pl := range p.Plans() {
		for _, c := range pl.Changes {
			if c.Node != "" && !contains(nodes, c.Node) {
				nodes = append(nodes, c.Node)
			}
		}
	}
	if prof, err := installer.LoadProfile(m.profile, true); err == nil {
		nodes = nodes[:0]
		for _, n := range prof.Spec.Nodes {
			nodes = append(nodes, n.Name)
		}
	}
	page := progress.New(m.common, verb, phaseNames(), nodes)
	m.runPage = page
	m.pop() // back from the run goes to where the plan was asked for
	return tea.Batch(m.push(page), m.run(p))
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// run applies a prepared run in a command.
func (m *Model) run(p *installer.Pending) tea.Cmd {
	m.pending = nil
	m.running = true
	// The run's context is the one Prepare got: its interrupt is the
	// session's.
	ctx := m.runCtx
	if ctx == nil {
		ctx, _ = m.runContexts()
	}
	m.inflight.Add(1)
	return func() tea.Msg {
		defer m.inflight.Done()
		res, err := p.Apply(ctx)
		return common.RunDoneMsg{Result: res, Err: err}
	}
}

func (m *Model) history(profilePath string) tea.Cmd {
	if profilePath == "" {
		m.flash = "open a profile first: its state repo holds the history"
		return nil
	}
	page := history.New(m.common, profilePath)
	cfg := m.config(m.ctx)
	load := func() tea.Msg {
		v := installer.NewHistory(cfg)
		v.ProfilePath = profilePath
		entries, open, err := v.Run()
		return common.HistoryLoadedMsg{Entries: entries, Open: open, Err: err}
	}
	return tea.Batch(m.push(page), load)
}

func (m *Model) diff(msg common.DiffMsg) tea.Cmd {
	cfg := m.config(m.ctx)
	return func() tea.Msg {
		v := installer.NewDiff(cfg)
		v.ProfilePath, v.From = msg.ProfilePath, fmt.Sprint(msg.Run)
		d, err := v.Run()
		return common.DiffLoadedMsg{Run: msg.Run, Diff: d, Err: err}
	}
}

// View implements tea.Model: the header, the page, the keys.
func (m *Model) View() tea.View {
	c := m.common
	foot := m.footer
	foot.SetSize(c.Width, c.Height)
	help := foot.View(m.page)
	var flash []string
	if m.flash != "" {
		for _, l := range strings.Split(ansi.Wrap("✗ "+report.Clean(m.flash), max(c.Width, 10), " "), "\n") {
			flash = append(flash, c.Styles.ErrorText.Render(l))
		}
		if len(flash) > 6 {
			flash = append(flash[:5], c.Styles.ErrorText.Render("…"))
		}
	}
	helpLines := strings.Split(help, "\n")
	bodyH := max(c.Height-1-len(helpLines)-len(flash), 1)
	m.page.SetSize(c.Width, bodyH)
	body := strings.Split(m.page.View(), "\n")
	if len(body) > bodyH {
		body = body[:bodyH]
	}
	for len(body) < bodyH {
		body = append(body, "")
	}
	lines := []string{header.View(c, m.page.Title(), m.page.Status())}
	lines = append(lines, body...)
	lines = append(lines, flash...)
	lines = append(lines, helpLines...)
	for i, l := range lines {
		lines[i] = ansi.Truncate(l, c.Width, "")
	}
	v := tea.NewView(strings.Join(lines, "\n"))
	v.AltScreen = true
	v.WindowTitle = "castellan"
	return v
}
