package dim

import (
	"errors"
	"fmt"
	"maps"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

// The oracle below restates BalanceWith's contract for unit costs from
// first principles, by enumeration, so that it shares no step with the
// implementation: which pins hold, which avoidances hold, each node's fair
// share (Fujishige's decomposition of the polymatroid "the most keys a set
// of nodes can take", over every subset of nodes, with exact rationals),
// and then every placement of the keys, of which the valid ones are those
// within ⌊share⌋..⌈share⌉ on every node, the best those with the least
// spread excess, among them the fewest keys off the nodes they prefer, and
// among those the fewest moves.

type oracleKey struct {
	key   string
	class string // requirements, spread, group and held avoidances
	ok    []bool // per node: may hold it
	pin   int    // node index, -1: none
	place Placement
}

type oracle struct {
	nodes []Node // by ID
	keys  []oracleKey
	pins  []int64 // per node
	room  []int64 // per node: keys beyond pins its caps allow; -1: any
}

func newOracle(keys []string, nodes []Node, c Constraints) *oracle {
	o := &oracle{nodes: slices.Clone(nodes)}
	slices.SortFunc(o.nodes, func(x, y Node) int { return strings.Compare(x.ID, y.ID) })
	// Every node has the label LabelNode, its ID.
	for j, n := range o.nodes {
		o.nodes[j].Labels = maps.Clone(n.Labels)
		if o.nodes[j].Labels == nil {
			o.nodes[j].Labels = map[string]string{}
		}
		o.nodes[j].Labels[LabelNode] = n.ID
	}
	index := map[string]int{}
	for j, n := range o.nodes {
		index[n.ID] = j
	}
	o.pins = make([]int64, len(o.nodes))
	for _, key := range distinctSorted(keys) {
		p := c.Keys[key]
		meetsReq := make([]bool, len(o.nodes))
		eligible := 0
		for j, n := range o.nodes {
			meetsReq[j] = meets(n.Labels, p.Require)
			if meetsReq[j] {
				eligible++
			}
		}
		avoided := map[int]bool{}
		for _, id := range c.Avoid[key] {
			if j, ok := index[id]; ok && meetsReq[j] {
				avoided[j] = true
			}
		}
		if len(avoided) == eligible {
			avoided = map[int]bool{}
		}
		k := oracleKey{key: key, pin: -1, place: p, ok: make([]bool, len(o.nodes))}
		var av []string
		for j := range o.nodes {
			k.ok[j] = meetsReq[j] && !avoided[j]
			if avoided[j] {
				av = append(av, o.nodes[j].ID)
			}
		}
		k.class = fmt.Sprintf("%v|%s|%s|%v|%v", labelSig(p.Require), p.Spread, p.Group, labelSig(p.Prefer), av)
		if id, ok := c.Pins[key]; ok {
			if j, live := index[id]; live && meetsReq[j] {
				k.pin = j
				o.pins[j]++
			}
		}
		o.keys = append(o.keys, k)
	}
	o.room = make([]int64, len(o.nodes))
	for j, n := range o.nodes {
		o.room[j] = -1
		if n.MaxKeys > 0 {
			o.room[j] = max(0, int64(n.MaxKeys)-o.pins[j])
		}
	}
	return o
}

// fit is the most keys of set (key indexes) that the nodes in mask can
// take, by augmenting paths.
func (o *oracle) fit(set []int, mask int) int64 {
	on := make([][]int, len(o.nodes)) // keys on each node
	var try func(i int, seen []bool) bool
	try = func(i int, seen []bool) bool {
		for j := range o.nodes {
			if mask&(1<<j) == 0 || !o.keys[i].ok[j] || seen[j] {
				continue
			}
			seen[j] = true
			if o.room[j] < 0 || int64(len(on[j])) < o.room[j] {
				on[j] = append(on[j], i)
				return true
			}
			for x, other := range on[j] {
				if try(other, seen) {
					on[j][x] = i
					return true
				}
			}
		}
		return false
	}
	var n int64
	for _, i := range set {
		if try(i, make([]bool, len(o.nodes))) {
			n++
		}
	}
	return n
}

// shares returns each node's fair share, pins included, for the keys of
// set: f(S) = pins(S) + fit(set, S) is a polymatroid, and its
// lexicographically optimal base comes level by level from the bottom.
func (o *oracle) shares(set []int) []*big.Rat {
	m := len(o.nodes)
	f := func(mask int) int64 {
		var p int64
		for j := range m {
			if mask&(1<<j) != 0 {
				p += o.pins[j]
			}
		}
		return p + o.fit(set, mask)
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
					w += int64(max(o.nodes[j].Weight, 1))
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
				share[j] = new(big.Rat).Mul(best, big.NewRat(int64(max(o.nodes[j].Weight, 1)), 1))
			}
		}
		fixed |= union
	}
	return share
}

