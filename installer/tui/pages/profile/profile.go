// Package profile is the profile editor: cluster name, SSH access (key and
// known_hosts with a file picker), the nodes table (add, edit, remove), each
// feature on or off with its key settings, the state repo. Every change is
// checked at once by the profile package's own loader and validation, on the
// very text that saving would write, and the errors appear under their
// field. Saving writes a new profile as a person would (profile.Marshal) and
// changes an existing one in place, keeping its comments and order
// (profile.Update).
package profile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"charm.land/bubbles/v2/filepicker"
	"charm.land/bubbles/v2/key"
	"charm.land/bubbles/v2/textinput"
	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	prof "castellan/installer/profile"
	"castellan/installer/report"
	"castellan/installer/tui/common"
)

// labelWidth is the width of the labels column.
const labelWidth = 20

// Page is the profile editor.
type Page struct {
	common.Common
	path  string        // the profile file, absolute
	raw   []byte        // its text as saved; nil for a new profile
	orig  *prof.Cluster // the values raw spells out
	c     *prof.Cluster // the values being edited
	dirty bool
	// acceptNew is a run option: trust host keys known_hosts lacks.
	acceptNew bool

	cursor  int // index into the visible fields
	offset  int // first line shown
	node    int // the node being edited, or -1
	back    int // the cursor to return to from the node editor
	editing bool
	before  string // the value when editing started (esc restores it)
	input   textinput.Model
	typeErr string // the typed text does not parse (e.g. a port)

	picking bool
	picker  filepicker.Model
	pickFor field

	confirm string // "remove", "quit", "back": the question being asked
	errs    prof.Errors
	other   error // a problem no field explains (the file cannot be read...)
	status  string
}

// New opens the profile at path for editing; a file that does not exist
// (or isNew) starts a new profile.
func New(c common.Common, path string, isNew, acceptNew bool) (*Page, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	ti := textinput.New()
	ti.Prompt = ""
	ti.CharLimit = 4096
	p := &Page{Common: c, path: abs, node: -1, acceptNew: acceptNew, input: ti}
	raw, err := os.ReadFile(abs)
	switch {
	case err == nil && !isNew:
		if _, perr := prof.Parse(filepath.Base(abs), raw); perr != nil {
			return nil, fmt.Errorf("%s cannot be edited here until it loads; fix it in an editor:\n%w", abs, perr)
		}
		p.raw = raw
		if p.orig, err = prof.Written(raw); err != nil {
			return nil, err
		}
		if p.c, err = prof.Written(raw); err != nil {
			return nil, err
		}
	case err == nil || errors.Is(err, os.ErrNotExist):
		p.c = starter()
		p.dirty = true
	default:
		return nil, fmt.Errorf("reading %s: %w", abs, err)
	}
	p.validate()
	p.cursor = p.firstFocusable(0, 1)
	return p, nil
}

// starter is a new profile's values: what every profile needs, with the
// usual key and known_hosts files.
func starter() *prof.Cluster {
	c := &prof.Cluster{APIVersion: prof.APIVersion, Kind: prof.Kind, Metadata: prof.Metadata{Name: "my-cluster"}}
	c.Spec.SSH.User = "castellan"
	c.Spec.SSH.KnownHosts = "known_hosts"
	if home, err := os.UserHomeDir(); err == nil {
		if _, err := os.Stat(filepath.Join(home, ".ssh", "id_ed25519")); err == nil {
			c.Spec.SSH.KeyFile = "~/.ssh/id_ed25519"
		}
	}
	return c
}

// Path is the profile's file.
func (p *Page) Path() string { return p.path }

// Cluster is the profile being edited.
func (p *Page) Cluster() *prof.Cluster { return p.c }

// Dirty reports unsaved changes.
func (p *Page) Dirty() bool { return p.dirty }

// AcceptNewHostKeys is the run option.
func (p *Page) AcceptNewHostKeys() bool { return p.acceptNew }

// Typing reports whether keys go to a text field.
func (p *Page) Typing() bool { return p.editing }

// Init implements common.Page.
func (p *Page) Init() tea.Cmd { return nil }

// Title implements common.Page.
func (p *Page) Title() string {
	if p.node >= 0 {
		return "profile › node"
	}
	return "profile"
}

// Status implements common.Page.
func (p *Page) Status() string {
	s := report.Clean(p.Rel(p.path))
	if p.dirty {
		s += " (modified)"
	}
	return s
}

