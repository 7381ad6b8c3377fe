package profile

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// decoder fills Go values from a YAML node tree strictly: unknown fields,
// duplicate keys and wrongly typed values are errors that carry the
// position and field path. It also records where every field was written,
// so that validation errors can point at the line that caused them.
type decoder struct {
	file   string
	errs   Errors
	pos    map[string]Pos
	unmarK reflect.Type
}

func newDecoder(file string) *decoder {
	return &decoder{
		file:   file,
		pos:    map[string]Pos{},
		unmarK: reflect.TypeFor[yaml.Unmarshaler](),
	}
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.errs = append(d.errs, &FieldError{File: d.file, Pos: nodePos(n), Path: path, Msg: fmt.Sprintf(format, args...)})
}

func nodePos(n *yaml.Node) Pos { return Pos{Line: n.Line, Column: n.Column} }

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "nothing (null)"
		}
		return fmt.Sprintf("the value %q", n.Value)
	}
	return "something else"
}

// decode fills v (addressable) from n; path names v in error messages.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	d.pos[path] = nodePos(n)
	if v.Kind() == reflect.Pointer {
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
		return
	}
	if reflect.PointerTo(v.Type()).Implements(d.unmarK) {
		d.leaf(n, v, path)
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		d.decodeSlice(n, v, path)
	case reflect.Map:
		d.decodeMap(n, v, path)
	default:
		d.leaf(n, v, path)
	}
}

func (d *decoder) leaf(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, "expected %s, got %s", describeType(v.Type()), kindName(n))
		return
	}
	if n.Tag == "!!null" {
		return // an empty value leaves the default
	}
	// Strings must be written as strings: `name: 1.10` or `user: yes`
	// silently becoming text is a classic YAML trap, so say it.
	if v.Kind() == reflect.String && n.Tag != "!!str" && n.Style == 0 {
		d.fail(n, path, "expected a string, got %s %q; quote it if you mean the text", strings.TrimPrefix(n.Tag, "!!"), n.Value)
		return
	}
	if err := n.Decode(v.Addr().Interface()); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			d.fail(n, path, "expected %s, got %s", describeType(v.Type()), kindName(n))
			return
		}
		d.fail(n, path, "%v", err)
	}
}

func describeType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int32, reflect.Int64, reflect.Uint16:
		return "a whole number"
	case reflect.Slice:
		return "a list"
	case reflect.Map, reflect.Struct:
		if t == reflect.TypeFor[Duration]() {
			return "a duration such as 30s or 5m"
		}
		return "a mapping"
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
			d.fail(k, path, "unknown field %q; expected one of: %s", key, fieldNames(fields, key))
			return
		}
		d.decode(val, v.Field(fi.index), join(path, key))
		if _, ok := d.pos[join(path, key)]; ok {
			// Point field errors at the key, which is where a reader looks.
			d.pos[join(path, key)] = nodePos(k)
		}
	})
}

// entries calls fn for each key and value of the mapping n, after the checks
// structs and maps share: null leaves the default, anything but a mapping is
// an error, and merge keys, complex keys and duplicates are refused. noun
// ("field" or "key") names the keys in messages. It reports whether n was a
// mapping.
func (d *decoder) entries(n *yaml.Node, path, noun string, fn func(k, val *yaml.Node)) bool {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return false
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping, got %s", kindName(n))
		return false
	}
	what := map[string]string{"field": "fields", "key": "entries"}[noun]
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Value == "<<" {
			d.fail(k, path, "merge keys and complex keys are not supported; write the %s out", what)
			continue
		}
		if seen[k.Value] {
			d.fail(k, join(path, k.Value), "%s %q appears twice", noun, k.Value)
			continue
		}
		seen[k.Value] = true
		fn(k, val)
	}
	return true
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
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "expected a list, got %s", kindName(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
	}
	v.Set(s)
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	ok := d.entries(n, path, "key", func(k, val *yaml.Node) {
		p := join(path, k.Value)
		key := reflect.New(v.Type().Key()).Elem()
		switch key.Kind() {
		case reflect.String:
			key.SetString(k.Value)
		case reflect.Int:
			x, err := strconv.Atoi(k.Value)
			if err != nil {
				d.fail(k, p, "expected a number as key, got %q", k.Value)
				return
			}
			key.SetInt(int64(x))
		default:
			d.fail(k, p, "unsupported key type %s", key.Type())
			return
		}
		elem := reflect.New(v.Type().Elem()).Elem()
		d.decode(val, elem, p)
		d.pos[p] = nodePos(k)
		m.SetMapIndex(key, elem)
	})
	if ok {
		v.Set(m)
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
