package diskcrypt

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"strings"
)

// Passphrase is a recovery passphrase. It travels to the node inside an
// operation's JSON input (the agent's stdin over SSH) and from there only
// on a pipe or an anonymous memory file to cryptsetup and
// systemd-cryptenroll: never in argv, the environment, a file, a log line or
// an error. Printing it with fmt or slog shows "[redacted]"; only its JSON
// encoding (the operation's input) carries it.
type Passphrase string

const redacted = "[redacted]"

// String implements fmt.Stringer: never the passphrase.
func (Passphrase) String() string { return redacted }

// GoString implements fmt.GoStringer: never the passphrase.
func (Passphrase) GoString() string { return redacted }

// Format implements fmt.Formatter for every verb (%s, %v, %q, %x...).
func (Passphrase) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// LogValue implements slog.LogValuer.
func (Passphrase) LogValue() slog.Value { return slog.StringValue(redacted) }

// bytes returns the passphrase for a pipe to a command.
func (p Passphrase) bytes() []byte { return []byte(p) }

// modhex is the alphabet of systemd's recovery keys (systemd-cryptenroll
// --recovery-key, src/shared/recovery-key.c): 16 letters that sit on the
// same keys on most keyboard layouts, so a person can type the passphrase
// at a console whatever its keymap.
const modhex = "cbdefghijklnrtuv"

// NewPassphrase returns a fresh recovery passphrase: 256 bits from
// crypto/rand as 64 modhex characters in 8 groups of 8 joined by "-" (the
// format of systemd's recovery keys; 71 characters).
func NewPassphrase() (Passphrase, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generating a recovery passphrase: %w", err)
	}
	var sb strings.Builder
	for i, c := range b {
		if i > 0 && i%4 == 0 {
			sb.WriteByte('-')
		}
		sb.WriteByte(modhex[c>>4])
		sb.WriteByte(modhex[c&0xf])
	}
	return Passphrase(sb.String()), nil
}

// newUUID returns a random (version 4) UUID in its 8-4-4-4-12 form
// (RFC 9562, section 5.4).
func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generating a UUID: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// LogValue keeps the passphrase out of structured logs (slog would encode
// the struct as JSON, passphrase included).
func (r PrepareRequest) LogValue() slog.Value {
	return slog.GroupValue(slog.String("uuid", r.UUID), slog.Any("pcrs", r.PCRs), slog.String("passphrase", redacted))
}

// LogValue keeps the passphrase out of structured logs.
func (r EnrolRequest) LogValue() slog.Value {
	return slog.GroupValue(slog.String("device", r.Device), slog.String("uuid", r.UUID), slog.Any("pcrs", r.PCRs), slog.String("passphrase", redacted))
}

// LogValue keeps the passphrases out of structured logs.
func (r RotateRequest) LogValue() slog.Value {
	return slog.GroupValue(slog.String("device", r.Device), slog.String("uuid", r.UUID), slog.Int("generation", r.Generation),
		slog.String("current", redacted), slog.String("new", redacted))
}
