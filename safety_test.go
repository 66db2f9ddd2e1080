package dim

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/faultproxy"
	"github.com/go-dim/dim/internal/history"
	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Regression tests for the ways an adversarial review found to break the
// at-most-one guarantee, the fencing tokens or the process itself. Each
// scenario is described where it is set up.

// slowLease is a node TTL long enough that a test can save, restart or
// restore Redis while the leases it saved are still live.
func slowLease() []Option {
	return []Option{WithNodeTTL(3 * time.Second), WithHeartbeat(300 * time.Millisecond)}
}

// rollbackScenario runs n1 and n2 on four keys, takes a checkpoint of Redis,
// lets n3 join (it takes one key, K, from n1 or n2), then lets fault() do
// something to n3 and rollback() bring Redis back to the checkpoint: the
// leases of n1 and n2 in it are still live, and K is owned there by its old
// owner under the old token. It returns K and the node that ran it before.
func rollbackScenario(t *testing.T, c *safetyCluster, checkpoint func(), fault func(n3 *testNode), rollback func()) (key, oldOwner string) {
	t.Helper()
	c.start("n1", slowLease()...)
	c.start("n2", slowLease()...)
	c.waitConverged(10*time.Second, "n1", "n2")
	before := map[string]string{}
	for _, iv := range c.rec.Live() {
		before[iv.Key] = iv.Node
	}
	checkpoint()
	saved := time.Now()
	n3 := c.start("n3", slowLease()...)
	c.waitConverged(5*time.Second, "n1", "n2", "n3")
	moved := runsOn(c.rec, "n3")
	require.Len(t, moved, 1, "n3's share of four keys on three nodes")
	key, oldOwner = moved[0], before[moved[0]]
	t.Logf("%s moved from %s to n3 %v after the checkpoint", key, oldOwner, time.Since(saved))
	fault(n3)
	rollback()
	// Still within the leases of n1 and n2 saved in the checkpoint, so
	// nobody fences and no grace period starts.
	require.Less(t, time.Since(saved), 2*time.Second, "Redis rolled back too late for the scenario")
	return key, oldOwner
}

func saveCheckpoint(t *testing.T, c *safetyCluster) func() {
	return func() {
		admin := c.srv.Client(t)
		require.NoError(t, admin.Do(context.Background(), admin.B().Save().Build()).Error())
	}
}

// 1. A fencing token is the claim's, and a claim found in Redis again after a
// rollback (or kept across a recreate) hands out its old token again.

func TestTokensNeverGoBackwardsAfterRedisRollsBack(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newSafetyCluster(t, 4)
	key, owner := rollbackScenario(t, c, saveCheckpoint(t, c),
		func(n3 *testNode) { c.crash(n3.id) },
		func() { c.srv.Restart() }) // loads the snapshot: n1 and n2 live, K owned by its old owner
	c.waitConverged(10*time.Second, "n1", "n2")
	t.Logf("%s runs on %s again: %v", key, owner, runsOn(c.rec, owner))
	c.assertTokensOnlyGrow(t, "after Redis restarted from a snapshot taken before "+key+" moved to n3")
	assertNoOverlap(t, c.rec, "after Redis restarted from a snapshot")
}

func TestAnInstanceRecreatedAfterAFailedHealthCheckGetsANewerToken(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newSafetyCluster(t, 2)
	var fails atomic.Int32
	c.healthErr.Store("cfg-01", func() error {
		if fails.Add(1) == 1 {
			return errors.New("broken pipe")
		}
		return nil
	})
	c.start("n1")
	c.eventually(10*time.Second, "cfg-01 recreated after its failed health check", func() bool {
		ups := 0
		for _, r := range c.tokenHistory() {
			if r.key == "cfg-01" {
				ups++
			}
		}
		return ups >= 2 && c.converged("n1")
	})
	c.assertTokensOnlyGrow(t, "an instance recreated under the same claim after a failed health check")
}

