// Package agentbin holds the node agents embedded in this castellan binary:
// the small castellan-agent (cmd/castellan-agent) built for each
// architecture by `make build` into dist/ before castellan itself. Each is
// named after the build it belongs to (buildinfo.BuildID), so a castellan
// never ships an agent left in dist/ by an earlier build: a plain `go build`
// has no build ID, embeds nothing usable, and ships itself instead.
package agentbin

import (
	"embed"
	"io/fs"

	"castellan/installer/buildinfo"
)

//go:embed dist
var dist embed.FS

// For returns the agent binary embedded for the Go architecture arch
// (amd64, arm64), or false when this castellan was built without it.
func For(arch string) ([]byte, bool) {
	id := buildinfo.BuildID()
	if id == "" {
		return nil, false
	}
	data, err := fs.ReadFile(dist, "dist/castellan-agent-linux-"+arch+"-"+id)
	if err != nil || len(data) == 0 {
		return nil, false
	}
	return data, true
}
