package sshtest

import (
	"context"
	"fmt"
	"syscall"
	"testing"

	castssh "castellan/installer/ssh"

	"golang.org/x/sync/errgroup"
)

// PeakRSS is the peak resident set size of this process so far, in bytes
// (getrusage ru_maxrss).
func PeakRSS() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Maxrss * 1024
}

// ReportPeakRSS adds the process's peak RSS to the benchmark's metrics.
func ReportPeakRSS(b *testing.B) {
	b.ReportMetric(float64(PeakRSS())/(1<<20), "peak-RSS-MB")
}

// ConnectAndRun opens a Pool with cfg, runs cmd on every host at once (one
// connection each) and closes the pool: the cost of "reach every node and
// ask one thing", which benchmarks measure.
func ConnectAndRun(ctx context.Context, cfg castssh.Config, hosts []castssh.Host, cmd castssh.Cmd) error {
	pool, err := castssh.NewPool(cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	var g errgroup.Group
	for _, h := range hosts {
		g.Go(func() error {
			if _, err := pool.Run(ctx, h, cmd); err != nil {
				return fmt.Errorf("%s: %w", h, err)
			}
			return nil
		})
	}
	return g.Wait()
}
