package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"castellan/installer"
	"castellan/installer/report"
)

func (a *app) historyCommand() *cobra.Command {
	var stateDir onceString
	cmd := &cobra.Command{
		Use:   "history (-f PROFILE | --state DIR)",
		Short: "List the runs recorded in the state repo, newest first",
		Args:  args(noArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := a.format()
			if err != nil {
				return err
			}
			cfg, err := a.config(nil)
			if err != nil {
				return err
			}
			v := installer.NewHistory(cfg)
			v.ProfilePath, v.StateDir = a.profile.value, stateDir.value
			entries, open, err := v.Run()
			if err != nil {
				return err
			}
			if format == report.JSON {
				if open != nil {
					data, _ := json.Marshal(map[string]any{"commit": nil, "run": open})
					fmt.Fprintf(a.stdout, "%s\n", report.EscapeJSON(data))
				}
				for _, e := range entries {
					data, _ := json.Marshal(map[string]any{"commit": e.Hash.String(), "run": e.Record})
					fmt.Fprintf(a.stdout, "%s\n", report.EscapeJSON(data))
				}
				return nil
			}
			report.WriteHistory(a.stdout, entries, open)
			return nil
		},
	}
	a.profileFlag(cmd)
	cmd.Flags().Var(&stateDir, "state", "the state repo (instead of -f: the profile's spec.state.repo)")
	a.outputFlag(cmd, "one run per line")
	return cmd
}
