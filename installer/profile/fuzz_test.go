package profile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
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
