// Command castellan-agent is castellan's node side: the installer ships it
// to every node and runs `castellan-agent agent OP` as root through its
// launcher, with the operation's JSON input on stdin; it writes one JSON
// response line on stdout and logs JSON lines on stderr (see package
// castellan/installer/agent for the protocol). It serves the operations of
// installer/agentops and links nothing of the installer's side, so that it
// starts fast on every node at every run. The castellan binary embeds it
// (installer/agentbin) and also answers `castellan agent OP` itself.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"castellan/installer/agentops"
	"castellan/installer/buildinfo"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "version" {
		fmt.Printf("castellan-agent %s\n", buildinfo.Version())
		return
	}
	if len(os.Args) != 3 || os.Args[1] != "agent" {
		fmt.Fprintln(os.Stderr, "usage: castellan-agent agent OP  (called by castellan over SSH, JSON on stdin)")
		os.Exit(2)
	}
	// The first SIGTERM (a timed-out or aborted command) ends the operation.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := agentops.Registry().Serve(ctx, os.Args[2], os.Stdin, os.Stdout, log); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
