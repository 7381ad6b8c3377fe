package profile

import (
	"regexp"
	"sync"
)

// lazyRegexp is a regular expression compiled the first time it is used.
// The package's expressions would otherwise be compiled at program start
// by every binary that imports it, castellan's node agent included, which
// starts on every node at every run and matches none of them on most runs
// (measured: a quarter of the agent's start-up CPU).
type lazyRegexp func() *regexp.Regexp

// lazyMustCompile is regexp.MustCompile, deferred to the first use; it
// panics there if expr does not compile (the package's tests use them all).
func lazyMustCompile(expr string) lazyRegexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// MatchString is (*regexp.Regexp).MatchString.
func (l lazyRegexp) MatchString(s string) bool { return l().MatchString(s) }

// FindStringSubmatch is (*regexp.Regexp).FindStringSubmatch.
func (l lazyRegexp) FindStringSubmatch(s string) []string { return l().FindStringSubmatch(s) }
