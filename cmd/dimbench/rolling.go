package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-dim/dim"
)

// rolling: a rolling update of all M nodes, as Kubernetes runs one, with
// dim's default proportions of timings. Three strategies:
//
//   - surge (a Deployment with maxSurge 1, maxUnavailable 0): a new node
//     starts; once it is ready (m.Ready, which Start returning implies) and
//     the orchestrator has reacted (-rolling-pause: a probe period, the
//     controller, the kubelet), an old node stops; once the service has
//     converged, the next step. A pod takes seconds to be scheduled and
//     started while dim converges in milliseconds, so each step finds the
//     service settled.
//   - surge, back to back: no pause and no waiting for the service or for
//     the old node's Stop between steps, as if the orchestrator reacted at
//     once: joins and leaves overlap, and the leader places them together.
//   - in place (a StatefulSet, highest ordinal first): a node stops; once
//     Stop has returned and the pause has passed, a new Manager with the
//     same node ID (the pod name) starts; once it is ready and the service
//     has converged, the next.
//
// Measured: keys moved (creates during the update), per key, and the
// longest time any key ran nowhere (from its disconnect on one node to its
// create on the next).
func (b *bench) rolling(ctx context.Context) error {
	tm := timingFor(b.cfg.rollingTTL)
	strategies := []rollingStrategy{
		{name: "surge (Deployment, maxSurge 1, maxUnavailable 0)", settle: true},
		{name: "surge, back to back"},
		{name: "in place (StatefulSet)", inPlace: true, settle: true},
		{name: "surge, WithJoinHold", settle: true, holds: true},
		{name: "in place, WithRestartHold", inPlace: true, settle: true, holds: true},
	}
	for _, sz := range b.cfg.rolling {
		runs := b.runs(choose(sz.Keys <= 100, 5, 3))
		for _, st := range strategies {
			cs := fmt.Sprintf("%s, %s", sz, st.name)
			r := func(metric, unit string) *Result {
				return &Result{Scenario: "9 rolling update", Case: cs, Metric: metric, Unit: unit}
			}
			moves, perKey := r("moves", "keys"), r("moves per key", "×")
			dark, step := r("longest time a key ran nowhere", "ms"), r("one step, less the pause: first call → converged", "ms")
			mk := b.mark()
			for range runs {
				err := b.rollingOnce(ctx, tm, sz, st, moves, perKey, dark, step)
				if b.failed("9 rolling update", cs, err) {
					break
				}
			}
			if len(moves.Samples) == 0 {
				continue
			}
			moves.Note = fmt.Sprintf("creates during the update of %d nodes; a join takes about N/(M+1) = %d keys, a leave hands on its own",
				sz.Nodes, sz.Keys/(sz.Nodes+1))
			dark.Note = fmt.Sprintf("%s; over every key, from its disconnect on one node to its create on the next", tm)
			switch {
			case st.inPlace:
				step.Note = fmt.Sprintf("Stop, a pause of %v (not counted), Start with the same ID, Ready, converged", b.cfg.rollingPause)
			case st.settle:
				step.Note = fmt.Sprintf("Start a new node, Ready, a pause of %v (not counted), Stop an old one, converged", b.cfg.rollingPause)
			default:
				step.Note = "the whole update: every step Starts a new node, waits for Ready and tells an old one to Stop without waiting; then converged"
			}
			b.annotate(mk, dark)
			for _, res := range []*Result{moves, perKey, dark, step} {
				b.add(res)
			}
		}
	}
	return nil
}

// rollingStrategy is one way an orchestrator replaces a service's nodes.
type rollingStrategy struct {
	name    string
	inPlace bool // stop, then start with the same ID; else start a new ID, then stop an old one
	settle  bool // wait until the service converged after each step
	holds   bool // with a restart hold (in place) or a join hold (surge)
}

// rolloutHold is the hold the holds strategies give: longer than a step.
const rolloutHold = 30 * time.Second

func (b *bench) rollingOnce(ctx context.Context, tm timing, sz size, st rollingStrategy, moves, perKey, dark, step *Result) error {
	c := b.newCluster("rolling", sz.Keys, tm)
	defer c.close(ctx)
	if st.holds && st.inPlace {
		c.opts = []dim.Option{dim.WithRestartHold(rolloutHold)}
	}
	if _, err := c.startLocal(ctx, sz.Nodes); err != nil {
		return err
	}
	if _, err := c.waitConverged(ctx, sz.Nodes, converge); err != nil {
		return err
	}
	if st.holds && !st.inPlace {
		c.mu.Lock()
		c.opts = []dim.Option{dim.WithJoinHold(rolloutHold)}
		c.mu.Unlock()
	}
	creates0, _ := c.tr.counts()
	c.tr.resetDark()
	old := c.localIDs()
	pause := choose(st.settle, b.cfg.rollingPause, 0)
	t0 := time.Now()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for i, id := range old {
		ts := time.Now()
		if st.inPlace {
			id = old[len(old)-1-i]
			if err := c.stopLocal(ctx, id); err != nil {
				return fmt.Errorf("stop %s: %w", id, err)
			}
			sleepCtx(ctx, pause)
			if _, err := c.startIDs(ctx, []string{id}); err != nil {
				return err
			}
			if err := c.waitReady(ctx, id); err != nil {
				return err
			}
		} else {
			ids, err := c.startLocal(ctx, 1)
			if err != nil {
				return err
			}
			if err := c.waitReady(ctx, ids[0]); err != nil {
				return err
			}
			if st.settle {
				sleepCtx(ctx, pause)
				if err := c.stopLocal(ctx, id); err != nil {
					return fmt.Errorf("stop %s: %w", id, err)
				}
			} else {
				wg.Go(func() {
					if err := c.stopLocal(ctx, id); err != nil {
						mu.Lock()
						errs = append(errs, fmt.Errorf("stop %s: %w", id, err))
						mu.Unlock()
					}
				})
			}
		}
		if st.settle {
			if _, err := c.waitConverged(ctx, sz.Nodes, converge); err != nil {
				return err
			}
			step.Samples = append(step.Samples, ms(time.Since(ts)-pause))
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if _, err := c.waitConverged(ctx, sz.Nodes, converge); err != nil {
		return err
	}
	if !st.settle {
		step.Samples = append(step.Samples, ms(time.Since(t0)))
	}
	creates, _ := c.tr.counts()
	moves.Samples = append(moves.Samples, float64(creates-creates0))
	perKey.Samples = append(perKey.Samples, float64(creates-creates0)/float64(sz.Keys))
	longest, open := c.tr.darkest()
	if open > 0 {
		return fmt.Errorf("%d keys still dark after the update converged", open)
	}
	dark.Samples = append(dark.Samples, ms(longest))
	return b.checkOverlaps(c)
}

// waitReady polls an in-process node until it says it is ready, as a
// readiness probe would.
func (c *cluster) waitReady(ctx context.Context, id string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := c.manager(id); m != nil && m.Ready() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after 30s", id)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(time.Millisecond)
	}
}

// darkest returns the longest time a key was dark since resetDark, and how
// many keys are dark now.
func (t *tracker) darkest() (time.Duration, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	longest := t.longestDark
	for _, at := range t.dark {
		longest = max(longest, time.Since(at))
	}
	return longest, len(t.dark)
}

// resetDark starts measuring dark gaps afresh.
func (t *tracker) resetDark() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dark = map[string]time.Time{}
	t.longestDark = 0
	t.peakDark = 0
}

// sleepCtx waits for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
