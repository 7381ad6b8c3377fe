package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"castellan/installer"
	"castellan/installer/kube"
	"castellan/installer/profile"
	"castellan/phases/netpol"
)

// netpolCommand is `castellan netpol`: the network policies compiled from
// spec.netpol, explained, rendered, and planned against a cluster.
func (a *app) netpolCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "netpol",
		Short: "Explain, render and plan the network policies of spec.netpol",
		Long: `The profile declares openings per workload (spec.netpol.workloads and
spec.netpol.workloadFiles); castellan compiles each to a NetworkPolicy behind a
default-deny policy in every namespace that holds a workload or is listed in
spec.netpol.namespaces.`,
		Args: args(noArgs),
	}
	cmd.AddCommand(a.netpolExplainCommand(), a.netpolRenderCommand(), a.netpolPlanCommand())
	return cmd
}

// loadNetpol loads the profile as the offline netpol commands need it: SSH
// keys and known_hosts may be missing, the workload files may not.
func loadNetpol(ctx context.Context, path string) (*profile.Profile, *netpol.Compiled, error) {
	if path == "" {
		return nil, nil, &installer.InputError{Err: errors.New("no profile: give one with -f PROFILE")}
	}
	p, err := profile.LoadContext(ctx, path, profile.ValidateOptions{SkipFileChecks: true})
	if err != nil {
		return nil, nil, &installer.InputError{Err: err}
	}
	if err := p.ReadWorkloadFiles(ctx); err != nil {
		return nil, nil, &installer.InputError{Err: err}
	}
	c, err := netpol.Compile(netpol.InputFrom(p))
	if err != nil {
		return nil, nil, &installer.InputError{Err: err}
	}
	return p, c, nil
}

func (a *app) netpolExplainCommand() *cobra.Command {
	var file string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "explain -f PROFILE [WORKLOAD...]",
		Short: "Say who may reach each workload on which ports, and what it may reach",
		Long: `explain reads the profile alone (no cluster, no nodes) and says, for each
workload or the ones named (NAME or NAMESPACE/NAME), who may reach it on which
ports and what it may reach: in words, then as a table, then notes on what
castellan changed (the cluster DNS opening) and on what the other side must open.`,
		RunE: func(cmd *cobra.Command, names []string) error {
			_, c, err := loadNetpol(a.ctx, file)
			if err != nil {
				return err
			}
			e, err := c.Explain(names...)
			if err != nil {
				return usageError{err}
			}
			if asJSON {
				return e.WriteJSON(a.stdout)
			}
			if len(e.Workloads) == 0 {
				fmt.Fprintln(a.stdout, "The profile declares no workload (spec.netpol).")
				return nil
			}
			return e.WriteText(a.stdout)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the cluster profile (YAML)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	_ = cmd.MarkFlagRequired("file")
	cmd.ValidArgsFunction = func(cmd *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
		return netpolNames(cmd.Context(), file), cobra.ShellCompDirectiveNoFileComp
	}
	return cmd
}

func (a *app) netpolRenderCommand() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "render -f PROFILE",
		Short: "Print the compiled NetworkPolicies as YAML, exactly what apply sends",
		Long: `render prints every NetworkPolicy castellan would apply, as YAML documents
separated by ---, which kubectl apply -f - takes as they are. It reads the
profile alone.`,
		Args: args(noArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, c, err := loadNetpol(a.ctx, file)
			if err != nil {
				return err
			}
			return netpol.Render(a.stdout, c.Policies)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the cluster profile (YAML)")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func (a *app) netpolPlanCommand() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "plan -f PROFILE",
		Short: "Show, per object, what applying the policies would change in the cluster",
		Long: `plan reads the live NetworkPolicies of the cluster named by spec.cluster
(kubeconfig, context) and prints a diff per object that would be created,
updated or deleted (policies castellan made that the profile no longer
declares). It writes nothing; castellan apply applies them.`,
		Args: args(noArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, c, err := loadNetpol(a.ctx, file)
			if err != nil {
				return err
			}
			cfg, err := kube.FromProfile(p)
			if err != nil {
				if errors.Is(err, kube.ErrNoAccess) {
					return &installer.InputError{Err: err}
				}
				return err
			}
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return err
			}
			plan, err := (&netpol.Applier{Client: cs, Cluster: p.Metadata.Name}).Plan(a.ctx, c.Policies)
			if err != nil {
				return err
			}
			for _, ch := range plan.Changes {
				fmt.Fprintf(a.stdout, "%s\n%s\n", ch, ch.Diff)
			}
			fmt.Fprintf(a.stdout, "%d to create, %d to update, %d to delete, %d unchanged\n",
				count(plan, netpol.Create), count(plan, netpol.Update), count(plan, netpol.Delete), len(plan.Unchanged))
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the cluster profile (YAML)")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func count(p *netpol.Plan, action netpol.Action) int {
	n := 0
	for _, c := range p.Changes {
		if c.Action == action {
			n++
		}
	}
	return n
}

// netpolNames lists the workloads for shell completion.
func netpolNames(ctx context.Context, file string) []string {
	_, c, err := loadNetpol(ctx, file)
	if err != nil {
		return nil
	}
	var out []string
	for _, w := range c.Workloads {
		out = append(out, w.Name, w.Namespace+"/"+w.Name)
	}
	return out
}
