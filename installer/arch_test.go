package installer

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPhasesDoNotImportEachOther enforces the arrows of ARCHITECTURE.md: a
// phase never imports another phase; the engine and the other packages
// under installer/ import no phase (only the application layer, this
// package, lists them); nothing below cmd/ imports cmd/.
func TestPhasesDoNotImportEachOther(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "castellan/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg, imports := fields[0], fields[1:]
		for _, imp := range imports {
			if !strings.HasPrefix(imp, "castellan/") {
				continue
			}
			checked++
			switch {
			case strings.HasPrefix(pkg, "castellan/phases/") && strings.HasPrefix(imp, "castellan/phases/") && phaseOf(pkg) != phaseOf(imp):
				t.Errorf("phase package %s imports another phase, %s: share a typed output instead", pkg, imp)
			case strings.HasPrefix(pkg, "castellan/installer/") && strings.HasPrefix(imp, "castellan/phases/"):
				t.Errorf("%s imports the phase %s: only the application layer (castellan/installer) lists phases", pkg, imp)
			case !strings.HasPrefix(pkg, "castellan/cmd/") && strings.HasPrefix(imp, "castellan/cmd/"):
				t.Errorf("%s imports %s: nothing imports the CLI", pkg, imp)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no castellan import was checked: go list printed nothing useful")
	}
}

// phaseOf is the phase a package belongs to: castellan/phases/NAME/...
func phaseOf(pkg string) string {
	parts := strings.Split(pkg, "/")
	if len(parts) < 3 {
		return ""
	}
	return parts[2]
}