// SetSize implements common.Page.
func (p *Page) SetSize(w, h int) {
	p.Common.SetSize(w, h)
	p.input.SetWidth(max(w-labelWidth-6, 10))
	p.picker.SetHeight(max(h-4, 3))
}

// text is what saving would write now.
func (p *Page) text() ([]byte, error) {
	if p.raw == nil {
		return prof.Marshal(p.c)
	}
	return prof.Update(p.raw, p.c)
}

// validate checks the profile as the loader would load the saved file.
func (p *Page) validate() {
	p.errs, p.other = nil, nil
	data, err := p.text()
	if err != nil {
		p.other = err
		return
	}
	loaded, err := prof.Parse(filepath.Base(p.path), data)
	if err == nil {
		loaded.Dir = filepath.Dir(p.path)
		err = loaded.Validate(prof.ValidateOptions{AcceptNewHostKeys: p.acceptNew})
	}
	var es prof.Errors
	switch {
	case err == nil:
	case errors.As(err, &es):
		p.errs = es
	default:
		p.other = err
	}
}

// visible are the fields shown now: the node editor's, or the main list's.
func (p *Page) visible() []field {
	if p.node >= 0 {
		return nodeFields(p.node)
	}
	return fields(p.c, p.orig, &p.acceptNew)
}

// owner returns the index of the field an error belongs to: the one whose
// path is the longest prefix of the error's path, or -1.
func owner(fs []field, errPath string) int {
	best, bestLen := -1, -1
	for i, f := range fs {
		if f.path == "" || f.kind == info && !strings.HasPrefix(errPath, f.path) {
			continue
		}
		if errPath == f.path || strings.HasPrefix(errPath, f.path) && (errPath[len(f.path)] == '.' || errPath[len(f.path)] == '[') {
			if len(f.path) > bestLen {
				best, bestLen = i, len(f.path)
			}
		}
	}
	return best
}

// errorsOf maps the validation errors to the visible fields; the rest are
// returned apart.
func (p *Page) errorsOf(fs []field) (map[int][]*prof.FieldError, []*prof.FieldError) {
	byField := map[int][]*prof.FieldError{}
	var rest []*prof.FieldError
	for _, e := range p.errs {
		if i := owner(fs, e.Path); i >= 0 {
			byField[i] = append(byField[i], e)
		} else {
			rest = append(rest, e)
		}
	}
	return byField, rest
}

func (p *Page) firstFocusable(from, step int) int {
	fs := p.visible()
	for i := from; i >= 0 && i < len(fs); i += step {
		if fs[i].focusable() {
			return i
		}
	}
	return min(max(p.cursor, 0), len(fs)-1)
}

// ShortHelp implements help.KeyMap.
func (p *Page) ShortHelp() []key.Binding {
	k := p.KeyMap
	switch {
	case p.confirm != "":
		return []key.Binding{k.Yes, k.No}
	case p.picking:
		return []key.Binding{k.Up, k.Down, withHelp(k.Select, "enter", "choose"), withHelp(k.Back, "←/h", "parent dir"), k.ShowHidden, k.Cancel}
	case p.editing:
		return []key.Binding{withHelp(k.Done, "enter", "done"), withHelp(k.Cancel, "esc", "undo")}
	}
	f := p.focused()
	edit := withHelp(k.Edit, "enter", "edit")
	switch f.kind {
	case toggle:
		edit = withHelp(k.Toggle, "space", "toggle")
	case choice:
		edit = withHelp(k.Toggle, "space", "change")
	case nodeRow:
		edit = withHelp(k.Edit, "enter", "edit node")
	case addNode:
		edit = withHelp(k.Edit, "enter", "add node")
	}
	out := []key.Binding{k.Up, k.Down, edit}
	if f.kind == path {
		out = append(out, k.PickFile)
	}
	if p.node >= 0 {
		return append(out, withHelp(k.Back, "esc", "nodes"), k.Save)
	}
	if f.kind == nodeRow {
		out = append(out, k.Remove)
	}
	return append(out, k.Save, k.Plan, k.History, k.Quit)
}

// FullHelp implements help.KeyMap.
func (p *Page) FullHelp() [][]key.Binding {
	k := p.KeyMap
	return [][]key.Binding{
		{k.Up, k.Down, withHelp(k.Edit, "enter", "edit/toggle"), withHelp(k.Toggle, "space", "toggle")},
		{k.PickFile, k.Add, k.Remove, withHelp(k.Back, "esc", "back")},
		{k.Save, k.Plan, k.History, k.Quit, k.Help},
	}
}

