package report

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"castellan/installer/engine"
	"castellan/installer/state"
)

// WritePlan renders plans per phase and node.
func WritePlan(w io.Writer, plans []engine.Plan) {
	changes := 0
	for _, p := range plans {
		changes += len(p.Changes)
		if p.Empty() {
			fmt.Fprintf(w, "%s: nothing to do\n", p.Phase)
		} else {
			fmt.Fprintf(w, "%s:\n", p.Phase)
			for _, c := range p.Changes {
				node := c.Node
				if node == "" {
					node = "cluster"
				}
				fmt.Fprintf(w, "  %s: %s\n", node, c.Summary)
				if c.Detail != "" {
					fmt.Fprintf(w, "    %s\n", strings.ReplaceAll(strings.TrimRight(c.Detail, "\n"), "\n", "\n    "))
				}
			}
		}
		for _, n := range p.Notes {
			fmt.Fprintf(w, "  note: %s\n", n)
		}
	}
	if changes == 0 {
		fmt.Fprintln(w, "No changes: the nodes match the profile.")
	} else {
		fmt.Fprintf(w, "%d change(s) planned.\n", changes)
	}
}

// WriteSummary renders what a run did: per phase, per node.
func WriteSummary(w io.Writer, rec *state.Record, stateDir string, commit string) {
	verb := rec.Command
	if rec.Command == "rollback" {
		verb = fmt.Sprintf("rollback to run %d", rec.RollbackOf)
	}
	fmt.Fprintf(w, "\nSummary of run %d (%s): %s in %s\n", rec.Number, verb, strings.ToUpper(string(rec.Outcome)), Duration(rec.Duration))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	header := []string{"PHASE", "RESULT"}
	header = append(header, rec.Nodes...)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, p := range rec.Phases {
		row := []string{p.Name, string(p.Outcome)}
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
			fmt.Fprintf(w, "  %s %s: %s\n", p.Name, node, c.Summary)
		}
	}
	for _, k := range rec.AcceptedHostKeys {
		fmt.Fprintf(w, "  accepted new host key: %s\n", k)
	}
	for _, warn := range rec.Warnings {
		fmt.Fprintf(w, "  WARNING: %s\n", warn)
	}
	if rec.Error != "" {
		fmt.Fprintf(w, "Error: %s\n", indent(rec.Error))
	}
	fmt.Fprintf(w, "State repo: %s (commit %s)\n", stateDir, commit)
}

// WriteHistory renders the runs, newest first.
func WriteHistory(w io.Writer, entries []state.Entry) {
	if len(entries) == 0 {
		fmt.Fprintln(w, "No runs yet.")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tWHEN (UTC)\tCOMMAND\tRESULT\tCHANGED\tNODES\tDURATION\tCOMMIT\tBY")
	for _, e := range entries {
		r := e.Record
		cmd := r.Command
		if cmd == "rollback" {
			cmd = fmt.Sprintf("rollback->%d", r.RollbackOf)
		}
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
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.Number, r.Started.UTC().Format("2006-01-02 15:04:05"), cmd, r.Outcome,
			ch, len(r.Nodes), Duration(r.Duration), e.Hash.String()[:12], r.Who)
	}
	tw.Flush()
}
