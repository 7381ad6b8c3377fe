package ssh_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"testing"
	"time"

	castssh "castellan/installer/ssh"
	"castellan/installer/ssh/sshtest"
)

// BenchmarkConnectRun: connect to 1, 10 and 50 real sshd nodes at once and
// run one command on each (`go test -bench ConnectRun -run ^$ ./installer/ssh`).
// ns/op is the wall time of one round over all nodes; peak-RSS-MB the
// benchmark process's peak during the sub-benchmark (the lab's sshds are
// other processes).
func BenchmarkConnectRun(b *testing.B) {
	lab := sshtest.New(b, sshtest.Options{Nodes: 50})
	b.Logf("50-node lab set up in %s", lab.SetupTime.Round(time.Millisecond))
	cfg := lab.Config()
	cfg.Logger = slog.New(slog.DiscardHandler)
	for _, n := range []int{1, 10, 50} {
		hosts := sshtest.Hosts(lab.Nodes[:n])
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			ctx := context.Background()
			runtime.GC()
			if err := sshtest.ResetPeakRSS(); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if err := sshtest.ConnectAndRun(ctx, cfg, hosts, castssh.Cmd{Argv: []string{"true"}}); err != nil {
					b.Fatal(err)
				}
			}
			sshtest.ReportPeakRSS(b)
		})
	}
}

// BenchmarkRun: one command over an open connection, as the login user and
// as root through sudo (`go test -bench '^BenchmarkRun$' -run ^$
// ./installer/ssh`). ns/op is the latency of one remote exec, wrapper
// included: what a no-op run pays per node.
func BenchmarkRun(b *testing.B) {
	lab := sshtest.New(b, sshtest.Options{Nodes: 1})
	cfg := lab.Config()
	cfg.Logger = slog.New(slog.DiscardHandler)
	c, err := castssh.Connect(context.Background(), cfg, lab.Nodes[0].Host())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		name string
		cmd  castssh.Cmd
	}{
		{"user", castssh.Cmd{Argv: []string{"true"}}},
		{"sudo", castssh.Cmd{Argv: []string{"true"}, Sudo: true}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := c.Run(context.Background(), tc.cmd); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
