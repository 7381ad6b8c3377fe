// Command castellan turns plain Linux VMs into a zero-trust RKE2 cluster
// from one profile file. This package only parses flags and calls the verbs
// of installer/; each verb has a file of its own here and there.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"castellan/installer"
	"castellan/installer/report"
)

// Exit codes (README: "Exit codes").
const (
	exitOK     = 0
	exitFailed = 1 // a run failed or was interrupted (it is committed)
	exitInput  = 2 // bad input, found before any node was touched
	exitPush   = 3 // the run succeeded and is committed, but the state repo was not pushed
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes castellan with args and returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, interrupt, stop := signalContexts(stderr)
	defer stop()
	app := &app{stdin: stdin, stdout: stdout, stderr: stderr, ctx: ctx, interrupt: interrupt}
	root := app.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	var ie *installer.InputError
	var ue usageError
	var pe *installer.PushError
	switch {
	case errors.As(err, &ie), errors.As(err, &ue), isCobraUsage(err):
		fmt.Fprintf(stderr, "error: %s\n", report.Clean(err.Error()))
		return exitInput
	case errors.As(err, &pe):
		fmt.Fprintf(stderr, "error: %s\n", report.Clean(err.Error()))
		return exitPush
	case errors.Is(err, errAlreadyReported):
		return exitFailed
	default:
		fmt.Fprintf(stderr, "error: %s\n", report.Clean(err.Error()))
		return exitFailed
	}
}

// signalContexts: the first Ctrl-C (or SIGTERM) cancels interrupt, which
// stops a run between steps; the second cancels ctx, which aborts it.
func signalContexts(stderr io.Writer) (ctx, interrupt context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	interrupt, stopRun := context.WithCancel(ctx)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			fmt.Fprintln(stderr, "\ninterrupted: no new step starts; the running ones finish (press Ctrl-C again to abort them)")
			stopRun()
		case <-done:
			return
		}
		select {
		case <-sigs:
			fmt.Fprintln(stderr, "\naborting the running steps")
			cancel()
		case <-done:
		}
	}()
	return ctx, interrupt, func() {
		signal.Stop(sigs)
		close(done)
		stopRun()
		cancel()
	}
}
