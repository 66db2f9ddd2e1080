package dim

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/go-dim/dim/internal/syncbuf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// status reads the service's status from the test's own client.
func (c *testCluster) status() *Status {
	c.t.Helper()
	st, err := ReadStatus(context.Background(), c.srv.Client(c.t), Service{Name: c.service})
	require.NoError(c.t, err)
	return st
}

func TestStatusCountsOnlyWhatRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 3)
	c.createErr.Store("cfg-01", func() error { return errors.New("upstream refused the login") })
	hang := make(chan struct{})
	defer close(hang)
	c.createErr.Store("cfg-02", func() error { <-hang; return nil })
	c.start("n1", WithGiveUpAfter(0)) // cfg-01 keeps failing here, not quarantined
	var st *Status
	c.eventually(10*time.Second, "cfg-00 running, cfg-01 failing and cfg-02 hung", func() bool {
		st = c.status()
		return st.Keys["cfg-00"].State == KeyRunning && st.Keys["cfg-01"].State == KeyFailing &&
			st.Keys["cfg-02"].State == KeyHung
	})
	assert.Equal(t, []string{"cfg-01", "cfg-02"}, st.Unowned, "a claimed key that does not run is not running")
	require.Len(t, st.Nodes, 1)
	assert.Equal(t, 3, st.Nodes[0].Assigned)
	assert.Equal(t, 1, st.Nodes[0].Running)
	f := st.Keys["cfg-01"]
	assert.Equal(t, "n1", f.Node)
	assert.True(t, f.Live)
	assert.Contains(t, f.LastError, "upstream refused the login")
	assert.Positive(t, f.Attempts)
	assert.False(t, f.NextRetry.IsZero())
}

func TestACrashedNodeIsSuspectAndItsKeysAtRiskBeforeItsLeaseEnds(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	c.start("n1")
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	c.eventually(5*time.Second, "every key shown running", func() bool { return len(c.status().Unowned) == 0 })
	c.crash("n2")
	var st *Status
	c.eventually(testTTL, "n2 suspect while its lease still runs", func() bool {
		st = c.status()
		i := slices.IndexFunc(st.Nodes, func(n NodeStatus) bool { return n.ID == "n2" })
		return i >= 0 && st.Nodes[i].State == "suspect"
	})
	assert.Len(t, st.AtRisk, 2, "the keys running on a suspect node are at risk: %+v", st.Keys)
	for _, key := range st.AtRisk {
		assert.Equal(t, "n2", st.Keys[key].Node)
	}
	c.waitConverged(5*time.Second, "n1")
}

func TestAKeyMissingFromANodesConfigsRunsElsewhere(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	// A rolling deploy in which the new replica's config source does not
	// have two of the keys yet.
	n2 := c.newNode("n2")
	others := n2.m.getConfig
	n2.m.getConfig = func(ctx context.Context) ([]testConfig, error) {
		cfgs, err := others(ctx)
		return slices.DeleteFunc(cfgs, func(c testConfig) bool { return c.Key == "cfg-00" || c.Key == "cfg-01" }), err
	}
	logs := &syncbuf.Buffer{}
	n2.m.log = slog.New(slog.NewTextHandler(logs, nil))
	c.startNode(n2)
	// n2 runs the two keys it knows; the two it does not know run on n1.
	c.eventually(5*time.Second, "every key running where it can", func() bool {
		live := c.rec.LiveByKey()
		return len(live) == 4 && slices.Equal(live["cfg-00"], []string{"n1"}) && slices.Equal(live["cfg-01"], []string{"n1"}) &&
			slices.Equal(live["cfg-02"], []string{"n2"}) && slices.Equal(live["cfg-03"], []string{"n2"})
	})
	c.eventually(5*time.Second, "every key shown running", func() bool { return len(c.status().Unowned) == 0 })
	if strings.Contains(logs.String(), "does not return") {
		// n2 was assigned a key it does not know before it said so: it
		// reported it at once.
		assert.Contains(t, logs.String(), "level=WARN")
	}
}

