package dim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/history"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// handoffLog records what the make-before-break hooks did, in order.
type handoffLog struct {
	mu        sync.Mutex
	lines     []string
	prepared  int
	activated int
	disposed  int
}

func (l *handoffLog) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *handoffLog) index(line string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Index(l.lines, line)
}

func (l *handoffLog) counts() (prepared, activated, disposed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.prepared, l.activated, l.disposed
}

// preparingNode makes a node whose instances are prepared by prepare (after
// its own delay or error) and activated; activated lives are recorded in the
// cluster's history, prepared ones in log.
func (c *testCluster) preparingNode(id string, log *handoffLog, prepare func(ctx context.Context, key string) error, within time.Duration, extra ...Option) *testNode {
	type handoffInst = *testInst
	return c.newNode(id, append([]Option{
		WithPrepare(func(ctx context.Context, cfg testConfig) (handoffInst, error) {
			log.add("prepare %s %s", cfg.Key, id)
			if err := prepare(ctx, cfg.Key); err != nil {
				return nil, err
			}
			log.mu.Lock()
			log.prepared++
			log.mu.Unlock()
			log.add("prepared %s %s", cfg.Key, id)
			return &testInst{node: id, key: cfg.Key, version: cfg.Version, ctx: ctx}, nil
		}, func(ctx context.Context, inst handoffInst) error {
			token, ok := FencingToken(ctx)
			if !ok || token == 0 {
				return errors.New("no fencing token at activate")
			}
			inst.id = c.rec.Up(id, inst.key)
			log.mu.Lock()
			log.activated++
			log.mu.Unlock()
			log.add("activate %s %s", inst.key, id)
			return nil
		}, within),
		WithDisconnect(func(_ context.Context, inst *testInst) error {
			if inst.id == 0 {
				if f, ok := c.disposeIn.Load(inst.key); ok {
					f.(func())()
				}
				log.mu.Lock()
				log.disposed++
				log.mu.Unlock()
				log.add("dispose %s %s", inst.key, id)
				return nil
			}
			log.add("down %s %s", inst.key, id)
			c.rec.Down(inst.node, inst.key, inst.id)
			return nil
		})}, extra...)...)
}

// sleepFor is a prepare that takes d, like a slow login.
func sleepFor(d time.Duration) func(context.Context, string) error {
	return func(ctx context.Context, _ string) error {
		select {
		case <-time.After(d):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func TestAHandoffPreparesTheNewInstanceBeforeTheOldOneStops(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 8)
	log := &handoffLog{}
	c.startNode(c.preparingNode("n1", log, sleepFor(300*time.Millisecond), 10*time.Second))
	c.waitConverged(10*time.Second, "n1")
	c.startNode(c.preparingNode("n2", log, sleepFor(300*time.Millisecond), 10*time.Second))
	c.eventually(5*time.Second, "Status shows n1 handing keys over", func() bool {
		n := c.status().node("n1")
		return n != nil && n.Handing > 0
	})
	c.waitConverged(10*time.Second, "n1", "n2")
	c.eventually(5*time.Second, "no handoff left in Status", func() bool {
		st := c.status()
		return st.node("n1").Handing == 0 && st.node("n2").Prepared == 0
	})

	moved := 0
	for key, on := range c.rec.LiveByKey() {
		if !slices.Equal(on, []string{"n2"}) {
			continue
		}
		moved++
		prepared := log.index("prepared " + key + " n2")
		down := log.index("down " + key + " n1")
		activated := log.index("activate " + key + " n2")
		require.GreaterOrEqual(t, prepared, 0, "%s was not prepared: %v", key, log.lines)
		assert.Less(t, prepared, down, "%s: the old instance ran until the new one was prepared", key)
		assert.Less(t, down, activated, "%s: the new one began only after the old one stopped", key)
	}
	assert.Equal(t, 4, moved)
	p, a, d := log.counts()
	assert.Equal(t, 4, p)
	assert.Equal(t, 4, a, "a cold start creates with createInstance; only the moves activate")
	assert.Zero(t, d)
	assert.Empty(t, history.Overlaps(c.rec.Events()), "activated instances never overlap")
}

// A key that moves while its create still runs on the old owner: the new
// owner prepares and announces meanwhile, and the old owner lets the key go
// as soon as its create is filed, not after the whole prepare timeout.
func TestAnAnnouncementForAKeyStillBeingCreatedIsKept(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 8)
	hold := newGate(t)
	for _, key := range c.keys() {
		c.createErr.Store(key, func() error { hold.wait(); return nil })
	}
	const within = 20 * time.Second
	log := &handoffLog{}
	obs := newObserved(t)
	c.startNode(c.preparingNode("n1", log, sleepFor(0), within, append(obs.options(), WithCallbackTimeout(time.Minute))...))
	c.eventually(10*time.Second, "every create under way on n1", func() bool { return c.creates.Load() == 8 })
	c.startNode(c.preparingNode("n2", log, sleepFor(0), within, WithCallbackTimeout(time.Minute)))
	c.eventually(10*time.Second, "n2 prepared its share and announced it", func() bool {
		p, _, _ := log.counts()
		return p == 4
	})
	// n1 reconciles after the announcements, while its creates still run.
	seen := len(obs.ended(spanReconcile))
	c.eventually(10*time.Second, "n1 reconciled since", func() bool { return len(obs.ended(spanReconcile)) > seen })
	hold.open()
	c.eventually(within/4, "n2 runs its share well before the prepare timeout", func() bool {
		return c.converged("n1", "n2")
	})
	assert.Empty(t, history.Overlaps(c.rec.Events()))
}

// removedWhilePrepared starts n1 with the cluster's keys, then n2 (with
// extra options), whose prepares wait until release is closed. Once n2
// prepares a key, onKey (if not nil) is called with it, the key is removed
// from the configs and the leader rebalances.
func (c *testCluster) removedWhilePrepared(log *handoffLog, onKey func(key string), extra ...Option) (key string, release chan struct{}) {
	c.t.Helper()
	c.startNode(c.preparingNode("n1", log, sleepFor(0), 10*time.Second))
	c.waitConverged(10*time.Second, "n1")
	release = make(chan struct{})
	started := make(chan string, 4)
	c.startNode(c.preparingNode("n2", log, func(ctx context.Context, key string) error {
		started <- key
		<-release
		return nil
	}, 10*time.Second, extra...))
	select {
	case key = <-started:
	case <-time.After(10 * time.Second):
		c.t.Fatal("n2 never prepared a key")
	}
	if onKey != nil {
		onKey(key)
	}
	var keep []testConfig
	for _, k := range c.keys() {
		if k != key {
			keep = append(keep, testConfig{Key: k})
		}
	}
	c.setConfigs(keep)
	c.requestRebalance()
	return key, release
}

// requestRebalance asks the leader to rebalance now.
func (c *testCluster) requestRebalance() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := RequestRebalance(ctx, c.srv.Client(c.t), Service{Name: c.service})
	require.NoError(c.t, err)
}

