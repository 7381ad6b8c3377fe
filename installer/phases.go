package installer

import (
	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/phases/preflight"
)

// Phases returns castellan's phases in the order they run: the one list
// that registers a phase, its installer side and (through Ops) its node
// side.
func Phases() []engine.Phase {
	return []engine.Phase{
		preflight.Phase{},
	}
}

// AgentRegistry returns the node-side operations of every phase, which
// `castellan agent OP` serves.
func AgentRegistry() *agent.Registry {
	var ops []agent.Handler
	for _, p := range Phases() {
		ops = append(ops, p.Ops()...)
	}
	return agent.NewRegistry(ops...)
}
