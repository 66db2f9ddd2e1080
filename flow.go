package dim

import (
	"container/heap"
	"math"
)

// flowGraph is a directed graph with integer capacities and costs, for the
// maximum flows and minimum-cost flows of constrained balancing. Arcs come
// in pairs: arc a and its reverse a^1, whose residual capacity is the flow
// on a. Every algorithm here is deterministic: it visits vertices and arcs
// in the order they were added.
type flowGraph struct {
	arcs []flowArc
	out  [][]int32 // arc indexes leaving each vertex
	// lo holds the lower level of each arc's cost (see flowCost), nil
	// while every arc's is 0: the maximum flows, which look at no cost,
	// run over arcs as small as they can be.
	lo []int64
}

type flowArc struct {
	to   int32
	cap  int64 // residual capacity
	cost int64 // the upper level of its cost
}

// flowCost is a cost of two levels compared in order: a minimum-cost flow
// minimises hi and, among the flows of least hi, lo, with no need to scale
// one level above every sum of the other.
type flowCost struct{ hi, lo int64 }

func (a flowCost) plus(b flowCost) flowCost  { return flowCost{a.hi + b.hi, a.lo + b.lo} }
func (a flowCost) minus(b flowCost) flowCost { return flowCost{a.hi - b.hi, a.lo - b.lo} }
func (a flowCost) less(b flowCost) bool      { return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo }

// unreachedCost marks a vertex no path reaches; every cost of a path is
// less.
var unreachedCost = flowCost{math.MaxInt64, 0}

func minCost(a, b flowCost) flowCost {
	if b.less(a) {
		return b
	}
	return a
}

// flowInf is an arc capacity that never limits a flow.
const flowInf = math.MaxInt64 / 4

func newFlowGraph(vertices int) *flowGraph {
	return &flowGraph{out: make([][]int32, vertices)}
}

// addArc adds an arc from u to v of a cost of one level and returns its
// index.
func (g *flowGraph) addArc(u, v int, capacity, cost int64) int {
	return g.addArcCost(u, v, capacity, flowCost{hi: cost})
}

// addArcCost adds an arc from u to v and returns its index.
func (g *flowGraph) addArcCost(u, v int, capacity int64, cost flowCost) int {
	a := len(g.arcs)
	g.arcs = append(g.arcs, flowArc{to: int32(v), cap: capacity, cost: cost.hi}, flowArc{to: int32(u), cost: -cost.hi})
	if cost.lo != 0 && g.lo == nil {
		g.lo = make([]int64, a, cap(g.arcs))
	}
	if g.lo != nil {
		g.lo = append(g.lo, cost.lo, -cost.lo)
	}
	g.out[u] = append(g.out[u], int32(a))
	g.out[v] = append(g.out[v], int32(a+1))
	return a
}

// cost is arc a's cost.
func (g *flowGraph) cost(a int) flowCost {
	if g.lo == nil {
		return flowCost{hi: g.arcs[a].cost}
	}
	return flowCost{g.arcs[a].cost, g.lo[a]}
}

// flow is the flow on arc a.
func (g *flowGraph) flow(a int) int64 { return g.arcs[a^1].cap }

// dinic is the working state of Dinic's maximum flow algorithm; admit, if
// set, restricts it to the arcs it admits.
type dinic struct {
	g     *flowGraph
	level []int32
	next  []int // per vertex, the first of its arcs not yet exhausted
	admit func(a int) bool
	queue []int
}

// maxFlow pushes as much flow as it can, at most limit, from s to t and
// returns how much it pushed. Only arcs that admit accepts carry flow.
func (g *flowGraph) maxFlow(s, t int, limit int64, admit func(a int) bool) int64 {
	d := &dinic{g: g, level: make([]int32, len(g.out)), next: make([]int, len(g.out)), admit: admit}
	var total int64
	for total < limit && d.bfs(s, t) {
		clear(d.next)
		for total < limit {
			f := d.push(s, t, limit-total)
			if f == 0 {
				break
			}
			total += f
		}
	}
	return total
}

func (d *dinic) usable(a int) bool {
	return d.g.arcs[a].cap > 0 && (d.admit == nil || d.admit(a))
}

// bfs levels the vertices by distance from s over usable arcs and reports
// whether t is reached.
func (d *dinic) bfs(s, t int) bool {
	for i := range d.level {
		d.level[i] = -1
	}
	d.level[s] = 0
	d.queue = append(d.queue[:0], s)
	for i := 0; i < len(d.queue); i++ {
		u := d.queue[i]
		for _, a := range d.g.out[u] {
			v := int(d.g.arcs[a].to)
			if d.level[v] < 0 && d.usable(int(a)) {
				d.level[v] = d.level[u] + 1
				d.queue = append(d.queue, v)
			}
		}
	}
	return d.level[t] >= 0
}

