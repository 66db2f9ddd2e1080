package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// converge bounds every wait for a service to settle outside the timed part.
const converge = 120 * time.Second

// handoff: a non-leader node of M stops gracefully; timed from Stop called
// to the last of its keys created on a survivor.
func (b *bench) handoff(ctx context.Context) error {
	M := b.cfg.handoffNodes
	for _, n := range b.cfg.handoffKeys {
		runs := b.runs(choose(n <= 100, 15, choose(n <= 1000, 7, 5)))
		tm := timingFor(b.cfg.ttl)
		c := b.newCluster("handoff", n, tm)
		mk := b.mark()
		err := func() error {
			defer c.close(ctx)
			if _, err := c.startLocal(ctx, M); err != nil {
				return err
			}
			if _, err := c.waitConverged(ctx, M, converge); err != nil {
				return err
			}
			cs := fmt.Sprintf("%s keys, M=%d", count(n), M)
			live := &Result{Scenario: "1 graceful handoff", Case: cs, Metric: "Stop → its keys live elsewhere", Unit: "ms"}
			ret := &Result{Scenario: "1 graceful handoff", Case: cs, Metric: "Stop → Stop returned", Unit: "ms"}
			for range runs {
				leaders := c.leaders()
				var victim string
				for _, id := range c.localIDs() {
					if !slices.Contains(leaders, id) {
						victim = id
						break
					}
				}
				keys := c.tr.keysOf(victim)
				w := c.tr.watchKeys(keys, victim)
				t0 := time.Now()
				if err := c.stopLocal(ctx, victim); err != nil {
					return fmt.Errorf("stop %s: %w", victim, err)
				}
				ret.Samples = append(ret.Samples, ms(time.Since(t0)))
				last, err := c.tr.wait(ctx, w, 30*time.Second)
				if err != nil {
					return err
				}
				live.Samples = append(live.Samples, ms(last.Sub(t0)))
				if _, err := c.startLocal(ctx, 1); err != nil {
					return err
				}
				if _, err := c.waitConverged(ctx, M, converge); err != nil {
					return err
				}
			}
			if n == 12 {
				live.withTarget("p50", 20)
			}
			live.Note = fmt.Sprintf("%d keys moved per run; %s; the stopping node is never the leader", n/M, tm)
			b.annotate(mk, live)
			b.add(live)
			b.add(ret)
			return b.checkOverlaps(c)
		}()
		b.failed("1 graceful handoff", fmt.Sprintf("%s keys, M=%d", count(n), M), err)
	}
	return nil
}

// crash: a non-leader node process of three is SIGKILLed; timed from the
// signal to the last of its keys created on a survivor.
func (b *bench) crash(ctx context.Context) error {
	const n, M = 12, 3
	for _, ttl := range b.cfg.crashTTLs {
		runs := b.runs(choose(ttl <= time.Second, 15, choose(ttl <= 2*time.Second, 10, 7)))
		tm := timingFor(ttl)
		c := b.newCluster("crash", n, tm)
		mk := b.mark()
		err := func() error {
			defer c.close(ctx)
			if _, err := c.startLocal(ctx, M-1); err != nil {
				return err
			}
			r := &Result{Scenario: "2 node crash", Case: fmt.Sprintf("node TTL %v, 12 keys, M=3", ttl),
				Metric: "SIGKILL → its keys live elsewhere", Unit: "ms"}
			r.withFloor("TTL", ms(ttl))
			for range runs {
				k, err := c.startChild(ctx)
				if err != nil {
					return err
				}
				st, err := c.waitConverged(ctx, M, converge)
				if err != nil {
					return err
				}
				if st.Leader == k.id {
					return fmt.Errorf("the victim %s leads; it should not", k.id)
				}
				w := c.tr.watchKeys(c.tr.keysOf(k.id), k.id)
				t0 := c.killChild(k)
				last, err := c.tr.wait(ctx, w, 3*ttl+10*time.Second)
				if err != nil {
					return err
				}
				r.Samples = append(r.Samples, ms(last.Sub(t0)))
				if _, err := c.waitConverged(ctx, M-1, converge); err != nil {
					return err
				}
			}
			r.withTarget("p99", ms(ttl)+250)
			r.Note = fmt.Sprintf("%d keys moved per run; %s; p99 is the maximum below 100 runs", n/M, tm)
			b.annotate(mk, r)
			b.add(r)
			return b.checkOverlaps(c)
		}()
		b.failed("2 node crash", fmt.Sprintf("node TTL %v, 12 keys, M=3", ttl), err)
	}
	return nil
}

