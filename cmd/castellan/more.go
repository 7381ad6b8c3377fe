package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"castellan/assets"
	"castellan/installer"
	"castellan/installer/buildinfo"
	"castellan/installer/engine"
	"castellan/installer/report"
)

func (a *app) planCommand() *cobra.Command {
	var only, nodes []string
	cmd := &cobra.Command{
		Use:   "plan -f PROFILE",
		Short: "Show what apply would change, per phase and node, touching nothing",
		Long: `plan connects to the nodes and asks each phase what it would change. It
changes nothing on any node. On nodes the castellan agent has not reached
yet, the preflight phase plans to install it, and phases that need the
node's facts say so.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := a.format()
			if err != nil {
				return err
			}
			// Events go to stderr: stdout holds the plan itself.
			o := a.options(report.NewPrinter(a.stderr, format, nil))
			o.Only, o.Nodes = only, nodes
			plans, err := installer.Plan(a.ctx, o)
			if format == report.JSON {
				for _, p := range plans {
					data, _ := json.Marshal(p)
					fmt.Fprintf(a.stdout, "%s\n", data)
				}
			} else if len(plans) > 0 {
				report.WritePlan(a.stdout, plans)
			}
			var pe *engine.PlanError
			if errors.As(err, &pe) {
				// A phase that could not plan was reported in the event stream.
				return errAlreadyReported
			}
			return err
		},
	}
	a.profileFlag(cmd)
	a.agentFlags(cmd)
	cmd.Flags().StringVarP(&a.output, "output", "o", "text", "output: text, or json (one plan per line)")
	cmd.Flags().StringSliceVar(&only, "only", nil, "plan only these phases")
	cmd.Flags().StringSliceVar(&nodes, "nodes", nil, "plan only these nodes")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func (a *app) validateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "validate -f PROFILE",
		Short: "Check a profile without connecting to anything",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := installer.Load(a.options(nil))
			if err != nil {
				return err
			}
			servers := len(p.Servers())
			fmt.Fprintf(a.stdout, "%s: valid: cluster %s, %d node(s) (%d server(s), %d agent(s)), state repo %s\n",
				a.profile, p.Metadata.Name, len(p.Spec.Nodes), servers, len(p.Spec.Nodes)-servers, p.Resolve(p.Spec.State.Repo))
			return nil
		},
	}
	a.profileFlag(cmd)
	cmd.Flags().BoolVar(&a.acceptNewKeys, "accept-new-host-keys", false, "allow a known_hosts file that does not exist yet")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func (a *app) stateFlags(cmd *cobra.Command, stateDir *string) {
	a.profileFlag(cmd)
	cmd.Flags().StringVar(stateDir, "state", "", "the state repo (default: the profile's spec.state.repo)")
}

func (a *app) historyCommand() *cobra.Command {
	var stateDir string
	cmd := &cobra.Command{
		Use:   "history (-f PROFILE | --state DIR)",
		Short: "List the runs recorded in the state repo, newest first",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := a.format()
			if err != nil {
				return err
			}
			dir, err := installer.StateDir(a.options(nil), stateDir)
			if err != nil {
				return err
			}
			entries, err := installer.History(dir)
			if err != nil {
				return err
			}
			if format == report.JSON {
				for _, e := range entries {
					data, _ := json.Marshal(map[string]any{"commit": e.Hash.String(), "run": e.Record})
					fmt.Fprintf(a.stdout, "%s\n", data)
				}
				return nil
			}
			report.WriteHistory(a.stdout, entries)
			return nil
		},
	}
	a.stateFlags(cmd, &stateDir)
	cmd.Flags().StringVarP(&a.output, "output", "o", "text", "output: text or json")
	return cmd
}

func (a *app) diffCommand() *cobra.Command {
	var stateDir string
	cmd := &cobra.Command{
		Use:   "diff REV [REV] (-f PROFILE | --state DIR)",
		Short: "Show what changed in the state between two runs (default: REV to the latest)",
		Long: `diff shows the profile, known_hosts and rendered files that differ between two
revisions: run numbers from castellan history, or git revisions of the state
repo. Secrets are listed by name only.`,
		Args: args(cobra.RangeArgs(1, 2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := installer.StateDir(a.options(nil), stateDir)
			if err != nil {
				return err
			}
			to := ""
			if len(args) == 2 {
				to = args[1]
			}
			d, err := installer.Diff(dir, args[0], to)
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
	a.stateFlags(cmd, &stateDir)
	return cmd
}

func (a *app) rollbackCommand() *cobra.Command {
	var to string
	var yes bool
	cmd := &cobra.Command{
		Use:   "rollback --to REV -f PROFILE",
		Short: "Apply the profile of an earlier run as a new run",
		Long: `rollback takes the profile recorded by run REV and applies it as a new run,
committed as a rollback; history is never rewritten. Key files and other
relative paths resolve against the directory of -f PROFILE.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := a.format()
			if err != nil {
				return err
			}
			if !yes && !isTerminal(a.stdin) {
				return usageError{errors.New("refusing to change nodes without confirmation: not a terminal; pass --yes")}
			}
			p, err := installer.Load(a.options(nil))
			if err != nil {
				return err
			}
			o := a.options(report.NewPrinter(a.stdout, format, nodeNames(p.Spec.Nodes, nil)))
			o.Profile = p
			if !yes {
				o.Confirm = a.confirm
			}
			res, err := installer.Rollback(a.ctx, a.interrupt, o, to)
			return a.finish(format, res, err)
		},
	}
	a.profileFlag(cmd)
	a.connectFlags(cmd)
	cmd.Flags().StringVar(&to, "to", "", "the run number (or state repo revision) to roll back to")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "roll back without asking")
	cmd.Flags().StringVarP(&a.output, "output", "o", "text", "output: text or json")
	_ = cmd.MarkFlagRequired("to")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func (a *app) profileCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "profile", Short: "Work with profiles"}
	var out string
	var force bool
	initCmd := &cobra.Command{
		Use:   "init [-o FILE]",
		Short: "Write a commented starter profile",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			data := assets.StarterProfile()
			if out == "" || out == "-" {
				_, err := a.stdout.Write(data)
				return err
			}
			flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
			if force {
				flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
			}
			f, err := os.OpenFile(out, flags, 0o644)
			if errors.Is(err, os.ErrExist) {
				return usageError{fmt.Errorf("%s exists; pass --force to overwrite it", out)}
			}
			if err != nil {
				return err
			}
			if _, err := f.Write(data); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "wrote %s: edit it, then castellan validate -f %s\n", out, out)
			return nil
		},
	}
	initCmd.Flags().StringVarP(&out, "output", "o", "", "file to write (default: standard output)")
	initCmd.Flags().BoolVar(&force, "force", false, "overwrite an existing file")
	cmd.AddCommand(initCmd)
	return cmd
}

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print castellan's version",
		Args:  args(cobra.NoArgs),
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(a.stdout, "castellan %s\n", buildinfo.Version())
		},
	}
}

// agentCommand is the node side: `castellan agent OP` reads JSON on stdin
// and writes one JSON response on stdout. Hidden: people never call it.
func (a *app) agentCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "agent OP",
		Short:  "Run a node-side operation (called by castellan over SSH)",
		Hidden: true,
		Args:   args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			log := a.agentLogger()
			// The first SIGTERM (a timed-out or aborted command) ends the operation.
			return installer.AgentRegistry().Serve(a.interrupt, args[0], a.stdin, a.stdout, log)
		},
	}
}
