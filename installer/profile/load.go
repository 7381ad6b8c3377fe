package profile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"

	"castellan/installer/localfile"
)

// Profile is a loaded Cluster with where it came from.
type Profile struct {
	Cluster
	// File is the path the profile was read from, as given.
	File string
	// Dir is the directory relative paths in the profile are resolved against.
	Dir string
	// Raw is the file's bytes, committed as-is to the state repo.
	Raw []byte

	pos map[string]Pos  // where each written field is
	set map[string]bool // fields written with a value (not null)
	bad map[string]bool // fields whose value could not be decoded
	// workloadFiles are the workloads of spec.netpol.workloadFiles, read by Validate.
	workloadFiles []SourcedWorkload
}

// MaxProfileSize bounds the profile file: a real one is a few kilobytes, one
// with a thousand nodes about 100 KiB.
const MaxProfileSize = 512 << 10

// Load is LoadContext without a context of its own: the profile and every
// file it names are still read with a deadline (FileTimeout each).
func Load(path string, opts ValidateOptions) (*Profile, error) {
	return LoadContext(context.Background(), path, opts)
}

// LoadContext reads the profile at path (a regular file of at most
// MaxProfileSize bytes, read within FileTimeout and while ctx lasts), decodes
// it, applies defaults and validates it. Every problem is reported in one
// round: an error of type Errors lists each with file:line:column and field
// path. A profile that cannot be read at all gives an error that names path
// (wrapping a *localfile.Error).
func LoadContext(ctx context.Context, path string, opts ValidateOptions) (*Profile, error) {
	rctx, cancel := context.WithTimeout(ctx, FileTimeout)
	defer cancel()
	data, err := localfile.Read(rctx, path, MaxProfileSize)
	if err != nil {
		return nil, fmt.Errorf("reading profile: %w", err)
	}
	abs, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("resolving profile directory: %w", err)
	}
	return LoadBytes(ctx, path, abs, data, opts)
}

// LoadBytes decodes, defaults and validates a profile held in memory (for
// example one read from the state repo), in one round like LoadContext. name
// is used in errors; dir is the directory relative paths resolve against.
func LoadBytes(ctx context.Context, name, dir string, data []byte, opts ValidateOptions) (*Profile, error) {
	p, errs := parse(name, data)
	if p == nil {
		return nil, errs
	}
	p.Dir = dir
	errs = append(errs, p.validate(ctx, opts)...)
	if len(errs) > 0 {
		return nil, errs.sorted()
	}
	return p, nil
}

// Parse decodes a profile strictly and applies defaults; it checks types and
// field names but not semantics (see Validate). name is used in errors. The
// error, if any, is of type Errors, each with a position. LoadBytes also
// validates, and reports type and semantic problems in one round.
func Parse(name string, data []byte) (*Profile, error) {
	p, errs := parse(name, data)
	if len(errs) > 0 {
		return nil, errs.sorted()
	}
	return p, nil
}

// parse decodes data. It returns no profile when the text cannot be read as
// YAML (or hit a bound); otherwise the profile, partly decoded when errs is
// not empty, with the fields that failed marked so validation skips them.
func parse(name string, data []byte) (*Profile, Errors) {
	if len(data) > MaxProfileSize {
		return nil, Errors{{File: name, Pos: posAt(data, MaxProfileSize), Msg: fmt.Sprintf("the profile is larger than %s; is this the right file?", localfile.Size(MaxProfileSize))}}
	}
	if e := checkText(name, data); e != nil {
		return nil, Errors{e}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, Errors{{File: name, Pos: Pos{1, 1}, Msg: "profile is empty; start from `castellan profile init`"}}
		}
		return nil, Errors{syntaxError(name, data, err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, Errors{{File: name, Pos: nodePos(&extra), Msg: "profile holds more than one YAML document; keep one cluster per file"}}
	} else if !errors.Is(err, io.EOF) {
		return nil, Errors{syntaxError(name, data, err)}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if isNull(root) && root.Style&yaml.TaggedStyle == 0 {
		return nil, Errors{{File: name, Pos: Pos{1, 1}, Msg: "profile is empty; start from `castellan profile init`"}}
	}
	d := newDecoder(name)
	p := &Profile{File: name, Raw: data}
	d.decode(root, reflect.ValueOf(&p.Cluster).Elem(), "")
	if d.aborted {
		return nil, d.errs
	}
	p.pos, p.set, p.bad = d.pos, d.set, d.bad
	p.pos[""] = nodePos(root)
	p.applyDefaults()
	return p, d.errs
}

// Position returns where field is written in the profile: field is a path as
// in FieldError.Path, e.g. "spec.ssh.keyFile" or "spec.nodes[1].address".
// For a field the profile leaves out (a default), it is the position of its
// nearest written parent. It is the zero Pos for a Profile not made by
// Parse or Load.
func (p *Profile) Position(field string) Pos {
	for {
		if pos, ok := p.pos[field]; ok {
			return pos
		}
		if field == "" {
			return Pos{}
		}
		field = parentPath(field)
	}
}

// Written reports whether field (a path as in Position) is written in the
// profile with a value, rather than left out, null, or defaulted.
func (p *Profile) Written(field string) bool { return p.set[field] }

// Errorf returns a FieldError about field, at its Position, for problems
// found outside this package (on a node, in a file the profile names), so
// that they read like the profile's own errors.
func (p *Profile) Errorf(field, format string, args ...any) *FieldError {
	return &FieldError{File: p.File, Pos: p.Position(field), Path: field, Msg: fmt.Sprintf(format, args...)}
}

func parentPath(path string) string {
	for i := len(path) - 1; i >= 0; i-- {
		switch path[i] {
		case '.':
			return path[:i]
		case '[':
			return path[:i]
		}
	}
	return ""
}

// isBad reports whether field or a parent of it could not be decoded.
func (p *Profile) isBad(field string) bool {
	for {
		if p.bad[field] {
			return true
		}
		if field == "" {
			return false
		}
		field = parentPath(field)
	}
}

// badUnder reports whether field or anything inside it could not be decoded.
func (p *Profile) badUnder(field string) bool {
	if p.isBad(field) {
		return true
	}
	for b := range p.bad {
		if strings.HasPrefix(b, field+".") || strings.HasPrefix(b, field+"[") {
			return true
		}
	}
	return false
}

// Resolve makes a path from the profile absolute: relative paths are relative
// to the profile's directory and a leading ~/ is the user's home.
func (p *Profile) Resolve(path string) string {
	if path == "" {
		return ""
	}
	if len(path) >= 2 && path[:2] == "~/" {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, path[2:])
		}
	}
	if filepath.IsAbs(path) {
		return filepath.Clean(path)
	}
	return filepath.Join(p.Dir, path)
}
