package main

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// joinWindow is how long dim's leader waits after a join (or its election)
// with no further join before it places keys (joinWindow in rebalance.go).
// A whole restart settles by count instead: the leader places keys as soon
// as as many nodes have joined as the service had, so the window is a
// reference here, not a floor.
const joinWindow = 25 * time.Millisecond

// restartVariant is one way to restart a whole service, and its results.
type restartVariant struct {
	name   string
	newIDs bool

	live, begins, took, starts, leader, elections, rebalances, moves, graces, pcpu, rcpu *Result
	stops, walls                                                                         []float64
	retries                                                                              int64
}

// restart: M nodes of a service that has run before (its record in Redis is
// intact) all stop gracefully, then M new nodes start concurrently, with the
// same node IDs or with new ones. Timed from the last Start returned to the
// last create before the service converged: every key live where it stays.
// No grace period may begin.
func (b *bench) restart(ctx context.Context) error {
	tm := timingFor(b.cfg.restartTTL)
	for _, sz := range b.cfg.restart {
		runs := b.runs(choose(sz.Keys <= 1000, 15, 7))
		b.failed("7 whole restart", sz.String(), b.restartSize(ctx, tm, sz, runs))
	}
	return nil
}

func (b *bench) restartSize(ctx context.Context, tm timing, sz size, runs int) error {
	const scenario = "7 whole restart"
	c := b.newCluster("restart", sz.Keys, tm)
	defer c.close(ctx)
	tap := &logTap{warns: b.warns}
	c.logger = slog.New(tap)
	mk := b.mark()
	// The first start of the service waits out a grace period ("new").
	ids, err := c.startLocal(ctx, sz.Nodes)
	if err != nil {
		return err
	}
	if _, err := c.waitConverged(ctx, sz.Nodes, converge); err != nil {
		return err
	}
	until0, why0, err := c.graceRecord(ctx)
	if err != nil {
		return err
	}
	if why0 != "new" {
		return fmt.Errorf("the first start's grace period is %q, want \"new\"", why0)
	}
	c.retries.Store(0)

	variants := []*restartVariant{{name: "same IDs"}, {name: "new IDs", newIDs: true}}
	for _, v := range variants {
		cs := fmt.Sprintf("%s, %s", sz, v.name)
		r := func(metric, unit string) *Result {
			return &Result{Scenario: scenario, Case: cs, Metric: metric, Unit: unit}
		}
		v.live = r("last Start returned → every key live where it stays", "ms")
		v.begins = r("last Start returned → last rebalance begins", "ms")
		v.took = r("last rebalance: duration", "ms")
		v.starts = r("first Start → every Start returned", "ms")
		v.leader = r("first Start → new leader", "ms")
		v.elections = r("leaders elected per restart", "")
		v.rebalances = r("rebalances per restart", "")
		v.moves = r("moves per restart", "keys")
		v.graces = r("grace periods begun", "runs")
		v.pcpu = r("CPU of this process, first Start → converged", "ms")
		v.rcpu = r("CPU of Redis, first Start → converged", "ms")
	}
	// The variants alternate, so that both see the same load.
	for range runs {
		for _, v := range variants {
			if err := c.restartOnce(ctx, sz, &ids, v, until0, tap); err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
		}
	}
	for _, v := range variants {
		v.live.withFloor("join window", ms(joinWindow)).withTarget("median", 100)
		v.begins.withFloor("join window", ms(joinWindow))
		v.graces.withTarget("max", 0)
		v.pcpu.withFloor("wall", median(v.walls))
		v.rcpu.withFloor("wall", median(v.walls))
		v.live.Note = fmt.Sprintf("%s; every node stopped gracefully (all Stops together took %s ms, median), then %d new Managers "+
			"started concurrently with %s; the last createInstance before the service converged; all nodes in one process",
			tm, num(median(v.stops)), sz.Nodes, v.name)
		v.begins.Note = "the leader's last rebalance that changed the assignment (its \"rebalanced\" log: end less took): " +
			"in a restart it waits until as many nodes have joined as the service had (at most a heartbeat interval), and for the rebalances before it"
		v.took.Note = "getConfig, HGETALL of the assignment, Balance and the write, on the leader"
		v.starts.Note = fmt.Sprintf("%d Starts failed (join timed out) and were retried in all %d runs", v.retries, runs)
		v.leader.Note = "the first \"became leader\" log"
		v.elections.Note = "\"became leader\" logs: more than one means a node forced out the leader elected moments before " +
			"(its leader check read the old leader's record, found it not live, then found the lock taken)"
		v.rebalances.Note = "rebalances that changed the assignment"
		v.moves.Note = fmt.Sprintf("creates beyond one per key (%d keys): keys placed before every node had joined and moved on as the rest joined", sz.Keys)
		v.graces.Note = "the grace fields of the service's membership record (grace, why) compared before and after each restart; the first start's own grace (\"new\") is not counted"
		v.pcpu.Note = "getrusage over the restart, which all nodes share; from the first Start until 200 ms have passed without a create; × floor is CPU ÷ the median time from the first Start to the last create"
		v.rcpu.Note = "used_cpu_user + used_cpu_sys of redis-server over the restart"
		b.annotate(mk, v.live)
		for _, r := range []*Result{v.live, v.begins, v.took, v.starts, v.leader, v.elections, v.rebalances, v.moves, v.graces, v.pcpu, v.rcpu} {
			if len(r.Samples) > 0 { // no rebalance at all: nothing to time
				b.add(r)
			}
		}
	}
	return nil
}

