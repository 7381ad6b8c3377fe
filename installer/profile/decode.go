package profile

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Bounds on what one profile may expand to. A real profile has a few hundred
// values; a thousand nodes with labels and disks stay under 50 000. Aliases
// are bounded separately and much lower, so that a few lines of anchors and
// aliases (a "billion laughs") cannot make a small file decode into a huge one.
const (
	// maxValues bounds the values decoded, aliases expanded.
	maxValues = 100_000
	// maxAliasValues bounds the values reached through aliases.
	maxAliasValues = 10_000
	// maxKey bounds a mapping key: the longest are Kubernetes label keys, a
	// DNS subdomain prefix (253), '/' and a name (63).
	maxKey = 317
)

// decoder fills Go values from a YAML node tree strictly: unknown fields,
// duplicate keys, explicit tags and values of the wrong type are errors that
// carry the position and field path. It also records where every field was
// written, which fields were written with a value (so defaults apply only to
// unwritten ones), and which failed to decode (so validation does not report
// them a second time).
type decoder struct {
	file string
	errs Errors
	pos  map[string]Pos
	set  map[string]bool
	bad  map[string]bool

	values, aliasValues int
	aliases             []*yaml.Node // the aliases being expanded, outermost first
	aliasPath           string       // the field path of the outermost one
	aborted             bool         // a bound was hit: decode nothing more
}

func newDecoder(file string) *decoder {
	return &decoder{file: file, pos: map[string]Pos{}, set: map[string]bool{}, bad: map[string]bool{}}
}

// fail records a problem at n.
func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.errs = append(d.errs, &FieldError{File: d.file, Pos: nodePos(n), Path: path, Msg: fmt.Sprintf(format, args...)})
}

// failValue records a value that could not be decoded: path keeps its zero
// value, and validation says nothing more about it.
func (d *decoder) failValue(n *yaml.Node, path, format string, args ...any) {
	d.fail(n, path, format, args...)
	d.bad[path] = true
	delete(d.set, path) // so the default applies to what depends on it
}

func nodePos(n *yaml.Node) Pos { return Pos{Line: n.Line, Column: n.Column} }

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return describeScalar(n)
	}
	return "something else"
}

var (
	durationType = reflect.TypeFor[Duration]()
)

// count counts one decoded value against the bounds; false means stop.
func (d *decoder) count(n *yaml.Node, path string) bool {
	if d.aborted {
		return false
	}
	d.values++
	if len(d.aliases) > 0 {
		d.aliasValues++
	}
	switch {
	case d.aliasValues > maxAliasValues:
		a := d.aliases[0]
		d.fail(a, d.aliasPath, "alias *%s (anchor &%s at line %d) expands the profile beyond %d values reached through aliases; "+
			"aliases are bounded so that a small file cannot expand into a huge one: write the repeated values out",
			show(a.Value), show(a.Value), a.Alias.Line, maxAliasValues)
	case d.values > maxValues:
		d.fail(n, path, "the profile holds more than %d values; is this the right file?", maxValues)
	default:
		return true
	}
	d.aborted = true
	return false
}

// decode fills v (addressable) from n; path names v in error messages.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if !d.count(n, path) {
		return
	}
	d.pos[path] = nodePos(n)
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			d.failValue(n, path, "alias *%s names no anchor", show(n.Value))
			return
		}
		if len(d.aliases) == 0 {
			d.aliasPath = path
		}
		d.aliases = append(d.aliases, n)
		defer func() { d.aliases = d.aliases[:len(d.aliases)-1] }()
		pos := d.pos[path]
		d.decode(n.Alias, v, path)
		d.pos[path] = pos // errors about the value point at the alias
		return
	}
	if n.Style&yaml.TaggedStyle != 0 {
		d.failValue(n, path, "explicit tags such as %s are not accepted; write the value without a tag", show(n.Tag))
		return
	}
	if isNull(n) {
		return // an empty value leaves the default
	}
	d.set[path] = true
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		v = v.Elem()
	}
	switch {
	case v.Type() == durationType:
		d.duration(n, v, path)
	case v.Kind() == reflect.Struct:
		d.decodeStruct(n, v, path)
	case v.Kind() == reflect.Slice:
		d.decodeSlice(n, v, path)
	case v.Kind() == reflect.Map:
		d.decodeMap(n, v, path)
	default:
		d.leaf(n, v, path)
	}
}

