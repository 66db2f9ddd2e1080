package dim

import (
	"cmp"
	"container/heap"
	"math/big"
	"slices"
)

// Placing keys of varying cost.
//
// Shares are fair shares in cost units (fairshare.go). Placing whole keys
// so that every node holds within ⌊share⌋..⌈share⌉ is bin packing, so
// placeCosts promises a bound instead, in three steps:
//
//  1. An integral flow in cost units over the classes, no node class
//     getting more than the sum of its nodes' ⌈share⌉ (a fractional one
//     exists, so an integral one does too), at the least cost in units
//     that leave the node class that held them.
//  2. Whole keys per key class and node class, by the rounding of Shmoys
//     and Tardos: on each node class the fractional keys, largest cost
//     first, are laid into slots of one key each, and a flow matches keys
//     to slots they had a fraction of. A slot's key costs at most the
//     cheapest key of the slot before, so a node class holds at most its
//     fractional cost plus one largest cost.
//  3. Within a node class, whose nodes may all take the same keys, each
//     node first keeps its previous keys while it stays within ⌈share⌉,
//     largest first; the rest go largest first to the node with the most
//     room left. As long as the class's total is at most Σ⌈share⌉ + C, with
//     C the largest cost, the node with the most room has room at least
//     (c − C)/m for a key of cost c among m nodes, so no node ends above
//     ⌈share⌉ + C.
//
// So, without caps, every node's cost load is at most ⌈share⌉ + C. Caps
// are hard: a capped node is a class of its own, and a key its caps turn
// away goes to the node with the most room among those it may use whose
// caps let it, or else is unplaceable; there the bound is not promised.
// Keys stay where they are whenever the previous assignment already meets
// the shares: if it holds every key, each on a node that may hold it, and
// no node's cost load exceeds its ⌈share⌉, nothing moves. A key that caps
// turn away from every node is given one repair (evictFor) before it is
// reported unplaceable: with costs and caps, a key may be reported
// unplaceable that another packing would fit.

// placeCosts places the flexible keys when some cost more than 1.
func (s *constrained) placeCosts() {
	_, hi := fairShares(s.fairInput())
	units := s.classUnits(hi)
	counts := s.roundToKeys(units)
	s.packClasses(counts, hi)
}

// classUnits is step 1: the cost units of each key class per node class,
// units[k][c], from a minimum-cost flow that puts the fewest units on
// node classes their key class does not prefer and then keeps units where
// they were.
func (s *constrained) classUnits(hi []int64) [][]int64 {
	K, C := len(s.kc), len(s.classes)
	g := newFlowGraph(K + C + 2)
	t := K + C + 1
	heldUnits := make([][]int64, K)
	var total int64
	for k, kc := range s.kc {
		heldUnits[k] = make([]int64, C)
		for _, i := range s.members[k] {
			if j := s.held[i]; j >= 0 {
				heldUnits[k][s.nodeClass[j]] += kc.cost
			}
		}
		g.addArc(0, 1+k, kc.n*kc.cost, 0)
		total += kc.n * kc.cost
	}
	// Units on a node class without a label their key class prefers cost
	// more than any units that move.
	arcs := make([][][2]int, K) // per key class: (class, arc) pairs
	for k, kc := range s.kc {
		for _, c := range kc.elig {
			var off int64
			if kc.off != nil && kc.off[c] {
				off = 1
			}
			if h := heldUnits[k][c]; h > 0 {
				arcs[k] = append(arcs[k], [2]int{c, g.addArcCost(1+k, 1+K+c, h, flowCost{hi: off})})
			}
			arcs[k] = append(arcs[k], [2]int{c, g.addArcCost(1+k, 1+K+c, kc.n*kc.cost, flowCost{hi: off, lo: 1})})
		}
	}
	for c, nc := range s.classes {
		var capacity int64
		for _, j := range nc.members {
			capacity += hi[j] - s.nodes[j].pinC
		}
		g.addArc(1+K+c, t, max(capacity, 0), 0)
	}
	if g.minCostFlow(0, t, total) != total {
		panic("dim: cost shares left units without a node") // a broken invariant
	}
	units := make([][]int64, K)
	for k := range s.kc {
		units[k] = make([]int64, C)
		for _, ca := range arcs[k] {
			units[k][ca[0]] += g.flow(ca[1])
		}
	}
	return units
}

