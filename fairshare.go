package dim

import (
	"cmp"
	"slices"
)

// Fair shares under constraints.
//
// Every node j has a weight w_j, a number of pinned keys pin_j it holds
// whatever happens, and room_j: how many more keys its cap lets it take.
// Each class of keys may use some classes of nodes. The load vectors that
// fractional placements can reach are pin plus the base polytope of a
// polymatroid (the most keys a set of nodes can take), and that polytope
// has one lexicographically optimal point with respect to the weights
// (Fujishige): the loads whose sorted load/weight ratios are
// lexicographically largest, which are at once the ones whose largest
// ratios are lexicographically smallest. That point is each node's share.
// Nodes of one class take the same keys, so a class fills like water: for
// a level μ, node j holds clamp(μ·w_j, pin_j, pin_j+room_j).
//
// The shares come level by level from the top: the least μ at which all
// remaining keys fit with every class filled to at most its level
// (parametric maximum flow, found by Newton's method on minimum cuts), the
// classes that are then full and the keys that can only go there are
// fixed at that level, and the rest is solved again without them.

// fairNode is one node as fair shares see it.
type fairNode struct {
	w    int64
	pin  int64
	room int64 // keys the node may take beyond its pins
}

// fairInput is a placement problem on classes.
type fairInput struct {
	nodes   []fairNode
	classes [][]int // node classes, by node index
	keys    []int64 // per key class, how many keys
	elig    [][]int // per key class, the node classes it may use
}

// level is a rational μ = num/den with den > 0.
type level struct{ num, den int64 }

// flex is how many keys beyond its pins node n holds at level l, times
// l.den.
func (n fairNode) flex(l level) int64 {
	return min(max(l.num*n.w-n.pin*l.den, 0), n.room*l.den)
}

// fairShares returns each node's share as the bounds ⌊share⌋ and ⌈share⌉,
// pins included. Every key class's keys must fit in the rooms of its
// classes (the caller has set the unplaceable ones aside).
func fairShares(in fairInput) (lo, hi []int64) {
	lo = make([]int64, len(in.nodes))
	hi = make([]int64, len(in.nodes))
	for j, n := range in.nodes {
		lo[j], hi[j] = n.pin, n.pin
	}
	activeK := make([]bool, len(in.keys))
	left := 0
	for k, n := range in.keys {
		if n > 0 && len(in.elig[k]) > 0 {
			activeK[k] = true
			left++
		}
	}
	activeC := make([]bool, len(in.classes))
	for c := range activeC {
		activeC[c] = true
	}
	for left > 0 {
		mu, tightK, tightC := in.topLevel(activeK, activeC)
		fixed := 0
		for c, tight := range tightC {
			if !tight {
				continue
			}
			activeC[c] = false
			fixed++
			for _, j := range in.classes[c] {
				n := in.nodes[j]
				s := n.pin*mu.den + n.flex(mu) // the share, times mu.den
				lo[j], hi[j] = s/mu.den, (s+mu.den-1)/mu.den
			}
		}
		for k, tight := range tightK {
			if tight {
				activeK[k] = false
				left--
			}
		}
		if fixed == 0 {
			panic("dim: fair shares made no progress") // a broken invariant, never input
		}
	}
	return lo, hi
}

// topLevel finds the least level at which the active key classes fit into
// the active node classes, and the key and node classes that are then
// tight: those from which no flow can be shifted to a class with room.
func (in fairInput) topLevel(activeK, activeC []bool) (level, []bool, []bool) {
	mu := level{0, 1}
	for {
		g, kv, cv, t, want := in.levelGraph(activeK, activeC, mu)
		got := g.maxFlow(0, t, flowInf, nil)
		if got == want {
			reach := g.reachesSink(t)
			tightK := make([]bool, len(in.keys))
			tightC := make([]bool, len(in.classes))
			for k, v := range kv {
				tightK[k] = v > 0 && !reach[v]
			}
			for c, v := range cv {
				tightC[c] = v > 0 && !reach[v]
			}
			return mu, tightK, tightC
		}
		// The source side of a minimum cut holds key classes whose keys
		// do not fit into the node classes they may use: raise the level
		// until they do.
		side := g.fromSource(0)
		var need int64
		for k, v := range kv {
			if v > 0 && side[v] {
				need += in.keys[k]
			}
		}
		var nodes []int
		for c, v := range cv {
			if v > 0 && side[v] {
				nodes = append(nodes, in.classes[c]...)
			}
		}
		next := in.leastLevel(nodes, need)
		if next.num*mu.den <= mu.num*next.den {
			panic("dim: fair level did not rise") // a broken invariant, never input
		}
		mu = next
	}
}

