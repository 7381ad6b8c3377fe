// Package common is what every part of castellan's TUI shares: one Common
// value with the styles, the key map, the terminal's size and the clock;
// the Page interface the root switches between; and the named messages the
// pages and the root exchange. It follows soft-serve's pkg/ui/common.
package common

import (
	"path/filepath"
	"strings"
	"time"

	"charm.land/bubbles/v2/help"
	tea "charm.land/bubbletea/v2"
)

// Common is embedded (by value) in every page and component.
type Common struct {
	// Width and Height are the cells a page may draw in.
	Width, Height int
	Styles        *Styles
	KeyMap        *KeyMap
	// Now is the clock (tests use a fixed one).
	Now func() time.Time
	// Dir is the working directory: paths under it are shown relative.
	Dir string
	// Static stops animations (spinner ticks, elapsed-time ticks), so that a
	// screen depends on its input only: golden tests set it.
	Static bool
}

// New returns a Common with the default styles and key map.
func New(width, height int) Common {
	return Common{Width: width, Height: height, Styles: DefaultStyles(), KeyMap: DefaultKeyMap(), Now: time.Now}
}

// Rel shows path relative to the working directory when it is under it.
func (c *Common) Rel(path string) string {
	if c.Dir != "" {
		if rel, err := filepath.Rel(c.Dir, path); err == nil && !strings.HasPrefix(rel, "..") {
			return rel
		}
	}
	return path
}

// SetSize records the size a page may draw in.
func (c *Common) SetSize(width, height int) {
	c.Width, c.Height = width, height
}

// Page is one screen: the root shows one at a time, with the header above it
// and the help of its keys below it.
type Page interface {
	Init() tea.Cmd
	Update(tea.Msg) (Page, tea.Cmd)
	// View renders the page in exactly the size given by SetSize, or less.
	View() string
	SetSize(width, height int)
	// Title names the page in the header; Status is shown at its right.
	Title() string
	Status() string
	help.KeyMap
}
