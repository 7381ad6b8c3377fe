package main

import (
	"github.com/spf13/cobra"

	"castellan/installer"
	"castellan/installer/engine"
	"castellan/installer/report"
)

// errDrift is a verification that found drift (exit code 4).
type errDrift struct{}

func (errDrift) Error() string { return "drift" }

func (a *app) verifyCommand() *cobra.Command {
	var only, nodes []string
	var problems bool
	cmd := &cobra.Command{
		Use:   "verify -f PROFILE",
		Short: "Check that the live cluster matches the profile and the state repo, writing nothing",
		Long: `verify checks every node and the cluster against the profile and what the
state repo records: each phase's plan (anything a rerun would change is
drift) and what a plan does not check: certificates valid and not revoked,
node keys TPM-resident, a fresh TPM quote of each node's boot state against
its pinned baseline, data disks open with their TPM keyslot and mounted, the
WireGuard mesh with exactly the profile's peers and recent handshakes, the
underlay firewall as confirmed.

It writes nothing anywhere (no state repo commit, no lock, no known_hosts
line, nothing on a node) and costs one SSH connection and one remote exec per
node, like a no-op plan: cheap enough for a timer every few minutes.

Exit codes: 0 everything matches; 4 drift; 1 something could not be checked
(an unreachable node, ...), which wins over drift; 2 bad input.`,
		Args: args(noArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := a.format()
			if err != nil {
				return err
			}
			// Events are not printed: the report is the output. Logs go to
			// stderr at --log-level.
			cfg, err := a.config(nil)
			if err != nil {
				return err
			}
			v := installer.NewVerify(cfg)
			v.ProfilePath = a.profile.value
			v.Only, v.Nodes = selection(cmd, "only", only), selection(cmd, "nodes", nodes)
			res, err := v.Run(a.ctx)
			if err != nil {
				return err
			}
			if format == report.JSON {
				if err := report.WriteVerifyJSON(a.stdout, res); err != nil {
					return err
				}
			} else {
				report.WriteVerify(a.stdout, res, report.VerifyOptions{Problems: problems})
			}
			switch res.Status {
			case engine.CheckOK:
				return nil
			case engine.CheckDrift:
				return errDrift{}
			}
			return errAlreadyReported
		},
	}
	a.profileFlag(cmd)
	a.agentFlags(cmd)
	a.outputFlag(cmd, "one JSON document")
	cmd.Flags().BoolVarP(&problems, "problems", "p", false, "print only the checks that are not ok (and the summary)")
	cmd.Flags().StringSliceVar(&only, "only", nil, "verify only these phases")
	cmd.Flags().StringSliceVar(&nodes, "nodes", nil, "verify only these nodes")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}
