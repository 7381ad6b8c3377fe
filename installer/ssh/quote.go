package ssh

import (
	"errors"
	"fmt"
	"strings"

	"al.essio.dev/pkg/shellescape"
)

// shellQuote quotes one word for a POSIX shell. On top of shellescape it
// also quotes words containing '=' (an unquoted "=word" is an expansion in
// zsh, and "NAME=value" in command position is an assignment).
func shellQuote(s string) string {
	q := shellescape.Quote(s)
	if q == s && strings.ContainsRune(s, '=') {
		return "'" + s + "'"
	}
	return q
}

// ShellJoin quotes argv for a POSIX shell, one word per element, so that the
// shell's word splitting gives back exactly argv. It fails on a NUL byte,
// which no process argument can carry.
func ShellJoin(argv []string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("empty argv")
	}
	words := make([]string, len(argv))
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return "", fmt.Errorf("argument %d contains a NUL byte", i)
		}
		words[i] = shellQuote(a)
	}
	return strings.Join(words, " "), nil
}

// commandLine is the string sent in the exec request. The remote login shell
// parses it back into argv and execs it (exec: no extra shell process stays
// between sshd and the command, so a signal reaches the command itself).
func commandLine(argv []string, sudo bool) (string, error) {
	if len(argv) > 0 && (argv[0] == "" || strings.HasPrefix(argv[0], "-")) {
		return "", fmt.Errorf("invalid program name %q", argv[0])
	}
	line, err := ShellJoin(argv)
	if err != nil {
		return "", err
	}
	if sudo {
		return "exec sudo -n -- " + line, nil
	}
	return "exec " + line, nil
}

// display renders argv for messages, shortened.
func display(argv []string) string {
	s, err := ShellJoin(argv)
	if err != nil {
		s = fmt.Sprintf("%q", argv)
	}
	const max = 200
	if len(s) > max {
		s = s[:max] + "..."
	}
	return "`" + s + "`"
}
