package dim

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
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
	attrService   = attribute.Key(attrPrefix + "service")
	attrNode      = attribute.Key(attrPrefix + "node")
	attrEpoch     = attribute.Key(attrPrefix + "epoch")
	attrKey       = attribute.Key(attrPrefix + "key")
	attrOutcome   = attribute.Key(attrPrefix + "outcome")
	attrTrigger   = attribute.Key(attrPrefix + "trigger")
	attrLeader    = attribute.Key(attrPrefix + "leader")
	attrNodes     = attribute.Key(attrPrefix + "nodes")
	attrKeys      = attribute.Key(attrPrefix + "keys")
	attrMoves     = attribute.Key(attrPrefix + "moves")
	attrChanges   = attribute.Key(attrPrefix + "changes")
	attrClaimed   = attribute.Key(attrPrefix + "claimed")
	attrRefused   = attribute.Key(attrPrefix + "refused")
	attrCreated   = attribute.Key(attrPrefix + "created")
	attrReplaced  = attribute.Key(attrPrefix + "replaced")
	attrStopped   = attribute.Key(attrPrefix + "disconnected")
	attrReleased  = attribute.Key(attrPrefix + "released")
	attrFailed    = attribute.Key(attrPrefix + "failed")
	attrKind      = attribute.Key(attrPrefix + "kind")
	attrReason    = attribute.Key(attrPrefix + "reason")
	attrOperation = attribute.Key(attrPrefix + "operation")
)

// telemetry holds the tracer, the instruments and the logger of one Manager.
type telemetry struct {
	tracer trace.Tracer
	log    *slog.Logger
	base   []attribute.KeyValue

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
	}
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
	t.rebalanceTime, _ = meter.Float64Histogram("dim.rebalance.duration", metric.WithUnit(metricSecondUnit), metric.WithDescription("Duration of rebalances."))
	t.reconcileTime, _ = meter.Float64Histogram("dim.reconcile.duration", metric.WithUnit(metricSecondUnit), metric.WithDescription("Duration of reconciles."))
	t.createTime, _ = meter.Float64Histogram("dim.create.duration", metric.WithUnit(metricSecondUnit), metric.WithDescription("Duration of createInstance calls."))
	t.healthTime, _ = meter.Float64Histogram("dim.healthcheck.duration", metric.WithUnit(metricSecondUnit), metric.WithDescription("Duration of instance health checks."))
	return t
}

func (t *telemetry) attrs(extra ...attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributes(append(t.base[:len(t.base):len(t.base)], extra...)...)
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

// election records one attempt to lead and its outcome: won, forced, error.
func (t *telemetry) election(ctx context.Context, start time.Time, outcome string, err error) {
	_, span := t.startAt(ctx, spanElection, start, attrOutcome.String(outcome))
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

func (t *telemetry) startRebalance(ctx context.Context, trigger string, epoch uint64) (context.Context, trace.Span) {
	return t.start(ctx, spanRebalance, attrTrigger.String(trigger), attrEpoch.Int64(int64(epoch)))
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
	err                                 error
}

func (t *telemetry) startReconcile(ctx context.Context) (context.Context, trace.Span) {
	return t.start(ctx, spanReconcile)
}

func (t *telemetry) endReconcile(ctx context.Context, span trace.Span, s reconcileStats) {
	span.SetAttributes(attrClaimed.Int(s.claimed), attrRefused.Int(s.refused), attrCreated.Int(s.created),
		attrReplaced.Int(s.replaced), attrStopped.Int(s.disconnected), attrReleased.Int(s.released), attrFailed.Int(s.failed))
	end(span, s.err)
	t.reconcileTime.Record(ctx, time.Since(s.start).Seconds(), t.attrs())
	if s.refused > 0 {
		t.claimsRefused.Add(ctx, int64(s.refused), t.attrs())
	}
	if s.err != nil {
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

func (t *telemetry) healthFailed(ctx context.Context, kind string) {
	t.healthFailures.Add(ctx, 1, t.attrs(attrKind.String(kind)))
}

func (t *telemetry) configFailed(ctx context.Context) {
	t.configFails.Add(ctx, 1, t.attrs())
}

func (t *telemetry) setInstances(n int) {
	t.instances.Record(context.Background(), int64(n), t.attrs())
}
