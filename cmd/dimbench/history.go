package main

import (
	"context"
	"fmt"
	"time"

	"github.com/go-dim/dim"
)

// historyScenario names the history cost's results.
const historyScenario = "13 history cost"

// historyRun is what one cold start and steady window measured, with the
// history on or off.
type historyRun struct {
	perNode []float64 // steady: Redis commands/s per node, one per window
	xaddsPS []float64 // steady: XADD/s, one per window
	// The cold start, from before the first Start until every key ran
	// and one node TTL more had passed.
	coldCmds    int64 // every command, those inside scripts included
	coldXadds   int64
	coldXaddUS  int64 // microseconds Redis spent in XADD
	coldEvalUS  int64 // microseconds Redis spent in scripts (EVALSHA and EVAL)
	coldEvals   int64 // script calls
	coldSeconds float64
	entries     int64 // XLEN of the stream after the cold start
	batches     int64 // entries of claims and releases (one per script call)
	keysClaimed int64 // keys those claim entries list
	streamBytes int64 // MEMORY USAGE of the stream
}

// historyDetail is the breakdown kept in the JSON for one size.
type historyDetail struct {
	Timing timing         `json:"timing"`
	On     map[string]any `json:"history_on"`
	Off    map[string]any `json:"history_off"`
}

func (r historyRun) detail() map[string]any {
	return map[string]any{
		"steady_commands_per_s_per_node": r.perNode, "steady_xadd_per_s": r.xaddsPS,
		"cold_commands": r.coldCmds, "cold_xadd": r.coldXadds, "cold_xadd_us": r.coldXaddUS, "cold_script_us": r.coldEvalUS, "cold_script_calls": r.coldEvals,
		"cold_seconds": r.coldSeconds, "stream_entries": r.entries, "claim_release_entries": r.batches,
		"keys_claimed_in_entries": r.keysClaimed, "stream_bytes": r.streamBytes,
	}
}

