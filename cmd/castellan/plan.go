package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"castellan/installer"
	"castellan/installer/engine"
	"castellan/installer/report"
)

func (a *app) planCommand() *cobra.Command {
	var only, nodes, reEnrol, acceptBoot []string
	cmd := &cobra.Command{
		Use:   "plan -f PROFILE",
		Short: "Show what apply would change, per phase and node, touching nothing",
		Long: `plan connects to the nodes and asks each phase what it would change. It
changes nothing anywhere: not the nodes, not the state repo, not known_hosts.
On nodes the castellan agent has not reached yet, the preflight phase plans
to install it, and phases that need the node's facts say so.`,
		Args: args(noArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := a.format()
			if err != nil {
				return err
			}
			// Events go to stderr: stdout holds the plan itself.
			cfg, err := a.config(report.NewPrinter(a.stderr, format, nil))
			if err != nil {
				return err
			}
			v := installer.NewPlan(cfg)
			v.ProfilePath, v.AcceptNewHostKeys = a.profile.value, a.acceptNewKeys
			v.Only, v.Nodes = selection(cmd, "only", only), selection(cmd, "nodes", nodes)
			v.ReEnrol, v.AcceptBootState = reEnrol, acceptBoot
			plans, err := v.Run(a.ctx)
			failed, failedNodes := planFailures(err)
			if format == report.JSON {
				for _, p := range plans {
					data, _ := json.Marshal(p)
					fmt.Fprintf(a.stdout, "%s\n", report.EscapeJSON(data))
				}
			} else if len(plans) > 0 || len(failed) > 0 {
				report.WritePlan(a.stdout, plans, failed, failedNodes)
			}
			if len(failed) > 0 || len(failedNodes) > 0 {
				// The phases that could not plan, and the nodes that
				// failed, were reported as events.
				return errAlreadyReported
			}
			return err
		},
	}
	a.profileFlag(cmd)
	a.agentFlags(cmd)
	cmd.Flags().BoolVar(&a.acceptNewKeys, "accept-new-host-keys", false, "show host keys known_hosts does not hold yet as keys apply would trust (plan never writes them)")
	a.outputFlag(cmd, "one plan per line")
	cmd.Flags().StringSliceVar(&only, "only", nil, "plan only these phases")
	cmd.Flags().StringSliceVar(&nodes, "nodes", nil, "plan only these nodes")
	cmd.Flags().StringArrayVar(&reEnrol, "re-enrol", nil, "plan as apply --re-enrol NODE would (repeatable): the node's new TPM accepted, a new key and certificate")
	cmd.Flags().StringArrayVar(&acceptBoot, "accept-boot-state", nil, "plan as apply --accept-boot-state NODE would (repeatable): the node's changed boot state accepted, so the plan shows what the run would then do to it")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

// planFailures lists, from a plan's error, the phases that could not plan
// and the nodes that failed outside any phase.
func planFailures(err error) (phases, nodes []string) {
	var pe *engine.PlanError
	var nf *engine.NodesFailedError
	for _, e := range unwrapAll(err) {
		switch {
		case errors.As(e, &pe):
			phases = append(phases, pe.Phase)
		case errors.As(e, &nf):
			nodes = append(nodes, nf.Nodes...)
		}
	}
	return phases, nodes
}
