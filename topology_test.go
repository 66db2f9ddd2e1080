package dim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/history"
	"github.com/go-dim/dim/internal/redistest"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests of this file run dim on Redis deployments a TCP proxy cannot
// stand in for: a Redis Cluster (MOVED redirects name the real addresses)
// and Sentinel (the client discovers the master). Their nodes dial Redis
// directly, through a link that the test can sever.

// directCluster is a testCluster whose nodes reach Redis directly with the
// given client options. Everything testCluster offers that needs no proxy
// (leader, eventually, converged, the overlap check at cleanup) works on it.
type directCluster struct {
	*testCluster
	redis rueidis.ClientOption
	opts  []Option

	linksMu sync.Mutex
	links   map[string]*link
}

func newDirectCluster(t *testing.T, service string, redis rueidis.ClientOption, keys int, opts ...Option) *directCluster {
	t.Helper()
	c := &directCluster{
		testCluster: &testCluster{t: t, rec: history.New(), service: service, nodes: map[string]*testNode{}},
		redis:       redis,
		opts:        opts,
		links:       map[string]*link{},
	}
	c.setKeys(keys)
	t.Cleanup(func() {
		c.stopAll()
		if problems := history.Problems(c.rec.Events()); len(problems) > 0 {
			t.Errorf("%s: history has %d problems:\n%v", service, len(problems), problems)
		}
	})
	return c
}

// newNode creates a node of the service without starting it.
func (c *directCluster) newNode(id string, extra ...Option) *testNode {
	c.t.Helper()
	l := &link{}
	ropt := c.redis
	ropt.DialCtxFn = l.dial
	create := func(ctx context.Context, cfg testConfig) (*testInst, error) {
		c.creates.Add(1)
		inst := c.rec.Up(id, cfg.Key)
		return &testInst{node: id, key: cfg.Key, version: cfg.Version, id: inst, ctx: ctx}, nil
	}
	opts := []Option{
		WithService(c.service),
		WithNodeID(id),
		WithRedis(ropt),
		WithDisconnect(func(_ context.Context, inst *testInst) error {
			c.rec.Down(inst.node, inst.key, inst.id)
			return nil
		}),
	}
	if l := testLogger(c.t); l != nil {
		opts = append(opts, WithLogger(l.With("service", c.service)))
	}
	opts = append(append(testOptions(opts...), c.opts...), extra...)
	m, err := New(c.getConfig, create, opts...)
	require.NoError(c.t, err)
	n := &testNode{id: id, m: m}
	c.mu.Lock()
	c.nodes[id] = n
	c.mu.Unlock()
	c.linksMu.Lock()
	c.links[id] = l
	c.linksMu.Unlock()
	return n
}

// start creates and starts a node.
func (c *directCluster) start(id string, extra ...Option) *testNode {
	c.t.Helper()
	return c.startNode(c.newNode(id, extra...))
}

// crash kills a node as a crash would. Its connections are closed and no
// new ones can be made, so nothing it still tries to send arrives (not even
// the lock release rueidislock attempts on Close): a crashed leader's lock
// expires, it is not deleted. Its instances are declared dead at that
// moment, as those of a killed process are, then its goroutines and clients
// end without releasing anything; that takes up to a lock TTL, while
// rueidislock retries its release. An instance whose create was under way
// at the cut is declared dead once the node has stopped.
func (c *directCluster) crash(id string) {
	c.t.Helper()
	n := c.node(id)
	c.linksMu.Lock()
	l := c.links[id]
	c.linksMu.Unlock()
	l.sever()
	c.rec.Kill(id)
	n.m.crashForTest()
	c.rec.Kill(id)
	n.crashed = true
}

// running lists the nodes that are neither stopped nor crashed.
func (c *directCluster) running() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for id, n := range c.nodes {
		if !n.crashed && !n.m.life.stopping() && n.m.life.checkStarted() == nil {
			ids = append(ids, id)
		}
	}
	return ids
}

