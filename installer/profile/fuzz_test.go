package profile

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
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
