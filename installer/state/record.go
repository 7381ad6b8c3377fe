package state

import (
	"encoding/json"
	"time"

	"castellan/installer/engine"
	"castellan/installer/facts"
)

// Record is what the state repo keeps of one run, in runs/NNNNNN.json.
type Record struct {
	// Number counts runs on this state repo from 1.
	Number int `json:"number"`
	// Command is apply or rollback.
	Command string `json:"command"`
	// RollbackOf is the run number a rollback restored.
	RollbackOf int    `json:"rollbackOf,omitempty"`
	Who        string `json:"who"`
	Host       string `json:"host"`
	Version    string `json:"version"`
	// ProfileSHA256 identifies the profile the run applied.
	ProfileSHA256 string    `json:"profileSha256"`
	Started       time.Time `json:"started"`
	Finished      time.Time `json:"finished"`
	// Duration is Finished-Started, kept for readers of the JSON.
	Duration time.Duration `json:"duration"`
	// Nodes and OnlyPhases are the run's targets (--nodes, --only).
	Nodes      []string `json:"nodes"`
	OnlyPhases []string `json:"onlyPhases,omitempty"`
	// Outcome is running while the run runs, died for a run that was killed.
	Outcome engine.Outcome       `json:"outcome"`
	Error   string               `json:"error,omitempty"`
	Phases  []engine.PhaseResult `json:"phases"`
	// NodeErrors holds each failed node's first error, in full.
	NodeErrors map[string]string `json:"nodeErrors,omitempty"`
	// Outputs are what phases published and chose to record, by output
	// ("phase.name") and node (e.g. preflight.facts).
	Outputs map[string]map[string]json.RawMessage `json:"outputs,omitempty"`
	// TrustedHostKeys lists host keys the run wrote to known_hosts
	// (--accept-new-host-keys), as "NODE (ADDR) TYPE SHA256:...".
	TrustedHostKeys []string `json:"trustedHostKeys,omitempty"`
	// Warnings are shown in every summary of this run (e.g. an insecure opt-out).
	Warnings []string `json:"warnings,omitempty"`
}

// Failed reports whether the run failed, was interrupted or died.
func (r *Record) Failed() bool {
	switch r.Outcome {
	case engine.OutcomeFailed, engine.OutcomeInterrupted, engine.OutcomeDied:
		return true
	}
	return false
}

// NodeFacts returns what preflight observed on node in this run.
func (r *Record) NodeFacts(node string) (facts.Node, bool) {
	raw, ok := r.Outputs[facts.Key.String()][node]
	if !ok {
		return facts.Node{}, false
	}
	var f facts.Node
	if err := json.Unmarshal(raw, &f); err != nil {
		return facts.Node{}, false
	}
	return f, true
}
