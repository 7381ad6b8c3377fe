package preflight

import (
	"time"

	"castellan/installer/facts"
)

// The node's clock is compared with the installer's in the agent exec that
// gathers the facts, with NTP's on-wire method (RFC 5905, section 8):
//
//	T1  the installer's wall clock when it sends the request (FactsRequest.Now)
//	T2  the node's wall clock when the operation starts
//	T3  the node's wall clock when the operation ends
//	T4  the installer's wall clock when the answer is back
//
// With d1 and d2 the (unknown, non-negative) delays there and back, and θ the
// true offset (node minus installer): T2 = T1 + θ + d1 and T4 = T3 - θ + d2.
// So θ = (T2 - T1) - d1 = (T3 - T4) + d2, which puts θ between T3 - T4 and
// T2 - T1; the midpoint is the estimate and half the width the bound:
//
//	Offset = ((T2 - T1) + (T3 - T4)) / 2
//	Bound  = ((T4 - T1) - (T3 - T2)) / 2
//
// The time the node spends gathering (T3 - T2) is left out of the bound; the
// SSH round trip, sudo and the agent's start are in it. T4 is taken as T1
// plus the installer's monotonic elapsed time, so a step of the installer's
// own clock during the call does not count.

// measureClock completes c with T4, the offset and its bound. sent is the
// installer's time.Now() taken before the call (it carries the monotonic
// clock), elapsed the monotonic time the call took. A node that did not
// stamp its answer leaves c unmeasured.
func measureClock(c *facts.Clock, sent time.Time, elapsed time.Duration) {
	if c.NodeReceived.IsZero() || c.NodeSent.IsZero() {
		return
	}
	t1 := sent.Round(0) // wall clock only
	t4 := t1.Add(elapsed)
	c.InstallerSent = t1
	c.InstallerReceived = t4
	c.Offset = (c.NodeReceived.Sub(t1) + c.NodeSent.Sub(t4)) / 2
	c.Bound = (t4.Sub(t1) - c.NodeSent.Sub(c.NodeReceived)) / 2
	if c.Bound < 0 {
		// The node's clock advanced more than the installer's during the
		// call: it was stepped (or runs far too fast). The estimate is then
		// off by up to that excess; report it as the bound.
		c.Bound = -c.Bound
	}
	c.Measured = true
}