func TestAPreparedInstanceThatIsNotActivatedIsDisposedOfOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	log := &handoffLog{}
	key, release := c.removedWhilePrepared(log, nil)
	close(release)
	c.eventually(10*time.Second, "the prepared instance of the removed key disposed of", func() bool {
		return log.index("dispose "+key+" n2") >= 0
	})
	c.waitConverged(10*time.Second, "n1", "n2")
	assert.Negative(t, log.index("activate "+key+" n2"), "never activated")
	p, a, d := log.counts()
	assert.Equal(t, p, a+d, "every prepared instance activated or disposed of, once: %v", log.lines)
	assert.Empty(t, history.Overlaps(c.rec.Events()))
}

// A prepared instance whose disposal takes its time holds up no other key:
// the node creates, and takes keys that move to it, while it is disposed of.
func TestASlowDisposalHoldsUpNoOtherKey(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	log := &handoffLog{}
	hold := newGate(t)
	disposing := make(chan struct{})
	// What the prepare of the removed key returns is disposed of, and that
	// takes a while.
	key, release := c.removedWhilePrepared(log, func(key string) {
		c.disposeIn.Store(key, func() { close(disposing); hold.wait() })
	}, WithCallbackTimeout(time.Minute))
	close(release)
	select {
	case <-disposing:
	case <-time.After(10 * time.Second):
		t.Fatal("the prepared instance of the removed key was never disposed of")
	}

	// New keys meanwhile: n2 takes its share of them at once.
	var keep []testConfig
	for _, k := range c.keys() {
		keep = append(keep, testConfig{Key: k})
	}
	for i := range 5 {
		keep = append(keep, testConfig{Key: fmt.Sprintf("new-%d", i)})
	}
	c.setConfigs(keep)
	c.requestRebalance()
	c.waitConverged(5*time.Second, "n1", "n2")
	assert.Negative(t, log.index("dispose "+key+" n2"), "the disposal still runs")

	hold.open()
	c.eventually(10*time.Second, "the disposal ends", func() bool { return log.index("dispose "+key+" n2") >= 0 })
	assert.Negative(t, log.index("activate "+key+" n2"), "never activated")
	p, a, d := log.counts()
	assert.Equal(t, p, a+d, "every prepared instance activated or disposed of, once: %v", log.lines)
	assert.Empty(t, history.Overlaps(c.rec.Events()))
}

func TestAFailedOrLatePrepareMovesTheKeyTheNormalWay(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	for _, tc := range []struct {
		name    string
		prepare func(ctx context.Context, key string) error
		within  time.Duration
	}{
		{"failed", func(context.Context, string) error { return errors.New("login refused") }, time.Hour},
		{"late", sleepFor(time.Hour), 500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCluster(t, 4)
			log := &handoffLog{}
			c.startNode(c.preparingNode("n1", log, sleepFor(0), tc.within))
			c.waitConverged(10*time.Second, "n1")
			var mu sync.Mutex
			calls := map[string]int{}
			c.startNode(c.preparingNode("n2", log, func(ctx context.Context, key string) error {
				mu.Lock()
				calls[key]++
				mu.Unlock()
				return tc.prepare(ctx, key)
			}, tc.within))
			// Within a few seconds, not the hour a hold could last.
			c.waitConverged(10*time.Second, "n1", "n2")
			assert.Empty(t, history.Overlaps(c.rec.Events()))
			// A prepare that failed is not tried again for the same move:
			// the key moves the normal way, and a second prepare would
			// be a connection opened for nothing.
			mu.Lock()
			defer mu.Unlock()
			assert.Len(t, calls, 2, "the two keys that moved to n2")
			for key, n := range calls {
				assert.Equal(t, 1, n, "prepare calls for %s", key)
			}
		})
	}
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