func ratBounds(r *big.Rat) (lo, hi int64) {
	q := new(big.Int).Quo(r.Num(), r.Denom()) // shares are ≥ 0: truncation is the floor
	lo = q.Int64()
	if r.IsInt() {
		return lo, lo
	}
	return lo, lo + 1
}

// spreadExcess is the contract's spread measure of an assignment: per
// group (key class with a Spread label), per value of the label among the
// nodes the class may use, how far the count is outside ⌊n/V⌋..⌈n/V⌉.
func (o *oracle) spreadExcess(a Assignment) int64 {
	index := map[string]int{}
	for j, n := range o.nodes {
		index[n.ID] = j
	}
	type group struct {
		spread string
		vals   map[string]int64
		n      int64
	}
	groups := map[string]*group{}
	for _, k := range o.keys {
		if k.place.Spread == "" {
			continue
		}
		g := groups[k.class]
		if g == nil {
			g = &group{spread: k.place.Spread, vals: map[string]int64{}}
			for j, n := range o.nodes {
				if k.ok[j] {
					g.vals[n.Labels[k.place.Spread]] += 0
				}
			}
			groups[k.class] = g
		}
		node, ok := a[k.key]
		if !ok {
			continue // unplaceable
		}
		g.n++
		v := o.nodes[index[node]].Labels[g.spread]
		if _, counted := g.vals[v]; counted {
			g.vals[v]++
		}
	}
	var excess int64
	for _, g := range groups {
		if len(g.vals) == 0 {
			continue
		}
		vn := int64(len(g.vals))
		band, odd := g.n/vn, int64(0)
		if g.n%vn != 0 {
			odd = 1
		}
		for _, c := range g.vals {
			excess += max(0, band-c) + max(0, c-band-odd)
		}
	}
	return excess
}

// offPreferred counts the placed keys, pinned ones aside, on nodes that
// lack a label they prefer.
func (o *oracle) offPreferred(a Assignment) int64 {
	index := map[string]int{}
	for j, n := range o.nodes {
		index[n.ID] = j
	}
	var off int64
	for _, k := range o.keys {
		if node, ok := a[k.key]; ok && k.pin < 0 && !meets(o.nodes[index[node]].Labels, k.place.Prefer) {
			off++
		}
	}
	return off
}

