// Package enginetest holds test doubles for unit tests of phases and of the
// engine. They are fakes, named as such: a phase is proven against real
// nodes by the real-sshd tests (installer/ssh/sshtest) and the VM lab.
package enginetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"castellan/installer/agent"
	"castellan/installer/engine"
)

// FakeNodes is a fake engine.NodeAccess: each node is a map of operation
// handlers run in-process (by default the phases' real handlers, which act
// on the test machine; a test overrides them per node with Handle). It counts
// execs per node, so a test can check the cost model, and records the order
// of operations.
type FakeNodes struct {
	mu       sync.Mutex
	registry *agent.Registry
	nodes    map[string]*fakeNode
	calls    []string
}

type fakeNode struct {
	agent       bool
	arch        string
	unreachable error
	handlers    map[string]func(json.RawMessage) (any, error)
	execs       int
	pending     *engine.HostKey
	trusted     []engine.HostKey
}

// NewFakeNodes returns fake nodes that serve handlers (and the agent's
// built-in operations). Every node starts with the agent installed.
func NewFakeNodes(handlers ...agent.Handler) *FakeNodes {
	return &FakeNodes{registry: agent.NewRegistry(handlers...), nodes: map[string]*fakeNode{}}
}

func (f *FakeNodes) node(name string) *fakeNode {
	n := f.nodes[name]
	if n == nil {
		n = &fakeNode{agent: true, arch: "amd64", handlers: map[string]func(json.RawMessage) (any, error){}}
		f.nodes[name] = n
	}
	return n
}

// Handle makes node answer op with fn instead of the registered handler.
func (f *FakeNodes) Handle(node string, op agent.Spec, fn func(in json.RawMessage) (any, error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.node(node).handlers[op.OpName()] = fn
}

// SetAgent says whether node has the agent.
func (f *FakeNodes) SetAgent(node string, installed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.node(node).agent = installed
}

// SetUnreachable makes every exec on node fail with err (nil: reachable).
func (f *FakeNodes) SetUnreachable(node string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.node(node).unreachable = err
}

// SetPendingHostKey makes node offer a host key known_hosts lacks.
func (f *FakeNodes) SetPendingHostKey(node string, k engine.HostKey) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.node(node).pending = &k
}

// Execs returns how many agent execs node received.
func (f *FakeNodes) Execs(node string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.node(node).execs
}

// Calls returns "node op" for every operation run, in order.
func (f *FakeNodes) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// Trusted lists the host keys trusted per node.
func (f *FakeNodes) Trusted() map[string][]engine.HostKey {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]engine.HostKey{}
	for name, n := range f.nodes {
		if len(n.trusted) > 0 {
			out[name] = append([]engine.HostKey(nil), n.trusted...)
		}
	}
	return out
}

// serve runs one operation on node, as the agent would.
func (f *FakeNodes) serve(ctx context.Context, node string, req agent.Request) agent.Response {
	f.mu.Lock()
	n := f.node(node)
	fn := n.handlers[req.Op]
	f.calls = append(f.calls, node+" "+req.Op)
	f.mu.Unlock()
	if fn == nil {
		var out bytes.Buffer
		if err := f.registry.Serve(ctx, req.Op, bytes.NewReader(req.Input), &out, slog.New(slog.DiscardHandler)); err != nil {
			return agent.Response{Error: &agent.Error{Code: "failed", Message: err.Error()}}
		}
		resp, err := agent.DecodeResponse(out.Bytes())
		if err != nil {
			return agent.Response{Error: &agent.Error{Code: "failed", Message: err.Error()}}
		}
		return resp
	}
	v, err := fn(req.Input)
	if err != nil {
		return agent.Response{Error: &agent.Error{Code: "failed", Message: err.Error()}}
	}
	data, err := json.Marshal(v)
	if err != nil {
		return agent.Response{Error: &agent.Error{Code: "failed", Message: err.Error()}}
	}
	return agent.Response{OK: true, Result: data}
}

