package dim

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"net"

	"github.com/go-dim/dim/internal/faultproxy"
	"github.com/go-dim/dim/internal/history"
	"github.com/go-dim/dim/internal/redistest"
	"github.com/go-dim/dim/internal/syncbuf"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
)

// testConfig is the config type of the integration tests: keyed, with a
// version so that a change of content under one key can be made.
type testConfig struct {
	Key     string
	Version int
}

// testInst is what createInstance returns in the tests.
type testInst struct {
	node    string
	key     string
	version int
	id      int64
	ctx     context.Context
}

// Timings short enough for tests, in the relations New demands.
const (
	testTTL       = time.Second
	testHeartbeat = 100 * time.Millisecond
	testLockTTL   = time.Second
	testLockEvery = 200 * time.Millisecond
)

// testCluster is one Redis and the dim nodes of one service around it. Each
// node reaches Redis through its own fault proxy, so a test can cut a node
// off or crash it.
type testCluster struct {
	t       *testing.T
	srv     *redistest.Server
	rec     *history.Recorder
	service string
	logs    syncbuf.Buffer // the nodes' logs at Info and up, shown if the test fails

	mu      sync.Mutex
	configs []testConfig
	nodes   map[string]*testNode

	// Failure injection, by key; nil means succeed.
	createErr    sync.Map // key → func() error
	healthErr    sync.Map // key → func() error
	disconnectIn sync.Map // key → func(): runs in the disconnect hook, before the instance ends
	disposeIn    sync.Map // key → func(): runs in a preparing node's disconnect hook, before a prepared instance is disposed of
	crashes      sync.WaitGroup
	getConfErr   atomic.Pointer[error]
	getConfFails atomic.Int64
	getConfCalls atomic.Int64
	creates      atomic.Int64
}

type testNode struct {
	id      string
	m       *Manager[testConfig, *testInst]
	proxy   *faultproxy.Proxy
	crashed bool
}

func newTestCluster(t *testing.T, keys int) *testCluster {
	t.Helper()
	return newTestClusterOn(t, keys, redistest.Start(t))
}

// newTestClusterOn is newTestCluster on a server the test started.
func newTestClusterOn(t *testing.T, keys int, srv *redistest.Server) *testCluster {
	t.Helper()
	c := &testCluster{
		t:       t,
		srv:     srv,
		rec:     history.New(),
		service: "svc",
		nodes:   map[string]*testNode{},
	}
	c.setKeys(keys)
	t.Cleanup(func() {
		c.crashes.Wait()
		c.stopAll()
		// No leak: once every node stopped, every instance was disconnected
		// (a late create that outlived its timeout is disconnected when it
		// returns, so allow it a moment).
		deadline := time.Now().Add(5 * time.Second)
		for len(c.rec.Live()) > 0 && time.Now().Before(deadline) {
			select {
			case <-c.rec.Changed():
			case <-time.After(10 * time.Millisecond):
			}
		}
		if live := c.rec.Live(); len(live) > 0 {
			t.Errorf("%d instances never disconnected after every node stopped: %s", len(live), c.rec.Summary())
		}
		if problems := history.Problems(c.rec.Events()); len(problems) > 0 {
			t.Errorf("history has %d problems:\n%v", len(problems), problems)
		}
		if t.Failed() {
			t.Logf("the nodes' logs, Info and up, last %d lines:\n%s", failureLogLines, lastLines(c.logs.String(), failureLogLines))
		}
	})
	return c
}

// failureLogLines is how much of the nodes' logs a failed test shows.
const failureLogLines = 300

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (c *testCluster) setKeys(n int) {
	cfgs := make([]testConfig, n)
	for i := range cfgs {
		cfgs[i] = testConfig{Key: fmt.Sprintf("cfg-%02d", i)}
	}
	c.setConfigs(cfgs)
}

func (c *testCluster) setConfigs(cfgs []testConfig) {
	c.mu.Lock()
	c.configs = slices.Clone(cfgs)
	c.mu.Unlock()
}

func (c *testCluster) keys() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var keys []string
	for _, cfg := range c.configs {
		keys = append(keys, cfg.Key)
	}
	return keys
}

