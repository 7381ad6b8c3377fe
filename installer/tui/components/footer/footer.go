// Package footer shows the keys of the current page: always, on one line
// (wrapped when narrow), or all of them in columns after "?".
package footer

import (
	"strings"

	"charm.land/bubbles/v2/help"
	"charm.land/bubbles/v2/key"
	"charm.land/lipgloss/v2"

	"castellan/installer/tui/common"
)

// Footer renders the help of a key map.
type Footer struct {
	common  common.Common
	help    help.Model
	ShowAll bool
}

// New returns a footer.
func New(c common.Common) *Footer {
	h := help.New()
	h.Styles.ShortKey = c.Styles.HelpKey
	h.Styles.ShortDesc = c.Styles.HelpDesc
	h.Styles.ShortSeparator = c.Styles.HelpSep
	h.Styles.FullKey = c.Styles.HelpKey
	h.Styles.FullDesc = c.Styles.HelpDesc
	h.Styles.FullSeparator = c.Styles.HelpSep
	h.ShortSeparator = " · "
	f := &Footer{common: c, help: h}
	f.SetSize(c.Width, c.Height)
	return f
}

// SetSize sets the width the help may use.
func (f *Footer) SetSize(width, height int) {
	f.common.SetSize(width, height)
	f.help.SetWidth(0) // wrapping is ours: never drop a key
}

// View renders km's keys: the short help wrapped to the width, or the full
// help.
func (f *Footer) View(km help.KeyMap) string {
	if f.ShowAll {
		f.help.SetWidth(f.common.Width)
		return f.help.FullHelpView(km.FullHelp())
	}
	return f.wrap(km.ShortHelp())
}

// wrap lays out bindings on as many lines as the width needs.
func (f *Footer) wrap(bindings []key.Binding) string {
	sep := f.common.Styles.HelpSep.Render(" · ")
	var lines []string
	line := ""
	for _, b := range bindings {
		if !b.Enabled() {
			continue
		}
		item := f.common.Styles.HelpKey.Render(b.Help().Key) + " " + f.common.Styles.HelpDesc.Render(b.Help().Desc)
		switch {
		case line == "":
			line = item
		case lipgloss.Width(line+sep+item) > f.common.Width && f.common.Width > 0:
			lines = append(lines, line)
			line = item
		default:
			line += sep + item
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n")
}

// Height is how many lines View takes for km.
func (f *Footer) Height(km help.KeyMap) int { return lipgloss.Height(f.View(km)) }
