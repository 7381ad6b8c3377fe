package identity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf16"

	"castellan/phases/identity/swtpmtest"
)

// The tests of this file run the node side of boot state attestation on a
// REAL swtpm (Node.Quote) and check its answers with the installer side
// (VerifyQuote, ReplayEventLog).

var attestedPCRs = []int{0, 2, 4, 7}

func nonceOf(b byte) []byte { return bytes.Repeat([]byte{b}, NonceSize) }

// quoteOf has r's node quote attestedPCRs over nonce, as the agent would
// answer (through JSON and the installer's strict decoder).
func quoteOf(t testing.TB, r *rig, nonce []byte) *Quote {
	t.Helper()
	q, err := r.node.Quote(context.Background(), QuoteRequest{Nonce: nonce, PCRs: attestedPCRs})
	if err != nil {
		t.Fatalf("quote: %v", err)
	}
	out := wire(t, q, func(b []byte) (Quote, error) {
		var v Quote
		return v, v.UnmarshalJSON(b)
	})
	return &out
}

// reboot restarts r's swtpm (its PCRs start over) and reconnects.
func (r *rig) reboot(t testing.TB) {
	t.Helper()
	if c, ok := r.conn.(interface{ Close() error }); ok {
		_ = c.Close()
	}
	r.tp.Restart(t)
	r.conn = r.tp.Open(t)
	r.node.TPM = WithRetry(r.conn)
}

