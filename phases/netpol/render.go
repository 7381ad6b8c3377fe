package netpol

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"strings"

	"github.com/pmezard/go-difflib/difflib"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// manifest is the part of a NetworkPolicy castellan declares: what render
// prints, what apply sends, and what the plan compares with the live object.
// Server-set fields (uid, resourceVersion, managedFields, timestamps) and
// labels or annotations of other managers are not part of it.
type manifest struct {
	APIVersion string                         `json:"apiVersion"`
	Kind       string                         `json:"kind"`
	Metadata   manifestMeta                   `json:"metadata"`
	Spec       networkingv1.NetworkPolicySpec `json:"spec"`
}

type manifestMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

func toManifest(np *networkingv1.NetworkPolicy) manifest {
	return manifest{
		APIVersion: networkingv1.SchemeGroupVersion.String(),
		Kind:       "NetworkPolicy",
		Metadata: manifestMeta{
			Name:        np.Name,
			Namespace:   np.Namespace,
			Labels:      np.Labels,
			Annotations: np.Annotations,
		},
		Spec: np.Spec,
	}
}

// ours reports a label or annotation key castellan sets.
func ours(key string) bool {
	return key == LabelManagedBy || strings.HasPrefix(key, "castellan.dev/") || strings.HasPrefix(key, "netpol.castellan.dev/")
}

// liveManifest projects a live object onto what castellan declares: the
// labels and annotations of desired, plus any of castellan's own keys (a
// stale one is a difference), and the spec.
func liveManifest(live, desired *networkingv1.NetworkPolicy) manifest {
	m := toManifest(live)
	keep := func(have, want map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range have {
			if _, declared := want[k]; declared || ours(k) {
				out[k] = v
			}
		}
		if len(out) == 0 {
			return nil
		}
		return out
	}
	m.Metadata.Labels = keep(live.Labels, desired.Labels)
	m.Metadata.Annotations = keep(live.Annotations, desired.Annotations)
	return m
}

// manifestYAML is the YAML of m (keys sorted, as sigs.k8s.io/yaml writes them).
func manifestYAML(m manifest) ([]byte, error) {
	data, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding NetworkPolicy %s/%s: %w", m.Metadata.Namespace, m.Metadata.Name, err)
	}
	out, err := yaml.JSONToYAML(data)
	if err != nil {
		return nil, fmt.Errorf("encoding NetworkPolicy %s/%s as YAML: %w", m.Metadata.Namespace, m.Metadata.Name, err)
	}
	return out, nil
}

// applyBody is the server-side apply request body for np: its manifest as JSON.
func applyBody(np *networkingv1.NetworkPolicy) ([]byte, error) {
	return json.Marshal(toManifest(np))
}

// Render writes policies as YAML documents separated by "---", exactly the
// objects apply sends: what `kubectl apply -f -` takes.
func Render(w io.Writer, policies []networkingv1.NetworkPolicy) error {
	var b bytes.Buffer
	for i := range policies {
		y, err := manifestYAML(toManifest(&policies[i]))
		if err != nil {
			return err
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	_, err := w.Write(b.Bytes())
	return err
}

// maxRenderedSize bounds what Decode reads.
const maxRenderedSize = 16 << 20

// Decode reads policies as Render writes them (YAML documents, or JSON),
// for example an earlier run's rendered file from the state repo, to roll
// back to it. Every document must be a networking.k8s.io/v1 NetworkPolicy
// with a name, a namespace and castellan's labels for one cluster; unknown
// fields are errors. Empty documents are skipped.
func Decode(r io.Reader) ([]networkingv1.NetworkPolicy, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxRenderedSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading rendered policies: %w", err)
	}
	if len(data) > maxRenderedSize {
		return nil, fmt.Errorf("rendered policies are larger than %d bytes", maxRenderedSize)
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []networkingv1.NetworkPolicy
	cluster := ""
	seen := map[string]bool{}
	for n := 1; ; n++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		var np networkingv1.NetworkPolicy
		if err := yaml.UnmarshalStrict(doc, &np); err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		if np.APIVersion != networkingv1.SchemeGroupVersion.String() || np.Kind != "NetworkPolicy" {
			return nil, fmt.Errorf("document %d: expected a networking.k8s.io/v1 NetworkPolicy, got %s %s", n, np.APIVersion, np.Kind)
		}
		if np.Name == "" || np.Namespace == "" {
			return nil, fmt.Errorf("document %d: a NetworkPolicy needs metadata.name and metadata.namespace", n)
		}
		if np.Labels[LabelManagedBy] != ManagedBy || np.Labels[LabelPhase] != Name || np.Labels[LabelCluster] == "" {
			return nil, fmt.Errorf("document %d: %s/%s does not carry castellan's labels (%s=%s, %s=%s, %s)", n, np.Namespace, np.Name, LabelManagedBy, ManagedBy, LabelPhase, Name, LabelCluster)
		}
		if cluster != "" && np.Labels[LabelCluster] != cluster {
			return nil, fmt.Errorf("document %d: %s/%s belongs to cluster %q, the others to %q", n, np.Namespace, np.Name, np.Labels[LabelCluster], cluster)
		}
		cluster = np.Labels[LabelCluster]
		key := np.Namespace + "/" + np.Name
		if seen[key] {
			return nil, fmt.Errorf("document %d: %s appears twice", n, key)
		}
		seen[key] = true
		// Keep only what castellan declares, as the plan compares it.
		out = append(out, networkingv1.NetworkPolicy{
			TypeMeta:   np.TypeMeta,
			ObjectMeta: metav1.ObjectMeta{Name: np.Name, Namespace: np.Namespace, Labels: np.Labels, Annotations: np.Annotations},
			Spec:       np.Spec,
		})
	}
	sortPolicies(out)
	return out, nil
}

// stripComments drops YAML comment lines, so a document of comments only counts as empty.
func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] == '#' {
			continue
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Diff is a unified diff of two objects' manifests (live first, then
// desired); either may be nil (create or delete). Only what castellan
// declares is compared: see liveManifest.
func Diff(live, desired *networkingv1.NetworkPolicy) (string, error) {
	var a, b []byte
	var err error
	name := ""
	switch {
	case live != nil && desired != nil:
		a, err = manifestYAML(liveManifest(live, desired))
		if err == nil {
			b, err = manifestYAML(toManifest(desired))
		}
		name = desired.Namespace + "/" + desired.Name
	case desired != nil:
		b, err = manifestYAML(toManifest(desired))
		name = desired.Namespace + "/" + desired.Name
	case live != nil:
		a, err = manifestYAML(liveManifest(live, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Labels: maps.Clone(live.Labels), Annotations: maps.Clone(live.Annotations)}}))
		name = live.Namespace + "/" + live.Name
	}
	if err != nil {
		return "", err
	}
	if bytes.Equal(a, b) {
		return "", nil
	}
	return difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A:        difflib.SplitLines(string(a)),
		B:        difflib.SplitLines(string(b)),
		FromFile: "live " + name,
		ToFile:   "declared " + name,
		Context:  3,
	})
}