func withHelp(b key.Binding, k, desc string) key.Binding {
	b.SetHelp(k, desc)
	return b
}

func (p *Page) focused() field {
	fs := p.visible()
	if p.cursor < 0 || p.cursor >= len(fs) {
		return field{}
	}
	return fs[p.cursor]
}

// Update implements common.Page.
func (p *Page) Update(msg tea.Msg) (common.Page, tea.Cmd) {
	switch {
	case p.picking:
		return p.updatePicker(msg)
	case p.editing:
		return p.updateEditing(msg)
	}
	km, ok := msg.(tea.KeyPressMsg)
	if !ok {
		return p, nil
	}
	k := p.KeyMap
	if p.confirm != "" {
		return p.answer(km)
	}
	p.status = ""
	f := p.focused()
	fs := p.visible()
	switch {
	case key.Matches(km, k.Up):
		p.cursor = p.firstFocusable(p.cursor-1, -1)
	case key.Matches(km, k.Down):
		p.cursor = p.firstFocusable(p.cursor+1, 1)
	case key.Matches(km, k.Top):
		p.cursor = p.firstFocusable(0, 1)
	case key.Matches(km, k.Bottom):
		p.cursor = p.firstFocusable(len(fs)-1, -1)
	case key.Matches(km, k.PickFile) && f.kind == path:
		return p, p.startPicker(f)
	case key.Matches(km, k.Toggle) && (f.kind == toggle || f.kind == choice):
		p.cycle(f, km.String() == "left")
	case key.Matches(km, k.Edit):
		return p, p.activate(f)
	case key.Matches(km, k.Add) && p.node < 0:
		return p, p.activate(field{kind: addNode})
	case key.Matches(km, k.Remove) && f.kind == nodeRow:
		p.confirm = "remove"
	case key.Matches(km, k.Save):
		p.save()
	case key.Matches(km, k.Back) && p.node >= 0:
		p.node, p.cursor = -1, p.back
	case key.Matches(km, k.Back):
		if p.dirty {
			p.confirm = "back"
			break
		}
		return p, func() tea.Msg { return common.BackMsg{} }
	case key.Matches(km, k.Quit):
		if p.dirty {
			p.confirm = "quit"
			break
		}
		return p, func() tea.Msg { return common.QuitMsg{} }
	case key.Matches(km, k.Plan) && p.node < 0:
		return p, p.plan()
	case key.Matches(km, k.History) && p.node < 0:
		if p.raw == nil {
			p.status = "save the profile first: its state repo has no runs yet"
			break
		}
		path := p.path
		return p, func() tea.Msg { return common.HistoryMsg{ProfilePath: path} }
	}
	return p, nil
}

// answer takes the reply to a question.
func (p *Page) answer(km tea.KeyPressMsg) (common.Page, tea.Cmd) {
	q := p.confirm
	p.confirm = ""
	if !key.Matches(km, p.KeyMap.Yes) {
		return p, nil
	}
	switch q {
	case "remove":
		f := p.focused()
		p.c.Spec.Nodes = slices.Delete(p.c.Spec.Nodes, f.node, f.node+1)
		p.changed()
		p.cursor = p.firstFocusable(p.cursor, 1)
	case "quit":
		return p, func() tea.Msg { return common.QuitMsg{} }
	case "back":
		return p, func() tea.Msg { return common.BackMsg{} }
	}
	return p, nil
}

// activate does what enter does on f.
func (p *Page) activate(f field) tea.Cmd {
	switch f.kind {
	case text, path:
		p.editing, p.typeErr = true, ""
		p.before = f.get(p.c)
		p.input.SetValue(p.before)
		p.input.CursorEnd()
		return p.input.Focus()
	case toggle, choice:
		p.cycle(f, false)
	case nodeRow:
		p.back, p.node, p.cursor = p.cursor, f.node, 0
	case addNode:
		role := prof.RoleAgent
		if len(p.c.Spec.Nodes) == 0 {
			role = prof.RoleServer
		}
		p.c.Spec.Nodes = append(p.c.Spec.Nodes, prof.Node{Name: fmt.Sprintf("node-%d", len(p.c.Spec.Nodes)+1), Role: role})
		p.changed()
		fs := p.visible()
		p.back = slices.IndexFunc(fs, func(g field) bool { return g.kind == addNode })
		p.node, p.cursor = len(p.c.Spec.Nodes)-1, 1 // on the address
		return p.activate(nodeFields(p.node)[1])
	}
	return nil
}

