package identity

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/nodeid"
)

// bootData is what Apply needs of a boot state change: the baseline to
// store (Run and Pinned are set when it is stored) and what to record.
type bootData struct {
	Baseline Baseline         `json:"baseline"`
	State    nodeid.BootState `json:"state"`
	Events   []string         `json:"events,omitempty"`
	Changed  []PCRChange      `json:"changed,omitempty"`
}

func pcrList(pcrs []int) string {
	parts := make([]string, len(pcrs))
	for i, p := range pcrs {
		parts[i] = strconv.Itoa(p)
	}
	return strings.Join(parts, ", ")
}

// attested is a verified quote's outcome, with what the event log says.
type attested struct {
	vals    []PCRValue
	digests []PCRDigest
	digest  string
	// events are the attested PCRs' events the log replays; unexplained
	// the PCRs it does not; logProblem why there is no log to replay.
	events      []BootEvent
	unexplained []int
	logProblem  string
	logRead     bool
}

func newAttested(vals []PCRValue) *attested {
	d := pcrDigests(vals)
	return &attested{vals: vals, digests: d, digest: BootDigest(d)}
}

// readLog asks the node for its event log (one more exec: only when a
// baseline is pinned or a change explained) and replays it.
func (a *attested) readLog(ctx context.Context, c engine.Caller, node string) {
	if a.logRead {
		return
	}
	a.logRead = true
	l, err := engine.Call(ctx, c, node, OpEventLog, EventLogRequest{})
	switch {
	case err != nil:
		a.logProblem = "reading it: " + err.Error()
	case l.Missing != "":
		a.logProblem = l.Missing
	default:
		var rerr error
		a.events, a.unexplained, rerr = ReplayEventLog(l.Log, a.vals)
		if rerr != nil {
			a.logProblem = rerr.Error()
		}
	}
}

// baseline is the baseline these values make, replacing (and keeping the
// other PCRs of) prev.
func (a *attested) baseline(node, akName, how string, prev *Baseline) Baseline {
	b := Baseline{Node: node, AKName: akName, Bank: "sha256", PCRs: mergeBaseline(prev, a.digests), How: how}
	state := "replayed"
	if a.logProblem != "" {
		state = "none: " + a.logProblem
	} else if len(a.unexplained) > 0 {
		state = eventLogState("", a.unexplained, nil)
	}
	b.EventLog = state
	attestedPCR := map[int]bool{}
	for _, v := range a.vals {
		attestedPCR[v.Index] = true
	}
	if prev != nil {
		for _, e := range prev.Events {
			if !attestedPCR[e.PCR] {
				b.Events = append(b.Events, e)
			}
		}
	}
	b.Events = append(b.Events, a.events...)
	slices.SortStableFunc(b.Events, func(x, y BootEvent) int { return x.PCR - y.PCR })
	return b
}

// quoteError turns a failed OpQuote call into the node's failure to prove
// its boot state (drift), unless the node could not be reached at all.
func quoteError(node string, err error) error {
	var ae *agent.Error
	if errors.As(err, &ae) {
		return &AttestationError{Node: node, Err: err}
	}
	return err
}

// planBootState checks the observed quote of a node that keeps its
// enrolled AK against its baseline: nothing to do when they match (the
// BootState "matched" is published), a pin-boot-state change when there is
// no baseline for some attested PCR, an accept-boot-state change when the
// values changed and accept is set, and a *BootStateChangedError when they
// changed and it is not. A quote that does not verify is an
// *AttestationError.
func (ph Phase) planBootState(ctx context.Context, v *engine.View, node string, rec *Record, accept bool) ([]engine.Change, error) {
	req := quoteRequest(v, node, quotePurpose)
	q, err := engine.Call(ctx, v, node, OpQuote, req)
	if err != nil {
		return nil, quoteError(node, err)
	}
	vals, err := VerifyQuote(QuoteCheck{Node: node, AKName: rec.AKName, Nonce: req.Nonce, PCRs: req.PCRs, KeyFingerprint: rec.KeyFingerprint}, &q)
	if err != nil {
		return nil, err
	}
	a := newAttested(vals)
	base, err := readBaseline(v, node)
	if err != nil {
		return nil, err
	}
	state := nodeid.BootState{PCRs: req.PCRs, Digest: a.digest, AKName: rec.AKName}
	target := "boot-state " + a.digest
	if base == nil {
		a.readLog(ctx, v, node)
		state.Result, state.How = "pinned", "first-attestation"
		d := bootData{Baseline: a.baseline(node, rec.AKName, state.How, nil), State: state}
		return []engine.Change{change(node, ActionPinBootState, target,
			fmt.Sprintf("pin the node's boot state (PCRs %s, %s): it was enrolled before castellan attested boot state, so this first attested value, quoted by its enrolled AK over this run's nonce, becomes its baseline; from now on a change is refused", pcrList(req.PCRs), a.digest), d)}, nil
	}
	changed, missing := compareBaseline(base, a.digests)
	switch {
	case len(changed) > 0:
		a.readLog(ctx, v, node)
		events := explainChanges(base, changed, a.events, a.unexplained, a.logProblem)
		if !accept {
			return nil, &BootStateChangedError{Node: node, Changed: changed, Events: events, Baseline: base}
		}
		state.Result, state.How, state.PreviousDigest = "accepted", "accepted", BootDigest(base.PCRs)
		var words []string
		for _, c := range changed {
			state.Changed = append(state.Changed, c.Index)
			words = append(words, fmt.Sprintf("PCR %d (%s)", c.Index, PCRMeaning(c.Index)))
		}
		d := bootData{Baseline: a.baseline(node, rec.AKName, state.How, base), State: state, Events: events, Changed: changed}
		c := change(node, ActionAcceptBootState, target,
			fmt.Sprintf("ACCEPT the node's changed boot state (asked with --accept-boot-state): %s differ from the baseline pinned by run %s; the new values become its baseline", strings.Join(words, ", "), base.Run), d)
		c.Detail = strings.Join(events, "\n")
		return []engine.Change{c}, nil
	case len(missing) > 0:
		a.readLog(ctx, v, node)
		state.Result, state.How = "pinned", "added-pcrs"
		d := bootData{Baseline: a.baseline(node, rec.AKName, state.How, base), State: state}
		return []engine.Change{change(node, ActionPinBootState, target,
			fmt.Sprintf("pin PCRs %s of the node's boot state: spec.identity.attestPCRs names them and the baseline does not hold them yet (the others match it)", pcrList(missing)), d)}, nil
	}
	if accept {
		v.Info(node, "--accept-boot-state %s: its boot state matches the baseline, nothing to accept", node)
	}
	state.Result = "matched"
	return nil, engine.Publish(v, nodeid.BootStateKey, node, state)
}