func TestAnInstanceReplacedForNewContentGetsANewerToken(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newSafetyCluster(t, 2)
	n1 := c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	c.setConfigs([]testConfig{{Key: "cfg-00"}, {Key: "cfg-01", Version: 1}})
	c.eventually(10*time.Second, "cfg-01 replaced by its new content", func() bool {
		inst, ok := n1.m.Instances()["cfg-01"]
		return ok && inst.version == 1
	})
	c.assertTokensOnlyGrow(t, "an instance replaced under the same key for new content")
}

// 2. A rollback of Redis (a restart from a snapshot or from an AOF that
// lost its last second, a failover that lost the last writes) gives the
// old owner of a key that was handed off its claim back, while the new
// owner, cut off, still runs the key until it fences.

func TestARollbackToASnapshotNeverRunsAKeyTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newSafetyCluster(t, 4)
	var n3 *testNode
	key, owner := rollbackScenario(t, c, saveCheckpoint(t, c),
		func(n *testNode) { n3 = n; n.proxy.Cut(faultproxy.Both) }, // n3 keeps running until it fences
		func() { c.srv.Restart() })
	c.eventually(10*time.Second, "n3 fenced", func() bool { return len(runsOn(c.rec, "n3")) == 0 })
	c.waitConverged(10*time.Second, "n1", "n2")
	assertNoOverlap(t, c.rec, "Redis restarted from a snapshot in which "+owner+" still owned "+key+", while the cut-off n3 ran it")
	n3.proxy.Heal()
}

func TestARollbackOfAnAOFThatLostItsLastSecondNeverRunsAKeyTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	// A SIGKILL loses nothing of an AOF with appendfsync everysec (the
	// writes are in the page cache already); a power loss loses up to the
	// last second. The test emulates the power loss: it copies the AOF
	// directory at the checkpoint and puts the copy back before restarting.
	c := newSafetyCluster(t, 4, redistest.WithArgs("--appendonly", "yes", "--appendfsync", "everysec", "--appenddirname", "aof"))
	aof, copied := filepath.Join(c.srv.Dir(), "aof"), filepath.Join(t.TempDir(), "aof")
	var n3 *testNode
	key, owner := rollbackScenario(t, c,
		func() {
			admin := c.srv.Client(t)
			// A reply is sent only after the AOF buffer was written to the
			// file: after a PING, the file holds every earlier write.
			require.NoError(t, admin.Do(context.Background(), admin.B().Ping().Build()).Error())
			copyDir(t, aof, copied)
		},
		func(n *testNode) { n3 = n; n.proxy.Cut(faultproxy.Both) },
		func() {
			c.srv.Kill()
			require.NoError(t, os.RemoveAll(aof))
			copyDir(t, copied, aof)
			c.srv.Restart()
		})
	c.eventually(10*time.Second, "n3 fenced", func() bool { return len(runsOn(c.rec, "n3")) == 0 })
	c.waitConverged(10*time.Second, "n1", "n2")
	assertNoOverlap(t, c.rec, "Redis restarted from an AOF that lost the handoff of "+key+" from "+owner+" to the cut-off n3")
	n3.proxy.Heal()
}

// 3. The fence runs on the node loop: while a reconcile waits for a slow
// disconnect, the fence of every other instance waits too.

func TestASlowDisconnectOfOneKeyDoesNotDelayTheFenceOfTheOthers(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newSafetyCluster(t, 6)
	c.start("n2")
	c.eventually(5*time.Second, "n2 leads", func() bool { return c.node("n2").m.IsLeader() })
	n1 := c.start("n1")
	c.waitConverged(10*time.Second, "n1", "n2")
	mine := runsOn(c.rec, "n1")
	require.Len(t, mine, 3)
	slow := mine[0]
	// The slow key's disconnect takes 1.5s (callback timeout 2s); the moment
	// it starts, n1 is cut off from Redis.
	c.setOnDisconnect(func(node, key string) {
		if node == "n1" && key == slow {
			n1.proxy.Cut(faultproxy.Both)
			time.Sleep(1500 * time.Millisecond) // the slow disconnect is the scenario
		}
	})
	var rest []testConfig
	for _, key := range c.keys() {
		if key != slow {
			rest = append(rest, testConfig{Key: key})
		}
	}
	c.setConfigs(rest) // n1 disconnects the slow key inside a reconcile
	require.NoError(t, c.node("n2").m.Rebalance(context.Background()))
	c.waitConverged(10*time.Second, "n2")
	assertNoOverlap(t, c.rec, "the fence of n1's other keys waited for the slow disconnect of "+slow)
	n1.proxy.Heal()
}

