package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-dim/dim"
)

// budget: M nodes run N keys, each node with WithMoveBudget(max, 0) (or
// none, in the same run, for comparison); once the service has converged a
// node joins, and the leader moves the new node's share in steps of at most
// max keys in flight. Measured, from the join on:
//
//   - moves: creates on any node (each move is one create on its new owner),
//     against the fewest, dim.Moves(before, dim.Balance(before, keys, nodes
//     with the new one)) from the assignment as it stood before the join;
//   - keys that changed node (by the callbacks), so that a key moved twice
//     shows as moves above it;
//   - the most keys in flight at once: disconnected on the old owner and not
//     yet created on the new (by the callbacks, not by what dim says);
//   - steps: the leader's rebalances that moved keys, and the largest;
//   - join → converged: Start of the new node called → the last create.
func (b *bench) budget(ctx context.Context) error {
	const scenario = "12 move budget"
	tm := timingFor(b.cfg.budgetTTL)
	for _, sz := range b.cfg.budget {
		for _, limit := range []int{b.cfg.budgetMoves, 0} {
			cs := fmt.Sprintf("%s, 1 node joins, %s", sz, choose(limit > 0, fmt.Sprintf("WithMoveBudget(%d, 0)", limit), "no budget"))
			r := func(metric, unit string) *Result {
				return &Result{Scenario: scenario, Case: cs, Metric: metric, Unit: unit}
			}
			v := &budgetResults{
				moves:   r("moves (creates after the join)", "keys"),
				fewest:  r("fewest moves (dim.Balance from the assignment before)", "keys"),
				over:    r("moves over the fewest", "keys"),
				changed: r("keys that changed node", "keys"),
				flight:  r("most keys in flight at once (disconnected, not yet created)", "keys"),
				steps:   r("steps (rebalances that moved keys)", "steps"),
				largest: r("largest step", "keys"),
				took:    r("join → converged (last create)", "ms"),
			}
			mk := b.mark()
			for range b.runs(3) {
				if b.failed(scenario, cs, b.budgetOnce(ctx, tm, sz, limit, v)) {
					break
				}
			}
			if len(v.moves.Samples) == 0 {
				continue
			}
			v.over.withTarget("max", 0)
			if limit > 0 {
				v.flight.withTarget("max", float64(limit))
				v.largest.withTarget("max", float64(limit))
			}
			v.moves.Note = fmt.Sprintf("%s; every node %s; a join takes about N/(M+1) = %d keys",
				tm, choose(limit > 0, fmt.Sprintf("with WithMoveBudget(%d, 0)", limit), "without a budget"), sz.Keys/(sz.Nodes+1))
			v.took.Note = fmt.Sprintf("the leader looks at the moves in flight again one heartbeat (%v) after each step", tm.Heartbeat)
			b.annotate(mk, v.moves)
			for _, res := range []*Result{v.moves, v.fewest, v.over, v.changed, v.flight, v.steps, v.largest, v.took} {
				b.add(res)
			}
		}
	}
	return nil
}

// budgetResults are the figures of one case of the budget scenario.
type budgetResults struct {
	moves, fewest, over, changed, flight, steps, largest, took *Result
}

func (b *bench) budgetOnce(ctx context.Context, tm timing, sz size, limit int, v *budgetResults) error {
	c := b.newCluster("budget", sz.Keys, tm)
	defer c.close(ctx)
	tap := &logTap{warns: b.warns}
	c.logger = slog.New(tap)
	if limit > 0 {
		c.opts = []dim.Option{dim.WithMoveBudget(limit, 0)}
	}
	if _, err := c.startLocal(ctx, sz.Nodes); err != nil {
		return err
	}
	st, err := c.waitConverged(ctx, sz.Nodes, converge)
	if err != nil {
		return err
	}
	id := c.newID()
	nodes := make([]dim.Node, 0, len(st.Nodes)+1)
	for _, n := range st.Nodes {
		nodes = append(nodes, dim.Node{ID: n.ID, Weight: n.Weight})
	}
	nodes = append(nodes, dim.Node{ID: id, Weight: 1})
	target, err := dim.Balance(st.Assignment, c.keys, nodes)
	if err != nil {
		return err
	}
	fewest := dim.Moves(st.Assignment, target)

	before := c.tr.placement()
	creates0, _ := c.tr.counts()
	c.tr.resetDark()
	t0 := time.Now()
	if _, err := c.startIDs(ctx, []string{id}); err != nil {
		return err
	}
	// The steps are a heartbeat apart: wait until the new node holds its
	// share by the callbacks and nothing has been created for two
	// heartbeats, reading only the tracker, before asking Redis.
	share := sz.Keys / (sz.Nodes + 1)
	if err := c.tr.waitFor(ctx, func(t *tracker) bool { return t.countOn(id) >= share }, converge); err != nil {
		return fmt.Errorf("%s never held its share of %d keys: %w", id, share, err)
	}
	if err := c.tr.waitQuiet(ctx, 2*tm.Heartbeat, converge); err != nil {
		return err
	}
	st, err = c.waitConverged(ctx, sz.Nodes+1, converge)
	if err != nil {
		return err
	}
	if lr := st.LastRebalance; lr != nil && lr.Pending > 0 {
		return fmt.Errorf("converged with %d moves still held for later steps", lr.Pending)
	}
	last := c.tr.lastCreate()
	creates, _ := c.tr.counts()
	after := c.tr.placement()
	changed := 0
	for k, n := range after {
		if before[k] != n {
			changed++
		}
	}
	peak, open := c.tr.peak()
	if open > 0 {
		return fmt.Errorf("%d keys still dark after the join converged", open)
	}
	steps, largest, logged := 0, int64(0), int64(0)
	for _, r := range tap.since(t0) {
		if r.msg == "rebalanced" && r.moves > 0 {
			steps++
			largest = max(largest, r.moves)
			logged += r.moves
		}
	}
	moved := creates - creates0
	if logged != moved {
		b.progress("  the leader logged %d moves, the callbacks %d creates", logged, moved)
	}
	v.moves.Samples = append(v.moves.Samples, float64(moved))
	v.fewest.Samples = append(v.fewest.Samples, float64(fewest))
	v.over.Samples = append(v.over.Samples, float64(moved-int64(fewest)))
	v.changed.Samples = append(v.changed.Samples, float64(changed))
	v.flight.Samples = append(v.flight.Samples, float64(peak))
	v.steps.Samples = append(v.steps.Samples, float64(steps))
	v.largest.Samples = append(v.largest.Samples, float64(largest))
	v.took.Samples = append(v.took.Samples, ms(last.Sub(t0)))
	return b.checkOverlaps(c)
}

// placement returns which node runs each key, by the callbacks.
func (t *tracker) placement() map[string]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]string, len(t.live))
	for k, n := range t.live {
		out[k] = n
	}
	return out
}

// countOn returns how many keys node runs, by the callbacks. The caller
// holds t.mu (see waitFor).
func (t *tracker) countOn(node string) int {
	n := 0
	for _, on := range t.live {
		if on == node {
			n++
		}
	}
	return n
}

// waitFor polls the tracker every 5 ms until cond, called with t.mu held,
// holds.
func (t *tracker) waitFor(ctx context.Context, cond func(*tracker) bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		t.mu.Lock()
		ok := cond(t)
		t.mu.Unlock()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not after %v", timeout)
		}
		sleepCtx(ctx, 5*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// peak returns the most keys dark at once since resetDark, and how many
// are dark now.
func (t *tracker) peak() (most, now int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.peakDark, len(t.dark)
}
