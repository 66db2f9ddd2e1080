package dim

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/redis/rueidis"
)

// A churn budget bounds the voluntary moves in flight: after a join, a
// weight change, a drain that ends or a rebalance request, the leader moves
// at most the budget at a time and the next step waits until those have
// landed. Each step is part of a minimal diff towards a balanced
// assignment, and the next step starts from where the last one landed, so
// that the moves of all steps add up to the minimum (Balance from any
// assignment makes the fewest moves; the balanced assignment the first step
// aimed at is still that few moves away). A freeze is a budget of zero.
// Failures are never held back: keys of nodes that died, left or are
// drained, keys given up and new keys are placed at once.

// moveBudget is the voluntary moves a step may start: the absolute limit,
// lowered by the relative one, never below one; -1 means no limit.
func moveBudget(abs int, rel float64, keys int) int {
	limit := -1
	if abs > 0 {
		limit = abs
	}
	if rel > 0 {
		r := max(1, int(math.Ceil(rel*float64(keys))))
		if limit < 0 || r < limit {
			limit = r
		}
	}
	return limit
}

// limitMoves holds back voluntary moves of next beyond limit (-1: none): a
// key stays on its previous node while that node may still take it (live,
// not drained, not avoiding the key). The moves it lets through are the
// first by key. It returns the keys it let through and how many it held.
func limitMoves(prev, next Assignment, nodes []Node, avoid map[string][]string, limit int) (moving []string, held int) {
	if limit < 0 {
		return nil, 0
	}
	ok := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		ok[n.ID] = true
	}
	var voluntary []string
	for key, to := range next {
		from, had := prev[key]
		if had && from != to && ok[from] && !slices.Contains(avoid[key], from) {
			voluntary = append(voluntary, key)
		}
	}
	slices.Sort(voluntary)
	for i, key := range voluntary {
		if i < limit {
			moving = append(moving, key)
			continue
		}
		next[key] = prev[key]
		held++
	}
	return moving, held
}

// inFlight returns the keys of moving that have not landed yet: not owned
// by the node they are assigned to now.
func inFlight(ctx context.Context, client rueidis.Client, k keyspace, moving map[string]string) ([]string, error) {
	if len(moving) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(moving))
	for key := range moving {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	vals, err := client.Do(ctx, client.B().Hmget().Key(k.owner).Field(keys...).Build()).ToArray()
	if err != nil {
		return nil, fmt.Errorf("read moves in flight: %w", err)
	}
	var out []string
	for i, v := range vals {
		s, _ := v.ToString()
		node, _, _ := strings.Cut(s, " ")
		if node != moving[keys[i]] {
			out = append(out, keys[i])
		}
	}
	return out, nil
}

// budgetLeft is how many voluntary moves this rebalance may start: the
// budget less the moves of earlier steps still in flight (-1: no budget).
func (e *elector) budgetLeft(ctx context.Context, st *leaderMemory, prev Assignment, keys int) (int, error) {
	limit := moveBudget(e.s.budgetAbs, e.s.budgetRel, keys)
	st.budget = limit
	if limit < 0 {
		st.moving = map[string]string{}
		return -1, nil
	}
	rctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	if st.moving == nil {
		// A new term: moves an earlier leader started may still be in
		// flight. Every key in a handoff (its state published by a node
		// other than its assignee) counts as one until it lands.
		handing, err := e.client.Do(rctx, e.client.B().Smembers().Key(e.k.moving()).Build()).AsStrSlice()
		if err != nil {
			return 0, fmt.Errorf("read moves in flight: %w", err)
		}
		st.moving = map[string]string{}
		for _, key := range handing {
			if to := prev[key]; to != "" {
				st.moving[key] = to
			}
		}
	}
	for key, to := range st.moving {
		if prev[key] != to {
			delete(st.moving, key) // moved on since: no longer this step's
		}
	}
	flying, err := inFlight(rctx, e.client, e.k, st.moving)
	if err != nil {
		return 0, err
	}
	landed := maps.Clone(st.moving)
	for _, key := range flying {
		delete(landed, key)
	}
	for key := range landed {
		delete(st.moving, key)
	}
	return max(0, limit-len(st.moving)), nil
}