// checkWithOracle checks got against the contract by enumeration.
func checkWithOracle(t testingT, prev Assignment, keys []string, nodes []Node, c Constraints, got *Balanced) {
	t.Helper()
	o := newOracle(keys, nodes, c)
	index := map[string]int{}
	for j, n := range o.nodes {
		index[n.ID] = j
	}
	unplaceable := map[string]bool{}
	for _, k := range got.Unplaceable {
		unplaceable[k] = true
	}
	var flex, placed []int
	for i, k := range o.keys {
		switch {
		case k.pin >= 0:
			require.Equal(t, o.nodes[k.pin].ID, got.Assignment[k.key], "pinned key %q", k.key)
		case unplaceable[k.key]:
			require.NotContains(t, got.Assignment, k.key)
			flex = append(flex, i)
		default:
			require.Contains(t, got.Assignment, k.key, "key %q is neither placed nor unplaceable", k.key)
			flex = append(flex, i)
			placed = append(placed, i)
		}
	}
	require.Len(t, got.Assignment, len(o.keys)-len(got.Unplaceable))
	all := 1<<len(o.nodes) - 1
	require.Equal(t, int64(len(flex))-o.fit(flex, all), int64(len(got.Unplaceable)), "unplaceable keys")
	require.Equal(t, int64(len(placed)), o.fit(placed, all), "placeable keys")

	share := o.shares(placed)
	lo := make([]int64, len(o.nodes))
	hi := make([]int64, len(o.nodes))
	for j := range o.nodes {
		lo[j], hi[j] = ratBounds(share[j])
	}
	loads := got.Assignment.Loads()
	for j, n := range o.nodes {
		l := int64(loads[n.ID])
		require.True(t, lo[j] <= l && l <= hi[j], "node %s holds %d keys, share %s", n.ID, l, share[j].RatString())
		if o.room[j] >= 0 {
			require.LessOrEqual(t, l, max(int64(n.MaxKeys), o.pins[j]), "node %s over its cap", n.ID)
		}
	}
	for _, i := range placed {
		k := o.keys[i]
		require.True(t, k.ok[index[got.Assignment[k.key]]], "key %q on a node it may not use", k.key)
	}

	// Every valid placement of the placed keys, for the least spread
	// excess, then the fewest keys off their preferred nodes, then the
	// fewest moves.
	bestExcess, bestOff, bestMoves := int64(-1), int64(-1), -1
	a := maps.Clone(got.Assignment)
	load := make([]int64, len(o.nodes))
	copy(load, o.pins)
	var walk func(x int)
	walk = func(x int) {
		if x == len(placed) {
			for j := range o.nodes {
				if load[j] < lo[j] || load[j] > hi[j] {
					return
				}
			}
			e, off, m := o.spreadExcess(a), o.offPreferred(a), Moves(prev, a)
			if bestExcess < 0 || e < bestExcess || e == bestExcess && (off < bestOff || off == bestOff && m < bestMoves) {
				bestExcess, bestOff, bestMoves = e, off, m
			}
			return
		}
		k := o.keys[placed[x]]
		for j, n := range o.nodes {
			if !k.ok[j] || load[j] >= hi[j] || (o.room[j] >= 0 && load[j]-o.pins[j] >= o.room[j]) {
				continue
			}
			a[k.key] = n.ID
			load[j]++
			walk(x + 1)
			load[j]--
		}
	}
	walk(0)
	require.GreaterOrEqual(t, bestExcess, int64(0), "no valid placement exists, yet one was returned")
	require.Equal(t, bestExcess, o.spreadExcess(got.Assignment), "spread excess")
	require.Equal(t, bestOff, o.offPreferred(got.Assignment), "keys off their preferred nodes")
	require.Equal(t, bestMoves, Moves(prev, got.Assignment), "moves")
}

// constrainedInput draws a tiny input for the oracle: up to 7 keys on up
// to 4 nodes, two label names, requirements, spread groups, pins, caps,
// avoidances and a previous assignment that overlaps.
func constrainedInput(t *rapid.T, maxKeys, maxNodes int) (Assignment, []string, []Node, Constraints) {
	zones := []string{"a", "b", "c"}
	nn := rapid.IntRange(1, maxNodes).Draw(t, "nodes")
	var nodes []Node
	for j := range nn {
		n := Node{ID: "n" + strconv.Itoa(j), Labels: map[string]string{}}
		if z := rapid.IntRange(0, 3).Draw(t, "zone"); z < 3 {
			n.Labels["zone"] = zones[z]
		}
		if rapid.Bool().Draw(t, "gpu") {
			n.Labels["gpu"] = "yes"
		}
		if rapid.IntRange(0, 2).Draw(t, "weighted") == 0 {
			n.Weight = rapid.IntRange(0, 3).Draw(t, "weight")
		}
		if rapid.IntRange(0, 3).Draw(t, "capped") == 0 {
			n.MaxKeys = rapid.IntRange(1, 3).Draw(t, "cap")
		}
		nodes = append(nodes, n)
	}
	nk := rapid.IntRange(0, maxKeys).Draw(t, "keys")
	var keys []string
	c := Constraints{Keys: map[string]Placement{}, Pins: map[string]string{}, Avoid: map[string][]string{}}
	prev := Assignment{}
	for i := range nk {
		key := "k" + strconv.Itoa(i)
		keys = append(keys, key)
		var p Placement
		switch rapid.IntRange(0, 5).Draw(t, "require") {
		case 0:
			p.Require = map[string]string{"zone": zones[rapid.IntRange(0, 2).Draw(t, "rzone")]}
		case 1:
			p.Require = map[string]string{"gpu": "yes"}
		}
		switch rapid.IntRange(0, 5).Draw(t, "spread") {
		case 0, 1:
			p.Spread = "zone"
			p.Group = []string{"", "g"}[rapid.IntRange(0, 1).Draw(t, "group")]
		case 2:
			p.Spread = LabelNode // anti-affinity
			p.Group = []string{"", "g"}[rapid.IntRange(0, 1).Draw(t, "group")]
		}
		switch rapid.IntRange(0, 5).Draw(t, "prefer") {
		case 0:
			p.Prefer = map[string]string{"zone": zones[rapid.IntRange(0, 2).Draw(t, "pzone")]}
		case 1:
			p.Prefer = map[string]string{"gpu": "yes"}
		case 2:
			p.Prefer = map[string]string{LabelNode: "n" + strconv.Itoa(rapid.IntRange(0, maxNodes).Draw(t, "pnode"))}
		}
		c.Keys[key] = p
		node := func(label string) string { return "n" + strconv.Itoa(rapid.IntRange(0, maxNodes).Draw(t, label)) }
		if rapid.IntRange(0, 5).Draw(t, "pinned") == 0 {
			c.Pins[key] = node("pin")
		}
		if rapid.IntRange(0, 6).Draw(t, "avoided") == 0 {
			c.Avoid[key] = []string{node("avoid")}
		}
		if rapid.IntRange(0, 3).Draw(t, "held") > 0 {
			prev[key] = node("prev")
		}
	}
	return prev, keys, nodes, c
}

func TestBalanceWithMatchesBruteForce(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		prev, keys, nodes, c := constrainedInput(rt, 7, 4)
		got, err := BalanceWith(prev, keys, nodes, c)
		require.NoError(rt, err)
		checkWithOracle(rt, prev, keys, nodes, c, got)
	})
}

// With constraints that constrain nothing, BalanceWith's general path
// meets Balance's own contract: the same loads bounds and the fewest
// moves.
func TestBalanceWithTrivialConstraintsIsBalance(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		prev, keys, nodes := balanceInput(rt)
		c := Constraints{Keys: map[string]Placement{"not-a-key": {}}}
		got, err := BalanceWith(prev, keys, nodes, c)
		require.NoError(rt, err)
		if len(nodes) == 0 {
			return
		}
		require.Empty(rt, got.Unplaceable)
		checkBalance(rt, prev, keys, nodes, got.Assignment)
	})
}

func TestBalanceWithIsIndependentOfInputOrder(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		prev, keys, nodes, c := constrainedInput(rt, 30, 8)
		got, err := BalanceWith(prev, keys, nodes, c)
		require.NoError(rt, err)
		again, err := BalanceWith(prev, rapid.Permutation(keys).Draw(rt, "keyOrder"), rapid.Permutation(nodes).Draw(rt, "nodeOrder"), c)
		require.NoError(rt, err)
		require.Equal(rt, got, again)
		// Balancing the result again moves nothing.
		stable, err := BalanceWith(got.Assignment, keys, nodes, c)
		require.NoError(rt, err)
		require.Equal(rt, got, stable)
	})
}

