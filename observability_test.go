package dim

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/syncbuf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// observed is one node's telemetry, recorded in memory.
type observed struct {
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
	tp     *sdktrace.TracerProvider
	mp     *sdkmetric.MeterProvider
}

func newObserved(t *testing.T) *observed {
	o := &observed{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	o.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(o.spans))
	o.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(o.reader))
	t.Cleanup(func() {
		_ = o.tp.Shutdown(context.Background())
		_ = o.mp.Shutdown(context.Background())
	})
	return o
}

func (o *observed) options() []Option {
	return []Option{WithTracerProvider(o.tp), WithMeterProvider(o.mp)}
}

// ended returns the finished spans with a name whose attribute key has value.
func (o *observed) ended(name string, match ...attribute.KeyValue) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range o.spans.Ended() {
		if s.Name() != name {
			continue
		}
		ok := true
		for _, kv := range match {
			if !slices.Contains(s.Attributes(), kv) {
				ok = false
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

func attrOf(s sdktrace.ReadOnlySpan, key attribute.Key) attribute.Value {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// metric returns the sum of a counter or the last value of a gauge, over
// data points whose attributes include match.
func (o *observed) metric(t *testing.T, name string, match ...attribute.KeyValue) (int64, bool) {
	var rm metricdata.ResourceMetrics
	require.NoError(t, o.reader.Collect(context.Background(), &rm))
	var total int64
	found := false
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			var points []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				points = d.DataPoints
			case metricdata.Gauge[int64]:
				points = d.DataPoints
			}
			for _, p := range points {
				ok := true
				for _, kv := range match {
					if v, has := p.Attributes.Value(kv.Key); !has || v != kv.Value {
						ok = false
					}
				}
				if ok {
					total += p.Value
					found = true
				}
			}
		}
	}
	return total, found
}

func TestSpansAndMetricsTellWhatHappened(t *testing.T) {
	c := newTestCluster(t, 10)
	var failing atomic.Bool
	c.healthErr.Store("cfg-03", func() error {
		if failing.Load() {
			return errors.New("stale connection")
		}
		return nil
	})
	obs := map[string]*observed{}
	for _, id := range []string{"n1", "n2", "n3"} {
		obs[id] = newObserved(t)
		c.start(id, obs[id].options()...)
	}
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	leader := c.leader()
	lo := obs[leader.id]
	epoch, _ := leader.m.elector.term.current()

	// Elections: the leader won with its epoch; the others found the lock
	// held, which is not an error.
	won := lo.ended(spanElection, attrOutcome.String("won"))
	require.Len(t, won, 1)
	assert.Equal(t, int64(epoch), attrOf(won[0], attrEpoch).AsInt64())
	for id, o := range obs {
		if id == leader.id {
			continue
		}
		lost := o.ended(spanElection, attrOutcome.String("lost"))
		require.NotEmpty(t, lost, "node %s", id)
		assert.Equal(t, codes.Unset, lost[0].Status().Code)
	}

	// A join: one rebalance on the leader, traced from the event, that
	// moves exactly the minimum, and the joiner's creates under a
	// reconcile that links back to it.
	movesBefore, _ := lo.metric(t, "dim.moves")
	joined := time.Now()
	obs["n4"] = newObserved(t)
	c.start("n4", obs["n4"].options()...)
	c.waitConverged(5*time.Second, "n1", "n2", "n3", "n4")
	var joinRebalance sdktrace.ReadOnlySpan
	c.eventually(5*time.Second, "a rebalance span for the join", func() bool {
		for _, s := range lo.ended(spanRebalance, attrTrigger.String("node join")) {
			if s.StartTime().After(joined) && attrOf(s, attrMoves).AsInt64() > 0 {
				joinRebalance = s
				return true
			}
		}
		return false
	})
	assert.EqualValues(t, 2, attrOf(joinRebalance, attrMoves).AsInt64())
	assert.EqualValues(t, 4, attrOf(joinRebalance, attrNodes).AsInt64())
	assert.EqualValues(t, 10, attrOf(joinRebalance, attrKeys).AsInt64())
	moves, _ := lo.metric(t, "dim.moves")
	assert.EqualValues(t, 2, moves-movesBefore, "moves counted on the leader")

	// Each create is the child of a reconcile; the reconcile woken by the
	// leader's event links back to the rebalance, across nodes.
	c.eventually(5*time.Second, "the joiner's creates under reconciles linked to the rebalance", func() bool {
		creates := obs["n4"].ended(spanCreate)
		reconciles := map[string]sdktrace.ReadOnlySpan{}
		for _, r := range obs["n4"].ended(spanReconcile) {
			reconciles[r.SpanContext().SpanID().String()] = r
		}
		linked := false
		for _, cr := range creates {
			parent, ok := reconciles[cr.Parent().SpanID().String()]
			if !ok {
				return false
			}
			for _, l := range parent.Links() {
				if l.SpanContext.SpanID() == joinRebalance.SpanContext().SpanID() {
					linked = true
				}
			}
		}
		return len(creates) == 2 && linked
	})

	// Health checks: passing ones are fine, a failing one is an error and
	// counted, and its instance is recreated.
	owner := c.rec.LiveByKey()["cfg-03"][0]
	oo := obs[owner]
	c.eventually(5*time.Second, "a passing health check", func() bool {
		return len(oo.ended(spanHealth, attrKey.String("cfg-03"), attrOutcome.String(outcomeOK))) > 0
	})
	failing.Store(true)
	c.eventually(5*time.Second, "a failing health check", func() bool {
		n, _ := oo.metric(t, "dim.healthcheck.failures", attrKind.String(kindInstance))
		return n > 0
	})
	failed := oo.ended(spanHealth, attrKey.String("cfg-03"), attrOutcome.String(outcomeError))
	require.NotEmpty(t, failed)
	assert.Equal(t, codes.Error, failed[0].Status().Code)
	assert.NotEmpty(t, failed[0].Events(), "the error is recorded")
	failing.Store(false)

	// Leader health checks on a follower see a healthy leader.
	follower := obs[followerOf(c)]
	c.eventually(5*time.Second, "a leader health check", func() bool {
		return len(follower.ended(spanLeaderCheck, attrOutcome.String("healthy"), attrLeader.String(leader.id))) > 0
	})

	// Gauges: who leads, its epoch, and what runs where.
	isLeader, _ := lo.metric(t, "dim.leader")
	assert.EqualValues(t, 1, isLeader)
	e, _ := lo.metric(t, "dim.epoch")
	assert.EqualValues(t, epoch, e)
	c.waitConverged(10*time.Second, "n1", "n2", "n3", "n4")
	c.eventually(5*time.Second, "instance gauges match the loads", func() bool {
		loads := c.loads()
		for id, o := range obs {
			n, _ := o.metric(t, "dim.instances")
			if int(n) != loads[id] {
				return false
			}
		}
		return true
	})
	c.eventually(5*time.Second, "nothing pending on the leader", func() bool {
		unowned, ok1 := lo.metric(t, "dim.keys.unowned")
		misplaced, ok2 := lo.metric(t, "dim.keys.misplaced")
		return ok1 && ok2 && unowned == 0 && misplaced == 0
	})
}

func TestStatusMatchesTheService(t *testing.T) {
	c := newTestCluster(t, 7)
	for _, id := range []string{"n1", "n2"} {
		c.start(id)
	}
	c.start("n3", WithWeight(2))
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	leader := c.leader()
	epoch, _ := leader.m.elector.term.current()
	n1 := c.node("n1")

	var st *Status
	c.eventually(5*time.Second, "a settled status", func() bool {
		var err error
		st, err = n1.m.Status(context.Background())
		require.NoError(t, err)
		return len(st.Unowned) == 0 && len(st.Misplaced) == 0
	})
	assert.Equal(t, "svc", st.Service)
	assert.Equal(t, leader.id, st.Leader)
	assert.True(t, st.LeaderLive)
	assert.Equal(t, epoch, st.Epoch)
	require.Len(t, st.Nodes, 3)
	loads := c.loads()
	for _, ns := range st.Nodes {
		assert.Equal(t, NodeActive, ns.State)
		assert.Greater(t, ns.LeaseLeft, time.Duration(0))
		assert.LessOrEqual(t, ns.LeaseLeft, testTTL)
		assert.Equal(t, loads[ns.ID], ns.Assigned, ns.ID)
		assert.Equal(t, loads[ns.ID], ns.Running, ns.ID)
	}
	assert.Equal(t, 2, st.Nodes[2].Weight)
	for key, nodes := range c.rec.LiveByKey() {
		assert.Equal(t, nodes[0], st.Assignment[key])
		assert.Equal(t, nodes[0], st.Owners[key].Node)
		assert.True(t, st.Owners[key].Live)
		assert.NotZero(t, st.Owners[key].Token)
	}

	// The same view without a node, and a clear error for a service Redis
	// does not know.
	client := c.srv.Client(t)
	again, err := ReadStatus(context.Background(), client, Service{Name: "svc"})
	require.NoError(t, err)
	assert.Equal(t, st.Assignment, again.Assignment)
	_, err = ReadStatus(context.Background(), client, Service{Name: "nope"})
	require.ErrorIs(t, err, ErrUnknownService)
	_, err = ReadStatus(context.Background(), client, Service{})
	require.ErrorIs(t, err, ErrInvalidOption)
}

func TestASteadyStateLogsNothingAboveDebug(t *testing.T) {
	c := newTestCluster(t, 6)
	logs := map[string]*syncbuf.Buffer{}
	for _, id := range []string{"n1", "n2"} {
		logs[id] = &syncbuf.Buffer{}
		c.start(id, WithLogger(slog.New(slog.NewTextHandler(logs[id], &slog.HandlerOptions{Level: slog.LevelInfo}))))
	}
	c.waitConverged(10*time.Second, "n1", "n2")
	// Let things settle, then watch two config refreshes (every node calls
	// getConfig on each) and the heartbeats between them.
	c.eventually(5*time.Second, "nothing pending", func() bool {
		st, err := c.node("n1").m.Status(context.Background())
		return err == nil && len(st.Unowned) == 0 && len(st.Misplaced) == 0
	})
	before := map[string]string{}
	for id, l := range logs {
		before[id] = l.String()
	}
	calls := c.getConfCalls.Load()
	c.eventually(10*time.Second, "two rounds of config refresh", func() bool { return c.getConfCalls.Load() >= calls+6 })
	for id, l := range logs {
		assert.Equal(t, before[id], l.String(), "node %s logged above Debug in a steady state", id)
	}
	assert.Contains(t, logs[c.leader().id].String(), "became leader", "leadership changes are Info")
}