// push sends up to limit along level-increasing paths from u to t.
func (d *dinic) push(u, t int, limit int64) int64 {
	if u == t {
		return limit
	}
	out := d.g.out[u]
	for ; d.next[u] < len(out); d.next[u]++ {
		a := int(out[d.next[u]])
		v := int(d.g.arcs[a].to)
		if d.level[v] != d.level[u]+1 || !d.usable(a) {
			continue
		}
		if f := d.push(v, t, min(limit, d.g.arcs[a].cap)); f > 0 {
			d.g.arcs[a].cap -= f
			d.g.arcs[a^1].cap += f
			return f
		}
	}
	return 0
}

// reachesSink marks the vertices from which t can be reached over arcs
// with residual capacity.
func (g *flowGraph) reachesSink(t int) []bool {
	seen := make([]bool, len(g.out))
	seen[t] = true
	queue := []int{t}
	for i := 0; i < len(queue); i++ {
		v := queue[i]
		// An arc u→v with residual capacity is the reverse of one of v's.
		for _, a := range g.out[v] {
			u := int(g.arcs[a].to)
			if !seen[u] && g.arcs[a^1].cap > 0 {
				seen[u] = true
				queue = append(queue, u)
			}
		}
	}
	return seen
}

// minCostFlow sends need units from s to t at the least total cost and
// returns how many it sent. The graph must be acyclic with every arc from
// a lower vertex to a higher one, so that potentials start from one pass
// in vertex order; costs may be negative.
//
// It is the primal-dual method: Dijkstra on reduced costs finds the
// shortest distances, and a maximum flow over the arcs of reduced cost zero
// sends everything that goes at that distance at once. The distances only
// grow, and with the few cost levels constrained balancing uses there are
// few phases.
func (g *flowGraph) minCostFlow(s, t int, need int64) int64 {
	n := len(g.out)
	pot := make([]flowCost, n)
	for i := range pot {
		pot[i] = unreachedCost
	}
	pot[s] = flowCost{}
	for u := range n {
		if pot[u] == unreachedCost {
			continue
		}
		for _, a := range g.out[u] {
			arc := &g.arcs[a]
			if d := pot[u].plus(g.cost(int(a))); arc.cap > 0 && int(arc.to) > u && d.less(pot[arc.to]) {
				pot[arc.to] = d
			}
		}
	}
	if pot[t] == unreachedCost {
		return 0
	}
	for i := range pot {
		if pot[i] == unreachedCost {
			pot[i] = pot[t]
		}
	}
	dist := make([]flowCost, n)
	var sent int64
	for sent < need {
		if !g.dijkstra(s, pot, dist) || dist[t] == unreachedCost {
			break
		}
		for i := range pot {
			pot[i] = pot[i].plus(minCost(dist[i], dist[t]))
		}
		admit := func(a int) bool {
			arc := &g.arcs[a]
			return g.cost(a).plus(pot[g.arcs[a^1].to]).minus(pot[arc.to]) == flowCost{}
		}
		f := g.maxFlow(s, t, need-sent, admit)
		if f == 0 {
			break
		}
		sent += f
	}
	return sent
}

// dijkstra sets dist to the shortest distances from s under the reduced
// costs of pot, unreached where none; it reports whether any vertex was
// reached.
func (g *flowGraph) dijkstra(s int, pot, dist []flowCost) bool {
	for i := range dist {
		dist[i] = unreachedCost
	}
	dist[s] = flowCost{}
	h := &distHeap{{flowCost{}, s}}
	for h.Len() > 0 {
		top := heap.Pop(h).(distItem)
		if top.d != dist[top.v] {
			continue
		}
		u := top.v
		for _, a := range g.out[u] {
			arc := &g.arcs[a]
			if arc.cap <= 0 {
				continue
			}
			v := int(arc.to)
			d := top.d.plus(g.cost(int(a))).plus(pot[u]).minus(pot[v])
			if d.less(dist[v]) {
				dist[v] = d
				heap.Push(h, distItem{d, v})
			}
		}
	}
	return true
}

type distItem struct {
	d flowCost
	v int
}

type distHeap []distItem

func (h distHeap) Len() int { return len(h) }
func (h distHeap) Less(i, j int) bool {
	if h[i].d != h[j].d {
		return h[i].d.less(h[j].d)
	}
	return h[i].v < h[j].v
}
func (h distHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *distHeap) Push(x any)   { *h = append(*h, x.(distItem)) }
func (h *distHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// fromSource marks the vertices that s reaches over arcs with residual
// capacity: after a maximum flow, the source side of a minimum cut.
func (g *flowGraph) fromSource(s int) []bool {
	seen := make([]bool, len(g.out))
	seen[s] = true
	queue := []int{s}
	for i := 0; i < len(queue); i++ {
		u := queue[i]
		for _, a := range g.out[u] {
			v := int(g.arcs[a].to)
			if !seen[v] && g.arcs[a].cap > 0 {
				seen[v] = true
				queue = append(queue, v)
			}
		}
	}
	return seen
}
