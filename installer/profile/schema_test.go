package profile

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite golden files")

const schemaFile = "../../profiles/cluster.schema.json"

// TestSchemaGolden keeps profiles/cluster.schema.json in step with the types:
// run `go test ./installer/profile -run Schema -update` after changing them.
func TestSchemaGolden(t *testing.T) {
	got, err := Schema(".")
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(schemaFile, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is stale; run: go test ./installer/profile -run Schema -update", schemaFile)
	}
}

// TestSchemaAgreesWithLoader checks the examples against the schema, and that
// the schema rejects what the loader rejects for shape (unknown fields, types).
func TestSchemaAgreesWithLoader(t *testing.T) {
	c := jsonschema.NewCompiler()
	sch, err := c.Compile(schemaFile)
	if err != nil {
		t.Fatalf("compiling schema: %v", err)
	}
	files, _ := filepath.Glob("../../profiles/*.yaml")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := sch.Validate(yamlToJSON(t, data)); err != nil {
			t.Errorf("%s does not match the schema: %v", f, err)
		}
	}
	for _, bad := range []string{
		validProfile + "status: {}\n",
		strings.Replace(validProfile, "role: agent", "role: worker", 1),
		strings.Replace(validProfile, "    user: admin\n", "    user: admin\n    port: ssh\n", 1),
		strings.Replace(validProfile, "    user: admin\n", "    user: admin\n    port: 1.99\n", 1),
		validProfile + "  calico:\n    mtu: 0\n",
		withDisks("        - {device: /dev/vdb, allowFormat: y}\n"),
		validProfile + "  netpol:\n    workloads:\n      - name: a\n        namespace: b\n        ingress:\n          x: {ipBlock: 10.0.0.0/8, ports: {\"+80\": TCP}}\n",
	} {
		if err := sch.Validate(yamlToJSON(t, []byte(bad))); err == nil {
			t.Errorf("schema accepts a profile the loader rejects:\n%s", bad)
		}
	}
}

// yamlToJSON turns YAML into the generic JSON value the validator takes.
func yamlToJSON(t *testing.T, data []byte) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(stringKeys(v))
	if err != nil {
		t.Fatal(err)
	}
	out, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func stringKeys(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = stringKeys(e)
		}
		return x
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = stringKeys(e)
		}
		return m
	case []any:
		for i, e := range x {
			x[i] = stringKeys(e)
		}
	}
	return v
}
