package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"castellan/installer"
	"castellan/installer/report"
)

func (a *app) validateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "validate -f PROFILE",
		Short: "Check a profile without connecting to anything",
		Args:  args(noArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.config(nil)
			if err != nil {
				return err
			}
			v := installer.NewValidate(cfg)
			v.ProfilePath, v.AcceptNewHostKeys = a.profile.value, a.acceptNewKeys
			p, err := v.Run()
			if err != nil {
				return err
			}
			servers := len(p.Servers())
			fmt.Fprintf(a.stdout, "%s: valid: cluster %s, %d node(s) (%d server(s), %d agent(s)), state repo %s\n",
				report.Clean(a.profile.value), p.Metadata.Name, len(p.Spec.Nodes), servers, len(p.Spec.Nodes)-servers, report.Clean(p.Resolve(p.Spec.State.Repo)))
			return nil
		},
	}
	a.profileFlag(cmd)
	cmd.Flags().BoolVar(&a.acceptNewKeys, "accept-new-host-keys", false, "allow a known_hosts file that does not exist yet")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}
