package dim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/faultproxy"
	"github.com/go-dim/dim/internal/history"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestThreeNodesSpreadTenConfigsThenAFourthJoins(t *testing.T) {
	c := newTestCluster(t, 10)
	c.start("n1")
	c.start("n2")
	c.start("n3")
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	before := c.loads()
	assert.ElementsMatch(t, []int{4, 3, 3}, []int{before["n1"], before["n2"], before["n3"]})

	creates := c.creates.Load()
	c.start("n4")
	took := c.waitConverged(5*time.Second, "n1", "n2", "n3", "n4")
	t.Logf("join converged in %v", took)
	// 10 keys on 4 nodes: 3/3/2/2. The joiner takes exactly its 2 and
	// nothing else moves.
	assert.Equal(t, 2, c.loads()["n4"])
	assert.EqualValues(t, 2, c.creates.Load()-creates, "creates after the join")
}

func TestGracefulStopHandsOffWithinMilliseconds(t *testing.T) {
	c := newTestCluster(t, 12)
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id)
	}
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	// Stop a follower, then the leader: both hand off without a TTL.
	for _, victim := range []string{followerOf(c), c.leader().id} {
		var rest []string
		for id, n := range c.nodes {
			if id != victim && n.m.life.checkStarted() == nil {
				rest = append(rest, id)
			}
		}
		start := time.Now()
		c.stop(victim)
		c.waitConverged(testTTL, rest...)
		t.Logf("graceful stop of %s: all keys live elsewhere %v after Stop was called", victim, time.Since(start))
	}
}

func followerOf(c *testCluster) string {
	leader := c.leader().id
	for id := range c.nodes {
		if id != leader {
			return id
		}
	}
	return ""
}

func TestCrashedNodeIsTakenOverAfterItsLease(t *testing.T) {
	c := newTestCluster(t, 12)
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id)
	}
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	victim := followerOf(c)
	start := time.Now()
	c.crash(victim)
	rest := without([]string{"n1", "n2", "n3"}, victim)
	c.waitConverged(testTTL+2*time.Second, rest...)
	took := time.Since(start)
	t.Logf("crash of %s: all keys live elsewhere after %v (node TTL %v)", victim, took, testTTL)
	assert.Greater(t, took, testTTL-testTTL/5-testHeartbeat, "taken over before the lease could expire")
}

func TestLeaderCrashElectsANewLeaderWithAHigherEpoch(t *testing.T) {
	c := newTestCluster(t, 9)
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id)
	}
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	old := c.leader()
	oldEpoch, _ := old.m.elector.term.current()
	start := time.Now()
	c.crash(old.id)
	next := c.leader()
	elected := time.Since(start)
	newEpoch, _ := next.m.elector.term.current()
	assert.NotEqual(t, old.id, next.id)
	assert.Greater(t, newEpoch, oldEpoch)
	rest := without([]string{"n1", "n2", "n3"}, old.id)
	c.waitConverged(testTTL+2*time.Second, rest...)
	t.Logf("leader crash: new leader after %v (lock TTL %v), every key live after %v", elected, testLockTTL, time.Since(start))
}

func TestADeposedLeadersWriteIsRefused(t *testing.T) {
	c := newTestCluster(t, 4)
	c.start("n1")
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	old := c.leader()
	oldEpoch, _ := old.m.elector.term.current()
	c.stop(old.id)
	survivor := c.leader()
	newEpoch, _ := survivor.m.elector.term.current()
	require.Greater(t, newEpoch, oldEpoch)

	// The survivor writes with the old epoch, as a deposed leader would.
	err := survivor.m.elector.writeChunk(context.Background(), oldEpoch, []change{{key: "cfg-00", to: "ghost"}}, func(string) bool { return true })
	require.ErrorIs(t, err, errStaleEpoch)
	assigned, err := c.srv.Client(t).Do(context.Background(),
		c.srv.Client(t).B().Hget().Key(survivor.m.k.assign).Field("cfg-00").Build()).ToString()
	require.NoError(t, err)
	assert.Equal(t, survivor.id, assigned)
}

