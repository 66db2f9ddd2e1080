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
	moveCost := flowCost{hi: 1}
	spreadCost := flowCost{hi: flexible + 1}                    // above any number of moves
	boundCost := flowCost{hi: (2*flexible + 3) * spreadCost.hi} // above any spread excess and moves
	var offCost flowCost                                        // on a node class without a preferred label
	if s.prefers {
		moveCost = flowCost{lo: 1}
		offCost = flowCost{lo: flexible + 1} // above any number of moves
		spreadCost = flowCost{hi: 1}
		boundCost = flowCost{hi: 2*flexible + 3} // above any spread excess
	}
	// off is the cost of key class k's keys on node class c beyond a move.
	off := func(k, c int) flowCost {
		if s.kc[k].off != nil && s.kc[k].off[c] {
			return offCost
		}
		return flowCost{}
	}
	neg := func(c flowCost) flowCost { return flowCost{}.minus(c) }

	// Vertices: source, key classes, spread values, node classes, nodes,
	// sink; every arc goes from a lower vertex to a higher one.
	type spreadValue struct {
		value string
		v     int
	}
	v := 1
	kv := make([]int, len(s.kc))
	for k := range s.kc {
		kv[k] = v
		v++
	}
	values := make([][]spreadValue, len(s.kc))
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
			values[k] = append(values[k], spreadValue{val, v})
			v++
		}
	}
	cv := v
	v += len(s.classes)
	nv := v
	v += len(s.nodes)
	t := v
	g := newFlowGraph(t + 1)

	// from is where a key class's keys leave for nodes: the class itself,
	// or the vertex of the spread value of the node class.
	from := func(k, c int) int {
		if values[k] == nil {
			return kv[k]
		}
		val := s.classes[c].labels[s.kc[k].place.Spread]
		for _, sv := range values[k] {
			if sv.value == val {
				return sv.v
			}
		}
		panic("dim: spread value missing") // every eligible class has one
	}
	for k, kc := range s.kc {
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
				g.addArcCost(kv[k], sv.v, low, neg(spreadCost))
			}
			if up > 0 {
				g.addArc(kv[k], sv.v, up, 0)
			}
			g.addArcCost(kv[k], sv.v, kc.n, spreadCost)
		}
	}
	// Moves: one arc per key class (or spread value) and node class.
	var moves []moveArc
	for k, kc := range s.kc {
		if kc.n == 0 {
			continue
		}
		for _, c := range kc.elig {
			moves = append(moves, moveArc{k, c, g.addArcCost(from(k, c), cv+c, kc.n, moveCost.plus(off(k, c)))})
		}
	}
	// Stays: one arc per node and key class it held keys of.
	st := s.heldByNode()
	for j := range s.nodes {
		run := st.keys[st.start[j]:st.start[j+1]]
		for len(run) > 0 {
			k := int(s.class[run[0]])
			n := 1
			for n < len(run) && int(s.class[run[n]]) == k {
				n++
			}
			st.arcs = append(st.arcs, g.addArcCost(from(k, s.nodeClass[j]), nv+j, int64(n), off(k, s.nodeClass[j])))
			run = run[n:]
		}
	}
	toNode := make([]int, len(s.nodes))
	for c, nc := range s.classes {
		for _, j := range nc.members {
			toNode[j] = g.addArc(cv+c, nv+j, flexible, 0)
		}
	}
	for j, n := range s.nodes {
		l, h := lo[j]-n.pins, hi[j]-n.pins
		if l > 0 {
			g.addArcCost(nv+j, t, l, neg(boundCost))
		}
		if h > l {
			g.addArc(nv+j, t, h-max(l, 0), 0)
		}
	}
	if g.minCostFlow(0, t, flexible) != flexible {
		panic("dim: the fair shares left keys without a node") // a broken invariant
	}
	s.pickKeys(g, st, toNode, moves)
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