// 4. The fence disconnects at most maxParallelCallbacks instances at a time:
// 64 disconnects of 150ms take 600ms, far past a fence margin of 200ms.

func TestTheFenceDisconnectsEveryInstanceWithinTheMargin(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newSafetyCluster(t, 128)
	margin := WithFenceMargin(200 * time.Millisecond)
	c.start("n2", margin)
	c.eventually(5*time.Second, "n2 leads", func() bool { return c.node("n2").m.IsLeader() })
	n1 := c.start("n1", margin)
	c.waitConverged(15*time.Second, "n1", "n2")
	require.Len(t, runsOn(c.rec, "n1"), 64)
	c.setOnDisconnect(func(node, key string) {
		if node == "n1" {
			time.Sleep(150 * time.Millisecond) // each instance needs 150ms to stop: within the margin
		}
	})
	n1.proxy.Cut(faultproxy.Both)
	c.waitConverged(10*time.Second, "n2")
	assertNoOverlap(t, c.rec, "the fence stopped n1's 64 instances 16 at a time, past its 200ms margin")
	n1.proxy.Heal()
}

// 5. The grace period after Redis lost its state lasts the node TTL of the
// first node to join again, not the longest lease that may still run.

func TestTheGracePeriodCoversTheLongestLeaseNotTheJoiners(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newSafetyCluster(t, 4)
	n1 := c.start("n1", slowLease()...) // a rolling change of the node TTL: n1 still at 3s
	c.start("n2")                       // n2 at the 1s of the harness
	c.waitConverged(10*time.Second, "n1", "n2")
	n1.proxy.Cut(faultproxy.Both)
	c.srv.Kill()
	c.srv.Restart() // empty
	c.eventually(10*time.Second, "n1 fenced", func() bool { return len(runsOn(c.rec, "n1")) == 0 })
	c.waitConverged(10*time.Second, "n2")
	assertNoOverlap(t, c.rec, "n2 rejoined an empty Redis and claimed after its own 1s TTL what n1 ran for up to 2.4s")
	n1.proxy.Heal()
}

// 6. The key function runs unbounded on the node loop and the leader loop.

func TestAHangingKeyFunctionFreezesNeitherTheNodeNorTheLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newSafetyCluster(t, 4)
	hold := newGate(t)
	var armed atomic.Bool
	var inflight, most, calls atomic.Int32
	// On n1 only, the key of cfg-00 hangs while armed, ignoring everything,
	// until the test releases it.
	hanging := WithKey(func(cfg testConfig) string {
		if cfg.Key == "cfg-00" && armed.Load() {
			calls.Add(1)
			n := inflight.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			hold.wait()
			inflight.Add(-1)
		}
		return cfg.Key
	})
	n1 := c.start("n1", hanging)
	c.eventually(5*time.Second, "n1 leads", n1.m.IsLeader)
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	armed.Store(true)
	c.eventually(5*time.Second, "the key function hanging on n1", func() bool { return inflight.Load() > 0 })

	// (a) The leader keeps rebalancing: a joiner gets its share, and the
	// keys of a crashed node are placed again (even a leader that keeps the
	// assignment because it cannot read configs places those).
	c.start("n3")
	c.crash("n2")
	rebalanced := c.poll(10*time.Second, func() bool { return c.converged("n1", "n3") })
	assert.True(t, rebalanced, "the leader stopped rebalancing while the key function hangs: n3 runs %v, live: %s",
		runsOn(c.rec, "n3"), c.rec.Summary())

	// (b) Stop honours its context.
	stopped := make(chan error, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		stopped <- n1.m.Stop(ctx)
	}()
	select {
	case <-stopped:
		t.Logf("Stop(500ms) returned after %v", time.Since(start))
	case <-time.After(1500 * time.Millisecond):
		t.Errorf("Stop with a 500ms context has not returned after %v while the key function hangs", time.Since(start))
		hold.open()
		<-stopped
	}

	// (c) No pile-up: at most one abandoned call of each kind (the leader's
	// configs, the node's configs) hangs at a time.
	assert.LessOrEqual(t, most.Load(), int32(2), "concurrent calls of the hanging key function on n1 (%d calls in all)", calls.Load())
	hold.open()
}