func TestConfigsAddedRemovedAndChanged(t *testing.T) {
	c := newTestCluster(t, 6)
	c.start("n1")
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	ids := func() map[string]int64 {
		out := map[string]int64{}
		for _, iv := range c.rec.Live() {
			out[iv.Key] = iv.Instance
		}
		return out
	}
	before := ids()

	cfgs := []testConfig{
		{Key: "cfg-00"}, {Key: "cfg-01"}, {Key: "cfg-02"}, {Key: "cfg-03"},
		{Key: "cfg-04", Version: 1}, // changed in place
		{Key: "cfg-10"},             // added; cfg-05 removed
	}
	c.setConfigs(cfgs)
	c.waitConverged(5*time.Second, "n1", "n2")
	c.eventually(5*time.Second, "cfg-04 replaced", func() bool { return ids()["cfg-04"] != before["cfg-04"] })
	after := ids()
	for _, key := range []string{"cfg-00", "cfg-01", "cfg-02", "cfg-03"} {
		assert.Equal(t, before[key], after[key], "unchanged %s kept running", key)
	}
	_, removed := after["cfg-05"]
	assert.False(t, removed)
	c.eventually(5*time.Second, "the new cfg-04 running with its new content", func() bool {
		for _, n := range c.nodes {
			if inst, ok := n.m.Instances()["cfg-04"]; ok {
				return inst.version == 1
			}
		}
		return false
	})
}

func TestAFailingHealthCheckDisconnectsAndRecreates(t *testing.T) {
	c := newTestCluster(t, 3)
	var fails atomic.Int32
	c.healthErr.Store("cfg-01", func() error {
		if fails.Add(1) <= 2 {
			return errors.New("broken pipe")
		}
		return nil
	})
	c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	c.eventually(10*time.Second, "cfg-01 recreated twice", func() bool {
		ups := 0
		for _, e := range c.rec.Events() {
			if e.Key == "cfg-01" && e.Kind == history.Up {
				ups++
			}
		}
		return ups >= 3 && c.converged("n1")
	})
}

func TestCreateInstanceThatErrsPanicsOrHangsIsRetried(t *testing.T) {
	c := newTestCluster(t, 4)
	var errs, panics, hangs atomic.Int32
	hold := newGate(t)
	c.createErr.Store("cfg-00", func() error {
		if errs.Add(1) <= 2 {
			return errors.New("connection refused")
		}
		return nil
	})
	c.createErr.Store("cfg-01", func() error {
		if panics.Add(1) == 1 {
			panic("boom")
		}
		return nil
	})
	c.createErr.Store("cfg-02", func() error {
		if hangs.Add(1) == 1 {
			hold.wait() // ignores its context, like a stuck dial
		}
		return nil
	})
	n := c.start("n1", WithCallbackTimeout(300*time.Millisecond))
	c.eventually(5*time.Second, "the hanging create given up on", func() bool { return n.m.calls.hung.has("cfg-02") })
	// While the call hangs it may still bring an instance to life, so the
	// key is not created again...
	c.eventually(10*time.Second, "the other keys live", func() bool {
		live := c.rec.LiveByKey()
		return len(live["cfg-00"]) == 1 && len(live["cfg-01"]) == 1 && len(live["cfg-03"]) == 1
	})
	assert.EqualValues(t, 1, hangs.Load())
	// ...until it returns; then its late instance is disconnected and the
	// key created anew.
	hold.open()
	c.eventually(10*time.Second, "cfg-02 created again", func() bool { return hangs.Load() >= 2 })
	c.waitConverged(15*time.Second, "n1")
	assert.GreaterOrEqual(t, errs.Load(), int32(3))
	assert.GreaterOrEqual(t, panics.Load(), int32(2))
}

