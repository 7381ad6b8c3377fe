package engine_test

import (
	"context"
	"fmt"
	"testing"

	"castellan/installer/engine"
)

// BenchmarkPlan reports plan time for 1, 10 and 100 nodes with a set of
// no-op phases (as many as castellan will have).
func BenchmarkPlan(b *testing.B) {
	var ps []engine.Phase
	for _, n := range []string{"preflight", "identity", "diskcrypt", "mesh", "rke2", "calico", "netpol", "certmanager", "keycloak", "kafka", "postgres"} {
		ps = append(ps, &fakePhase{name: n, plan: func(ctx context.Context, v *engine.View) (engine.Plan, error) {
			return engine.Plan{}, v.ForEachNode(ctx, v.NodeNames(), "observe", func(context.Context, string) error { return nil })
		}})
	}
	for _, nodes := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			e := &engine.Engine{Phases: ps}
			b.ReportAllocs()
			for b.Loop() {
				f := newFixture(b, nodes, engine.SessionConfig{})
				if _, err := e.PlanAll(context.Background(), f.session, ps); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