func TestAKeyThatFailsOnOneNodeMovesToAnother(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 2)
	n1 := c.newNode("n1")
	create := n1.m.calls.createInstance
	n1.m.calls.createInstance = func(ctx context.Context, cfg testConfig) (*testInst, error) {
		if cfg.Key == "cfg-01" {
			return nil, errors.New("n1 has no route to this upstream")
		}
		return create(ctx, cfg)
	}
	c.startNode(n1)
	c.start("n2")
	// Then loads are even again over what each node may run.
	c.eventually(20*time.Second, "cfg-01 running on n2, after n1 gave it up, and cfg-00 on n1", func() bool {
		live := c.rec.LiveByKey()
		return slices.Equal(live["cfg-01"], []string{"n2"}) && slices.Equal(live["cfg-00"], []string{"n1"})
	})
}

func TestWithoutALoggerFailuresGoToTheDefaultLogger(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	logs := &syncbuf.Buffer{}
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	defer slog.SetDefault(prev)

	srv := redistest.Start(t)
	get := func(context.Context) ([]string, error) { return []string{"a", "b", "a"}, nil }
	create := func(context.Context, string) (string, error) { return "", nil }
	m, err := New(get, create, WithService("quiet"), WithRedis(srv.ClientOption()), WithKey(func(s string) string { return s }),
		WithNodeTTL(testTTL), WithHeartbeat(testHeartbeat), WithConfigRefreshSchedule("@every 1s"))
	require.NoError(t, err)
	require.NoError(t, m.Start(context.Background()))
	defer func() { _ = m.Stop(context.Background()) }()
	eventually(t, 5*time.Second, "the duplicate key logged", func() bool {
		return strings.Contains(logs.String(), "duplicate config key")
	})
	assert.NotContains(t, logs.String(), "level=INFO", "only Warn and above by default")
	assert.NotContains(t, logs.String(), "level=DEBUG")

	quiet := &syncbuf.Buffer{}
	slog.SetDefault(slog.New(slog.NewTextHandler(quiet, nil)))
	m2, err := New(get, create, WithService("quiet2"), WithRedis(srv.ClientOption()), WithLogger(nil),
		WithKey(func(s string) string { return s }), WithNodeTTL(testTTL), WithHeartbeat(testHeartbeat))
	require.NoError(t, err)
	require.NoError(t, m2.Start(context.Background()))
	require.NoError(t, m2.Stop(context.Background()))
	assert.Empty(t, quiet.String(), "WithLogger(nil) silences dim")
}

func TestMetricsLeaveTheNodeToTheResourceUnlessAskedFor(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 2)
	plain, tagged := newObserved(t), newObserved(t)
	c.start("n1", plain.options()...)
	c.start("n2", append(tagged.options(), WithNodeMetricAttribute())...)
	c.waitConverged(10*time.Second, "n1", "n2")
	c.eventually(5*time.Second, "both nodes report their instances", func() bool {
		a, okA := plain.metric(t, "dim.instances")
		b, okB := tagged.metric(t, "dim.instances")
		return okA && okB && a == 1 && b == 1
	})
	_, found := plain.metric(t, "dim.instances", attrNode.String("n1"))
	assert.False(t, found, "dim.node is not a metric attribute by default")
	_, found = tagged.metric(t, "dim.instances", attrNode.String("n2"))
	assert.True(t, found, "WithNodeMetricAttribute adds dim.node")
}

func TestAFailingGetConfigShowsInStatusUntilItRecovers(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 3)
	c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	broken := errors.New("config service: 503 Service Unavailable")
	c.getConfErr.Store(&broken)
	var n NodeStatus
	c.eventually(5*time.Second, "the error in Status", func() bool {
		st := c.status()
		if len(st.Nodes) != 1 {
			return false
		}
		n = st.Nodes[0]
		return n.ConfigError != ""
	})
	assert.Contains(t, n.ConfigError, "503 Service Unavailable")
	assert.Equal(t, 3, n.ConfigErrorKeys, "the keys kept as they were")
	assert.False(t, n.ConfigErrorAt.IsZero())
	assert.True(t, c.converged("n1"), "what runs keeps running")
	c.getConfErr.Store(nil)
	c.eventually(5*time.Second, "the error gone once getConfig works", func() bool {
		st := c.status()
		return len(st.Nodes) == 1 && st.Nodes[0].ConfigError == ""
	})
}