// cycle flips a toggle or moves a choice to its next (or previous) value.
func (p *Page) cycle(f field, back bool) {
	var v string
	if f.kind == toggle {
		v = map[string]string{"on": "off", "off": "on"}[f.get(p.c)]
	} else {
		i := slices.Index(f.choices, f.get(p.c))
		step := 1
		if back {
			step = len(f.choices) - 1
		}
		v = f.choices[(i+step+len(f.choices))%len(f.choices)]
		if i < 0 {
			v = f.choices[0]
		}
	}
	if err := f.set(p.c, v); err == nil {
		if f.path != "" {
			p.changed()
		} else {
			p.validate()
		}
	}
}

func (p *Page) changed() {
	data, err := p.text()
	p.dirty = err != nil || p.raw == nil || string(data) != string(p.raw)
	p.validate()
}

func (p *Page) updateEditing(msg tea.Msg) (common.Page, tea.Cmd) {
	f := p.focused()
	if km, ok := msg.(tea.KeyPressMsg); ok {
		switch {
		case key.Matches(km, p.KeyMap.Cancel):
			_ = f.set(p.c, p.before)
			p.editing, p.typeErr = false, ""
			p.input.Blur()
			p.changed()
			return p, nil
		case key.Matches(km, p.KeyMap.Done):
			if p.typeErr != "" {
				return p, nil
			}
			p.editing = false
			p.input.Blur()
			return p, nil
		}
	}
	var cmd tea.Cmd
	p.input, cmd = p.input.Update(msg)
	if err := f.set(p.c, p.input.Value()); err != nil {
		p.typeErr = err.Error()
	} else {
		p.typeErr = ""
		p.changed()
	}
	return p, cmd
}

func (p *Page) startPicker(f field) tea.Cmd {
	fp := filepicker.New()
	fp.ShowPermissions = false
	fp.ShowHidden = true
	fp.AutoHeight = false
	fp.DirAllowed = f.path == "spec.state.repo" || f.path == "spec.rke2.artifactsDir"
	fp.FileAllowed = !fp.DirAllowed
	fp.SetHeight(max(p.Height-4, 3))
	dir := filepath.Dir(p.path)
	if v := f.get(p.c); v != "" {
		resolved := p.resolve(v)
		if fi, err := os.Stat(resolved); err == nil && fi.IsDir() {
			dir = resolved
		} else if _, err := os.Stat(filepath.Dir(resolved)); err == nil {
			dir = filepath.Dir(resolved)
		}
	} else if f.path == "spec.ssh.keyFile" {
		if home, err := os.UserHomeDir(); err == nil {
			if _, err := os.Stat(filepath.Join(home, ".ssh")); err == nil {
				dir = filepath.Join(home, ".ssh")
			}
		}
	}
	fp.CurrentDirectory = dir
	p.picker, p.picking, p.pickFor = fp, true, f
	return p.picker.Init()
}

// resolve makes a profile path absolute, as the loader does.
func (p *Page) resolve(v string) string {
	pr := &prof.Profile{Dir: filepath.Dir(p.path)}
	return pr.Resolve(v)
}

// relative writes a picked path as a person would in this profile: relative
// to its directory when inside it, ~/ under the home directory, else
// absolute.
func (p *Page) relative(abs string) string {
	if rel, err := filepath.Rel(filepath.Dir(p.path), abs); err == nil && !strings.HasPrefix(rel, "..") {
		return rel
	}
	if home, err := os.UserHomeDir(); err == nil {
		if rel, err := filepath.Rel(home, abs); err == nil && !strings.HasPrefix(rel, "..") {
			return "~/" + rel
		}
	}
	return abs
}

func (p *Page) updatePicker(msg tea.Msg) (common.Page, tea.Cmd) {
	if km, ok := msg.(tea.KeyPressMsg); ok {
		switch {
		case km.String() == "esc":
			p.picking = false
			return p, nil
		case key.Matches(km, p.KeyMap.ShowHidden):
			p.picker.ShowHidden = !p.picker.ShowHidden
			return p, p.picker.Init()
		case km.String() == "s" && p.picker.DirAllowed:
			// choose the directory being shown
			p.pick(p.picker.CurrentDirectory)
			return p, nil
		}
	}
	var cmd tea.Cmd
	p.picker, cmd = p.picker.Update(msg)
	if ok, picked := p.picker.DidSelectFile(msg); ok {
		p.pick(picked)
		return p, nil
	}
	return p, cmd
}

