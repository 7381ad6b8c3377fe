package engine

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"path"
	"sort"
	"sync"
	"time"

	"castellan/installer/agent"
	"castellan/installer/profile"
)

// DefaultParallelism is how many nodes a phase works on at once by default.
// Chosen from BenchmarkScale's lab at 500 nodes (2 cores, nodes local):
// a no-op plan's wall time and castellan's CPU do not change from 10 to 500
// at once (the nodes' CPU bounds it), and its peak RSS grows from 82 to
// 102 MB; but a first apply, which uploads the agent to every node, peaks
// at 134 MB at 50 and 350 MB at 500 (about 0.45 MB per upload in flight)
// for the same wall time. What limits it is the installer's memory during
// uploads; what more would buy is hiding network latency (k round trips per
// node cost n/parallelism * k * RTT), which this lab cannot show.
const DefaultParallelism = 50

// SessionConfig is what a plan or a run needs.
type SessionConfig struct {
	// ID names the run in events ("plan" for a plan).
	ID      string
	Profile *profile.Profile
	// Nodes are the nodes this run targets (all, or those given with --nodes).
	Nodes  []profile.Node
	Access NodeAccess
	// Store is the state repo; nil when there is none yet (reads find nothing).
	Store Store
	Sink  Sink
	// Logger logs for people debugging castellan (never secrets).
	Logger *slog.Logger
	// Parallelism bounds how many nodes a step works on at once.
	Parallelism int
	// Interrupt, once done, stops the run between steps: no new node work
	// starts (the first Ctrl-C). Cancelling the context given to PlanAll or
	// Apply aborts the running steps too (the second).
	Interrupt context.Context
	// Inputs are what the command line asked of phases for this run only,
	// beside the profile (InputOf).
	Inputs Inputs
}

// Session is the state one plan or run shares between its phases: the
// profile, the targeted nodes, what the nodes were observed to be, outputs
// published by phases, rendered files and the event stream. Each phase sees
// it through a View (planning) or a Run (applying) bound to its name.
type Session struct {
	cfg SessionConfig
	// secret is drawn when the session starts and never leaves the
	// installer: nonces are derived from it (View.Nonce).
	secret [32]byte

	emitMu sync.Mutex
	seq    uint64
	// collecting keeps the warnings emitted (Verify reports them).
	collecting bool
	warnings   []Event

	mu          sync.Mutex
	out         outputs
	rendered    map[string][]byte
	progress    map[string]int64
	observed    map[string]*observation
	unavailable map[string]*failure // nodes that could not be observed
	reported    map[string]*failure // the first failure of each node, reported in full
	outcomes    map[string]*nodeOutcomes
}

// observation is what one agent exec on a node answered: the agent's state
// and the responses to read-only requests, valid until something changes the
// node.
type observation struct {
	agentKnown bool
	responses  map[string]agent.Response
	timing     Timing
}

// Timing says when the exec that answered a call was sent, by the
// installer's clock (with its monotonic reading), and how long it took until
// the answer was back: what a phase needs to compare a node's clock with the
// installer's (NTP's four-timestamp method).
type Timing struct {
	Sent    time.Time
	Elapsed time.Duration
}

// failure is a node's error and the event that reported it in full.
type failure struct {
	err error
	seq uint64
}

