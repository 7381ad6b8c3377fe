package engine

import (
	"context"
	"fmt"
	"log/slog"
	"path"
	"sort"
	"sync"
	"time"

	"castellan/installer/facts"
	"castellan/installer/profile"
)

// Secrets stores generated secrets; the state repo keeps them age-encrypted.
type Secrets interface {
	// Get returns the secret called name, or ok=false when there is none.
	Get(name string) (value []byte, ok bool, err error)
	// Put stores the secret called name.
	Put(name string, value []byte) error
}

// Nodes gives phases access to the nodes through the castellan agent.
type Nodes interface {
	// Call runs the agent operation op on node with in as JSON input and
	// decodes the JSON result into out (which may be nil).
	Call(ctx context.Context, node, op string, in, out any) error
	// Agent tells whether this castellan's agent is on node (read-only).
	Agent(ctx context.Context, node string) (AgentState, error)
	// InstallAgent ships this castellan's agent to node.
	InstallAgent(ctx context.Context, node string, progress func(done, total int64)) error
}

// AgentState describes the agent a node would run.
type AgentState struct {
	Installed bool
	// Path is where the agent is (or would be) on the node.
	Path string
	// Size is the agent binary's size in bytes.
	Size int64
}

// RunConfig is what a run needs to start.
type RunConfig struct {
	ID      string
	Profile *profile.Profile
	// Nodes are the nodes this run targets (all, or those given with --nodes).
	Nodes   []profile.Node
	Access  Nodes
	Secrets Secrets
}

// Run is the state one run shares between its phases: the profile, the
// targeted nodes, typed facts that earlier phases found, rendered files and
// the event stream. A phase sees a view of the Run bound to its own name.
type Run struct {
	*shared
	phase    string
	outcomes *nodeOutcomes
}

type shared struct {
	RunConfig

	mu        sync.Mutex
	facts     map[string]facts.Node
	rendered  map[string][]byte
	progress  map[string]int64
	sink      Sink
	logger    *slog.Logger
	parallel  int
	interrupt context.Context
	phases    map[string]*nodeOutcomes
}

// NewRun prepares a run.
func NewRun(cfg RunConfig) *Run {
	return &Run{shared: &shared{
		RunConfig: cfg,
		facts:     map[string]facts.Node{},
		rendered:  map[string][]byte{},
		progress:  map[string]int64{},
		phases:    map[string]*nodeOutcomes{},
	}}
}

func (r *Run) init(e *Engine) {
	r.sink = e.Sink
	if r.sink == nil {
		r.sink = SinkFunc(func(Event) {})
	}
	r.logger = e.Logger
	if r.logger == nil {
		r.logger = slog.New(slog.DiscardHandler)
	}
	r.parallel = e.Parallelism
	if r.parallel <= 0 {
		r.parallel = DefaultParallelism
	}
}

func (r *Run) phaseRun(name string) *Run {
	r.mu.Lock()
	defer r.mu.Unlock()
	o := r.phases[name]
	if o == nil {
		o = &nodeOutcomes{}
		r.phases[name] = o
	}
	return &Run{shared: r.shared, phase: name, outcomes: o}
}

func (o *nodeOutcomes) snapshot() map[string]Outcome {
	if o == nil {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]Outcome, len(o.m))
	for k, v := range o.m {
		out[k] = v
	}
	return out
}

func (r *Run) nodeOutcomes() map[string]Outcome { return r.outcomes.snapshot() }

// Phase is the name of the phase this view belongs to.
func (r *Run) Phase() string { return r.phase }

// Logger logs for this phase.
func (r *Run) Logger() *slog.Logger { return r.logger.With("run", r.ID, "phase", r.phase) }

func (r *Run) emit(e Event) {
	if r.sink == nil {
		return // a Run used outside Engine.Apply/PlanAll (unit tests of a phase)
	}
	e.Time = time.Now()
	e.Run = r.ID
	r.sink.Emit(e)
}

// Emit sends an event scoped to this phase.
func (r *Run) Emit(e Event) {
	e.Phase = r.phase
	r.emit(e)
}

// Info reports a message about a node (or the phase when node is empty).
func (r *Run) Info(node, format string, args ...any) {
	r.Emit(Event{Node: node, Status: StatusInfo, Message: fmt.Sprintf(format, args...)})
}

