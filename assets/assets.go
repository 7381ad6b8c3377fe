// Package assets holds the files castellan renders or writes, embedded in
// the binary: templates, unit files, manifests and the starter profile.
package assets

import "embed"

// FS holds every asset, by path relative to this directory.
//
//go:embed profile
var FS embed.FS

// StarterProfile is the commented profile `castellan profile init` writes.
func StarterProfile() []byte {
	b, err := FS.ReadFile("profile/starter.yaml")
	if err != nil {
		panic("assets: starter profile missing from the binary: " + err.Error())
	}
	return b
}
