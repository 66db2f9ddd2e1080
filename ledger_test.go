package dim

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The ledger below the Manager: what a node holds in Redis, against a real
// redis-server, with the keys assigned by an elector driven rebalance by
// rebalance (see membership_test.go for the unit nodes).

// newLedger gives n a ledger, as its Manager would.
func (n *unitNode) newLedger() *ledger { return newLedger(n.env, n.mb, &hungSet{}, &confirmedKeys{}) }

// owner reads key's owner entry.
func (n *unitNode) owner(t *testing.T, key string) (ownerEntry, bool) {
	t.Helper()
	c := n.env.client
	v, err := c.Do(context.Background(), c.B().Hget().Key(n.env.k.owner).Field(key).Build()).ToString()
	if err != nil {
		return ownerEntry{}, false
	}
	return parseOwner(v)
}

// record reads key's state record, if it has one.
func (n *unitNode) record(t *testing.T, key string) (keyRecord, bool) {
	t.Helper()
	c := n.env.client
	v, err := c.Do(context.Background(), c.B().Hget().Key(n.env.k.state).Field(key).Build()).ToString()
	if err != nil {
		return keyRecord{}, false
	}
	var r keyRecord
	require.NoError(t, json.Unmarshal([]byte(v), &r))
	return r, true
}

// twoMembers joins n1 and n2, runs their sessions, and has n1 assign keys
// once as leader.
func twoMembers(t *testing.T, keys ...string) (n1, n2 *unitNode) {
	t.Helper()
	srv := redistest.Start(t)
	n1, n2 = newUnitNode(t, srv, "n1"), newUnitNode(t, srv, "n2")
	ctx := context.Background()
	for _, n := range []*unitNode{n1, n2} {
		require.NoError(t, n.mb.join(ctx))
		n.runSession()
	}
	epoch, st := n1.lead(t)
	n1.feed(keys...)
	_, err := n1.el.rebalance(ctx, epoch, triggerElected, st)
	require.NoError(t, err)
	return n1, n2
}