func TestANodeCutOffFromRedisStopsBeforeOthersStart(t *testing.T) {
	for _, dir := range []faultproxy.Direction{faultproxy.Both, faultproxy.Upstream, faultproxy.Downstream} {
		t.Run("cut "+dir.String(), func(t *testing.T) {
			c := newTestCluster(t, 12)
			for _, id := range []string{"n1", "n2", "n3"} {
				c.start(id)
			}
			c.waitConverged(10*time.Second, "n1", "n2", "n3")
			victim := c.node(followerOf(c))
			var ctxs []context.Context
			for _, inst := range victim.m.Instances() {
				ctxs = append(ctxs, inst.ctx)
			}
			cut := time.Now()
			victim.proxy.Cut(dir)
			rest := without([]string{"n1", "n2", "n3"}, victim.id)
			c.waitConverged(testTTL+2*time.Second, rest...)
			t.Logf("cut %v: keys live on the others after %v", dir, time.Since(cut))
			for _, ctx := range ctxs {
				require.Error(t, ctx.Err(), "the cut node's instance contexts are cancelled")
			}
			// The overlap check in the cleanup proves the order; healed, the
			// node comes back and takes its share again.
			victim.proxy.Heal()
			c.waitConverged(10*time.Second, "n1", "n2", "n3")
		})
	}
}

func TestRedisRestartedEmptyReconvergesWithoutOverlap(t *testing.T) {
	c := newTestCluster(t, 9)
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id)
	}
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	c.srv.Restart()
	start := time.Now()
	c.eventually(10*time.Second, "instances stopped after the state was lost", func() bool {
		return len(c.rec.Live()) < 9
	})
	c.waitConverged(15*time.Second, "n1", "n2", "n3")
	t.Logf("Redis restarted empty: reconverged after %v", time.Since(start))
}

func TestFencingTokensGrowAndInstanceContextsEndOnMove(t *testing.T) {
	c := newTestCluster(t, 1)
	n1 := c.start("n1")
	var first *testInst
	c.eventually(10*time.Second, "cfg-00 running on n1", func() bool {
		first = n1.m.Instances()["cfg-00"]
		return first != nil
	})
	tok1, ok := FencingToken(first.ctx)
	require.True(t, ok)
	key, _ := InstanceKey(first.ctx)
	assert.Equal(t, "cfg-00", key)

	n2 := c.start("n2")
	c.stop("n1")
	var second *testInst
	c.eventually(5*time.Second, "cfg-00 running on n2", func() bool {
		second = n2.m.Instances()["cfg-00"]
		return second != nil
	})
	tok2, _ := FencingToken(second.ctx)
	assert.Greater(t, tok2, tok1)
	assert.ErrorIs(t, first.ctx.Err(), context.Canceled)
	assert.NoError(t, second.ctx.Err())
}

func TestRebalanceFromAFollowerPicksUpNewConfigs(t *testing.T) {
	c := newTestCluster(t, 2)
	slow := WithConfigRefreshSchedule("@every 1h")
	c.start("n1", slow)
	c.start("n2", slow)
	c.waitConverged(10*time.Second, "n1", "n2")
	c.setKeys(4)
	follower := c.node(followerOf(c))
	start := time.Now()
	require.NoError(t, follower.m.Rebalance(context.Background()))
	c.waitConverged(5*time.Second, "n1", "n2")
	t.Logf("Rebalance from a follower: new configs live after %v", time.Since(start))
}

