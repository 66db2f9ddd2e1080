package dim

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/history"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Fresh-eyes review: each test here tries to break one promise of the
// README, docs/*.md or the godoc on a real redis-server.

// lateActivateNode makes a make-before-break node whose activate, for the
// keys slow reports, takes hold (ignoring its context, as a createInstance
// may) and begins the work only then. A disposal is a disconnect of an
// instance whose work never began; the work's life is recorded in the
// cluster's history.
func (c *testCluster) lateActivateNode(id string, slow func(key string) bool, hold time.Duration, disposed, returned *sync.Map) *testNode {
	type inst = *testInst
	return c.newNode(id,
		WithPrepare(func(ctx context.Context, cfg testConfig) (inst, error) {
			return &testInst{node: id, key: cfg.Key, ctx: ctx}, nil
		}, func(ctx context.Context, in inst) error {
			if slow(in.key) {
				time.Sleep(hold) // a login that does not watch its context
			}
			in.id = c.rec.Up(id, in.key) // the work begins
			returned.Store(in.key, true)
			return nil
		}, 10*time.Second),
		WithDisconnect(func(_ context.Context, in *testInst) error {
			if in.id == 0 {
				disposed.Store(in.key, true)
				return nil
			}
			c.rec.Down(in.node, in.key, in.id)
			return nil
		}))
}

// prepNode makes a make-before-break node with extra options: prepare
// waits as told, activate begins the work (recorded in the history), and a
// disconnect ends it (or disposes of a prepared instance).
func (c *testCluster) prepNode(id string, prepare func(ctx context.Context, key string) error, extra ...Option) *testNode {
	type inst = *testInst
	return c.newNode(id, append([]Option{
		WithPrepare(func(ctx context.Context, cfg testConfig) (inst, error) {
			if err := prepare(ctx, cfg.Key); err != nil {
				return nil, err
			}
			return &testInst{node: id, key: cfg.Key, ctx: ctx}, nil
		}, func(ctx context.Context, in inst) error {
			in.id = c.rec.Up(id, in.key)
			return nil
		}, 10*time.Second),
		WithDisconnect(func(_ context.Context, in *testInst) error {
			if in.id != 0 {
				c.rec.Down(in.node, in.key, in.id)
			}
			return nil
		}),
	}, extra...)...)
}

// TestAnActivateThatOutlivesTheCallbackTimeoutIsStoppedWhenItReturns:
// README promises that every created instance is disconnected exactly once,
// "including one whose createInstance returned after its timeout", and
// WithPrepare's doc that activate runs under the callback timeout. An
// activate that returns after the timeout must then be treated like such a
// createInstance: its instance stopped once the call has returned, and the
// key run by no other instance meanwhile.
func TestAnActivateThatOutlivesTheCallbackTimeoutIsStoppedWhenItReturns(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	var disposed, returned sync.Map
	never := func(string) bool { return false }
	c.startNode(c.lateActivateNode("n1", never, 0, &disposed, &returned))
	c.waitConverged(10*time.Second, "n1")
	var once sync.Once
	var slowKey string
	slow := func(key string) bool {
		s := false
		once.Do(func() { slowKey, s = key, true })
		return s
	}
	// The test nodes' callback timeout is 2 s.
	c.startNode(c.lateActivateNode("n2", slow, 3*time.Second, &disposed, &returned))
	c.waitConverged(20*time.Second, "n1", "n2")
	c.eventually(10*time.Second, "the slow activate returned", func() bool {
		_, ok := returned.Load(slowKey)
		return ok
	})
	// Once it has returned, n2 runs the key (again, or still) and the key
	// runs once: the late instance stopped, or the one that runs.
	c.eventually(10*time.Second, "n2 runs the slow key", func() bool {
		_, ok := c.node("n2").m.Instances()[slowKey]
		return ok
	})
	c.waitConverged(10*time.Second, "n1", "n2")
	assert.Equal(t, []string{"n2"}, c.rec.LiveByKey()[slowKey])
	assert.Empty(t, history.Overlaps(c.rec.Events()), "two live instances of %s", slowKey)
}

// TestStopWaitsForAPrepareInFlight: Stop's doc says that when it returns
// (without an error) every instance has been stopped, and that nothing may
// outlive it unasked; WithPrepare's, that a prepared instance that is not
// activated is disposed of exactly once. A node that stops while it
// prepares a key must have disposed of what the prepare returned, and no
// prepare call may still run, when Stop returns.
func TestStopWaitsForAPrepareInFlight(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	log := &handoffLog{}
	c.startNode(c.preparingNode("n1", log, sleepFor(0), 10*time.Second))
	c.waitConverged(10*time.Second, "n1")
	started := make(chan string, 4)
	var running atomic.Int32
	c.startNode(c.preparingNode("n2", log, func(ctx context.Context, key string) error {
		running.Add(1)
		defer running.Add(-1)
		started <- key
		time.Sleep(500 * time.Millisecond) // a login that finishes what it began
		return nil
	}, 10*time.Second))
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("n2 never prepared a key")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, c.node("n2").m.Stop(ctx))
	p, a, d := log.counts()
	assert.Equal(t, p, a+d, "when Stop returned, every prepared instance was activated or disposed of: %v", log.lines)
	assert.Zero(t, running.Load(), "prepare calls still running when Stop returned")
	c.waitConverged(10*time.Second, "n1")
}

