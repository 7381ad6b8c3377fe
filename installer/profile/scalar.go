package profile

import (
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Scalars are read by the YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution),
// not by the YAML 1.1 rules yaml.v3 partly keeps: a plain scalar is null,
// a boolean, an integer or a float only when it matches the core schema's
// patterns, and text otherwise. Where YAML 1.1 and 1.2 disagree (y, on, off,
// 0777, 1_000, 2001-12-14), castellan refuses the value where a number or a
// boolean is expected, and says why, rather than guess.
var (
	coreNull  = lazyMustCompile(`^(|~|null|Null|NULL)$`)
	coreBool  = lazyMustCompile(`^(true|True|TRUE|false|False|FALSE)$`)
	coreInt   = lazyMustCompile(`^([-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$`)
	coreFloat = lazyMustCompile(`^([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN))$`)
	decimal   = lazyMustCompile(`^[-+]?[0-9]+$`)
	// yaml11Bool are the words YAML 1.1 reads as booleans and YAML 1.2 as text.
	yaml11Bool = lazyMustCompile(`^(y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)$`)
	// yaml11Number are forms YAML 1.1 reads as numbers and YAML 1.2 as text:
	// digit separators, binary, sexagesimal.
	yaml11Number = lazyMustCompile(`^[-+]?(0b[01_]+|[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?|[0-9][0-9_]*_[0-9_]*(\.[0-9_]*)?)$`)
)

// coreTag is the YAML 1.2 core schema tag of a scalar: !!str for quoted and
// block scalars, and for plain ones the first of null, bool, int, float that
// matches, else !!str.
func coreTag(n *yaml.Node) string {
	if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		return "!!str"
	}
	v := n.Value
	if v != "" && !strings.ContainsRune("~nNtTfF0123456789+-.", rune(v[0])) {
		return "!!str" // no null, bool, int or float starts otherwise
	}
	switch {
	case coreNull.MatchString(v):
		return "!!null"
	case coreBool.MatchString(v):
		return "!!bool"
	case coreInt.MatchString(v):
		return "!!int"
	case coreFloat.MatchString(v):
		return "!!float"
	}
	return "!!str"
}

// isNull reports a scalar that is null by the core schema: an empty value
// leaves the default.
func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && coreTag(n) == "!!null" }

// describeScalar says what a scalar is, for "expected X, got Y" messages.
func describeScalar(n *yaml.Node) string {
	switch coreTag(n) {
	case "!!null":
		return "nothing (null)"
	case "!!bool":
		return "the boolean " + n.Value
	case "!!int", "!!float":
		return "the number " + n.Value
	}
	if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
		return "the quoted text " + quote(n.Value)
	}
	return "the text " + quote(n.Value)
}

// parseInt reads a whole number written in decimal. It says what is wrong
// with anything else: a fraction, hex or octal, a leading zero (octal in YAML
// 1.1, decimal in 1.2), quotes, YAML 1.1 digit separators.
func parseInt(n *yaml.Node) (int, error) {
	v := n.Value
	tag := coreTag(n)
	switch {
	case tag == "!!str" && decimal.MatchString(v):
		return 0, fmt.Errorf("expected a whole number, got the quoted text %s; remove the quotes", quote(v))
	case tag == "!!str" && yaml11Number.MatchString(v):
		return 0, fmt.Errorf("expected a whole number in decimal digits, got %s (a number in YAML 1.1, text in YAML 1.2); write it as plain digits", quote(v))
	case tag == "!!float":
		return 0, fmt.Errorf("expected a whole number, got the number %s", v)
	case tag != "!!int":
		return 0, fmt.Errorf("expected a whole number, got %s", describeScalar(n))
	case !decimal.MatchString(v):
		return 0, fmt.Errorf("expected a whole number in decimal, got %s; write it in decimal digits", v)
	}
	digits := strings.TrimLeft(v, "+-")
	if len(digits) > 1 && digits[0] == '0' {
		return 0, fmt.Errorf("expected a whole number without leading zeros, got %s: YAML 1.1 reads it as octal, YAML 1.2 as decimal; write %s", v, trimZeros(v))
	}
	x, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("the number %s is out of range", quote(v))
	}
	return x, nil
}

func trimZeros(v string) string {
	sign := ""
	if v[0] == '-' || v[0] == '+' {
		sign, v = v[:1], v[1:]
	}
	v = strings.TrimLeft(v, "0")
	if v == "" {
		v = "0"
	}
	if sign == "+" {
		sign = ""
	}
	return sign + v
}

// parseBool reads a YAML 1.2 core boolean (true, True, TRUE, false, ...).
func parseBool(n *yaml.Node) (bool, error) {
	if coreTag(n) == "!!bool" {
		return strings.EqualFold(n.Value, "true"), nil
	}
	if yaml11Bool.MatchString(n.Value) && n.Style == 0 {
		return false, fmt.Errorf("expected true or false, got %s: YAML 1.2 reads it as text (YAML 1.1 read it as a boolean); write true or false", quote(n.Value))
	}
	return false, fmt.Errorf("expected true or false, got %s", describeScalar(n))
}
