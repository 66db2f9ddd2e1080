package main

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-dim/dim"
	"github.com/redis/rueidis"
)

// slowScript is the bound of issue 17 on any one script call, in µs: the
// SLOWLOG threshold of the scale scenario.
const slowScript = 20000

// scaleDetail is the breakdown kept in the JSON for one run of one size.
type scaleDetail struct {
	Timing        timing      `json:"timing"`
	Slowest       []slowEntry `json:"slowest_calls"`
	SlowCalls     int         `json:"calls_over_20ms"`
	StopSlowest   []slowEntry `json:"slowest_calls_during_stop"`
	BusyErrors    int64       `json:"busy_errors"`
	Fences        int64       `json:"self_fencings"`
	Warnings      int64       `json:"dim_warnings"`
	RedisBytes    int64       `json:"redis_used_memory_growth_bytes"`
	HeapBytes     uint64      `json:"heap_growth_bytes"`
	Retries       int64       `json:"start_retries"`
	SteadyCPU     float64     `json:"redis_cpu_steady_share"`
	SteadyCmds    float64     `json:"redis_commands_per_s_steady"`
	StartCPU      float64     `json:"redis_cpu_seconds_cold_start"`
	StartMainCPU  float64     `json:"redis_main_thread_cpu_seconds_cold_start"`
	ProcessCPU    float64     `json:"process_cpu_seconds_cold_start"`
	LatencyLatest string      `json:"latency_latest"`
	// With -scale-profile: every call of the cold start, by kind.
	Calls []callKind `json:"calls_by_kind,omitempty"`
}

// callKind sums the SLOWLOG entries of one kind of call (see describeKind).
type callKind struct {
	Kind      string  `json:"kind"`
	Calls     int     `json:"calls"`
	TotalMs   float64 `json:"total_ms"`
	MinUs     int64   `json:"min_us"`
	MedianUs  int64   `json:"median_us"`
	MaxUs     int64   `json:"max_us"`
	MedianArg int     `json:"median_args"`
}

// slowEntry is one SLOWLOG entry: its duration and what was called (a
// script by the first line of its body or its SHA, with its key count).
type slowEntry struct {
	Micros int64  `json:"us"`
	Call   string `json:"call"`
}

