package dim

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/history"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// placementByKey is a WithPlacement function from a table keyed by config
// key; keys not in it have no placement.
func placementByKey(table map[string]Placement) Option {
	return WithPlacement(func(c testConfig) Placement { return table[c.Key] })
}

// liveOn returns the node each key runs on, for keys running exactly once.
func (c *testCluster) liveOn() map[string]string {
	out := map[string]string{}
	for key, on := range c.rec.LiveByKey() {
		if len(on) == 1 {
			out[key] = on[0]
		}
	}
	return out
}

func TestPlacementLabelsRequirementsAndUnplaceable(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	table := map[string]Placement{
		"cfg-00": {Require: map[string]string{"zone": "a"}},
		"cfg-01": {Require: map[string]string{"zone": "a"}},
		"cfg-02": {Require: map[string]string{"zone": "b"}},
		"cfg-05": {Require: map[string]string{"zone": "z"}}, // no such zone
	}
	c.start("n1", WithLabels(map[string]string{"zone": "a"}), placementByKey(table))
	c.start("n2", WithLabels(map[string]string{"zone": "b"}), placementByKey(table))
	c.eventually(15*time.Second, "five keys running where their zones allow, cfg-05 reported unplaceable", func() bool {
		on := c.liveOn()
		st := c.status()
		return len(on) == 5 && on["cfg-00"] == "n1" && on["cfg-01"] == "n1" && on["cfg-02"] == "n2" &&
			st.UnplaceableCount == 1 && len(c.rec.LiveByKey()["cfg-05"]) == 0
	})
	st := c.status()
	assert.Equal(t, []string{"cfg-05"}, st.Unplaceable)
	require.Len(t, st.Nodes, 2)
	assert.Equal(t, map[string]string{"zone": "a"}, st.Nodes[0].Labels)
	assert.Equal(t, map[string]string{"zone": "b"}, st.Nodes[1].Labels)
	// Balance over what the zones allow: 5 keys, 2 and 3.
	assert.ElementsMatch(t, []int{2, 3}, []int{c.loads()["n1"], c.loads()["n2"]})

	// A node of zone z joins: cfg-05 runs there, and nothing is
	// unplaceable any more.
	c.start("n3", WithLabels(map[string]string{"zone": "z"}), placementByKey(table))
	c.eventually(15*time.Second, "cfg-05 running on n3", func() bool {
		return c.liveOn()["cfg-05"] == "n3" && c.status().UnplaceableCount == 0
	})
	assert.Empty(t, c.status().Unplaceable)
}

func TestPlacementPins(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	c.start("n1")
	c.start("n2")
	c.waitConverged(15*time.Second, "n1", "n2")
	client := c.srv.Client(t)
	ctx := context.Background()
	svc := Service{Name: c.service}

	// Pin a key to the node it is not on.
	key := "cfg-00"
	from := c.liveOn()[key]
	to := map[string]string{"n1": "n2", "n2": "n1"}[from]
	require.NoError(t, Pin(ctx, client, svc, key, to))
	c.eventually(15*time.Second, key+" running on its pin's node", func() bool { return c.liveOn()[key] == to })
	assert.Equal(t, map[string]string{key: to}, c.status().Pins)
	// Balance still holds around the pin: 2 and 2.
	c.eventually(15*time.Second, "loads 2 and 2", func() bool {
		l := c.loads()
		return len(c.liveOn()) == 4 && l["n1"] == 2 && l["n2"] == 2
	})
	exp, err := Explain(ctx, client, svc, key)
	require.NoError(t, err)
	assert.Equal(t, to, exp.Pinned)
	require.NotNil(t, exp.LastMove)
	assert.Equal(t, MovePinned, exp.LastMove.Reason)

	// A pin to a node that is not live is refused.
	require.ErrorIs(t, Pin(ctx, client, svc, key, "nobody"), ErrUnknownNode)

	// Unpinned, the key stays where it is: balance holds, so nothing moves.
	had, err := Unpin(ctx, client, svc, key)
	require.NoError(t, err)
	assert.True(t, had)
	assert.Empty(t, c.status().Pins)
	had, err = Unpin(ctx, client, svc, key)
	require.NoError(t, err)
	assert.False(t, had)
	before := maps.Clone(c.status().Assignment)
	_, err = RequestRebalance(ctx, client, svc)
	require.NoError(t, err)
	assert.Equal(t, before, c.status().Assignment)
}