// history: M nodes run N keys twice, with the history (the default) and
// with WithHistory(0), at the steady scenario's timings. It measures what
// the history adds to a steady state (nothing, by design: no entry per
// heartbeat) and to a cold start, where every claim batch adds one XADD.
func (b *bench) history(ctx context.Context) error {
	tm := timingFor(b.cfg.steadyTTL)
	perNode := map[size]map[bool]float64{}
	for _, sz := range b.cfg.history {
		cs := sz.String()
		runs := map[bool]historyRun{}
		mk := b.mark()
		var err error
		for _, on := range []bool{true, false} {
			var r historyRun
			if r, err = b.historyOnce(ctx, sz, tm, on); err != nil {
				break
			}
			runs[on] = r
		}
		if b.failed(historyScenario, cs, err) {
			continue
		}
		on, off := runs[true], runs[false]
		perNode[sz] = map[bool]float64{true: median(on.perNode), false: median(off.perNode)}

		steadyOn := &Result{Scenario: historyScenario, Case: cs + ", history on", Metric: "steady: Redis commands/s per node", Unit: "cmd/s", Samples: on.perNode}
		steadyOff := &Result{Scenario: historyScenario, Case: cs + ", history off", Metric: "steady: Redis commands/s per node", Unit: "cmd/s", Samples: off.perNode}
		steadyOn.Note = fmt.Sprintf("%s; INFO commandstats over 3 windows of %v, as in the steady scenario", tm, b.cfg.steadyWindow/3)
		ratio := &Result{Scenario: historyScenario, Case: cs, Metric: "steady: commands/s, history on ÷ off", Unit: "×",
			Samples: []float64{median(on.perNode) / median(off.perNode)}}
		ratio.TargetStat, ratio.TargetMin, ratio.TargetMax, ratio.Target = "median", 0.9, 1.1, "0.9 – 1.1 ×"
		ratio.Note = "target: the history adds nothing to a steady state, read as within 10%"
		xadds := &Result{Scenario: historyScenario, Case: cs + ", history on", Metric: "steady: XADD/s", Unit: "cmd/s", Samples: on.xaddsPS}
		xadds.withTarget("max", 0)
		xadds.Note = "no entry per heartbeat"

		others := on.entries - on.batches // joins, the election, the leader's assignments
		cold := &Result{Scenario: historyScenario, Case: cs, Metric: "cold start: history entries (XADDs)", Unit: "cmd",
			Samples: []float64{float64(on.coldXadds)}}
		cold.Note = fmt.Sprintf("%d entries in the stream: %d claims or releases listing %d keys, %d joins, elections and assignments; %d XADDs without the history",
			on.entries, on.batches, on.keysClaimed, others, off.coldXadds)
		perKey := &Result{Scenario: historyScenario, Case: cs, Metric: "cold start: XADDs per 1,000 keys", Unit: "cmd",
			Samples: []float64{1000 * float64(on.coldXadds) / float64(sz.Keys)}}
		perKey.Note = "one entry per script call that changed something, listing its keys, never one per key"
		perBatch := &Result{Scenario: historyScenario, Case: cs, Metric: "cold start: extra commands per claim/release batch", Unit: "cmd",
			Samples: []float64{float64(on.coldXadds-others) / float64(max(on.batches, 1))}}
		perBatch.Note = "XADDs beyond the joins, elections and assignments, over the claim and release entries: the one XADD after each script call"
		share := &Result{Scenario: historyScenario, Case: cs, Metric: "cold start: XADD share of Redis commands", Unit: "%",
			Samples: []float64{100 * float64(on.coldXadds) / float64(max(on.coldCmds, 1))}}
		share.Note = fmt.Sprintf("%d commands in %.1f s with the history, %d in %.1f s without (commands inside scripts counted, as INFO commandstats does)",
			on.coldCmds, on.coldSeconds, off.coldCmds, off.coldSeconds)
		usPer := &Result{Scenario: historyScenario, Case: cs, Metric: "cold start: Redis time per XADD", Unit: "µs",
			Samples: []float64{float64(on.coldXaddUS) / float64(max(on.coldXadds, 1))}}
		usPer.Note = fmt.Sprintf("INFO commandstats usec; a script call took %.1f µs on average in the same cold start",
			float64(on.coldEvalUS)/float64(max(on.coldEvals, 1)))
		timeShare := &Result{Scenario: historyScenario, Case: cs, Metric: "cold start: Redis time in XADD ÷ in scripts", Unit: "%",
			Samples: []float64{100 * float64(on.coldXaddUS) / float64(max(on.coldEvalUS, 1))}}
		timeShare.Note = fmt.Sprintf("%d µs in XADD, %d µs in %d EVALSHA/EVAL calls", on.coldXaddUS, on.coldEvalUS, on.coldEvals)
		mem := &Result{Scenario: historyScenario, Case: cs, Metric: "stream memory after the cold start", Unit: "KiB",
			Samples: []float64{float64(on.streamBytes) / 1024}}
		mem.Note = fmt.Sprintf("MEMORY USAGE of <p>:history, %d entries", on.entries)
		b.annotate(mk, steadyOn)
		for _, r := range []*Result{steadyOn, steadyOff, ratio, xadds, cold, perKey, perBatch, share, usPer, timeShare, mem} {
			b.add(r)
		}
		b.details["history "+cs] = historyDetail{Timing: tm, On: on.detail(), Off: off.detail()}
	}

	// The steady-state ratio (most keys ÷ fewest, same nodes), with the
	// history and without: the history must not change it.
	var lo, hi *size
	for _, sz := range b.cfg.history {
		for _, other := range b.cfg.history {
			if sz.Nodes == other.Nodes && sz.Keys > other.Keys && (hi == nil || sz.Keys > hi.Keys) && perNode[sz] != nil && perNode[other] != nil {
				hi, lo = &sz, &other
			}
		}
	}
	if hi == nil {
		return nil
	}
	for _, on := range []bool{true, false} {
		r := &Result{Scenario: historyScenario,
			Case:   fmt.Sprintf("%d nodes, %s vs %s keys, history %s", hi.Nodes, count(hi.Keys), count(lo.Keys), map[bool]string{true: "on", false: "off"}[on]),
			Metric: "steady: commands/s ratio", Unit: "×", Samples: []float64{perNode[*hi][on] / perNode[*lo][on]}}
		r.TargetStat, r.TargetMin, r.TargetMax, r.Target = "median", 0.9, 1.1, "0.9 – 1.1 ×"
		r.Note = "the steady scenario's ratio: commands/s independent of key count, read as within 10%"
		b.add(r)
	}
	return nil
}