// roundToKeys is step 2: whole keys per key class and node class.
func (s *constrained) roundToKeys(units [][]int64) [][]int64 {
	K, C := len(s.kc), len(s.classes)
	counts := make([][]int64, K)
	for k := range counts {
		counts[k] = make([]int64, C)
	}
	// Vertices: source, key classes, then slot vertices as they come,
	// then the sink (added last, so its index is known only at the end:
	// arcs to it are collected first).
	type slotArc struct {
		k, c int
		v    int   // slot vertex
		cap  int64 // keys of k the slot vertex may take
	}
	type slotVertex struct{ cap int64 }
	var arcs []slotArc
	var slots []slotVertex
	for c := range s.classes {
		type part struct {
			k int
			x *big.Rat // keys, fractional
		}
		var parts []part
		for k, kc := range s.kc {
			if units[k][c] > 0 {
				parts = append(parts, part{k, big.NewRat(units[k][c], kc.cost)})
			}
		}
		// Largest cost first, then by class.
		slices.SortStableFunc(parts, func(x, y part) int { return cmp.Compare(s.kc[y.k].cost, s.kc[x.k].cost) })
		shared := map[int64]int{} // slot index → vertex, for slots parts share
		sharedSlot := func(idx int64) int {
			v, ok := shared[idx]
			if !ok {
				v = len(slots)
				slots = append(slots, slotVertex{1})
				shared[idx] = v
			}
			return v
		}
		start := new(big.Rat)
		for _, p := range parts {
			end := new(big.Rat).Add(start, p.x)
			first, last := ratFloor(start), ratCeil(end)-1
			fullFrom, fullTo := ratCeil(start), ratFloor(end) // full slots: [fullFrom, fullTo)
			if !start.IsInt() {
				arcs = append(arcs, slotArc{p.k, c, sharedSlot(first), 1})
			}
			if fullTo > fullFrom {
				v := len(slots)
				slots = append(slots, slotVertex{fullTo - fullFrom})
				arcs = append(arcs, slotArc{p.k, c, v, fullTo - fullFrom})
			}
			if !end.IsInt() && (start.IsInt() || last != first) {
				arcs = append(arcs, slotArc{p.k, c, sharedSlot(last), 1})
			}
			start = end
		}
	}
	g := newFlowGraph(1 + K + len(slots) + 1)
	t := 1 + K + len(slots)
	var total int64
	for k, kc := range s.kc {
		g.addArc(0, 1+k, kc.n, 0)
		total += kc.n
	}
	idx := make([]int, len(arcs))
	for x, a := range arcs {
		idx[x] = g.addArc(1+a.k, 1+K+a.v, a.cap, 0)
	}
	for v, sv := range slots {
		g.addArc(1+K+v, t, sv.cap, 0)
	}
	if g.maxFlow(0, t, total, nil) != total {
		panic("dim: slot rounding left keys without a slot") // a broken invariant
	}
	for x, a := range arcs {
		counts[a.k][a.c] += g.flow(idx[x])
	}
	return counts
}

func ratFloor(r *big.Rat) int64 {
	return new(big.Int).Quo(r.Num(), r.Denom()).Int64() // r ≥ 0
}

func ratCeil(r *big.Rat) int64 {
	f := ratFloor(r)
	if r.IsInt() {
		return f
	}
	return f + 1
}

// packClasses is step 3: it picks the keys of each key class for each node
// class, its keys held there first, and packs each node class.
func (s *constrained) packClasses(counts [][]int64, hi []int64) {
	b := &balancing{keys: s.keys}
	pools := make([][]int32, len(s.classes))
	for k := range s.kc {
		held := make([][]scoredKey, len(s.classes))
		var loose []scoredKey
		for _, i := range s.members[k] {
			h := hashString(s.keys[i])
			if j := s.held[i]; j >= 0 {
				c := s.nodeClass[j]
				held[c] = append(held[c], scoredKey{^affinity(h, s.nodes[j].hash), int(i)})
				continue
			}
			loose = append(loose, scoredKey{h, int(i)})
		}
		need := slices.Clone(counts[k])
		for c := range s.classes {
			run := held[c]
			if int64(len(run)) > need[c] {
				slices.SortFunc(run, b.byScore)
			}
			for x, r := range run {
				if int64(x) < need[c] {
					pools[c] = append(pools[c], int32(r.key))
					continue
				}
				s.held[r.key] = -1
				loose = append(loose, scoredKey{hashString(s.keys[r.key]), r.key})
			}
			need[c] = max(0, need[c]-int64(len(run)))
		}
		b.sortByScore(loose)
		for c := range s.classes {
			for ; need[c] > 0; need[c]-- {
				pools[c] = append(pools[c], int32(loose[0].key))
				loose = loose[1:]
			}
		}
		if len(loose) > 0 {
			panic("dim: rounded counts left keys out") // a broken invariant
		}
	}
	load := make([]int64, len(s.nodes))
	count := make([]int64, len(s.nodes))
	for j, n := range s.nodes {
		load[j], count[j] = n.pinC, n.pins
	}
	var spill []int32
	for c := range s.classes {
		spill = append(spill, s.pack(c, pools[c], hi, load, count)...)
	}
	s.placeSpilled(spill, hi, load, count)
}

