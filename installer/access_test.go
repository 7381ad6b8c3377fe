package installer

import (
	"os"
	"strings"
	"testing"

	"castellan/installer/agent"
)

// TestAgentBinaryChoice: an --agent-binary for the node's architecture wins;
// then the castellan-agent this castellan embeds; then castellan itself;
// otherwise a clear error.
func TestAgentBinaryChoice(t *testing.T) {
	castellan, slim := buildCastellan(t), buildAgent(t)
	slimData, err := os.ReadFile(slim)
	if err != nil {
		t.Fatal(err)
	}
	embedded := func(arch string) ([]byte, bool) { return slimData, arch == "amd64" }
	none := func(string) ([]byte, bool) { return nil, false }
	tests := []struct {
		name     string
		b        *binaries
		arch     string
		wantPath string
		wantErr  string
	}{
		{"explicit first", &binaries{explicit: []string{castellan}, embedded: embedded, self: castellan}, "amd64", castellan, ""},
		{"embedded before self", &binaries{embedded: embedded, self: castellan}, "amd64", "(embedded castellan-agent-linux-amd64)", ""},
		{"self last", &binaries{embedded: none, self: castellan}, "amd64", castellan, ""},
		{"nothing for arm64", &binaries{embedded: embedded, self: castellan}, "arm64", "", "no castellan agent for linux/arm64 nodes: build one (GOOS=linux GOARCH=arm64 CGO_ENABLED=0 go build ./cmd/castellan-agent) and pass it with --agent-binary"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.b.byArch = map[string]agent.Binary{}
			bin, err := tt.b.forArch(tt.arch)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err != nil || bin.Path != tt.wantPath || len(bin.SHA256) != 64 || bin.Size == 0 {
				t.Fatalf("got %+v, %v", bin, err)
			}
		})
	}
}
