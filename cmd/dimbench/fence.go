package main

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-dim/dim/internal/faultproxy"
)

// fenceLog records, for the node that fences, when its instances' contexts
// were cancelled and when its disconnect hooks were called and returned.
type fenceLog struct {
	mu          sync.Mutex
	cancelled   int
	firstCancel time.Time
	called      int
	lastCalled  time.Time
	returned    int
	lastReturn  time.Time
	allReturned chan struct{} // closed when want hooks have returned
	want        int
}

func (f *fenceLog) cancel(at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancelled++
	if f.firstCancel.IsZero() || at.Before(f.firstCancel) {
		f.firstCancel = at
	}
}

func (f *fenceLog) call(at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.called++
	if at.After(f.lastCalled) {
		f.lastCalled = at
	}
}

func (f *fenceLog) ret(at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.returned++
	if at.After(f.lastReturn) {
		f.lastReturn = at
	}
	if f.returned == f.want {
		close(f.allReturned)
	}
}

func (f *fenceLog) snapshot() (cancelled, called, returned int, firstCancel, lastCalled, lastReturn time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cancelled, f.called, f.returned, f.firstCancel, f.lastCalled, f.lastReturn
}

// fenceWatched is how many instance contexts the fence scenario watches for
// the fence's beginning.
const fenceWatched = 16

// fence: one node runs n instances whose disconnect hook takes a fixed time,
// and its link to Redis is cut (a fault proxy drops every byte both ways),
// so that it fences itself at its lease's deadline. Timed from the fence,
// the first instance context cancelled, to the last disconnect hook
// returned. A second node, started right after the cut, takes the keys over
// once the first node's lease has ended in Redis; no key may run on both.
func (b *bench) fence(ctx context.Context) error {
	tm := timingFor(b.cfg.fenceTTL)
	hook := b.cfg.fenceHook
	medians := map[int]float64{}
	for _, n := range b.cfg.fence {
		runs := b.runs(choose(n <= 1000, 7, 5))
		cs := fmt.Sprintf("%s instances, hook %v", count(n), hook)
		done := &Result{Scenario: "8 fence", Case: cs, Metric: "fence → last disconnect returned", Unit: "ms"}
		called := &Result{Scenario: "8 fence", Case: cs, Metric: "fence → last disconnect called", Unit: "ms"}
		cut := &Result{Scenario: "8 fence", Case: cs, Metric: "cut → fence", Unit: "ms"}
		takeover := &Result{Scenario: "8 fence", Case: cs, Metric: "fence → every key live on the other node", Unit: "ms"}
		var err error
		for range runs {
			if err = b.fenceOnce(ctx, tm, n, done, called, cut, takeover); err != nil {
				break
			}
		}
		if b.failed("8 fence", cs, err) || len(done.Samples) == 0 {
			continue
		}
		done.withFloor("hook", ms(hook))
		called.withFloor("hook", ms(hook))
		cut.withFloor("TTL − margin", ms(tm.TTL-tm.TTL/5))
		takeover.withFloor("margin", ms(tm.TTL/5))
		done.Note = fmt.Sprintf("%s, fence margin %v; every hook sleeps %v; the fence begins with the first instance context cancelled "+
			"(context.AfterFunc on %d of them); before, the fence disconnected from the node loop 16 at a time: ⌈n/16⌉ × hook = %s ms here",
			tm, tm.TTL/5, hook, fenceWatched, num(float64((n+15)/16)*ms(hook)))
		late := 0
		for _, v := range done.Samples {
			if v > ms(tm.TTL/5) {
				late++
			}
		}
		if late > 0 {
			done.Note += fmt.Sprintf("; in %d of %d runs the last hook returned after the fence margin", late, len(done.Samples))
		}
		called.Note = "the last disconnect hook's first line"
		cut.Note = "the proxy drops every byte both ways; the node fences when TTL − margin has passed since it sent its last confirmed renewal"
		takeover.Note = "the other node, started right after the cut, claims the keys once the fenced node's lease has ended in Redis and the leader lock has passed to it"
		for _, r := range []*Result{done, called, cut, takeover} {
			b.add(r)
		}
		medians[n] = done.Median
	}
	lo, hi := 0, 0
	for n := range medians {
		if lo == 0 || n < lo {
			lo = n
		}
		hi = max(hi, n)
	}
	if hi > lo {
		r := &Result{Scenario: "8 fence", Case: fmt.Sprintf("%s vs %s instances", count(hi), count(lo)),
			Metric: "fence → last disconnect returned, ratio", Unit: "×", Samples: []float64{medians[hi] / medians[lo]}}
		r.Note = fmt.Sprintf("medians; %d× the instances", hi/lo)
		b.add(r)
	}
	return nil
}

