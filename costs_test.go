package dim

import (
	"math/big"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

// costShares is the oracle's fair share of each node in cost units, by
// Fujishige's decomposition as in oracle.shares, with the most cost a set
// of nodes can take computed as a minimum cut by enumeration: over every
// set A of keys, the cost of the keys outside A plus the room of the
// nodes of the set that some key of A may use.
func costShares(nodes []Node, keys []string, placed map[string]bool, pinned map[string]string, c Constraints) []*big.Rat {
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(x, y Node) int { return strings.Compare(x.ID, y.ID) })
	cost := func(k string) int64 { return int64(max(c.Keys[k].Cost, 1)) }
	m := len(nodes)
	pinC := make([]int64, m)
	for k, id := range pinned {
		for j, n := range nodes {
			if n.ID == id {
				pinC[j] += cost(k)
			}
		}
	}
	var flex []string
	for _, k := range distinctSorted(keys) {
		if placed[k] {
			flex = append(flex, k)
		}
	}
	room := func(j int) int64 {
		if nodes[j].MaxCost == 0 {
			return 1 << 40
		}
		return max(0, int64(nodes[j].MaxCost)-pinC[j])
	}
	f := func(mask int) int64 {
		best := int64(-1)
		for a := 0; a < 1<<len(flex); a++ {
			var v int64
			uses := 0
			for x, k := range flex {
				if a&(1<<x) == 0 {
					v += cost(k)
					continue
				}
				for j, n := range nodes {
					if mask&(1<<j) != 0 && meets(n.Labels, c.Keys[k].Require) {
						uses |= 1 << j
					}
				}
			}
			for j := range m {
				if uses&(1<<j) != 0 {
					v += room(j)
				}
			}
			if best < 0 || v < best {
				best = v
			}
		}
		for j := range m {
			if mask&(1<<j) != 0 {
				best += pinC[j]
			}
		}
		return best
	}
	share := make([]*big.Rat, m)
	fixed := 0
	for fixed != 1<<m-1 {
		base := f(fixed)
		var best *big.Rat
		union := 0
		for s := 1; s < 1<<m; s++ {
			if s&fixed != 0 {
				continue
			}
			var w int64
			for j := range m {
				if s&(1<<j) != 0 {
					w += int64(max(nodes[j].Weight, 1))
				}
			}
			r := big.NewRat(f(fixed|s)-base, w)
			switch {
			case best == nil || r.Cmp(best) < 0:
				best, union = r, s
			case r.Cmp(best) == 0:
				union |= s
			}
		}
		for j := range m {
			if union&(1<<j) != 0 {
				share[j] = new(big.Rat).Mul(best, big.NewRat(int64(max(nodes[j].Weight, 1)), 1))
			}
		}
		fixed |= union
	}
	return share
}

// costInput draws keys of cost 1 to 5 on up to 4 nodes with zones, cost
// caps, pins and requirements.
func costInput(t *rapid.T) (Assignment, []string, []Node, Constraints) {
	zones := []string{"a", "b"}
	var nodes []Node
	for j := range rapid.IntRange(1, 4).Draw(t, "nodes") {
		n := Node{ID: "n" + strconv.Itoa(j), Labels: map[string]string{"zone": zones[rapid.IntRange(0, 1).Draw(t, "zone")]}}
		if rapid.IntRange(0, 2).Draw(t, "weighted") == 0 {
			n.Weight = rapid.IntRange(1, 3).Draw(t, "weight")
		}
		if rapid.IntRange(0, 3).Draw(t, "capped") == 0 {
			n.MaxCost = rapid.IntRange(1, 12).Draw(t, "cap")
		}
		nodes = append(nodes, n)
	}
	c := Constraints{Keys: map[string]Placement{}, Pins: map[string]string{}}
	prev := Assignment{}
	var keys []string
	for i := range rapid.IntRange(0, 7).Draw(t, "keys") {
		key := "k" + strconv.Itoa(i)
		keys = append(keys, key)
		p := Placement{Cost: rapid.IntRange(0, 5).Draw(t, "cost")}
		if rapid.IntRange(0, 3).Draw(t, "require") == 0 {
			p.Require = map[string]string{"zone": zones[rapid.IntRange(0, 1).Draw(t, "rzone")]}
		}
		if rapid.IntRange(0, 3).Draw(t, "prefer") == 0 {
			p.Prefer = map[string]string{"zone": zones[rapid.IntRange(0, 1).Draw(t, "pzone")]}
		}
		c.Keys[key] = p
		node := func(label string) string { return "n" + strconv.Itoa(rapid.IntRange(0, 4).Draw(t, label)) }
		if rapid.IntRange(0, 6).Draw(t, "pinned") == 0 {
			c.Pins[key] = node("pin")
		}
		if rapid.IntRange(0, 2).Draw(t, "held") > 0 {
			prev[key] = node("prev")
		}
	}
	c.Keys["costly"] = Placement{Cost: 2} // so that the cost path runs
	return prev, keys, nodes, c
}

