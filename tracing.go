package dim

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// instrumentationName names dim's tracer and meter: the module path.
const instrumentationName = "github.com/go-dim/dim"

// Span names.
const (
	spanElection     = "dim.election"
	spanLeaderCheck  = "dim.leader_healthcheck"
	spanRebalance    = "dim.rebalance"
	spanReconcile    = "dim.reconcile"
	spanCreate       = "dim.create"
	spanDisconnect   = "dim.disconnect"
	spanPrepare      = "dim.prepare"
	spanActivate     = "dim.activate"
	spanHealth       = "dim.healthcheck"
	spanFence        = "dim.fence"
	attrPrefix       = "dim."
	outcomeError     = "error"
	outcomeOK        = "ok"
	kindInstance     = "instance"
	kindLeader       = "leader"
	metricSecondUnit = "s"
)

// Attribute keys, all under the dim. namespace.
var (
	attrService      = attribute.Key(attrPrefix + "service")
	attrNode         = attribute.Key(attrPrefix + "node")
	attrEpoch        = attribute.Key(attrPrefix + "epoch")
	attrKey          = attribute.Key(attrPrefix + "key")
	attrOutcome      = attribute.Key(attrPrefix + "outcome")
	attrTrigger      = attribute.Key(attrPrefix + "trigger")
	attrLeader       = attribute.Key(attrPrefix + "leader")
	attrNodes        = attribute.Key(attrPrefix + "nodes")
	attrKeys         = attribute.Key(attrPrefix + "keys")
	attrMoves        = attribute.Key(attrPrefix + "moves")
	attrChanges      = attribute.Key(attrPrefix + "changes")
	attrClaimed      = attribute.Key(attrPrefix + "claimed")
	attrRefused      = attribute.Key(attrPrefix + "refused")
	attrCreated      = attribute.Key(attrPrefix + "created")
	attrReplaced     = attribute.Key(attrPrefix + "replaced")
	attrDisconnected = attribute.Key(attrPrefix + "disconnected")
	attrReleased     = attribute.Key(attrPrefix + "released")
	attrFailed       = attribute.Key(attrPrefix + "failed")
	attrKind         = attribute.Key(attrPrefix + "kind")
	attrReason       = attribute.Key(attrPrefix + "reason")
	attrOperation    = attribute.Key(attrPrefix + "operation")
)

// telemetry holds the tracer, the instruments and the logger of one Manager.
type telemetry struct {
	tracer trace.Tracer
	log    *slog.Logger
	slot   *slotNotice
	base   []attribute.KeyValue     // of spans: the service and the node
	mbase  []attribute.KeyValue     // of metrics: the service, and the node if asked for
	mset   metric.MeasurementOption // mbase as a set, made once: most measurements add nothing to it

	linksMu sync.Mutex
	links   []trace.Link // rebalances that changed this node's keys

	instances      metric.Int64Gauge
	leader         metric.Int64Gauge
	epoch          metric.Int64Gauge
	rebalances     metric.Int64Counter
	moves          metric.Int64Counter
	claimsRefused  metric.Int64Counter
	healthFailures metric.Int64Counter
	callbackFails  metric.Int64Counter
	fences         metric.Int64Counter
	configFails    metric.Int64Counter
	unowned        metric.Int64Gauge
	unknown        metric.Int64Gauge
	quarantined    metric.Int64Gauge
	unplaceable    metric.Int64Gauge
	unhealthy      metric.Int64Gauge
	outage         metric.Int64Gauge
	clockOffset    metric.Int64Gauge
	misplaced      metric.Int64Gauge
	rebalanceTime  metric.Float64Histogram
	reconcileTime  metric.Float64Histogram
	createTime     metric.Float64Histogram
	healthTime     metric.Float64Histogram
}

