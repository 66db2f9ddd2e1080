package dim

import (
	"slices"
)

// placeUnits places the flexible keys of unit cost: fair shares give each
// node its bounds, and one minimum-cost flow picks, among the placements
// within those bounds, one with the least spread excess and then the
// fewest moves. The flow runs from the source to each key class, through
// one vertex per value of its spread label if it has one, to the node
// classes it may use (a move, cost 1) or straight to a node it held keys on
// (a stay, cost 0), and from node classes to their nodes and the sink. A
// node's arc to the sink has a lower part of ⌊share⌋−pins at a cost so
// negative that every lower part fills first, and an upper part up to
// ⌈share⌉−pins at no cost; a spread vertex's arc from its class is split
// alike into the band ⌊n/V⌋..⌈n/V⌉ and the excess beyond it. With
// preferences, a move or stay to a node class that lacks a label the key
// class prefers costs more than any number of moves, and the costs take
// two levels (see flowCost): bounds and spread, then preferences and
// moves, so that neither level needs scaling above all sums of the other.
func (s *constrained) placeUnits() {
	lo, hi := fairShares(s.fairInput())
	var flexible int64
	for _, kc := range s.kc {
		flexible += kc.n
	}
	if flexible == 0 {
		return
	}
	f := s.newUnitFlow(flexible)
	f.spreadArcs()
	moves := f.moveArcs()
	st := f.stayArcs()
	toNode := f.nodeArcs(lo, hi, flexible)
	if f.g.minCostFlow(0, f.t, flexible) != flexible {
		panic("dim: the fair shares left keys without a node") // a broken invariant
	}
	s.pickKeys(f.g, st, toNode, moves)
}

// unitFlow is placeUnits' flow graph. Vertices: source, key classes, spread
// values, node classes, nodes, sink; every arc goes from a lower vertex to
// a higher one.
type unitFlow struct {
	s      *constrained
	g      *flowGraph
	kv     []int           // the vertex of each key class
	values [][]spreadValue // the spread values of each key class, nil: no spread
	cv, nv int             // the first node class vertex, the first node vertex
	t      int             // the sink
	// The costs of a move, of spread excess, of a node beyond its bounds,
	// and of a node class without a preferred label.
	moveCost, spreadCost, boundCost, offCost flowCost
}

// spreadValue is the vertex of one value of a key class's spread label.
type spreadValue struct {
	value string
	v     int
}

// newUnitFlow lays out the vertices and sets the costs for flexible keys.
func (s *constrained) newUnitFlow(flexible int64) *unitFlow {
	f := &unitFlow{s: s}
	f.moveCost = flowCost{hi: 1}
	f.spreadCost = flowCost{hi: flexible + 1}                      // above any number of moves
	f.boundCost = flowCost{hi: (2*flexible + 3) * f.spreadCost.hi} // above any spread excess and moves
	// offCost (on a node class without a preferred label) is 0 without
	// preferences.
	if s.prefers {
		f.moveCost = flowCost{lo: 1}
		f.offCost = flowCost{lo: flexible + 1} // above any number of moves
		f.spreadCost = flowCost{hi: 1}
		f.boundCost = flowCost{hi: 2*flexible + 3} // above any spread excess
	}
	v := 1
	f.kv = make([]int, len(s.kc))
	for k := range s.kc {
		f.kv[k] = v
		v++
	}
	f.values = make([][]spreadValue, len(s.kc))
	for k, kc := range s.kc {
		if kc.place.Spread == "" || kc.n == 0 {
			continue
		}
		var vals []string
		for _, c := range kc.elig {
			vals = append(vals, s.classes[c].labels[kc.place.Spread])
		}
		slices.Sort(vals)
		for _, val := range slices.Compact(vals) {
			f.values[k] = append(f.values[k], spreadValue{val, v})
			v++
		}
	}
	f.cv = v
	v += len(s.classes)
	f.nv = v
	v += len(s.nodes)
	f.t = v
	f.g = newFlowGraph(f.t + 1)
	return f
}