func (c *testCluster) getConfig(context.Context) ([]testConfig, error) {
	c.getConfCalls.Add(1)
	if err := c.getConfErr.Load(); err != nil {
		c.getConfFails.Add(1)
		return nil, *err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.configs), nil
}

func testOptions(extra ...Option) []Option {
	return append([]Option{
		WithNodeTTL(testTTL),
		WithHeartbeat(testHeartbeat),
		WithLeaderLockTTL(testLockTTL),
		WithLeaderLockRefresh(testLockEvery),
		WithLeaderHealthcheckSchedule("@every 1s"),
		WithHealthcheckSchedule("@every 1s"),
		WithConfigRefreshSchedule("@every 1s"),
		WithCallbackTimeout(2 * time.Second),
		WithKey(func(c testConfig) string { return c.Key }),
	}, extra...)
}

// testLogger logs to stderr when DIM_TEST_LOG is set.
func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("DIM_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newNode creates a node without starting it.
func (c *testCluster) newNode(id string, extra ...Option) *testNode {
	c.t.Helper()
	proxy, err := faultproxy.New(c.srv.Addr())
	require.NoError(c.t, err)
	c.t.Cleanup(func() { _ = proxy.Close() })
	ropt := c.srv.ClientOption()
	ropt.InitAddress = []string{proxy.Addr()}

	create := func(ctx context.Context, cfg testConfig) (*testInst, error) {
		c.creates.Add(1)
		inst := c.rec.Up(id, cfg.Key)
		if f, ok := c.createErr.Load(cfg.Key); ok {
			ok := false
			defer func() {
				if !ok { // it panicked
					c.rec.Failed(id, cfg.Key, inst)
				}
			}()
			if err := f.(func() error)(); err != nil {
				ok = true
				c.rec.Failed(id, cfg.Key, inst)
				return nil, err
			}
			ok = true
		}
		return &testInst{node: id, key: cfg.Key, version: cfg.Version, id: inst, ctx: ctx}, nil
	}
	opts := []Option{
		WithService(c.service),
		WithNodeID(id),
		WithRedis(ropt),
		WithDisconnect(func(_ context.Context, inst *testInst) error {
			if f, ok := c.disconnectIn.Load(inst.key); ok {
				f.(func())()
			}
			c.rec.Down(inst.node, inst.key, inst.id)
			return nil
		}),
		WithHealthcheck(func(_ context.Context, inst *testInst) error {
			if f, ok := c.healthErr.Load(inst.key); ok {
				return f.(func() error)()
			}
			return nil
		}),
	}
	l := testLogger(c.t)
	if l == nil {
		l = slog.New(slog.NewTextHandler(&c.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	opts = append(opts, WithLogger(l))
	return c.register(id, proxy, create, append(testOptions(opts...), extra...))
}

// register makes a node of the cluster with create and opts, and files it
// under id.
func (c *testCluster) register(id string, proxy *faultproxy.Proxy, create func(context.Context, testConfig) (*testInst, error), opts []Option) *testNode {
	c.t.Helper()
	m, err := New(c.getConfig, create, opts...)
	require.NoError(c.t, err)
	n := &testNode{id: id, m: m, proxy: proxy}
	c.mu.Lock()
	c.nodes[id] = n
	c.mu.Unlock()
	return n
}

// start creates and starts a node.
func (c *testCluster) start(id string, extra ...Option) *testNode {
	c.t.Helper()
	return c.startNode(c.newNode(id, extra...))
}

// startNode starts a node made by any harness.
func (c *testCluster) startNode(n *testNode) *testNode {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(c.t, n.m.Start(ctx))
	return n
}

// stop stops a node gracefully.
func (c *testCluster) stop(id string) {
	c.t.Helper()
	n := c.node(id)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(c.t, n.m.Stop(ctx))
}

// crash kills a node as a crash would: its link to Redis goes silent, its
// loops stop, its instances die with it and nothing is released.
func (c *testCluster) crash(id string) {
	c.t.Helper()
	n := c.node(id)
	n.proxy.Cut(faultproxy.Both)
	c.rec.Kill(id)
	n.crashed = true
	// The dead process's goroutines wind down in the background: closing
	// clients on a silent link takes their write timeout.
	c.crashes.Go(n.m.crashForTest)
}

func (c *testCluster) node(id string) *testNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[id]
	require.NotNil(c.t, n, "no node %q", id)
	return n
}

func (c *testCluster) stopAll() {
	c.mu.Lock()
	nodes := make([]*testNode, 0, len(c.nodes))
	for _, n := range c.nodes {
		nodes = append(nodes, n)
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range nodes {
		if n.crashed || n.m.life.checkStarted() != nil {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = n.m.Stop(ctx)
		})
	}
	wg.Wait()
}

// leader returns the node that leads, waiting for one.
func (c *testCluster) leader() *testNode {
	c.t.Helper()
	var found *testNode
	c.eventually(5*time.Second, "a leader", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		found = nil
		for _, n := range c.nodes {
			if !n.crashed && n.m.IsLeader() {
				if found != nil {
					return false
				}
				found = n
			}
		}
		return found != nil
	})
	return found
}

// eventually polls cond until it holds or the deadline passes.
func (c *testCluster) eventually(within time.Duration, what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("not within %v: %s\nlive per node: %v\nin Redis: %s\nlive: %s", within, what, c.loads(), c.redisView(), c.rec.Summary())
		}
		select {
		case <-c.rec.Changed():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// redisView is what Redis says of the service, for a failure message: the
// leader, the live members, and the assignment and key states by count.
func (c *testCluster) redisView() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client := c.srv.Client(c.t)
	sum, err := ReadSummary(ctx, client, Service{Name: c.service})
	if err != nil {
		return "unreadable: " + err.Error()
	}
	nodes := make([]string, 0, len(sum.Nodes))
	for _, n := range sum.Nodes {
		nodes = append(nodes, fmt.Sprintf("%s(%s, %d assigned, %d running)", n.ID, n.State, n.Assigned, n.Running))
	}
	return fmt.Sprintf("leader %q (live %v, epoch %d), nodes %v, assigned %d, running %d, unowned %d, on dead nodes %d, states %v",
		sum.Leader, sum.LeaderLive, sum.Epoch, nodes, sum.Assigned, sum.Running, sum.Unowned, sum.OnDeadNodes, sum.States)
}

// converged reports whether every configured key is live exactly once, on a
// live node, with perfectly even loads over the given nodes.
func (c *testCluster) converged(nodes ...string) bool {
	live := c.rec.LiveByKey()
	keys := c.keys()
	if len(live) != len(keys) {
		return false
	}
	loads := map[string]int{}
	for _, key := range keys {
		on := live[key]
		if len(on) != 1 || !slices.Contains(nodes, on[0]) {
			return false
		}
		loads[on[0]]++
	}
	lo, hi := len(keys)/len(nodes), (len(keys)+len(nodes)-1)/len(nodes)
	for _, n := range nodes {
		if loads[n] < lo || loads[n] > hi {
			return false
		}
	}
	return true
}

func (c *testCluster) waitConverged(within time.Duration, nodes ...string) time.Duration {
	c.t.Helper()
	start := time.Now()
	c.eventually(within, fmt.Sprintf("every key live once on %v", nodes), func() bool { return c.converged(nodes...) })
	return time.Since(start)
}

// loads returns how many instances each node runs now.
func (c *testCluster) loads() map[string]int {
	loads := map[string]int{}
	for _, iv := range c.rec.Live() {
		loads[iv.Node]++
	}
	return loads
}

func redisOption(addrs ...string) rueidis.ClientOption {
	return rueidis.ClientOption{InitAddress: addrs, Dialer: net.Dialer{Timeout: time.Second}}
}

// gate holds a callback until the test opens it; a test's cleanup opens it
// at the latest, so that nothing waits on it past the test.
type gate struct {
	ch   chan struct{}
	once sync.Once
}

func newGate(t *testing.T) *gate {
	g := &gate{ch: make(chan struct{})}
	t.Cleanup(g.open)
	return g
}

// wait blocks until the gate opens.
func (g *gate) wait() { <-g.ch }

// open lets every waiter go; it may be called more than once.
func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }
