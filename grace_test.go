package dim

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// slowTTL is long enough that a grace period of one node TTL cannot be
// mistaken for the milliseconds a start without one takes.
const slowTTL = 4 * time.Second

func slowTTLOptions() []Option {
	return []Option{WithNodeTTL(slowTTL), WithHeartbeat(400 * time.Millisecond)}
}

func TestTheFirstStartOfAServiceWaitsOneTTLAndSaysWhy(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	n1 := c.start("n1", slowTTLOptions()...)
	st, err := n1.m.Status(context.Background())
	require.NoError(t, err)
	require.NotNil(t, st.Grace, "a service Redis has no record of waits")
	assert.Equal(t, GraceNew, st.Grace.Reason)
	assert.Greater(t, st.Grace.Left, slowTTL/2)
	assert.Empty(t, c.rec.Live(), "nothing starts during the grace period")
	c.waitConverged(2*slowTTL, "n1")
	st, err = n1.m.Status(context.Background())
	require.NoError(t, err)
	assert.Nil(t, st.Grace)
}

func TestRestartingAWholeKnownServiceNeedsNoGrace(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 12)
	ids := []string{"n1", "n2", "n3"}
	for _, id := range ids {
		c.start(id, slowTTLOptions()...)
	}
	c.waitConverged(3*slowTTL, ids...)
	for _, id := range ids {
		c.stop(id)
	}
	// The same service comes back, as after a deploy that stopped every
	// replica: Redis's record is intact and nobody runs anything, so there
	// is nothing to wait for.
	for _, id := range ids {
		c.start(id, slowTTLOptions()...)
	}
	up := time.Now()
	st, err := c.node("n1").m.Status(context.Background())
	require.NoError(t, err)
	assert.Nil(t, st.Grace, "an intact record needs no grace")
	c.waitConverged(slowTTL/2, ids...)
	t.Logf("every key live %v after the last Start returned", time.Since(up))
}

func TestAServiceWhoseLeasesExpiredInRedisNeedsNoGrace(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	c.start("n1")
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	// Both crash; their leases run out in Redis time, which the record
	// shows: whatever they ran, they stopped before that.
	c.crash("n1")
	c.crash("n2")
	c.eventually(5*time.Second, "the crashed leases expired", func() bool {
		st, err := ReadStatus(context.Background(), c.srv.Client(t), Service{Name: c.service})
		return err == nil && len(st.Nodes) == 0
	})
	n3 := c.start("n3")
	st, err := n3.m.Status(context.Background())
	require.NoError(t, err)
	assert.Nil(t, st.Grace)
	c.waitConverged(testTTL/2, "n3")
}

func TestARestoredRecordStartsAGraceThatStatusExplains(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	c.start("n1", slowTTLOptions()...)
	c.start("n2", slowTTLOptions()...)
	c.waitConverged(3*slowTTL, "n1", "n2")
	admin := c.srv.Client(t)
	require.NoError(t, admin.Do(context.Background(), admin.B().Save().Build()).Error())
	c.srv.Restart()
	c.eventually(5*time.Second, "a grace period for the restored record", func() bool {
		st, err := ReadStatus(context.Background(), c.srv.Client(t), Service{Name: c.service})
		return err == nil && st.Grace != nil && st.Grace.Reason == GraceRestored
	})
	// What the restored record says each node owns, it keeps running.
	c.waitConverged(3*slowTTL, "n1", "n2")
}

func TestASuspendedHostFencesOnWakeBeforeItRenews(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	n1 := c.newNode("n1")
	// The boot clock counts a suspend; Go's monotonic clock does not. A
	// host that slept longer than the lease shows only on the boot clock.
	var slept atomic.Int64
	n1.m.membership.lease.boot = func() time.Duration { return bootClock() + time.Duration(slept.Load()) }
	c.startNode(n1)
	c.waitConverged(10*time.Second, "n1")
	before, _ := n1.m.membership.lease.current()
	var renewed atomic.Int64
	n1.m.membership.lease.mu.Lock()
	sent := n1.m.membership.lease.sent
	n1.m.membership.lease.mu.Unlock()
	slept.Store(int64(2 * testTTL))
	c.eventually(testTTL, "n1 fenced on waking", func() bool {
		s, _ := n1.m.membership.lease.current()
		return s != before
	})
	n1.m.membership.lease.mu.Lock()
	if n1.m.membership.lease.session == before && n1.m.membership.lease.sent.After(sent) {
		renewed.Add(1)
	}
	n1.m.membership.lease.mu.Unlock()
	assert.Zero(t, renewed.Load(), "the old session was never renewed after the wake-up")
	slept.Store(0)
	c.waitConverged(10*time.Second, "n1")
}