// scalar checks that n is a scalar for a value of type t.
func (d *decoder) scalar(n *yaml.Node, t reflect.Type, path string) bool {
	if n.Kind != yaml.ScalarNode {
		d.failValue(n, path, "expected %s, got %s", describeType(t), kindName(n))
		return false
	}
	return true
}

func (d *decoder) leaf(n *yaml.Node, v reflect.Value, path string) {
	if !d.scalar(n, v.Type(), path) {
		return
	}
	switch v.Kind() {
	case reflect.String:
		if s, ok := d.text(n, path); ok {
			v.SetString(s)
		}
	case reflect.Int:
		x, err := parseInt(n)
		if err != nil {
			d.failValue(n, path, "%v", err)
			return
		}
		v.SetInt(int64(x))
	case reflect.Bool:
		b, err := parseBool(n)
		if err != nil {
			d.failValue(n, path, "%v", err)
			return
		}
		v.SetBool(b)
	default:
		d.failValue(n, path, "internal error: no decoder for %s", v.Type())
	}
}

// text reads a scalar as text. Strings must be written as text: `name: 1.10`
// or `user: true` silently becoming text is a classic YAML trap, so it is
// refused; so is any character that must not reach a terminal or a node.
func (d *decoder) text(n *yaml.Node, path string) (string, bool) {
	if coreTag(n) != "!!str" {
		d.failValue(n, path, "expected text, got %s; quote it if you mean the text", describeScalar(n))
		return "", false
	}
	if r, bad := badRune(n.Value); bad {
		d.failValue(n, path, "%s in %s: only printable text is accepted, since castellan prints this value and may send it to a node", runeName(r), quote(n.Value))
		return "", false
	}
	return n.Value, true
}

func (d *decoder) duration(n *yaml.Node, v reflect.Value, path string) {
	if !d.scalar(n, v.Type(), path) {
		return
	}
	const want = "expected a duration such as 30s or 5m"
	if coreTag(n) != "!!str" {
		d.failValue(n, path, "%s, got %s (a number needs its unit)", want, describeScalar(n))
		return
	}
	x, err := time.ParseDuration(n.Value)
	switch {
	case err != nil:
		d.failValue(n, path, "%s, got %s", want, quote(n.Value))
	case x <= 0:
		d.failValue(n, path, "%s, more than zero; got %s (leave it out for the default)", want, quote(n.Value))
	default:
		v.Set(reflect.ValueOf(Duration{x}))
	}
}

func describeType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "text"
	case reflect.Bool:
		return "true or false"
	case reflect.Int:
		return "a whole number"
	case reflect.Slice:
		return "a list"
	case reflect.Map, reflect.Struct:
		if t == durationType {
			return "a duration such as 30s or 5m"
		}
		return "a mapping"
	case reflect.Pointer:
		return describeType(t.Elem())
	}
	return t.String()
}

// fieldInfo describes the YAML keys of a struct type.
type fieldInfo struct {
	index int
	name  string
}

func structFields(t reflect.Type) []fieldInfo {
	var out []fieldInfo
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		name, _, _ := strings.Cut(tag, ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		out = append(out, fieldInfo{index: i, name: name})
	}
	return out
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	fields := structFields(v.Type())
	d.entries(n, path, "field", func(k, val *yaml.Node) {
		key := k.Value
		fi, ok := findField(fields, key)
		if !ok {
			d.fail(k, path, "unknown field %s; expected one of: %s", quote(key), fieldNames(fields, key))
			// A misspelt field is not also missing.
			for _, f := range fields {
				if strings.EqualFold(f.name, key) {
					d.bad[join(path, f.name)] = true
				}
			}
			return
		}
		p := join(path, key)
		d.decode(val, v.Field(fi.index), p)
		if _, ok := d.pos[p]; ok {
			// Point field errors at the key, which is where a reader looks.
			d.pos[p] = nodePos(k)
		}
	})
}