// historyOnce starts M nodes of a new service with the history on or off,
// measures the cold start until every key runs and one TTL more has
// passed, then the steady state over -steady-window.
func (b *bench) historyOnce(ctx context.Context, sz size, tm timing, on bool) (historyRun, error) {
	var r historyRun
	c := b.newCluster("history", sz.Keys, tm)
	if !on {
		c.opts = []dim.Option{dim.WithHistory(0)}
	}
	defer c.close(ctx)
	s0, err := snapshot(ctx, b.admin)
	if err != nil {
		return r, err
	}
	if _, err := c.startLocal(ctx, sz.Nodes); err != nil {
		return r, err
	}
	if _, err := c.waitConverged(ctx, sz.Nodes, converge); err != nil {
		return r, err
	}
	// Let the start's rebalances and first observations pass, as the
	// steady scenario does; they belong to the cold start.
	time.Sleep(tm.TTL)
	s1, err := snapshot(ctx, b.admin)
	if err != nil {
		return r, err
	}
	r.coldCmds, _ = commandDelta(s0, s1)
	r.coldXadds = s1.calls["xadd"] - s0.calls["xadd"]
	r.coldXaddUS = s1.usec["xadd"] - s0.usec["xadd"]
	r.coldEvalUS = s1.usec["evalsha"] - s0.usec["evalsha"] + s1.usec["eval"] - s0.usec["eval"]
	r.coldEvals = s1.calls["evalsha"] - s0.calls["evalsha"] + s1.calls["eval"] - s0.calls["eval"]
	r.coldSeconds = s1.at.Sub(s0.at).Seconds()
	if err := b.readStream(ctx, c.service, &r); err != nil {
		return r, err
	}

	prev := s1
	for range 3 {
		time.Sleep(b.cfg.steadyWindow / 3)
		s, err := snapshot(ctx, b.admin)
		if err != nil {
			return r, err
		}
		secs := s.at.Sub(prev.at).Seconds()
		total, _ := commandDelta(prev, s)
		r.perNode = append(r.perNode, float64(total)/secs/float64(sz.Nodes))
		r.xaddsPS = append(r.xaddsPS, float64(s.calls["xadd"]-prev.calls["xadd"])/secs)
		prev = s
	}
	return r, b.checkOverlaps(c)
}

// readStream counts the service's history entries, its claim and release
// entries and the keys they list, and the stream's memory.
func (b *bench) readStream(ctx context.Context, service string, r *historyRun) error {
	key := "dim:{" + service + "}:history"
	n, err := b.admin.Do(ctx, b.admin.B().Xlen().Key(key).Build()).AsInt64()
	if err != nil {
		return fmt.Errorf("XLEN: %w", err)
	}
	r.entries = n
	if n > 0 {
		r.streamBytes, err = b.admin.Do(ctx, b.admin.B().MemoryUsage().Key(key).Samples(0).Build()).AsInt64()
		if err != nil {
			return fmt.Errorf("MEMORY USAGE: %w", err)
		}
	}
	entries, err := dim.ReadHistory(ctx, b.admin, dim.Service{Name: service}, dim.HistoryFilter{Limit: 10_000})
	if err != nil {
		return err
	}
	for _, e := range entries {
		switch e.Kind {
		case dim.HistoryClaimed:
			r.keysClaimed += int64(len(e.Keys))
			r.batches++
		case dim.HistoryReleased:
			r.batches++
		}
	}
	return nil
}