// Warn reports a warning about a node (or the phase when node is empty).
func (r *Run) Warn(node, format string, args ...any) {
	r.Emit(Event{Node: node, Status: StatusWarning, Message: fmt.Sprintf(format, args...)})
}

// Progress reports bytes done of total for a node's step. Reports are
// thinned to whole percents, so a large upload does not flood the stream.
func (r *Run) Progress(node, step string, done, total int64) {
	pct := int64(100)
	if total > 0 {
		pct = done * 100 / total
	}
	key := r.phase + "\x00" + node + "\x00" + step
	r.mu.Lock()
	last, seen := r.progress[key]
	if seen && pct == last && done != total {
		r.mu.Unlock()
		return
	}
	r.progress[key] = pct
	r.mu.Unlock()
	r.Emit(Event{Node: node, Step: step, Status: StatusProgress, Done: done, Total: total})
}

// Checkpoint returns ErrInterrupted when the run was asked to stop. Phases
// call it between the steps of a node's sequence; ForEachNode calls it before
// starting each node.
func (r *Run) Checkpoint() error {
	if r.interrupt != nil && r.interrupt.Err() != nil {
		return ErrInterrupted
	}
	return nil
}

// ForEachNode runs fn for each named node with bounded parallelism, emitting
// started/done/failed events for step, and returns NodeErrors for the nodes
// that failed. Nodes not yet started when the run is interrupted are not started.
func (r *Run) ForEachNode(ctx context.Context, nodes []string, step string, fn func(ctx context.Context, node string) error) error {
	sem := make(chan struct{}, max(r.parallel, 1))
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := NodeErrors{}
	for _, node := range nodes {
		// Wait for a slot first: a node is "started" only once it has one,
		// and an interrupt that came while waiting must keep it from starting.
		sem <- struct{}{}
		if err := r.Checkpoint(); err != nil {
			<-sem
			mu.Lock()
			errs[node] = err
			mu.Unlock()
			r.outcomes.set(node, OutcomeInterrupted)
			continue
		}
		if ctx.Err() != nil {
			<-sem
			mu.Lock()
			errs[node] = ctx.Err()
			mu.Unlock()
			r.outcomes.set(node, OutcomeInterrupted)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			start := time.Now()
			r.Emit(Event{Node: node, Step: step, Status: StatusStarted})
			err := fn(ctx, node)
			if err != nil {
				mu.Lock()
				errs[node] = err
				mu.Unlock()
				o := OutcomeFailed
				if interrupted(err) {
					o = OutcomeInterrupted
				}
				r.outcomes.set(node, o)
				r.Emit(Event{Node: node, Step: step, Status: StatusFailed, Message: err.Error(), Elapsed: time.Since(start)})
				return
			}
			r.outcomes.set(node, OutcomeOK)
			r.Emit(Event{Node: node, Step: step, Status: StatusDone, Elapsed: time.Since(start)})
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// NodeNames returns the names of the run's targeted nodes in profile order.
func (r *Run) NodeNames() []string {
	out := make([]string, len(r.Nodes))
	for i, n := range r.Nodes {
		out[i] = n.Name
	}
	return out
}

// SetFacts records what preflight found on a node.
func (r *Run) SetFacts(node string, f facts.Node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.facts[node] = f
}

// Facts returns what preflight found on a node in this run.
func (r *Run) Facts(node string) (facts.Node, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.facts[node]
	return f, ok
}

// AllFacts returns every node's facts, for the run record.
func (r *Run) AllFacts() map[string]facts.Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]facts.Node, len(r.facts))
	for k, v := range r.facts {
		out[k] = v
	}
	return out
}

// Render records a file this phase rendered for a node (or the cluster when
// node is empty); the state repo commits it under rendered/. It must never
// hold a secret: secrets go through Secrets.
func (r *Run) Render(node, name string, content []byte) {
	scope := node
	if scope == "" {
		scope = "cluster"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rendered[path.Join(scope, r.phase, path.Clean("/" + name)[1:])] = append([]byte(nil), content...)
}

// Rendered returns every rendered file by its path under rendered/.
func (r *Run) Rendered() map[string][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]byte, len(r.rendered))
	for k, v := range r.rendered {
		out[k] = v
	}
	return out
}

// RenderedPaths lists the rendered files, sorted.
func (r *Run) RenderedPaths() []string {
	m := r.Rendered()
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
