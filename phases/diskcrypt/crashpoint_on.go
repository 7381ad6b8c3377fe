//go:build diskcrypt_crashpoints

package diskcrypt

import (
	"os"
	"strings"
	"syscall"
)

// This file exists only in binaries built with -tags diskcrypt_crashpoints,
// which the VM lab's crash tests (vagrant/e2e) build for themselves:
// castellan builds never hold it.
//
// Node side: the agent runs under sudo, which drops the environment, so the
// step to crash at is read from crashFile (root-only /run, written by the
// test over SSH); the file is removed before the kill, so the rerun goes
// through. Installer side: $CASTELLAN_DISKCRYPT_CRASH names the step.
const crashFile = "/run/castellan/diskcrypt-crash"

func nodeCrashpoint(step string) {
	b, err := os.ReadFile(crashFile)
	if err != nil || strings.TrimSpace(string(b)) != step {
		return
	}
	_ = os.Remove(crashFile)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
}

func installerCrashpoint(step string) {
	if os.Getenv("CASTELLAN_DISKCRYPT_CRASH") != step {
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
}