// off is the cost of key class k's keys on node class c beyond a move.
func (f *unitFlow) off(k, c int) flowCost {
	if f.s.kc[k].off != nil && f.s.kc[k].off[c] {
		return f.offCost
	}
	return flowCost{}
}

// negCost is -c.
func negCost(c flowCost) flowCost { return flowCost{}.minus(c) }

// from is where a key class's keys leave for nodes: the class itself, or
// the vertex of the spread value of the node class.
func (f *unitFlow) from(k, c int) int {
	if f.values[k] == nil {
		return f.kv[k]
	}
	val := f.s.classes[c].labels[f.s.kc[k].place.Spread]
	for _, sv := range f.values[k] {
		if sv.value == val {
			return sv.v
		}
	}
	panic("dim: spread value missing") // every eligible class has one
}

// spreadArcs adds the arcs from the source to each key class, and from a
// key class to its spread values: the band, then the excess at a cost.
func (f *unitFlow) spreadArcs() {
	g, kv, values := f.g, f.kv, f.values
	for k, kc := range f.s.kc {
		if kc.n == 0 {
			continue
		}
		g.addArc(0, kv[k], kc.n, 0)
		if values[k] == nil {
			continue
		}
		all := kc.n
		for _, p := range kc.pinned {
			all += p
		}
		vn := int64(len(values[k]))
		band, odd := all/vn, int64(0)
		if all%vn != 0 {
			odd = 1
		}
		for _, sv := range values[k] {
			p := kc.pinned[sv.value]
			low := max(0, band-p)
			up := max(0, band+odd-p-low)
			if low > 0 {
				g.addArcCost(kv[k], sv.v, low, negCost(f.spreadCost))
			}
			if up > 0 {
				g.addArc(kv[k], sv.v, up, 0)
			}
			g.addArcCost(kv[k], sv.v, kc.n, f.spreadCost)
		}
	}
}

// moveArcs adds one arc per key class (or spread value) and node class.
func (f *unitFlow) moveArcs() []moveArc {
	var moves []moveArc
	for k, kc := range f.s.kc {
		if kc.n == 0 {
			continue
		}
		for _, c := range kc.elig {
			moves = append(moves, moveArc{k, c, f.g.addArcCost(f.from(k, c), f.cv+c, kc.n, f.moveCost.plus(f.off(k, c)))})
		}
	}
	return moves
}

// stayArcs adds one arc per node and key class it held keys of.
func (f *unitFlow) stayArcs() *heldKeys {
	s := f.s
	st := s.heldByNode()
	for j := range s.nodes {
		run := st.keys[st.start[j]:st.start[j+1]]
		for len(run) > 0 {
			k := int(s.class[run[0]])
			n := 1
			for n < len(run) && int(s.class[run[n]]) == k {
				n++
			}
			st.arcs = append(st.arcs, f.g.addArcCost(f.from(k, s.nodeClass[j]), f.nv+j, int64(n), f.off(k, s.nodeClass[j])))
			run = run[n:]
		}
	}
	return st
}

// nodeArcs adds the arcs from node classes to their nodes, and from each
// node to the sink within its fair shares lo..hi (less its pins), and
// returns the arc to each node.
func (f *unitFlow) nodeArcs(lo, hi []int64, flexible int64) []int {
	s, g, nv, t := f.s, f.g, f.nv, f.t
	toNode := make([]int, len(s.nodes))
	for c, nc := range s.classes {
		for _, j := range nc.members {
			toNode[j] = g.addArc(f.cv+c, nv+j, flexible, 0)
		}
	}
	for j, n := range s.nodes {
		l, h := lo[j]-n.pins, hi[j]-n.pins
		if l > 0 {
			g.addArcCost(nv+j, t, l, negCost(f.boundCost))
		}
		if h > l {
			g.addArc(nv+j, t, h-max(l, 0), 0)
		}
	}
	return toNode
}

