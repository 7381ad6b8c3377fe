package common

import (
	"charm.land/lipgloss/v2"
)

// Styles are the TUI's styles. Colours are the terminal's own sixteen, so
// they suit light and dark backgrounds; nothing is told by colour alone (a
// glyph or a word says it too), and with NO_COLOR the renderer drops the
// colours and keeps bold, faint and reverse.
type Styles struct {
	App       lipgloss.Style
	Header    lipgloss.Style
	HeaderApp lipgloss.Style
	Status    lipgloss.Style
	Section   lipgloss.Style
	Label     lipgloss.Style
	Value     lipgloss.Style
	// Placeholder shows a default where the profile is silent.
	Placeholder lipgloss.Style
	Selected    lipgloss.Style
	Cursor      lipgloss.Style
	Dim         lipgloss.Style
	OK          lipgloss.Style
	Failed      lipgloss.Style
	Warning     lipgloss.Style
	Running     lipgloss.Style
	ErrorText   lipgloss.Style
	Added       lipgloss.Style
	Removed     lipgloss.Style
	Box         lipgloss.Style
	FailBox     lipgloss.Style
	Prompt      lipgloss.Style
	HelpKey     lipgloss.Style
	HelpDesc    lipgloss.Style
	HelpSep     lipgloss.Style
	Footer      lipgloss.Style
	TableHead   lipgloss.Style
}

// DefaultStyles returns the styles.
func DefaultStyles() *Styles {
	s := &Styles{}
	s.App = lipgloss.NewStyle()
	s.Header = lipgloss.NewStyle().Bold(true)
	s.HeaderApp = lipgloss.NewStyle().Bold(true).Reverse(true).Padding(0, 1)
	s.Status = lipgloss.NewStyle().Faint(true)
	s.Section = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Blue)
	s.Label = lipgloss.NewStyle()
	s.Value = lipgloss.NewStyle().Bold(true)
	s.Placeholder = lipgloss.NewStyle().Faint(true)
	s.Selected = lipgloss.NewStyle().Reverse(true)
	s.Cursor = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Magenta)
	s.Dim = lipgloss.NewStyle().Faint(true)
	s.OK = lipgloss.NewStyle().Foreground(lipgloss.Green)
	s.Failed = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Red)
	s.Warning = lipgloss.NewStyle().Foreground(lipgloss.Yellow)
	s.Running = lipgloss.NewStyle().Foreground(lipgloss.Cyan)
	s.ErrorText = lipgloss.NewStyle().Foreground(lipgloss.Red)
	s.Added = lipgloss.NewStyle().Foreground(lipgloss.Green)
	s.Removed = lipgloss.NewStyle().Foreground(lipgloss.Red)
	s.Box = lipgloss.NewStyle().Border(lipgloss.RoundedBorder()).Padding(0, 1)
	s.FailBox = lipgloss.NewStyle().Border(lipgloss.ThickBorder(), false, false, false, true).BorderForeground(lipgloss.Red).PaddingLeft(1)
	s.Prompt = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Yellow)
	s.HelpKey = lipgloss.NewStyle().Bold(true)
	s.HelpDesc = lipgloss.NewStyle().Faint(true)
	s.HelpSep = lipgloss.NewStyle().Faint(true)
	s.Footer = lipgloss.NewStyle()
	s.TableHead = lipgloss.NewStyle().Bold(true).Underline(true)
	return s
}
