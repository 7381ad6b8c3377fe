package identity

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"castellan/phases/identity/swtpmtest"
)

// BenchmarkAttestation prints, against swtpm, what boot state attestation
// costs per node at every run: on the node, the quote (SRK derived, AK and
// key loaded, PCRs read around TPM2_Quote, TPM2_Certify of the key) and
// reading the event log; on the installer, decoding and verifying the quote
// (go-attestation) and replaying the event log (a synthesized UEFI log of
// 11 events). Also the bytes the quote adds to the node's one exec, and the
// TPM commands. The event log travels only when a baseline is pinned or a
// change explained.
func BenchmarkAttestation(b *testing.B) {
	ca := swtpmtest.NewLocalCA(b)
	r := newRig(b, ca)
	e, _, err := enrol(b, r, Policy{Cluster: "lab", Node: "a", EKRoots: ekRoots(b, ca)})
	if err != nil {
		b.Fatal(err)
	}
	boot := uefiBoot("grub")
	measure(b, r, boot)
	logFile := filepath.Join(b.TempDir(), "binary_bios_measurements")
	if err := os.WriteFile(logFile, eventLog(boot), 0o600); err != nil {
		b.Fatal(err)
	}
	rec := NewRecorder(WithRetry(r.conn))
	r.node.TPM = rec
	var quote, verify, readLog, replay time.Duration
	var size int
	for i := 0; b.Loop(); i++ {
		nonce := nonceOf(byte(i))
		start := time.Now()
		q, err := r.node.Quote(context.Background(), QuoteRequest{Nonce: nonce, PCRs: attestedPCRs})
		if err != nil {
			b.Fatal(err)
		}
		quote += time.Since(start)
		data, _ := json.Marshal(q)
		size = len(data)
		start = time.Now()
		var got Quote
		if err := got.UnmarshalJSON(data); err != nil {
			b.Fatal(err)
		}
		vals, err := VerifyQuote(QuoteCheck{Node: "a", AKName: e.AKName, Nonce: nonce, PCRs: attestedPCRs, KeyFingerprint: e.KeyFingerprint}, &got)
		if err != nil {
			b.Fatal(err)
		}
		verify += time.Since(start)
		start = time.Now()
		l, err := ReadEventLog(logFile)
		if err != nil {
			b.Fatal(err)
		}
		readLog += time.Since(start)
		start = time.Now()
		if _, unexplained, err := ReplayEventLog(l.Log, vals); err != nil || len(unexplained) > 0 {
			b.Fatal(err, unexplained)
		}
		replay += time.Since(start)
	}
	n := time.Duration(b.N)
	b.ReportMetric(float64(quote/n)/1e6, "ms/quote-on-node")
	b.ReportMetric(float64(verify/n)/1e6, "ms/verify-on-installer")
	b.ReportMetric(float64(replay/n)/1e6, "ms/event-log-replay")
	b.ReportMetric(float64(size), "bytes/quote")
	commands := 0
	per := map[string]int{}
	for name, c := range rec.Counts() {
		commands += c
		per[name] = c / b.N
	}
	b.ReportMetric(float64(commands)/float64(b.N), "TPM-commands/quote")
	b.Logf("per node and run on swtpm: quote on the node %v (%d TPM commands: %v), verification on the installer %v, %d bytes in the exec's answer; when a baseline is pinned or a change explained: event log read %v, replay %v",
		quote/n, commands/b.N, per, verify/n, size, readLog/n, replay/n)
}
