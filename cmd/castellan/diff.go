package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"castellan/installer"
)

func (a *app) diffCommand() *cobra.Command {
	var stateDir onceString
	cmd := &cobra.Command{
		Use:   "diff REV [REV] (-f PROFILE | --state DIR)",
		Short: "Show what changed in the state between two runs (default: REV to the latest)",
		Long: `diff shows the profile, known_hosts, rendered files and phase data that differ
between two revisions: run numbers from castellan history, or git revisions
of the state repo. Secrets are listed by name only.`,
		Args: args(cobra.RangeArgs(1, 2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.config(nil)
			if err != nil {
				return err
			}
			v := installer.NewDiff(cfg)
			v.ProfilePath, v.StateDir, v.From = a.profile.value, stateDir.value, args[0]
			if len(args) == 2 {
				v.To = args[1]
			}
			d, err := v.Run()
			if err != nil {
				return err
			}
			if d == "" {
				fmt.Fprintln(a.stdout, "no differences")
				return nil
			}
			fmt.Fprint(a.stdout, d)
			return nil
		},
	}
	a.profileFlag(cmd)
	cmd.Flags().Var(&stateDir, "state", "the state repo (instead of -f: the profile's spec.state.repo)")
	return cmd
}
