package dim

import (
	"testing"
	"time"
)

// Found while measuring issue 16's move budget and make-before-break.

// TestStatusShowsNoMovesInFlightOnceTheyLanded: after the last step of a
// join under a move budget has landed, Status.LastRebalance.InFlight must
// come back to zero. The leader looks again one heartbeat after the step
// and finds nothing in flight, but answer() skips recording an outcome
// whose error, moves and pending count are unchanged, so the count of the
// last step stays in Status until the next rebalance that moves keys.
func TestStatusShowsNoMovesInFlightOnceTheyLanded(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 12)
	budget := WithMoveBudget(2, 0)
	c.start("n1", budget)
	c.start("n2", budget)
	c.waitConverged(10*time.Second, "n1", "n2")
	c.start("n3", budget)
	c.eventually(30*time.Second, "balanced over three nodes", func() bool {
		return c.converged("n1", "n2", "n3") && len(c.status().Misplaced) == 0
	})
	c.eventually(10*time.Second, "Status shows no moves in flight", func() bool {
		r := c.status().LastRebalance
		return r != nil && r.InFlight == 0 && r.Pending == 0
	})
}