// NewSession prepares a plan or a run.
func NewSession(cfg SessionConfig) *Session {
	if cfg.Sink == nil {
		cfg.Sink = SinkFunc(func(Event) {})
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Parallelism <= 0 {
		cfg.Parallelism = DefaultParallelism
	}
	s := &Session{
		cfg:         cfg,
		out:         outputs{values: map[string]map[string]any{}, records: map[string]bool{}},
		rendered:    map[string][]byte{},
		progress:    map[string]int64{},
		observed:    map[string]*observation{},
		unavailable: map[string]*failure{},
		reported:    map[string]*failure{},
		outcomes:    map[string]*nodeOutcomes{},
	}
	// crypto/rand.Read never fails (Go 1.24+: it crashes the program
	// rather than return short).
	_, _ = rand.Read(s.secret[:])
	return s
}

// NonceSize is the length of View.Nonce's nonces in bytes.
const NonceSize = 32

// Nonce returns a nonce for node that is fresh for this session, the same
// every time this phase asks with the same purpose in this session, and
// unpredictable to nodes: HMAC-SHA-256 (RFC 2104), keyed by a random secret
// drawn when the session started, of the phase, purpose and node (each
// prefixed by its length). It lets a
// phase put a challenge in its observation (Observer) that its plan then
// asks with the same input, so the one exec per node answers both, while a
// node cannot answer it with anything made before the session began (a
// replayed TPM quote, say). A confirmed plan and its run are one session:
// the same nonce. NonceSize bytes.
func (v *View) Nonce(node, purpose string) []byte {
	m := hmac.New(sha256.New, v.secret[:])
	for _, part := range []string{"castellan nonce v1", v.phase, purpose, node} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(part)))
		m.Write(n[:])
		m.Write([]byte(part))
	}
	return m.Sum(nil)
}

// ID is the run's name in events.
func (s *Session) ID() string {
	s.emitMu.Lock()
	defer s.emitMu.Unlock()
	return s.cfg.ID
}

// SetID renames the session: a plan that was confirmed becomes run ID, and
// its observations carry over (no node is asked twice).
func (s *Session) SetID(id string) {
	s.emitMu.Lock()
	defer s.emitMu.Unlock()
	s.cfg.ID = id
}

// View returns the read-only view of phase, for planning.
func (s *Session) View(phase string) *View {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.outcomes[phase]
	if o == nil {
		o = &nodeOutcomes{}
		s.outcomes[phase] = o
	}
	return &View{Session: s, phase: phase, outcomes: o}
}

// Run returns the applying view of phase.
func (s *Session) Run(phase string) *Run { return &Run{View: s.View(phase)} }

// emit stamps and delivers an event; sinks receive events in Seq order.
func (s *Session) emit(e Event) uint64 {
	s.emitMu.Lock()
	defer s.emitMu.Unlock()
	s.seq++
	e.Seq = s.seq
	e.Time = time.Now()
	e.Run = s.cfg.ID
	if s.collecting && e.Kind == KindMessage && e.Status == StatusWarning {
		s.warnings = append(s.warnings, e)
	}
	s.cfg.Sink.Emit(e)
	return e.Seq
}

// interrupted reports whether the run was asked to stop between steps.
func (s *Session) interrupted() bool {
	return s.cfg.Interrupt != nil && s.cfg.Interrupt.Err() != nil
}

// Rendered returns every rendered file by its path under rendered/.
func (s *Session) Rendered() map[string][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]byte, len(s.rendered))
	for k, v := range s.rendered {
		out[k] = v
	}
	return out
}

// RenderedPaths lists the rendered files, sorted.
func (s *Session) RenderedPaths() []string {
	m := s.Rendered()
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Outputs returns the recorded outputs as JSON by key and node, for the run
// record.
func (s *Session) Outputs() map[string]map[string]json.RawMessage { return s.recordedOutputs() }

// NodeNames returns the names of the targeted nodes in profile order.
func (s *Session) NodeNames() []string {
	out := make([]string, len(s.cfg.Nodes))
	for i, n := range s.cfg.Nodes {
		out[i] = n.Name
	}
	return out
}

// NodeErrors returns the first error of each node that failed, in full.
func (s *Session) NodeErrors() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reported) == 0 {
		return nil
	}
	out := make(map[string]string, len(s.reported))
	for n, f := range s.reported {
		out[n] = f.err.Error()
	}
	return out
}

// invalidate forgets what was observed on node: something changed it.
func (s *Session) invalidate(node string) {
	s.mu.Lock()
	delete(s.observed, node)
	s.mu.Unlock()
}

