package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"castellan/assets"
	"castellan/installer"
	"castellan/installer/profile"
)

func (a *app) profileCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "profile", Short: "Work with profiles"}
	var out onceString
	var force bool
	initCmd := &cobra.Command{
		Use:   "init [-o FILE]",
		Short: "Write a commented starter profile",
		Args:  args(noArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			data := assets.StarterProfile()
			if out.value == "" || out.value == "-" {
				_, err := a.stdout.Write(data)
				return err
			}
			flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
			if force {
				flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
			}
			if st, err := os.Stat(out.value); err == nil && st.IsDir() {
				return usageError{fmt.Errorf("-o %s is a directory: name a file, such as %s", out.value, filepath.Join(out.value, "cluster.yaml"))}
			}
			f, err := os.OpenFile(out.value, flags, 0o644)
			switch {
			case errors.Is(err, os.ErrExist):
				return usageError{fmt.Errorf("%s exists; pass --force to overwrite it", out.value)}
			case errors.Is(err, os.ErrNotExist):
				return usageError{fmt.Errorf("-o %s: the directory %s does not exist: create it, or name a file in one that does", out.value, filepath.Dir(out.value))}
			case errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ENOTDIR):
				return usageError{fmt.Errorf("-o %s: %w: name a file in a directory that exists", out.value, errors.Unwrap(err))}
			case err != nil:
				return err
			}
			if _, err := f.Write(data); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "wrote %s: edit it, then castellan validate -f %s\n", out.value, out.value)
			return nil
		},
	}
	initCmd.Flags().VarP(&out, "output", "o", "file to write (default: standard output)")
	initCmd.Flags().BoolVar(&force, "force", false, "overwrite an existing file")
	cmd.AddCommand(initCmd)
	return cmd
}

// nodeNames are the names of the nodes a run targets (all when only is nil).
func nodeNames(p *profile.Profile, only []string) []string {
	var out []string
	for _, n := range p.Spec.Nodes {
		if only == nil || contains(only, n.Name) {
			out = append(out, n.Name)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func phaseNames() []string {
	var out []string
	for _, p := range installer.Phases() {
		out = append(out, p.Name())
	}
	return out
}