// TestQuoteAgainstSWTPM: an enrolled node's quote verifies against its
// enrolled AK and this run's nonce and carries the PCR values the TPM
// holds; a quote replayed with an old nonce, a quote by another AK (under
// its own public area, or passed off under the enrolled one), altered PCR
// values, another PCR set and a certification of another key are all
// refused, each saying why. Nothing stays loaded in the TPM and nothing is
// created.
func TestQuoteAgainstSWTPM(t *testing.T) {
	ca := swtpmtest.NewLocalCA(t)
	a, b := newRig(t, ca), newRig(t, ca)
	ea, _, err := enrol(t, a, Policy{Cluster: "lab", Node: "a", EKRoots: ekRoots(t, ca)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := enrol(t, b, Policy{Cluster: "lab", Node: "b", EKRoots: ekRoots(t, ca)}); err != nil {
		t.Fatal(err)
	}
	swtpmtest.Extend(t, a.conn, 4, bytes.Repeat([]byte{4}, 32))
	check := QuoteCheck{Node: "a", AKName: ea.AKName, Nonce: nonceOf(1), PCRs: attestedPCRs, KeyFingerprint: ea.KeyFingerprint}

	rec := NewRecorder(a.node.TPM)
	a.node.TPM = rec
	q := quoteOf(t, a, nonceOf(1))
	a.node.TPM = WithRetry(a.conn)
	vals, err := VerifyQuote(check, q)
	if err != nil {
		t.Fatalf("a genuine quote: %v", err)
	}
	if got := []int{vals[0].Index, vals[1].Index, vals[2].Index, vals[3].Index}; !slices.Equal(got, attestedPCRs) {
		t.Fatalf("PCRs %v", got)
	}
	four := sha256.Sum256(append(make([]byte, 32), bytes.Repeat([]byte{4}, 32)...))
	if !bytes.Equal(vals[2].Digest, four[:]) || !bytes.Equal(vals[0].Digest, make([]byte, 32)) {
		t.Errorf("PCR values: %x", vals)
	}
	if c := rec.Created(); len(c) != 0 {
		t.Errorf("a quote created TPM objects: %v", c)
	}
	t.Logf("TPM commands of one quote: %v", rec.Counts())
	noTransients(t, a)

	refused := func(what string, c QuoteCheck, q *Quote, want string) {
		t.Helper()
		_, err := VerifyQuote(c, q)
		var ae *AttestationError
		if !errors.As(err, &ae) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an AttestationError saying %q", what, err, want)
		}
	}
	// A quote replayed from an earlier run (its nonce).
	old := check
	old.Nonce = nonceOf(2)
	refused("replayed quote", old, q, "another nonce than this run's (a replayed quote)")
	// A quote by another AK, under its own public area.
	qb := quoteOf(t, b, nonceOf(1))
	refused("another AK", check, qb, "a quote by another AK")
	// The same, passed off under the enrolled AK's public area.
	forged := *qb
	forged.AKPublic = q.AKPublic
	forged.Key = q.Key
	refused("another AK's signature under the enrolled AK", check, &forged, "does not verify against the enrolled AK")
	// PCR values other than those quoted.
	altered := *q
	altered.PCRs = slices.Clone(q.PCRs)
	altered.PCRs[2] = PCRValue{Index: 4, Digest: make([]byte, 32)}
	refused("altered PCR value", check, &altered, "does not verify")
	// Another PCR set than asked.
	more := check
	more.PCRs = []int{0, 2, 4, 7, 9}
	refused("PCRs not asked", more, q, "does not cover exactly PCRs [0 2 4 7 9]")
	// The certification of another key than the enrolled one.
	otherKey := check
	otherKey.KeyFingerprint = strings.Repeat("ab", 32)
	refused("another key", otherKey, q, "the AK certified key")
	// No quote made.
	refused("no TPM", check, &Quote{Unavailable: "the node has no usable TPM"}, "no quote was made")
	noTransients(t, b)
}

// TestQuoteUnavailable: a node without a TPM, or without an AK (not
// enrolled yet), answers Unavailable, not an error.
func TestQuoteUnavailable(t *testing.T) {
	n := &Node{Dir: t.TempDir()}
	q, err := n.Quote(context.Background(), QuoteRequest{Nonce: nonceOf(1), PCRs: attestedPCRs})
	if err != nil || q.Unavailable == "" {
		t.Fatalf("no TPM: %+v %v", q, err)
	}
	r := newRig(t, swtpmtest.NewLocalCA(t))
	q, err = r.node.Quote(context.Background(), QuoteRequest{Nonce: nonceOf(1), PCRs: attestedPCRs})
	if err != nil || !strings.Contains(q.Unavailable, "not enrolled") {
		t.Fatalf("no AK: %+v %v", q, err)
	}
	for _, bad := range []QuoteRequest{{Nonce: nonceOf(1)}, {Nonce: nonceOf(1), PCRs: []int{4, 2}}, {Nonce: nonceOf(1), PCRs: []int{24}}, {Nonce: []byte{1}, PCRs: attestedPCRs}} {
		if _, err := r.node.Quote(context.Background(), bad); err == nil {
			t.Errorf("request %+v accepted", bad)
		}
	}
}

// testEvent is one event of a test event log: what firmware would measure.
type testEvent struct {
	pcr  int
	typ  uint32
	data []byte
	// content is what was measured (its SHA-256 is the digest); nil: the
	// data itself.
	content []byte
}

func (e testEvent) digest() []byte {
	c := e.content
	if c == nil {
		c = e.data
	}
	d := sha256.Sum256(c)
	return d[:]
}

// eventLog writes a TCG crypto-agile event log (TCG PC Client Platform
// Firmware Profile section 10: a Spec ID event in the SHA-1 format, then
// TCG_PCR_EVENT2 entries with one SHA-256 digest each).
func eventLog(events []testEvent) []byte {
	var b bytes.Buffer
	le := func(v any) { _ = binary.Write(&b, binary.LittleEndian, v) }
	spec := new(bytes.Buffer)
	spec.WriteString("Spec ID Event03\x00")
	_ = binary.Write(spec, binary.LittleEndian, struct {
		PlatformClass                 uint32
		Minor, Major, Errata, UintnSz uint8
		NumAlgs                       uint32
		Alg, Size                     uint16
		VendorInfoSize                uint8
	}{0, 0, 2, 0, 2, 1, 0x000b, 32, 0})
	le(uint32(0))
	le(uint32(3)) // EV_NO_ACTION
	b.Write(make([]byte, 20))
	le(uint32(spec.Len()))
	b.Write(spec.Bytes())
	for _, e := range events {
		le(uint32(e.pcr))
		le(e.typ)
		le(uint32(1))
		le(uint16(0x000b))
		b.Write(e.digest())
		le(uint32(len(e.data)))
		b.Write(e.data)
	}
	return b.Bytes()
}

// measure extends each event into the TPM, as firmware does at boot.
func measure(t testing.TB, r *rig, events []testEvent) {
	t.Helper()
	for _, e := range events {
		swtpmtest.Extend(t, r.conn, e.pcr, e.digest())
	}
}

func utf16le(s string) []byte {
	var out []byte
	for _, u := range utf16.Encode([]rune(s + "\x00")) {
		out = binary.LittleEndian.AppendUint16(out, u)
	}
	return out
}

// imageLoad is an EV_EFI_BOOT_SERVICES_APPLICATION's data: a
// UEFI_IMAGE_LOAD_EVENT whose device path is a hard drive node and a file
// path node.
func imageLoad(path string) []byte {
	var dp []byte
	dp = append(dp, 4, 1) // media, hard drive
	dp = binary.LittleEndian.AppendUint16(dp, 42)
	dp = append(dp, make([]byte, 38)...)
	p := utf16le(path)
	dp = append(dp, 4, 4)
	dp = binary.LittleEndian.AppendUint16(dp, uint16(4+len(p)))
	dp = append(dp, p...)
	dp = append(dp, 0x7f, 0xff, 4, 0)
	out := make([]byte, 24)
	out = binary.LittleEndian.AppendUint64(out, uint64(len(dp)))
	return append(out, dp...)
}

// efiVariable is an EV_EFI_VARIABLE_* event's data.
func efiVariable(name string, value []byte) []byte {
	n := utf16le(name)
	n = n[:len(n)-2] // UnicodeNameLength counts no terminator
	out := make([]byte, 16)
	out = binary.LittleEndian.AppendUint64(out, uint64(len(n)/2))
	out = binary.LittleEndian.AppendUint64(out, uint64(len(value)))
	out = append(out, n...)
	return append(out, value...)
}

// uefiBoot is what a UEFI machine with Secure Boot measures into PCRs 0,
// 2, 4 and 7, booting shim then the given GRUB image.
func uefiBoot(grub string) []testEvent {
	sep := []byte{0, 0, 0, 0}
	return []testEvent{
		{pcr: 0, typ: evSCRTMVersion, data: utf16le("edk2-stable202302")},
		{pcr: 0, typ: evEFIPlatformFirmwareBlob, data: make([]byte, 16), content: []byte("firmware volume")},
		{pcr: 7, typ: evEFIVariableDriverConfig, data: efiVariable("SecureBoot", []byte{1})},
		{pcr: 7, typ: evEFIVariableDriverConfig, data: efiVariable("db", []byte("db certs"))},
		{pcr: 0, typ: evSeparator, data: sep},
		{pcr: 2, typ: evSeparator, data: sep},
		{pcr: 4, typ: evSeparator, data: sep},
		{pcr: 7, typ: evSeparator, data: sep},
		{pcr: 4, typ: evEFIBootServicesApplication, data: imageLoad(`\EFI\debian\shimx64.efi`), content: []byte("shim 15.8")},
		{pcr: 7, typ: evEFIVariableAuthority, data: efiVariable("db", []byte("Debian Secure Boot CA"))},
		{pcr: 4, typ: evEFIBootServicesApplication, data: imageLoad(`\EFI\debian\grubx64.efi`), content: []byte(grub)},
	}
}

// TestEventLogReplay: a log whose events were measured replays to the
// quoted values and names what was measured (firmware version, variables,
// EFI images by path); an extend the log does not hold leaves that PCR
// unexplained; a GRUB update shows as the new image replacing the old.
func TestEventLogReplay(t *testing.T) {
	ca := swtpmtest.NewLocalCA(t)
	r := newRig(t, ca)
	e, _, err := enrol(t, r, Policy{Cluster: "lab", Node: "a", EKRoots: ekRoots(t, ca)})
	if err != nil {
		t.Fatal(err)
	}
	boot := uefiBoot("grub 2.06-13")
	measure(t, r, boot)
	logFile := filepath.Join(t.TempDir(), "binary_bios_measurements")
	if err := os.WriteFile(logFile, eventLog(boot), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := ReadEventLog(logFile)
	if err != nil || l.Missing != "" {
		t.Fatalf("reading the log: %+v %v", l, err)
	}
	check := QuoteCheck{Node: "a", AKName: e.AKName, Nonce: nonceOf(1), PCRs: attestedPCRs, KeyFingerprint: e.KeyFingerprint}
	vals, err := VerifyQuote(check, quoteOf(t, r, nonceOf(1)))
	if err != nil {
		t.Fatal(err)
	}
	events, unexplained, err := ReplayEventLog(l.Log, vals)
	if err != nil || len(unexplained) != 0 {
		t.Fatalf("replay: %v, unexplained %v", err, unexplained)
	}
	var got []string
	for _, ev := range events {
		got = append(got, strings.TrimSpace(string(rune('0'+ev.PCR))+" "+ev.Type+" "+ev.Data))
	}
	want := []string{
		"0 EV_S_CRTM_VERSION edk2-stable202302", "0 EV_EFI_PLATFORM_FIRMWARE_BLOB", "0 EV_SEPARATOR separator",
		"2 EV_SEPARATOR separator",
		`4 EV_SEPARATOR separator`, `4 EV_EFI_BOOT_SERVICES_APPLICATION \EFI\debian\shimx64.efi`, `4 EV_EFI_BOOT_SERVICES_APPLICATION \EFI\debian\grubx64.efi`,
		"7 EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot", "7 EV_EFI_VARIABLE_DRIVER_CONFIG db", "7 EV_SEPARATOR separator", "7 EV_EFI_VARIABLE_AUTHORITY db",
	}
	if !slices.Equal(got, want) {
		t.Errorf("events\n got %q\nwant %q", got, want)
	}
	if _, _, err := ReplayEventLog([]byte("not a log"), vals); err == nil {
		t.Error("garbage parsed as an event log")
	}
	// A TPM 1.2-format log (SHA-1 digests only, no Spec ID event).
	var sha1Log bytes.Buffer
	_ = binary.Write(&sha1Log, binary.LittleEndian, struct {
		PCR, Type uint32
		Digest    [20]byte
		Size      uint32
	}{0, evSeparator, [20]byte{}, 4})
	sha1Log.Write([]byte{0, 0, 0, 0})
	if _, _, err := ReplayEventLog(sha1Log.Bytes(), vals); err == nil || !strings.Contains(err.Error(), "no SHA-256 digests") {
		t.Errorf("a SHA-1-only log: %v", err)
	}
	if l, err := ReadEventLog(filepath.Join(t.TempDir(), "none")); err != nil || l.Missing == "" {
		t.Errorf("missing log: %+v %v", l, err)
	}

	// An extend after boot that the log does not hold.
	swtpmtest.Extend(t, r.conn, 7, bytes.Repeat([]byte{7}, 32))
	check.Nonce = nonceOf(3)
	vals2, err := VerifyQuote(check, quoteOf(t, r, nonceOf(3)))
	if err != nil {
		t.Fatal(err)
	}
	if _, unexplained, _ := ReplayEventLog(l.Log, vals2); !slices.Equal(unexplained, []int{7}) {
		t.Errorf("unexplained %v, want [7]", unexplained)
	}

	// A GRUB update: PCR 4's events differ by one image.
	b := &Baseline{Events: events, EventLog: "replayed"}
	upd := uefiBoot("grub 2.06-14")
	r.reboot(t)
	measure(t, r, upd)
	check.Nonce = nonceOf(4)
	vals3, err := VerifyQuote(check, quoteOf(t, r, nonceOf(4)))
	if err != nil {
		t.Fatal(err)
	}
	now, unexplained, err := ReplayEventLog(eventLog(upd), vals3)
	if err != nil || len(unexplained) != 0 {
		t.Fatal(err, unexplained)
	}
	changed, _ := compareBaseline(&Baseline{PCRs: pcrDigests(vals)}, pcrDigests(vals3))
	if len(changed) != 1 || changed[0].Index != 4 {
		t.Fatalf("changed %+v", changed)
	}
	lines := explainChanges(b, changed, now, nil, "")
	if len(lines) != 1 || !strings.Contains(lines[0], `PCR 4: new EV_EFI_BOOT_SERVICES_APPLICATION \EFI\debian\grubx64.efi (sha256 `) ||
		!strings.Contains(lines[0], `gone EV_EFI_BOOT_SERVICES_APPLICATION \EFI\debian\grubx64.efi`) {
		t.Errorf("explanation %q", lines)
	}
	noTransients(t, r)
}

// TestDescribeEvent: what is printed of event data is bounded and
// printable, whatever the log holds.
func TestDescribeEvent(t *testing.T) {
	for _, c := range []struct {
		typ  uint32
		data []byte
		want string
	}{
		{evEFIBootServicesApplication, imageLoad(`\EFI\BOOT\BOOTX64.EFI`), `\EFI\BOOT\BOOTX64.EFI`},
		{evEFIVariableBoot, efiVariable("BootOrder", []byte{1, 0}), "BootOrder"},
		{evSCRTMVersion, utf16le("1.2\x1b[31m"), "1.2?[31m"},
		{evAction, []byte("Calling EFI Application from Boot Option"), "Calling EFI Application from Boot Option"},
		{evPostCode, []byte{0xff, 0xfe, 0x00}, ""},
		{evEFIBootServicesApplication, []byte{1, 2, 3}, ""},
		{evEFIVariableBoot, append(make([]byte, 16), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), ""},
		{evAction, []byte(strings.Repeat("a", 300)), strings.Repeat("a", 120) + "…"},
		{0x12345, []byte("anything"), ""},
	} {
		if got := describeEvent(c.typ, c.data); got != c.want {
			t.Errorf("describeEvent(%#x, %q) = %q, want %q", c.typ, c.data, got, c.want)
		}
	}
}