func TestAGetConfigErrorKeepsWhatRuns(t *testing.T) {
	c := newTestCluster(t, 4)
	c.start("n1")
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	err := errors.New("config store down")
	c.getConfErr.Store(&err)
	creates := c.creates.Load()
	failed := c.getConfFails.Load()
	c.start("n3") // a join forces a rebalance without configs
	// The leader's rebalance and the joiner's reconcile both fail to read
	// configs; nothing that runs may stop because of it.
	c.eventually(5*time.Second, "getConfig failing after the join", func() bool {
		return c.getConfFails.Load() >= failed+3
	})
	assert.True(t, c.converged("n1", "n2"), "all keys still live on n1 and n2: %s", c.rec.Summary())
	c.getConfErr.Store(nil)
	c.waitConverged(5*time.Second, "n1", "n2", "n3")
	assert.EqualValues(t, 1, c.creates.Load()-creates, "only the joiner's share moved")
}

func TestLifecycleErrors(t *testing.T) {
	c := newTestCluster(t, 1)
	n := c.newNode("n1")
	require.ErrorIs(t, n.m.Stop(context.Background()), ErrNotStarted)
	require.ErrorIs(t, n.m.Rebalance(context.Background()), ErrNotStarted)
	require.NoError(t, n.m.Start(context.Background()))
	require.ErrorIs(t, n.m.Start(context.Background()), ErrAlreadyStarted)
	require.NoError(t, n.m.Stop(context.Background()))
	require.ErrorIs(t, n.m.Stop(context.Background()), ErrStopped)
	require.ErrorIs(t, n.m.Start(context.Background()), ErrStopped)
}

func TestStartFailsClearlyWhenRedisIsUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close()) // nothing listens there now
	m, err := New(func(context.Context) ([]string, error) { return nil, nil },
		func(context.Context, string) (int, error) { return 0, nil },
		WithService("svc"), WithRedis(redisOption(addr)))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = m.Start(ctx)
	require.ErrorIs(t, err, ErrRedis)
	assert.Contains(t, err.Error(), addr)
	assert.ErrorIs(t, m.Start(ctx), ErrStopped)
}

func TestNewRejectsBadOptions(t *testing.T) {
	get := func(context.Context) ([]string, error) { return nil, nil }
	create := func(context.Context, string) (int, error) { return 0, nil }
	tests := []struct {
		name string
		opts []Option
		want string
	}{
		{"no service", nil, "WithService: a service name is required"},
		{"a service with a brace", []Option{WithService("a{b}")}, "WithService"},
		{"a service with a space", []Option{WithService("a b")}, "WithService"},
		{"a node ID with a star", []Option{WithService("s"), WithNodeID("n*")}, "WithNodeID"},
		{"a bad schedule", []Option{WithService("s"), WithHealthcheckSchedule("every minute")}, "WithHealthcheckSchedule"},
		{"a bad leader schedule", []Option{WithService("s"), WithLeaderHealthcheckSchedule("* * *")}, "WithLeaderHealthcheckSchedule"},
		{"a bad refresh schedule", []Option{WithService("s"), WithConfigRefreshSchedule("")}, "WithConfigRefreshSchedule"},
		{"a lock refresh not below the TTL", []Option{WithService("s"), WithLeaderLockRefresh(5 * time.Second)}, "WithLeaderLockRefresh"},
		{"a heartbeat too slow for the TTL", []Option{WithService("s"), WithHeartbeat(3 * time.Second)}, "WithHeartbeat"},
		{"a tiny node TTL", []Option{WithService("s"), WithNodeTTL(time.Millisecond)}, "WithNodeTTL"},
		{"a zero weight", []Option{WithService("s"), WithWeight(0)}, "WithWeight"},
		{"a zero callback timeout", []Option{WithService("s"), WithCallbackTimeout(0)}, "WithCallbackTimeout"},
		{"no Redis address", []Option{WithService("s"), WithRedis(redisOption())}, "WithRedis"},
		{"a nil option", []Option{WithService("s"), nil}, "nil option"},
		{"a lock majority of zero", []Option{WithService("s"), WithLockKeyMajority(0)}, "WithLockKeyMajority"},
		{"a schedule that never fires", []Option{WithService("s"), WithHealthcheckSchedule("0 0 0 30 2 *")}, "never fires"},
		{"a fence margin as long as the TTL", []Option{WithService("s"), WithFenceMargin(5 * time.Second)}, "WithFenceMargin"},
		{"a key prefix with a brace", []Option{WithService("s"), WithKeyPrefix("a{")}, "WithKeyPrefix"},
		{"a zero heartbeat", []Option{WithService("s"), WithHeartbeat(0)}, "WithHeartbeat: 0s is not positive"},
		{"a sub-second @every", []Option{WithService("s"), WithHealthcheckSchedule("@every 500ms")}, "at most once a second"},
		{"a bad Redis URL", []Option{WithService("s"), WithRedisURL("http://nope")}, "WithRedisURL"},
		{"a heartbeat that does not fit a TTL set alone", []Option{WithService("s"), WithNodeTTL(time.Second), WithHeartbeat(time.Second)}, "at most 400ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(get, create, tt.opts...)
			require.ErrorIs(t, err, ErrInvalidOption)
			assert.Contains(t, err.Error(), tt.want)
			assert.Nil(t, m)
		})
	}
	t.Run("nil callbacks", func(t *testing.T) {
		_, err := New[string, int](nil, create, WithService("s"))
		require.ErrorIs(t, err, ErrInvalidOption)
		_, err = New[string, int](get, nil, WithService("s"))
		require.ErrorIs(t, err, ErrInvalidOption)
	})
}