// View is what a phase sees while it plans: everything it needs to observe,
// nothing that changes a node or the state repo. (Publishing outputs is
// allowed: they live in memory for the run.)
type View struct {
	*Session
	phase    string
	outcomes *nodeOutcomes
}

// Phase is the name of the phase this view belongs to.
func (v *View) Phase() string { return v.phase }

// Profile is the profile being applied. Phases must not modify it.
func (v *View) Profile() *profile.Profile { return v.cfg.Profile }

// Nodes are the run's targeted nodes, in profile order.
func (v *View) Nodes() []profile.Node { return v.cfg.Nodes }

// Node returns a targeted node by name.
func (v *View) Node(name string) (profile.Node, bool) {
	for _, n := range v.cfg.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return profile.Node{}, false
}

// Logger logs for this phase.
func (v *View) Logger() *slog.Logger { return v.cfg.Logger.With("run", v.ID(), "phase", v.phase) }

// Secret reads this phase's secret name from the state repo.
func (v *View) Secret(name string) ([]byte, bool, error) { return v.SecretOf(v.phase, name) }

// SecretOf reads another phase's secret.
func (v *View) SecretOf(phase, name string) ([]byte, bool, error) {
	if v.cfg.Store == nil {
		return nil, false, nil
	}
	return v.cfg.Store.Secret(phase + "/" + name)
}

// Data reads what this phase stored under name in the state repo.
func (v *View) Data(name string) ([]byte, bool, error) { return v.DataOf(v.phase, name) }

// DataOf reads what another phase stored.
func (v *View) DataOf(phase, name string) ([]byte, bool, error) {
	if v.cfg.Store == nil {
		return nil, false, nil
	}
	return v.cfg.Store.Data(phase + "/" + name)
}

// Agent tells whether this castellan's agent is on node.
func (v *View) Agent(ctx context.Context, node string) (AgentState, error) {
	if f := v.unavailableErr(node); f != nil {
		return AgentState{}, f
	}
	return v.cfg.Access.Agent(ctx, node)
}

// PendingHostKey returns the new host key node offered, which the run may
// trust once the plan is confirmed.
func (v *View) PendingHostKey(node string) (HostKey, bool) {
	return v.cfg.Access.PendingHostKey(node)
}

// Emit sends an event scoped to this phase.
func (v *View) Emit(e Event) uint64 {
	e.Phase = v.phase
	return v.emit(e)
}

// Info reports a message about a node (or the phase when node is empty).
func (v *View) Info(node, format string, args ...any) {
	v.Emit(Event{Kind: KindMessage, Node: node, Status: StatusInfo, Message: fmt.Sprintf(format, args...)})
}

// Warn reports a warning about a node (or the phase when node is empty).
func (v *View) Warn(node, format string, args ...any) {
	v.Emit(Event{Kind: KindMessage, Node: node, Status: StatusWarning, Message: fmt.Sprintf(format, args...)})
}

// Checkpoint returns ErrInterrupted when the run was asked to stop. Phases
// call it between the steps of a node's sequence; ForEachNode calls it before
// starting each node.
func (v *View) Checkpoint() error {
	if v.interrupted() {
		return ErrInterrupted
	}
	return nil
}

// call runs a read-only operation: answered from the node's observation
// when it holds the same request, else by one exec.
func (v *View) call(ctx context.Context, node string, op agent.Spec, in, out any) (Timing, error) {
	if !op.IsReadOnly() {
		return Timing{}, fmt.Errorf("engine: phase %s cannot call %s while planning: it changes the node (a plan only observes)", v.phase, op.OpName())
	}
	if f := v.unavailableErr(node); f != nil {
		return Timing{}, f
	}
	req, err := agent.NewRequest(op, in)
	if err != nil {
		return Timing{}, err
	}
	v.mu.Lock()
	var resp agent.Response
	var timing Timing
	ok := false
	if o := v.observed[node]; o != nil {
		resp, ok = o.responses[req.Key()]
		timing = o.timing
	}
	v.mu.Unlock()
	if ok {
		return timing, resp.Decode(node, op.OpName(), out)
	}
	return timed(func() error { return v.cfg.Access.Call(ctx, node, op, in, out) })
}