// scale: a first start of M nodes × N keys, at sizes where one script over
// every key would block Redis for seconds, with dim's default timings.
// Every script call slower than 20 ms is logged by SLOWLOG; the service
// must converge with no fence and no BUSY reply. Timed from the later of
// the last Start returned and the end of the first start's grace period
// (one node TTL, read from Redis) to the last key's first create. Then
// the steady state's Redis CPU over a window, the heap of the process and
// Redis's memory per key, and a graceful stop of every node.
func (b *bench) scale(ctx context.Context) error {
	tm := timingFor(b.cfg.scaleTTL)
	for _, sz := range b.cfg.scale {
		runs := b.runs(1)
		cs := sz.String()
		r := func(metric, unit string) *Result {
			return &Result{Scenario: "14 scale", Case: cs, Metric: metric, Unit: unit}
		}
		live := r("grace end (or last Start, if later) → every key live", "ms")
		total := r(fmt.Sprintf("first Start → every key live (incl. %v grace)", tm.TTL), "ms")
		slowest := r("longest script call (SLOWLOG, start to converged)", "ms")
		slowCalls := r("script calls over 20 ms", "calls")
		stopSlowest := r("longest script call during a graceful stop of every node", "ms")
		stops := r("every node Stops at once → all returned", "ms")
		busy := r("BUSY replies", "")
		fences := r("self-fencings", "")
		heap := r("heap per node per config (after GC)", "B")
		redisMem := r("Redis memory per key (used_memory growth)", "B")
		steady := r("Redis CPU in steady state (share of one core)", "%")
		steadyCmds := r("Redis commands/s in steady state", "/s")
		startCPU := r("Redis CPU, first Start → converged", "s")
		var details []scaleDetail
		mk := b.mark()
		for range runs {
			d, err := b.scaleOnce(ctx, tm, sz, live, total, stops)
			if b.failed("14 scale", cs, err) {
				break
			}
			details = append(details, d)
			slowest.Samples = append(slowest.Samples, float64(slowestOf(d.Slowest))/1000)
			stopSlowest.Samples = append(stopSlowest.Samples, float64(slowestOf(d.StopSlowest))/1000)
			slowCalls.Samples = append(slowCalls.Samples, float64(d.SlowCalls))
			busy.Samples = append(busy.Samples, float64(d.BusyErrors))
			fences.Samples = append(fences.Samples, float64(d.Fences))
			heap.Samples = append(heap.Samples, float64(d.HeapBytes)/float64(sz.Nodes)/float64(sz.Keys))
			redisMem.Samples = append(redisMem.Samples, float64(d.RedisBytes)/float64(sz.Keys))
			steady.Samples = append(steady.Samples, 100*d.SteadyCPU)
			steadyCmds.Samples = append(steadyCmds.Samples, d.SteadyCmds)
			startCPU.Samples = append(startCPU.Samples, d.StartCPU)
		}
		if len(live.Samples) == 0 {
			continue
		}
		b.details["scale "+cs] = details
		live.withTarget("median", 15000)
		slowest.withTarget("max", slowScript/1000)
		stopSlowest.withTarget("max", slowScript/1000)
		busy.withTarget("max", 0)
		fences.withTarget("max", 0)
		live.Note = fmt.Sprintf("%s; a first start (it waits one node TTL: timed from the grace end); all nodes in one process, started concurrently; "+
			"trivial instances (createInstance returns its key)", tm)
		slowest.Note = fmt.Sprintf("SLOWLOG with slowlog-log-slower-than %d µs, reset before the first Start, read once every key runs where it is assigned "+
			"and the steady-state window has passed; the harness's own reads are summaries (O(nodes))", slowScript)
		stopSlowest.Note = "SLOWLOG reset before the Stops, read after every Stop returned (before the harness deletes the service)"
		busy.Note = "errorstat_BUSY of INFO errorstats, over the run"
		fences.Note = "dim's \"fenced\" warnings"
		heap.Note = "HeapAlloc after a GC with every node running, less before the nodes started, ÷ nodes ÷ keys: what a node keeps per config " +
			"(every node holds every config; the config strings themselves are shared by the in-process nodes)"
		redisMem.Note = "used_memory growth from before the first Start to converged, ÷ keys"
		steady.Note = fmt.Sprintf("used_cpu_user + used_cpu_sys over %v once converged, ÷ the window", b.cfg.scaleWindow)
		b.annotate(mk, live)
		for _, x := range []*Result{live, total, slowest, slowCalls, stopSlowest, stops, busy, fences, heap, redisMem, steady, steadyCmds, startCPU} {
			b.add(x)
		}
	}
	return nil
}

func slowestOf(s []slowEntry) int64 {
	var m int64
	for _, e := range s {
		m = max(m, e.Micros)
	}
	return m
}

