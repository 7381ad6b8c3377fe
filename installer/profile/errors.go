package profile

import (
	"fmt"
	"sort"
	"strings"
)

// Pos is a position in a profile file (1-based line and column).
type Pos struct {
	Line, Column int
}

// FieldError is one problem in a profile: where it is, which field, and what is expected.
type FieldError struct {
	File string
	Pos  Pos
	// Path is the field path, e.g. spec.nodes[1].address.
	Path string
	Msg  string
}

// Error formats the problem as FILE:LINE:COLUMN: PATH: MESSAGE. Characters
// that could act on a terminal (control and format characters) are written
// as escapes, wherever they come from.
func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Pos.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Pos.Line)
		if e.Pos.Column > 0 { // YAML syntax errors know only the line
			fmt.Fprintf(&b, ":%d", e.Pos.Column)
		}
	}
	if e.Path != "" {
		b.WriteString(": ")
		b.WriteString(e.Path)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return escapeUnprintable(b.String())
}

// Errors is every problem found in one profile, in file order.
type Errors []*FieldError

// maxErrors bounds how many problems one load reports; the rest are summarised.
const maxErrors = 25

func (es Errors) Error() string {
	lines := make([]string, 0, len(es))
	for i, e := range es {
		if i == maxErrors {
			lines = append(lines, fmt.Sprintf("... and %d more problems", len(es)-maxErrors))
			break
		}
		lines = append(lines, e.Error())
	}
	return strings.Join(lines, "\n")
}

// sorted orders the problems by position and drops repeats: a value reached
// through several aliases is reported once.
func (es Errors) sorted() Errors {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Pos.Line != es[j].Pos.Line {
			return es[i].Pos.Line < es[j].Pos.Line
		}
		return es[i].Pos.Column < es[j].Pos.Column
	})
	out := es[:0]
	seen := map[[2]string]bool{}
	for _, e := range es {
		k := [2]string{e.Pos.String(), e.Msg}
		if seen[k] && e.Pos.Line > 0 {
			continue
		}
		seen[k] = true
		out = append(out, e)
	}
	return out
}

// String formats a position as LINE:COLUMN, or LINE when the column is not
// known, or "" for the zero Pos.
func (p Pos) String() string {
	switch {
	case p.Line == 0:
		return ""
	case p.Column == 0:
		return fmt.Sprint(p.Line)
	}
	return fmt.Sprintf("%d:%d", p.Line, p.Column)
}