func TestATTLSetAloneDerivesItsIntervals(t *testing.T) {
	get := func(context.Context) ([]string, error) { return nil, nil }
	create := func(context.Context, string) (int, error) { return 0, nil }
	m, err := New(get, create, WithService("s"), WithNodeTTL(time.Second), WithLeaderLockTTL(500*time.Millisecond))
	require.NoError(t, err, "a TTL alone is enough")
	assert.Equal(t, 200*time.Millisecond, m.s.heartbeat)
	assert.Equal(t, 200*time.Millisecond, m.s.fenceMargin())
	assert.Equal(t, 100*time.Millisecond, m.s.lockRefresh)
	m, err = New(get, create, WithService("s"))
	require.NoError(t, err)
	assert.Equal(t, DefaultHeartbeat, m.s.heartbeat, "the defaults are unchanged")
	assert.Equal(t, DefaultLeaderLockRefresh, m.s.lockRefresh)

	m, err = New(get, create, WithService("s"), WithRedisURL("rediss://alice:secret@redis.example:6380/2"))
	require.NoError(t, err)
	assert.Equal(t, []string{"redis.example:6380"}, m.s.redis.InitAddress)
	assert.Equal(t, "alice", m.s.redis.Username)
	assert.Equal(t, "secret", m.s.redis.Password)
	assert.Equal(t, 2, m.s.redis.SelectDB)
	assert.NotNil(t, m.s.redis.TLSConfig)
}

func TestAHookOfTheWrongTypeNamesBothTypes(t *testing.T) {
	get := func(context.Context) ([]string, error) { return nil, nil }
	create := func(context.Context, string) (int, error) { return 0, nil }
	_, err := New(get, create, WithService("s"),
		WithHealthcheck(func(context.Context, *net.Conn) error { return nil }))
	require.ErrorIs(t, err, ErrInvalidOption)
	assert.Contains(t, err.Error(), "*net.Conn")
	assert.Contains(t, err.Error(), "func(context.Context, int) error")

	_, err = New(get, create, WithService("s"), WithKey(func(c fmt.Stringer) string { return "" }))
	require.ErrorIs(t, err, ErrInvalidOption)
	assert.True(t, strings.Contains(err.Error(), "func(string) string"), err.Error())
}

