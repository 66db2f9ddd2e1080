package dim

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/redis/rueidis/rueidislock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// assignment reads the assignment as Redis holds it.
func (n *unitNode) assignment(t *testing.T) Assignment {
	t.Helper()
	c := n.env.client
	m, err := c.Do(context.Background(), c.B().Hgetall().Key(n.env.k.assign).Build()).AsStrMap()
	require.NoError(t, err)
	return Assignment(m)
}

// counts is how many keys each node has in a.
func counts(a Assignment) map[string]int {
	out := map[string]int{}
	for _, node := range a {
		out[node]++
	}
	return out
}

// startUnit joins n and runs its session and its elector.
func startUnit(t *testing.T, n *unitNode) {
	t.Helper()
	require.NoError(t, n.mb.join(context.Background()))
	n.runSession()
	n.runElector()
}

func TestAnElectorLeadsAndAssignsTheKeysItIsFed(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	n := newUnitNode(t, srv, "n1")
	n.feed("a", "b", "c", "d", "e", "f")
	startUnit(t, n)

	eventually(t, 2*testTTL, "n1 leads", n.el.isLeader)
	eventually(t, 2*testTTL, "every fed key assigned", func() bool { return len(n.assignment(t)) == 6 })
	assert.Equal(t, map[string]int{"n1": 6}, counts(n.assignment(t)))
	rec, err := n.env.db().leader(context.Background())
	require.NoError(t, err)
	epoch, _ := n.el.term.current()
	assert.Equal(t, recordedLeader{node: "n1", epoch: epoch, live: true}, rec)

	// A new key in the feed is assigned on the next refresh.
	n.feed("a", "b", "c", "d", "e", "f", "g")
	n.env.triggerLeader(triggerRefresh)
	eventually(t, 2*testTTL, "the new key assigned", func() bool { return n.assignment(t)["g"] == "n1" })
}

func TestOneOfTwoElectorsLeadsAndSplitsTheKeysEvenly(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	n1, n2 := newUnitNode(t, srv, "n1"), newUnitNode(t, srv, "n2")
	for _, n := range []*unitNode{n1, n2} {
		n.feed("a", "b", "c", "d", "e", "f")
		startUnit(t, n)
	}
	eventually(t, 3*testTTL, "3 keys on each node", func() bool {
		c := counts(n1.assignment(t))
		return c["n1"] == 3 && c["n2"] == 3
	})
	assert.True(t, n1.el.isLeader() != n2.el.isLeader(), "exactly one leads")
}

// lead takes the leader lock and a term for n, without the campaign, so
// that a test can run rebalances one by one.
func (n *unitNode) lead(t *testing.T) (uint64, *leaderMemory) {
	t.Helper()
	_, release, err := n.env.locker.TryWithContext(n.env.runCtx, lockName)
	require.NoError(t, err)
	t.Cleanup(release)
	epoch, err := n.el.becomeLeader(context.Background())
	require.NoError(t, err)
	require.NotZero(t, epoch)
	return epoch, &leaderMemory{observed: time.Now(), fleet: -1, moving: map[string]string{}}
}

func TestAnElectorThatCannotReadConfigsMovesNothingThatRuns(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	n1, n2 := newUnitNode(t, srv, "n1"), newUnitNode(t, srv, "n2")
	ctx := context.Background()
	require.NoError(t, n1.mb.join(ctx))
	n1.runSession()
	epoch, st := n1.lead(t)
	configErr := func() string {
		c := n1.env.client
		v, _ := c.Do(ctx, c.B().Hget().Key(n1.env.k.cfgErr).Field("n1").Build()).ToString()
		return v
	}

	n1.feed("a", "b", "c", "d")
	_, err := n1.el.rebalance(ctx, epoch, triggerElected, st)
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"n1": 4}, counts(n1.assignment(t)))

	n1.keys.Store(nil) // getConfig fails from now on
	require.NoError(t, n2.mb.join(ctx))
	n2.runSession()
	_, err = n1.el.rebalance(ctx, epoch, "node "+evJoin, st)
	require.NoError(t, err, "unreadable configs are no failed rebalance")
	assert.Equal(t, map[string]int{"n1": 4}, counts(n1.assignment(t)), "no key moves to the joiner while configs are unreadable")
	assert.Contains(t, configErr(), "configs unreadable", "the leader's config error is recorded for Status")

	n1.feed("a", "b", "c", "d")
	_, err = n1.el.rebalance(ctx, epoch, triggerRefresh, st)
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"n1": 2, "n2": 2}, counts(n1.assignment(t)), "the keys split once configs read again")
	assert.Empty(t, configErr(), "the config error is cleared")
}

