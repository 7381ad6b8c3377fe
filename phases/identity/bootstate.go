package identity

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"

	"castellan/installer/engine"
	"castellan/installer/pki"
)

// Boot state attestation, the installer side: VerifyQuote checks a node's
// quote, Baseline is what the state repo pins, ReplayEventLog tells which
// events the firmware's log says made the attested values.

// QuoteCheck is what VerifyQuote holds a quote to.
type QuoteCheck struct {
	// Node names the node in errors.
	Node string
	// AKName is the hex TPM Name of the AK the node enrolled (the Record's,
	// or this enrolment session's): the quote must be signed by it.
	AKName string
	// Nonce is the run's nonce for the node: the quote and the key
	// certification must be made over it.
	Nonce []byte
	// PCRs are the PCRs asked for, ascending; the quote must cover exactly
	// these, in the SHA-256 bank.
	PCRs []int
	// KeyFingerprint, when set, is the enrolled node key
	// (pki.Fingerprint): the quote must carry the AK's fresh certification
	// of exactly that key, with castellan's key attributes.
	KeyFingerprint string
}

// AttestationError is a quote that does not prove the node's boot state:
// none could be made, or it is not by the enrolled AK, not over this run's
// nonce, not over the asked PCRs, or its signature does not verify. Apply
// refuses the node; castellan verify reports drift.
type AttestationError struct {
	Node string
	Err  error
}

func (e *AttestationError) Error() string {
	return fmt.Sprintf("node %s did not prove its boot state: %v; nothing was done to it", e.Node, e.Err)
}

func (e *AttestationError) Unwrap() error { return e.Err }

// Drift implements engine.DriftError.
func (*AttestationError) Drift() {}

// VerifyQuote checks a node's OpQuote answer and returns the attested PCR
// values, ascending. It checks, in order: that a quote was made; every TPM
// structure is canonical (re-encodes to the same bytes); the AK's public
// area is the enrolled AK's (its TPM Name) and castellan's AK template; the
// TPMS_ATTEST was made by a TPM, is a quote, over this run's nonce, of
// exactly the asked PCRs in the SHA-256 bank; the signature (ECDSA P-256,
// SHA-256) verifies and the PCR values given are the quoted ones
// (go-attestation AKPublic.VerifyAll); and, with KeyFingerprint, the AK's
// certification of the node key (go-attestation
// CertificationParameters.Verify, plus its nonce, the key it names, and the
// key's attributes). Errors are *AttestationError.
func VerifyQuote(c QuoteCheck, q *Quote) ([]PCRValue, error) {
	fail := func(format string, a ...any) ([]PCRValue, error) {
		return nil, &AttestationError{Node: c.Node, Err: fmt.Errorf(format, a...)}
	}
	if q == nil {
		return fail("no quote")
	}
	if q.Unavailable != "" {
		return fail("no quote was made: %s", q.Unavailable)
	}
	for _, s := range []struct {
		name string
		b    []byte
		fn   func([]byte) error
	}{
		{"akPublic", q.AKPublic, canonical[tpm2.TPMTPublic]},
		{"quote", q.Quote, canonical[tpm2.TPMSAttest]},
		{"signature", q.Signature, canonical[tpm2.TPMTSignature]},
	} {
		if err := s.fn(s.b); err != nil {
			return fail("%s: %v", s.name, err)
		}
	}
	if err := checkSignatureAlg(q.Signature); err != nil {
		return fail("signature: %v", err)
	}
	akPublic, _ := tpm2.Unmarshal[tpm2.TPMTPublic](q.AKPublic)
	name, err := tpm2.ObjectName(akPublic)
	if err != nil {
		return fail("AK name: %v", err)
	}
	if got := hex.EncodeToString(name.Buffer); subtle.ConstantTimeCompare([]byte(got), []byte(c.AKName)) != 1 {
		return fail("the quote is signed by attestation key %s, and the node enrolled AK %s (a quote by another AK)", short(got), short(c.AKName))
	}
	if err := checkTemplate("AK", akPublic, true); err != nil {
		return fail("%v", err)
	}
	att, _ := tpm2.Unmarshal[tpm2.TPMSAttest](q.Quote)
	if att.Magic != tpm2.TPMGeneratedValue || att.Type != tpm2.TPMSTAttestQuote {
		return fail("not a TPM2_Quote made by a TPM")
	}
	if subtle.ConstantTimeCompare(att.ExtraData.Buffer, c.Nonce) != 1 {
		return fail("the quote was made over another nonce than this run's (a replayed quote)")
	}
	info, err := att.Attested.Quote()
	if err != nil {
		return fail("quote: %v", err)
	}
	want, err := pcrSelection(c.PCRs)
	if err != nil {
		return fail("%v", err)
	}
	if len(info.PCRSelect.PCRSelections) != 1 || info.PCRSelect.PCRSelections[0].Hash != tpm2.TPMAlgSHA256 ||
		!bytes.Equal(info.PCRSelect.PCRSelections[0].PCRSelect, want.PCRSelections[0].PCRSelect) {
		return fail("the quote does not cover exactly PCRs %v of the SHA-256 bank", c.PCRs)
	}
	if len(q.PCRs) != len(c.PCRs) {
		return fail("%d PCR values for %d PCRs", len(q.PCRs), len(c.PCRs))
	}
	pcrs := make([]attest.PCR, len(q.PCRs))
	for i, p := range q.PCRs {
		if p.Index != c.PCRs[i] || len(p.Digest) != sha256.Size {
			return fail("PCR values: want SHA-256 values of PCRs %v in order", c.PCRs)
		}
		pcrs[i] = attest.PCR{Index: p.Index, Digest: p.Digest, DigestAlg: crypto.SHA256}
	}
	ak, err := attest.ParseAKPublic(q.AKPublic)
	if err != nil {
		return fail("AK: %v", err)
	}
	if err := ak.VerifyAll([]attest.Quote{{Quote: q.Quote, Signature: q.Signature}}, pcrs, c.Nonce); err != nil {
		return fail("the quote does not verify against the enrolled AK: %v", err)
	}
	if c.KeyFingerprint != "" {
		if err := verifyKeyCertification(ak, q.Key, c.Nonce, c.KeyFingerprint); err != nil {
			return fail("%v", err)
		}
	}
	out := make([]PCRValue, len(q.PCRs))
	for i, p := range q.PCRs {
		out[i] = PCRValue{Index: p.Index, Digest: slices.Clone(p.Digest)}
	}
	return out, nil
}

