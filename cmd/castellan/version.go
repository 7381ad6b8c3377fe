package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"castellan/installer/buildinfo"
)

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print castellan's version",
		Args:  args(noArgs),
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(a.stdout, "castellan %s\n", buildinfo.Version())
		},
	}
}
