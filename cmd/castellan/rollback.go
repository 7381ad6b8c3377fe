package main

import (
	"errors"

	"github.com/spf13/cobra"

	"castellan/installer"
	"castellan/installer/report"
)

func (a *app) rollbackCommand() *cobra.Command {
	var to onceString
	var yes bool
	cmd := &cobra.Command{
		Use:   "rollback --to REV -f PROFILE",
		Short: "Apply the profile of an earlier run as a new run",
		Long: `rollback takes the profile recorded by run REV and applies it as a new run,
committed as a rollback; history is never rewritten. Key files and other
relative paths resolve against the directory of -f PROFILE.`,
		Args: args(noArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := a.format()
			if err != nil {
				return err
			}
			if !yes && !isTerminal(a.stdin) {
				return usageError{errors.New("refusing to change nodes without confirmation: not a terminal; pass --yes")}
			}
			p, err := installer.LoadProfile(a.profile.value, a.acceptNewKeys)
			if err != nil {
				return err
			}
			cfg, err := a.config(report.NewPrinter(a.stdout, format, nodeNames(p, nil)))
			if err != nil {
				return err
			}
			v := installer.NewRollback(cfg)
			v.ProfilePath, v.Profile, v.To, v.AcceptNewHostKeys = a.profile.value, p, to.value, a.acceptNewKeys
			pending, err := v.Prepare(a.ctx, !yes)
			if err != nil {
				return err
			}
			return a.runPending(format, pending, yes)
		},
	}
	a.profileFlag(cmd)
	a.agentFlags(cmd)
	cmd.Flags().BoolVar(&a.acceptNewKeys, "accept-new-host-keys", false, "trust host keys known_hosts does not hold yet (shown in the plan, written once confirmed)")
	cmd.Flags().Var(&to, "to", "the run number (or state repo revision) to roll back to")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "roll back without asking")
	a.outputFlag(cmd, "one event per line")
	_ = cmd.MarkFlagRequired("to")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}