// follower returns a running node that does not lead.
func (c *directCluster) follower() string {
	ids := without(c.running(), c.leader().id)
	require.NotEmpty(c.t, ids, "no follower runs")
	slices.Sort(ids)
	return ids[0]
}

// without returns ids without drop.
func without(ids []string, drop string) []string {
	var out []string
	for _, id := range ids {
		if id != drop {
			out = append(out, id)
		}
	}
	return out
}

// errSevered is what a severed link answers to a dial.
var errSevered = errors.New("test: link severed")

// link is one node's network: every connection its clients dial, to any
// Redis address, goes through it, so the test can cut them all at once.
type link struct {
	mu      sync.Mutex
	severed bool
	conns   []net.Conn
}

func (l *link) dial(ctx context.Context, dst string, dialer *net.Dialer, tlsConf *tls.Config) (net.Conn, error) {
	l.mu.Lock()
	severed := l.severed
	l.mu.Unlock()
	if severed {
		return nil, errSevered
	}
	var conn net.Conn
	var err error
	if tlsConf != nil {
		conn, err = (&tls.Dialer{NetDialer: dialer, Config: tlsConf}).DialContext(ctx, "tcp", dst)
	} else {
		conn, err = dialer.DialContext(ctx, "tcp", dst)
	}
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.severed {
		conn.Close()
		return nil, errSevered
	}
	l.conns = append(l.conns, conn)
	return conn, nil
}

// sever closes every connection of the link and refuses new ones, as the
// death of the process would.
func (l *link) sever() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.severed = true
	for _, conn := range l.conns {
		conn.Close()
	}
	l.conns = nil
}

// runScenarios walks a service through the manager's integration scenarios:
// three nodes spread the keys, a fourth joins and takes exactly its share, a
// follower stops gracefully and one crashes, then the leader crashes and a
// new leader with a higher epoch takes over. At-most-one is checked on the
// whole history when the test ends.
func runScenarios(t *testing.T, c *directCluster) {
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id)
	}
	c.waitConverged(10*time.Second, "n1", "n2", "n3")

	creates := c.creates.Load()
	c.start("n4")
	took := c.waitConverged(5*time.Second, "n1", "n2", "n3", "n4")
	assert.Equal(t, 2, c.loads()["n4"], "the joiner's share of 8 keys on 4 nodes")
	assert.EqualValues(t, 2, c.creates.Load()-creates, "creates after the join")
	t.Logf("%s: join converged in %v", c.service, took)

	victim := c.follower()
	start := time.Now()
	c.stop(victim)
	c.waitConverged(testTTL, without(c.running(), victim)...)
	t.Logf("%s: graceful stop of %s handed off in %v", c.service, victim, time.Since(start))

	victim = c.follower()
	start = time.Now()
	c.crash(victim)
	c.waitConverged(testTTL+2*time.Second, c.running()...)
	t.Logf("%s: crash of %s taken over in %v", c.service, victim, time.Since(start))

	old := c.leader()
	oldEpoch, _ := old.m.elector.term.current()
	start = time.Now()
	c.crash(old.id)
	next := c.leader()
	elected := time.Since(start)
	newEpoch, _ := next.m.elector.term.current()
	assert.Greater(t, newEpoch, oldEpoch)
	c.waitConverged(testTTL+2*time.Second, c.running()...)
	t.Logf("%s: leader crash: %s leads after %v, every key live after %v", c.service, next.id, elected, time.Since(start))
}

// serviceOn returns a service name whose keys the cluster node at addr
// serves, trying names with the given stem.
func serviceOn(t *testing.T, client rueidis.Client, addr, stem string) string {
	t.Helper()
	node := client.Nodes()[addr]
	require.NotNil(t, node, "no cluster node %s", addr)
	for i := range 1000 {
		name := fmt.Sprintf("%s-%d", stem, i)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := node.Do(ctx, node.B().Exists().Key(newKeyspace("", name).nodes).Build()).Error()
		cancel()
		if err == nil {
			return name
		}
		rerr, ok := rueidis.IsRedisErr(err)
		require.True(t, ok, "EXISTS on %s: %v", addr, err)
		_, moved := rerr.IsMoved()
		require.True(t, moved, "EXISTS on %s: %v", addr, err)
	}
	t.Fatalf("no service name found for %s", addr)
	return ""
}

