package engine

import (
	"context"
	"fmt"
	"testing"
)

// noopPhase observes every node and finds nothing to change: the cost of a
// plan is then the engine's own (scheduling, events, bookkeeping).
type noopPhase struct{ name string }

func (p noopPhase) Name() string { return p.name }

func (p noopPhase) Plan(ctx context.Context, r *Run) (Plan, error) {
	return Plan{}, r.ForEachNode(ctx, r.NodeNames(), "observe", func(context.Context, string) error { return nil })
}

func (p noopPhase) Apply(context.Context, *Run, Plan) error { return nil }

// BenchmarkPlan reports plan time for 1, 10 and 100 nodes with a set of
// no-op phases (as many as castellan will have).
func BenchmarkPlan(b *testing.B) {
	var phases []Phase
	for _, n := range []string{"preflight", "identity", "diskcrypt", "mesh", "rke2", "calico", "netpol", "certmanager", "keycloak", "kafka", "postgres"} {
		phases = append(phases, noopPhase{n})
	}
	for _, nodes := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			e := &Engine{Phases: phases, Sink: &Recorder{}}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.PlanAll(context.Background(), testRun(nodes), phases); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