func TestPlacementCaps(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 5)
	obs := map[string]*observed{"n1": newObserved(t), "n2": newObserved(t)}
	c.start("n1", append(obs["n1"].options(), WithCaps(1, 0))...)
	c.start("n2", append(obs["n2"].options(), WithCaps(2, 0))...)
	c.eventually(15*time.Second, "three keys running within the caps, two unplaceable", func() bool {
		l := c.loads()
		st := c.status()
		return len(c.liveOn()) == 3 && l["n1"] == 1 && l["n2"] == 2 && st.UnplaceableCount == 2
	})
	leader := c.leader().id
	c.eventually(5*time.Second, "the leader's gauge dim.keys.unplaceable at 2", func() bool {
		n, ok := obs[leader].metric(t, "dim.keys.unplaceable")
		return ok && n == 2
	})
	st := c.status()
	assert.Len(t, st.Unplaceable, 2)
	assert.Equal(t, 1, st.Nodes[0].MaxKeys)
	assert.Equal(t, 2, st.Nodes[1].MaxKeys)
	// Plan sees the caps too: draining n2 leaves only n1's one slot.
	plan, err := Plan(context.Background(), c.srv.Client(t), Service{Name: c.service}, PlanChange{Drain: "n2"})
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"n1": 1}, plan.Loads)
	assert.Len(t, plan.Unplaceable, 4)
}

// rollingTable is the placements of TestARollingChangeOfLabelsMovesOnly
// WhatTheConstraintsRequire: two keys that require each of the zones a, b
// and c, three spread over zone, six free.
func rollingTable() map[string]Placement {
	table := map[string]Placement{}
	for i, zone := range []string{"a", "a", "b", "b", "c", "c"} {
		table[fmt.Sprintf("cfg-%02d", i)] = Placement{Require: map[string]string{"zone": zone}}
	}
	for i := 6; i < 9; i++ {
		table[fmt.Sprintf("cfg-%02d", i)] = Placement{Spread: "zone", Group: "s"}
	}
	return table
}

