package profile

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// badRune reports the first rune of s that must not reach a terminal, a log
// line or a node: C0 and C1 control characters (including line breaks and
// tabs), DEL, format characters such as bidirectional overrides and
// zero-width joiners (Unicode category Cf), line and paragraph separators,
// and invalid UTF-8 (reported as utf8.RuneError).
func badRune(s string) (rune, bool) {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size <= 1 {
				return r, true
			}
		}
		if unprintable(r) {
			return r, true
		}
	}
	return 0, false
}

func unprintable(r rune) bool {
	return unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) ||
		r == 0xFFFE || r == 0xFFFF
}

// runeName names a rune for messages: U+000A (line feed).
func runeName(r rune) string {
	names := map[rune]string{
		0x00: "NUL", 0x07: "bell", 0x08: "backspace", 0x09: "tab", 0x0A: "line feed",
		0x0B: "vertical tab", 0x0C: "form feed", 0x0D: "carriage return", 0x1B: "escape",
		0x7F: "delete", 0x85: "next line", 0x200B: "zero width space", 0x200E: "left-to-right mark",
		0x200F: "right-to-left mark", 0x2028: "line separator", 0x2029: "paragraph separator",
		0x202A: "left-to-right embedding", 0x202B: "right-to-left embedding",
		0x202C: "pop directional formatting", 0x202D: "left-to-right override",
		0x202E: "right-to-left override", 0x2066: "left-to-right isolate",
		0x2067: "right-to-left isolate", 0x2068: "first strong isolate",
		0x2069: "pop directional isolate", 0xFEFF: "byte order mark",
	}
	if r == utf8.RuneError {
		return "invalid UTF-8"
	}
	if n, ok := names[r]; ok {
		return fmt.Sprintf("U+%04X (%s)", r, n)
	}
	return fmt.Sprintf("U+%04X", r)
}

// maxQuoted bounds how much of a value a message repeats.
const maxQuoted = 80

// quote is strconv.Quote for messages: control characters escaped, and a
// long value cut to its first maxQuoted bytes with "..." after the quote.
func quote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + fmt.Sprintf("... (%d bytes)", len(s))
}

// show returns s as it is when it is short printable text (a path, a tag,
// an anchor name), else quoted like quote, so that a message never carries
// a control character or an endless value.
func show(s string) string {
	if len(s) > maxQuoted {
		return quote(s)
	}
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return quote(s)
		}
	}
	return s
}

// escapeUnprintable writes each character badRune refuses as a Go escape
// (\n, \x1b, \u202e), leaving the rest of s as it is. Every FieldError
// passes through it, so no message can move the cursor, recolour the
// terminal or reorder the text around it.
func escapeUnprintable(s string) string {
	if _, bad := badRune(s); !bad {
		return s
	}
	var b strings.Builder
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size <= 1 {
				fmt.Fprintf(&b, `\x%02x`, s[i])
				continue
			}
		}
		if unprintable(r) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