// verifyKeyCertification checks the AK's fresh TPM2_Certify of the node key.
func verifyKeyCertification(ak *attest.AKPublic, k *KeyCertification, nonce []byte, fingerprint string) error {
	if k == nil {
		return errors.New("no certification of the node key by the AK (the node's key blob is missing)")
	}
	for _, s := range []struct {
		name string
		b    []byte
		fn   func([]byte) error
	}{
		{"key.public", k.Public, canonical[tpm2.TPMTPublic]},
		{"key.attestation", k.Attestation, canonical[tpm2.TPMSAttest]},
		{"key.signature", k.Signature, canonical[tpm2.TPMTSignature]},
	} {
		if err := s.fn(s.b); err != nil {
			return fmt.Errorf("%s: %v", s.name, err)
		}
	}
	if err := checkSignatureAlg(k.Signature); err != nil {
		return fmt.Errorf("key.signature: %w", err)
	}
	cp := attest.CertificationParameters{Public: k.Public, CreateAttestation: k.Attestation, CreateSignature: k.Signature}
	if err := cp.Verify(attest.VerifyOpts{Public: ak.Public, Hash: ak.Hash}); err != nil {
		return fmt.Errorf("certification of the node key by the AK: %w", err)
	}
	keyPublic, _ := tpm2.Unmarshal[tpm2.TPMTPublic](k.Public)
	if err := checkTemplate("node key", keyPublic, false); err != nil {
		return err
	}
	if err := checkCertifyInfo(k.Attestation, keyPublic, nonce); err != nil {
		return err
	}
	pub, err := publicKey(k.Public)
	if err != nil {
		return fmt.Errorf("node key: %w", err)
	}
	fp, err := pki.Fingerprint(pub)
	if err != nil {
		return err
	}
	if fp != fingerprint {
		return fmt.Errorf("the AK certified key %s, and the node enrolled key %s", short(fp), short(fingerprint))
	}
	return nil
}

// short abbreviates a hex value for messages.
func short(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}

// PCRDigest is one PCR's SHA-256 value as the state repo keeps it (hex).
type PCRDigest struct {
	Index  int    `json:"index"`
	SHA256 string `json:"sha256"`
}

