package profile

import (
	"bytes"
	"fmt"

	"go.yaml.in/yaml/v3"
)

// This file writes profiles back: for an editor (the TUI) that changes a
// profile's values and saves it. Written reads a profile's values as the
// person wrote them (no defaults), Marshal writes a new profile as a person
// would (fields in the documented order, two-space indents, only what is
// set), and Update changes an existing profile's text to say new values
// while keeping its comments, key order and quoting wherever a value did
// not change. YAML node API: go.yaml.in/yaml/v3 (yaml.Node).

// Written decodes a profile's text into the values it spells out, without
// defaults: what an editor shows and writes back. raw must be a profile
// Parse accepts (Written does not check it again).
func Written(raw []byte) (*Cluster, error) {
	var c Cluster
	if err := yaml.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("decoding profile: %w", err)
	}
	return &c, nil
}

// header starts a profile Marshal writes.
const header = `# castellan cluster profile (apiVersion castellan/v1alpha1).
# Check it with: castellan validate -f FILE; see what it would change with: castellan plan -f FILE
# Relative paths are relative to this file's directory.
`

// Marshal writes c as a new profile file: a short header comment, then the
// fields in the order the format documents them, with two-space indents and
// only the fields that are set (defaults stay implicit).
func Marshal(c *Cluster) ([]byte, error) {
	var n yaml.Node
	if err := n.Encode(c); err != nil {
		return nil, fmt.Errorf("encoding profile: %w", err)
	}
	body, err := encode(&n)
	if err != nil {
		return nil, err
	}
	return append([]byte(header), body...), nil
}

// Update returns raw (a profile's text) changed to say c. Whatever did not
// change between the values raw spells out and c keeps its text: comments,
// key order, quoting and flow or block style. Changed scalars keep their
// comments; new keys go after their documented predecessor; removed list
// items and cleared keys are dropped with their comments. List items are
// matched by their name (or device) so that removing a node keeps the
// others' comments. raw must be a profile Parse accepts.
func Update(raw []byte, c *Cluster) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("decoding profile: %w", err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return Marshal(c)
	}
	old, err := Written(raw)
	if err != nil {
		return nil, err
	}
	var base, want yaml.Node
	if err := base.Encode(old); err != nil {
		return nil, fmt.Errorf("encoding profile: %w", err)
	}
	if err := want.Encode(c); err != nil {
		return nil, fmt.Errorf("encoding profile: %w", err)
	}
	if sameNode(&base, &want) {
		return raw, nil
	}
	doc.Content[0] = merge(doc.Content[0], &base, &want)
	out, err := encode(&doc)
	if err != nil {
		return nil, err
	}
	return realign(raw, out), nil
}

// realign puts line comments back at the column they had in orig (the
// encoder writes them one space after the value): a line of out whose key
// and comment a line of orig has gets the comment at orig's column, when
// its value leaves room.
func realign(orig, out []byte) []byte {
	type place struct{ key, comment string }
	cols := map[place]int{}
	for _, line := range bytes.Split(orig, []byte("\n")) {
		if at := commentAt(line); at > 0 {
			cols[place{lineKey(line[:at]), string(line[at:])}] = at
		}
	}
	lines := bytes.Split(out, []byte("\n"))
	for i, line := range lines {
		at := commentAt(line)
		if at <= 0 {
			continue
		}
		col, ok := cols[place{lineKey(line[:at]), string(line[at:])}]
		code := bytes.TrimRight(line[:at], " ")
		if !ok || col <= len(code) || col == at {
			continue
		}
		fixed := append(append(append([]byte(nil), code...), bytes.Repeat([]byte(" "), col-len(code))...), line[at:]...)
		lines[i] = fixed
	}
	return bytes.Join(lines, []byte("\n"))
}

// commentAt is where a line's comment starts (a # after a space, outside
// quotes), or -1.
func commentAt(line []byte) int {
	var quote byte
	for i, c := range line {
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#' && i > 0 && (line[i-1] == ' ' || line[i-1] == '\t'):
			if len(bytes.TrimSpace(line[:i])) == 0 {
				return -1 // a comment line
			}
			return i
		}
	}
	return -1
}

// lineKey is the mapping key (or list item) a line starts with.
func lineKey(code []byte) string {
	code = bytes.TrimSpace(code)
	if k, _, ok := bytes.Cut(code, []byte(":")); ok {
		return string(k)
	}
	return string(code)
}

func encode(n *yaml.Node) ([]byte, error) {
	spellNulls(n, false)
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(n); err != nil {
		return nil, fmt.Errorf("encoding profile: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encoding profile: %w", err)
	}
	return b.Bytes(), nil
}

// spellNulls writes out empty values inside flow collections as null: the
// encoder would write {ssh} back with an empty quoted string, not null.
func spellNulls(n *yaml.Node, flow bool) {
	if n.Kind == yaml.ScalarNode && flow && n.Tag == "!!null" && n.Value == "" {
		n.Value = "null"
	}
	flow = flow || n.Style&yaml.FlowStyle != 0
	for _, c := range n.Content {
		spellNulls(c, flow)
	}
}

