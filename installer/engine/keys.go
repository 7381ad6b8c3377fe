package engine

import (
	"encoding/json"
	"fmt"
	"sort"
)

// Key names a typed output that one phase produces and later phases read:
// preflight's facts, identity's node certificates, the mesh's addresses, the
// cluster's kubeconfig. The key is declared next to its type in a package
// both sides can import (never in the producing phase's package, since phases
// do not import each other); only the owning phase may publish under it.
//
// Values are per node; cluster-wide values use the node "".
type Key[T any] struct {
	owner, name string
	record      bool
}

// NewKey declares the output name of the phase owner. Recorded outputs are
// also written into the run record (JSON); never record a secret.
func NewKey[T any](owner, name string, recorded bool) Key[T] {
	return Key[T]{owner: owner, name: name, record: recorded}
}

// String is "owner.name".
func (k Key[T]) String() string { return k.owner + "." + k.name }

// Owner is the phase that publishes this output.
func (k Key[T]) Owner() string { return k.owner }

// outputs holds a run's published outputs.
type outputs struct {
	values  map[string]map[string]any // key -> node -> value
	records map[string]bool
}

// Publish records the value of k for node. It fails when v belongs to a
// phase other than k's owner.
func Publish[T any](v *View, k Key[T], node string, value T) error {
	if v.phase != k.owner {
		return fmt.Errorf("engine: phase %q cannot publish %s: it belongs to phase %q", v.phase, k, k.owner)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	m := v.out.values[k.String()]
	if m == nil {
		m = map[string]any{}
		v.out.values[k.String()] = m
	}
	m[node] = value
	if k.record {
		v.out.records[k.String()] = true
	}
	return nil
}

// Lookup returns the value of k for node published earlier in this run.
func Lookup[T any](v *View, k Key[T], node string) (T, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	val, ok := v.out.values[k.String()][node]
	if !ok {
		var zero T
		return zero, false
	}
	t, ok := val.(T)
	return t, ok
}

// recordedOutputs returns the recorded outputs as JSON, by key and node.
func (s *Session) recordedOutputs() map[string]map[string]json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.out.records))
	for k := range s.out.records {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := map[string]map[string]json.RawMessage{}
	for _, k := range keys {
		for node, val := range s.out.values[k] {
			data, err := json.Marshal(val)
			if err != nil {
				data, _ = json.Marshal(fmt.Sprintf("unencodable: %v", err))
			}
			if out[k] == nil {
				out[k] = map[string]json.RawMessage{}
			}
			out[k][node] = data
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
