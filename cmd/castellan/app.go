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
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"castellan/installer"
	"castellan/installer/engine"
	"castellan/installer/report"
)

// app holds what every command shares: standard streams, the contexts, and
// the flags common to several commands.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	ctx, interrupt context.Context

	logLevel      string
	profile       onceString
	output        onceString
	identityFile  onceString
	acceptNewKeys bool
	agentBinaries []string
	parallel      int
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
			return usageError{fmt.Errorf("%w\nusage: %s (%s --help says more)", err, cmd.UseLine(), cmd.CommandPath())}
		}
		return nil
	}
}

// noArgs refuses arguments to a command that takes none: for a command
// with subcommands, as an unknown subcommand (cobra's message); for one
// without, as an argument it does not take (cobra would call it an
// "unknown command" too).
func noArgs(cmd *cobra.Command, a []string) error {
	if len(a) == 0 {
		return nil
	}
	if cmd.HasSubCommands() {
		return cobra.NoArgs(cmd, a)
	}
	return fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), a[0])
}

// onceString is a string flag that may be given once: a repeated flag (-f A
// -f B) is an error instead of silently keeping the last.
type onceString struct {
	value string
	set   bool
	def   string
}

func (o *onceString) String() string {
	if !o.set {
		return o.def
	}
	return o.value
}

func (o *onceString) Set(v string) error {
	if o.set {
		return fmt.Errorf("given twice (%q and %q): give it once", o.value, v)
	}
	o.value, o.set = v, true
	return nil
}

func (o *onceString) Type() string { return "string" }

var _ pflag.Value = (*onceString)(nil)

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "castellan",
		Short: "Build a zero-trust RKE2 cluster from one profile",
		Long: `castellan turns plain Linux VMs into a zero-trust Kubernetes (RKE2) cluster:
TPM-resident node identities, LUKS2 data disks unlocked by the TPM, a WireGuard
mesh with a closed underlay, Calico with default-deny, Keycloak, Kafka and
Postgres with internal TLS. Every run is committed to a git state repo.

In a terminal, castellan alone opens the interactive TUI (castellan -f
cluster.yaml opens that profile): write the profile, review the plan, watch
the install, browse the history and roll back.

Start with:  castellan profile init -o cluster.yaml
Then:        castellan validate -f cluster.yaml
             castellan plan -f cluster.yaml
             castellan apply -f cluster.yaml`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          args(noCommand),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runTUI(cmd)
		},
	}
	a.tuiFlags(root)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		// "castellan netpol rendr -f x": the misspelt command is the
		// mistake, not the flag that belongs to the command meant.
		if cmd.HasSubCommands() && len(cmd.Flags().Args()) > 0 {
			return usageError{noCommand(cmd, cmd.Flags().Args())}
		}
		return usageError{err}
	})
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "warn", "log level on stderr: debug, info, warn, error")
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		var lvl slog.Level
		if err := lvl.UnmarshalText([]byte(a.logLevel)); err != nil {
			return usageError{fmt.Errorf("--log-level %q: use debug, info, warn or error", a.logLevel)}
		}
		return nil
	}
	root.AddCommand(a.applyCommand(), a.planCommand(), a.validateCommand(), a.historyCommand(), a.diffCommand(),
		a.rollbackCommand(), a.profileCommand(), a.versionCommand(), a.agentCommand(), a.verifyCommand())
	root.AddCommand(a.netpolCommand())
	// The completion command groupCommands adds writes where root writes
	// when it is added.
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	groupCommands(root)
	return root
}

// groupCommands makes every command that only groups others (profile,
// netpol, completion) print its help when called alone and refuse anything
// else as a usage error (exit code 2). Cobra's default for such a command is
// to print its help and exit 0 whatever follows it, so a misspelt command
// ("castellan netpol rendr") looked like success.
func groupCommands(root *cobra.Command) {
	// Added here rather than by Execute, so that it is a group like the others.
	root.InitDefaultCompletionCmd()
	root.SuggestionsMinimumDistance = 2
	var walk func(*cobra.Command)
	walk = func(parent *cobra.Command) {
		for _, c := range parent.Commands() {
			if c.HasSubCommands() && !c.Runnable() {
				c.Args = args(noCommand)
				c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
				c.SuggestionsMinimumDistance = 2
			}
			walk(c)
		}
	}
	walk(root)
}

// noCommand accepts no positional argument: the first one given is an
// unknown command of cmd, reported with the closest command's name, or with
// cmd's commands when none is close.
func noCommand(cmd *cobra.Command, a []string) error {
	if len(a) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", a[0], cmd.CommandPath())
	if s := cmd.SuggestionsFor(a[0]); len(s) > 0 {
		return fmt.Errorf("%s; did you mean %s?", msg, strings.Join(s, " or "))
	}
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	if len(names) == 0 {
		return errors.New(msg)
	}
	return fmt.Errorf("%s; its commands are: %s", msg, strings.Join(names, ", "))
}

