package state

import (
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
	Nodes      []string             `json:"nodes"`
	OnlyPhases []string             `json:"onlyPhases,omitempty"`
	Outcome    engine.Outcome       `json:"outcome"`
	Error      string               `json:"error,omitempty"`
	Phases     []engine.PhaseResult `json:"phases"`
	// Facts are what preflight observed on each node.
	Facts map[string]facts.Node `json:"facts,omitempty"`
	// AcceptedHostKeys lists host keys recorded with --accept-new-host-keys.
	AcceptedHostKeys []string `json:"acceptedHostKeys,omitempty"`
	// Warnings are shown in every summary of this run (e.g. an insecure opt-out).
	Warnings []string `json:"warnings,omitempty"`
}

// Failed reports whether the run failed or was interrupted.
func (r *Record) Failed() bool {
	return r.Outcome == engine.OutcomeFailed || r.Outcome == engine.OutcomeInterrupted
}