// entries calls fn for each key and value of the mapping n, after the checks
// structs and maps share: anything but a mapping is an error, and merge keys,
// complex keys, tagged keys, keys that are not printable text and duplicates
// are refused. noun ("field" or "key") names the keys in messages.
func (d *decoder) entries(n *yaml.Node, path, noun string, fn func(k, val *yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		d.failValue(n, path, "expected a mapping, got %s", kindName(n))
		return
	}
	what := map[string]string{"field": "fields", "key": "entries"}[noun]
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content) && !d.aborted; i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.AliasNode || k.Kind != yaml.ScalarNode || (k.Value == "<<" && k.Style == 0) {
			d.fail(k, path, "merge keys, aliases as keys and complex keys are not supported; write the %s out", what)
			d.bad[path] = true
			continue
		}
		if k.Style&yaml.TaggedStyle != 0 {
			d.fail(k, path, "explicit tags such as %s are not accepted; write the key without a tag", show(k.Tag))
			d.bad[path] = true
			continue
		}
		if len(k.Value) > maxKey {
			d.fail(k, path, "a key of %d bytes: keys here are names of at most %d", len(k.Value), maxKey)
			d.bad[path] = true
			continue
		}
		if r, bad := badRune(k.Value); bad {
			d.fail(k, path, "%s in the key %s: only printable text is accepted", runeName(r), quote(k.Value))
			d.bad[path] = true
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.fail(k, join(path, k.Value), "%s %s appears twice (first at line %d)", noun, quote(k.Value), first.Line)
			continue
		}
		seen[k.Value] = k
		fn(k, val)
	}
}

func findField(fields []fieldInfo, key string) (fieldInfo, bool) {
	for _, f := range fields {
		if f.name == key {
			return f, true
		}
	}
	return fieldInfo{}, false
}

// fieldNames lists the valid keys, the likely intended one first.
func fieldNames(fields []fieldInfo, typo string) string {
	names := make([]string, 0, len(fields))
	for _, f := range fields {
		names = append(names, f.name)
	}
	sort.SliceStable(names, func(i, j int) bool {
		return strings.EqualFold(names[i], typo) && !strings.EqualFold(names[j], typo)
	})
	return strings.Join(names, ", ")
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.failValue(n, path, "expected a list, got %s", kindName(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
	}
	v.Set(s)
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	m := reflect.MakeMapWithSize(v.Type(), min(len(n.Content)/2, 64))
	byValue := map[int]*yaml.Node{} // int keys compared as numbers, not as text
	d.entries(n, path, "key", func(k, val *yaml.Node) {
		p := join(path, k.Value)
		key := reflect.New(v.Type().Key()).Elem()
		switch key.Kind() {
		case reflect.String:
			key.SetString(k.Value)
		case reflect.Int:
			x, err := parseIntKey(k)
			if err != nil {
				d.fail(k, p, "%v", err)
				d.bad[p] = true
				return
			}
			if first, dup := byValue[x]; dup {
				d.fail(k, p, "%d appears twice: %s here and %s at line %d", x, quote(k.Value), quote(first.Value), first.Line)
				return
			}
			byValue[x] = k
			key.SetInt(int64(x))
		default:
			d.fail(k, p, "internal error: no decoder for keys of type %s", key.Type())
			return
		}
		elem := reflect.New(v.Type().Elem()).Elem()
		d.decode(val, elem, p)
		d.pos[p] = nodePos(k)
		m.SetMapIndex(key, elem)
	})
	if n.Kind == yaml.MappingNode {
		v.Set(m)
	}
}

// parseIntKey reads a number used as a key, e.g. a port. Keys may be quoted
// (JSON writes every key as a string), but are decimal whole numbers either way.
func parseIntKey(k *yaml.Node) (int, error) {
	if k.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 && decimal.MatchString(k.Value) {
		plain := *k
		plain.Style = 0
		k = &plain
	}
	x, err := parseInt(k)
	if err != nil {
		return 0, errors.New(strings.Replace(err.Error(), "expected a whole number", "expected a whole number as key", 1))
	}
	return x, nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