func TestRedisRestartedFromAnOldSnapshotWaitsOutTheGracePeriod(t *testing.T) {
	c := newTestCluster(t, 6)
	c.start("n1")
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	admin := c.srv.Client(t)
	require.NoError(t, admin.Do(context.Background(), admin.B().Save().Build()).Error())
	saved := time.Now()
	n3 := c.start("n3")
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	// Once every lease in the snapshot has passed, cut n3 off and restart
	// Redis from the snapshot: n3 still runs its keys until it fences, and
	// nobody may claim them before that.
	c.eventually(5*time.Second, "the snapshot's leases passed", func() bool { return time.Since(saved) > testTTL })
	n3.proxy.Cut(faultproxy.Both)
	c.srv.Restart()
	c.waitConverged(10*time.Second, "n1", "n2")
	n3.proxy.Heal()
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
}

func TestASecondProcessWithTheSameNodeIDWaitsForTheFirst(t *testing.T) {
	c := newTestCluster(t, 4)
	first := c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	second := c.newNode("n1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	err := second.m.Start(ctx)
	cancel()
	require.ErrorIs(t, err, ErrNodeIDInUse)
	assert.Contains(t, err.Error(), `"n1"`)

	require.NoError(t, first.m.Stop(context.Background()))
	third := c.newNode("n1")
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, third.m.Start(ctx), "a graceful stop frees the ID at once")
	c.waitConverged(10*time.Second, "n1")
}

func TestStopReturnsWhenLeadershipEndsDuringTheHandoff(t *testing.T) {
	c := newTestCluster(t, 2)
	n1 := c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	gate, entered := make(chan struct{}), make(chan struct{}, 16)
	var armed atomic.Bool
	n1.m.getConfig = func(ctx context.Context) ([]testConfig, error) {
		if armed.Load() {
			entered <- struct{}{}
			<-gate
		}
		return c.getConfig(ctx)
	}
	armed.Store(true)
	require.NoError(t, n1.m.Rebalance(context.Background()))
	<-entered
	// Another leader's epoch appears while the rebalance waits: its write
	// will be refused and the leadership end, with Stop already waiting.
	admin := c.srv.Client(t)
	require.NoError(t, admin.Do(context.Background(), admin.B().Incr().Key(n1.m.k.epoch).Build()).Error())
	c.setKeys(3)
	stopped := make(chan error, 1)
	go func() { stopped <- n1.m.Stop(context.Background()) }()
	c.eventually(5*time.Second, "Stop waiting for the handoff", func() bool { return n1.m.life.stopping() })
	armed.Store(false)
	close(gate)
	select {
	case err := <-stopped:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Stop hangs after the leadership ended")
	}
}

func TestAHangingCreateDoesNotSpinTheNodeLoop(t *testing.T) {
	c := newTestCluster(t, 2)
	hold := newGate(t)
	c.createErr.Store("cfg-01", func() error { hold.wait(); return nil })
	obs := newObserved(t)
	n := c.start("n1", append(obs.options(), WithCallbackTimeout(200*time.Millisecond))...)
	c.eventually(5*time.Second, "the create given up on", func() bool { return n.m.calls.hung.has("cfg-01") })
	before := len(obs.ended(spanReconcile))
	// Long enough for many backoff rounds of a key that is not hung.
	c.eventually(5*time.Second, "two seconds of hanging", func() bool {
		return len(obs.ended(spanCreate)) > 0 && obs.ended(spanCreate)[0].EndTime().Add(2*time.Second).Before(time.Now())
	})
	assert.Less(t, len(obs.ended(spanReconcile))-before, 20, "reconciles while one create hangs")
	hold.open()
	c.waitConverged(10*time.Second, "n1")
}