func newTelemetry(s settings, log *slog.Logger) *telemetry {
	tp, mp := s.tracerProvider, s.meterProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	meter := mp.Meter(instrumentationName)
	t := &telemetry{
		tracer: tp.Tracer(instrumentationName),
		log:    log,
		base:   []attribute.KeyValue{attrService.String(s.service), attrNode.String(s.nodeID)},
		mbase:  []attribute.KeyValue{attrService.String(s.service)},
	}
	if s.nodeMetrics {
		t.mbase = append(t.mbase, attrNode.String(s.nodeID))
	}
	t.mset = metric.WithAttributeSet(attribute.NewSet(t.mbase...))
	// Instrument constructors return a no-op instrument with their error, so
	// the errors are safe to ignore: metrics never stop dim.
	t.instances, _ = meter.Int64Gauge("dim.instances", metric.WithDescription("Instances running on this node."))
	t.leader, _ = meter.Int64Gauge("dim.leader", metric.WithDescription("1 while this node leads the service, else 0."))
	t.epoch, _ = meter.Int64Gauge("dim.epoch", metric.WithDescription("Epoch of this node's leadership; 0 when not leader."))
	t.rebalances, _ = meter.Int64Counter("dim.rebalances", metric.WithDescription("Rebalances run by this node as leader."))
	t.moves, _ = meter.Int64Counter("dim.moves", metric.WithDescription("Keys moved from one live node to another by rebalances."))
	t.claimsRefused, _ = meter.Int64Counter("dim.claims.refused", metric.WithDescription("Claims refused because another live node still owned the key."))
	t.healthFailures, _ = meter.Int64Counter("dim.healthcheck.failures", metric.WithDescription("Failed health checks, by kind (instance, leader)."))
	t.callbackFails, _ = meter.Int64Counter("dim.callback.failures", metric.WithDescription("Failed createInstance and disconnect calls, by operation."))
	t.fences, _ = meter.Int64Counter("dim.fences", metric.WithDescription("Times this node fenced itself and stopped all its instances."))
	t.configFails, _ = meter.Int64Counter("dim.config.failures", metric.WithDescription("Failed getConfig calls."))
	t.unowned, _ = meter.Int64Gauge("dim.keys.unowned", metric.WithDescription("On the leader: keys assigned but not running on any live node."))
	t.unplaceable, _ = meter.Int64Gauge("dim.keys.unplaceable", metric.WithDescription("On the leader: keys no live node may take (no node meets their requirements, or every one that does is at its cap); they run nowhere."))
	t.quarantined, _ = meter.Int64Gauge("dim.keys.quarantined", metric.WithDescription("On the leader: keys quarantined service-wide after failing on several nodes; they run nowhere until tried again."))
	t.unhealthy, _ = meter.Int64Gauge("dim.nodes.unhealthy", metric.WithDescription("On the leader: nodes that get no keys because keys fail there that run elsewhere."))
	t.outage, _ = meter.Int64Gauge("dim.outage", metric.WithDescription("On the leader: 1 while most keys fail on every node (an upstream outage), else 0."))
	t.clockOffset, _ = meter.Int64Gauge("dim.clock.offset", metric.WithDescription("Redis's clock minus this node's, at the last heartbeat (at most one round trip more)."), metric.WithUnit("ms"))
	t.unknown, _ = meter.Int64Gauge("dim.keys.unknown", metric.WithDescription("Keys assigned to this node that its getConfig does not return: they cannot run here."))
	t.misplaced, _ = meter.Int64Gauge("dim.keys.misplaced", metric.WithDescription("On the leader: keys whose state comes from a node they are no longer assigned to: handoffs under way."))
	t.rebalanceTime, _ = meter.Float64Histogram("dim.rebalance.duration", metric.WithUnit(metricSecondUnit), metric.WithDescription("Duration of rebalances."))
	t.reconcileTime, _ = meter.Float64Histogram("dim.reconcile.duration", metric.WithUnit(metricSecondUnit), metric.WithDescription("Duration of reconciles."))
	t.createTime, _ = meter.Float64Histogram("dim.create.duration", metric.WithUnit(metricSecondUnit), metric.WithDescription("Duration of createInstance calls."))
	t.healthTime, _ = meter.Float64Histogram("dim.healthcheck.duration", metric.WithUnit(metricSecondUnit), metric.WithDescription("Duration of instance health checks."))
	return t
}

func (t *telemetry) attrs(extra ...attribute.KeyValue) metric.MeasurementOption {
	if len(extra) == 0 {
		return t.mset
	}
	return metric.WithAttributes(append(t.mbase[:len(t.mbase):len(t.mbase)], extra...)...)
}

func (t *telemetry) start(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return t.startAt(ctx, name, time.Now(), attrs...)
}

func (t *telemetry) startAt(ctx context.Context, name string, at time.Time, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, name, trace.WithTimestamp(at),
		trace.WithAttributes(append(t.base[:len(t.base):len(t.base)], attrs...)...))
}

// end closes a span; only real failures mark it as an error.
func end(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

func (t *telemetry) fenced(ctx context.Context, reason string) {
	_, span := t.start(ctx, spanFence, attrReason.String(reason))
	span.End()
	t.fences.Add(ctx, 1, t.attrs())
}

// election records one attempt to lead and its outcome (won, lost, forced,
// error), or the end of a leadership (lock lost, write refused, handed off,
// stepped down), which then spans the whole term.
func (t *telemetry) election(ctx context.Context, start time.Time, outcome string, epoch uint64, err error) {
	_, span := t.startAt(ctx, spanElection, start, attrOutcome.String(outcome))
	if epoch != 0 {
		span.SetAttributes(attrEpoch.Int64(int64(epoch)))
	}
	end(span, err)
}

func (t *telemetry) setLeader(epoch uint64) {
	ctx := context.Background()
	leader := int64(0)
	if epoch > 0 {
		leader = 1
	}
	t.leader.Record(ctx, leader, t.attrs())
	t.epoch.Record(ctx, int64(epoch), t.attrs())
}

func (t *telemetry) leaderCheck(ctx context.Context, start time.Time, leader string, epoch uint64, outcome string, err error) {
	_, span := t.startAt(ctx, spanLeaderCheck, start,
		attrLeader.String(leader), attrEpoch.Int64(int64(epoch)), attrOutcome.String(outcome))
	end(span, err)
	if outcome == "dead" || err != nil {
		t.healthFailures.Add(ctx, 1, t.attrs(attrKind.String(kindLeader)))
	}
}

type rebalanceStats struct {
	start                       time.Time
	nodes, keys, moves, changes int
	err                         error
}

func (t *telemetry) startRebalance(ctx context.Context, trigger string, epoch uint64, at time.Time) (context.Context, trace.Span) {
	return t.startAt(ctx, spanRebalance, at, attrTrigger.String(trigger), attrEpoch.Int64(int64(epoch)))
}

func (t *telemetry) endRebalance(ctx context.Context, span trace.Span, s rebalanceStats) {
	span.SetAttributes(attrNodes.Int(s.nodes), attrKeys.Int(s.keys), attrMoves.Int(s.moves), attrChanges.Int(s.changes))
	end(span, s.err)
	t.rebalanceTime.Record(ctx, time.Since(s.start).Seconds(), t.attrs())
	if s.err == nil {
		t.rebalances.Add(ctx, 1, t.attrs())
		t.moves.Add(ctx, int64(s.moves), t.attrs())
		if s.changes > 0 {
			t.log.Info("rebalanced", "nodes", s.nodes, "keys", s.keys, "moves", s.moves, "changes", s.changes,
				"took", time.Since(s.start))
		}
	}
}

type reconcileStats struct {
	start                               time.Time
	claimed, refused, created, replaced int
	disconnected, released, failed      int
	waiting                             int // keys whose claim must be retried
	links                               []trace.Link
	err                                 error
}

// maxLinks bounds the rebalance links one reconcile span carries.
const maxLinks = 8

// traceparent encodes the span context of ctx for an event message, "-" if
// there is none.
func traceparent(ctx context.Context) string {
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	if tp := carrier.Get("traceparent"); tp != "" {
		return tp
	}
	return "-"
}

// linkTo makes a link to the span a traceparent names.
func linkTo(tp string) (trace.Link, bool) {
	sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(),
		propagation.MapCarrier{"traceparent": tp}))
	return trace.Link{SpanContext: sc}, sc.IsValid()
}

// startReconcile starts a reconcile span linked to the rebalances still
// being acted on; the links come back in the stats so that endReconcile can
// carry them on while claims wait.
func (t *telemetry) startReconcile(ctx context.Context) (context.Context, trace.Span, []trace.Link) {
	links := t.takeLinks()
	ctx, span := t.tracer.Start(ctx, spanReconcile, trace.WithLinks(links...), trace.WithAttributes(t.base...))
	return ctx, span, links
}