func TestALedgerClaimsPublishesAndReleasesItsKeys(t *testing.T) {
	t.Parallel()
	n1, n2 := twoMembers(t, "a", "b", "c", "d")
	ctx := context.Background()
	l1, l2 := n1.newLedger(), n2.newLedger()
	mine, _, err := l1.readAssigned(ctx)
	require.NoError(t, err)
	theirs, _, err := l2.readAssigned(ctx)
	require.NoError(t, err)
	require.Len(t, mine, 2)
	require.Len(t, theirs, 2)
	slices.Sort(mine)
	session, _ := n1.mb.current()

	// A service's first start waits out a grace period: refused claims wait
	// for its end, then are granted.
	var granted map[string]uint64
	eventually(t, 3*testTTL, "n1's claims granted", func() bool {
		granted, _, err = l1.claim(ctx, session, mine)
		if len(granted) == 0 {
			for _, key := range mine {
				require.True(t, l1.waiting[key].After(time.Now()), "a refused key waits")
			}
		}
		return err == nil && len(granted) == len(mine)
	})
	assert.Equal(t, granted, l1.claimed, "granted keys are on the books with their tokens")
	assert.NotEqual(t, granted[mine[0]], granted[mine[1]])
	for _, key := range mine {
		assert.NotZero(t, granted[key])
		o, ok := n1.owner(t, key)
		require.True(t, ok)
		assert.Equal(t, "n1", o.node)
		assert.Equal(t, granted[key], o.token)
	}

	// Another node gets nothing of keys not assigned to it, and a session
	// that ended claims nothing at all.
	none, held, err := l2.claim(ctx, mustSession(t, n2), mine)
	require.NoError(t, err)
	assert.Empty(t, none)
	assert.Zero(t, held)
	none, _, err = l1.claim(ctx, "ended", mine)
	require.NoError(t, err)
	assert.Empty(t, none)

	// Running keys say so in their owner entries; a steady state writes
	// nothing: an entry changed behind the ledger's back stays as it is.
	l1.syncStates(ctx, session, mine, nil)
	for _, key := range mine {
		o, _ := n1.owner(t, key)
		assert.Equal(t, KeyRunning, o.implicit.State, key)
	}
	c := n1.env.client
	v, err := c.Do(ctx, c.B().Hget().Key(n1.env.k.owner).Field(mine[0]).Build()).ToString()
	require.NoError(t, err)
	f := strings.Fields(v)
	require.NoError(t, c.Do(ctx, c.B().Hset().Key(n1.env.k.owner).FieldValue().FieldValue(mine[0], strings.Join(f[:4], " ")).Build()).Error())
	l1.syncStates(ctx, session, mine, nil)
	o, _ := n1.owner(t, mine[0])
	assert.Equal(t, KeyCreating, o.implicit.State, "nothing changed, so nothing was written")

	// A failure is published as a record with its error and next try, and
	// schedules the node's next look.
	clear(l1.waiting) // as the reconcile does for granted keys
	before := time.Now()
	l1.recordFailure(mine[0], "v1", "health check", errors.New("boom"))
	l1.syncStates(ctx, session, mine[1:], nil)
	r, ok := n1.record(t, mine[0])
	require.True(t, ok)
	assert.Equal(t, KeyFailing, r.State)
	assert.Equal(t, 1, r.Attempts)
	assert.Equal(t, "boom", r.Err)
	next := l1.nextRetry(func(string) bool { return false })
	assert.True(t, l1.nextRetry(func(string) bool { return true }).IsZero(), "a busy key's backoff wakes nothing")
	assert.False(t, next.Before(before.Add(l1.retryMin/2)), "the backoff is at least half the base delay")
	assert.False(t, next.After(time.Now().Add(l1.retryMin)), "the first retry comes within the base delay")

	// The backoff holds for the config that failed (and for a config whose
	// hash is not known yet); a changed config ends the streak.
	now := time.Now()
	assert.True(t, l1.backingOff(mine[0], "v1", now))
	assert.True(t, l1.backingOff(mine[0], "", now))
	l1.recordFailure(mine[0], "v1", "health check", errors.New("boom"))
	assert.Equal(t, 2, l1.failures[mine[0]].attempts, "the same config fails again: the streak goes on")
	assert.False(t, l1.backingOff(mine[0], "v2", now), "a changed config is tried at once")
	assert.NotContains(t, l1.failures, mine[0])
	l1.recordFailure(mine[0], "v1", "health check", errors.New("boom"))
	l1.recordFailure(mine[0], "v2", "create", errors.New("bad password"))
	assert.Equal(t, 1, l1.failures[mine[0]].attempts, "the new config's first failure counts from one")

	// A release frees the keys and their records.
	require.NoError(t, l1.release(ctx, session, mine))
	assert.Empty(t, l1.claimed)
	for _, key := range mine {
		_, owned := n1.owner(t, key)
		assert.False(t, owned, "%s released", key)
		_, recorded := n1.record(t, key)
		assert.False(t, recorded, "%s's record dropped", key)
	}
}

func TestALedgerReleasesAllButWhatAHungCallHolds(t *testing.T) {
	t.Parallel()
	n1, _ := twoMembers(t, "a", "b", "c", "d")
	ctx := context.Background()
	l1 := n1.newLedger()
	mine, _, err := l1.readAssigned(ctx)
	require.NoError(t, err)
	require.Len(t, mine, 2)
	session := mustSession(t, n1)
	eventually(t, 3*testTTL, "n1's claims granted", func() bool {
		granted, _, err := l1.claim(ctx, session, mine)
		return err == nil && len(granted) == len(mine)
	})
	l1.hung.add(mine[0])
	l1.releaseAll(ctx, session)
	assert.Empty(t, l1.claimed, "the books are cleared")
	_, owned := n1.owner(t, mine[0])
	assert.True(t, owned, "a key whose call hangs stays claimed until the call returns")
	_, owned = n1.owner(t, mine[1])
	assert.False(t, owned, "the other key is released")
}

// mustSession is n's current session.
func mustSession(t *testing.T, n *unitNode) string {
	t.Helper()
	session, _ := n.mb.current()
	require.NotEmpty(t, session)
	return session
}