// A create that takes its time holds up no other key: while it runs, the
// node creates a key that fails over to it, and stops one that moves away.
func TestASlowCreateHoldsUpNoOtherKey(t *testing.T) {
	c := newTestCluster(t, 4)
	hold := newGate(t)
	n := c.start("n1", WithCallbackTimeout(time.Minute))
	c.waitConverged(10*time.Second, "n1")
	c.createErr.Store("cfg-04", func() error { hold.wait(); return nil })
	c.setKeys(6) // cfg-04 is slow; cfg-05 is not
	c.eventually(10*time.Second, "cfg-05 running while cfg-04's create runs", func() bool {
		_, ok := n.m.Instances()["cfg-05"]
		return ok && c.status().Keys["cfg-05"].State == KeyRunning
	})
	// A second node joins: keys move to it while the create still runs.
	c.start("n2", WithCallbackTimeout(time.Minute))
	c.eventually(10*time.Second, "keys moved to n2 while cfg-04's create runs", func() bool {
		return c.loads()["n2"] >= 2
	})
	_, created := n.m.Instances()["cfg-04"]
	require.False(t, created, "cfg-04's create still runs")
	hold.open()
	c.waitConverged(10*time.Second, "n1", "n2")
}

// A disconnect that takes its time holds up no other key: while it runs,
// the node replaces every other instance whose config changed.
func TestASlowDisconnectHoldsUpNoOtherKey(t *testing.T) {
	c := newTestCluster(t, 4)
	hold := newGate(t)
	n := c.start("n1", WithCallbackTimeout(time.Minute))
	c.waitConverged(10*time.Second, "n1")
	c.disconnectIn.Store("cfg-00", func() { hold.wait() })
	cfgs := []testConfig{{Key: "cfg-00", Version: 2}, {Key: "cfg-01", Version: 2}, {Key: "cfg-02", Version: 2}, {Key: "cfg-03"}}
	c.setConfigs(cfgs)
	c.eventually(10*time.Second, "cfg-01 and cfg-02 replaced while cfg-00's disconnect runs", func() bool {
		return n.m.Instances()["cfg-01"] != nil && n.m.Instances()["cfg-01"].version == 2 &&
			n.m.Instances()["cfg-02"] != nil && n.m.Instances()["cfg-02"].version == 2
	})
	assert.Equal(t, KeyStopping, c.status().Keys["cfg-00"].State, "the slow one shows as stopping")
	assert.Len(t, c.rec.LiveByKey()["cfg-00"], 1, "its old instance has not returned from disconnect")
	hold.open()
	c.eventually(10*time.Second, "cfg-00 replaced once its disconnect returned", func() bool {
		inst := n.m.Instances()["cfg-00"]
		return inst != nil && inst.version == 2
	})
	c.waitConverged(10*time.Second, "n1")
}

// reconcilesDuring counts the reconciles that end within the next d: a node
// loop that waits for nothing runs a handful, one that spins thousands.
func reconcilesDuring(obs *observed, d time.Duration) int {
	before := len(obs.ended(spanReconcile))
	<-time.After(d) // the window measured, not a synchronisation
	return len(obs.ended(spanReconcile)) - before
}

// A key whose backoff has passed while a call of its is still under way, or
// while it runs again, wakes the node loop for nothing: the loop must not
// spin on it.
func TestABusyKeysBackoffDoesNotSpinTheNodeLoop(t *testing.T) {
	c := newTestCluster(t, 3)
	hold := newGate(t)
	var creates, checks atomic.Int32
	// cfg-01: its first create fails, its retry takes its time.
	c.createErr.Store("cfg-01", func() error {
		if creates.Add(1) == 1 {
			return errors.New("first attempt fails")
		}
		hold.wait()
		return nil
	})
	// cfg-02: fails one health check and runs again; its failure is kept
	// until a check passes.
	c.healthErr.Store("cfg-02", func() error {
		if checks.Add(1) == 1 {
			return errors.New("unhealthy once")
		}
		return nil
	})
	obs := newObserved(t)
	n := c.start("n1", append(obs.options(), WithCallbackTimeout(time.Minute), WithHealthcheckSchedule("@every 3s"))...)
	c.eventually(10*time.Second, "cfg-01's retry under way and cfg-02 running again", func() bool {
		_, again := n.m.Instances()["cfg-02"]
		return creates.Load() >= 2 && checks.Load() >= 1 && again
	})
	assert.Less(t, reconcilesDuring(obs, time.Second), 20, "reconciles in a second, with both backoffs passed")
	hold.open()
	c.waitConverged(10*time.Second, "n1")
}

