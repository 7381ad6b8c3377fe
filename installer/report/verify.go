package report

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"castellan/installer/engine"
)

// Verification is what castellan verify reports: the engine's result with
// what it was checked against.
type Verification struct {
	Cluster string `json:"cluster"`
	// Started is when the verification began (UTC).
	Started time.Time `json:"started"`
	// StateCommit is the state repo commit the nodes were checked against
	// ("" when there is no state repo yet).
	StateCommit string `json:"stateCommit,omitempty"`
	engine.VerifyResult
}

// VerifyOptions change what WriteVerify prints.
type VerifyOptions struct {
	// Problems prints only the checks that are not ok (and the summary).
	Problems bool
}

// statusWord is how the text report writes a check's status: ok in lower
// case, what needs attention in capitals.
func statusWord(s engine.CheckStatus) string {
	switch s {
	case engine.CheckOK:
		return "ok"
	case engine.CheckWarning:
		return "warn"
	}
	return strings.ToUpper(string(s))
}

// WriteVerify renders a verification as text: a heading with the overall
// status, a table of the checks (node, named on its first line; status; phase;
// check and target; what was found), cluster-wide first, then node by node,
// then the counts and what to do.
// Everything from profiles and nodes is escaped (Clean).
func WriteVerify(w io.Writer, v *Verification, o VerifyOptions) {
	commit := ""
	if v.StateCommit != "" {
		commit = ", state repo at " + v.StateCommit
	}
	fmt.Fprintf(w, "castellan verify: cluster %s, %d node(s), %d phase(s)%s: %s\n", Clean(v.Cluster), len(v.Nodes), len(v.Phases), Clean(commit), strings.ToUpper(string(v.Status)))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATUS\tPHASE\tCHECK\tFOUND")
	group := "\x00"
	for _, c := range v.Checks {
		if o.Problems && (c.Status == engine.CheckOK || c.Status == engine.CheckWarning) {
			continue
		}
		name := ""
		if c.Node != group {
			group = c.Node
			name = c.Node
			if name == "" {
				name = "cluster"
			}
		}
		what := c.Name
		if t := []rune(c.Target); len(t) > 28 {
			what += " " + string(t[:27]) + "…"
		} else if c.Target != "" {
			what += " " + c.Target
		}
		phase := c.Phase
		if phase == "" {
			phase = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", Clean(name), statusWord(c.Status), Clean(phase), Clean(what), Clean(strings.ReplaceAll(strings.TrimSpace(c.Message), "\n", " / ")))
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d check(s): %d ok, %d warning(s), %d drift, %d failed (%s).\n", len(v.Checks),
		v.Count(engine.CheckOK), v.Count(engine.CheckWarning), v.Count(engine.CheckDrift), v.Count(engine.CheckFailed), Duration(v.Duration))
	names := func(st engine.CheckStatus) string {
		var out []string
		for _, n := range v.NodesWith(st) {
			if n == "" {
				n = "cluster"
			}
			out = append(out, Clean(n))
		}
		return strings.Join(out, ", ")
	}
	switch v.Status {
	case engine.CheckOK:
		fmt.Fprintln(w, "Everything matches the profile and the state repo.")
	case engine.CheckDrift:
		fmt.Fprintf(w, "Drift on %s: castellan plan shows what apply would change; a changed boot state or TPM is accepted only explicitly (see the messages).\n", names(engine.CheckDrift))
	default:
		fmt.Fprintf(w, "Could not check everything (%s)", names(engine.CheckFailed))
		if d := names(engine.CheckDrift); d != "" {
			fmt.Fprintf(w, "; drift on %s", d)
		}
		fmt.Fprintln(w, ".")
	}
}

// WriteVerifyJSON renders a verification as one JSON document (one line):
// cluster, started, stateCommit, status, nodes, phases, checks (each with
// phase, node, check, target, status, message), duration (nanoseconds) and
// counts by status.
func WriteVerifyJSON(w io.Writer, v *Verification) error {
	doc := struct {
		*Verification
		Counts map[engine.CheckStatus]int `json:"counts"`
	}{v, map[engine.CheckStatus]int{}}
	for _, st := range []engine.CheckStatus{engine.CheckOK, engine.CheckWarning, engine.CheckDrift, engine.CheckFailed} {
		doc.Counts[st] = v.Count(st)
	}
	if doc.Checks == nil {
		doc.Checks = []engine.Check{}
	}
	data, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", EscapeJSON(data))
	return err
}
