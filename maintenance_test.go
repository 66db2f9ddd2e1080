package dim

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/faultproxy"
	"github.com/go-dim/dim/internal/history"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// node returns the status of one node, or nil.
func (st *Status) node(id string) *NodeStatus {
	i := slices.IndexFunc(st.Nodes, func(n NodeStatus) bool { return n.ID == id })
	if i < 0 {
		return nil
	}
	return &st.Nodes[i]
}

func TestADrainedNodeStaysAMemberAndGetsNoKeysUntilUndrained(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id)
	}
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	admin := c.srv.Client(t)
	ctx := context.Background()

	until, err := DrainNode(ctx, admin, Service{Name: c.service}, "n2", time.Minute)
	require.NoError(t, err)
	assert.WithinDuration(t, time.Now().Add(time.Minute), until, 5*time.Second)
	c.waitConverged(5*time.Second, "n1", "n3")
	st := c.status()
	n2 := st.node("n2")
	require.NotNil(t, n2, "a drained node stays a member")
	assert.Equal(t, NodeDrained, n2.State)
	assert.Greater(t, n2.DrainedFor, 50*time.Second)
	assert.Equal(t, 0, n2.Assigned)
	assert.Positive(t, n2.LeaseLeft)

	// Draining the last node that takes keys is refused; so is a node that
	// is not live.
	_, err = DrainNode(ctx, admin, Service{Name: c.service}, "n1", time.Minute)
	require.NoError(t, err)
	_, err = DrainNode(ctx, admin, Service{Name: c.service}, "n3", time.Minute)
	require.ErrorIs(t, err, ErrLastNode)
	_, err = DrainNode(ctx, admin, Service{Name: c.service}, "n9", time.Minute)
	require.ErrorIs(t, err, ErrUnknownNode)
	_, err = DrainNode(ctx, admin, Service{Name: c.service}, "n2", 0)
	require.ErrorIs(t, err, ErrInvalidOption)
	c.waitConverged(5*time.Second, "n3")

	for _, id := range []string{"n1", "n2"} {
		was, err := UndrainNode(ctx, admin, Service{Name: c.service}, id)
		require.NoError(t, err)
		assert.True(t, was)
	}
	was, err := UndrainNode(ctx, admin, Service{Name: c.service}, "n2")
	require.NoError(t, err)
	assert.False(t, was, "no drain left to end")
	c.waitConverged(5*time.Second, "n1", "n2", "n3")
	assert.Equal(t, NodeActive, c.status().node("n2").State)
	assert.Empty(t, history.Overlaps(c.rec.Events()))
}

func TestADrainEndsByItself(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	n1 := c.start("n1")
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	_, err := n1.m.Drain(context.Background(), 1500*time.Millisecond)
	require.NoError(t, err)
	c.waitConverged(5*time.Second, "n2")
	// Nobody undrains it: the leader gives it keys again when the drain
	// runs out.
	c.waitConverged(5*time.Second, "n1", "n2")
	assert.Zero(t, c.status().node("n1").DrainedFor)
}

func TestAFreezeHoldsVoluntaryMovesButNotFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	c.start("n1")
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	admin := c.srv.Client(t)
	ctx := context.Background()
	require.NoError(t, Freeze(ctx, admin, Service{Name: c.service}, time.Minute))
	err := Freeze(ctx, admin, Service{Name: c.service}, time.Minute)
	require.ErrorIs(t, err, ErrFrozen, "a freeze in force is not replaced")
	st := c.status()
	require.NotNil(t, st.Frozen)
	assert.Greater(t, st.Frozen.Left, 50*time.Second)

	// A join moves nothing while frozen, nor does a manual rebalance.
	before := c.status().Assignment
	c.start("n3")
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	res, err := RequestRebalance(rctx, admin, Service{Name: c.service})
	cancel()
	require.NoError(t, err)
	assert.Zero(t, res.Moves)
	assert.Equal(t, before, c.status().Assignment, "nothing moved")
	assert.Zero(t, c.loads()["n3"])

	// A drain is explicit: it moves its node's keys even now.
	_, err = DrainNode(ctx, admin, Service{Name: c.service}, "n2", time.Minute)
	require.NoError(t, err)
	c.eventually(5*time.Second, "n2's keys moved", func() bool {
		return c.loads()["n2"] == 0 && len(c.rec.LiveByKey()) == 6
	})
	_, err = UndrainNode(ctx, admin, Service{Name: c.service}, "n2")
	require.NoError(t, err)

	// A crash is a failure: its keys move at once.
	victim := "n1"
	c.crash(victim)
	c.eventually(testTTL+3*time.Second, "the crashed node's keys running elsewhere", func() bool {
		live := c.rec.LiveByKey()
		if len(live) != 6 {
			return false
		}
		for _, on := range live {
			if slices.Contains(on, victim) {
				return false
			}
		}
		return true
	})

	// Thawed, the service balances again.
	was, err := Thaw(ctx, admin, Service{Name: c.service})
	require.NoError(t, err)
	assert.True(t, was)
	c.waitConverged(5*time.Second, "n2", "n3")
	assert.Nil(t, c.status().Frozen)
	assert.Empty(t, history.Overlaps(c.rec.Events()))
}

