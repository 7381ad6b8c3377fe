package installer

import (
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"castellan/installer/agent"
	"castellan/installer/agentbin"
	"castellan/installer/engine"
	"castellan/installer/ssh"
)

// nodeAccess implements engine.NodeAccess over one SSH pool and the agent:
// one connection per node for the whole run, and every agent exec goes
// through the agent's launcher, which checks the agent before running it as
// root and reports its state, so no separate probe is needed.
type nodeAccess struct {
	pool  *ssh.Pool
	hosts map[string]ssh.Host
	bins  *binaries

	// recordTrusted keeps the host keys trusted during the run, for its record.
	recordTrusted bool

	mu      sync.Mutex
	status  map[string]agent.Status // what the last exec on each node learned
	execs   map[string]int          // remote agent execs per node
	trusted []engine.HostKey
}

// execCount is how many agent execs node received in this run.
func (a *nodeAccess) execCount(node string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.execs[node]
}

// trustedKeys lists the host keys the run wrote to known_hosts.
func (a *nodeAccess) trustedKeys() []engine.HostKey {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]engine.HostKey(nil), a.trusted...)
}

func newNodeAccess(pool *ssh.Pool, hosts map[string]ssh.Host, bins *binaries) *nodeAccess {
	return &nodeAccess{pool: pool, hosts: hosts, bins: bins, status: map[string]agent.Status{}, execs: map[string]int{}}
}

func (a *nodeAccess) client(ctx context.Context, node string) (*ssh.Client, error) {
	h, ok := a.hosts[node]
	if !ok {
		return nil, fmt.Errorf("node %s is not in the profile", node)
	}
	return a.pool.Client(ctx, h)
}

// exec runs op through the launcher with the binary for the node's
// architecture. The first exec on a node guesses the installer's own
// architecture; a node of another one answers "missing" with its machine,
// and the exec is repeated once with the right binary.
func (a *nodeAccess) exec(ctx context.Context, node, op string, input []byte) (agent.Status, agent.Response, error) {
	c, err := a.client(ctx, node)
	if err != nil {
		return agent.Status{}, agent.Response{}, err
	}
	a.mu.Lock()
	st, known := a.status[node]
	a.mu.Unlock()
	arch := a.bins.defaultArch()
	if known {
		arch = st.Arch
	}
	for attempt := 0; ; attempt++ {
		b, err := a.bins.forArch(arch)
		if err != nil {
			return agent.Status{}, agent.Response{}, err
		}
		a.mu.Lock()
		a.execs[node]++
		a.mu.Unlock()
		st, resp, err := agent.Exec(ctx, c, node, b, op, input)
		if err != nil {
			return st, resp, err
		}
		a.mu.Lock()
		a.status[node] = st
		a.mu.Unlock()
		if st.Installed || st.Arch == arch || attempt > 0 {
			return st, resp, nil
		}
		arch = st.Arch
	}
}

// Batch implements engine.NodeAccess.
func (a *nodeAccess) Batch(ctx context.Context, node string, reqs []agent.Request) ([]agent.Response, error) {
	input, err := json.Marshal(agent.BatchRequest{Requests: reqs})
	if err != nil {
		return nil, fmt.Errorf("encoding a batch for %s: %w", node, err)
	}
	st, resp, err := a.exec(ctx, node, agent.BatchOp, input)
	if err != nil || !st.Installed {
		return nil, err
	}
	var out agent.BatchResult
	if err := resp.Decode(node, agent.BatchOp, &out); err != nil {
		return nil, err
	}
	if len(out.Responses) != len(reqs) {
		return nil, fmt.Errorf("%s: the agent answered %d of %d requests", node, len(out.Responses), len(reqs))
	}
	for i, r := range out.Responses {
		if r.OK == (r.Error != nil) {
			return nil, fmt.Errorf("%s: the agent's answer to %s is malformed", node, reqs[i].Op)
		}
	}
	return out.Responses, nil
}

// Call implements engine.NodeAccess.
func (a *nodeAccess) Call(ctx context.Context, node string, op agent.Spec, in, out any) error {
	input, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("agent %s on %s: encoding input: %w", op.OpName(), node, err)
	}
	st, resp, err := a.exec(ctx, node, op.OpName(), input)
	if err != nil {
		return err
	}
	if !st.Installed {
		return fmt.Errorf("%s: this castellan's agent is not on the node yet; the preflight phase installs it (castellan apply --only preflight)", node)
	}
	return resp.Decode(node, op.OpName(), out)
}

// Agent implements engine.NodeAccess: what the last exec learned, or one
// exec that only checks the agent.
func (a *nodeAccess) Agent(ctx context.Context, node string) (engine.AgentState, error) {
	a.mu.Lock()
	st, known := a.status[node]
	a.mu.Unlock()
	if !known {
		if _, err := a.Batch(ctx, node, nil); err != nil {
			return engine.AgentState{}, err
		}
		a.mu.Lock()
		st = a.status[node]
		a.mu.Unlock()
	}
	b, err := a.bins.forArch(st.Arch)
	if err != nil {
		return engine.AgentState{}, err
	}
	out := engine.AgentState{Installed: st.Installed, Path: b.RemotePath(), Size: b.Size, Arch: st.Arch}
	if h, ok := a.hosts[node]; ok {
		if n := a.pool.LoginNoise()[h.String()]; n != nil {
			out.LoginNoise = n.Warning()
		}
	}
	return out, nil
}

