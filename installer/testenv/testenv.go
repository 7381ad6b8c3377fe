// Package testenv decides what a test does when a real peer it needs (sshd,
// swtpm, git, mkfs, a kube-apiserver...) is missing on the machine: skip it
// on a developer's machine, fail it in CI. A test never passes by skipping
// where the real peer is required.
package testenv

import (
	"fmt"
	"os"
	"testing"
)

// RequireEnv is the environment variable that makes a missing real peer a
// test failure: CASTELLAN_REQUIRE_REAL_PEERS=1 (set by make test). CI=true
// (set by CI systems) does the same.
const RequireEnv = "CASTELLAN_REQUIRE_REAL_PEERS"

// Required reports whether missing real peers fail tests here.
func Required() bool {
	return os.Getenv(RequireEnv) == "1" || os.Getenv("CI") == "true"
}

// Missing reports that a test cannot run because what it needs is missing:
// with Required, the test fails; otherwise it is skipped. The message says
// what is missing and how to install it.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("%s (a real peer is required here: CI=true or %s=1)", msg, RequireEnv)
	}
	t.Skip(msg)
}
