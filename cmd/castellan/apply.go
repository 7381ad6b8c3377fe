package main

import (
	"errors"

	"github.com/spf13/cobra"

	"castellan/installer"
	"castellan/installer/report"
)

func (a *app) applyCommand() *cobra.Command {
	var yes bool
	var only, nodes, reEnrol, acceptBoot []string
	cmd := &cobra.Command{
		Use:   "apply -f PROFILE",
		Short: "Bring the nodes to the profile (and commit the run to the state repo)",
		Long: `apply plans each phase against the nodes and applies the changes, phase by
phase. A phase with nothing to change is skipped, so a rerun of an applied
profile changes nothing. Every run, failed ones too, is one commit in the
state repo. Without --yes, apply shows the plan and asks first (in a
terminal); nothing is written anywhere before you answer yes.
Ctrl-C stops between steps; a second Ctrl-C aborts the running ones.`,
		Args: args(noArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := a.format()
			if err != nil {
				return err
			}
			p, err := installer.LoadProfile(a.profile.value, a.acceptNewKeys)
			if err != nil {
				return err
			}
			if !yes && !isTerminal(a.stdin) {
				return usageError{errors.New("refusing to change nodes without confirmation: not a terminal; review `castellan plan` and pass --yes")}
			}
			cfg, err := a.config(report.NewPrinter(a.stdout, format, nodeNames(p, selection(cmd, "nodes", nodes))))
			if err != nil {
				return err
			}
			v := installer.NewApply(cfg)
			v.ProfilePath, v.Profile, v.AcceptNewHostKeys = a.profile.value, p, a.acceptNewKeys
			v.Only, v.Nodes = selection(cmd, "only", only), selection(cmd, "nodes", nodes)
			v.ReEnrol, v.AcceptBootState = reEnrol, acceptBoot
			pending, err := v.Prepare(a.ctx, !yes)
			if err != nil {
				return err
			}
			return a.runPending(format, pending, yes)
		},
	}
	a.profileFlag(cmd)
	a.agentFlags(cmd)
	cmd.Flags().BoolVar(&a.acceptNewKeys, "accept-new-host-keys", false, "trust host keys known_hosts does not hold yet (never changed ones): shown in the plan, written once confirmed, committed with the run")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "apply without asking")
	a.outputFlag(cmd, "one event per line")
	cmd.Flags().StringSliceVar(&only, "only", nil, "run only these phases (comma-separated or repeated)")
	cmd.Flags().StringSliceVar(&nodes, "nodes", nil, "act only on these nodes")
	cmd.Flags().StringArrayVar(&reEnrol, "re-enrol", nil, "re-enrol this node's identity explicitly (repeatable): accept its new TPM, give it a new key and certificate, revoke the old one; shown in the plan and recorded in the run")
	cmd.Flags().StringArrayVar(&acceptBoot, "accept-boot-state", nil, "accept this node's changed boot state explicitly (repeatable): its attested PCRs become its new baseline (after a kernel, boot loader or firmware update you made); shown in the plan and recorded in the run")
	_ = cmd.MarkFlagRequired("file")
	_ = cmd.RegisterFlagCompletionFunc("only", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return phaseNames(), cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}