// A slow disconnect after a failed health check: once the backoff has
// passed, the node loop waits for the disconnect without spinning.
func TestASlowDisconnectAfterAFailedHealthCheckDoesNotSpinTheNodeLoop(t *testing.T) {
	c := newTestCluster(t, 2)
	hold := newGate(t)
	obs := newObserved(t)
	c.start("n1", append(obs.options(), WithCallbackTimeout(time.Minute))...)
	c.waitConverged(10*time.Second, "n1")
	c.disconnectIn.Store("cfg-01", hold.wait)
	c.healthErr.Store("cfg-01", func() error { return errors.New("unhealthy") })
	c.eventually(10*time.Second, "cfg-01 stopping", func() bool { return c.status().Keys["cfg-01"].State == KeyStopping })
	assert.Less(t, reconcilesDuring(obs, time.Second), 20, "reconciles in a second while the disconnect runs")
	hold.open()
	c.healthErr.Delete("cfg-01")
	c.waitConverged(10*time.Second, "n1")
}

func TestStopDuringAStartThatCannotReachRedis(t *testing.T) {
	c := newTestCluster(t, 1)
	n := c.newNode("n1")
	n.proxy.Cut(faultproxy.Both)
	started := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	go func() { started <- n.m.Start(ctx) }()
	c.eventually(time.Second, "Start under way", func() bool { return n.m.life.load() != phaseNew })
	stopErr := n.m.Stop(context.Background())
	startErr := <-started
	require.ErrorIs(t, startErr, ErrRedis)
	require.ErrorIs(t, stopErr, ErrStopped)
}

func TestANodeOnTheCallersOwnClient(t *testing.T) {
	c := newTestCluster(t, 6)
	c.start("n1")
	client := c.srv.Client(t)
	own := c.newNode("n2", WithRedisClient(client))
	require.NoError(t, own.m.Start(context.Background()))
	c.waitConverged(10*time.Second, "n1", "n2")
	require.NoError(t, own.m.Stop(context.Background()))
	c.waitConverged(5*time.Second, "n1")
	require.NoError(t, client.Do(context.Background(), client.B().Ping().Build()).Error(), "dim leaves the caller's client open")

	// Leadership passes to a node that polls the lock instead of waiting
	// for invalidations.
	n3 := c.newNode("n3", WithRedisClient(client))
	require.NoError(t, n3.m.Start(context.Background()))
	c.stop("n1")
	c.eventually(5*time.Second, "n3 leads", n3.m.IsLeader)
	c.waitConverged(5*time.Second, "n3")
}

func TestCreateConcurrencyBoundsCreatesAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 12)
	n1 := c.newNode("n1", WithCreateConcurrency(2))
	create := n1.m.calls.createInstance
	var now, most atomic.Int64
	n1.m.calls.createInstance = func(ctx context.Context, cfg testConfig) (*testInst, error) {
		cur := now.Add(1)
		defer now.Add(-1)
		for {
			m := most.Load()
			if cur <= m || most.CompareAndSwap(m, cur) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond) // a slow login, so that creates overlap
		return create(ctx, cfg)
	}
	c.startNode(n1)
	c.waitConverged(20*time.Second, "n1")
	assert.Equal(t, int64(2), most.Load(), "two creates at a time, and no more")

	_, err := New(func(context.Context) ([]testConfig, error) { return nil, nil },
		func(context.Context, testConfig) (*testInst, error) { return nil, nil },
		WithService("x"), WithCreateConcurrency(0))
	assert.ErrorIs(t, err, ErrInvalidOption)
}