func (p *Page) pick(abs string) {
	p.picking = false
	if err := p.pickFor.set(p.c, p.relative(abs)); err == nil {
		p.changed()
	}
}

// save writes the profile: atomically, keeping the file's mode.
func (p *Page) save() bool {
	data, err := p.text()
	if err != nil {
		p.status = "not saved: " + err.Error()
		return false
	}
	if err := writeFile(p.path, data); err != nil {
		p.status = "not saved: " + err.Error()
		return false
	}
	p.raw = data
	p.orig, _ = prof.Written(data)
	p.dirty = false
	p.validate()
	p.status = "saved " + filepath.Base(p.path)
	if n := len(p.errs); n > 0 {
		p.status += fmt.Sprintf(" with %d problem(s) to fix before planning", n)
	}
	return true
}

func writeFile(path string, data []byte) error {
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// plan saves (when needed) and asks the root to plan: only a valid profile.
func (p *Page) plan() tea.Cmd {
	if n := len(p.errs); n > 0 || p.other != nil {
		p.status = fmt.Sprintf("fix the %d problem(s) first: nothing is planned from a profile that does not load", max(n, 1))
		return nil
	}
	if p.dirty && !p.save() {
		return nil
	}
	msg := common.PlanMsg{ProfilePath: p.path, AcceptNewHostKeys: p.acceptNew}
	return func() tea.Msg { return msg }
}

// View implements common.Page.
func (p *Page) View() string {
	s := p.Styles
	if p.picking {
		what := p.pickFor.label
		return s.Section.Render("Pick the "+what) + "  " + s.Dim.Render(p.pickFor.path) + "\n" +
			s.Dim.Render(report.Clean(p.picker.CurrentDirectory)) + "\n" + p.picker.View()
	}
	fs := p.visible()
	byField, rest := p.errorsOf(fs)
	var lines []string
	cursorLine := 0
	if p.node >= 0 {
		n := p.c.Spec.Nodes[p.node]
		lines = append(lines, s.Section.Render(fmt.Sprintf("Node %d of %d: %s", p.node+1, len(p.c.Spec.Nodes), report.Clean(n.Name))))
	}
	for i, f := range fs {
		if f.kind == nodeRow && (i == 0 || fs[i-1].kind != nodeRow) {
			head := fmt.Sprintf("%-16s %-22s %-7s %s", "NAME", "ADDRESS", "ROLE", "DATA DISKS")
			lines = append(lines, "  "+p.Styles.TableHead.Render(head))
		}
		if i == p.cursor {
			cursorLine = len(lines)
		}
		lines = append(lines, p.line(f, i == p.cursor))
		if i == p.cursor && p.typeErr != "" {
			lines = append(lines, p.errLines("    ", p.typeErr)...)
		}
		for _, e := range byField[i] {
			lines = append(lines, p.errLines("    ", fieldMsg(e, f))...)
		}
	}
	if len(rest) > 0 && p.node < 0 {
		lines = append(lines, "", s.Section.Render("Other problems"))
		for _, e := range rest {
			lines = append(lines, p.errLines("  ", e.Error())...)
		}
	}
	if p.other != nil {
		lines = append(lines, p.errLines("  ", p.other.Error())...)
	}
	bottom := p.bottom()
	height := max(p.Height-len(bottom), 3)
	// Keep the cursor's line (and its errors) in view.
	if cursorLine < p.offset {
		p.offset = cursorLine
	}
	if cursorLine >= p.offset+height-1 {
		p.offset = cursorLine - height + 2
	}
	p.offset = max(min(p.offset, len(lines)-height), 0)
	shown := lines[p.offset:min(p.offset+height, len(lines))]
	for len(shown) < height {
		shown = append(shown, "")
	}
	return strings.Join(append(shown, bottom...), "\n")
}

// fieldMsg is an error as shown under its field: where in the file, what.
func fieldMsg(e *prof.FieldError, f field) string {
	msg := e.Msg
	if e.Path != f.path && f.kind != nodeRow {
		msg = strings.TrimPrefix(e.Path, f.path) + ": " + msg
	} else if f.kind == nodeRow && e.Path != f.path {
		msg = strings.TrimPrefix(strings.TrimPrefix(e.Path, f.path), ".") + ": " + msg
	}
	if e.Pos.Line > 0 {
		return fmt.Sprintf("%s (line %d)", msg, e.Pos.Line)
	}
	return msg
}

func (p *Page) errLines(indent, msg string) []string {
	var out []string
	for _, l := range strings.Split(ansi.Wrap("✗ "+report.Clean(msg), max(p.Width-len(indent)-2, 20), " "), "\n") {
		out = append(out, indent+p.Styles.ErrorText.Render(l))
	}
	return out
}

// line renders one field.
func (p *Page) line(f field, focused bool) string {
	s := p.Styles
	marker := "  "
	if focused {
		marker = s.Cursor.Render("› ")
	}
	switch f.kind {
	case section:
		return s.Section.Render(report.Clean(f.label))
	case nodeRow:
		return marker + p.nodeRow(f.node, focused)
	case addNode:
		l := f.label
		if focused {
			l = s.Selected.Render(l)
		}
		return marker + l
	}
	label := strings.Repeat("  ", f.indent) + f.label
	label += strings.Repeat(" ", max(labelWidth-ansi.StringWidth(label), 1))
	if focused {
		label = s.Selected.Render(label)
	}
	if focused && p.editing {
		return marker + label + " " + p.input.View()
	}
	v := report.Clean(f.get(p.c))
	var value string
	switch {
	case f.kind == toggle && v == "on":
		value = s.OK.Render("[x] on")
	case f.kind == toggle:
		value = s.Dim.Render("[ ] off")
	case f.kind == choice:
		value = s.Value.Render(v)
		if focused {
			value = s.Dim.Render("‹ ") + value + s.Dim.Render(" ›")
		}
	case v == "" && f.placeholder != "":
		value = s.Placeholder.Render("(" + f.placeholder + ")")
	case f.kind == info:
		value = s.Dim.Render(v)
	default:
		value = s.Value.Render(v)
	}
	return ansi.Truncate(marker+label+" "+value, p.Width, "…")
}

// nodeRow renders a row of the nodes table.
func (p *Page) nodeRow(i int, focused bool) string {
	n := p.c.Spec.Nodes[i]
	addr := n.Address
	if n.Port != 0 {
		addr = fmt.Sprintf("%s:%d", addr, n.Port)
	}
	var disks []string
	for _, d := range n.DataDisks {
		dev := d.Device
		if d.AllowFormat {
			dev += " (may format)"
		}
		disks = append(disks, dev)
	}
	disk := strings.Join(disks, ", ")
	if disk == "" {
		disk = "-"
	}
	row := fmt.Sprintf("%-16s %-22s %-7s %s", ansi.Truncate(report.Clean(n.Name), 16, "…"), ansi.Truncate(report.Clean(addr), 22, "…"), report.Clean(string(n.Role)), report.Clean(disk))
	row = ansi.Truncate(row, max(p.Width-4, 10), "…")
	if focused {
		return p.Styles.Selected.Render(row)
	}
	return row
}

// bottom is the hint, the validation summary and any question or status.
func (p *Page) bottom() []string {
	s := p.Styles
	var out []string
	switch {
	case p.confirm == "remove":
		n := p.c.Spec.Nodes[p.focused().node]
		out = append(out, s.Prompt.Render(fmt.Sprintf("Remove node %s from the profile? (y/n)", report.Clean(n.Name))))
	case p.confirm == "quit":
		out = append(out, s.Prompt.Render("Quit without saving the changes? (y/n)"))
	case p.confirm == "back":
		out = append(out, s.Prompt.Render("Leave without saving the changes? (y/n)"))
	case p.status != "":
		out = append(out, s.Warning.Render(report.Clean(p.status)))
	default:
		hint := p.focused().hint
		out = append(out, s.Dim.Render(ansi.Truncate(hint, p.Width, "…")))
	}
	var summary string
	switch n := len(p.errs); {
	case p.other != nil:
		summary = s.Failed.Render("✗ the profile cannot be written: ") + report.Clean(p.other.Error())
	case n > 0:
		first := p.errs[0]
		summary = s.Failed.Render(fmt.Sprintf("✗ %d problem(s)", n)) + s.Dim.Render(" · first: "+report.Clean(first.Path))
	default:
		summary = s.OK.Render("✓ valid")
	}
	out = append(out, ansi.Truncate(summary, p.Width, "…"))
	return out
}