// BootEvent is one event of the TPM event log that the replay showed to
// have made an attested PCR's value.
type BootEvent struct {
	PCR int `json:"pcr"`
	// Type is the event type's name (TCG PC Client Platform Firmware
	// Profile), e.g. EV_EFI_BOOT_SERVICES_APPLICATION.
	Type string `json:"type"`
	// SHA256 is the digest extended into the PCR (hex).
	SHA256 string `json:"sha256"`
	// Data says what was measured when the event says it (a file path, a
	// variable name, a version string), as the log writes it: it is not
	// covered by the digest for every event type.
	Data string `json:"data,omitempty"`
}

// Baseline is a node's pinned boot state: data/identity/boot/NODE.json.
type Baseline struct {
	Node string `json:"node"`
	// AKName is the hex TPM Name of the AK whose quote pinned it.
	AKName string `json:"akName"`
	// Bank is the PCR bank: "sha256".
	Bank string      `json:"bank"`
	PCRs []PCRDigest `json:"pcrs"`
	// Events are the attested PCRs' events the log replays to their
	// values; EventLog says how the log stood: "replayed", the PCRs it did
	// not explain, or why there was none.
	Events   []BootEvent `json:"events,omitempty"`
	EventLog string      `json:"eventLog"`
	// How the baseline was pinned (nodeid.BootState.How), in which run and
	// when.
	How    string    `json:"how"`
	Run    string    `json:"run"`
	Pinned time.Time `json:"pinned"`
}

// baselineName is where a node's baseline lives under data/identity/.
func baselineName(node string) string { return "boot/" + node + ".json" }

// readBaseline reads node's baseline (nil when there is none).
func readBaseline(v *engine.View, node string) (*Baseline, error) {
	data, ok, err := v.Data(baselineName(node))
	if err != nil || !ok {
		return nil, err
	}
	var b Baseline
	if err := decodeStrictMax(data, &b, 4<<20); err != nil {
		return nil, fmt.Errorf("state repo data/identity/%s: %w", baselineName(node), err)
	}
	if b.Node != node || b.Bank != "sha256" {
		return nil, fmt.Errorf("state repo data/identity/%s: not a SHA-256 baseline of node %s", baselineName(node), node)
	}
	for _, p := range b.PCRs {
		if d, err := hex.DecodeString(p.SHA256); err != nil || len(d) != sha256.Size || p.Index < 0 || p.Index > 23 {
			return nil, fmt.Errorf("state repo data/identity/%s: PCR %d: not a SHA-256 value", baselineName(node), p.Index)
		}
	}
	return &b, nil
}

// value returns the baseline's value of PCR i (hex) and whether it holds
// one.
func (b *Baseline) value(i int) (string, bool) {
	for _, p := range b.PCRs {
		if p.Index == i {
			return p.SHA256, true
		}
	}
	return "", false
}

// pcrDigests turns verified values into the state repo's form.
func pcrDigests(vals []PCRValue) []PCRDigest {
	out := make([]PCRDigest, len(vals))
	for i, v := range vals {
		out[i] = PCRDigest{Index: v.Index, SHA256: hex.EncodeToString(v.Digest)}
	}
	return out
}