// leader: the leader process is SIGKILLed (a fresh service per run, so that
// the child leads); then the leader stops gracefully, repeatedly.
func (b *bench) leader(ctx context.Context) error {
	const n, M = 12, 3
	for _, ttl := range b.cfg.leaderTTLs {
		runs := b.runs(choose(ttl <= time.Second, 10, 7))
		tm := timingFor(ttl)
		cs := fmt.Sprintf("lock TTL %v, 12 keys, M=3", ttl)
		newLeader := &Result{Scenario: "3 leader crash", Case: cs, Metric: "SIGKILL → new leader", Unit: "ms"}
		keysLive := &Result{Scenario: "3 leader crash", Case: cs, Metric: "SIGKILL → its keys live elsewhere", Unit: "ms"}
		mk := b.mark()
		for range runs {
			c := b.newCluster("leader", n, tm)
			err := func() error {
				defer c.close(ctx)
				k, err := c.startChild(ctx)
				if err != nil {
					return err
				}
				if err := c.waitLeaderIs(ctx, k.id, 10*time.Second); err != nil {
					return err
				}
				if _, err := c.startLocal(ctx, M-1); err != nil {
					return err
				}
				if _, err := c.waitConverged(ctx, M, converge); err != nil {
					return err
				}
				w := c.tr.watchKeys(c.tr.keysOf(k.id), k.id)
				t0 := c.killChild(k)
				_, tl, err := c.waitLeader(ctx, "", 3*ttl+10*time.Second)
				if err != nil {
					return err
				}
				last, err := c.tr.wait(ctx, w, 3*ttl+10*time.Second)
				if err != nil {
					return err
				}
				newLeader.Samples = append(newLeader.Samples, ms(tl.Sub(t0)))
				keysLive.Samples = append(keysLive.Samples, ms(last.Sub(t0)))
				return b.checkOverlaps(c)
			}()
			if b.failed("3 leader crash", cs, err) {
				break
			}
		}
		for _, r := range []*Result{newLeader, keysLive} {
			if len(r.Samples) == 0 {
				continue
			}
			r.withFloor("TTL", ms(ttl)).withTarget("p99", ms(ttl)+250)
			r.Note = fmt.Sprintf("%s; new leader seen by polling IsLeader every 1 ms; p99 is the maximum below 100 runs", tm)
			b.annotate(mk, r)
			b.add(r)
		}
	}

	b.failed("3 leader stop", "12 keys, M=3", b.leaderStop(ctx))
	return nil
}

// leaderStop: the leader of three stops gracefully, repeatedly; a new node
// replaces it each time.
func (b *bench) leaderStop(ctx context.Context) error {
	const n, M = 12, 3
	tm := timingFor(b.cfg.ttl)
	c := b.newCluster("leaderstop", n, tm)
	defer c.close(ctx)
	mk := b.mark()
	if _, err := c.startLocal(ctx, M); err != nil {
		return err
	}
	if _, err := c.waitConverged(ctx, M, converge); err != nil {
		return err
	}
	cs := "12 keys, M=3"
	newLeader := &Result{Scenario: "3 leader stop", Case: cs, Metric: "Stop → new leader", Unit: "ms"}
	keysLive := &Result{Scenario: "3 leader stop", Case: cs, Metric: "Stop → its keys live elsewhere", Unit: "ms"}
	for range b.runs(b.cfg.leaderStops) {
		l := c.leaders()
		if len(l) != 1 {
			return fmt.Errorf("%d leaders in process, want 1", len(l))
		}
		old := l[0]
		w := c.tr.watchKeys(c.tr.keysOf(old), old)
		stopped := make(chan error, 1)
		t0 := time.Now()
		go func() { stopped <- c.stopLocal(ctx, old) }()
		_, tl, err := c.waitLeader(ctx, old, 10*time.Second)
		if err != nil {
			return err
		}
		if err := <-stopped; err != nil {
			return err
		}
		last, err := c.tr.wait(ctx, w, 30*time.Second)
		if err != nil {
			return err
		}
		newLeader.Samples = append(newLeader.Samples, ms(tl.Sub(t0)))
		keysLive.Samples = append(keysLive.Samples, ms(last.Sub(t0)))
		if _, err := c.startLocal(ctx, 1); err != nil {
			return err
		}
		if _, err := c.waitConverged(ctx, M, converge); err != nil {
			return err
		}
	}
	newLeader.withTarget("p50", 20)
	newLeader.Note = fmt.Sprintf("%s; new leader seen by polling IsLeader every 1 ms", tm)
	b.annotate(mk, newLeader)
	b.add(newLeader)
	b.add(keysLive)
	return b.checkOverlaps(c)
}

