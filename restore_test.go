package dim

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/faultproxy"
	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/require"
)

// Adversarial review of the restore handling (trust, generations, verify,
// "an unconfirmed claim is free after the grace"). Each test shows a way to
// run a key twice that the change opened or left open.

// R1. A disconnect in progress (not yet past the callback timeout) when
// Redis restores a record is never confirmed: verifyOwnership skips
// entries that are stopping, and the disconnect is not yet in the hung set.
// Once the grace ends, claimScript treats the unconfirmed claim as free and
// the key's assignee starts it while the old instance's disconnect still
// runs. Without the restore the assignee would have waited for the release.
func TestADisconnectInProgressAtARestoreKeepsItsKey(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newSafetyCluster(t, 2)
	// A disconnect may legitimately take up to the callback timeout.
	opts := []Option{WithCallbackTimeout(5 * time.Second)}
	c.start("n1", opts...)
	c.waitConverged(10*time.Second, "n1")

	var slow atomic.Bool
	started := make(chan string, 1)
	c.setOnDisconnect(func(node, key string) {
		if node == "n1" && slow.CompareAndSwap(true, false) {
			started <- key
			time.Sleep(3 * time.Second) // well under the 5s callback timeout
		}
	})
	slow.Store(true)
	c.start("n2", opts...) // takes one of n1's keys: a handoff
	var key string
	select {
	case key = <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("no handoff began")
	}
	// Mid-handoff: the record says n1 owns the key, assigned to n2. Redis
	// crashes and restarts from a snapshot of exactly that.
	admin := c.srv.Client(t)
	require.NoError(t, admin.Do(context.Background(), admin.B().Save().Build()).Error())
	c.srv.Restart()
	t.Logf("Redis restored mid-handoff of %s", key)

	c.waitConverged(10*time.Second, "n1", "n2")
	assertNoOverlap(t, c.rec, "a restore during a slow (not hung) disconnect: the grace freed "+key+" while n1 still stopped it")
}

// R2. A createInstance that hangs past the callback timeout keeps its key
// on the node "while the node holds its lease" (README, SAFETY.md). After a
// restore to a record taken before the claim, verifyOwnership does check
// the hung key, but when the record gives it to another session it does
// nothing (no entry to stop): the hung call keeps running under a live lease,
// and after the grace the key's new assignee starts it too.
func TestAHungCreateAtARestoreKeepsItsKey(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newSafetyCluster(t, 2)
	c.start("n1", slowLease()...)
	c.start("n2", slowLease()...)
	c.waitConverged(10*time.Second, "n1", "n2")
	key := runsOn(c.rec, "n1")[0]

	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	started := make(chan struct{}, 1)
	c.setOnCreate(func(_ context.Context, node string, cfg testConfig) error {
		if node == "n2" && cfg.Key == key {
			select {
			case started <- struct{}{}:
			default:
			}
			select { // hangs, ignoring its context, for 10s
			case <-release:
			case <-time.After(10 * time.Second):
			}
		}
		return nil
	})
	admin := c.srv.Client(t)
	require.NoError(t, admin.Do(context.Background(), admin.B().Save().Build()).Error())
	saved := time.Now()
	c.stop("n1") // hands key to n2, whose create hangs
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("n2 never began creating " + key)
	}
	time.Sleep(2200 * time.Millisecond) // past the 2s callback timeout: hung
	require.Less(t, time.Since(saved), 2900*time.Millisecond, "n2's lease in the snapshot must still be live")
	c.srv.Restart() // back to the snapshot: key owned by n1
	t.Logf("Redis restored %v after the snapshot; n2's create of %s hangs", time.Since(saved), key)
	c.start("n3", slowLease()...) // the leader gives the dead n1's key to n3
	c.poll(12*time.Second, func() bool { return len(runsOn(c.rec, "n3")) > 0 })
	// n2 never fenced: the instance of its other key is the first and only.
	for _, r := range c.tokenHistory() {
		if r.node == "n2" && r.key != key {
			require.Contains(t, runsOn(c.rec, "n2"), r.key)
		}
	}
	ups := 0
	for _, r := range c.tokenHistory() {
		if r.node == "n2" && r.key != key {
			ups++
		}
	}
	require.Equal(t, 1, ups, "n2 fenced or recreated its other key")
	assertNoOverlap(t, c.rec, "a restore while n2's create of "+key+" hung (n2 held its lease throughout)")
}

// R3. Upgrade path: the previous release wrote owner entries as
// "node session token", with no generation. claimScript parses their
// generation as "" ≠ the record's, so it treats every such claim as
// unconfirmed-after-a-restore and grants it to the key's assignee at once,
// whatever the owner's liveness. During a rolling upgrade a handoff from a
// node of the old release to one of the new therefore does not wait for the
// release. Simulated here by rewriting n1's owner entries in the old format
// (what n1 would hold had it run the previous release).
func TestAnOwnerEntryOfThePreviousReleaseIsNotFree(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newSafetyCluster(t, 2)
	c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	admin := c.srv.Client(t)
	ctx := context.Background()
	k := newKeyspace("", c.service)
	owners, err := admin.Do(ctx, admin.B().Hgetall().Key(k.owner).Build()).AsStrMap()
	require.NoError(t, err)
	for key, v := range owners {
		// node session token generation, and r<ms> once the key runs
		f := strings.Fields(v)
		require.GreaterOrEqual(t, len(f), 4, "new-format owner entry %q", v)
		require.NoError(t, admin.Do(ctx, admin.B().Hset().Key(k.owner).FieldValue().
			FieldValue(key, strings.Join(f[:3], " ")).Build()).Error())
	}
	var slow atomic.Bool
	slow.Store(true)
	c.setOnDisconnect(func(node, key string) {
		if node == "n1" && slow.CompareAndSwap(true, false) {
			time.Sleep(time.Second) // a disconnect that takes a second
		}
	})
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	assertNoOverlap(t, c.rec, "a handoff from an owner whose entry the previous release wrote")
}

