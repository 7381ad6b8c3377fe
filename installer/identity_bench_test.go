package installer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"castellan/installer/engine"
)

// BenchmarkNoOpRerunIdentityCost prints what the identity phase adds to a
// no-op rerun (prompted plan + apply, one session) over real sshd nodes
// with the real agent: the same rerun with --only preflight and with every
// phase, and the remote execs per node of each (the identity observation
// travels in preflight's exec). insecure-skip: the test machine has no TPM,
// so the node side reads no TPM here (see phases/identity's BenchmarkPhase
// for the TPM commands on swtpm).
func BenchmarkNoOpRerunIdentityCost(b *testing.B) {
	for _, n := range []int{1, 10} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			lab := newLab(b, n)
			prof := testCluster(b, lab, "", "")
			if _, err := applyYes(b, testConfig(b, lab, nil), prof); err != nil {
				b.Fatal(err)
			}
			rerun := func(only []string) (time.Duration, int) {
				a := NewApply(testConfig(b, lab, &engine.Recorder{}))
				a.ProfilePath, a.Only = prof, only
				start := time.Now()
				p, err := a.Prepare(context.Background(), true)
				if err != nil || p.Err() != nil || p.Changes() != 0 {
					b.Fatalf("prepare: %v %v, %d changes", err, p.Err(), p.Changes())
				}
				access := p.access
				if _, err := p.Apply(context.Background()); err != nil {
					b.Fatal(err)
				}
				return time.Since(start), access.execCount(lab.Nodes[0].Name)
			}
			var pre, all time.Duration
			var preExecs, allExecs int
			for b.Loop() {
				d, e := rerun([]string{"preflight"})
				pre, preExecs = pre+d, preExecs+e
				d, e = rerun(nil)
				all, allExecs = all+d, allExecs+e
			}
			iters := time.Duration(b.N)
			b.ReportMetric(float64(pre/iters)/1e6, "ms/rerun-preflight-only")
			b.ReportMetric(float64(all/iters)/1e6, "ms/rerun-with-identity")
			b.ReportMetric(float64(allExecs-preExecs)/float64(b.N), "extra-execs/node")
			b.Logf("%d node(s): no-op rerun --only preflight %v (%d exec/node), all phases %v (%d exec/node)",
				n, pre/iters, preExecs/b.N, all/iters, allExecs/b.N)
		})
	}
}