// A freeze holds what an operator or a deploy does (a join, a new weight,
// the end of a drain) and nothing a failure needs: a leave and a fence move
// their keys at once.
func TestAFreezeHandlesLeavesAndFencesAndHoldsJoinsWeightsAndDrainEnds(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id)
	}
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	admin := c.srv.Client(t)
	ctx := context.Background()
	svc := Service{Name: c.service}
	require.NoError(t, Freeze(ctx, admin, svc, time.Minute))
	movesNow := func() int {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		res, err := RequestRebalance(rctx, admin, svc)
		require.NoError(t, err)
		return res.Moves
	}
	runsOnly := func(nodes ...string) func() bool {
		return func() bool {
			live := c.rec.LiveByKey()
			if len(live) != 6 {
				return false
			}
			for _, on := range live {
				if len(on) != 1 || !slices.Contains(nodes, on[0]) {
					return false
				}
			}
			return true
		}
	}

	// A graceful leave hands its keys off at once.
	c.stop("n3")
	c.eventually(5*time.Second, "n3's keys running on n1 and n2", runsOnly("n1", "n2"))

	// The same node back with another weight is a voluntary change: held.
	c.start("n3", WithWeight(3))
	assert.Zero(t, movesNow(), "a join with a new weight moves nothing while frozen")
	assert.Zero(t, c.loads()["n3"])

	// A fence is a failure: the fenced node's keys move at once.
	victim := c.node("n1")
	victim.proxy.Cut(faultproxy.Both)
	c.eventually(testTTL+3*time.Second, "n1's keys running elsewhere", func() bool {
		return runsOnly("n2", "n3")()
	})
	victim.proxy.Heal()
	c.eventually(5*time.Second, "n1 back as a member", func() bool {
		n := c.status().node("n1")
		return n != nil && n.State == NodeActive
	})
	assert.Zero(t, movesNow(), "the fenced node's rejoin moves nothing while frozen")

	// A drain moves its node's keys even now; its end moves nothing back.
	_, err := DrainNode(ctx, admin, svc, "n2", 1500*time.Millisecond)
	require.NoError(t, err)
	c.eventually(5*time.Second, "n2's keys moved", func() bool { return c.loads()["n2"] == 0 && runsOnly("n1", "n3")() })
	c.eventually(5*time.Second, "the drain over", func() bool {
		n := c.status().node("n2")
		return n != nil && n.DrainedFor == 0 && n.State == NodeActive
	})
	assert.Zero(t, movesNow(), "the end of a drain moves nothing while frozen")
	assert.Zero(t, c.loads()["n2"])

	// Thawed, the service balances by the weights: 1, 1 and 3.
	_, err = Thaw(ctx, admin, svc)
	require.NoError(t, err)
	c.eventually(10*time.Second, "balanced by weight", func() bool {
		l := c.loads()
		return l["n1"] == 1 && l["n2"] == 1 && l["n3"] == 4 && runsOnly("n1", "n2", "n3")()
	})
	assert.Empty(t, history.Overlaps(c.rec.Events()))
}
