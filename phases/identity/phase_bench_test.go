package identity

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"castellan/installer/engine"
	"castellan/installer/engine/enginetest"
)

// BenchmarkPhase prints what the identity phase costs through the engine,
// each node a real swtpm behind the fake transport (no SSH): the first
// apply (CA creation, then one enrolment session per node, in parallel),
// and what the phase adds to a no-op rerun: its batched read-only
// observation (no extra exec: it travels in the one exec per node) and its
// plan. It also prints the TPM commands a no-op rerun sends per node (none
// creates anything).
func BenchmarkPhase(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			c := newSWTPMCluster(b)
			var names []string
			for i := range n {
				name := fmt.Sprintf("n%d", i+1)
				names = append(names, name)
				c.attach(name, newRig(b, c.ca), "")
			}
			prof := c.profile("", names...)
			var first, rerun time.Duration
			var execs, commands int
			for b.Loop() {
				c.store = enginetest.NewMemStore()
				for _, name := range names {
					c.attach(name, c.tpm(name).rig, filepath.Join(b.TempDir(), "identity"))
				}
				start := time.Now()
				r := c.apply(Phase{}, prof, nil, engine.Inputs{}, true)
				first += time.Since(start)
				if r.res.Outcome != engine.OutcomeOK {
					b.Fatalf("first apply: %+v", r.res)
				}
				c.resetRecorders()
				before := c.nodes.Execs(names[0])
				start = time.Now()
				r = c.apply(Phase{}, prof, nil, engine.Inputs{}, true)
				rerun += time.Since(start)
				if r.res.Outcome != engine.OutcomeUnchanged {
					b.Fatalf("rerun: %+v", r.res)
				}
				execs += c.nodes.Execs(names[0]) - before
				if cr := c.created(names[0]); len(cr) != 0 {
					b.Fatalf("the no-op rerun created %v", cr)
				}
				for _, k := range c.tpm(names[0]).rec.Counts() {
					commands += k
				}
			}
			iters := time.Duration(b.N)
			b.ReportMetric(float64(first/iters/time.Duration(n))/1e6, "ms/node-first-apply")
			b.ReportMetric(float64(rerun/iters/time.Duration(n))/1e6, "ms/node-no-op-rerun")
			b.ReportMetric(float64(execs)/float64(b.N), "execs/node-no-op-rerun")
			b.ReportMetric(float64(commands)/float64(b.N), "TPM-commands/node-no-op-rerun")
			b.Logf("%d node(s) on swtpm: first apply %v (%v per node), no-op rerun %v, %d exec(s) per node for plan+apply, %d TPM commands per node (%v)",
				n, first/iters, first/iters/time.Duration(n), rerun/iters, execs/b.N, commands/b.N, c.tpm(names[0]).rec.Counts())
		})
	}
}
