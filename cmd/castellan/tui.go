package main

import (
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"castellan/installer/tui"
)

// tuiFlags are bare castellan's flags: what the TUI opens with.
func (a *app) tuiFlags(root *cobra.Command) {
	a.profileFlag(root)
	a.agentFlags(root)
	root.Flags().BoolVar(&a.acceptNewKeys, "accept-new-host-keys", false, "in the TUI: start with \"trust new host keys\" on (they are shown in the plan, written once confirmed)")
}

// runTUI is bare castellan: the interactive TUI when standard input and
// output are a terminal, the help otherwise (a script or a pipe).
func (a *app) runTUI(cmd *cobra.Command) error {
	if !isTerminal(a.stdin) || !isTerminalWriter(a.stdout) {
		return cmd.Help()
	}
	if _, err := a.config(nil); err != nil { // checks --identity
		return err
	}
	return tui.Run(a.ctx, a.stdin, a.stdout, tui.Options{
		ProfilePath:       a.profile.value,
		AcceptNewHostKeys: a.acceptNewKeys,
		AgentBinaries:     a.agentBinaries,
		IdentityFile:      a.identityFile.value,
		Interrupt:         a.interrupt,
	})
}

func isTerminalWriter(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