// slotOf returns the cluster slot of a key, as the server computes it.
func slotOf(t *testing.T, client rueidis.Client, key string) int64 {
	t.Helper()
	slot, err := client.Do(context.Background(), client.B().ClusterKeyslot().Key(key).Build()).AsInt64()
	require.NoError(t, err)
	return slot
}

func TestClusterRunsEveryScenarioForServicesOnEachMaster(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	admin := cluster.Client(t)
	for i, addr := range cluster.Addrs() {
		service := serviceOn(t, admin, addr, "svc")
		// Every key of the service, the lock's included, is in one slot.
		k := newKeyspace("", service)
		slot := slotOf(t, admin, k.nodes)
		for _, key := range []string{k.epoch, k.leader, k.forcing,
			k.assign, k.traces, k.owner, k.fence, k.assigned("n1"), k.lock + ":0:" + lockName} {
			assert.Equal(t, slot, slotOf(t, admin, key), key)
		}
		t.Run(fmt.Sprintf("%s on master %d", service, i), func(t *testing.T) {
			t.Parallel()
			runScenarios(t, newDirectCluster(t, service, cluster.ClientOption(), 8))
		})
	}
}

func TestClusterMasterRestartedMidRunReconvergesOnlyItsService(t *testing.T) {
	// Without full coverage, the masters that keep running keep serving
	// while one is down, as with a replica that takes over.
	cluster := redistest.StartCluster(t, 3, redistest.WithArgs("--cluster-require-full-coverage", "no"))
	admin := cluster.Client(t)
	services := make([]*directCluster, cluster.Len())
	for i, addr := range cluster.Addrs() {
		var opts []Option
		if i > 0 {
			// The bystanders get a longer lease, so that only a failure
			// of isolation can disturb them, not a slow test machine.
			opts = []Option{WithNodeTTL(3 * time.Second), WithHeartbeat(300 * time.Millisecond)}
		}
		services[i] = newDirectCluster(t, serviceOn(t, admin, addr, "svc"), cluster.ClientOption(), 4, opts...)
		services[i].start("n1")
		services[i].start("n2")
	}
	before := make([]map[string]int64, len(services))
	for i, c := range services {
		c.waitConverged(10*time.Second, "n1", "n2")
		before[i] = liveInstances(c.rec)
	}
	events := make([]int, len(services))
	for i, c := range services {
		events[i] = len(c.rec.Events())
	}

	start := time.Now()
	cluster.Node(0).Restart() // killed and back at once, empty
	cluster.WaitReady()
	restarted := services[0]
	// Its state lost, every node of the service fences itself and nothing
	// is claimed again before the grace period has passed.
	restarted.eventually(10*time.Second, "every instance of the restarted master's service replaced", func() bool {
		if !restarted.converged("n1", "n2") {
			return false
		}
		for key, inst := range liveInstances(restarted.rec) {
			if before[0][key] == inst {
				return false
			}
		}
		return true
	})
	t.Logf("%s: reconverged %v after its master restarted", restarted.service, time.Since(start))
	for i, c := range services[1:] {
		assert.Len(t, c.rec.Events(), events[i+1], "%s on another master saw instances start or stop", c.service)
		assert.Equal(t, before[i+1], liveInstances(c.rec), c.service)
	}
}

// liveInstances maps each live key to its instance number.
func liveInstances(rec *history.Recorder) map[string]int64 {
	out := map[string]int64{}
	for _, iv := range rec.Live() {
		out[iv.Key] = iv.Instance
	}
	return out
}

