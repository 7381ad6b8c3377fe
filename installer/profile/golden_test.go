package profile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGolden loads each testdata/golden/*.yaml (beside a valid key and
// known_hosts) and compares every problem it reports with the .golden file
// next to it. After a deliberate change of messages, review the diff of:
// go test ./installer/profile -run Golden -update
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/golden/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden profiles: %v", err)
	}
	t.Setenv("SSH_AUTH_SOCK", "")
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			body, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(problems(t, writeProfile(t, string(body))), "\n") + "\n"
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("problems differ from %s (run with -update after checking them)\n got:\n%s\nwant:\n%s", golden, got, want)
			}
		})
	}
}
