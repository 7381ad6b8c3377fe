package main

import (
	"log/slog"

	"github.com/spf13/cobra"

	"castellan/installer"
)

// agentCommand is the node side: `castellan agent OP` reads JSON on stdin
// and writes one JSON response on stdout; logs go to stderr as JSON lines
// (the installer shows their tail when an operation fails). Hidden: people
// never call it.
func (a *app) agentCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "agent OP",
		Short:  "Run a node-side operation (called by castellan over SSH)",
		Hidden: true,
		Args:   args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			log := slog.New(slog.NewJSONHandler(a.stderr, &slog.HandlerOptions{Level: a.level()}))
			// The first SIGTERM (a timed-out or aborted command) ends the operation.
			return installer.AgentRegistry().Serve(a.interrupt, args[0], a.stdin, a.stdout, log)
		},
	}
}
