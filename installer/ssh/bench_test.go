package ssh_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	castssh "castellan/installer/ssh"
	"castellan/installer/ssh/sshtest"
)

// BenchmarkConnectRun: connect to 1, 10 and 50 real sshd nodes at once and
// run one command on each (`go test -bench ConnectRun -run ^$ ./installer/ssh`).
// ns/op is the wall time of one round over all nodes.
func BenchmarkConnectRun(b *testing.B) {
	lab := sshtest.New(b, sshtest.Options{Nodes: 50})
	b.Logf("50-node lab set up in %s", lab.SetupTime.Round(time.Millisecond))
	cfg := lab.Config()
	cfg.Logger = slog.New(slog.DiscardHandler)
	for _, n := range []int{1, 10, 50} {
		hosts := sshtest.Hosts(lab.Nodes[:n])
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			ctx := context.Background()
			for b.Loop() {
				if err := sshtest.ConnectAndRun(ctx, cfg, hosts, castssh.Cmd{Argv: []string{"true"}}); err != nil {
					b.Fatal(err)
				}
			}
			sshtest.ReportPeakRSS(b)
		})
	}
}
