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

// loginQuote quotes a word that contains no newline so that every login
// shell sshd may run the exec request with (`$SHELL -c REQUEST`) gives it
// back byte-exact: POSIX shells (sh, dash, bash, ksh, mksh, zsh), fish and
// csh/tcsh. Runs of bytes go inside single quotes, which all of them take
// literally except for three characters, written outside the quotes with a
// backslash, which all of them read the same way: ' (ends the quotes), \
// (fish reads \\ and \' inside single quotes as escapes) and ! (csh's
// history substitution works inside single quotes). A newline has no
// common spelling (csh refuses it inside quotes; outside, POSIX shells drop
// an escaped one): such words go through encodeArg instead.
func loginQuote(s string) string {
	if s == "" {
		return "''"
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	open := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '\'', '\\', '!':
			if open {
				b.WriteByte('\'')
				open = false
			}
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			if !open {
				b.WriteByte('\'')
				open = true
			}
			b.WriteByte(c)
		}
	}
	if open {
		b.WriteByte('\'')
	}
	return b.String()
}

// encodeArg spells an argument for the wrapper's decoding loop: "x" + the
// argument when it holds no newline, else "y" + the argument with every
// backslash and newline as an octal escape of printf's %b (\0134, \0012),
// which the wrapper decodes with the shell's own printf.
func encodeArg(s string) string {
	if !strings.ContainsRune(s, '\n') {
		return "x" + s
	}
	r := strings.NewReplacer(`\`, `\0134`, "\n", `\0012`)
	return "y" + r.Replace(s)
}

// wrapperScript is what every remote command runs in, through /bin/sh: the
// login shell only execs `/bin/sh -c wrapperScript sh MARK MODE INNER
// ARGV...`. It is one line without newline or '!', so loginQuote passes it
// unchanged through any login shell.
//
// MARK is a random per-call marker. The wrapper prints "MARK STAGE SHELL"
// lines on stdout, so the client knows how far it got whatever the login
// shell, its rc files, motd or sudo printed around them:
//
//	ok         the command starts right after this line (and after
//	           "MARK ok" on stderr); everything before was the login
//	           environment's (Result.LoginNoise)
//	sudo       not root: sudo -n runs next; no "ok" after it means sudo
//	           refused
//	nosudo     not root, and sudo is off (Config.Sudo false)
//	nosudobin  not root, and no sudo on the node
//
// MODE: u (run as the login user) or p (as root: directly when the login
// user's effective uid is 0, read from /proc/$$/status with shell builtins
// rather than an exec of id(1), else through sudo -n); n: sudo is not
// allowed; d: the
// arguments are spelled by encodeArg and decoded first. INNER is the
// script sudo runs (innerScript).
const wrapperScript = `m=$1 o=$2 i=$3; shift 3; ` +
	`case $o in *d*) for a do shift; case $a in x*) a=${a#x};; *) a=$(printf %bx "${a#y}"); a=${a%x};; esac; set -- "$@" "$a"; done;; esac; ` +
	`case $o in p*) ;; *) echo "$m ok $SHELL"; echo "$m ok" >&2; exec "$@";; esac; ` +
	`u=; while read -r k r e x; do if [ "$k" = Uid: ]; then u=$e; break; fi; done 2>/dev/null </proc/$$/status; [ -n "$u" ] || u=$(id -u); ` +
	`if [ "$u" = 0 ]; then echo "$m ok $SHELL"; echo "$m ok" >&2; exec "$@"; fi; ` +
	`case $o in *n*) echo "$m nosudo $SHELL"; exit 126;; esac; ` +
	`command -v sudo >/dev/null 2>&1 || { echo "$m nosudobin $SHELL"; exit 127; }; ` +
	`echo "$m sudo $SHELL"; exec sudo -n -- /bin/sh -c "$i" "$m" "$@"`

// innerScript runs under sudo: it marks that sudo let it in, then execs the
// command.
const innerScript = `echo "$0 ok"; echo "$0 ok" >&2; exec "$@"`

// maxRequest bounds the exec request: Linux limits one argument (the login
// shell's -c string) to 128 KiB. Bulk data belongs on stdin.
const maxRequest = 120 << 10

// execMode says how the wrapper runs a command.
type execMode struct {
	privileged bool // as root
	sudo       bool // sudo -n may be used for that
}

// execRequest is the string sent in the exec request for argv: the login
// shell execs /bin/sh with the wrapper, which execs argv (exec all the
// way: no shell process stays between sshd and the command, so a signal
// reaches the command itself, or sudo, which relays it).
func execRequest(marker string, argv []string, m execMode) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("empty argv")
	}
	if argv[0] == "" || strings.HasPrefix(argv[0], "-") {
		return "", fmt.Errorf("invalid program name %q", argv[0])
	}
	decode := false
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return "", fmt.Errorf("argument %d contains a NUL byte", i)
		}
		if strings.IndexByte(a, '\n') >= 0 {
			decode = true
		}
	}
	mode := "u"
	if m.privileged {
		mode = "p"
		if !m.sudo {
			mode += "n"
		}
	}
	inner := "-"
	if m.privileged && m.sudo {
		inner = innerScript
	}
	if decode {
		mode += "d"
	}
	var b strings.Builder
	b.WriteString("exec /bin/sh -c ")
	b.WriteString(loginQuote(wrapperScript))
	b.WriteString(" sh ")
	b.WriteString(marker)
	b.WriteString(" " + mode + " ")
	b.WriteString(loginQuote(inner))
	for _, a := range argv {
		if decode {
			a = encodeArg(a)
		}
		b.WriteByte(' ')
		b.WriteString(loginQuote(a))
	}
	if b.Len() > maxRequest {
		return "", fmt.Errorf("the command line is %d bytes, more than the %d a remote command may have: pass bulk data on stdin", b.Len(), maxRequest)
	}
	return b.String(), nil
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