// 7. json.Marshal does not recover a panic of MarshalJSON: the content hash,
// computed outside any recover, takes the process down.

// marshalPanicConfig is a config whose JSON encoding panics when Panic is set.
type marshalPanicConfig struct {
	Key   string
	Panic bool
}

func (c marshalPanicConfig) MarshalJSON() ([]byte, error) {
	if c.Panic {
		panic("MarshalJSON exploded")
	}
	return json.Marshal(map[string]string{"key": c.Key})
}

const marshalPanicChild = "DIM_TEST_MARSHAL_PANIC_CHILD"

func TestAPanickingMarshalJSONDoesNotKillTheProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	if variant := os.Getenv(marshalPanicChild); variant != "" {
		marshalPanicScenario(t, variant == "keyed")
		return
	}
	// The scenario runs in a child process, so that a crash fails this test
	// instead of the whole test binary.
	for _, variant := range []string{"keyed", "unkeyed"} {
		t.Run(variant, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestAPanickingMarshalJSONDoesNotKillTheProcess$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), marshalPanicChild+"="+variant)
			// Once the child has exited, do not wait for anything it
			// started to close the output pipe.
			cmd.WaitDelay = 5 * time.Second
			out, err := cmd.CombinedOutput()
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) > 40 {
				lines = lines[:40]
			}
			assert.NoError(t, err, "the process running a config whose MarshalJSON panics (%s) died:\n%s", variant, strings.Join(lines, "\n"))
		})
	}
}

func marshalPanicScenario(t *testing.T, keyed bool) {
	srv := redistest.Start(t)
	var mu sync.Mutex
	configs := []marshalPanicConfig{{Key: "ok"}}
	getConfig := func(context.Context) ([]marshalPanicConfig, error) {
		mu.Lock()
		defer mu.Unlock()
		return append([]marshalPanicConfig(nil), configs...), nil
	}
	var okUp, okDown atomic.Int32
	create := func(_ context.Context, cfg marshalPanicConfig) (string, error) {
		if cfg.Key == "ok" {
			okUp.Add(1)
		}
		return cfg.Key, nil
	}
	opts := []Option{
		WithService("panics"),
		WithRedis(srv.ClientOption()),
		WithNodeTTL(testTTL), WithHeartbeat(testHeartbeat),
		WithLeaderLockTTL(testLockTTL), WithLeaderLockRefresh(testLockEvery),
		WithConfigRefreshSchedule("@every 1s"),
		WithCallbackTimeout(2 * time.Second),
		WithDisconnect(func(_ context.Context, key string) error {
			if key == "ok" {
				okDown.Add(1)
			}
			return nil
		}),
	}
	if keyed {
		opts = append(opts, WithKey(func(c marshalPanicConfig) string { return c.Key }))
	}
	if l := testLogger(t); l != nil {
		opts = append(opts, WithLogger(l))
	}
	m, err := New(getConfig, create, opts...)
	require.NoError(t, err)
	require.NoError(t, m.Start(context.Background()))
	defer func() { _ = m.Stop(context.Background()) }()
	eventually(t, 10*time.Second, "the good config running", func() bool { return okUp.Load() == 1 })

	mu.Lock()
	configs = append(configs, marshalPanicConfig{Key: "bad", Panic: true})
	mu.Unlock()
	// Let the leader and the node read the configs a few times.
	time.Sleep(3 * time.Second)
	assert.EqualValues(t, 1, okUp.Load(), "the good config was recreated")
	assert.EqualValues(t, 0, okDown.Load(), "the good config stopped running")
	// Without WithKey the key is the content hash: look for the instance.
	running := slices.Contains(slices.Collect(maps.Values(m.Instances())), "ok")
	assert.True(t, running, "the good config runs")
}