func TestADurableRedisRestartStopsNothingAndWaitsForNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestClusterOn(t, 6, redistest.Start(t, redistest.WithArgs("--appendonly", "yes", "--appendfsync", "always")))
	c.start("n1", WithDurableRedis())
	c.start("n2", WithDurableRedis())
	c.waitConverged(10*time.Second, "n1", "n2")
	ups := len(c.rec.Events())
	c.srv.Restart()
	st, err := ReadStatus(context.Background(), c.srv.Client(t), Service{Name: c.service})
	require.NoError(t, err)
	assert.Nil(t, st.Grace)
	// Once both nodes renewed on the restarted server, nothing changed.
	admin := c.srv.Client(t)
	k := newKeyspace("", c.service)
	now, err := admin.Do(context.Background(), admin.B().Time().Build()).AsIntSlice()
	require.NoError(t, err)
	restarted := float64(now[0]*1000 + now[1]/1000)
	c.eventually(5*time.Second, "both nodes renewed on the restarted server", func() bool {
		for _, id := range []string{"n1", "n2"} {
			score, err := admin.Do(context.Background(), admin.B().Hget().Key(k.nodes).Field("e:"+id).Build()).AsFloat64()
			if err != nil || score < restarted+float64(testTTL.Milliseconds()) {
				return false
			}
		}
		return true
	})
	require.True(t, c.converged("n1", "n2"))
	st, err = ReadStatus(context.Background(), c.srv.Client(t), Service{Name: c.service})
	require.NoError(t, err)
	assert.Nil(t, st.Grace, "the restarted record is trusted")
	assert.Len(t, c.rec.Events(), ups, "no instance stopped or started")
}

func TestAStuckLeaderLoopStepsDown(t *testing.T) {
	m, err := New(func(context.Context) ([]string, error) { return nil, nil },
		func(context.Context, string) (string, error) { return "", nil },
		WithService("s"), WithCallbackTimeout(100*time.Millisecond), WithNodeTTL(100*time.Millisecond),
		WithHeartbeat(40*time.Millisecond), WithLeaderLockTTL(100*time.Millisecond), WithLeaderLockRefresh(50*time.Millisecond))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var busy atomic.Int64
	stepped := make(chan struct{})
	go m.elector.watchLeaderLoop(ctx, &busy, func() { close(stepped) })
	// Idle: waiting for a trigger is not being stuck.
	select {
	case <-stepped:
		t.Fatal("an idle leader loop stepped down")
	case <-time.After(500 * time.Millisecond):
	}
	busy.Store(time.Now().UnixNano())
	select {
	case <-stepped:
	case <-time.After(5 * time.Second):
		t.Fatal("a leader loop busy past every bound did not step down")
	}
}

func TestADisconnectThatReturnsAnErrorStillReleasesItsKey(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	n1 := c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	// Returning, with an error or not, means the instance stopped: the key
	// moves at once, not after a lease.
	down := n1.m.calls.disconnect
	n1.m.calls.disconnect = func(ctx context.Context, inst *testInst) error {
		_ = down(ctx, inst)
		return errors.New("close: connection reset")
	}
	start := time.Now()
	c.stop("n1")
	c.waitConverged(testTTL/2, "n2")
	t.Logf("every key live on n2 %v after Stop", time.Since(start))
}