// TestRetriesOfAFailingKeyDoNotFloodTheHistory: README says the history
// holds "one entry per change listing its keys" and that "a steady service
// adds none", and issue 13 that a cold start must not flush the stream.
// A key whose create keeps failing (an outage of its upstream, which may
// last hours) is retried with backoff on the node that owns it; a retry
// changes no ownership, so it must not add a "claimed" entry each time,
// or an outage flushes the history of how it began.
func TestRetriesOfAFailingKeyDoNotFloodTheHistory(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	failing := func() error { return errors.New("upstream down") }
	for _, key := range c.keys() {
		c.createErr.Store(key, failing)
	}
	c.start("n1", WithGiveUpAfter(0))
	c.eventually(10*time.Second, "every key tried a few times", func() bool {
		return c.creates.Load() >= 4*5
	})
	entries, err := ReadHistory(context.Background(), c.srv.Client(t), Service{Name: c.service}, HistoryFilter{Limit: 10_000})
	require.NoError(t, err)
	claims := 0
	for _, e := range entries {
		if e.Kind == HistoryClaimed {
			claims++
		}
	}
	assert.LessOrEqual(t, claims, 4, "%d claimed entries for %d creates of 4 keys that never ran", claims, c.creates.Load())
}

// TestNewRefusesBadInputToTheNewOptions: README says every option is
// validated in New and a bad value is an error wrapping ErrInvalidOption
// that names the option; nothing is silently accepted.
func TestNewRefusesBadInputToTheNewOptions(t *testing.T) {
	getConfig := func(context.Context) ([]testConfig, error) { return nil, nil }
	create := func(context.Context, testConfig) (*testInst, error) { return &testInst{}, nil }
	prepare := func(context.Context, testConfig) (*testInst, error) { return &testInst{}, nil }
	activate := func(context.Context, *testInst) error { return nil }
	for name, opt := range map[string]Option{
		"WithMoveBudget":        WithMoveBudget(0, math.NaN()),
		"WithMoveBudget ":       WithMoveBudget(-1, 0),
		"WithMoveBudget  ":      WithMoveBudget(0, 1.5),
		"WithQuarantine":        WithQuarantine(0, time.Minute),
		"WithQuarantine ":       WithQuarantine(time.Minute, time.Second),
		"WithPrepare":           WithPrepare(prepare, activate, 0),
		"WithPrepare ":          WithPrepare(prepare, activate, -time.Second),
		"WithPrepare  ":         WithPrepare[testConfig, *testInst](nil, activate, time.Second),
		"WithPrepare   ":        WithPrepare(func(context.Context, int) (*testInst, error) { return nil, nil }, activate, time.Second),
		"WithRestartHold":       WithRestartHold(-time.Second),
		"WithJoinHold":          WithJoinHold(0),
		"WithHistory":           WithHistory(-1),
		"WithCreateConcurrency": WithCreateConcurrency(0),
		"WithLabels":            WithLabels(map[string]string{"": "a"}),
		"WithLabels ":           WithLabels(map[string]string{LabelNode: "n1"}),
		"WithCaps":              WithCaps(-1, 0),
	} {
		_, err := New(getConfig, create, WithService("svc"), opt)
		if assert.ErrorIs(t, err, ErrInvalidOption, "%s", name) {
			assert.Contains(t, err.Error(), strings.TrimSpace(name))
		}
	}
}

// TestSummaryCountsTheKeysOfARestartingNode: Summary's doc says Restarting
// is as in Status ("see Status.Restarting"), and dimctl status prints from
// it "N keys wait for it". Both must count the keys that wait.
func TestSummaryCountsTheKeysOfARestartingNode(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	hold := WithRestartHold(time.Minute)
	c.start("n1", hold)
	c.start("n2", hold)
	c.waitConverged(10*time.Second, "n1", "n2")
	victim := "n2"
	if c.leader().id == victim {
		victim = "n1"
	}
	c.stop(victim)
	var st *Status
	c.eventually(5*time.Second, victim+" shown restarting", func() bool {
		st = c.status()
		return len(st.Restarting) == 1
	})
	require.Equal(t, 3, st.Restarting[0].Keys)
	sum := c.summary()
	require.Len(t, sum.Restarting, 1)
	assert.Equal(t, st.Restarting[0].Keys, sum.Restarting[0].Keys, "keys that wait for %s", victim)
}

// TestAMoveBudgetHoldsAcrossAChangeOfLeader: README says WithMoveBudget
// "lets at most that many voluntary moves be in flight, and the leader
// starts the next step when they have landed"; dimbench reports "never
// more than 500 in flight". The moves in flight are in Redis (owners and
// assignment), so a new leader must count the moves its predecessor
// started and not start a whole budget more on top of them.
func TestAMoveBudgetHoldsAcrossAChangeOfLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 12)
	var now, most atomic.Int32
	slow := func(ctx context.Context, _ string) error {
		n := now.Add(1)
		defer now.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		// Well inside the test nodes' callback timeout of 2 s: these
		// prepares succeed, and the moves stay in flight meanwhile.
		return sleepFor(1500*time.Millisecond)(ctx, "")
	}
	budget := WithMoveBudget(2, 0)
	c.startNode(c.prepNode("n1", sleepFor(0), budget))
	c.startNode(c.prepNode("n2", sleepFor(0), budget))
	c.waitConverged(10*time.Second, "n1", "n2")
	c.startNode(c.prepNode("n3", slow, budget))
	c.eventually(5*time.Second, "the first step's moves preparing", func() bool { return now.Load() == 2 })
	leader := c.leader()
	leader.m.elector.stepDown() // its lock lost: a new term begins
	c.waitConverged(30*time.Second, "n1", "n2", "n3")
	assert.LessOrEqual(t, most.Load(), int32(2), "voluntary moves in flight at once, under a budget of 2")
	assert.Empty(t, history.Overlaps(c.rec.Events()))
}
