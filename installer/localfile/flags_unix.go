//go:build unix

package localfile

import "syscall"

// openFlags keep open(2) from blocking on a FIFO that appeared after the
// stat(2) check, and from making a terminal the controlling one.
const openFlags = syscall.O_NONBLOCK | syscall.O_NOCTTY | syscall.O_CLOEXEC
