package profile

import (
	"encoding/json"
	"fmt"
	"reflect"

	"github.com/invopop/jsonschema"
)

// SchemaID is the $id of the generated JSON Schema.
const SchemaID = "https://castellan.dev/schemas/cluster-v1alpha1.json"

// Schema generates the JSON Schema of the profile from the Go types, so
// editors can complete and check profiles. commentsDir, when not empty, is
// this package's source directory: its doc comments become descriptions.
func Schema(commentsDir string) ([]byte, error) {
	r := &jsonschema.Reflector{
		FieldNameTag:               "yaml",
		RequiredFromJSONSchemaTags: true,
		DoNotReference:             false,
		Mapper:                     schemaMapper,
	}
	if commentsDir != "" {
		if err := r.AddGoComments("castellan/installer/profile", commentsDir); err != nil {
			return nil, fmt.Errorf("reading doc comments: %w", err)
		}
	}
	s := r.Reflect(&Cluster{})
	s.ID = SchemaID
	s.Title = "castellan Cluster profile (castellan/v1alpha1)"
	out, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding schema: %w", err)
	}
	return append(out, '\n'), nil
}

// schemaMapper describes the types whose YAML form differs from their Go shape.
func schemaMapper(t reflect.Type) *jsonschema.Schema {
	switch t {
	case reflect.TypeFor[Duration]():
		return &jsonschema.Schema{Type: "string", Pattern: `^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`, Description: "A duration such as 30s, 5m or 1h30m."}
	case reflect.TypeFor[map[int]string]():
		return &jsonschema.Schema{
			Type:                 "object",
			PropertyNames:        &jsonschema.Schema{Pattern: `^[1-9][0-9]{0,4}$`},
			AdditionalProperties: &jsonschema.Schema{Type: "string", Enum: []any{"TCP", "UDP", "SCTP"}},
			Description:          "Port number to protocol, e.g. {8080: TCP}.",
		}
	}
	return nil
}