func TestBalanceWith(t *testing.T) {
	zone := func(id, z string) Node { return Node{ID: id, Labels: map[string]string{"zone": z}} }
	nodes := []Node{zone("a1", "a"), zone("a2", "a"), zone("b1", "b"), zone("c1", "c")}
	keys := keysN(12)

	t.Run("requirements confine keys and the rest fills around them", func(t *testing.T) {
		c := Constraints{Keys: map[string]Placement{}}
		for _, k := range keys[:6] {
			c.Keys[k] = Placement{Require: map[string]string{"zone": "a"}}
		}
		got, err := BalanceWith(nil, keys, nodes, c)
		require.NoError(t, err)
		for _, k := range keys[:6] {
			assert.Contains(t, []string{"a1", "a2"}, got.Assignment[k])
		}
		// 12 keys on 4 nodes: 3 each, which the six zone-a keys allow.
		assert.Equal(t, map[string]int{"a1": 3, "a2": 3, "b1": 3, "c1": 3}, got.Assignment.Loads())
	})

	t.Run("a joiner gets its fair share, not nothing", func(t *testing.T) {
		c := Constraints{Keys: map[string]Placement{}}
		for _, k := range keys {
			c.Keys[k] = Placement{Require: map[string]string{"zone": "a"}}
		}
		before, err := BalanceWith(nil, keys, nodes[:1], c)
		require.NoError(t, err)
		after, err := BalanceWith(before.Assignment, keys, nodes, c)
		require.NoError(t, err)
		assert.Equal(t, map[string]int{"a1": 6, "a2": 6}, after.Assignment.Loads())
		assert.Equal(t, 6, Moves(before.Assignment, after.Assignment))
	})

	t.Run("keys no node may take are unplaceable", func(t *testing.T) {
		c := Constraints{Keys: map[string]Placement{"k00": {Require: map[string]string{"zone": "z"}}}}
		got, err := BalanceWith(nil, keys, nodes, c)
		require.NoError(t, err)
		assert.Equal(t, []string{"k00"}, got.Unplaceable)
		assert.Len(t, got.Assignment, 11)
	})

	t.Run("caps bound loads; what does not fit is unplaceable", func(t *testing.T) {
		capped := []Node{{ID: "x", MaxKeys: 2}, {ID: "y", MaxKeys: 3}}
		got, err := BalanceWith(nil, keys[:7], capped, Constraints{})
		require.NoError(t, err)
		assert.Equal(t, map[string]int{"x": 2, "y": 3}, got.Assignment.Loads())
		assert.Len(t, got.Unplaceable, 2)
	})

	t.Run("pins hold beyond balance and caps", func(t *testing.T) {
		capped := []Node{{ID: "x", MaxKeys: 1}, {ID: "y"}}
		c := Constraints{Pins: map[string]string{"k00": "x", "k01": "x", "k02": "gone"}}
		got, err := BalanceWith(nil, keys[:4], capped, c)
		require.NoError(t, err)
		assert.Equal(t, "x", got.Assignment["k00"])
		assert.Equal(t, "x", got.Assignment["k01"])
		assert.Equal(t, map[string]int{"x": 2, "y": 2}, got.Assignment.Loads())
	})

	t.Run("spread groups even out across zones", func(t *testing.T) {
		c := Constraints{Keys: map[string]Placement{}}
		for _, k := range keys {
			c.Keys[k] = Placement{Spread: "zone", Group: "tenant"}
		}
		got, err := BalanceWith(nil, keys, nodes, c)
		require.NoError(t, err)
		perZone := map[string]int{}
		for _, n := range got.Assignment {
			perZone[n[:1]]++
		}
		// Node balance comes first: 3 keys per node puts 6 in zone a.
		assert.Equal(t, map[string]int{"a": 6, "b": 3, "c": 3}, perZone)
		// With weights that allow it, the zones even out.
		weighted := []Node{zone("a1", "a"), zone("a2", "a"), {ID: "b1", Weight: 2, Labels: map[string]string{"zone": "b"}}, {ID: "c1", Weight: 2, Labels: map[string]string{"zone": "c"}}}
		got, err = BalanceWith(nil, keys, weighted, c)
		require.NoError(t, err)
		perZone = map[string]int{}
		for _, n := range got.Assignment {
			perZone[n[:1]]++
		}
		assert.Equal(t, map[string]int{"a": 4, "b": 4, "c": 4}, perZone)
	})
}

