package sshtest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	castssh "castellan/installer/ssh"

	"golang.org/x/sync/errgroup"
)

// PeakRSS is the peak resident set size of this process since it started
// or since the last ResetPeakRSS, in bytes (VmHWM in /proc/self/status,
// proc(5)); 0 when it cannot be read.
func PeakRSS() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// ResetPeakRSS sets this process's peak RSS to its current RSS (writing 5
// to /proc/self/clear_refs, proc(5), Linux 4.0 and later), so that
// PeakRSS then measures one part of a benchmark rather than everything
// before it (the lab's setup, earlier sub-benchmarks).
func ResetPeakRSS() error {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return fmt.Errorf("resetting the peak RSS: %w", err)
	}
	return nil
}

// ReportPeakRSS adds the process's peak RSS since the last ResetPeakRSS
// to the benchmark's metrics.
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