func (t *telemetry) takeLinks() []trace.Link {
	t.linksMu.Lock()
	defer t.linksMu.Unlock()
	links := t.links
	t.links = nil
	return links
}

func (t *telemetry) endReconcile(ctx context.Context, span trace.Span, s reconcileStats) {
	span.SetAttributes(attrClaimed.Int(s.claimed), attrRefused.Int(s.refused), attrCreated.Int(s.created),
		attrReplaced.Int(s.replaced), attrDisconnected.Int(s.disconnected), attrReleased.Int(s.released), attrFailed.Int(s.failed))
	end(span, s.err)
	t.reconcileTime.Record(ctx, time.Since(s.start).Seconds(), t.attrs())
	if s.refused > 0 {
		t.claimsRefused.Add(ctx, int64(s.refused), t.attrs())
	}
	if s.waiting > 0 {
		// The keys still to claim were moved by those rebalances too: the
		// reconcile that finally creates them links to them as well.
		t.linksMu.Lock()
		for _, l := range s.links {
			if len(t.links) < maxLinks {
				t.links = append(t.links, l)
			}
		}
		t.linksMu.Unlock()
	}
	switch {
	case isOOM(s.err):
		t.log.Warn(outOfMemory, "err", s.err)
	case t.slot != nil && t.slot.saw(t.log, "reconcile", s.err):
	case s.err != nil:
		t.log.Warn("reconcile incomplete", "err", s.err)
	}
}

func (t *telemetry) startCallback(ctx context.Context, name, key string) (context.Context, trace.Span) {
	return t.start(ctx, name, attrKey.String(key))
}

// endCallback closes the span of a create, disconnect or health check.
func (t *telemetry) endCallback(ctx context.Context, span trace.Span, name string, start time.Time, err error) {
	outcome := outcomeOK
	if err != nil {
		outcome = outcomeError
	}
	span.SetAttributes(attrOutcome.String(outcome))
	end(span, err)
	d := time.Since(start).Seconds()
	switch name {
	case spanCreate:
		t.createTime.Record(ctx, d, t.attrs())
		if err != nil {
			t.callbackFails.Add(ctx, 1, t.attrs(attrOperation.String("create")))
		}
	case spanDisconnect:
		if err != nil {
			t.callbackFails.Add(ctx, 1, t.attrs(attrOperation.String("disconnect")))
		}
	case spanHealth:
		t.healthTime.Record(ctx, d, t.attrs())
	}
}

// callbackFailed counts a failed user function other than a create or a
// disconnect (those count in endCallback): "hash" for a config's JSON
// encoding.
func (t *telemetry) callbackFailed(ctx context.Context, operation string) {
	t.callbackFails.Add(ctx, 1, t.attrs(attrOperation.String(operation)))
}

func (t *telemetry) healthFailed(ctx context.Context, kind string) {
	t.healthFailures.Add(ctx, 1, t.attrs(attrKind.String(kind)))
}

func (t *telemetry) configFailed(ctx context.Context) {
	t.configFails.Add(ctx, 1, t.attrs())
}

func (t *telemetry) setInstances(n int) {
	t.instances.Record(context.Background(), int64(n), t.attrs())
}

func (t *telemetry) setUnknown(n int) {
	t.unknown.Record(context.Background(), int64(n), t.attrs())
}

func (t *telemetry) setFailures(quarantined, unhealthy int, outage bool) {
	ctx := context.Background()
	t.quarantined.Record(ctx, int64(quarantined), t.attrs())
	t.unhealthy.Record(ctx, int64(unhealthy), t.attrs())
	var o int64
	if outage {
		o = 1
	}
	t.outage.Record(ctx, o, t.attrs())
}

func (t *telemetry) setUnplaceable(n int) {
	t.unplaceable.Record(context.Background(), int64(n), t.attrs())
}

func (t *telemetry) setClockOffset(d time.Duration) {
	t.clockOffset.Record(context.Background(), d.Milliseconds(), t.attrs())
}

func (t *telemetry) setPending(unowned, misplaced int) {
	ctx := context.Background()
	t.unowned.Record(ctx, int64(unowned), t.attrs())
	t.misplaced.Record(ctx, int64(misplaced), t.attrs())
}