// levelGraph builds the flow network of the active classes at level mu,
// capacities times mu.den: source 0 → key classes → node classes → sink t.
// kv and cv give each class's vertex (0: inactive); want is the flow that
// places every key.
func (in fairInput) levelGraph(activeK, activeC []bool, mu level) (g *flowGraph, kv, cv []int, t int, want int64) {
	kv = make([]int, len(in.keys))
	cv = make([]int, len(in.classes))
	v := 1
	for k, on := range activeK {
		if on {
			kv[k] = v
			v++
		}
	}
	for c, on := range activeC {
		if on {
			cv[c] = v
			v++
		}
	}
	t = v
	g = newFlowGraph(v + 1)
	for k, on := range activeK {
		if !on {
			continue
		}
		g.addArc(0, kv[k], in.keys[k]*mu.den, 0)
		want += in.keys[k] * mu.den
		for _, c := range in.elig[k] {
			if activeC[c] {
				g.addArc(kv[k], cv[c], flowInf, 0)
			}
		}
	}
	for c, on := range activeC {
		if !on {
			continue
		}
		var capacity int64
		for _, j := range in.classes[c] {
			capacity += in.nodes[j].flex(mu)
		}
		g.addArc(cv[c], t, capacity, 0)
	}
	return g, kv, cv, t, want
}

// leastLevel returns the least level at which the given nodes hold need
// keys beyond their pins. Node j starts to fill at pin_j/w_j and is full
// at (pin_j+room_j)/w_j; in between the total grows linearly, so a sweep
// over those points finds the segment and the level in it exactly.
func (in fairInput) leastLevel(nodes []int, need int64) level {
	type event struct {
		at  level
		j   int
		end bool
	}
	events := make([]event, 0, 2*len(nodes))
	for _, j := range nodes {
		n := in.nodes[j]
		if n.room == 0 {
			continue
		}
		events = append(events, event{level{n.pin, n.w}, j, false}, event{level{n.pin + n.room, n.w}, j, true})
	}
	slices.SortFunc(events, func(x, y event) int {
		return cmp.Or(cmp.Compare(x.at.num*y.at.den, y.at.num*x.at.den), cmp.Compare(x.j, y.j), boolCmp(x.end, y.end))
	})
	// On the current segment the nodes hold μ·w − pins + full: w and pins
	// of the nodes filling, full the rooms of those already full.
	var w, pins, full int64
	solve := func() level { return reduced(level{need + pins - full, w}) }
	last := level{0, 1}
	for _, e := range events {
		// The total at e.at, times e.at.den, against need.
		if e.at.num*w-e.at.den*pins+e.at.den*full >= need*e.at.den {
			if w == 0 {
				return last // flat since the last point
			}
			return solve()
		}
		last = e.at
		n := in.nodes[e.j]
		if e.end {
			w -= n.w
			pins -= n.pin
			full += n.room
		} else {
			w += n.w
			pins += n.pin
		}
	}
	if w == 0 {
		panic("dim: keys exceed the room of their nodes") // the caller set them aside
	}
	return solve()
}

func boolCmp(x, y bool) int {
	switch {
	case x == y:
		return 0
	case !x:
		return -1
	}
	return 1
}

// reduced divides out the greatest common divisor of l's terms.
func reduced(l level) level {
	a, b := l.num, l.den
	for b != 0 {
		a, b = b, a%b
	}
	if a == 0 {
		return level{0, 1}
	}
	return level{l.num / a, l.den / a}
}