func TestHealthChecksAndDisconnectsSeeTheInstancesTokenAndKey(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	srv := redistest.Start(t)
	type seen struct {
		key   string
		token uint64
	}
	created, checked, stopped := make(chan seen, 10), make(chan seen, 10), make(chan seen, 10)
	look := func(ctx context.Context, ch chan seen) {
		key, _ := InstanceKey(ctx)
		token, _ := FencingToken(ctx)
		select {
		case ch <- seen{key, token}:
		default:
		}
	}
	m, err := New(func(context.Context) ([]string, error) { return []string{"a"}, nil },
		func(ctx context.Context, cfg string) (string, error) { look(ctx, created); return cfg, nil },
		WithService("ctx"), WithRedis(srv.ClientOption()), WithKey(func(s string) string { return s }),
		WithNodeTTL(testTTL), WithHeartbeat(testHeartbeat), WithHealthcheckSchedule("@every 1s"),
		WithHealthcheck(func(ctx context.Context, _ string) error { look(ctx, checked); return nil }),
		WithDisconnect(func(ctx context.Context, _ string) error { look(ctx, stopped); return nil }))
	require.NoError(t, err)
	require.NoError(t, m.Start(context.Background()))
	var c seen
	select {
	case c = <-created:
	case <-time.After(10 * time.Second):
		t.Fatal("never created")
	}
	require.Equal(t, "a", c.key)
	require.Positive(t, c.token)
	select {
	case h := <-checked:
		assert.Equal(t, c, h, "a health check's context names the instance and its token")
	case <-time.After(5 * time.Second):
		t.Fatal("never checked")
	}
	require.NoError(t, m.Stop(context.Background()))
	assert.Equal(t, c, <-stopped, "a disconnect's context names the instance and its token")
}

func TestAnInstanceThatAlwaysFailsItsHealthCheckBacksOff(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 2)
	c.healthErr.Store("cfg-01", func() error { return errors.New("upstream answers 500") })
	c.start("n1")
	c.eventually(15*time.Second, "the failures counted up, not reset by each reconnect", func() bool {
		return c.status().Keys["cfg-01"].Attempts >= 3
	})
	ks := c.status().Keys["cfg-01"]
	assert.Contains(t, ks.LastError, "upstream answers 500")
}

// A changed config is tried at once: the backoff a key earned with its old
// config is not carried over to the new one, which is how an operator fixes
// a broken config.
func TestAChangedConfigEndsTheBackoffOfItsKey(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 2)
	var fixed atomic.Bool
	c.healthErr.Store("cfg-01", func() error {
		if fixed.Load() {
			return nil
		}
		return errors.New("wrong password")
	})
	n := c.newNode("n1")
	// A backoff far longer than the test: only a reset brings the key back.
	n.m.ledger.retryMin, n.m.ledger.retryMax = time.Hour, time.Hour
	c.startNode(n)
	c.eventually(10*time.Second, "cfg-01 failed its health check", func() bool {
		return c.status().Keys["cfg-01"].Attempts == 1
	})
	require.Empty(t, c.rec.LiveByKey()["cfg-01"], "disconnected, and waiting out its backoff")

	fixed.Store(true)
	cfgs := []testConfig{{Key: "cfg-00"}, {Key: "cfg-01", Version: 2}}
	c.setConfigs(cfgs)
	c.eventually(10*time.Second, "the new config of cfg-01 created at once", func() bool {
		live := c.rec.LiveByKey()["cfg-01"]
		return len(live) == 1 && c.status().Keys["cfg-01"].Attempts == 0
	})
	c.waitConverged(10*time.Second, "n1")
}

func TestAPanicLogsItsStackOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 2)
	c.createErr.Store("cfg-01", func() error { panic("nil map in the driver") })
	logs := &syncbuf.Buffer{}
	c.start("n1", WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	c.eventually(10*time.Second, "three failed creates", func() bool {
		return strings.Count(logs.String(), `msg="create failed" service=svc node=n1 key=cfg-01`) >= 3
	})
	out := logs.String()
	assert.Equal(t, 1, strings.Count(out, "callback panicked"), "the stack once")
	assert.Equal(t, 1, strings.Count(out, "[running]"), "one stack in the log")
	assert.Contains(t, out, "panic: nil map in the driver")
}