// BootDigest is "sha256:" and the hex SHA-256 of the values concatenated
// in index order (what a TPM2_Quote's pcrDigest holds).
func BootDigest(vals []PCRDigest) string {
	h := sha256.New()
	for _, v := range vals {
		d, _ := hex.DecodeString(v.SHA256)
		h.Write(d)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// PCRChange is one attested PCR whose value differs from the baseline's
// (values in hex).
type PCRChange struct {
	Index int    `json:"index"`
	Was   string `json:"was"`
	Now   string `json:"now"`
}

// compareBaseline compares attested values with a baseline: the PCRs
// whose values differ, and the attested PCRs the baseline does not hold.
func compareBaseline(b *Baseline, vals []PCRDigest) (changed []PCRChange, missing []int) {
	for _, v := range vals {
		was, ok := b.value(v.Index)
		switch {
		case !ok:
			missing = append(missing, v.Index)
		case was != v.SHA256:
			changed = append(changed, PCRChange{Index: v.Index, Was: was, Now: v.SHA256})
		}
	}
	return changed, missing
}

// mergeBaseline returns b's values with vals' added and replacing
// (ascending), so PCRs the profile stopped attesting keep their values.
func mergeBaseline(b *Baseline, vals []PCRDigest) []PCRDigest {
	m := map[int]string{}
	if b != nil {
		for _, p := range b.PCRs {
			m[p.Index] = p.SHA256
		}
	}
	for _, v := range vals {
		m[v.Index] = v.SHA256
	}
	out := make([]PCRDigest, 0, len(m))
	for i, d := range m {
		out = append(out, PCRDigest{Index: i, SHA256: d})
	}
	slices.SortFunc(out, func(a, b PCRDigest) int { return a.Index - b.Index })
	return out
}

// BootStateChangedError refuses a node whose attested PCRs differ from its
// pinned baseline. Apply refuses the node before anything is done to it;
// castellan verify reports drift.
type BootStateChangedError struct {
	Node    string
	Changed []PCRChange
	// Events explains the changes from the event log, one line per PCR
	// (none when the node has no log).
	Events []string
	// Baseline is the pinned one.
	Baseline *Baseline
}

func (e *BootStateChangedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "node %s: its boot state changed since the baseline pinned by run %s (%s, %s): ", e.Node, e.Baseline.Run, e.Baseline.Pinned.Format(time.DateOnly), e.Baseline.How)
	for i, c := range e.Changed {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "PCR %d (%s) was %s, now %s", c.Index, PCRMeaning(c.Index), short(c.Was), short(c.Now))
	}
	b.WriteString(". ")
	if len(e.Events) > 0 {
		b.WriteString("What the event log says: ")
		b.WriteString(strings.Join(e.Events, "; "))
		b.WriteString(". ")
	}
	fmt.Fprintf(&b, "A kernel, boot loader or firmware update is the expected reason: if you made one, accept the new boot state explicitly with castellan apply --accept-boot-state %s (the run records it). Otherwise treat the node as compromised. Nothing was done to it", e.Node)
	return b.String()
}

// Drift implements engine.DriftError.
func (*BootStateChangedError) Drift() {}

// PCRMeaning says in a few words what a PCR holds on PC Client machines
// (TCG PC Client Platform Firmware Profile, section 3.3.4; systemd's and
// GRUB's use of 8 to 15). The README has the details for BIOS and UEFI.
func PCRMeaning(i int) string {
	switch i {
	case 0:
		return "firmware code"
	case 1:
		return "firmware configuration"
	case 2:
		return "option ROM and UEFI driver code"
	case 3:
		return "option ROM configuration"
	case 4:
		return "boot loader code"
	case 5:
		return "boot loader configuration and partition table"
	case 6:
		return "platform state transitions"
	case 7:
		return "Secure Boot policy"
	case 8:
		return "GRUB commands and kernel command line"
	case 9:
		return "files GRUB loaded: kernel, initrd"
	case 10:
		return "IMA"
	case 11:
		return "unified kernel image"
	case 12:
		return "kernel command line and credentials (systemd-stub)"
	case 13:
		return "system extensions (systemd-stub)"
	case 14:
		return "shim's Machine Owner Keys"
	case 15:
		return "systemd: volume keys, machine ID"
	}
	return "not used by PC Client firmware"
}

// ReplayEventLog parses a TCG event log (go-attestation ParseEventLog: the
// crypto-agile format of TPM 2.0 firmware, TCG PC Client Platform Firmware
// Profile section 10) and replays it, PCR by PCR, against attested values.
// It returns the events of each PCR whose replay reaches its attested value
// (so the log's account of that PCR is the TPM's), ascending by PCR then in
// log order, and the PCRs the log does not explain: its events do not
// replay to the value, or it has none for a PCR that is not at its reset
// value (zeros): something was measured that the log does not hold (an
// extend after boot such as tpm2_pcrextend, or a tampered log).
func ReplayEventLog(raw []byte, vals []PCRValue) (events []BootEvent, unexplained []int, err error) {
	if len(raw) > MaxEventLog {
		return nil, nil, fmt.Errorf("event log larger than %d MiB", MaxEventLog>>20)
	}
	el, err := attest.ParseEventLog(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing the event log: %w", err)
	}
	if !slices.Contains(el.Algs, attest.HashSHA256) {
		// A log in the TPM 1.2 (SHA-1 only) format, as some BIOS firmware
		// writes even for a TPM 2.0: it cannot be replayed against the
		// SHA-256 bank, which says nothing about the values.
		return nil, nil, errors.New("the event log holds no SHA-256 digests (a SHA-1-only log): it cannot be replayed against the SHA-256 PCR bank")
	}
	zero := make([]byte, sha256.Size)
	for _, v := range vals {
		evs, err := el.Verify([]attest.PCR{{Index: v.Index, Digest: v.Digest, DigestAlg: crypto.SHA256}})
		if err != nil || (len(evs) == 0 && !bytes.Equal(v.Digest, zero)) {
			unexplained = append(unexplained, v.Index)
			continue
		}
		for _, e := range evs {
			events = append(events, BootEvent{PCR: e.Index, Type: e.Type.String(), SHA256: hex.EncodeToString(e.Digest), Data: describeEvent(uint32(e.Type), e.Data)})
		}
	}
	return events, unexplained, nil
}

