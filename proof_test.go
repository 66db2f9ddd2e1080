package dim

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/history"
	"github.com/stretchr/testify/assert"
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

// TestAHungPrepareEndsOnceItsKeyMovedTheNormalWay: WithPrepare's doc says
// both functions run under the callback timeout, and that prepare's
// context ends when the instance must stop. A prepare that hangs past
// within lets the key move the normal way (createInstance on the new
// owner); the prepare is then of no use, and past the callback timeout at
// the latest its context must end. startPrepare calls prepare without a
// bound, and the context's cancel is only reachable through the result,
// so it runs on until the node's lease ends.
func TestAHungPrepareEndsOnceItsKeyMovedTheNormalWay(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	log := &handoffLog{}
	c.startNode(c.preparingNode("n1", log, sleepFor(0), 300*time.Millisecond))
	c.waitConverged(10*time.Second, "n1")
	var mu sync.Mutex
	hung, ended := map[string]bool{}, map[string]bool{}
	c.startNode(c.preparingNode("n2", log, func(ctx context.Context, key string) error {
		mu.Lock()
		hung[key] = true
		mu.Unlock()
		<-ctx.Done()
		mu.Lock()
		ended[key] = true
		mu.Unlock()
		return ctx.Err()
	}, 300*time.Millisecond))
	c.waitConverged(10*time.Second, "n1", "n2")
	assert.Empty(t, history.Overlaps(c.rec.Events()))
	// The callback timeout of the test nodes is 2 s.
	c.eventually(5*time.Second, "the hung prepares' contexts ended", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(hung) > 0 && fmt.Sprint(hung) == fmt.Sprint(ended)
	})
}