func (b *bench) scaleOnce(ctx context.Context, tm timing, sz size, live, total, stops *Result) (d scaleDetail, err error) {
	d.Timing = tm
	threshold := slowScript
	if b.cfg.scaleProfile {
		threshold = 0
	}
	restore, err := b.slowlogAt(ctx, threshold)
	if err != nil {
		return d, err
	}
	defer restore()
	c := b.newCluster("scale", sz.Keys, tm)
	defer c.close(ctx)
	mk := b.mark()
	busy0, err := busyErrors(ctx, b.admin)
	if err != nil {
		return d, err
	}
	runtime.GC()
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	mem0, err := info(ctx, b.admin, "memory")
	if err != nil {
		return d, err
	}
	used0, _ := strconv.ParseInt(mem0["used_memory"], 10, 64)
	rcpu0, err := redisCPU(ctx, b.admin)
	if err != nil {
		return d, err
	}
	pcpu0 := cpuTime()
	main0, err := redisMainCPU(ctx, b.admin)
	if err != nil {
		return d, err
	}

	w := c.tr.watchKeys(c.keys, "")
	firstGrace := c.watchGrace(ctx)
	t0 := time.Now()
	returned, err := c.startIDs(ctx, c.ids(sz.Nodes))
	if err != nil {
		return d, err
	}
	up := slices.MaxFunc(returned, func(a, b time.Time) int { return a.Compare(b) })
	last, err := c.tr.wait(ctx, w, 10*time.Minute)
	if err != nil {
		return d, err
	}
	grace := <-firstGrace
	if grace.IsZero() {
		return d, fmt.Errorf("no grace period recorded in Redis")
	}
	from := up
	if grace.After(from) {
		from = grace
	}
	live.Samples = append(live.Samples, ms(last.Sub(from)))
	total.Samples = append(total.Samples, ms(last.Sub(t0)))
	if err := c.waitSummary(ctx, sz.Nodes, 10*time.Minute); err != nil {
		return d, err
	}
	d.StartCPU = 0
	if rcpu, err := redisCPU(ctx, b.admin); err == nil {
		d.StartCPU = rcpu - rcpu0
	}
	d.ProcessCPU = (cpuTime() - pcpu0).Seconds()
	if main1, err := redisMainCPU(ctx, b.admin); err == nil {
		d.StartMainCPU = main1 - main0
	}
	b.progress("  %s: Starts returned after %s ms, grace ended after %s ms, every key live after %s ms; converged",
		sz, num(ms(up.Sub(t0))), num(ms(grace.Sub(t0))), num(ms(last.Sub(t0))))

	runtime.GC()
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	d.HeapBytes = ms1.HeapAlloc - min(ms0.HeapAlloc, ms1.HeapAlloc)
	mem1, err := info(ctx, b.admin, "memory")
	if err != nil {
		return d, err
	}
	used1, _ := strconv.ParseInt(mem1["used_memory"], 10, 64)
	d.RedisBytes = used1 - used0

	// The steady state: nothing changes; Redis's CPU over a window.
	s0, err := snapshot(ctx, b.admin)
	if err != nil {
		return d, err
	}
	select {
	case <-ctx.Done():
		return d, ctx.Err()
	case <-time.After(b.cfg.scaleWindow):
	}
	s1, err := snapshot(ctx, b.admin)
	if err != nil {
		return d, err
	}
	secs := s1.at.Sub(s0.at).Seconds()
	d.SteadyCPU = (s1.cpu - s0.cpu) / secs
	n, _ := commandDelta(s0, s1)
	d.SteadyCmds = float64(n) / secs

	if b.cfg.scaleProfile {
		if d.Calls, err = profileCalls(ctx, b.admin); err != nil {
			return d, err
		}
		var wall float64
		for _, k := range d.Calls {
			wall += k.TotalMs
		}
		b.progress("    Redis main thread: %s s CPU in %s s of logged calls (%.2f CPU per wall second: the load on the machine)",
			num(d.StartMainCPU), num(wall/1000), 1000*d.StartMainCPU/wall)
		for _, k := range d.Calls {
			b.progress("    %-60s %6d calls, %8s ms in all; min %d, median %d, max %d µs; median %d args",
				k.Kind, k.Calls, num(k.TotalMs), k.MinUs, k.MedianUs, k.MaxUs, k.MedianArg)
		}
	}
	if d.Slowest, d.SlowCalls, err = slowlog(ctx, b.admin, slowScript); err != nil {
		return d, err
	}
	if ll, err := b.admin.Do(ctx, b.admin.B().LatencyLatest().Build()).ToAny(); err == nil {
		d.LatencyLatest = fmt.Sprint(ll)
	}
	if err := b.admin.Do(ctx, b.admin.B().SlowlogReset().Build()).Error(); err != nil {
		return d, err
	}
	took, err := c.stopAll(ctx)
	if err != nil {
		return d, err
	}
	stops.Samples = append(stops.Samples, ms(took))
	if d.StopSlowest, _, err = slowlog(ctx, b.admin, slowScript); err != nil {
		return d, err
	}
	busy1, err := busyErrors(ctx, b.admin)
	if err != nil {
		return d, err
	}
	d.BusyErrors = busy1 - busy0
	d.Fences = b.warns.fences.Load() - mk.fences
	d.Warnings = b.warns.n.Load() - mk.warns
	d.Retries = c.retries.Load()
	return d, b.checkOverlaps(c)
}

