package engine

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ForEachNode runs fn for each named node with bounded parallelism, emitting
// step events, and returns NodeErrors for the nodes that failed. Once the run
// is interrupted (or ctx ends), no further node is started; those nodes are
// counted as interrupted without an event each. A node's first error is
// reported in full once; a node the run found unavailable is reported by
// reference.
func (v *View) ForEachNode(ctx context.Context, nodes []string, step string, fn func(ctx context.Context, node string) error) error {
	sem := make(chan struct{}, max(v.cfg.Parallelism, 1))
	var stop <-chan struct{}
	if v.cfg.Interrupt != nil {
		stop = v.cfg.Interrupt.Done()
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := NodeErrors{}
	for i, node := range nodes {
		// A node is started only once it has a slot, and an interrupt that
		// comes while waiting for one keeps it (and every later node) from
		// starting.
		var why error
		select {
		case sem <- struct{}{}:
			switch {
			case v.interrupted():
				why = ErrInterrupted
			case ctx.Err() != nil:
				why = ctx.Err()
			}
			if why != nil {
				<-sem
			}
		case <-stop:
			why = ErrInterrupted
		case <-ctx.Done():
			why = ctx.Err()
		}
		if why != nil {
			mu.Lock()
			for _, rest := range nodes[i:] {
				errs[rest] = why
				v.outcomes.set(rest, OutcomeInterrupted)
			}
			mu.Unlock()
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			start := time.Now()
			v.Emit(Event{Kind: KindStep, Node: node, Step: step, Status: StatusStarted})
			err := fn(ctx, node)
			if err == nil {
				v.outcomes.set(node, OutcomeOK)
				v.Emit(Event{Kind: KindStep, Node: node, Step: step, Status: StatusDone, Elapsed: time.Since(start)})
				return
			}
			mu.Lock()
			errs[node] = err
			mu.Unlock()
			v.reportNodeFailure(node, step, err, time.Since(start))
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// reportNodeFailure emits the failure of a node's step: in full the first
// time the node fails, by reference when it was reported before (a node
// found unavailable), and quietly (no message) when it was interrupted.
func (v *View) reportNodeFailure(node, step string, err error, elapsed time.Duration) {
	if interrupted(err) {
		v.outcomes.set(node, OutcomeInterrupted)
		v.Emit(Event{Kind: KindStep, Node: node, Step: step, Status: StatusInterrupted, Elapsed: elapsed})
		return
	}
	v.outcomes.set(node, OutcomeFailed)
	var un *NodeUnavailableError
	if errors.As(err, &un) {
		v.Emit(Event{Kind: KindStep, Node: node, Step: step, Status: StatusFailed, Message: "unavailable (reported above)", Ref: un.Ref, Elapsed: elapsed})
		return
	}
	v.mu.Lock()
	prior := v.reported[node]
	v.mu.Unlock()
	if prior != nil && errors.Is(err, prior.err) {
		v.Emit(Event{Kind: KindStep, Node: node, Step: step, Status: StatusFailed, Message: "failed (reported above)", Ref: prior.seq, Elapsed: elapsed})
		return
	}
	seq := v.Emit(Event{Kind: KindStep, Node: node, Step: step, Status: StatusFailed, Message: err.Error(), Elapsed: elapsed})
	v.mu.Lock()
	if v.reported[node] == nil {
		v.reported[node] = &failure{err: err, seq: seq}
	}
	v.mu.Unlock()
}

// NodeNames returns the names of the run's targeted nodes in profile order.
func (v *View) NodeNames() []string { return v.Session.NodeNames() }