// eventLogState is what Baseline.EventLog says of a replay.
func eventLogState(missing string, unexplained []int, err error) string {
	switch {
	case missing != "":
		return "none: " + missing
	case err != nil:
		return "unreadable: " + err.Error()
	case len(unexplained) > 0:
		return fmt.Sprintf("does not explain PCRs %v", unexplained)
	}
	return "replayed"
}

// explainChanges says, per changed PCR, what the event log shows: the
// events that are new and the baseline's that are gone, or that the log
// does not explain the new value, or that there is no log to ask.
func explainChanges(b *Baseline, changed []PCRChange, now []BootEvent, unexplained []int, logProblem string) []string {
	var out []string
	for _, c := range changed {
		switch {
		case logProblem != "":
			out = append(out, fmt.Sprintf("PCR %d: cannot tell which events (%s)", c.Index, logProblem))
		case slices.Contains(unexplained, c.Index):
			out = append(out, fmt.Sprintf("PCR %d: the event log does not replay to its value: something was measured into it that the log does not hold (an extend after boot, such as tpm2_pcrextend, or a tampered log)", c.Index))
		default:
			old := eventsOf(b.Events, c.Index)
			cur := eventsOf(now, c.Index)
			if len(old) == 0 && !strings.HasPrefix(b.EventLog, "replayed") {
				out = append(out, fmt.Sprintf("PCR %d: %d event(s) now (%s); the baseline holds none to compare with (%s)", c.Index, len(cur), describeEvents(cur, 4), b.EventLog))
				continue
			}
			gone, added := diffEvents(old, cur)
			var parts []string
			if len(added) > 0 {
				parts = append(parts, "new "+describeEvents(added, 4))
			}
			if len(gone) > 0 {
				parts = append(parts, "gone "+describeEvents(gone, 4))
			}
			if len(parts) == 0 {
				parts = append(parts, "the same events in another order")
			}
			out = append(out, fmt.Sprintf("PCR %d: %s", c.Index, strings.Join(parts, ", ")))
		}
	}
	return out
}

func eventsOf(evs []BootEvent, pcr int) []BootEvent {
	var out []BootEvent
	for _, e := range evs {
		if e.PCR == pcr {
			out = append(out, e)
		}
	}
	return out
}

// diffEvents returns the events of old not in cur and those of cur not in
// old (by type and digest, counting repeats).
func diffEvents(old, cur []BootEvent) (gone, added []BootEvent) {
	key := func(e BootEvent) string { return e.Type + "\x00" + e.SHA256 }
	count := map[string]int{}
	for _, e := range cur {
		count[key(e)]++
	}
	for _, e := range old {
		if count[key(e)] > 0 {
			count[key(e)]--
			continue
		}
		gone = append(gone, e)
	}
	count = map[string]int{}
	for _, e := range old {
		count[key(e)]++
	}
	for _, e := range cur {
		if count[key(e)] > 0 {
			count[key(e)]--
			continue
		}
		added = append(added, e)
	}
	return gone, added
}

// describeEvents lists up to max events briefly.
func describeEvents(evs []BootEvent, max int) string {
	var parts []string
	for i, e := range evs {
		if i == max {
			parts = append(parts, fmt.Sprintf("and %d more", len(evs)-max))
			break
		}
		s := e.Type
		if e.Data != "" {
			s += " " + e.Data
		}
		parts = append(parts, s+" (sha256 "+short(e.SHA256)+")")
	}
	if len(parts) == 0 {
		return "no events"
	}
	return strings.Join(parts, ", ")
}

// encodeBaseline is the state repo's form of b.
func encodeBaseline(b *Baseline) ([]byte, error) {
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}