// ids returns n new node IDs.
func (c *cluster) ids(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = c.newID()
	}
	return ids
}

// waitSummary polls the service's summary (which costs Redis O(nodes), not
// O(keys)) until nodes live nodes run every key where it is assigned.
func (c *cluster) waitSummary(ctx context.Context, nodes int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var why string
	for {
		sum, err := dim.ReadSummary(ctx, c.b.admin, dim.Service{Name: c.service})
		switch {
		case err != nil:
			why = err.Error()
		case len(sum.Nodes) != nodes:
			why = fmt.Sprintf("%d live nodes, want %d", len(sum.Nodes), nodes)
		case sum.Assigned != len(c.keys) || sum.Running != len(c.keys) || sum.Unowned != 0 || sum.Problems != 0:
			why = fmt.Sprintf("%d assigned, %d running, %d unowned, %d problems", sum.Assigned, sum.Running, sum.Unowned, sum.Problems)
		default:
			if n := c.tr.liveCount(); n != len(c.keys) {
				why = fmt.Sprintf("%d keys live by the callbacks", n)
			} else {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not converged after %v: %s", c.service, timeout, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// slowlogAt sets SLOWLOG's threshold (µs) with room for many entries, and
// resets it; it returns what puts the settings back.
func (b *bench) slowlogAt(ctx context.Context, us int) (restore func(), err error) {
	restore, err = configure(ctx, b.admin, map[string]string{"slowlog-log-slower-than": strconv.Itoa(us),
		"slowlog-max-len": "200000", "latency-monitor-threshold": strconv.Itoa(us / 1000)})
	if err != nil {
		return nil, err
	}
	if err := b.admin.Do(ctx, b.admin.B().SlowlogReset().Build()).Error(); err != nil {
		restore()
		return nil, err
	}
	_ = b.admin.Do(ctx, b.admin.B().LatencyReset().Build()).Error()
	return restore, nil
}

// slowlog reads every SLOWLOG entry: the ten slowest, and how many took
// longer than over µs.
func slowlog(ctx context.Context, admin rueidis.Client, over int64) ([]slowEntry, int, error) {
	entries, err := admin.Do(ctx, admin.B().SlowlogGet().Count(-1).Build()).ToArray()
	if err != nil {
		return nil, 0, fmt.Errorf("SLOWLOG GET: %w", err)
	}
	var out []slowEntry
	for _, e := range entries {
		f, err := e.ToArray()
		if err != nil || len(f) < 4 {
			continue
		}
		us, _ := f[2].AsInt64()
		args, _ := f[3].AsStrSlice()
		out = append(out, slowEntry{Micros: us, Call: describeCall(args)})
	}
	slices.SortFunc(out, func(a, b slowEntry) int { return int(b.Micros - a.Micros) })
	n := 0
	for _, e := range out {
		if e.Micros > over {
			n++
		}
	}
	return out[:min(10, len(out))], n, nil
}

// profileCalls reads every SLOWLOG entry (logged with a threshold of 0) and
// sums them by kind, the most time first.
func profileCalls(ctx context.Context, admin rueidis.Client) ([]callKind, error) {
	entries, err := admin.Do(ctx, admin.B().SlowlogGet().Count(-1).Build()).ToArray()
	if err != nil {
		return nil, fmt.Errorf("SLOWLOG GET: %w", err)
	}
	type acc struct {
		us   []int64
		args []int
	}
	by := map[string]*acc{}
	for _, e := range entries {
		f, err := e.ToArray()
		if err != nil || len(f) < 4 {
			continue
		}
		if len(f) >= 5 {
			if addr, _ := f[4].ToString(); addr == "?:0" {
				continue // a command a script called: its time is the script's
			}
		}
		us, _ := f[2].AsInt64()
		args, _ := f[3].AsStrSlice()
		k := describeKind(args)
		a := by[k]
		if a == nil {
			a = &acc{}
			by[k] = a
		}
		a.us = append(a.us, us)
		a.args = append(a.args, len(args))
	}
	var out []callKind
	for k, a := range by {
		slices.Sort(a.us)
		slices.Sort(a.args)
		var sum int64
		for _, u := range a.us {
			sum += u
		}
		out = append(out, callKind{Kind: k, Calls: len(a.us), TotalMs: float64(sum) / 1000, MinUs: a.us[0],
			MedianUs: a.us[len(a.us)/2], MaxUs: a.us[len(a.us)-1], MedianArg: a.args[len(a.args)/2]})
	}
	slices.SortFunc(out, func(a, b callKind) int { return int(b.TotalMs - a.TotalMs) })
	return out, nil
}

// describeKind is describeCall without what differs between calls of one
// kind: the argument count.
func describeKind(args []string) string {
	d := describeCall(args)
	if i := strings.LastIndex(d, ", "); i > 0 && strings.HasSuffix(d, " args") {
		return d[:i]
	}
	if len(args) > 1 {
		return args[0] + " " + args[1][strings.LastIndex(args[1], "}")+1:]
	}
	return d
}

// describeCall names a logged command: a script by the first line of its
// body (EVAL) or its SHA (EVALSHA), with its key count and the last part of
// its first three keys, which tell dim's scripts apart.
func describeCall(args []string) string {
	if len(args) == 0 {
		return "?"
	}
	cmd := strings.ToLower(args[0])
	if (cmd == "eval" || cmd == "evalsha") && len(args) >= 3 {
		body := args[1]
		if cmd == "eval" {
			body, _, _ = strings.Cut(strings.TrimSpace(body), "\n")
		}
		var keys []string
		if n, err := strconv.Atoi(args[2]); err == nil {
			for _, k := range args[3:min(len(args), 3+min(n, 3))] {
				keys = append(keys, k[strings.LastIndex(k, "}")+1:])
			}
		}
		return fmt.Sprintf("%s %.12s keys=%s %s, %d args", cmd, body, args[2], strings.Join(keys, " "), len(args))
	}
	if len(args) > 3 {
		args = args[:3]
	}
	return strings.Join(args, " ")
}

// busyErrors is how many BUSY replies Redis has sent since its start.
func busyErrors(ctx context.Context, admin rueidis.Client) (int64, error) {
	st, err := info(ctx, admin, "errorstats")
	if err != nil {
		return 0, err
	}
	v := st["errorstat_BUSY"]
	n, _ := strings.CutPrefix(v, "count=")
	busy, _ := strconv.ParseInt(n, 10, 64)
	return busy, nil
}

// redisMainCPU is the CPU time of redis-server's main thread so far, in
// seconds: the thread that runs every command and script.
func redisMainCPU(ctx context.Context, c rueidis.Client) (float64, error) {
	cpu, err := info(ctx, c, "cpu")
	if err != nil {
		return 0, err
	}
	u, _ := strconv.ParseFloat(cpu["used_cpu_user_main_thread"], 64)
	y, _ := strconv.ParseFloat(cpu["used_cpu_sys_main_thread"], 64)
	return u + y, nil
}
