package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"castellan/installer"
	"castellan/installer/engine"
	"castellan/installer/profile"
	"castellan/installer/report"
)

// app holds what every command shares: standard streams and the contexts.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	ctx, interrupt context.Context

	// common flags
	profile       string
	output        string
	logLevel      string
	identityFile  string
	acceptNewKeys bool
	agentBinaries []string
}

// usageError is a bad flag or argument: exit code 2.
type usageError struct{ error }

// errAlreadyReported means the failure was printed already (exit code 1).
var errAlreadyReported = errors.New("failed")

// isCobraUsage recognises the two usage errors cobra makes that pass through
// no hook of ours (flag and argument errors are wrapped in usageError).
func isCobraUsage(err error) bool {
	msg := err.Error()
	return strings.HasPrefix(msg, "unknown command ") || strings.HasPrefix(msg, "required flag(s) ")
}

// args wraps a cobra argument check so that its errors are usage errors.
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := check(cmd, a); err != nil {
			return usageError{err}
		}
		return nil
	}
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "castellan",
		Short: "Build a zero-trust RKE2 cluster from one profile",
		Long: `castellan turns plain Linux VMs into a zero-trust Kubernetes (RKE2) cluster:
TPM-resident node identities, LUKS2 data disks unlocked by the TPM, a WireGuard
mesh with a closed underlay, Calico with default-deny, Keycloak, Kafka and
Postgres with internal TLS. Every run is committed to a git state repo.

Start with:  castellan profile init -o cluster.yaml
Then:        castellan validate -f cluster.yaml
             castellan plan -f cluster.yaml
             castellan apply -f cluster.yaml`,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			// The interactive TUI comes with a later release; until then
			// bare castellan prints help, in a terminal or not.
			return cmd.Help()
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "warn", "log level on stderr: debug, info, warn, error")
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		var lvl slog.Level
		if err := lvl.UnmarshalText([]byte(a.logLevel)); err != nil {
			return usageError{fmt.Errorf("--log-level %q: use debug, info, warn or error", a.logLevel)}
		}
		return nil
	}
	root.AddCommand(a.applyCommand(), a.planCommand(), a.validateCommand(), a.historyCommand(), a.diffCommand(),
		a.rollbackCommand(), a.profileCommand(), a.versionCommand(), a.agentCommand())
	root.AddCommand(a.netpolCommand())
	return root
}

// logger logs text on stderr at --log-level.
func (a *app) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: a.level()}))
}

// agentLogger logs JSON on stderr; when an operation fails, its tail is in
// the error the installer reports.
func (a *app) agentLogger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(a.stderr, &slog.HandlerOptions{Level: a.level()}))
}

func (a *app) level() slog.Level {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(a.logLevel)); err != nil {
		lvl = slog.LevelWarn
	}
	return lvl
}

func (a *app) profileFlag(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&a.profile, "file", "f", "", "the cluster profile (YAML)")
}

// connectFlags are the flags of commands that change nodes.
func (a *app) connectFlags(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&a.acceptNewKeys, "accept-new-host-keys", false, "record host keys of nodes known_hosts does not know yet (never changed ones); they are committed to the state repo")
	a.agentFlags(cmd)
}

// agentFlags are the flags of every command that talks to nodes (plan too).
func (a *app) agentFlags(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&a.agentBinaries, "agent-binary", nil, "castellan binary to ship to nodes of another architecture (repeatable)")
	cmd.Flags().StringVar(&a.identityFile, "identity", "", "age identity file for the state repo's secrets (default $CASTELLAN_AGE_IDENTITY or ~/.config/castellan/age-identity.txt)")
}

func (a *app) options(sink engine.Sink) installer.Options {
	return installer.Options{
		ProfilePath:       a.profile,
		AcceptNewHostKeys: a.acceptNewKeys,
		AgentBinaries:     a.agentBinaries,
		IdentityFile:      a.identityFile,
		Sink:              sink,
		Logger:            a.logger(),
		Notice:            a.stderr,
	}
}

func (a *app) format() (report.Format, error) {
	f, err := report.ParseFormat(a.output)
	if err != nil {
		return "", usageError{err}
	}
	return f, nil
}

func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (a *app) applyCommand() *cobra.Command {
	var yes bool
	var only, nodes []string
	cmd := &cobra.Command{
		Use:   "apply -f PROFILE",
		Short: "Bring the nodes to the profile (and commit the run to the state repo)",
		Long: `apply plans each phase against the nodes and applies the changes, phase by
phase. A phase with nothing to change is skipped, so a rerun of an applied
profile changes nothing. Every run, failed ones too, is one commit in the
state repo. Without --yes, apply shows the plan and asks first (in a terminal).
Ctrl-C stops between steps; a second Ctrl-C aborts the running ones.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := a.format()
			if err != nil {
				return err
			}
			p, err := installer.Load(a.options(nil))
			if err != nil {
				return err
			}
			if !yes && !isTerminal(a.stdin) {
				return usageError{errors.New("refusing to change nodes without confirmation: not a terminal; review `castellan plan` and pass --yes")}
			}
			printer := report.NewPrinter(a.stdout, format, nodeNames(p.Spec.Nodes, nodes))
			o := a.options(printer)
			o.Profile, o.Only, o.Nodes = p, only, nodes
			if !yes {
				o.Confirm = a.confirm
			}
			res, err := installer.Apply(a.ctx, a.interrupt, o)
			return a.finish(format, res, err)
		},
	}
	a.profileFlag(cmd)
	a.connectFlags(cmd)
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "apply without asking")
	cmd.Flags().StringVarP(&a.output, "output", "o", "text", "output: text, or json (one event per line)")
	cmd.Flags().StringSliceVar(&only, "only", nil, "run only these phases (comma-separated or repeated)")
	cmd.Flags().StringSliceVar(&nodes, "nodes", nil, "act only on these nodes")
	_ = cmd.MarkFlagRequired("file")
	_ = cmd.RegisterFlagCompletionFunc("only", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return phaseNames(), cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

func phaseNames() []string {
	var out []string
	for _, p := range installer.Phases() {
		out = append(out, p.Name())
	}
	return out
}

func (a *app) confirm(plans []engine.Plan) (bool, error) {
	report.WritePlan(a.stdout, plans)
	changes := 0
	for _, p := range plans {
		changes += len(p.Changes)
	}
	if changes == 0 {
		return true, nil
	}
	fmt.Fprint(a.stdout, "Apply these changes? [y/N] ")
	line, err := bufio.NewReader(a.stdin).ReadString('\n')
	if err != nil && line == "" {
		return false, nil
	}
	ans := strings.ToLower(strings.TrimSpace(line))
	return ans == "y" || ans == "yes", nil
}

// finish prints a run's summary and maps its outcome to an error.
func (a *app) finish(format report.Format, res *installer.Result, err error) error {
	if res == nil {
		return err
	}
	if format == report.JSON {
		data, jerr := json.Marshal(map[string]any{"result": res.Record, "commit": res.Commit, "stateDir": res.StateDir})
		if jerr == nil {
			fmt.Fprintf(a.stdout, "%s\n", data)
		}
	} else {
		report.WriteSummary(a.stdout, res.Record, res.StateDir, res.Commit)
	}
	if err != nil {
		return errAlreadyReported
	}
	return nil
}

// nodeNames are the names of the nodes a run targets (all when only is empty).
func nodeNames(nodes []profile.Node, only []string) []string {
	var out []string
	for _, n := range nodes {
		if len(only) == 0 || slices.Contains(only, n.Name) {
			out = append(out, n.Name)
		}
	}
	return out
}