func TestNodeIDsThatChangeAtEveryRestartLeaveNothingBehind(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	c.start("keeper")
	for i := range 10 {
		// A deploy: a new process with a new default-style ID, which stops
		// gracefully, and one that crashes and is never seen again.
		id := fmt.Sprintf("deploy-%d", i)
		c.start(id)
		c.waitConverged(10*time.Second, "keeper", id)
		c.stop(id)
		gone := fmt.Sprintf("crashed-%d", i)
		c.start(gone)
		c.waitConverged(10*time.Second, "keeper", gone)
		c.crash(gone)
		c.waitConverged(10*time.Second, "keeper")
	}
	admin := c.srv.Client(t)
	k := newKeyspace("", c.service)
	for _, hash := range []string{k.traces, k.cfgErr, k.handoffs} {
		fields, err := admin.Do(context.Background(), admin.B().Hkeys().Key(hash).Build()).AsStrSlice()
		require.NoError(t, err)
		assert.Subset(t, []string{"keeper"}, fields, "%s keeps only live nodes", hash)
	}
	rec, err := admin.Do(context.Background(), admin.B().Hkeys().Key(k.nodes).Build()).AsStrSlice()
	require.NoError(t, err)
	for _, f := range rec {
		if _, node, ok := strings.Cut(f, ":"); ok {
			assert.Equal(t, "keeper", node, "the membership record keeps only live nodes: %s", f)
		}
	}
	sets, err := admin.Do(context.Background(), admin.B().Keys().Pattern(k.prefix+":a:*").Build()).AsStrSlice()
	require.NoError(t, err)
	assert.LessOrEqual(t, len(sets), 1, "assignment sets of departed nodes: %v", sets)
}

func TestAKeyRemovedWhileItsOwnerWasDeadLeavesNoOwnerBehind(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	c.start("n1")
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	var gone string
	for key, on := range c.rec.LiveByKey() {
		if on[0] == "n2" {
			gone = key
		}
	}
	require.NotEmpty(t, gone)
	c.crash("n2")
	var keep []testConfig
	for _, key := range c.keys() {
		if key != gone {
			keep = append(keep, testConfig{Key: key})
		}
	}
	c.setConfigs(keep)
	c.waitConverged(10*time.Second, "n1")
	admin := c.srv.Client(t)
	k := newKeyspace("", c.service)
	c.eventually(5*time.Second, "the removed key's owner entry gone", func() bool {
		n, err := admin.Do(context.Background(), admin.B().Hexists().Key(k.owner).Field(gone).Build()).AsBool()
		return err == nil && !n
	})
	st, err := admin.Do(context.Background(), admin.B().Hexists().Key(k.state).Field(gone).Build()).AsBool()
	require.NoError(t, err)
	assert.False(t, st, "its state entry gone too")
}

// TestANodeWaitsOutTheGracePeriodForAllItsKeysAtOnce: a claim refused for
// the grace period makes every key the node wants wait for its end, not
// only the chunk that was refused, so that the node does not read its keys
// from Redis again and again while it cannot claim any of them.
func TestANodeWaitsOutTheGracePeriodForAllItsKeysAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	keys := 20 * claimChunk
	c := newTestCluster(t, keys)
	client := c.srv.Client(t)
	ctx := context.Background()
	sscans := func() int64 {
		s, err := client.Do(ctx, client.B().Info().Section("commandstats").Build()).ToString()
		require.NoError(t, err)
		for line := range strings.SplitSeq(s, "\r\n") {
			if rest, ok := strings.CutPrefix(line, "cmdstat_sscan:calls="); ok {
				n, _, _ := strings.Cut(rest, ",")
				var v int64
				_, err := fmt.Sscan(n, &v)
				require.NoError(t, err)
				return v
			}
		}
		return 0
	}
	c.start("n1", append(slowTTLOptions(), WithConfigRefreshSchedule("@every 1h"))...)
	set := newKeyspace("", c.service).assigned("n1")
	c.eventually(slowTTL/2, "every key assigned to n1", func() bool {
		n, err := client.Do(ctx, client.B().Scard().Key(set).Build()).AsInt64()
		return err == nil && n == int64(keys)
	})
	st, err := c.node("n1").m.Status(ctx)
	require.NoError(t, err)
	require.NotNil(t, st.Grace)
	window := min(st.Grace.Left-500*time.Millisecond, 2*time.Second)
	require.Greater(t, window, time.Second, "too little of the grace period left to watch")
	before := sscans()
	time.Sleep(window) // a window of time to count calls in, not a synchronization
	read := sscans() - before
	t.Logf("read %d pages in %v", read, window)
	// The reconcile that the assignment notice brought reads the keys once
	// (pages of scanPage); nothing else does until the grace ends.
	assert.LessOrEqual(t, read, int64(2*(keys/scanPage+1)), "the node read its keys %d pages' worth in %v of grace", read, window)
	assert.Empty(t, c.rec.Live(), "nothing starts during the grace period")
	c.waitConverged(2*slowTTL, "n1")
}
