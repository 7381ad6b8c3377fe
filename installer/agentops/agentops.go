// Package agentops lists the node operations of the phases that have a node
// side. It is what the agent binary (cmd/castellan-agent) serves, and it
// imports only those phases: the agent starts on every node at every run, so
// it must not link the installer's side (client-go, the TUI, go-git, the
// state repo), whose start-up alone cost about 25 ms of CPU per node and run
// (measured: a 38 MB binary starting in 29 ms of CPU, a 7 MB one in 5 ms).
//
// installer.Phases is the one ordered list of phases; a test there checks
// that every phase with operations appears here, and nothing else.
package agentops

import (
	"castellan/installer/agent"
	"castellan/installer/engine"
	"castellan/phases/diskcrypt"
	"castellan/phases/identity"
	"castellan/phases/mesh"
	"castellan/phases/preflight"
)

// Phases are the phases with a node side.
func Phases() []engine.Phase {
	return []engine.Phase{preflight.Phase{}, identity.Phase{}, diskcrypt.Phase{}, mesh.Phase{}}
}

// Registry returns the agent's registry: every node operation of Phases.
func Registry() *agent.Registry {
	var ops []agent.Handler
	for _, p := range Phases() {
		ops = append(ops, p.Ops()...)
	}
	return agent.NewRegistry(ops...)
}
