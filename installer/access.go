package installer

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"path"
	"sync"

	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/installer/ssh"
)

// nodeAccess implements engine.Nodes over one SSH pool and the agent: one
// connection per node for the whole run, one probe per node, and the agent
// binary picked by the node's architecture.
type nodeAccess struct {
	pool  *ssh.Pool
	hosts map[string]ssh.Host
	bins  *binaries

	mu     sync.Mutex
	probes map[string]agent.Status
}

func (a *nodeAccess) client(ctx context.Context, node string) (*ssh.Client, error) {
	h, ok := a.hosts[node]
	if !ok {
		return nil, fmt.Errorf("node %s is not in the profile", node)
	}
	return a.pool.Client(ctx, h)
}

// status probes a node once per run (architecture and installed agents).
func (a *nodeAccess) status(ctx context.Context, node string, c *ssh.Client) (agent.Status, error) {
	a.mu.Lock()
	st, ok := a.probes[node]
	a.mu.Unlock()
	if ok {
		return st, nil
	}
	st, err := agent.Probe(ctx, c)
	if err != nil {
		return st, err
	}
	a.mu.Lock()
	a.probes[node] = st
	a.mu.Unlock()
	return st, nil
}

func (a *nodeAccess) binaryFor(ctx context.Context, node string) (*ssh.Client, agent.Status, agent.Binary, error) {
	c, err := a.client(ctx, node)
	if err != nil {
		return nil, agent.Status{}, agent.Binary{}, err
	}
	st, err := a.status(ctx, node, c)
	if err != nil {
		return nil, st, agent.Binary{}, err
	}
	b, err := a.bins.forArch(st.Arch)
	return c, st, b, err
}

// Agent implements engine.Nodes.
func (a *nodeAccess) Agent(ctx context.Context, node string) (engine.AgentState, error) {
	_, st, b, err := a.binaryFor(ctx, node)
	if err != nil {
		return engine.AgentState{}, err
	}
	return engine.AgentState{Installed: st.Has(b), Path: b.RemotePath(), Size: b.Size}, nil
}

// InstallAgent implements engine.Nodes.
func (a *nodeAccess) InstallAgent(ctx context.Context, node string, progress func(done, total int64)) error {
	c, st, b, err := a.binaryFor(ctx, node)
	if err != nil {
		return err
	}
	if err := agent.Install(ctx, c, b, progress); err != nil {
		return err
	}
	st.Installed = []string{path.Base(b.RemotePath())}
	a.mu.Lock()
	a.probes[node] = st
	a.mu.Unlock()
	return nil
}

// Call implements engine.Nodes.
func (a *nodeAccess) Call(ctx context.Context, node, op string, in, out any) error {
	c, st, b, err := a.binaryFor(ctx, node)
	if err != nil {
		return err
	}
	if !st.Has(b) {
		return fmt.Errorf("%s: this castellan's agent is not on the node yet; the preflight phase installs it (castellan apply --only preflight)", node)
	}
	return agent.Call(ctx, c, node, b.RemotePath(), op, in, out)
}

// binaries finds and hashes (once) a castellan binary per node architecture:
// the --agent-binary files, then the running executable.
type binaries struct {
	candidates []string
	mu         sync.Mutex
	byArch     map[string]agent.Binary
}

func newBinaries(extra []string) *binaries {
	c := append([]string(nil), extra...)
	if exe, err := os.Executable(); err == nil {
		c = append(c, exe)
	}
	return &binaries{candidates: c, byArch: map[string]agent.Binary{}}
}

func (b *binaries) forArch(arch string) (agent.Binary, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if bin, ok := b.byArch[arch]; ok {
		return bin, nil
	}
	for _, path := range b.candidates {
		if elfArch(path) != arch {
			continue
		}
		bin, err := agent.LocalBinary(path, arch)
		if err != nil {
			return agent.Binary{}, err
		}
		b.byArch[arch] = bin
		return bin, nil
	}
	return agent.Binary{}, fmt.Errorf("no castellan binary for linux/%s nodes: build one (GOOS=linux GOARCH=%s CGO_ENABLED=0 go build ./cmd/castellan) and pass it with --agent-binary", arch, arch)
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