func TestARollingChangeOfLabelsMovesOnlyWhatTheConstraintsRequire(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 15)
	table := rollingTable()
	labels := map[string]map[string]string{"n1": {"zone": "a"}, "n2": {"zone": "b"}, "n3": {"zone": "c"}}
	opts := func(id string) []Option {
		return []Option{WithLabels(labels[id]), placementByKey(table), WithRestartHold(10 * time.Second)}
	}
	ids := []string{"n1", "n2", "n3"}
	for _, id := range ids {
		c.start(id, opts(id)...)
	}
	c.waitConverged(15*time.Second, ids...)
	st := c.status()
	zoneOf := func(node string) string { return labels[node]["zone"] }
	spread := map[string]int{}
	for key, node := range st.Assignment {
		if req := table[key].Require["zone"]; req != "" {
			assert.Equal(t, req, zoneOf(node), "%s requires zone %s", key, req)
		}
		if table[key].Spread != "" {
			spread[zoneOf(node)]++
		}
	}
	assert.Equal(t, map[string]int{"a": 1, "b": 1, "c": 1}, spread, "the spread group, one key per zone")
	keys := c.keys()

	// relabel restarts one node with new labels. The keys whose node no
	// longer meets their requirements must move: to the one node that
	// does, or nowhere (unplaceable), and unplaceable keys that a node now
	// meets must run there. Beyond those, exactly as many keys move as the
	// loads need: a key runs on each node from ⌊n/3⌋ to ⌈n/3⌉. The result
	// is BalanceWith's from the assignment before, and no key but the
	// moved ones and the restarting node's own ever stopped.
	relabel := func(node string, to map[string]string, unplaceable []string) map[string]string {
		t.Helper()
		before := c.status().Assignment
		seq := lastSeq(c.rec.Events())
		labels[node] = to
		var nodes []Node
		for _, id := range ids {
			nodes = append(nodes, Node{ID: id, Weight: 1, Labels: labels[id]})
		}
		want, err := BalanceWith(before, keys, nodes, Constraints{Keys: table})
		require.NoError(t, err)
		require.Equal(t, unplaceable, want.Unplaceable)

		required := map[string]string{} // key → the node it must go to, "" for none
		loads := map[string]int{}
		for _, key := range keys {
			if table[key].Require == nil {
				loads[before[key]]++
				continue
			}
			var may []string
			for _, id := range ids {
				if meets(labels[id], table[key].Require) {
					may = append(may, id)
				}
			}
			from, placed := before[key]
			switch {
			case len(may) == 0:
				if placed {
					required[key] = ""
				}
			case placed && slices.Contains(may, from):
				loads[from]++
			default:
				require.Len(t, may, 1, "in this scenario a key that must move has one place to go")
				required[key] = may[0]
				loads[may[0]]++
			}
		}
		lo, hi := (len(keys)-len(unplaceable))/3, (len(keys)-len(unplaceable)+2)/3
		over, under := 0, 0
		for _, id := range ids {
			over += max(0, loads[id]-hi)
			under += max(0, lo-loads[id])
		}

		c.stop(node)
		c.start(node, opts(node)...)
		var after *Status
		c.eventually(15*time.Second, node+" back with its new labels and every key where BalanceWith puts it", func() bool {
			after = c.status()
			return maps.Equal(after.Assignment, want.Assignment) && maps.Equal(c.liveOn(), map[string]string(want.Assignment)) &&
				after.node(node) != nil && maps.Equal(after.node(node).Labels, to) && slices.Equal(after.Unplaceable, unplaceable)
		})
		// Settled: a rebalance moves nothing more.
		_, err = RequestRebalance(context.Background(), c.srv.Client(t), Service{Name: c.service})
		require.NoError(t, err)
		assert.Equal(t, want.Assignment, c.status().Assignment)

		extra := map[string]string{}
		for _, mv := range moved(before, after.Assignment) {
			extra[mv.Key] = mv.To
		}
		for key := range before {
			if _, ok := after.Assignment[key]; !ok {
				extra[key] = ""
			}
		}
		for key, to := range required {
			assert.Equal(t, to, extra[key], "%s must go where the new labels allow", key)
			delete(extra, key)
		}
		assert.Len(t, extra, max(over, under), "moves beyond what the requirements force: %v", extra)
		for key, to := range extra {
			assert.True(t, meets(labels[to], table[key].Require), "%s moved to %s, which it may use", key, to)
		}
		// Only the moved keys and the restarting node's own stopped.
		for _, e := range c.rec.Events() {
			if e.Seq <= seq || e.Node == node {
				continue
			}
			_, req := required[e.Key]
			_, ext := extra[e.Key]
			assert.True(t, req || ext, "%s stopped or started on %s though it did not move", e.Key, e.Node)
		}
		return required
	}

	// A label nothing requires: nothing moves.
	assert.Empty(t, relabel("n1", map[string]string{"zone": "a", "rack": "r1"}, nil))
	// n2 moves from zone b to c: the keys that require b have nowhere to
	// go; the node, two keys lighter, takes one key back for balance.
	assert.Equal(t, map[string]string{"cfg-02": "", "cfg-03": ""},
		relabel("n2", map[string]string{"zone": "c", "rack": "r2"}, []string{"cfg-02", "cfg-03"}))
	exp, err := Explain(context.Background(), c.srv.Client(t), Service{Name: c.service}, "cfg-02")
	require.NoError(t, err)
	assert.True(t, exp.Unplaceable)
	require.NotNil(t, exp.LastMove)
	assert.Equal(t, MoveUnplaceable, exp.LastMove.Reason)
	// n3 moves from zone c to b: the keys that require c go to n2, the only
	// node left in c (one of them may be there already, moved for balance
	// in the step before), and those that require b run again, on n3.
	required := relabel("n3", map[string]string{"zone": "b", "rack": "r3"}, nil)
	assert.Equal(t, "n3", required["cfg-02"])
	assert.Equal(t, "n3", required["cfg-03"])
	assert.Contains(t, required, "cfg-05")
	st = c.status()
	for key, node := range map[string]string{"cfg-02": "n3", "cfg-03": "n3", "cfg-04": "n2", "cfg-05": "n2", "cfg-00": "n1", "cfg-01": "n1"} {
		assert.Equal(t, node, st.Assignment[key], key)
	}
	exp, err = Explain(context.Background(), c.srv.Client(t), Service{Name: c.service}, "cfg-05")
	require.NoError(t, err)
	require.NotNil(t, exp.LastMove)
	assert.Equal(t, MoveRequirement, exp.LastMove.Reason)
	assert.Empty(t, history.Overlaps(c.rec.Events()))
}