// moveArc is the flow arc that moves keys of class k to node class c.
type moveArc struct{ k, c, a int }

// heldKeys are the flexible keys that may stay where they are, grouped
// by node and, within a node, by key class: those of node j are
// keys[start[j]:start[j+1]]. arcs holds the stay arcs in the same order,
// one per run of a class.
type heldKeys struct {
	keys  []int32
	start []int
	arcs  []int
}

// heldByNode groups the held flexible keys by node (a counting sort) and
// by class within each node.
func (s *constrained) heldByNode() *heldKeys {
	h := &heldKeys{start: make([]int, len(s.nodes)+1)}
	for k := range s.kc {
		for _, i := range s.members[k] {
			if j := s.held[i]; j >= 0 {
				h.start[j+1]++
			}
		}
	}
	for j := range s.nodes {
		h.start[j+1] += h.start[j]
	}
	h.keys = make([]int32, h.start[len(s.nodes)])
	next := slices.Clone(h.start[:len(s.nodes)])
	// Classes in order, so each node's keys come out grouped by class.
	for k := range s.kc {
		for _, i := range s.members[k] {
			if j := s.held[i]; j >= 0 {
				h.keys[next[j]] = i
				next[j]++
			}
		}
	}
	return h
}

// pickKeys turns class-level flows into keys on nodes: each node keeps the
// keys of a class it holds that the flow lets stay, those with the highest
// affinity to it; the others of each class, in hash order, go in turn to
// the node classes the flow moves them to, and within a node class to its
// nodes, each taking what the flow gives it.
func (s *constrained) pickKeys(g *flowGraph, h *heldKeys, toNode []int, moves []moveArc) {
	b := &balancing{keys: s.keys}
	loose := make([][]scoredKey, len(s.kc))
	for k := range s.kc {
		for _, i := range s.members[k] {
			if s.held[i] < 0 {
				loose[k] = append(loose[k], scoredKey{hashString(s.keys[i]), int(i)})
			}
		}
	}
	arcs := h.arcs
	for j := range s.nodes {
		run := h.keys[h.start[j]:h.start[j+1]]
		for len(run) > 0 {
			k := s.class[run[0]]
			n := 1
			for n < len(run) && s.class[run[n]] == k {
				n++
			}
			keep := g.flow(arcs[0])
			arcs = arcs[1:]
			if keep == int64(n) {
				for _, i := range run[:n] {
					s.state[i] = keyStayed
				}
				run = run[n:]
				continue
			}
			ranked := make([]scoredKey, n)
			for x, i := range run[:n] {
				ranked[x] = scoredKey{^affinity(hashString(s.keys[i]), s.nodes[j].hash), int(i)}
			}
			slices.SortFunc(ranked, b.byScore)
			for x, r := range ranked {
				if int64(x) < keep {
					s.state[r.key] = keyStayed
					continue
				}
				s.held[r.key] = -1
				loose[k] = append(loose[k], scoredKey{hashString(s.keys[r.key]), r.key})
			}
			run = run[n:]
		}
	}
	pool := make([][]int32, len(s.classes))
	for k := range s.kc {
		b.sortByScore(loose[k])
		rest := loose[k]
		// moves is in key class order.
		for len(moves) > 0 && moves[0].k == k {
			n := g.flow(moves[0].a)
			c := moves[0].c
			for _, r := range rest[:n] {
				pool[c] = append(pool[c], int32(r.key))
			}
			rest = rest[n:]
			moves = moves[1:]
		}
		if len(rest) > 0 {
			panic("dim: keys left without a flow") // a broken invariant
		}
	}
	for c, nc := range s.classes {
		keys := pool[c]
		for _, j := range nc.members {
			n := g.flow(toNode[j])
			for _, i := range keys[:n] {
				s.held[i] = int32(j)
				s.state[i] = keyPlaced
			}
			keys = keys[n:]
		}
	}
}
