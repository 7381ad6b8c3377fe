// Package start is the first page when no profile was named: open a profile
// found in the working directory or elsewhere (file picker), or create one.
package start

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"charm.land/bubbles/v2/filepicker"
	"charm.land/bubbles/v2/key"
	"charm.land/bubbles/v2/textinput"
	tea "charm.land/bubbletea/v2"

	"castellan/installer/report"
	"castellan/installer/tui/common"
)

type mode int

const (
	choosing mode = iota
	naming
	picking
)

// Page is the start page.
type Page struct {
	common.Common
	dir    string
	found  []string // profiles in dir
	cursor int
	mode   mode
	name   textinput.Model
	picker filepicker.Model
	err    string
}

// New lists the profiles in dir (the working directory).
func New(c common.Common, dir string) *Page {
	ti := textinput.New()
	ti.Prompt = "file: "
	ti.CharLimit = 4096
	fp := filepicker.New()
	fp.CurrentDirectory = dir
	fp.AllowedTypes = []string{".yaml", ".yml"}
	fp.ShowPermissions = false
	fp.AutoHeight = false
	p := &Page{Common: c, dir: dir, name: ti, picker: fp}
	p.found = findProfiles(dir)
	return p
}

// findProfiles lists the YAML files of dir that look like castellan
// profiles (kind: Cluster near the top).
func findProfiles(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if e.IsDir() || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		head, _ := io.ReadAll(io.LimitReader(f, 8192))
		f.Close()
		if bytes.Contains(head, []byte("kind: Cluster")) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// items are the choices, in order: found profiles, then pick, then new.
func (p *Page) items() int { return len(p.found) + 2 }

// Typing reports whether keys go to a text field.
func (p *Page) Typing() bool { return p.mode == naming }

// Init implements common.Page.
func (p *Page) Init() tea.Cmd { return nil }

// Title implements common.Page.
func (p *Page) Title() string { return "start" }

// Status implements common.Page.
func (p *Page) Status() string { return "" }

// SetSize implements common.Page.
func (p *Page) SetSize(w, h int) {
	p.Common.SetSize(w, h)
	p.picker.SetHeight(max(h-4, 3))
	p.name.SetWidth(max(w-10, 10))
}

// ShortHelp implements help.KeyMap.
func (p *Page) ShortHelp() []key.Binding {
	k := p.KeyMap
	switch p.mode {
	case naming:
		return []key.Binding{withHelp(k.Done, "enter", "create"), k.Cancel}
	case picking:
		return []key.Binding{k.Up, k.Down, withHelp(k.Select, "enter", "open"), withHelp(k.ShowHidden, ".", "hidden files"), k.Cancel}
	}
	return []key.Binding{k.Up, k.Down, withHelp(k.Select, "enter", "open"), k.New, k.PickFile, k.Quit}
}

// FullHelp implements help.KeyMap.
func (p *Page) FullHelp() [][]key.Binding { return [][]key.Binding{p.ShortHelp()} }

func withHelp(b key.Binding, k, desc string) key.Binding {
	b.SetHelp(k, desc)
	return b
}

// Update implements common.Page.
func (p *Page) Update(msg tea.Msg) (common.Page, tea.Cmd) {
	switch p.mode {
	case naming:
		return p.updateNaming(msg)
	case picking:
		return p.updatePicking(msg)
	}
	km, ok := msg.(tea.KeyPressMsg)
	if !ok {
		return p, nil
	}
	k := p.KeyMap
	switch {
	case key.Matches(km, k.Up):
		p.cursor = (p.cursor + p.items() - 1) % p.items()
	case key.Matches(km, k.Down):
		p.cursor = (p.cursor + 1) % p.items()
	case key.Matches(km, k.New):
		return p, p.startNaming()
	case key.Matches(km, k.PickFile):
		return p, p.startPicking()
	case key.Matches(km, k.Quit):
		return p, func() tea.Msg { return common.QuitMsg{} }
	case key.Matches(km, k.Select):
		switch {
		case p.cursor < len(p.found):
			path := filepath.Join(p.dir, p.found[p.cursor])
			return p, func() tea.Msg { return common.OpenProfileMsg{Path: path} }
		case p.cursor == len(p.found):
			return p, p.startPicking()
		default:
			return p, p.startNaming()
		}
	}
	return p, nil
}

func (p *Page) startNaming() tea.Cmd {
	p.mode, p.err = naming, ""
	name := "cluster.yaml"
	for i := 2; fileExists(filepath.Join(p.dir, name)); i++ {
		name = fmt.Sprintf("cluster-%d.yaml", i)
	}
	p.name.SetValue(name)
	p.name.CursorEnd()
	return p.name.Focus()
}

func (p *Page) startPicking() tea.Cmd {
	p.mode, p.err = picking, ""
	return p.picker.Init()
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func (p *Page) updateNaming(msg tea.Msg) (common.Page, tea.Cmd) {
	if km, ok := msg.(tea.KeyPressMsg); ok {
		switch {
		case key.Matches(km, p.KeyMap.Cancel):
			p.mode = choosing
			p.name.Blur()
			return p, nil
		case km.String() == "enter":
			name := strings.TrimSpace(p.name.Value())
			if name == "" {
				p.err = "give the new profile a file name"
				return p, nil
			}
			path := name
			if !filepath.IsAbs(path) {
				path = filepath.Join(p.dir, name)
			}
			if fileExists(path) {
				p.err = fmt.Sprintf("%s exists: open it instead, or choose another name", report.Clean(name))
				return p, nil
			}
			p.name.Blur()
			p.mode = choosing
			return p, func() tea.Msg { return common.OpenProfileMsg{Path: path, New: true} }
		}
	}
	var cmd tea.Cmd
	p.name, cmd = p.name.Update(msg)
	p.err = ""
	return p, cmd
}

func (p *Page) updatePicking(msg tea.Msg) (common.Page, tea.Cmd) {
	if km, ok := msg.(tea.KeyPressMsg); ok {
		switch {
		case key.Matches(km, p.KeyMap.Cancel):
			p.mode = choosing
			return p, nil
		case key.Matches(km, p.KeyMap.ShowHidden):
			p.picker.ShowHidden = !p.picker.ShowHidden
			return p, p.picker.Init()
		}
	}
	var cmd tea.Cmd
	p.picker, cmd = p.picker.Update(msg)
	if ok, path := p.picker.DidSelectFile(msg); ok {
		p.mode = choosing
		return p, func() tea.Msg { return common.OpenProfileMsg{Path: path} }
	}
	if ok, path := p.picker.DidSelectDisabledFile(msg); ok {
		p.err = fmt.Sprintf("%s is not a YAML file", report.Clean(filepath.Base(path)))
	}
	return p, cmd
}

// View implements common.Page.
func (p *Page) View() string {
	s := p.Styles
	var b strings.Builder
	switch p.mode {
	case picking:
		fmt.Fprintf(&b, "%s\n%s\n", s.Section.Render("Open a profile"), s.Dim.Render(report.Clean(p.picker.CurrentDirectory)))
		b.WriteString(p.picker.View())
	case naming:
		fmt.Fprintf(&b, "%s\n\n", s.Section.Render("Create a new profile"))
		b.WriteString("Where should it be written? Relative names are in " + report.Clean(p.dir) + "\n\n")
		b.WriteString(p.name.View())
	default:
		b.WriteString(s.Section.Render("Open a profile, or create one") + "\n")
		b.WriteString(s.Dim.Render("in "+report.Clean(p.dir)) + "\n\n")
		if len(p.found) == 0 {
			b.WriteString(s.Dim.Render("  no profile (kind: Cluster) in this directory") + "\n")
		}
		labels := append([]string(nil), p.found...)
		for i := range labels {
			labels[i] = report.Clean(labels[i])
		}
		labels = append(labels, "Open another file…", "Create a new profile…")
		for i, l := range labels {
			if i == len(p.found) {
				b.WriteString("\n")
			}
			if i == p.cursor {
				b.WriteString(s.Cursor.Render("› ") + s.Selected.Render(l) + "\n")
			} else {
				b.WriteString("  " + l + "\n")
			}
		}
	}
	if p.err != "" {
		b.WriteString("\n" + s.ErrorText.Render("✗ "+p.err))
	}
	return b.String()
}
