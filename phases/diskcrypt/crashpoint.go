//go:build !diskcrypt_crashpoints

package diskcrypt

// nodeCrashpoint and installerCrashpoint do nothing in a normal build. A
// binary built with -tags diskcrypt_crashpoints (crashpoint_on.go) kills
// itself at a chosen step, for the VM lab's crash tests.
func nodeCrashpoint(string) {}

func installerCrashpoint(string) {}