// pack places the keys of pool on the nodes of class c: each node keeps
// its previous keys, largest first, while it stays within hi; the rest go
// largest first to the node with the most room under hi. A key that
// class's caps turn away (its only node is capped) is returned.
func (s *constrained) pack(c int, pool []int32, hi, load, count []int64) (spill []int32) {
	members := s.classes[c].members
	b := &balancing{keys: s.keys}
	var rest []int32
	byNode := map[int][]int32{}
	for _, i := range pool {
		if j := s.held[i]; j >= 0 {
			byNode[int(j)] = append(byNode[int(j)], i)
		} else {
			rest = append(rest, i)
		}
	}
	for _, j := range members {
		keys := byNode[j]
		s.byCost(b, keys, func(i int32) uint64 { return ^affinity(hashString(s.keys[i]), s.nodes[j].hash) })
		for _, i := range keys {
			if load[j]+s.cost(i) <= hi[j] && s.fits(j, i, load, count) {
				s.take(j, i, load, count)
				s.state[i] = keyStayed
				continue
			}
			s.held[i] = -1
			rest = append(rest, i)
		}
	}
	s.byCost(b, rest, func(i int32) uint64 { return hashString(s.keys[i]) })
	h := &roomHeap{}
	for _, j := range members {
		h.items = append(h.items, roomItem{hi[j] - load[j], j})
	}
	heap.Init(h)
	for _, i := range rest {
		top := h.items[0]
		if !s.fits(top.j, i, load, count) {
			spill = append(spill, i) // only capped nodes are alone in a class
			continue
		}
		s.take(top.j, i, load, count)
		s.held[i] = int32(top.j)
		s.state[i] = keyPlaced
		h.items[0].room -= s.cost(i)
		heap.Fix(h, 0)
	}
	return spill
}

func (s *constrained) cost(i int32) int64 { return s.kc[s.class[i]].cost }

// fits reports whether node j's caps let it take key i.
func (s *constrained) fits(j int, i int32, load, count []int64) bool {
	n := s.nodes[j]
	return (n.capN == 0 || count[j] < n.capN) && (n.capC == 0 || load[j]+s.cost(i) <= n.capC)
}

func (s *constrained) take(j int, i int32, load, count []int64) {
	load[j] += s.cost(i)
	count[j]++
}

// byCost sorts keys largest cost first, then by score and key.
func (s *constrained) byCost(b *balancing, keys []int32, score func(i int32) uint64) {
	slices.SortFunc(keys, func(x, y int32) int {
		if c := cmp.Compare(s.cost(y), s.cost(x)); c != 0 {
			return c
		}
		return b.byScore(scoredKey{score(x), int(x)}, scoredKey{score(y), int(y)})
	})
}

// placeSpilled puts each key a capped node turned away on the node with
// the most room under hi among all it may use whose caps let it, or
// makes it unplaceable.
func (s *constrained) placeSpilled(spill []int32, hi, load, count []int64) {
	b := &balancing{keys: s.keys}
	s.byCost(b, spill, func(i int32) uint64 { return hashString(s.keys[i]) })
	for _, i := range spill {
		best := -1
		for j := range s.nodes {
			if !s.kc[s.class[i]].ok[s.nodeClass[j]] || !s.fits(j, i, load, count) {
				continue
			}
			if best < 0 || hi[j]-load[j] > hi[best]-load[best] {
				best = j
			}
		}
		if best < 0 {
			if !s.evictFor(i, hi, load, count) {
				s.held[i] = -1
				s.state[i] = keyUnplaceable
			}
			continue
		}
		s.take(best, i, load, count)
		s.held[i] = int32(best)
		s.state[i] = keyPlaced
	}
}

// evictFor tries to make room for key i by moving one placed key off a
// node i may use to another node that may take it, and reports whether it
// placed i. It is a repair for what packing whole keys under caps leaves
// over, not a search: with costs and caps, a key may still be reported
// unplaceable that another packing would fit.
func (s *constrained) evictFor(i int32, hi, load, count []int64) bool {
	ok := s.kc[s.class[i]].ok
	for x, st := range s.state {
		if st != keyPlaced && st != keyStayed {
			continue
		}
		j := int(s.held[x])
		if !ok[s.nodeClass[j]] {
			continue
		}
		// Without x, would j take i, and would some other node take x?
		load[j] -= s.cost(int32(x))
		count[j]--
		if s.fits(j, i, load, count) {
			xok := s.kc[s.class[x]].ok
			for to := range s.nodes {
				if to != j && xok[s.nodeClass[to]] && s.fits(to, int32(x), load, count) {
					s.take(to, int32(x), load, count)
					s.held[x] = int32(to)
					s.state[x] = keyPlaced
					s.take(j, i, load, count)
					s.held[i] = int32(j)
					s.state[i] = keyPlaced
					return true
				}
			}
		}
		load[j] += s.cost(int32(x))
		count[j]++
	}
	return false
}

type roomItem struct {
	room int64
	j    int
}

// roomHeap orders nodes by room left, most first, then by index.
type roomHeap struct{ items []roomItem }

func (h *roomHeap) Len() int { return len(h.items) }
func (h *roomHeap) Less(x, y int) bool {
	a, b := h.items[x], h.items[y]
	if a.room != b.room {
		return a.room > b.room
	}
	return a.j < b.j
}
func (h *roomHeap) Swap(x, y int) { h.items[x], h.items[y] = h.items[y], h.items[x] }
func (h *roomHeap) Push(x any)    { h.items = append(h.items, x.(roomItem)) }
func (h *roomHeap) Pop() any {
	x := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	return x
}