// timed runs fn, one exec, and says when it was sent and how long it took.
func timed(fn func() error) (Timing, error) {
	t := Timing{Sent: time.Now()}
	err := fn()
	t.Elapsed = time.Since(t.Sent)
	return t, err
}

func (v *View) unavailableErr(node string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if f := v.unavailable[node]; f != nil {
		return &NodeUnavailableError{Node: node, Cause: f.err, Ref: f.seq}
	}
	return nil
}

// Run is what a phase gets to apply its plan: a View plus the means to
// change nodes and record what it did.
type Run struct {
	*View
}

// call runs any operation; one that changes the node makes the engine
// forget what it observed there.
func (r *Run) call(ctx context.Context, node string, op agent.Spec, in, out any) (Timing, error) {
	if op.IsReadOnly() {
		return r.View.call(ctx, node, op, in, out)
	}
	if f := r.unavailableErr(node); f != nil {
		return Timing{}, f
	}
	r.invalidate(node)
	return timed(func() error { return r.cfg.Access.Call(ctx, node, op, in, out) })
}

// InstallAgent ships this castellan's agent to node.
func (r *Run) InstallAgent(ctx context.Context, node string, progress func(done, total int64)) error {
	r.invalidate(node)
	return r.cfg.Access.InstallAgent(ctx, node, progress)
}

// TrustHostKey writes node's pending host key to known_hosts.
func (r *Run) TrustHostKey(ctx context.Context, node string) error {
	return r.cfg.Access.TrustHostKey(ctx, node)
}

// PutSecret stores this phase's secret name, age-encrypted in the state repo,
// at once (a crash before the run's commit loses nothing).
func (r *Run) PutSecret(name string, value []byte) error {
	if r.cfg.Store == nil {
		return fmt.Errorf("engine: storing secret %s/%s: this run has no state repo", r.phase, name)
	}
	return r.cfg.Store.PutSecret(r.phase+"/"+name, value)
}

// PutData stores this phase's data under name in the state repo (never a
// secret).
func (r *Run) PutData(name string, value []byte) error {
	if r.cfg.Store == nil {
		return fmt.Errorf("engine: storing %s/%s: this run has no state repo", r.phase, name)
	}
	return r.cfg.Store.PutData(r.phase+"/"+name, value)
}

// Render records a file this phase rendered for a node (or the cluster when
// node is empty); the state repo commits it under rendered/NODE/PHASE/. It
// must never hold a secret.
func (r *Run) Render(node, name string, content []byte) {
	scope := node
	if scope == "" {
		scope = "cluster"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rendered[path.Join(scope, r.phase, path.Clean("/" + name)[1:])] = append([]byte(nil), content...)
}

// Progress reports bytes done of total for a node's step, thinned to whole
// percents so a large upload does not flood the stream.
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
	r.Emit(Event{Kind: KindProgress, Node: node, Step: step, Status: StatusProgress, Done: done, Total: total})
}

// Caller is a View or a Run: what Call runs operations through.
type Caller interface {
	call(ctx context.Context, node string, op agent.Spec, in, out any) (Timing, error)
}

// Call runs the typed operation op on node with input in. Through a View
// (planning) only read-only operations run, answered from the node's
// observation when it holds the same request; through a Run any operation
// runs.
func Call[In, Out any](ctx context.Context, c Caller, node string, op agent.Op[In, Out], in In) (Out, error) {
	var out Out
	_, err := c.call(ctx, node, op, in, &out)
	return out, err
}

// CallTimed is Call, also saying when the exec that produced the answer was
// sent and how long it took (for an answer from the run's observation, that
// exec's).
func CallTimed[In, Out any](ctx context.Context, c Caller, node string, op agent.Op[In, Out], in In) (Out, Timing, error) {
	var out Out
	t, err := c.call(ctx, node, op, in, &out)
	return out, t, err
}