func TestANodeWhoseFirstGetConfigFailsStillGetsItsShare(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	// A failing getConfig says nothing about which keys a node knows: its
	// keys must not be handed on as unknown to it, and once getConfig works
	// it runs its share.
	n2 := c.newNode("n2")
	works := n2.m.getConfig
	var broken atomic.Bool
	broken.Store(true)
	n2.m.getConfig = func(ctx context.Context) ([]testConfig, error) {
		if broken.Load() {
			return nil, errors.New("config service warming up")
		}
		return works(ctx)
	}
	c.startNode(n2)
	c.eventually(5*time.Second, "keys assigned to n2 while its getConfig fails", func() bool {
		for _, node := range c.status().Assignment {
			if node == "n2" {
				return true
			}
		}
		return false
	})
	calls := c.getConfCalls.Load()
	c.eventually(5*time.Second, "a few more config reads", func() bool { return c.getConfCalls.Load() > calls+2 })
	broken.Store(false)
	c.waitConverged(10*time.Second, "n1", "n2")
	admin := c.srv.Client(t)
	avoid, err := admin.Do(context.Background(), admin.B().Hgetall().Key(newKeyspace("", c.service).avoid).Build()).AsStrMap()
	require.NoError(t, err)
	assert.Empty(t, avoid, "no key was declared unknown to n2")
}

// TestAKeyBeingCreatedIsCreatingInEveryView: while createInstance runs, the
// key's owner entry is all Redis holds of it, and Status, Summary and
// Explain say it is creating on its node, since its claim; once created, it
// runs.
func TestAKeyBeingCreatedIsCreatingInEveryView(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	slow := make(chan struct{})
	var once sync.Once
	done := func() { once.Do(func() { close(slow) }) }
	t.Cleanup(done)
	c.createErr.Store("cfg-01", func() error { <-slow; return nil })
	before := time.Now().Add(-time.Second)
	c.start("n1", WithCallbackTimeout(time.Minute))
	// The node publishes what its other creates did once the batch is done:
	// they may still be creating too.
	sum, st := c.agree(10*time.Second, "cfg-01 creating", func(sum *Summary, st *Status) bool {
		return st.Keys["cfg-01"].State == KeyCreating && sum.States[KeyCreating] >= 1
	})
	ks := st.Keys["cfg-01"]
	assert.Equal(t, KeyCreating, ks.State)
	assert.Equal(t, "n1", ks.Node)
	assert.True(t, ks.Live)
	assert.True(t, ks.Since.After(before) && ks.Since.Before(time.Now().Add(time.Second)), "creating since %v", ks.Since)
	assert.Contains(t, st.Unowned, "cfg-01")
	i := slices.IndexFunc(sum.ProblemKeys, func(p KeyProblem) bool { return p.Key == "cfg-01" })
	require.GreaterOrEqual(t, i, 0, "cfg-01 among the problem keys %v", sum.ProblemKeys)
	p := sum.ProblemKeys[i]
	assert.Equal(t, "n1", p.AssignedTo)
	assert.Equal(t, KeyCreating, p.State)
	assert.True(t, p.Live)
	assert.Equal(t, ks.Since, p.Since)
	assert.Equal(t, sum.States[KeyCreating], sum.Problems)
	assert.Equal(t, len(st.Unowned), sum.Unowned)
	e, err := Explain(context.Background(), c.srv.Client(t), Service{Name: c.service}, "cfg-01")
	require.NoError(t, err)
	require.NotNil(t, e.State)
	assert.Equal(t, KeyCreating, e.State.State)
	require.NotNil(t, e.Owner)
	assert.Equal(t, st.Owners["cfg-01"], *e.Owner)
	if d := c.mirrorsExact(); d != "" {
		t.Errorf("mirrors drifted: %s", d)
	}

	done()
	sum, st = c.agree(10*time.Second, "every key running", func(sum *Summary, _ *Status) bool {
		return sum.Running == 4
	})
	assert.Zero(t, sum.Problems)
	assert.Empty(t, st.Unowned)
	ran := st.Keys["cfg-01"]
	assert.Equal(t, KeyRunning, ran.State)
	assert.True(t, ran.Live)
	assert.False(t, ran.Since.Before(ks.Since), "running since %v, before it was claimed (%v)", ran.Since, ks.Since)
	if d := c.mirrorsExact(); d != "" {
		t.Errorf("mirrors drifted: %s", d)
	}
}