// restartOnce stops every node of c and starts as many new ones, with the
// same IDs or new ones, and records one sample of each of v's results.
func (c *cluster) restartOnce(ctx context.Context, sz size, ids *[]string, v *restartVariant, until0 string, tap *logTap) error {
	took, err := c.stopAll(ctx)
	if err != nil {
		return err
	}
	v.stops = append(v.stops, ms(took))
	if n := c.tr.liveCount(); n != 0 {
		return fmt.Errorf("%d keys still live after every node stopped", n)
	}
	if st, err := c.status(ctx); err != nil {
		return err
	} else if len(st.Nodes) != 0 || len(st.Owners) != 0 {
		return fmt.Errorf("after every Stop: %d live nodes, %d owned keys; want none", len(st.Nodes), len(st.Owners))
	}
	if v.newIDs {
		for i := range *ids {
			(*ids)[i] = c.newID()
		}
	}
	runtime.GC()
	creates0, _ := c.tr.counts()
	retries0 := c.retries.Load()
	rcpu0, err := redisCPU(ctx, c.b.admin)
	if err != nil {
		return err
	}
	pcpu0 := cpuTime()
	t0 := time.Now()
	w := c.tr.watchKeys(c.keys, "")
	returned, err := c.startIDs(ctx, *ids)
	if err != nil {
		return err
	}
	up := slices.MaxFunc(returned, func(a, b time.Time) int { return a.Compare(b) })
	// Redis is not asked anything until every key has run and creates have
	// stopped for a while; then the status must show the service
	// converged, else the wait goes on (and a later create counts).
	if _, err := c.tr.wait(ctx, w, converge); err != nil {
		return err
	}
	if err := c.tr.waitQuiet(ctx, 200*time.Millisecond, converge); err != nil {
		return err
	}
	pcpu := cpuTime() - pcpu0
	rcpu, err := redisCPU(ctx, c.b.admin)
	if err != nil {
		return err
	}
	if _, err := c.waitConverged(ctx, sz.Nodes, converge); err != nil {
		return err
	}
	last := c.tr.lastCreate()
	creates, _ := c.tr.counts()
	var leader time.Time
	var lastReb tapRecord
	elections, rebalances := 0, 0
	for _, r := range tap.since(t0) {
		switch r.msg {
		case "became leader":
			if leader.IsZero() {
				leader = r.at
			}
			elections++
		case "rebalanced":
			rebalances++
			if r.at.After(lastReb.at) {
				lastReb = r
			}
		}
	}
	if leader.IsZero() {
		return fmt.Errorf("%d elections and %d rebalances logged", elections, rebalances)
	}
	until, why, err := c.graceRecord(ctx)
	if err != nil {
		return err
	}
	grace := 0.0
	if until != until0 {
		grace = 1
		c.b.progress("  a grace period began on a restart: until %s, why %q", until, why)
	}
	v.live.Samples = append(v.live.Samples, ms(last.Sub(up)))
	if rebalances > 0 {
		// With the same IDs the assignment is usually still right: no
		// rebalance changes anything, and nodes claim at once.
		// 0 when it began before the last Start returned (the leader may
		// place keys on the last join before that node's Start is back).
		v.begins.Samples = append(v.begins.Samples, max(0, ms(lastReb.at.Add(-lastReb.took).Sub(up))))
		v.took.Samples = append(v.took.Samples, ms(lastReb.took))
	}
	v.starts.Samples = append(v.starts.Samples, ms(up.Sub(t0)))
	v.leader.Samples = append(v.leader.Samples, ms(leader.Sub(t0)))
	v.elections.Samples = append(v.elections.Samples, float64(elections))
	v.rebalances.Samples = append(v.rebalances.Samples, float64(rebalances))
	v.moves.Samples = append(v.moves.Samples, float64(creates-creates0-int64(sz.Keys)))
	v.graces.Samples = append(v.graces.Samples, grace)
	v.retries += c.retries.Load() - retries0
	v.walls = append(v.walls, ms(last.Sub(t0)))
	v.pcpu.Samples = append(v.pcpu.Samples, ms(pcpu))
	v.rcpu.Samples = append(v.rcpu.Samples, 1000*(rcpu-rcpu0))
	if c.b.cfg.verbose {
		c.b.progress("  %s: Starts returned %s–%s ms after the first (median %s); %s; every key live @%s",
			v.name, num(ms(slices.MinFunc(returned, func(a, b time.Time) int { return a.Compare(b) }).Sub(t0))),
			num(ms(up.Sub(t0))), num(median(msSince(t0, returned))), tap.summary(t0), num(ms(last.Sub(t0))))
	}
	return c.b.checkOverlaps(c)
}