// 8. createAll starts queued creates after the node was fenced: their
// context is cancelled before createInstance is even called.

func TestCreateInstanceIsNeverCalledWithAnEndedContext(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newSafetyCluster(t, 40)
	n1 := c.newNode("n1")
	var cut atomic.Bool
	// The first creates (16 at a time) block until the node is fenced: the
	// link is cut as the first of them starts, right after the claims were
	// granted, so the others wait in the queue meanwhile.
	c.setOnCreate(func(ctx context.Context, node string, cfg testConfig) error {
		if cut.CompareAndSwap(false, true) {
			n1.proxy.Cut(faultproxy.Both)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Second):
			return nil
		}
	})
	c.startNode(n1)
	c.eventually(10*time.Second, "the link cut at the first create", cut.Load)
	c.eventually(5*time.Second, "n1 fenced", func() bool { s, _ := n1.m.membership.lease.current(); return s == "" })
	// The node loop handles the fence once the reconcile with the creates
	// is over.
	c.eventually(10*time.Second, "the fence handled", func() bool { return n1.m.life.load() != phaseFenced })
	assert.Zero(t, c.cancelledAtEntry.Load(),
		"createInstance was called with an already cancelled context (of %d calls)", c.creates.Load())
	n1.proxy.Heal()
}

// 2, Sentinel: a failover to a replica that missed a handoff. The record on
// the new master gives the handed-off keys back to their old owners while
// the node that took them, cut off, still runs them until it fences.
func TestASentinelFailoverThatLostAHandoffNeverRunsAKeyTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	s := redistest.StartSentinel(t)
	s.Set("down-after-milliseconds", "30000") // only the test fails over
	opt := s.ClientOption()
	opt.Sentinel.TopologyRefreshInterval = time.Second
	c := newDirectCluster(t, "svc", opt, 6, WithNodeTTL(3*time.Second), WithHeartbeat(300*time.Millisecond))
	c.start("n1")
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	// From here on the replica receives nothing: the failover loses it all.
	s.DetachReplica()
	c.start("n3")
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	require.NotZero(t, c.loads()["n3"], "n3 took keys over")
	c.linksMu.Lock()
	c.links["n3"].sever()
	c.linksMu.Unlock()
	s.Failover()
	c.waitConverged(20*time.Second, "n1", "n2")
	assertNoOverlap(t, c.rec, "a failover that lost a handoff gave its keys back to their old owners while the new one still ran them")
}

// A disconnect hook in flight when its node fences sees its context end at
// the fence, so a hook that waits on its context returns within the fence
// margin, before another node may start the key.
func TestADisconnectInFlightAtAFenceSeesItsContextEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	var slow atomic.Bool
	var entered atomic.Int32
	n1 := c.newNode("n1", WithCallbackTimeout(10*time.Second), WithDisconnect(func(ctx context.Context, inst *testInst) error {
		if slow.Load() {
			entered.Add(1)
			<-ctx.Done() // a hook that takes as long as it is allowed
		}
		c.rec.Down(inst.node, inst.key, inst.id)
		return nil
	}))
	c.startNode(n1)
	c.waitConverged(10*time.Second, "n1")
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")

	// n1's keys change: it replaces them, and its hooks hang (a handoff
	// keeps the lease, so that is allowed); then n1 is cut off and fences.
	slow.Store(true)
	on := c.rec.LiveByKey()
	c.mu.Lock()
	cfgs := slices.Clone(c.configs)
	c.mu.Unlock()
	for i := range cfgs {
		if slices.Equal(on[cfgs[i].Key], []string{"n1"}) {
			cfgs[i].Version++
		}
	}
	c.setConfigs(cfgs)
	require.NoError(t, n1.m.Rebalance(context.Background()))
	c.eventually(5*time.Second, "n1's hooks in flight", func() bool { return entered.Load() > 0 })
	n1.proxy.Cut(faultproxy.Both)
	c.waitConverged(10*testTTL, "n2")
	assert.Empty(t, history.Overlaps(c.rec.Events()), "a hung hook outlived the fence margin")
}