func (b *bench) fenceOnce(ctx context.Context, tm timing, n int, done, called, cutR, takeover *Result) error {
	proxy, err := faultproxy.New(b.addr)
	if err != nil {
		return err
	}
	defer proxy.Close()
	c := b.newCluster("fence", n, tm)
	defer c.close(ctx)
	defer proxy.Heal() // before the nodes stop

	hook := b.cfg.fenceHook
	fl := &fenceLog{allReturned: make(chan struct{}), want: n}
	id := c.newID()
	// Every instance's context is a child of the lease's, and cancelling
	// the lease cancels them all in one pass; watching a few of them sees
	// the fence begin without adding a goroutine per instance to the work
	// measured.
	var watched atomic.Int32
	m, err := newManagerWith(proxy.Addr(), c.service, id, c.keys, tm, slog.New(b.warns),
		func(ictx context.Context, key string) (string, error) {
			c.tr.created(id, key, time.Now())
			if watched.Add(1) <= fenceWatched {
				context.AfterFunc(ictx, func() { fl.cancel(time.Now()) })
			}
			return key, nil
		},
		func(_ context.Context, key string) error {
			fl.call(time.Now())
			time.Sleep(hook)
			fl.ret(time.Now())
			c.tr.disconnected(id, key)
			return nil
		})
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = m.Start(sctx)
	cancel()
	if err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	c.mu.Lock()
	c.local[id] = m
	c.mu.Unlock()
	if _, err := c.waitConverged(ctx, 1, converge); err != nil {
		return err
	}
	if _, ncalled, _, _, _, _ := fl.snapshot(); ncalled != 0 {
		return fmt.Errorf("%d disconnects before the cut", ncalled)
	}
	w := c.tr.watchKeys(c.keys, id)
	runtime.GC()
	t0 := time.Now()
	proxy.Cut(faultproxy.Both)
	if _, err := c.startLocal(ctx, 1); err != nil {
		return err
	}
	timeout := 3*tm.TTL + 10*time.Second
	select {
	case <-fl.allReturned:
	case <-time.After(timeout):
		_, ncalled, nret, _, _, _ := fl.snapshot()
		return fmt.Errorf("after %v, %d of %d disconnects called, %d returned", timeout, ncalled, n, nret)
	case <-ctx.Done():
		return ctx.Err()
	}
	last, err := c.tr.wait(ctx, w, converge)
	if err != nil {
		return err
	}
	cancelled, ncalled, _, first, lastCalled, lastReturn := fl.snapshot()
	switch {
	case first.IsZero() || first.Before(t0) || cancelled < min(n, fenceWatched):
		return fmt.Errorf("%d watched instance contexts ended, the first %v after the cut", cancelled, first.Sub(t0))
	case ncalled != n:
		return fmt.Errorf("%d disconnects called, want %d", ncalled, n)
	}
	done.Samples = append(done.Samples, ms(lastReturn.Sub(first)))
	called.Samples = append(called.Samples, ms(lastCalled.Sub(first)))
	cutR.Samples = append(cutR.Samples, ms(first.Sub(t0)))
	takeover.Samples = append(takeover.Samples, ms(last.Sub(first)))
	return b.checkOverlaps(c)
}