// cold: M nodes start concurrently on an empty service; timed from the first
// Start to the last key's first create.
func (b *bench) cold(ctx context.Context) error {
	tm := timingFor(b.cfg.coldTTL)
	for _, sz := range b.cfg.cold {
		runs := b.runs(choose(sz.Keys <= 1000, 5, 3))
		cs := sz.String()
		total := &Result{Scenario: "4 cold start", Case: cs, Metric: fmt.Sprintf("first Start → every key live (incl. %v grace)", tm.TTL), Unit: "ms"}
		after := &Result{Scenario: "4 cold start", Case: cs, Metric: "grace end → every key live", Unit: "ms"}
		starts := &Result{Scenario: "4 cold start", Case: cs, Metric: "first Start → every Start returned", Unit: "ms"}
		var retries, regraces int64
		mk := b.mark()
		for range runs {
			c := b.newCluster("cold", sz.Keys, tm)
			err := func() error {
				defer c.close(ctx)
				runtime.GC()
				w := c.tr.watchKeys(c.keys, "")
				firstGrace := c.watchGrace(ctx)
				t0 := time.Now()
				if _, err := c.startLocal(ctx, sz.Nodes); err != nil {
					return err
				}
				starts.Samples = append(starts.Samples, ms(time.Since(t0)))
				last, err := c.tr.wait(ctx, w, converge)
				if err != nil {
					return err
				}
				// A first-ever start has no record in Redis: it waits one
				// node TTL ("new"). Nothing after it may begin another: the
				// record is intact even if every node fenced at once.
				grace := <-firstGrace
				if grace.IsZero() {
					return errors.New("no grace period recorded in Redis")
				}
				if _, why, err := c.graceRecord(ctx); err != nil {
					return err
				} else if why != "new" {
					return fmt.Errorf("the first start's grace period is %q, want \"new\"", why)
				}
				if g, err := c.graceEnd(ctx); err == nil && !g.Equal(grace) {
					regraces++
				}
				total.Samples = append(total.Samples, ms(last.Sub(t0)))
				after.Samples = append(after.Samples, ms(last.Sub(grace)))
				if _, err := c.waitConverged(ctx, sz.Nodes, converge); err != nil {
					return err
				}
				retries += c.retries.Load()
				return b.checkOverlaps(c)
			}()
			if b.failed("4 cold start", cs, err) {
				break
			}
		}
		if len(total.Samples) == 0 {
			continue
		}
		starts.Note = fmt.Sprintf("%d Starts failed (join timed out) and were retried in all %d runs", retries, runs)
		if regraces > 0 {
			after.Note = fmt.Sprintf("; in %d runs a second grace period began after the first (it should not: the record is intact)", regraces)
		}
		total.withFloor("grace", ms(tm.TTL))
		switch sz {
		case size{100, 10000}:
			total.withTarget("median", 2000)
			after.withTarget("median", 2000)
		case size{100, 100000}:
			total.withTarget("median", 10000)
			after.withTarget("median", 10000)
		}
		total.Note = fmt.Sprintf("%s; all nodes in one process, started concurrently, each with its own connections", tm)
		after.Note = "the first grace period's end, read from Redis (the service's membership record at :nodes, field grace: server time in ms)" + after.Note
		b.annotate(mk, total)
		b.add(total)
		b.add(after)
		b.add(starts)
	}
	return nil
}