func msSince(t0 time.Time, ts []time.Time) []float64 {
	out := make([]float64, len(ts))
	for i, t := range ts {
		out[i] = ms(t.Sub(t0))
	}
	return out
}

// redisCPU is redis-server's CPU time so far, in seconds.
func redisCPU(ctx context.Context, c rueidis.Client) (float64, error) {
	cpu, err := info(ctx, c, "cpu")
	if err != nil {
		return 0, err
	}
	u, _ := strconv.ParseFloat(cpu["used_cpu_user"], 64)
	y, _ := strconv.ParseFloat(cpu["used_cpu_sys"], 64)
	return u + y, nil
}

// graceRecord reads the service's grace period record: until (server ms)
// and why; both empty when there is none.
func (c *cluster) graceRecord(ctx context.Context) (until, why string, err error) {
	vals, err := c.b.admin.Do(ctx, c.b.admin.B().Hmget().Key("dim:{"+c.service+"}:nodes").Field("grace", "why").Build()).ToArray()
	if err != nil {
		return "", "", fmt.Errorf("read grace: %w", err)
	}
	if len(vals) == 2 {
		until, _ = vals[0].ToString()
		why, _ = vals[1].ToString()
	}
	return until, why, nil
}

// tapRecord is one of dim's Info logs that logTap keeps.
type tapRecord struct {
	at    time.Time
	msg   string
	took  time.Duration // rebalanced
	moves int64         // rebalanced
	nodes int64         // rebalanced
}

// logTap is the logger of a cluster's nodes: it keeps their "became leader"
// and "rebalanced" logs (Info, a few per rebalance), and passes warnings on
// to the bench's counter.
type logTap struct {
	warns *warnCounter
	mu    sync.Mutex
	recs  []tapRecord
}

func (t *logTap) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (t *logTap) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		return t.warns.Handle(ctx, r)
	}
	if r.Message != "became leader" && r.Message != "rebalanced" && r.Message != pairedMsg {
		return nil
	}
	rec := tapRecord{at: r.Time, msg: r.Message}
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "took":
			rec.took = a.Value.Duration()
		case "moves":
			rec.moves = a.Value.Int64()
		case "nodes":
			rec.nodes = a.Value.Int64()
		case "keys":
			rec.moves = a.Value.Int64()
		}
		return true
	})
	t.mu.Lock()
	t.recs = append(t.recs, rec)
	t.mu.Unlock()
	return nil
}

func (t *logTap) WithAttrs(attrs []slog.Attr) slog.Handler { return &tapAttrs{t, attrs} }
func (t *logTap) WithGroup(string) slog.Handler            { return t }

// since returns the records kept from t0 on.
func (t *logTap) since(t0 time.Time) []tapRecord {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []tapRecord
	for _, r := range t.recs {
		if !r.at.Before(t0) {
			out = append(out, r)
		}
	}
	return out
}

// summary lists the records from t0 on, in ms after t0.
func (t *logTap) summary(t0 time.Time) string {
	var b strings.Builder
	pairs, paired := 0, int64(0)
	var lastPair time.Time
	for _, r := range t.since(t0) {
		switch r.msg {
		case pairedMsg:
			pairs, paired, lastPair = pairs+1, paired+r.moves, r.at
		case "became leader":
			fmt.Fprintf(&b, "leader@%s ", num(ms(r.at.Sub(t0))))
		default:
			fmt.Fprintf(&b, "rebalance@%s–%s (%d nodes, %d moves) ", num(ms(r.at.Add(-r.took).Sub(t0))), num(ms(r.at.Sub(t0))), r.nodes, r.moves)
		}
	}
	if pairs > 0 {
		fmt.Fprintf(&b, "%d pairings (%d keys, the last @%s) ", pairs, paired, num(ms(lastPair.Sub(t0))))
	}
	return strings.TrimSpace(b.String())
}

// pairedMsg is dim's Info log when joiners of a whole restart take departed
// nodes' keys (see dim's wholerestart.go).
const pairedMsg = "restart: joiners took departed nodes' keys"

// tapAttrs keeps the node's attributes on the warnings passed on.
type tapAttrs struct {
	t     *logTap
	attrs []slog.Attr
}

func (h *tapAttrs) Enabled(ctx context.Context, l slog.Level) bool { return h.t.Enabled(ctx, l) }
func (h *tapAttrs) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		r = r.Clone()
		r.AddAttrs(h.attrs...)
	}
	return h.t.Handle(ctx, r)
}
func (h *tapAttrs) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &tapAttrs{h.t, append(slices.Clone(h.attrs), attrs...)}
}
func (h *tapAttrs) WithGroup(string) slog.Handler { return h }