func TestAFencedLeaderStepsDownAndTheNextLeadsWithANewerEpoch(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	n1, n2 := newUnitNode(t, srv, "n1"), newUnitNode(t, srv, "n2")
	n1.feed("a", "b")
	n2.feed("a", "b")
	startUnit(t, n1)
	eventually(t, 2*testTTL, "n1 leads", n1.el.isLeader)
	old, _ := n1.el.term.current()
	startUnit(t, n2)

	n1.mayRejoin.Store(false)
	session, _ := n1.mb.current()
	n1.mb.fence(session, "test")
	eventually(t, 3*testTTL, "n2 leads", n2.el.isLeader)
	assert.False(t, n1.el.isLeader(), "a fenced node does not lead")
	next, _ := n2.el.term.current()
	assert.Greater(t, next, old, "every term has a newer epoch")
	eventually(t, 3*testTTL, "both keys on n2", func() bool { return counts(n2.assignment(t))["n2"] == 2 })
}

func TestAnElectorWhoseNodeIsNotAMemberDoesNotCampaign(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	n := newUnitNode(t, srv, "n1")
	n.feed("a")
	n.runElector()
	for range 3 {
		asked := n.polled.Load()
		n.env.triggerCampaign()
		eventually(t, testTTL, "the campaign looks", func() bool { return n.polled.Load() > asked })
	}
	assert.False(t, n.el.isLeader())
	rec, err := n.env.db().leader(context.Background())
	require.NoError(t, err)
	assert.Empty(t, rec.node, "no leader recorded")

	require.NoError(t, n.mb.join(context.Background()))
	n.runSession()
	n.env.triggerCampaign()
	eventually(t, 2*testTTL, "n1 leads once a member", n.el.isLeader)
}

func TestAnElectorHandsOffWithALastRebalance(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	n1, n2 := newUnitNode(t, srv, "n1"), newUnitNode(t, srv, "n2")
	for _, n := range []*unitNode{n1, n2} {
		n.feed("a", "b", "c", "d")
	}
	startUnit(t, n1)
	eventually(t, 2*testTTL, "n1 leads", n1.el.isLeader)
	startUnit(t, n2)
	eventually(t, 3*testTTL, "keys split", func() bool { return counts(n1.assignment(t))["n2"] == 2 })

	// Stop's order: the node stops taking work, drains (weight 0), and the
	// leader makes its last rebalance.
	n1.stopping.Store(true)
	require.NoError(t, n1.mb.drain(context.Background()))
	ctx, cancel := context.WithTimeout(context.Background(), 2*testTTL)
	defer cancel()
	start := time.Now()
	n1.el.handOff(ctx)
	assert.Less(t, time.Since(start), testTTL, "the handoff waits for one rebalance, not a lease")
	assert.Equal(t, map[string]int{"n2": 4}, counts(n1.assignment(t)), "the last rebalance moved the leader's keys away")
	eventually(t, testTTL, "the term ended", func() bool { return !n1.el.isLeader() })
}

// deafLocker is a locker whose waiters are never woken: the lock key's
// invalidation is lost (the key deleted by the node's own connection, which
// NOLOOP keeps quiet, or a notification dropped under load). Its first try
// fails, as if the lock were still held.
type deafLocker struct {
	rueidislock.Locker
	tries atomic.Int32
}

func (l *deafLocker) WithContext(ctx context.Context, _ string) (context.Context, context.CancelFunc, error) {
	<-ctx.Done()
	return nil, nil, ctx.Err()
}

func (l *deafLocker) TryWithContext(ctx context.Context, name string) (context.Context, context.CancelFunc, error) {
	if l.tries.Add(1) == 1 {
		return nil, nil, rueidislock.ErrNotLocked
	}
	return l.Locker.TryWithContext(ctx, name)
}

// A waiter that is never woken still takes a free lock: the campaign tries
// again every lock TTL while it waits. (Seen under load: a leader lost its
// lock, its node waited for a notice that never came, the other node was
// cut off, and for 13 s nobody led and a dead node's keys stayed dark.)
func TestACampaignWhoseWakeUpIsLostStillTakesAFreeLock(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	n := newUnitNode(t, srv, "n1")
	deaf := &deafLocker{Locker: n.env.locker}
	n.env.locker = deaf
	n.feed("a", "b")
	startUnit(t, n)
	eventually(t, 4*testLockTTL, "n1 leads", n.el.isLeader)
	assert.GreaterOrEqual(t, deaf.tries.Load(), int32(2), "it tried again")
}