// R4. Cost, not safety: Redis gives a master a new master_replid when its
// first replica attaches (and again when its backlog is freed after
// repl-backlog-ttl without replicas). Nothing was lost and nothing
// restarted, yet trust reads it as "another server": every service on that
// Redis starts a "restored" grace (no instance starts anywhere for the
// largest TTL) and every node re-verifies. SAFETY.md and README say this
// costs only restarts from persistence and failovers.
func TestAttachingAReplicaIsNotARestore(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 2)
	c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	replica := redistest.Start(t, redistest.WithName("replica"))
	rc := replica.Client(t)
	host, port, err := net.SplitHostPort(c.srv.Addr())
	require.NoError(t, err)
	require.NoError(t, rc.Do(context.Background(), rc.B().Replicaof().Host(host).Port(mustAtoi(t, port)).Build()).Error())
	graced := c.poll(3*time.Second, func() bool {
		st, err := ReadStatus(context.Background(), c.srv.Client(t), Service{Name: c.service})
		return err == nil && st.Grace != nil
	})
	require.False(t, graced, "attaching a replica (no restart, no failover, nothing lost) started a grace period")
}

func mustAtoi(t *testing.T, s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	require.NoError(t, err)
	return n
}

// R5. WithDurableRedis says "every replica should agree; one without it is
// merely more careful". It is not: trust lets the first script after a
// restart decide for everyone. A durable node's script adopts the restored
// record (HSET origin id), and the careful node's next script finds the
// same id and trusts it too: no grace, no generation, no verify. So a
// rolling removal of WithDurableRedis (say, after moving to appendfsync
// everysec or adding a replica) protects nobody until the last node with it
// is gone.
func TestANodeWithoutDurableRedisStaysCareful(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	c.start("n1", append(slowLease(), WithDurableRedis())...)
	n2 := c.start("n2", slowLease()...)
	c.waitConverged(10*time.Second, "n1", "n2")
	admin := c.srv.Client(t)
	require.NoError(t, admin.Do(context.Background(), admin.B().Save().Build()).Error())
	n2.proxy.Cut(faultproxy.Both) // n1's heartbeat is the first script after the restart
	c.srv.Restart()
	time.Sleep(700 * time.Millisecond)
	n2.proxy.Heal()
	graced := c.poll(3*time.Second, func() bool {
		st, err := ReadStatus(context.Background(), c.srv.Client(t), Service{Name: c.service})
		return err == nil && st.Grace != nil
	})
	require.True(t, graced, "Redis restarted from a snapshot and n2, without WithDurableRedis, never treated the record as restored")
}

// R6. verifyOwnership runs in the heartbeat goroutine while the node loop
// goes on. It confirms keys the node holds at one moment; when the node loop
// released one of them in between (its disconnect just returned), the
// script wrote the entry again, for a key the node no longer had on its
// books. Nothing ever released it: every claim of that key was refused for
// as long as the node lived (a chaos run saw a key dark for 20 s after an
// RDB restore). The test makes the node confirm a key it does not hold, as
// the race does, and expects the entry gone again soon.
func TestAnEntryConfirmedAfterItsReleaseIsReleasedAgain(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 3)
	n1 := c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	// A key that is configured but nobody runs: drop it from the configs.
	gone := c.keys()[2]
	c.setKeys(2)
	admin := c.srv.Client(t)
	owner := c.service
	ownerKey := "dim:{" + owner + "}:owner"
	owned := func() bool {
		n, err := admin.Do(context.Background(), admin.B().Hexists().Key(ownerKey).Field(gone).Build()).AsBool()
		return err != nil || n
	}
	// The releases of the key that the history records.
	releases := func() int {
		h, err := ReadHistory(context.Background(), admin, Service{Name: owner}, HistoryFilter{Key: gone, Node: "n1"})
		require.NoError(t, err)
		n := 0
		for _, e := range h {
			if e.Kind == HistoryReleased {
				n++
			}
		}
		return n
	}
	c.eventually(5*time.Second, "the dropped key released", func() bool { return !owned() && releases() == 1 })

	session, _ := n1.m.membership.lease.current()
	require.NoError(t, n1.m.calls.verifyOwnership(session, []*entry[*testInst]{{key: gone, session: session}}, time.Now().Add(testTTL)))

	// The race's write put the key back on the record, and on the node's
	// books (a release frees only what they hold): the node must take it off
	// the record again, or no other node could ever claim it while n1
	// lives. The node loop may do so before this test looks at the record,
	// so the proof of the write is the second release.
	c.eventually(5*time.Second, "the stray entry released again", func() bool { return !owned() && releases() == 2 })
}
