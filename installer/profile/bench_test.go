package profile

import (
	"context"
	"strconv"
	"strings"
	"testing"
)

// largeProfile is a valid profile of about size bytes: nodes with labels.
func largeProfile(size int) string {
	var b strings.Builder
	b.WriteString(strings.Split(validProfile, "  nodes:\n")[0] + "  nodes:\n")
	for i := 0; b.Len() < size-200; i++ {
		role := "agent"
		if i == 0 {
			role = "server"
		}
		b.WriteString("    - name: n" + strconv.Itoa(i) + "\n      address: 10.1." + strconv.Itoa(i/250) + "." + strconv.Itoa(1+i%250) + "\n      role: " + role + "\n      labels: {a: b, c: d, e: f}\n")
	}
	return b.String()
}

// BenchmarkLoadBytes prints what loading costs, from a real profile to the
// hostile ones the loader bounds (issue 16): time, bytes and allocations per
// load. Run: go test -run '^$' -bench LoadBytes -benchmem ./installer/profile
func BenchmarkLoadBytes(b *testing.B) {
	for _, bc := range []struct{ name, body string }{
		{"valid", validProfile},
		{"alias-bomb-2KB", aliasBomb(100, 100)},
		{"alias-bomb-30KB", aliasBomb(1000, 1000)},
		{"flow-list-512KB", "apiVersion: [" + strings.Repeat("a,", (MaxProfileSize-20)/2) + "]\n"},
		{"nodes-512KB", largeProfile(MaxProfileSize)},
		{"syntax-error-64KB", largeProfile(maxBisect-100) + "   bad: [\n"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			data := []byte(bc.body)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				LoadBytes(context.Background(), "bench.yaml", "/nonexistent", data, ValidateOptions{SkipFileChecks: true})
			}
		})
	}
}
