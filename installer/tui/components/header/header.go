// Package header draws the top line: castellan, the page's title and its
// status at the right.
package header

import (
	"strings"

	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"

	"castellan/installer/tui/common"
)

// View renders the header line for a page in width cells.
func View(c common.Common, title, status string) string {
	left := c.Styles.HeaderApp.Render("castellan") + " " + c.Styles.Header.Render(title)
	right := c.Styles.Status.Render(status)
	gap := c.Width - lipgloss.Width(left) - lipgloss.Width(right)
	if gap < 1 {
		right = ansi.Truncate(right, max(c.Width-lipgloss.Width(left)-1, 0), "…")
		gap = max(c.Width-lipgloss.Width(left)-lipgloss.Width(right), 1)
	}
	return ansi.Truncate(left+strings.Repeat(" ", gap)+right, c.Width, "")
}