func TestBalanceWithPreferencesAndAntiAffinity(t *testing.T) {
	zone := func(id, z string) Node { return Node{ID: id, Labels: map[string]string{"zone": z}} }
	nodes := []Node{zone("a1", "a"), zone("a2", "a"), zone("b1", "b"), zone("c1", "c")}
	keys := keysN(12)
	preferB := Constraints{Keys: map[string]Placement{}}
	for _, k := range keys[:6] {
		preferB.Keys[k] = Placement{Prefer: map[string]string{"zone": "b"}}
	}

	t.Run("a preference is honoured as far as balance allows", func(t *testing.T) {
		got, err := BalanceWith(nil, keys, nodes, preferB)
		require.NoError(t, err)
		assert.Equal(t, map[string]int{"a1": 3, "a2": 3, "b1": 3, "c1": 3}, got.Assignment.Loads(), "never at the cost of balance")
		for key, node := range got.Assignment {
			if node == "b1" {
				assert.Contains(t, keys[:6], key, "b1's three keys are keys that prefer zone b")
			}
		}
	})

	t.Run("a preferred node that joins takes the keys that prefer it, and its share only", func(t *testing.T) {
		// Two keys that prefer zone b on each of a1, a2 and c1.
		before := Assignment{}
		for i, k := range keys {
			before[k] = []string{"a1", "a2", "c1"}[i%3]
		}
		after, err := BalanceWith(before, keys, nodes, preferB)
		require.NoError(t, err)
		assert.Equal(t, 3, Moves(before, after.Assignment), "the joiner's share, no more")
		for _, mv := range moved(before, after.Assignment) {
			assert.Equal(t, "b1", mv.To)
			assert.Contains(t, keys[:6], mv.Key)
		}
	})

	t.Run("keys trade places to run where they prefer, above fewest moves", func(t *testing.T) {
		prev := Assignment{}
		for i, k := range keys {
			prev[k] = nodes[i%4].ID
		}
		got, err := BalanceWith(prev, keys, nodes, preferB)
		require.NoError(t, err)
		// b1 holds k02, which prefers b, and k06 and k10, which do not:
		// those two trade places with two keys that prefer b.
		assert.Equal(t, 4, Moves(prev, got.Assignment))
		var onB []string
		for key, node := range got.Assignment {
			if node == "b1" {
				onB = append(onB, key)
			}
		}
		assert.Len(t, onB, 3)
		assert.Contains(t, onB, "k02")
		for _, key := range onB {
			assert.Contains(t, keys[:6], key)
		}
		assert.Equal(t, map[string]int{"a1": 3, "a2": 3, "b1": 3, "c1": 3}, got.Assignment.Loads())
	})

	t.Run("spread over LabelNode keeps a group's keys apart", func(t *testing.T) {
		c := Constraints{Keys: map[string]Placement{}}
		for _, k := range keys[:4] {
			c.Keys[k] = Placement{Spread: LabelNode, Group: "replicas of shard 7"}
		}
		prev := Assignment{}
		for _, k := range keys {
			prev[k] = "a1" // everything on one node, as after a restart of the others
		}
		got, err := BalanceWith(prev, keys, nodes, c)
		require.NoError(t, err)
		on := map[string]bool{}
		for _, k := range keys[:4] {
			on[got.Assignment[k]] = true
		}
		assert.Len(t, on, 4, "four replicas on four nodes")
		assert.Equal(t, map[string]int{"a1": 3, "a2": 3, "b1": 3, "c1": 3}, got.Assignment.Loads())
		assert.Equal(t, 9, Moves(prev, got.Assignment), "only what balance moves anyway")
	})

	t.Run("LabelNode names nodes by ID; a declared one is ignored", func(t *testing.T) {
		liar := Node{ID: "x", Labels: map[string]string{LabelNode: "y"}}
		c := Constraints{Keys: map[string]Placement{"k00": {Require: map[string]string{LabelNode: "y"}}, "k01": {Prefer: map[string]string{LabelNode: "y"}}}}
		got, err := BalanceWith(nil, keys[:2], []Node{liar, {ID: "y"}}, c)
		require.NoError(t, err)
		assert.Equal(t, Assignment{"k00": "y", "k01": "x"}, got.Assignment, "k01 prefers y, but balance comes first")
	})
}

