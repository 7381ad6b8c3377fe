package installer

import (
	"castellan/installer/agentops"
	"os/exec"
	"strings"
	"testing"
)

// TestPhasesDoNotImportEachOther enforces the arrows of ARCHITECTURE.md: a
// phase never imports another phase; the engine and the other packages
// under installer/ import no phase (only the application layer, this
// package, and installer/agentops, the agent's list, name them); nothing
// below cmd/ imports cmd/.
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
			case strings.HasPrefix(pkg, "castellan/installer/") && pkg != "castellan/installer/agentops" && strings.HasPrefix(imp, "castellan/phases/"):
				t.Errorf("%s imports the phase %s: only the application layer (castellan/installer, and installer/agentops for the agent) lists phases", pkg, imp)
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

// TestAgentOpsListsEveryNodeSide: the agent binary serves exactly the node
// operations of the phases in the run's list.
func TestAgentOpsListsEveryNodeSide(t *testing.T) {
	want := map[string]bool{}
	for _, p := range Phases() {
		for _, op := range p.Ops() {
			want[op.OpName()] = true
		}
	}
	got := map[string]bool{}
	for _, name := range agentops.Registry().Ops() {
		got[name] = true
	}
	for name := range want {
		if !got[name] {
			t.Errorf("%s is a phase's node operation but installer/agentops does not list its phase: the agent would not serve it", name)
		}
	}
	for name := range got {
		if !want[name] && !strings.HasPrefix(name, "agent.") {
			t.Errorf("the agent serves %s, which no phase in installer.Phases declares", name)
		}
	}
}
