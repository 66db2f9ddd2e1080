package dim

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// placeInput is what a placement starts from besides what Redis holds.
type placeInput struct {
	now   int64 // server ms
	prev  Assignment
	keys  []string // configured
	nodes []Node   // live, taking keys (weight > 0)
	// The leader's quarantine backoff.
	first, max, poll time.Duration
	// drain, for a plan: a node to treat as drained.
	drain string
	// budget is how many voluntary moves this step may start (-1: any).
	budget int
	// placements are the keys' placements (see WithPlacement).
	placements map[string]Placement
	// read bounds each Redis read (0: ctx alone bounds them): the leader's
	// work on every key between them must not eat into a read's time.
	read time.Duration
}

// placement is an assignment as the leader computes it, with what it read
// and decided on the way.
type placement struct {
	holds   *holds
	facts   *failureFacts
	verdict *verdict
	nodes   []Node // after drains
	next    Assignment
	back    []string // restarting nodes that are back: their holds end
	joined  []string // waiting joiners that took a leaver's keys: their holds end
	held    int      // voluntary moves a freeze or the budget held back
	moving  []string // the voluntary moves let through, under a budget
	// pins are the operator's pins; unplaceable the keys no live node
	// may take (see BalanceWith), sorted.
	pins        map[string]string
	unplaceable []string
	placements  map[string]Placement
}

// place computes the assignment the leader writes, from what Redis holds:
// drains and the freeze, avoidances, the leader's failure verdicts. It
// writes nothing, so a plan runs the very same code as the leader.
func place(ctx context.Context, client rueidis.Client, k keyspace, in placeInput) (*placement, error) {
	bounded := func(read func(context.Context) error) error {
		if in.read <= 0 {
			return read(ctx)
		}
		rctx, cancel := context.WithTimeout(ctx, in.read)
		defer cancel()
		return read(rctx)
	}
	var h *holds
	err := bounded(func(ctx context.Context) (err error) {
		h, err = readHolds(ctx, client, k, in.now)
		return err
	})
	if err != nil {
		return nil, err
	}
	if in.drain != "" {
		h.drained[in.drain] = in.now + maxHold.Milliseconds()
	}
	var facts *failureFacts
	err = bounded(func(ctx context.Context) (err error) {
		facts, err = readFailures(ctx, client, k, in.now)
		return err
	})
	if err != nil {
		return nil, err
	}
	h.rollout.sessions = facts.sessions
	ro := h.rollout.apply(in.prev, in.keys, h.without(in.nodes))
	p := &placement{holds: h, facts: facts, nodes: ro.nodes, back: ro.back, joined: ro.joined, placements: in.placements}
	ri := &reviewInput{failureFacts: *p.facts, keys: ro.keys, nodes: p.nodes, prev: ro.prev,
		first: in.first, max: in.max, cooldown: giveUpCooldown, poll: in.poll}
	look := lookups(p.facts, ro.prev)
	if err := bounded(func(ctx context.Context) (err error) {
		ri.states, err = readStates(ctx, client, k, look)
		return err
	}); err != nil {
		return nil, err
	}
	p.verdict = review(ri)
	if err := bounded(func(ctx context.Context) (err error) {
		p.pins, err = client.Do(ctx, client.B().Hgetall().Key(k.pins).Build()).AsStrMap()
		return err
	}); err != nil {
		return nil, fmt.Errorf("read pins: %w", err)
	}
	c := Constraints{Keys: in.placements, Pins: p.pins, Avoid: p.verdict.avoid}
	// Labels matter only to placements; avoidances alone are
	// BalanceAvoiding's, as before constraints existed.
	constrained := len(c.Keys) > 0 || len(c.Pins) > 0 || slices.ContainsFunc(p.nodes, func(n Node) bool {
		return n.MaxKeys > 0 || n.MaxCost > 0
	})
	if !constrained {
		// Exactly what dim did before constraints existed.
		if p.next, err = BalanceAvoiding(ro.prev, p.verdict.keys, p.nodes, p.verdict.avoid); err != nil {
			return nil, err
		}
	} else {
		res, err := BalanceWith(ro.prev, p.verdict.keys, p.nodes, c)
		if err != nil {
			return nil, err
		}
		p.next = res.Assignment
		for _, key := range res.Unplaceable {
			if _, held := ro.pinned[key]; !held {
				p.unplaceable = append(p.unplaceable, key)
			}
		}
	}
	for key, node := range ro.pinned {
		p.next[key] = node
	}
	limit := in.budget
	if h.frozen > 0 {
		limit = 0
	}
	p.moving, p.held = limitMoves(in.prev, p.next, p.nodes, p.verdict.avoid, limit)
	return p, nil
}

// Move is one key that changes node; From is "" for a key not placed
// before, To "" for a key that is taken out (quarantined).
type Move struct {
	Key  string `json:"key"`
	From string `json:"from"`
	To   string `json:"to"`
}