// InstallAgent implements engine.NodeAccess.
func (a *nodeAccess) InstallAgent(ctx context.Context, node string, progress func(done, total int64)) error {
	st, err := a.Agent(ctx, node)
	if err != nil {
		return err
	}
	c, err := a.client(ctx, node)
	if err != nil {
		return err
	}
	b, err := a.bins.forArch(st.Arch)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.execs[node]++
	a.mu.Unlock()
	if err := agent.Install(ctx, c, b, progress); err != nil {
		return err
	}
	a.mu.Lock()
	a.status[node] = agent.Status{Installed: true, Arch: st.Arch}
	a.mu.Unlock()
	return nil
}

// PendingHostKey implements engine.NodeAccess. node "" is the bastion.
func (a *nodeAccess) PendingHostKey(node string) (engine.HostKey, bool) {
	h, ok := a.host(node)
	if !ok {
		return engine.HostKey{}, false
	}
	k, ok := a.pool.PendingHostKey(h)
	if !ok {
		return engine.HostKey{}, false
	}
	return engine.HostKey{Host: k.Host, Addr: k.Addr, KeyType: k.KeyType, Fingerprint: k.Fingerprint}, true
}

// TrustHostKey implements engine.NodeAccess: it writes node's pending key
// to known_hosts (node "" is the bastion).
func (a *nodeAccess) TrustHostKey(_ context.Context, node string) error {
	h, ok := a.host(node)
	if !ok {
		return fmt.Errorf("node %s is not in the profile", node)
	}
	k, ok := a.pool.PendingHostKey(h)
	if !ok {
		return errors.New("no new host key is pending for " + h.String())
	}
	if err := a.pool.TrustHostKeys(k); err != nil {
		return err
	}
	a.mu.Lock()
	a.trusted = append(a.trusted, engine.HostKey{Host: k.Host, Addr: k.Addr, KeyType: k.KeyType, Fingerprint: k.Fingerprint})
	a.mu.Unlock()
	return nil
}

// host is node's SSH host; "" names the bastion.
func (a *nodeAccess) host(node string) (ssh.Host, bool) {
	if node == "" {
		return a.pool.BastionHost()
	}
	h, ok := a.hosts[node]
	return h, ok
}

// binaries finds and hashes (once) an agent binary per node architecture:
// the --agent-binary files first, then the castellan-agent embedded in this
// binary (make build), then the running executable (which answers
// `castellan agent OP` too, but starts slower on every node).
type binaries struct {
	explicit []string
	embedded func(arch string) ([]byte, bool)
	self     string

	mu     sync.Mutex
	byArch map[string]agent.Binary
}

func newBinaries(explicit []string) *binaries {
	self, _ := os.Executable()
	return &binaries{explicit: append([]string(nil), explicit...), embedded: agentbin.For, self: self, byArch: map[string]agent.Binary{}}
}

// defaultArch is the architecture to try first on a node never seen: the
// installer's own when an agent for it is at hand, else the first
// explicit binary's.
func (b *binaries) defaultArch() string {
	if _, err := b.forArch(runtime.GOARCH); err == nil {
		return runtime.GOARCH
	}
	for _, p := range b.explicit {
		if arch := elfArch(p); arch != "" {
			return arch
		}
	}
	return runtime.GOARCH
}

func (b *binaries) forArch(arch string) (agent.Binary, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if bin, ok := b.byArch[arch]; ok {
		return bin, nil
	}
	var bin agent.Binary
	var err error
	found := false
	for _, p := range b.explicit {
		if elfArch(p) == arch {
			bin, err = agent.LocalBinary(p, arch)
			found = true
			break
		}
	}
	if !found && b.embedded != nil {
		if data, ok := b.embedded(arch); ok {
			bin, found = agent.EmbeddedBinary(data, arch), true
		}
	}
	if !found && b.self != "" && elfArch(b.self) == arch {
		bin, err = agent.LocalBinary(b.self, arch)
		found = true
	}
	if err != nil {
		return agent.Binary{}, err
	}
	if !found {
		return agent.Binary{}, fmt.Errorf("no castellan agent for linux/%s nodes: build one (GOOS=linux GOARCH=%s CGO_ENABLED=0 go build ./cmd/castellan-agent) and pass it with --agent-binary", arch, arch)
	}
	b.byArch[arch] = bin
	return bin, nil
}

// elfArch is the Go architecture of a static Linux ELF binary, or "".
func elfArch(path string) string {
	f, err := elf.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if f.OSABI != elf.ELFOSABI_NONE && f.OSABI != elf.ELFOSABI_LINUX {
		return ""
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64"
	case elf.EM_AARCH64:
		return "arm64"
	}
	return ""
}
