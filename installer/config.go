// Package installer is castellan's application layer: one type per verb
// (Plan, Apply, Rollback, History, Diff, Validate), each built from one shared
// Config that the CLI or the TUI injects. The verbs load the profile, open the
// state repo, connect to the nodes, run the phases through the engine and
// commit the run; they hold no install logic of their own (that lives in the
// phases).
package installer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"

	"castellan/installer/engine"
)

// Config is what every verb shares: where events, logs and notices go, how
// nodes are dialed, which agent binaries and age identity to use, and the
// run's interrupt (the first Ctrl-C). The zero value works: events and logs
// are discarded.
type Config struct {
	// Sink receives the event stream of plans and runs.
	Sink engine.Sink
	// Logger logs for people debugging castellan (never secrets).
	Logger *slog.Logger
	// Notice receives messages for the user outside the event stream (a
	// created identity, a recovered run, a failed push).
	Notice io.Writer
	// Dial replaces the TCP dialer (tests dial inside network namespaces).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// AgentBinaries are castellan binaries for the nodes' architectures;
	// the running executable is used when it fits.
	AgentBinaries []string
	// IdentityFile is the age identity for the state repo's secrets ("" for
	// $CASTELLAN_AGE_IDENTITY or the default path).
	IdentityFile string
	// Parallelism bounds how many nodes a step works on at once (0: the
	// engine's default).
	Parallelism int
	// Interrupt, once done, stops runs between steps (the first Ctrl-C);
	// cancelling a verb's context aborts the running steps (the second).
	Interrupt context.Context
}

func (c *Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

func (c *Config) sink() engine.Sink {
	if c.Sink == nil {
		return engine.SinkFunc(func(engine.Event) {})
	}
	return c.Sink
}

func (c *Config) notice(format string, a ...any) {
	if c.Notice != nil {
		fmt.Fprintf(c.Notice, format+"\n", a...)
	}
}
