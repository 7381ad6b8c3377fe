package profile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// fileBad reports a character YAML does not allow in a file (outside the
// printable set of YAML 1.2, §5.1), or one that YAML 1.1 parsers count as a
// line break (NEL, LS, PS), which would shift every position after it.
func fileBad(r rune) bool {
	return (r < 0x20 && r != '\t' && r != '\n' && r != '\r') || (r >= 0x7F && r <= 0x9F) ||
		r == 0x2028 || r == 0x2029 || r == 0xFFFE || r == 0xFFFF
}

// checkText finds, with its line and column, what the YAML parser would
// refuse without a position: bytes that are not UTF-8, and characters that
// are not printable. Columns count characters, as the parser's do.
func checkText(name string, data []byte) *FieldError {
	line, col := 1, 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			return &FieldError{File: name, Pos: Pos{line, col}, Msg: fmt.Sprintf("byte 0x%02X is not UTF-8; save the profile as UTF-8", data[i])}
		case r == '\n':
			line, col = line+1, 1
		case r == '\r':
			if i+1 < len(data) && data[i+1] == '\n' {
				i++
			}
			line, col = line+1, 1
		case r == 0xFEFF && i == 0: // a byte order mark may start the file
		case r == 0xFEFF:
			return &FieldError{File: name, Pos: Pos{line, col}, Msg: "byte order mark (U+FEFF) inside the profile; only its very start may hold one"}
		case fileBad(r):
			return &FieldError{File: name, Pos: Pos{line, col}, Msg: fmt.Sprintf("%s in the profile: YAML allows only printable characters; remove it (write it as an escape inside double quotes if you really mean it)", runeName(r))}
		default:
			col++
		}
		i += size
	}
	return nil
}

// posAt returns the line and column of byte offset off.
func posAt(data []byte, off int) Pos {
	line, col := 1, 1
	for i := 0; i < off && i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch r {
		case '\n':
			line, col = line+1, 1
		case '\r':
			if i+1 < len(data) && data[i+1] == '\n' {
				i++
			}
			line, col = line+1, 1
		default:
			col++
		}
		i += size
	}
	return Pos{line, col}
}

var (
	yamlError = lazyMustCompile(`^yaml: (?:line (\d+): )?(.*)$`)
	// parserProblems are the yaml.v3 parser's (not scanner's) messages:
	// yaml.v3 reports their line 0-based (parserc.go, decode.go's fail).
	parserProblems = map[string]bool{
		"did not find expected <stream-start>":   true,
		"did not find expected <document start>": true,
		"found undefined tag handle":             true,
		"did not find expected node content":     true,
		"did not find expected '-' indicator":    true,
		"did not find expected key":              true,
		"did not find expected ',' or ']'":       true,
		"did not find expected ',' or '}'":       true,
		"found duplicate %YAML directive":        true,
		"found incompatible YAML document":       true,
		"found duplicate %TAG directive":         true,
	}
	unknownAnchor = lazyMustCompile(`^unknown anchor '(.*)' referenced$`)
	maxDepth      = lazyMustCompile(`^exceeded max depth of (\d+)$`)
)

