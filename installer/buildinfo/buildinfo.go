// Package buildinfo says which castellan this is.
package buildinfo

import "runtime/debug"

// version is set at link time: -ldflags "-X castellan/installer/buildinfo.version=v0.1.0".
var version string

// buildID is set at link time by make build, the same for castellan and the
// castellan-agent it embeds, so that castellan only ships an agent built with
// it: -ldflags "-X castellan/installer/buildinfo.buildID=...".
var buildID string

// BuildID identifies one `make build`: "" for a plain go build.
func BuildID() string { return buildID }

// Version is the castellan version: the one stamped at link time, else the
// VCS revision Go recorded, else "dev".
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "-dirty"
				}
			}
		}
		if len(rev) >= 12 {
			return "dev-" + rev[:12] + dirty
		}
	}
	return "dev"
}
