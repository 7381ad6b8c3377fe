package profile

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// Per-input bounds FuzzParse checks. Loading allocates about 130 bytes and
// one object per input byte at worst (a flow list of one-letter values; see
// BenchmarkLoadBytes), and locating a syntax error re-parses prefixes of at
// most maxBisect bytes; aliases add at most maxAliasValues values. The
// bounds are several times that, so they fail only when a bound is lost.
const (
	fuzzAllocBase    = 32 << 20
	fuzzAllocPerByte = 1 << 10
	fuzzMallocBase   = 200_000
	fuzzMallocByte   = 32
)

// FuzzParse feeds arbitrary bytes to the loader, which must keep these
// properties for every input:
//   - it never panics;
//   - every error is an Errors of FieldErrors, each in fuzz.yaml with a
//     line inside the file and a message;
//   - no error text holds a control or format character;
//   - memory and work are bounded: the bytes and the objects allocated per
//     input stay under a bound linear in the input's size (runtime.MemStats,
//     a count that does not depend on the machine's speed).
func FuzzParse(f *testing.F) {
	f.Add([]byte(validProfile))
	f.Add([]byte(validProfile + "  netpol:\n    workloads:\n      - name: a\n        namespace: b\n        ingress:\n          x: {ipBlock: 10.0.0.0/8, ports: {80: TCP}}\n"))
	f.Add([]byte("a: &x [1, *x]\n"))
	f.Add([]byte("spec: {nodes: [{name: a, <<: {role: server}}]}\n"))
	f.Add([]byte(aliasBomb(12, 12)))
	f.Add([]byte("apiVersion: " + strings.Repeat("[", 100) + "\n"))
	f.Add([]byte(edit("    knownHosts: known_hosts\n", "\tknownHosts: known_hosts\n")))
	f.Add([]byte(edit("192.0.2.2", `"fe80::1%x\nok"`, "name: a1", "name: \"a\\u202e\"")))
	f.Add([]byte(edit("    user: admin\n", "    user: !!binary YWRtaW4=\n    port: 0x16\n    sudo: y\n")))
	f.Add([]byte(withDisks("        - {device: /dev/vdb1, mountPoint: /etc/ssh}\n        - device: /dev//vdb\n")))
	f.Add([]byte("a: \xff\x00\n"))
	examples, _ := filepath.Glob("../../profiles/*.yaml")
	for _, e := range examples {
		if data, err := os.ReadFile(e); err == nil {
			f.Add(data)
		}
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		// Lines as YAML counts them: \n, \r\n or \r (the loader refuses
		// NEL, LS and PS, which YAML 1.1 also counted).
		lines := 1 + bytes.Count(data, []byte("\n")) + bytes.Count(data, []byte("\r")) - bytes.Count(data, []byte("\r\n"))
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := LoadBytes(context.Background(), "fuzz.yaml", dir, data, ValidateOptions{SkipFileChecks: true})
		runtime.ReadMemStats(&after)

		alloc, mallocs := after.TotalAlloc-before.TotalAlloc, after.Mallocs-before.Mallocs
		if max := uint64(fuzzAllocBase + fuzzAllocPerByte*len(data)); alloc > max {
			t.Errorf("loading %d bytes allocated %d bytes, more than %d", len(data), alloc, max)
		}
		if max := uint64(fuzzMallocBase + fuzzMallocByte*len(data)); mallocs > max {
			t.Errorf("loading %d bytes made %d allocations, more than %d", len(data), mallocs, max)
		}
		if err == nil {
			return
		}
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Fatalf("error is not a non-empty Errors: %T %v", err, err)
		}
		for _, e := range errs {
			if e.File != "fuzz.yaml" || e.Pos.Line < 1 || e.Pos.Line > lines || e.Pos.Column < 0 || e.Msg == "" {
				t.Fatalf("error without a position inside the file (%d lines): %#v", lines, e)
			}
			if r, bad := badRune(e.Error()); bad {
				t.Fatalf("error text holds %s: %q", runeName(r), e.Error())
			}
		}
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