// syntaxError turns a yaml.v3 syntax error into a FieldError with a
// position. yaml.v3 reports a line only, none on line 1, and a 0-based line
// for parser errors; where the cause is one castellan can find in the text
// (a tab in the indentation, nesting too deep, an unknown anchor) it is
// reported at its line and column instead.
func syntaxError(name string, data []byte, err error) *FieldError {
	m := yamlError.FindStringSubmatch(err.Error())
	if m == nil {
		return &FieldError{File: name, Pos: Pos{Line: 1}, Msg: "YAML syntax: " + err.Error()}
	}
	problem := m[2]
	line := 1 // yaml.v3 leaves the line out on line 1
	if m[1] != "" {
		line, _ = strconv.Atoi(m[1])
		if parserProblems[problem] {
			line++
		}
	}
	if parserProblems[problem] {
		// yaml.v3 names the line where the construct began (the list, the
		// mapping); find the line where the problem is.
		if l, ok := problemLine(data, problem); ok {
			line = l
		}
	}
	lines := strings.Split(strings.ReplaceAll(strings.ReplaceAll(string(data), "\r\n", "\n"), "\r", "\n"), "\n")
	line = max(1, min(line, len(lines)))
	if pos, ok := tabIndent(lines, line); ok {
		return &FieldError{File: name, Pos: pos, Msg: "tab character in the indentation: YAML indents with spaces only; replace the tab with spaces"}
	}
	if mm := maxDepth.FindStringSubmatch(problem); mm != nil {
		limit, _ := strconv.Atoi(mm[1])
		pos, ok := flowDepth(data, limit)
		if !ok {
			pos = Pos{Line: line}
		}
		return &FieldError{File: name, Pos: pos, Msg: fmt.Sprintf("YAML nesting deeper than %d levels; is this the right file?", limit)}
	}
	if mm := unknownAnchor.FindStringSubmatch(problem); mm != nil {
		pos, ok := aliasPos(data, mm[1])
		if !ok {
			pos = Pos{Line: line}
		}
		return &FieldError{File: name, Pos: pos, Msg: fmt.Sprintf("alias *%s refers to no anchor &%s written before it", show(mm[1]), show(mm[1]))}
	}
	return &FieldError{File: name, Pos: Pos{Line: line}, Msg: "YAML syntax: " + problem}
}

// tabIndent finds a tab in the indentation of a line that holds content,
// on the line of the error or the ones beside it.
func tabIndent(lines []string, line int) (Pos, bool) {
	for l := max(1, line-1); l <= min(line+1, len(lines)); l++ {
		text := lines[l-1]
		indent := len(text) - len(strings.TrimLeft(text, " \t"))
		rest := text[indent:]
		if rest == "" || rest[0] == '#' {
			continue
		}
		if i := strings.IndexByte(text[:indent], '\t'); i >= 0 {
			return Pos{Line: l, Column: i + 1}, true
		}
	}
	return Pos{}, false
}

// flowDepth finds the bracket that opens flow level limit+1, skipping quoted
// text and comments.
func flowDepth(data []byte, limit int) (Pos, bool) {
	depth := 0
	for i := 0; i < len(data); i++ {
		switch c := data[i]; c {
		case '[', '{':
			depth++
			if depth > limit {
				return posAt(data, i), true
			}
		case ']', '}':
			depth--
		case '"', '\'':
			for i++; i < len(data) && data[i] != c; i++ {
				if c == '"' && data[i] == '\\' {
					i++
				}
			}
		case '#':
			if i == 0 || data[i-1] == ' ' || data[i-1] == '\t' || data[i-1] == '\n' {
				for i < len(data) && data[i] != '\n' {
					i++
				}
			}
		}
	}
	return Pos{}, false
}

// aliasPos finds the first *name that stands as an alias.
func aliasPos(data []byte, name string) (Pos, bool) {
	s := string(data)
	for off := 0; ; {
		i := strings.Index(s[off:], "*"+name)
		if i < 0 {
			return Pos{}, false
		}
		i += off
		end := i + 1 + len(name)
		before := i == 0 || strings.ContainsRune(" \t\n\r[{,:-", rune(s[i-1]))
		after := end == len(s) || strings.ContainsRune(" \t\n\r]},", rune(s[end]))
		if before && after {
			return posAt(data, i), true
		}
		off = i + 1
	}
}

// maxBisect bounds the profiles whose syntax errors are located by parsing
// prefixes (a few dozen parses of at most this much).
const maxBisect = 64 << 10

// problemLine finds the first line at which the text stops parsing with
// problem: the shortest prefix of whole lines that fails with it.
func problemLine(data []byte, problem string) (int, bool) {
	if len(data) > maxBisect {
		return 0, false
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	fails := func(k int) bool {
		err := parseYAML(bytes.Join(lines[:k], nil))
		if err == nil {
			return false
		}
		m := yamlError.FindStringSubmatch(err.Error())
		return m != nil && m[2] == problem
	}
	lo, hi := 1, len(lines)
	if !fails(hi) {
		return 0, false
	}
	for lo < hi {
		mid := (lo + hi) / 2
		if fails(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, true
}

// parseYAML parses every document of data, for its syntax error.
func parseYAML(data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}
