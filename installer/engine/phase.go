package engine

import (
	"context"
	"encoding/json"
	"fmt"

	"castellan/installer/agent"
)

// Phase is one step of an install, e.g. preflight or mesh. A phase package
// exports one value implementing it, and the installer lists them in order.
type Phase interface {
	// Name is short and stable: it appears in --only, events and the state repo.
	Name() string
	// Plan observes the nodes and returns what Apply would change. It gets a
	// View: it can read nodes (read-only operations only), the profile,
	// earlier phases' outputs, secrets and its own stored data, and publish
	// its own outputs; it cannot change a node, write a secret, render a file
	// or store data. An empty plan means there is nothing to do.
	Plan(ctx context.Context, v *View) (Plan, error)
	// Apply makes exactly the planned changes and verifies them. Every step
	// must be safe to repeat after a crash at any point.
	Apply(ctx context.Context, r *Run, p Plan) error
	// Ops lists the phase's node operations, which the agent serves.
	Ops() []agent.Handler
}

// Observer is implemented by a phase whose Plan reads nodes. Observe lists,
// for one node, the read-only operations Plan will call (with the same
// inputs), so the engine can send the observations of every phase for a node
// in one agent exec: the cost of a no-op rerun is then one connection and one
// exec per node, whatever the number of phases. Plan's calls with the same
// operation and input are answered from that exec. Observe may use the
// profile and stored data, not outputs of phases planned in the same run.
type Observer interface {
	Observe(v *View, node string) ([]agent.Request, error)
}

// Change is one thing a phase would change on one node (or the cluster when
// Node is empty).
type Change struct {
	Node string `json:"node,omitempty"`
	// Action is a stable, machine-readable verb of the phase, e.g.
	// "install-agent" or "trust-host-key". Node, Action and Target identify a
	// change: a confirmed plan still holds when they are the same, whatever
	// the wording.
	Action string `json:"action"`
	// Target is what the action applies to, e.g. a device or a fingerprint.
	Target string `json:"target,omitempty"`
	// Summary says it in words for people.
	Summary string `json:"summary"`
	// Detail is shown under the summary (e.g. a diff).
	Detail string `json:"detail,omitempty"`
	// Data is private to the phase: what Apply needs to carry out the change,
	// as JSON (see NewChange and ChangeData).
	Data json.RawMessage `json:"data,omitempty"`
}

// NewChange builds a change whose private data is data encoded as JSON. It
// panics if data cannot be encoded (a programming error: data is the
// phase's own plain type).
func NewChange(node, action, target, summary string, data any) Change {
	c := Change{Node: node, Action: action, Target: target, Summary: summary}
	if data != nil {
		raw, err := json.Marshal(data)
		if err != nil {
			panic(fmt.Sprintf("engine: change data of %s/%s: %v", action, target, err))
		}
		c.Data = raw
	}
	return c
}

// ChangeData decodes a change's private data.
func ChangeData[T any](c Change) (T, error) {
	var v T
	if len(c.Data) == 0 {
		return v, fmt.Errorf("change %s %s on %s carries no data", c.Action, c.Target, c.Node)
	}
	if err := json.Unmarshal(c.Data, &v); err != nil {
		return v, fmt.Errorf("change %s %s on %s: decoding its data: %w", c.Action, c.Target, c.Node, err)
	}
	return v, nil
}

// same reports whether two changes are the same action on the same thing.
func (c Change) same(o Change) bool {
	return c.Node == o.Node && c.Action == o.Action && c.Target == o.Target
}

// Plan is what a phase would change.
type Plan struct {
	Phase   string   `json:"phase"`
	Changes []Change `json:"changes,omitempty"`
	// Notes are observations worth showing although they change nothing.
	Notes []string `json:"notes,omitempty"`
}

// Empty reports whether the plan changes nothing.
func (p Plan) Empty() bool { return len(p.Changes) == 0 }

// ForNode returns the changes planned for one node.
func (p Plan) ForNode(node string) []Change {
	var out []Change
	for _, c := range p.Changes {
		if c.Node == node {
			out = append(out, c)
		}
	}
	return out
}

// Nodes returns the nodes with planned changes, in plan order.
func (p Plan) Nodes() []string {
	var out []string
	seen := map[string]bool{}
	for _, c := range p.Changes {
		if c.Node != "" && !seen[c.Node] {
			seen[c.Node] = true
			out = append(out, c.Node)
		}
	}
	return out
}

// Same reports whether two plans make the same changes (by node, action and
// target) in the same order.
func (p Plan) Same(o Plan) bool {
	if len(p.Changes) != len(o.Changes) {
		return false
	}
	for i := range p.Changes {
		if !p.Changes[i].same(o.Changes[i]) {
			return false
		}
	}
	return true
}

// Summary says in a few words what the plan does.
func (p Plan) Summary() string {
	if p.Empty() {
		return "nothing to do"
	}
	if n := len(p.Nodes()); n > 0 {
		return fmt.Sprintf("%d change(s) on %d node(s)", len(p.Changes), n)
	}
	return fmt.Sprintf("%d change(s)", len(p.Changes))
}
