package profile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"

	"go.yaml.in/yaml/v3"
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

	pos map[string]Pos
	// workloadFiles are the workloads of spec.netpol.workloadFiles, read by Validate.
	workloadFiles []SourcedWorkload
}

// maxProfileSize bounds what Parse reads; a real profile is a few kilobytes.
const maxProfileSize = 4 << 20

// Load reads, decodes, defaults and validates the profile at path.
// Any problem comes back as Errors, each naming file:line:column and field.
func Load(path string, opts ValidateOptions) (*Profile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading profile: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxProfileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading profile %s: %w", path, err)
	}
	p, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("resolving profile directory: %w", err)
	}
	p.Dir = abs
	if err := p.Validate(opts); err != nil {
		return nil, err
	}
	return p, nil
}

// Parse decodes a profile strictly and applies defaults; it checks types and
// field names but not semantics (see Validate). name is used in errors.
func Parse(name string, data []byte) (*Profile, error) {
	if len(data) > maxProfileSize {
		return nil, Errors{{File: name, Msg: fmt.Sprintf("profile is larger than %d bytes; is this the right file?", maxProfileSize)}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, Errors{{File: name, Pos: Pos{1, 1}, Msg: "profile is empty; start from `castellan profile init`"}}
		}
		return nil, Errors{syntaxError(name, err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, Errors{{File: name, Pos: nodePos(&extra), Msg: "profile holds more than one YAML document; keep one cluster per file"}}
	} else if !errors.Is(err, io.EOF) {
		return nil, Errors{syntaxError(name, err)}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil, Errors{{File: name, Pos: Pos{1, 1}, Msg: "profile is empty; start from `castellan profile init`"}}
	}
	d := newDecoder(name)
	p := &Profile{File: name, Raw: data}
	d.decode(root, reflect.ValueOf(&p.Cluster).Elem(), "")
	if len(d.errs) > 0 {
		return nil, d.errs.sorted()
	}
	p.pos = d.pos
	p.pos[""] = nodePos(root)
	p.applyDefaults()
	return p, nil
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns a yaml.v3 syntax error into a FieldError with its line.
func syntaxError(name string, err error) *FieldError {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &FieldError{File: name, Pos: Pos{Line: line}, Msg: "YAML syntax: " + m[2]}
	}
	return &FieldError{File: name, Msg: "YAML syntax: " + msg}
}

// posOf returns where path (or its nearest written ancestor) is in the file.
func (p *Profile) posOf(path string) Pos {
	for {
		if pos, ok := p.pos[path]; ok {
			return pos
		}
		if path == "" {
			return Pos{}
		}
		path = parentPath(path)
	}
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