// storeBootState carries out a pin-boot-state or accept-boot-state change.
func (a *applier) storeBootState(node string, c engine.Change) error {
	d, err := engine.ChangeData[bootData](c)
	if err != nil {
		return err
	}
	if err := a.putBaseline(node, d.Baseline); err != nil {
		return err
	}
	if err := engine.Publish(a.r.View, nodeid.BootStateKey, node, d.State); err != nil {
		return err
	}
	if c.Action == string(ActionAcceptBootState) {
		a.r.Info(node, "accepted the changed boot state %s (was %s; PCRs %v changed) as the node's baseline, as asked with --accept-boot-state", d.State.Digest, d.State.PreviousDigest, d.State.Changed)
	} else {
		a.r.Info(node, "pinned the node's boot state %s (PCRs %s, %s)", d.State.Digest, pcrList(d.State.PCRs), d.State.How)
	}
	return nil
}

// putBaseline stores node's baseline, stamped with this run.
func (a *applier) putBaseline(node string, b Baseline) error {
	b.Run, b.Pinned = a.r.ID(), a.now.UTC()
	data, err := encodeBaseline(&b)
	if err != nil {
		return err
	}
	return a.r.PutData(baselineName(node), data)
}

// attestEnrolment proves and pins the boot state once an enrolment session
// has proven the node's (new) AK: the AK quotes the attested PCRs over a
// fresh nonce and certifies the enrolled key; a baseline the state repo
// pins already must match (unless the node is re-enrolled, or accept is
// set). It returns the baseline to store and what to record; nothing is
// stored or issued when it fails.
func (a *applier) attestEnrolment(ctx context.Context, node string, e *Enrolment, action Action, accept bool) (*Baseline, nodeid.BootState, error) {
	r := a.r
	req := quoteRequest(r.View, node, enrolQuotePurpose)
	q, err := engine.Call(ctx, r, node, OpQuote, req)
	if err != nil {
		return nil, nodeid.BootState{}, quoteError(node, err)
	}
	vals, err := VerifyQuote(QuoteCheck{Node: node, AKName: e.AKName, Nonce: req.Nonce, PCRs: req.PCRs, KeyFingerprint: e.KeyFingerprint}, &q)
	if err != nil {
		return nil, nodeid.BootState{}, err
	}
	at := newAttested(vals)
	at.readLog(ctx, r, node)
	base, err := readBaseline(r.View, node)
	if err != nil {
		return nil, nodeid.BootState{}, err
	}
	state := nodeid.BootState{Result: "pinned", How: "enrolment", PCRs: req.PCRs, Digest: at.digest, AKName: e.AKName}
	if action == ActionReEnrol {
		state.How = "re-enrolment"
	}
	var prev *Baseline
	if base != nil && action != ActionReEnrol {
		changed, _ := compareBaseline(base, at.digests)
		if len(changed) > 0 && !accept {
			return nil, state, &BootStateChangedError{Node: node, Changed: changed, Events: explainChanges(base, changed, at.events, at.unexplained, at.logProblem), Baseline: base}
		}
		if len(changed) > 0 {
			state.Result, state.How, state.PreviousDigest = "accepted", "accepted", BootDigest(base.PCRs)
			for _, c := range changed {
				state.Changed = append(state.Changed, c.Index)
			}
		}
		prev = base
	}
	b := at.baseline(node, e.AKName, state.How, prev)
	return &b, state, nil
}