// exec counts one exec on node and says whether it can run the agent.
func (f *FakeNodes) exec(node string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.node(node)
	n.execs++
	if n.unreachable != nil {
		return false, n.unreachable
	}
	return n.agent, nil
}

// Batch implements engine.NodeAccess.
func (f *FakeNodes) Batch(ctx context.Context, node string, reqs []agent.Request) ([]agent.Response, error) {
	ok, err := f.exec(node)
	if err != nil || !ok {
		return nil, err
	}
	out := make([]agent.Response, len(reqs))
	for i, r := range reqs {
		h, known := f.registry.Lookup(r.Op)
		if known && !h.IsReadOnly() {
			out[i] = agent.Response{Error: &agent.Error{Code: "not-read-only", Message: r.Op + " changes the node"}}
			continue
		}
		out[i] = f.serve(ctx, node, r)
	}
	return out, nil
}

// Call implements engine.NodeAccess.
func (f *FakeNodes) Call(ctx context.Context, node string, op agent.Spec, in, out any) error {
	ok, err := f.exec(node)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s: the castellan agent is not on the node", node)
	}
	req, err := agent.NewRequest(op, in)
	if err != nil {
		return err
	}
	return f.serve(ctx, node, req).Decode(node, op.OpName(), out)
}

// Agent implements engine.NodeAccess (it costs no exec: the fake knows).
func (f *FakeNodes) Agent(_ context.Context, node string) (engine.AgentState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.node(node)
	if n.unreachable != nil {
		return engine.AgentState{}, n.unreachable
	}
	return engine.AgentState{Installed: n.agent, Path: agent.BinDir + "/castellan-fake", Size: 1 << 20, Arch: n.arch}, nil
}

// InstallAgent implements engine.NodeAccess.
func (f *FakeNodes) InstallAgent(_ context.Context, node string, progress func(done, total int64)) error {
	f.mu.Lock()
	n := f.node(node)
	n.execs++
	err := n.unreachable
	if err == nil {
		n.agent = true
		f.calls = append(f.calls, node+" install-agent")
	}
	f.mu.Unlock()
	if err != nil {
		return err
	}
	if progress != nil {
		progress(1<<20, 1<<20)
	}
	return nil
}

// PendingHostKey implements engine.NodeAccess.
func (f *FakeNodes) PendingHostKey(node string) (engine.HostKey, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if k := f.node(node).pending; k != nil {
		return *k, true
	}
	return engine.HostKey{}, false
}

// TrustHostKey implements engine.NodeAccess.
func (f *FakeNodes) TrustHostKey(_ context.Context, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.node(node)
	if n.pending == nil {
		return errors.New(node + ": no pending host key")
	}
	n.trusted = append(n.trusted, *n.pending)
	n.pending = nil
	return nil
}

// MemStore is an in-memory engine.Store for unit tests: secrets are kept in
// plaintext in memory (never on disk), data likewise.
type MemStore struct {
	mu      sync.Mutex
	Secrets map[string][]byte
	Files   map[string][]byte
}

// NewMemStore returns an empty store.
func NewMemStore() *MemStore {
	return &MemStore{Secrets: map[string][]byte{}, Files: map[string][]byte{}}
}

// Secret implements engine.Store.
func (m *MemStore) Secret(name string) ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.Secrets[name]
	return v, ok, nil
}

// PutSecret implements engine.Store.
func (m *MemStore) PutSecret(name string, value []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Secrets[name] = append([]byte(nil), value...)
	return nil
}

// Data implements engine.Store.
func (m *MemStore) Data(name string) ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.Files[name]
	return v, ok, nil
}

// PutData implements engine.Store.
func (m *MemStore) PutData(name string, value []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Files[name] = append([]byte(nil), value...)
	return nil
}

// Names lists the stored secret and data names, sorted.
func (m *MemStore) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for k := range m.Secrets {
		out = append(out, "secret "+k)
	}
	for k := range m.Files {
		out = append(out, "data "+k)
	}
	sort.Strings(out)
	return out
}
