package identity

import (
	"context"
	"testing"
	"time"

	"castellan/installer/pki"
	"castellan/phases/identity/swtpmtest"
)

// BenchmarkEnrolment prints, against swtpm, the time of a first enrolment
// of a node (AK and key created, activation, certification, certificate
// issued), of a renewal rerun that reuses the identity (no TPM object
// created), and of the read-only observation a no-op rerun costs.
func BenchmarkEnrolment(b *testing.B) {
	ca := swtpmtest.NewLocalCA(b)
	auth, err := pki.NewAuthority("lab", time.Now())
	if err != nil {
		b.Fatal(err)
	}
	r := newRig(b, ca)
	p := Policy{Cluster: "lab", Node: "server-1", EKRoots: ekRoots(b, ca)}
	var first, reuse, observe time.Duration
	for i := 0; i < b.N; i++ {
		r.node.Dir = b.TempDir()
		start := time.Now()
		e, _, err := enrol(b, r, p)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := e.Issue(auth, time.Now(), 0); err != nil {
			b.Fatal(err)
		}
		first += time.Since(start)

		start = time.Now()
		e, att, err := enrol(b, r, p)
		if err != nil || len(att.Created) != 0 {
			b.Fatalf("rerun: %v %v", att.Created, err)
		}
		if _, _, err := e.Issue(auth, time.Now(), 0); err != nil {
			b.Fatal(err)
		}
		reuse += time.Since(start)

		start = time.Now()
		if _, err := r.node.Observe(context.Background()); err != nil {
			b.Fatal(err)
		}
		observe += time.Since(start)
	}
	n := time.Duration(b.N)
	b.ReportMetric(float64((first / n).Milliseconds()), "ms/enrolment")
	b.ReportMetric(float64((reuse / n).Milliseconds()), "ms/renewal-rerun")
	b.ReportMetric(float64((observe / n).Microseconds()), "µs/no-op-observe")
	b.Logf("per node on swtpm: first enrolment %v, renewal rerun reusing the identity %v, no-op rerun observation %v", first/n, reuse/n, observe/n)
}