// merge changes doc (the text's node) from saying base to saying want, and
// returns the node to use in its place. base is the encoding of the values
// doc spells out: aligned with doc key by key and item by item.
func merge(doc, base, want *yaml.Node) *yaml.Node {
	if base != nil && sameNode(base, want) {
		return doc
	}
	for doc.Kind == yaml.AliasNode && doc.Alias != nil {
		doc = doc.Alias
	}
	switch {
	case doc.Kind == yaml.MappingNode && want.Kind == yaml.MappingNode:
		mergeMapping(doc, orEmpty(base, yaml.MappingNode), want)
		return doc
	case doc.Kind == yaml.SequenceNode && want.Kind == yaml.SequenceNode:
		mergeSequence(doc, orEmpty(base, yaml.SequenceNode), want)
		return doc
	case doc.Kind == yaml.ScalarNode && want.Kind == yaml.ScalarNode:
		doc.Tag, doc.Value, doc.Style = want.Tag, want.Value, want.Style
		return doc
	}
	// A scalar became a mapping or the like: the new value, with the old
	// comments.
	want.HeadComment, want.LineComment, want.FootComment = doc.HeadComment, doc.LineComment, doc.FootComment
	inherit(want, doc.Style&yaml.FlowStyle)
	return want
}

func orEmpty(n *yaml.Node, kind yaml.Kind) *yaml.Node {
	if n == nil || n.Kind != kind {
		return &yaml.Node{Kind: kind}
	}
	return n
}

// mergeMapping changes doc's entries: changed values in place, new keys
// after the key that precedes them in want, keys base had and want has not
// removed. Keys doc has but base has not (a zero value written out, such as
// agent: false) stay when want has none either.
func mergeMapping(doc, base, want *yaml.Node) {
	for i := 0; i+1 < len(want.Content); i += 2 {
		k, w := want.Content[i], want.Content[i+1]
		b := lookup(base, k.Value)
		if at := index(doc, k.Value); at >= 0 {
			doc.Content[at+1] = merge(doc.Content[at+1], b, w)
			continue
		}
		// After the nearest preceding key of want that doc has.
		pos := 0
		for j := i - 2; j >= 0; j -= 2 {
			if at := index(doc, want.Content[j].Value); at >= 0 {
				pos = at + 2
				break
			}
		}
		inherit(w, doc.Style&yaml.FlowStyle)
		doc.Content = append(doc.Content[:pos], append([]*yaml.Node{k, w}, doc.Content[pos:]...)...)
	}
	for i := 0; i+1 < len(base.Content); i += 2 {
		k := base.Content[i].Value
		if lookup(want, k) != nil {
			continue
		}
		if at := index(doc, k); at >= 0 {
			doc.Content = append(doc.Content[:at], doc.Content[at+2:]...)
		}
	}
}

// mergeSequence rebuilds doc's items in want's order: an item of want that
// base has (by name or device, else the next unmatched one) keeps doc's
// text for it; a new item is styled like its siblings.
func mergeSequence(doc, base, want *yaml.Node) {
	used := make([]bool, len(base.Content))
	match := make([]int, len(want.Content))
	for i, w := range want.Content {
		match[i] = -1
		id := identity(w)
		for j, b := range base.Content {
			if !used[j] && j < len(doc.Content) && (id != "" && identity(b) == id || id == "" && sameNode(b, w)) {
				match[i], used[j] = j, true
				break
			}
		}
	}
	for i := range want.Content {
		if match[i] >= 0 {
			continue
		}
		for j := range base.Content {
			if !used[j] && j < len(doc.Content) {
				match[i], used[j] = j, true
				break
			}
		}
	}
	var style yaml.Style
	if len(doc.Content) > 0 {
		style = doc.Content[0].Style & yaml.FlowStyle
	}
	out := make([]*yaml.Node, len(want.Content))
	for i, w := range want.Content {
		if j := match[i]; j >= 0 {
			out[i] = merge(doc.Content[j], base.Content[j], w)
			continue
		}
		inherit(w, style|doc.Style&yaml.FlowStyle)
		out[i] = w
	}
	doc.Content = out
}

// identity names a list item: its name or device.
func identity(n *yaml.Node) string {
	if n.Kind != yaml.MappingNode {
		return ""
	}
	for _, k := range []string{"name", "device"} {
		if v := lookup(n, k); v != nil && v.Kind == yaml.ScalarNode {
			return k + "=" + v.Value
		}
	}
	return ""
}

// inherit gives a new node the flow style of where it goes.
func inherit(n *yaml.Node, flow yaml.Style) {
	if flow == 0 || n.Kind == yaml.ScalarNode {
		return
	}
	n.Style |= yaml.FlowStyle
}

func index(m *yaml.Node, key string) int {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return i
		}
	}
	return -1
}

func lookup(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	if i := index(m, key); i >= 0 {
		return m.Content[i+1]
	}
	return nil
}

// sameNode compares two encoder-made nodes by kind, tag and value.
func sameNode(a, b *yaml.Node) bool {
	if a.Kind != b.Kind || len(a.Content) != len(b.Content) {
		return false
	}
	if a.Kind == yaml.ScalarNode {
		return a.Tag == b.Tag && a.Value == b.Value
	}
	for i := range a.Content {
		if !sameNode(a.Content[i], b.Content[i]) {
			return false
		}
	}
	return true
}