func TestBalanceWithRejectsBadInput(t *testing.T) {
	tests := []struct {
		name    string
		nodes   []Node
		c       Constraints
		wantErr error
		wantMsg string
	}{
		{"a negative cap", []Node{{ID: "a", MaxKeys: -1}}, Constraints{}, ErrInvalidNode, "negative cap"},
		{"a negative cost", nodesOf("a"), Constraints{Keys: map[string]Placement{"k": {Cost: -1}}}, ErrInvalidKey, "cost -1"},
		{"a cost over MaxCost", nodesOf("a"), Constraints{Keys: map[string]Placement{"k": {Cost: MaxCost + 1}}}, ErrInvalidKey, "cost"},
		{"a group without spread", nodesOf("a"), Constraints{Keys: map[string]Placement{"k": {Group: "g"}}}, ErrInvalidKey, "no spread label"},
		{"an empty node ID", []Node{{ID: ""}}, Constraints{Pins: map[string]string{"k": "a"}}, ErrInvalidNode, "empty node ID"},
		{"a duplicate node", nodesOf("a", "a"), Constraints{Pins: map[string]string{"k": "a"}}, ErrInvalidNode, "duplicate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := BalanceWith(nil, []string{"k"}, tt.nodes, tt.c)
			require.ErrorIs(t, err, tt.wantErr)
			assert.ErrorContains(t, err, tt.wantMsg)
			assert.Nil(t, got)
		})
	}
}