// PlanChange is a change to try in [Plan]: drain a live node, or add a node
// with a weight (both at once is allowed). The zero value plans a rebalance
// of the service as it is.
type PlanChange struct {
	Drain      string
	Join       string
	JoinWeight int // 0 means 1
}

// PlanResult is what a change would do.
type PlanResult struct {
	// Moves lists every key that would change node, by key.
	Moves []Move `json:"moves"`
	// Loads is how many keys each node would hold.
	Loads map[string]int `json:"loads"`
	// Frozen is true when a freeze holds voluntary moves back: the moves
	// are those the leader would make now, not after the thaw.
	Frozen bool `json:"frozen"`
	// Unplaceable lists, sorted, the keys no live node could take.
	Unplaceable []string `json:"unplaceable,omitempty"`
}

// Plan computes, without changing anything, the moves the leader would make
// if change happened now: the same placement code the leader runs, on what
// Redis holds (the assignment, nodes and weights, labels and caps, pins,
// drains, freeze, avoidances, the leader's failure verdicts and the per-key
// placements it last balanced with). The keys are those of the assignment,
// the quarantines, the keys with a placement and the unplaceable keys
// recorded by name (the first 100), so keys that the configs gained since
// the last rebalance are not in it. It returns an error wrapping
// [ErrInvalidOption] for a bad svc, [ErrUnknownNode] when change drains a node that is not live,
// or [ErrLastNode] when it drains the last node that takes keys.
func Plan(ctx context.Context, client rueidis.Client, svc Service, change PlanChange) (*PlanResult, error) {
	k, err := svc.keys()
	if err != nil {
		return nil, err
	}
	st, err := ReadStatus(ctx, client, svc)
	if err != nil {
		return nil, err
	}
	var nodes []Node
	drainable := false
	for _, n := range st.Nodes {
		if n.Weight > 0 {
			nodes = append(nodes, Node{ID: n.ID, Weight: n.Weight, Labels: n.Labels, MaxKeys: n.MaxKeys, MaxCost: n.MaxCost})
			if n.ID != change.Drain && n.DrainedFor == 0 {
				drainable = true
			}
		}
	}
	if change.Drain != "" {
		if !slices.ContainsFunc(st.Nodes, func(n NodeStatus) bool { return n.ID == change.Drain }) {
			return nil, fmt.Errorf("%w: %q is not a live node of the service", ErrUnknownNode, change.Drain)
		}
		if !drainable && change.Join == "" {
			return nil, fmt.Errorf("%w: draining %q would leave no node to run keys", ErrLastNode, change.Drain)
		}
	}
	if change.Join != "" {
		if slices.ContainsFunc(st.Nodes, func(n NodeStatus) bool { return n.ID == change.Join }) {
			return nil, fmt.Errorf("%w: %q is already a live node", ErrInvalidOption, change.Join)
		}
		w := change.JoinWeight
		if w == 0 {
			w = 1
		}
		if w < 0 || w > MaxWeight {
			return nil, fmt.Errorf("%w: weight %d: want 1 to %d", ErrInvalidOption, w, MaxWeight)
		}
		nodes = append(nodes, Node{ID: change.Join, Weight: w})
	}
	prev := st.Assignment
	keys := make([]string, 0, len(prev)+len(st.Quarantined))
	for key := range prev {
		keys = append(keys, key)
	}
	for _, q := range st.Quarantined {
		if _, ok := prev[q.Key]; !ok {
			keys = append(keys, q.Key)
		}
	}
	stored, err := readPlacing(ctx, client, k, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: plan: %w", ErrRedis, err)
	}
	placements := stored.placements()
	listed := make(map[string]bool, len(keys))
	for _, key := range keys {
		listed[key] = true
	}
	for _, key := range st.Unplaceable {
		if !listed[key] {
			listed[key] = true
			keys = append(keys, key)
		}
	}
	for key := range placements {
		if !listed[key] {
			keys = append(keys, key)
		}
	}
	if len(nodes) == 0 {
		return &PlanResult{Moves: []Move{}, Loads: map[string]int{}}, nil
	}
	p, err := place(ctx, client, k, placeInput{now: st.ServerTime.UnixMilli(), prev: prev, keys: keys, nodes: nodes,
		first: DefaultQuarantineFirst, max: DefaultQuarantineMax, poll: time.Second, drain: change.Drain, budget: -1,
		placements: placements})
	if err != nil {
		return nil, fmt.Errorf("%w: plan: %w", ErrRedis, err)
	}
	res := &PlanResult{Moves: []Move{}, Loads: p.next.Loads(), Frozen: p.holds.frozen > 0, Unplaceable: p.unplaceable}
	for key, to := range p.next {
		if from := prev[key]; from != to {
			res.Moves = append(res.Moves, Move{Key: key, From: from, To: to})
		}
	}
	for key, from := range prev {
		if _, ok := p.next[key]; !ok {
			res.Moves = append(res.Moves, Move{Key: key, From: from})
		}
	}
	slices.SortFunc(res.Moves, func(a, b Move) int { return strings.Compare(a.Key, b.Key) })
	return res, nil
}
