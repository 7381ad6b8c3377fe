package report

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"castellan/installer/engine"
	"castellan/installer/state"
)

// WritePlan renders plans per phase and node, the phases that could not
// plan (failed, by name: their errors were reported as events) and the
// nodes that failed outside any phase (engine.NodesFailedError), which
// were not planned.
func WritePlan(w io.Writer, plans []engine.Plan, failed []string, failedNodes []string) {
	changes := 0
	for _, p := range plans {
		changes += len(p.Changes)
		if p.Empty() {
			fmt.Fprintf(w, "%s: nothing to do\n", Clean(p.Phase))
		} else {
			fmt.Fprintf(w, "%s:\n", Clean(p.Phase))
			for _, c := range p.Changes {
				node := c.Node
				if node == "" {
					node = "cluster"
				}
				fmt.Fprintf(w, "  %s: %s\n", Clean(node), indent(Clean(c.Summary)))
				if c.Detail != "" {
					fmt.Fprintf(w, "    %s\n", strings.ReplaceAll(Clean(strings.TrimRight(c.Detail, "\n")), "\n", "\n    "))
				}
			}
		}
		for _, n := range p.Notes {
			fmt.Fprintf(w, "  note: %s\n", indent(Clean(n)))
		}
	}
	for _, f := range failed {
		fmt.Fprintf(w, "%s: could not plan (see the errors above)\n", Clean(f))
	}
	cleaned := make([]string, len(failedNodes))
	for i, n := range failedNodes {
		cleaned[i] = Clean(n)
	}
	switch {
	case len(failed) > 0:
		fmt.Fprintf(w, "%d change(s) planned; %d phase(s) could not plan.\n", changes, len(failed))
	case len(failedNodes) > 0:
		fmt.Fprintf(w, "%d change(s) planned; %d node(s) failed and were not planned: %s (see the errors above).\n", changes, len(failedNodes), strings.Join(cleaned, ", "))
	case changes == 0:
		fmt.Fprintln(w, "No changes: the nodes match the profile.")
	default:
		fmt.Fprintf(w, "%d change(s) planned.\n", changes)
	}
}

// WriteSummary renders what a run did: per phase, per node. Errors were
// printed in full as the run went; the summary names the failed nodes.
func WriteSummary(w io.Writer, rec *state.Record, stateDir string, commit string) {
	verb := rec.Command
	if rec.Command == "rollback" {
		verb = fmt.Sprintf("rollback to run %d", rec.RollbackOf)
	}
	fmt.Fprintf(w, "\nSummary of run %d (%s): %s in %s\n", rec.Number, verb, strings.ToUpper(string(rec.Outcome)), Duration(rec.Duration))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	header := []string{"PHASE", "RESULT"}
	for _, n := range rec.Nodes {
		header = append(header, Clean(n))
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, p := range rec.Phases {
		row := []string{Clean(p.Name), string(p.Outcome)}
		for _, n := range rec.Nodes {
			o := p.Nodes[n]
			if o == "" {
				o = "-"
				if p.Outcome == engine.OutcomeUnchanged {
					o = "unchanged"
				}
			}
			row = append(row, string(o))
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
	for _, p := range rec.Phases {
		for _, c := range p.Changes {
			node := c.Node
			if node == "" {
				node = "cluster"
			}
			if o := p.Nodes[c.Node]; c.Node != "" && o != engine.OutcomeOK {
				continue // not done on that node
			}
			fmt.Fprintf(w, "  %s %s: %s\n", Clean(p.Name), Clean(node), indent(Clean(c.Summary)))
		}
	}
	for _, k := range rec.TrustedHostKeys {
		fmt.Fprintf(w, "  trusted new host key: %s\n", Clean(k))
	}
	for _, warn := range rec.Warnings {
		fmt.Fprintf(w, "  WARNING: %s\n", Clean(warn))
	}
	if len(rec.NodeErrors) > 0 {
		fmt.Fprintf(w, "Failed nodes: %s (errors above; in full in the run record)\n", Clean(strings.Join(sortedKeys(rec.NodeErrors), ", ")))
	} else if rec.Error != "" {
		fmt.Fprintf(w, "Error: %s\n", indent(Clean(rec.Error)))
	}
	fmt.Fprintf(w, "State repo: %s (commit %s)\n", Clean(stateDir), commit)
}

// WriteHistory renders the runs, newest first, below a run that started and
// is not committed (running, or died) when there is one.
func WriteHistory(w io.Writer, entries []state.Entry, open *state.Record) {
	if len(entries) == 0 && open == nil {
		fmt.Fprintln(w, "No runs yet.")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tWHEN (UTC)\tCOMMAND\tRESULT\tCHANGED\tNODES\tDURATION\tCOMMIT\tBY")
	if open != nil {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", open.Number, open.Started.UTC().Format("2006-01-02 15:04:05"), command(open), open.Outcome,
			"?", len(open.Nodes), "-", "(not yet)", Clean(open.Who))
	}
	for _, e := range entries {
		r := e.Record
		var changed []string
		for _, p := range r.Phases {
			if p.Outcome == engine.OutcomeOK || p.Outcome == engine.OutcomeFailed {
				changed = append(changed, p.Name)
			}
		}
		ch := strings.Join(changed, ",")
		if ch == "" {
			ch = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.Number, r.Started.UTC().Format("2006-01-02 15:04:05"), command(r), r.Outcome,
			Clean(ch), len(r.Nodes), Duration(r.Duration), e.Hash.String()[:12], Clean(r.Who))
	}
	tw.Flush()
	if open != nil && open.Outcome == engine.OutcomeDied {
		fmt.Fprintf(w, "Run %d died before it could commit; the next apply commits what it left.\n", open.Number)
	}
}

func command(r *state.Record) string {
	if r.Command == "rollback" {
		return fmt.Sprintf("rollback->%d", r.RollbackOf)
	}
	return Clean(r.Command)
}
