package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/go-dim/dim"
)

// gaps records, per key, when its old instance stopped and its new one
// began: the time the key was dark during a handoff.
type gaps struct {
	mu   sync.Mutex
	down map[string]time.Time
	up   map[string]time.Time
}

func (g *gaps) stopped(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.down[key] = time.Now()
}

func (g *gaps) began(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.up[key] = time.Now()
}

// of returns the dark gaps of keys, in ms, once every one has begun again.
func (g *gaps) of(keys []string) ([]float64, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []float64
	for _, k := range keys {
		d, okd := g.down[k]
		u, oku := g.up[k]
		if !okd || !oku || u.Before(d) {
			return nil, false
		}
		out = append(out, ms(u.Sub(d)))
	}
	return out, true
}

// prepare: a node holding 2n keys, each of whose instances takes 500 ms to
// start (a login), is joined by a second node, so that n keys move; timed per
// moved key from the old instance stopped to the new one begun. Without
// WithPrepare the new owner starts the instance after the old one stopped;
// with it, it prepares first and activates after the claim.
func (b *bench) prepare(ctx context.Context) error {
	const login = 500 * time.Millisecond
	n := b.cfg.prepareKeys
	tm := timingFor(b.cfg.ttl)
	for _, with := range []bool{false, true} {
		cs := fmt.Sprintf("%d keys move, start %v, %s", n, login, choose(with, "WithPrepare", "createInstance only"))
		dark := &Result{Scenario: "10 make-before-break", Case: cs, Metric: "dark gap per moved key", Unit: "ms"}
		var err error
		for range b.runs(3) {
			if err = b.prepareOnce(ctx, tm, n, login, with, dark); err != nil {
				break
			}
		}
		if b.failed("10 make-before-break", cs, err) {
			continue
		}
		if with {
			dark.withTarget("p50", 5)
		} else {
			dark.withFloor("start", ms(login))
		}
		dark.Note = fmt.Sprintf("%s; a join moves %d of %d keys; the gap runs from the old instance's disconnect to the new one's "+
			"activate (or createInstance returning)", tm, n, 2*n)
		b.add(dark)
	}
	return nil
}

func (b *bench) prepareOnce(ctx context.Context, tm timing, n int, login time.Duration, with bool, dark *Result) error {
	c := b.newCluster("prepare", 2*n, tm)
	defer c.close(ctx)
	g := &gaps{down: map[string]time.Time{}, up: map[string]time.Time{}}
	start := func(id string, first bool) error {
		create := func(_ context.Context, key string) (string, error) {
			if !first || with {
				time.Sleep(login)
			}
			g.began(key)
			c.tr.created(id, key, time.Now())
			return key, nil
		}
		if with && first {
			create = func(_ context.Context, key string) (string, error) {
				g.began(key)
				c.tr.created(id, key, time.Now())
				return key, nil
			}
		}
		var extra []dim.Option
		if with {
			extra = append(extra, dim.WithPrepare(
				func(context.Context, string) (string, error) { time.Sleep(login); return "", nil },
				func(ctx context.Context, _ string) error {
					key, _ := dim.InstanceKey(ctx)
					g.began(key)
					c.tr.created(id, key, time.Now())
					return nil
				}, 10*time.Second))
		}
		m, err := newManagerWith(b.addr, c.service, id, c.keys, tm, slog.New(b.warns), create,
			func(ctx context.Context, key string) error {
				if k, ok := dim.InstanceKey(ctx); ok {
					key = k
				}
				if key == "" {
					return nil // a prepared instance disposed of
				}
				g.stopped(key)
				c.tr.disconnected(id, key)
				return nil
			}, extra...)
		if err != nil {
			return err
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := m.Start(sctx); err != nil {
			return err
		}
		c.mu.Lock()
		c.local[id] = m
		c.mu.Unlock()
		return nil
	}
	if err := start(c.newID(), true); err != nil {
		return err
	}
	if _, err := c.waitConverged(ctx, 1, converge); err != nil {
		return err
	}
	if err := start(c.newID(), false); err != nil {
		return err
	}
	if _, err := c.waitConverged(ctx, 2, converge); err != nil {
		return err
	}
	var moved []string
	for _, id := range c.localIDs()[1:] {
		moved = append(moved, c.tr.keysOf(id)...)
	}
	slices.Sort(moved)
	samples, ok := g.of(moved)
	if !ok || len(samples) != n {
		return fmt.Errorf("%d of %d moved keys measured", len(samples), n)
	}
	dark.Samples = append(dark.Samples, samples...)
	return b.checkOverlaps(c)
}