// watchGrace polls the service's grace key every 2 ms from before the first
// Start until it appears, and sends the end of that first grace period
// (zero if the context ends first).
func (c *cluster) watchGrace(ctx context.Context) <-chan time.Time {
	out := make(chan time.Time, 1)
	go func() {
		defer close(out)
		for deadline := time.Now().Add(converge); ctx.Err() == nil && time.Now().Before(deadline); {
			if g, err := c.graceEnd(ctx); err == nil {
				out <- g
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return out
}

// graceEnd reads when the grace period ends, from Redis.
func (c *cluster) graceEnd(ctx context.Context) (time.Time, error) {
	v, err := c.b.admin.Do(ctx, c.b.admin.B().Hget().Key("dim:{"+c.service+"}:nodes").Field("grace").Build()).ToString()
	if err != nil {
		return time.Time{}, fmt.Errorf("read grace: %w", err)
	}
	msec, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("read grace %q: %w", v, err)
	}
	return time.UnixMilli(msec), nil
}

// steadyDetail is the breakdown kept in the JSON for one steady-state size.
type steadyDetail struct {
	Timing         timing         `json:"timing"`
	WindowSeconds  float64        `json:"window_s"`
	Commands       []commandCount `json:"commands_whole_window"`
	DataBytes      int64          `json:"redis_data_bytes"`
	DataKeys       int            `json:"redis_keys"`
	UsedMemoryGrow int64          `json:"redis_used_memory_growth_bytes"`
	HeapGrow       uint64         `json:"heap_growth_bytes"`
}

// steady: M nodes run N keys with dim's default timings; Redis and this
// process are measured over a window split in three.
func (b *bench) steady(ctx context.Context) error {
	tm := timingFor(b.cfg.steadyTTL)
	medians := map[size]float64{}
	heaps := map[size]float64{} // bytes per node
	for _, sz := range b.cfg.steady {
		cs := sz.String()
		c := b.newCluster("steady", sz.Keys, tm)
		mk := b.mark()
		err := func() error {
			defer c.close(ctx)
			before, err := snapshot(ctx, b.admin)
			if err != nil {
				return err
			}
			runtime.GC()
			var ms0 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			if _, err := c.startLocal(ctx, sz.Nodes); err != nil {
				return err
			}
			if _, err := c.waitConverged(ctx, sz.Nodes, converge); err != nil {
				return err
			}
			// Let the start's rebalances and first observations pass.
			time.Sleep(tm.TTL)
			runtime.GC()
			var ms1 runtime.MemStats
			runtime.ReadMemStats(&ms1)
			if err := b.heapProfile(); err != nil {
				return err
			}
			data, nkeys, err := serviceMemory(ctx, b.admin, c.service)
			if err != nil {
				return err
			}
			mid, err := snapshot(ctx, b.admin)
			if err != nil {
				return err
			}
			cmds := &Result{Scenario: "5 steady state", Case: cs, Metric: "Redis commands/s", Unit: "cmd/s"}
			evals := &Result{Scenario: "5 steady state", Case: cs, Metric: "script calls/s (EVALSHA)", Unit: "call/s"}
			perNode := &Result{Scenario: "5 steady state", Case: cs, Metric: "Redis commands/s per node", Unit: "cmd/s"}
			rcpu := &Result{Scenario: "5 steady state", Case: cs, Metric: "Redis CPU", Unit: "% core"}
			pcpu := &Result{Scenario: "5 steady state", Case: cs, Metric: "dim process CPU per 10k instances", Unit: "% core"}
			prev, prevCPU := mid, cpuTime()
			first := prev
			for range 3 {
				time.Sleep(b.cfg.steadyWindow / 3)
				s, err := snapshot(ctx, b.admin)
				if err != nil {
					return err
				}
				cpu := cpuTime()
				secs := s.at.Sub(prev.at).Seconds()
				total, by := commandDelta(prev, s)
				cmds.Samples = append(cmds.Samples, float64(total)/secs)
				perNode.Samples = append(perNode.Samples, float64(total)/secs/float64(sz.Nodes))
				var ev float64
				for _, cc := range by {
					if cc.Name == "evalsha" || cc.Name == "eval" {
						ev += cc.PerS
					}
				}
				evals.Samples = append(evals.Samples, ev)
				rcpu.Samples = append(rcpu.Samples, 100*(s.cpu-prev.cpu)/secs)
				pcpu.Samples = append(pcpu.Samples, 100*(cpu-prevCPU).Seconds()/secs/(float64(sz.Keys)/10000))
				prev, prevCPU = s, cpu
			}
			_, by := commandDelta(first, prev)
			if len(by) > 8 {
				by = by[:8]
			}
			perKey := &Result{Scenario: "5 steady state", Case: cs, Metric: "Redis data memory per key", Unit: "B",
				Samples: []float64{float64(data) / float64(sz.Keys)}}
			perKey.withTarget("median", 1024)
			perKey.Note = fmt.Sprintf("MEMORY USAGE summed over the service's %d Redis keys: %.1f MiB", nkeys, float64(data)/(1<<20))
			growth := mid.memory - before.memory
			used := &Result{Scenario: "5 steady state", Case: cs, Metric: "Redis used_memory growth per node", Unit: "KiB",
				Samples: []float64{float64(growth) / float64(sz.Nodes) / 1024}}
			used.Note = fmt.Sprintf("%.1f MiB in all, data plus ~3 connections per node; %.0f B per key", float64(growth)/(1<<20), float64(growth)/float64(sz.Keys))
			heap := &Result{Scenario: "5 steady state", Case: cs, Metric: "dim process heap per 10k instances", Unit: "MiB",
				Samples: []float64{float64(int64(ms1.HeapAlloc)-int64(ms0.HeapAlloc)) / (1 << 20) / (float64(sz.Keys) / 10000)}}
			grown := float64(int64(ms1.HeapAlloc) - int64(ms0.HeapAlloc))
			heap.Note = fmt.Sprintf("live heap after GC, %d nodes in one process: %.1f MiB in all", sz.Nodes, grown/(1<<20))
			heapNode := &Result{Scenario: "5 steady state", Case: cs, Metric: "dim process heap per node", Unit: "MiB",
				Samples: []float64{grown / (1 << 20) / float64(sz.Nodes)}}
			heaps[sz] = grown / float64(sz.Nodes)
			cmds.Note = fmt.Sprintf("%s; INFO commandstats (commands run inside scripts included) over 3 windows of %v", tm, b.cfg.steadyWindow/3)
			pcpu.Note = fmt.Sprintf("getrusage of this process, which runs all %d nodes: %.1f%% of a core in all (median window)",
				sz.Nodes, median(pcpu.Samples)*float64(sz.Keys)/10000)
			b.annotate(mk, cmds)
			for _, r := range []*Result{cmds, perNode, evals, rcpu, pcpu, perKey, used, heap, heapNode} {
				b.add(r)
			}
			medians[sz] = cmds.Median
			b.details["steady "+cs] = steadyDetail{Timing: tm, WindowSeconds: prev.at.Sub(first.at).Seconds(),
				Commands: by, DataBytes: data, DataKeys: nkeys, UsedMemoryGrow: growth,
				HeapGrow: uint64(max(int64(ms1.HeapAlloc)-int64(ms0.HeapAlloc), 0))}
			return b.checkOverlaps(c)
		}()
		b.failed("5 steady state", cs, err)
	}
	// Independence of key count: the same nodes, the most and fewest keys.
	var lo, hi *size
	for _, sz := range b.cfg.steady {
		for _, other := range b.cfg.steady {
			if sz.Nodes == other.Nodes && sz.Keys > other.Keys && (hi == nil || sz.Keys > hi.Keys) {
				hi, lo = &sz, &other
			}
		}
	}
	if hi != nil && medians[*hi] > 0 && medians[*lo] > 0 {
		r := &Result{Scenario: "5 steady state", Case: fmt.Sprintf("%d nodes, %s vs %s keys", hi.Nodes, count(hi.Keys), count(lo.Keys)),
			Metric: "commands/s ratio", Unit: "×", Samples: []float64{medians[*hi] / medians[*lo]}}
		r.TargetStat, r.TargetMin, r.TargetMax = "median", 0.9, 1.1
		r.Target = "0.9 – 1.1 ×"
		r.Note = "target: commands/s independent of key count, read as within 10%"
		b.add(r)
		slope := &Result{Scenario: "5 steady state", Case: r.Case, Metric: "heap per config per node (slope)", Unit: "B",
			Samples: []float64{(heaps[*hi] - heaps[*lo]) / float64(hi.Keys-lo.Keys)}}
		slope.Note = "every node holds every config; the rest of a node's heap is fixed (mostly rueidis's 1 MiB of buffers per connection)"
		b.add(slope)
	}
	return nil
}

// heapProfile writes the -memprofile heap profile once, at the first
// steady-state measurement, while the nodes run.
func (b *bench) heapProfile() error {
	if b.cfg.memProfile == "" || b.heapWritten {
		return nil
	}
	b.heapWritten = true
	f, err := os.Create(b.cfg.memProfile)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.WriteHeapProfile(f)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// churn: every node of M, one by one, stops and is replaced by a new node;
// each step waits until the service has converged again.
func (b *bench) churn(ctx context.Context) error {
	tm := timingFor(b.cfg.churnTTL)
	for _, sz := range b.cfg.churn {
		runs := b.runs(choose(sz.Keys <= 100, 5, 3))
		cs := sz.String()
		moves := &Result{Scenario: "6 rolling restart", Case: cs, Metric: "moves", Unit: "keys"}
		excess := &Result{Scenario: "6 rolling restart", Case: cs, Metric: "moves ÷ minimum", Unit: "×"}
		total := &Result{Scenario: "6 rolling restart", Case: cs, Metric: "total time", Unit: "ms"}
		step := &Result{Scenario: "6 rolling restart", Case: cs, Metric: "one step: Stop → new node converged", Unit: "ms"}
		var bound int
		mk := b.mark()
		for range runs {
			c := b.newCluster("churn", sz.Keys, tm)
			err := func() error {
				defer c.close(ctx)
				if _, err := c.startLocal(ctx, sz.Nodes); err != nil {
					return err
				}
				if _, err := c.waitConverged(ctx, sz.Nodes, converge); err != nil {
					return err
				}
				creates0, _ := c.tr.counts()
				bound = 0
				t0 := time.Now()
				for _, id := range c.localIDs() {
					ts := time.Now()
					// The leaver's keys must move, and the newcomer must get
					// at least ⌊N/M⌋ for the loads to be even again.
					bound += len(c.tr.keysOf(id)) + sz.Keys/sz.Nodes
					if err := c.stopLocal(ctx, id); err != nil {
						return err
					}
					if _, err := c.waitConverged(ctx, sz.Nodes-1, converge); err != nil {
						return err
					}
					if _, err := c.startLocal(ctx, 1); err != nil {
						return err
					}
					if _, err := c.waitConverged(ctx, sz.Nodes, converge); err != nil {
						return err
					}
					step.Samples = append(step.Samples, ms(time.Since(ts)))
				}
				total.Samples = append(total.Samples, ms(time.Since(t0)))
				creates, _ := c.tr.counts()
				moves.Samples = append(moves.Samples, float64(creates-creates0))
				excess.Samples = append(excess.Samples, float64(creates-creates0)/float64(bound))
				return b.checkOverlaps(c)
			}()
			if b.failed("6 rolling restart", cs, err) {
				break
			}
		}
		if len(total.Samples) == 0 {
			continue
		}
		moves.Note = fmt.Sprintf("minimum %d: each leaver's keys plus ⌊N/M⌋ for each newcomer", bound)
		total.Note = fmt.Sprintf("%s; M steps, each: Stop, wait until converged on M−1 nodes, Start a new node, wait until converged on M (status polled every few ms)", tm)
		b.annotate(mk, total)
		for _, r := range []*Result{moves, excess, total, step} {
			b.add(r)
		}
	}
	return nil
}

// checkOverlaps fails the scenario if any key ever ran on two nodes at once,
// as the nodes' callbacks reported them.
func (b *bench) checkOverlaps(c *cluster) error {
	if _, o := c.tr.counts(); o > 0 {
		return fmt.Errorf("%s: %d creates of a key still live on another node", c.service, o)
	}
	return nil
}

// waitLeaderIs waits until Redis records node as the live leader.
func (c *cluster) waitLeaderIs(ctx context.Context, node string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := c.status(ctx)
		if err == nil && st.Leader == node && st.LeaderLive {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not lead after %v", node, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func choose[T any](cond bool, a, b T) T {
	if cond {
		return a
	}
	return b
}