// FuzzBalanceWith feeds BalanceWith arbitrary inputs: keys as
// "key[@zone][%zone][*cost][^pin][~group]" (a preferred zone after %; a
// group that starts with ! is spread over LabelNode), nodes as
// "id:weight:zone:cap", prev as
// for FuzzBalance. Whatever comes in, it must not panic, must honour
// requirements, pins and caps, must place or report every key, and must
// give the same result twice.
func FuzzBalanceWith(f *testing.F) {
	f.Add("a@x,b@y,c,d*3,e^n1,f~t,g~t", "n1:1:x:0,n2:2:y:2,n3:1::0", "a=n2,b=n1")
	f.Add("a@z,b*9,c^n9", "n1:0:x:1", "")
	f.Add("a,a,b~", "n1:1:x:0,n1:1:y:0", "")
	f.Add("a%x,b%y~!t,c~!t,d@x%y*2", "n1:1:x:0,n2:1:y:1,n3:2:x:0", "a=n2,c=n2")
	f.Fuzz(func(t *testing.T, keys, nodes, prev string) {
		p, _, _, ok := parseFuzzInput("", "", prev)
		if !ok || len(keys) > 400 || len(nodes) > 200 {
			t.Skip()
		}
		c := Constraints{Keys: map[string]Placement{}, Pins: map[string]string{}}
		var ks []string
		for _, f := range strings.Split(keys, ",") {
			var pl Placement
			key, group, spread := strings.Cut(f, "~")
			if spread {
				pl.Spread, pl.Group = "zone", group
				if g, apart := strings.CutPrefix(group, "!"); apart {
					pl.Spread, pl.Group = LabelNode, g
				}
			}
			key, pin, pinned := strings.Cut(key, "^")
			if pinned {
				c.Pins[key] = pin
			}
			key, costText, costly := strings.Cut(key, "*")
			if costly {
				n, err := strconv.Atoi(costText)
				if err != nil {
					t.Skip()
				}
				pl.Cost = n
			}
			key, pzone, preferring := strings.Cut(key, "%")
			if preferring {
				pl.Prefer = map[string]string{"zone": pzone}
			}
			key, zone, required := strings.Cut(key, "@")
			if required {
				pl.Require = map[string]string{"zone": zone}
			}
			ks = append(ks, key)
			c.Keys[key] = pl
		}
		var ns []Node
		for _, f := range strings.Split(nodes, ",") {
			parts := strings.Split(f, ":")
			if len(parts) != 4 {
				t.Skip()
			}
			w, err1 := strconv.Atoi(parts[1])
			capN, err2 := strconv.Atoi(parts[3])
			if err1 != nil || err2 != nil {
				t.Skip()
			}
			ns = append(ns, Node{ID: parts[0], Weight: w, Labels: map[string]string{"zone": parts[2]}, MaxKeys: capN})
		}
		got, err := BalanceWith(p, ks, ns, c)
		if err != nil {
			require.Nil(t, got)
			if !errors.Is(err, ErrInvalidKey) && !errors.Is(err, ErrInvalidNode) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		byID := map[string]Node{}
		for _, n := range ns {
			byID[n.ID] = n
		}
		require.Len(t, got.Assignment, len(distinctSorted(ks))-len(got.Unplaceable))
		for k, id := range got.Assignment {
			n, ok := byID[id]
			require.True(t, ok, "key %q on %q, not a node", k, id)
			require.True(t, meets(n.Labels, c.Keys[k].Require), "key %q on a node it may not use", k)
		}
		for k, pin := range c.Pins {
			if n, ok := byID[pin]; ok && slices.Contains(ks, k) && meets(n.Labels, c.Keys[k].Require) {
				require.Equal(t, pin, got.Assignment[k], "pin of %q", k)
			}
		}
		again, err := BalanceWith(p, ks, ns, c)
		require.NoError(t, err)
		require.Equal(t, got, again)
	})
}

// On inputs too large to enumerate placements, the shares are still
// computed by the oracle: every node within ⌊share⌋..⌈share⌉, the fewest
// keys unplaceable, and requirements and caps honoured.
func TestBalanceWithSharesOnLargerInputs(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		prev, keys, nodes, c := constrainedInput(rt, 40, 7)
		got, err := BalanceWith(prev, keys, nodes, c)
		require.NoError(rt, err)
		o := newOracle(keys, nodes, c)
		unplaceable := map[string]bool{}
		for _, k := range got.Unplaceable {
			unplaceable[k] = true
		}
		var flex, placed []int
		for i, k := range o.keys {
			if k.pin >= 0 {
				continue
			}
			flex = append(flex, i)
			if !unplaceable[k.key] {
				placed = append(placed, i)
			}
		}
		all := 1<<len(o.nodes) - 1
		require.Equal(rt, int64(len(flex))-o.fit(flex, all), int64(len(got.Unplaceable)), "unplaceable keys")
		share := o.shares(placed)
		loads := got.Assignment.Loads()
		index := map[string]int{}
		for j, n := range o.nodes {
			index[n.ID] = j
			lo, hi := ratBounds(share[j])
			l := int64(loads[n.ID])
			require.True(rt, lo <= l && l <= hi, "node %s holds %d keys, share %s", n.ID, l, share[j].RatString())
		}
		for _, i := range placed {
			k := o.keys[i]
			require.True(rt, k.ok[index[got.Assignment[k.key]]], "key %q on a node it may not use", k.key)
		}
	})
}
