package report

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Clean makes text from a profile or a node safe to print on a terminal:
// newlines and tabs stay; every other C0 or C1 control character, DEL,
// Unicode's bidirectional and zero-width formatting characters, and bytes
// that are not UTF-8 are shown escaped (\x1b, \u202e, \xff), so nothing can
// move the cursor, recolour, hide or reorder what castellan prints.
func Clean(s string) string {
	if !needsCleaning(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafeRune(r):
			if r < 0x100 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func needsCleaning(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\n' && c != '\t' || c >= 0x7f {
			return true // a control, or anything non-ASCII (checked rune by rune)
		}
	}
	return false
}

// unsafeRune reports the runes Clean escapes.
func unsafeRune(r rune) bool {
	switch {
	case r == '\n' || r == '\t':
		return false
	case r < 0x20, r >= 0x7f && r < 0xa0:
		return true
	case r >= 0x200b && r <= 0x200f, // zero-width spaces and marks, LRM, RLM
		r >= 0x202a && r <= 0x202e, // bidi embeddings and overrides
		r >= 0x2066 && r <= 0x2069, // bidi isolates
		r == 0x061c, r == 0xfeff:
		return true
	}
	return false
}

// EscapeJSON escapes, inside encoded JSON, what encoding/json leaves raw but
// a terminal may interpret: DEL, the C1 controls and the bidirectional and
// zero-width formatting characters, as \u escapes. (encoding/json already
// escapes C0 controls and replaces invalid UTF-8.) The result is the same
// JSON value.
func EscapeJSON(data []byte) []byte {
	if !bytes.ContainsFunc(data, func(r rune) bool { return r >= 0x7f && unsafeRune(r) }) {
		return data
	}
	var b bytes.Buffer
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r >= 0x7f && unsafeRune(r) {
			fmt.Fprintf(&b, `\u%04x`, r)
		} else {
			b.Write(data[i : i+size])
		}
		i += size
	}
	return b.Bytes()
}
