package profile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzParse feeds arbitrary bytes to the loader: it must never panic, and
// every error it reports must point inside the file.
func FuzzParse(f *testing.F) {
	f.Add([]byte(validProfile))
	f.Add([]byte(validProfile + "  netpol:\n    workloads:\n      - name: a\n        namespace: b\n        ingress:\n          x: {ipBlock: 10.0.0.0/8, ports: {80: TCP}}\n"))
	f.Add([]byte("a: &x [1, *x]\n"))
	f.Add([]byte("spec: {nodes: [{name: a, <<: {role: server}}]}\n"))
	examples, _ := filepath.Glob("../../profiles/*.yaml")
	for _, e := range examples {
		if data, err := os.ReadFile(e); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// YAML breaks lines at \n, \r and, in its 1.1 heritage, NEL, LS and PS.
		lines := 1 + bytes.Count(data, []byte("\n")) + bytes.Count(data, []byte("\r"))
		for _, r := range []string{"\u0085", "\u2028", "\u2029"} {
			lines += bytes.Count(data, []byte(r))
		}
		check := func(err error) {
			var errs Errors
			if err == nil {
				return
			}
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not a non-empty Errors: %T %v", err, err)
			}
			for _, e := range errs {
				if e.File != "fuzz.yaml" || e.Pos.Line > lines || e.Msg == "" {
					t.Fatalf("error points outside the file (%d lines): %#v", lines, e)
				}
			}
		}
		p, err := Parse("fuzz.yaml", data)
		check(err)
		if err != nil {
			return
		}
		p.Dir = t.TempDir()
		check(p.Validate(ValidateOptions{SkipFileChecks: true}))
	})
}

// FuzzParseWorkload feeds arbitrary bytes to the workload file parser: it
// must never panic, every error must point inside the file, and what it
// accepts must survive a round trip through YAML unchanged.
func FuzzParseWorkload(f *testing.F) {
	f.Add([]byte("name: web\nnamespace: shop\npodSelector: {app: web}\n" + issueBlock))
	f.Add([]byte("name: web\nnamespace: shop\n---\nname: x\n"))
	f.Add([]byte("name: web\ningress: {a: {ports: {65536: TCP, -1: UDP}}}\n"))
	f.Add([]byte("ingress: {a: &x {ports: {1: TCP}}, b: *x}\n"))
	f.Add([]byte("egress: {a: {podSelector: {}, ports: {}}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		lines := 1 + bytes.Count(data, []byte("\n")) + bytes.Count(data, []byte("\r"))
		for _, r := range []string{"\u0085", "\u2028", "\u2029"} {
			lines += bytes.Count(data, []byte(r))
		}
		w, err := ParseWorkload("fuzz.yaml", data)
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error is not a non-empty Errors: %T %v", err, err)
			}
			for _, e := range errs {
				if e.File != "fuzz.yaml" || e.Pos.Line > lines || e.Msg == "" {
					t.Fatalf("error points outside the file (%d lines): %#v", lines, e)
				}
			}
			return
		}
		out, err := yaml.Marshal(w)
		if err != nil {
			t.Fatalf("marshal %+v: %v", w, err)
		}
		again, err := ParseWorkload("again.yaml", out)
		if err != nil {
			t.Fatalf("reparse of\n%s: %v", out, err)
		}
		if a, b := normalizeWorkload(*w), normalizeWorkload(*again); !reflect.DeepEqual(a, b) {
			t.Fatalf("round trip changed the workload:\n%#v\n%#v\nvia\n%s", a, b, out)
		}
	})
}

// normalizeWorkload makes empty maps nil: omitempty drops them on the way out.
func normalizeWorkload(w Workload) Workload {
	norm := func(m map[string]string) map[string]string {
		if len(m) == 0 {
			return nil
		}
		return m
	}
	ops := func(m map[string]Opening) map[string]Opening {
		if len(m) == 0 {
			return nil
		}
		out := map[string]Opening{}
		for k, o := range m {
			o.NamespaceSelector, o.PodSelector = norm(o.NamespaceSelector), norm(o.PodSelector)
			if len(o.Ports) == 0 {
				o.Ports = nil
			}
			out[k] = o
		}
		return out
	}
	w.PodSelector = norm(w.PodSelector)
	w.Ingress, w.Egress = ops(w.Ingress), ops(w.Egress)
	return w
}