// The bound on loads with costs: without caps, at most ⌈share⌉ plus the
// largest cost, with the share computed by the oracle; caps and
// requirements hold, and a previous assignment that meets the shares moves
// nothing.
func TestBalanceWithCostsBound(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		prev, keys, nodes, c := costInput(rt)
		got, err := BalanceWith(prev, keys, nodes, c)
		require.NoError(rt, err)
		cost := func(k string) int64 { return int64(max(c.Keys[k].Cost, 1)) }
		var largest int64 = 1
		for _, k := range keys {
			largest = max(largest, cost(k))
		}
		byID := map[string]Node{}
		for _, n := range nodes {
			byID[n.ID] = n
		}
		placed := map[string]bool{}
		pinned := map[string]string{}
		load := map[string]int64{}
		for k, id := range got.Assignment {
			n, ok := byID[id]
			require.True(rt, ok, "key %q on %q, not a node", k, id)
			require.True(rt, meets(n.Labels, c.Keys[k].Require), "key %q on a node it may not use", k)
			load[id] += cost(k)
			if pin, ok := c.Pins[k]; ok && pin == id {
				pinned[k] = id
			} else {
				placed[k] = true
			}
		}
		for k, pin := range c.Pins {
			if n, ok := byID[pin]; ok && slices.Contains(keys, k) && meets(n.Labels, c.Keys[k].Require) {
				require.Equal(rt, pin, got.Assignment[k], "pin of %q", k)
			}
		}
		for _, k := range got.Unplaceable {
			require.NotContains(rt, got.Assignment, k)
		}
		require.Len(rt, got.Assignment, len(distinctSorted(keys))-len(got.Unplaceable))
		share := costShares(nodes, keys, placed, pinned, c)
		sorted := slices.Clone(nodes)
		slices.SortFunc(sorted, func(x, y Node) int { return strings.Compare(x.ID, y.ID) })
		capped := slices.ContainsFunc(nodes, func(n Node) bool { return n.MaxCost > 0 })
		met := true
		for j, n := range sorted {
			_, hi := ratBounds(share[j])
			if !capped {
				require.LessOrEqual(rt, load[n.ID], hi+largest, "node %s: cost %d, share %s, largest cost %d", n.ID, load[n.ID], share[j].RatString(), largest)
			}
			var pinC int64
			for k, id := range pinned {
				if id == n.ID {
					pinC += cost(k)
				}
			}
			if n.MaxCost > 0 {
				require.LessOrEqual(rt, load[n.ID], max(int64(n.MaxCost), pinC), "node %s over its cost cap", n.ID)
			}
			met = met && load[n.ID] <= hi
		}
		if met && len(got.Unplaceable) == 0 {
			again, err := BalanceWith(got.Assignment, keys, nodes, c)
			require.NoError(rt, err)
			require.Equal(rt, 0, Moves(got.Assignment, again.Assignment), "a placement within the shares moved")
		}
	})
}

func TestBalanceWithCosts(t *testing.T) {
	// One heavy key and six light ones on two nodes: 12 units, 6 each.
	keys := []string{"heavy", "l1", "l2", "l3", "l4", "l5", "l6"}
	c := Constraints{Keys: map[string]Placement{"heavy": {Cost: 6}}}
	got, err := BalanceWith(nil, keys, nodesOf("a", "b"), c)
	require.NoError(t, err)
	load := map[string]int{}
	for k, n := range got.Assignment {
		load[n] += max(c.Keys[k].Cost, 1)
	}
	assert.Equal(t, map[string]int{"a": 6, "b": 6}, load)
	assert.Empty(t, got.Unplaceable)

	// A cost cap that no node can meet for the heavy key makes it
	// unplaceable; the light ones still fit.
	capped := []Node{{ID: "a", MaxCost: 4}, {ID: "b", MaxCost: 4}}
	got, err = BalanceWith(nil, keys, capped, c)
	require.NoError(t, err)
	assert.Equal(t, []string{"heavy"}, got.Unplaceable)
	assert.Len(t, got.Assignment, 6)
}