func TestSentinelFailoverReconvergesWithoutOverlap(t *testing.T) {
	s := redistest.StartSentinel(t)
	opt := s.ClientOption()
	// Recommended: a client that misses the +switch-master event finds the
	// new master all the same.
	opt.Sentinel.TopologyRefreshInterval = time.Second
	// A planned failover loses every write the old master takes between the
	// promotion of the replica and the clients' switch, about a second here:
	// lost heartbeats. A node TTL well above that rides through it.
	steady := newDirectCluster(t, "steady", opt, 6,
		WithNodeTTL(3*time.Second), WithHeartbeat(300*time.Millisecond))
	for _, id := range []string{"n1", "n2", "n3"} {
		steady.start(id)
	}
	steady.waitConverged(10*time.Second, "n1", "n2", "n3")

	events := len(steady.rec.Events())
	start := time.Now()
	next := s.Failover()
	waitRenewed(t, next, steady.testCluster, 3*time.Second, "n1", "n2", "n3")
	assert.Len(t, steady.rec.Events(), events, "instances started or stopped in a planned failover")
	t.Logf("planned failover: every node renewed on the new master %v after SENTINEL FAILOVER", time.Since(start))

	// With the test's node TTL of 1s, the promotion after a crash of the
	// master (down-after 500ms, then the election and the promotion) comes
	// later than the fence deadline: the nodes stop every instance, rejoin on
	// the new master and claim again only once no old lease can be live.
	fast := newDirectCluster(t, "fast", opt, 6)
	for _, id := range []string{"n1", "n2", "n3"} {
		fast.start(id)
	}
	fast.waitConverged(10*time.Second, "n1", "n2", "n3")
	events = len(fast.rec.Events())
	before := liveInstances(fast.rec)
	steadyEvents := len(steady.rec.Events())
	old := s.Master()
	start = time.Now()
	old.Kill()
	next = s.WaitFailover(old)
	t.Logf("master crash: the replica promoted %v after the kill", time.Since(start))
	waitRenewed(t, next, fast.testCluster, testTTL, "n1", "n2", "n3")
	waitRenewed(t, next, steady.testCluster, 3*time.Second, "n1", "n2", "n3")
	fast.eventually(10*time.Second, "every instance of the fast service replaced", func() bool {
		if !fast.converged("n1", "n2", "n3") {
			return false
		}
		for key, inst := range liveInstances(fast.rec) {
			if before[key] == inst {
				return false
			}
		}
		return true
	})
	steady.waitConverged(10*time.Second, "n1", "n2", "n3")
	t.Logf("master crash: both services converged on the new master %v after the kill; instance events: %d in the fast one, %d in the steady one",
		time.Since(start), len(fast.rec.Events())-events, len(steady.rec.Events())-steadyEvents)
}

// waitRenewed waits until every given node of c has renewed its lease on
// srv since the call: its lease then ends at least a node TTL after the
// server time read first. A lease replicated from an old master ends
// earlier.
func waitRenewed(t *testing.T, srv *redistest.Server, c *testCluster, ttl time.Duration, nodes ...string) {
	t.Helper()
	client := srv.Client(t)
	k := newKeyspace("", c.service)
	serverMS := func(ctx context.Context) (int64, error) {
		now, err := client.Do(ctx, client.B().Time().Build()).AsIntSlice()
		if err != nil {
			return 0, err
		}
		return now[0]*1000 + now[1]/1000, nil
	}
	var since int64
	c.eventually(5*time.Second, "the time of "+srv.Name(), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var err error
		since, err = serverMS(ctx)
		return err == nil
	})
	c.eventually(10*time.Second, "leases renewed on "+srv.Name(), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		for _, n := range nodes {
			score, err := client.Do(ctx, client.B().Hget().Key(k.nodes).Field("e:"+n).Build()).AsFloat64()
			if err != nil || int64(score) < since+ttl.Milliseconds() {
				return false
			}
		}
		return true
	})
}