// logger logs text on stderr at --log-level.
func (a *app) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: a.level()}))
}

func (a *app) level() slog.Level {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(a.logLevel)); err != nil {
		lvl = slog.LevelWarn
	}
	return lvl
}

func (a *app) profileFlag(cmd *cobra.Command) {
	cmd.Flags().VarP(&a.profile, "file", "f", "the cluster profile (YAML)")
}

func (a *app) outputFlag(cmd *cobra.Command, what string) {
	a.output.def = "text"
	cmd.Flags().VarP(&a.output, "output", "o", "output: text, or json ("+what+")")
}

// agentFlags are the flags of every command that talks to nodes.
func (a *app) agentFlags(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&a.agentBinaries, "agent-binary", nil, "agent binary (castellan-agent) to ship to nodes of another architecture (repeatable)")
	cmd.Flags().IntVar(&a.parallel, "parallel", 0, fmt.Sprintf("how many nodes each step works on at once (default %d)", engine.DefaultParallelism))
	cmd.Flags().Var(&a.identityFile, "identity", "age identity file for the state repo's secrets (default $CASTELLAN_AGE_IDENTITY or ~/.config/castellan/age-identity.txt)")
}

// selection returns a --only/--nodes value for the installer: nil when the
// flag was not given (everything), the list otherwise (an empty one is an
// error the installer reports).
func selection(cmd *cobra.Command, name string, v []string) []string {
	if !cmd.Flags().Changed(name) {
		return nil
	}
	if v == nil {
		return []string{}
	}
	return v
}

// config is the shared configuration injected into every verb.
func (a *app) config(sink engine.Sink) (*installer.Config, error) {
	if a.parallel < 0 {
		return nil, usageError{fmt.Errorf("--parallel %d: give a positive number of nodes", a.parallel)}
	}
	if p := a.identityFile.value; p != "" {
		if fi, err := os.Stat(p); err == nil && !fi.Mode().IsRegular() {
			return nil, usageError{fmt.Errorf("--identity %s is not a regular file: give the age identity file", p)}
		} else if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, usageError{fmt.Errorf("--identity %s: %w", p, err)}
		}
	}
	return &installer.Config{
		Sink:          sink,
		Logger:        a.logger(),
		Notice:        noticeWriter{a.stderr},
		AgentBinaries: a.agentBinaries,
		Parallelism:   a.parallel,
		IdentityFile:  a.identityFile.value,
		Interrupt:     a.interrupt,
	}, nil
}

// noticeWriter escapes what it passes on: notices may quote paths and
// values from the profile.
type noticeWriter struct{ w io.Writer }

func (n noticeWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(n.w, report.Clean(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (a *app) format() (report.Format, error) {
	f, err := report.ParseFormat(a.output.String())
	if err != nil {
		return "", usageError{err}
	}
	return f, nil
}

func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// confirm shows a prepared run's plan and asks. A plan that failed is not
// asked about: Apply then records it as a failed run.
func (a *app) confirm(p *installer.Pending) (bool, error) {
	failed, failedNodes := planFailures(p.Err())
	report.WritePlan(a.stdout, p.Plans(), failed, failedNodes)
	if p.Err() != nil {
		fmt.Fprintln(a.stdout, "Nothing will be applied; the failed plan is recorded in the state repo.")
		return true, nil
	}
	if p.Changes() == 0 {
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

func unwrapAll(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// runPending asks (unless yes) and runs a prepared run, then prints its
// summary.
func (a *app) runPending(format report.Format, p *installer.Pending, yes bool) error {
	if !yes {
		ok, err := a.confirm(p)
		if err != nil || !ok {
			p.Close()
			if err == nil {
				err = installer.ErrAborted
			}
			return err
		}
	}
	res, err := p.Apply(a.ctx)
	return a.finish(format, res, err)
}

// finish prints a run's summary and maps its outcome to an error.
func (a *app) finish(format report.Format, res *installer.Result, err error) error {
	if res == nil {
		return err
	}
	if format == report.JSON {
		data, jerr := json.Marshal(map[string]any{"result": res.Record, "commit": res.Commit, "stateDir": res.StateDir})
		if jerr == nil {
			fmt.Fprintf(a.stdout, "%s\n", report.EscapeJSON(data))
		}
	} else {
		report.WriteSummary(a.stdout, res.Record, res.StateDir, res.Commit)
	}
	var re *installer.RunError
	if errors.As(err, &re) {
		return errAlreadyReported
	}
	return err
}
