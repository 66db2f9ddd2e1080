// Package bench compares dim.Balance with the placement schemes Go
// engineers otherwise reach for: consistent-hash rings with virtual nodes,
// rendezvous hashing, jump hash, and consistent hashing with bounded loads.
//
// Every approach places the same keys on the same nodes, then sees the same
// join (one node added) and the same leave (one node removed). [Compare]
// reports how uneven each placement is, how many keys each change moves
// against the least any balanced placement could move, and how long a
// placement takes. It lives in its own module so that dim's go.mod pulls
// none of the dependencies compared here.
package bench

import (
	"cmp"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dgryski/go-jump"
	rendezvous "github.com/dgryski/go-rendezvous"
	"github.com/go-dim/dim"
	"github.com/serialx/hashring"
	"github.com/stathat/consistent"
)

// Placer holds one approach's view of the membership and places keys on it.
// Join and Leave change the membership the way a user of the approach
// would: incrementally where its API allows, by rebuilding where not.
type Placer interface {
	// Assign places every key on a current member.
	Assign(keys []string) dim.Assignment
	// Join adds a node.
	Join(node string)
	// Leave removes a node.
	Leave(node string)
}

// Approach is one placement scheme under comparison.
type Approach struct {
	// Name is the row label.
	Name string
	// Note says how the approach is configured and how a leave is modelled.
	Note string
	// New builds a Placer over the initial nodes.
	New func(nodes []string) Placer
	// Skip, if set, says why a size is too costly for this approach, or ""
	// to run it.
	Skip func(s Size) string
}

// Size is one input size: Keys keys on Nodes nodes before the join or leave.
type Size struct {
	Keys  int `json:"keys"`
	Nodes int `json:"nodes"`
}

func (s Size) String() string { return count(s.Keys) + "/" + count(s.Nodes) }

// ParseSize reads a size written as KEYS/NODES, each a number with an
// optional k or M suffix: "100k/1k".
func ParseSize(s string) (Size, error) {
	k, n, ok := strings.Cut(s, "/")
	if !ok {
		return Size{}, fmt.Errorf("size %q: want KEYS/NODES", s)
	}
	keys, err := parseCount(k)
	if err != nil {
		return Size{}, fmt.Errorf("size %q: %w", s, err)
	}
	nodes, err := parseCount(n)
	if err != nil {
		return Size{}, fmt.Errorf("size %q: %w", s, err)
	}
	if nodes < 2 {
		return Size{}, fmt.Errorf("size %q: need at least 2 nodes for a leave", s)
	}
	return Size{Keys: keys, Nodes: nodes}, nil
}

func parseCount(s string) (int, error) {
	mult := 1
	switch {
	case strings.HasSuffix(s, "k"):
		mult, s = 1_000, strings.TrimSuffix(s, "k")
	case strings.HasSuffix(s, "M"):
		mult, s = 1_000_000, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("bad count %q", s)
	}
	return n * mult, nil
}

func count(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return strconv.Itoa(n/1_000_000) + "M"
	case n >= 1_000 && n%1_000 == 0:
		return strconv.Itoa(n/1_000) + "k"
	}
	return strconv.Itoa(n)
}

// Row is the result of one approach at one size.
type Row struct {
	Approach string `json:"approach"`
	Size
	// Skipped, if not empty, says why the approach did not run at this
	// size; every other field is then zero.
	Skipped string `json:"skipped,omitempty"`
	// Spread is the largest minus the smallest load of the first
	// placement, counting nodes that got no key as 0.
	Spread int `json:"spread"`
	// Peak is the largest load over the mean load, N/M.
	Peak float64 `json:"peak"`
	// JoinMoves and LeaveMoves are the keys that changed node.
	JoinMoves  int `json:"join_moves"`
	LeaveMoves int `json:"leave_moves"`
	// JoinBound is ⌊N/(M+1)⌋: the fewest keys the new node can receive if
	// the result is to be perfectly balanced.
	JoinBound int `json:"join_bound"`
	// LeaveBound is the number of keys the leaving node held in this
	// approach's own first placement: those have to move whatever happens.
	LeaveBound int `json:"leave_bound"`
	// Fresh, Join and Leave time one placement each (building or updating
	// the approach's structure plus placing every key): median, fastest and
	// slowest over the runs.
	Fresh Timing `json:"fresh"`
	Join  Timing `json:"join"`
	Leave Timing `json:"leave"`
}

// Timing summarises repeated timings of one operation.
type Timing struct {
	Median time.Duration `json:"median_ns"`
	Min    time.Duration `json:"min_ns"`
	Max    time.Duration `json:"max_ns"`
}

func summarise(ds []time.Duration) Timing {
	if len(ds) == 0 {
		return Timing{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Timing{Median: med, Min: s[0], Max: s[len(s)-1]}
}

// Keys returns n config keys, the same on every call.
func Keys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("config-%07d", i)
	}
	return keys
}

// Nodes returns n node IDs, the same on every call, in ascending order.
func Nodes(n int) []string {
	nodes := make([]string, n)
	for i := range nodes {
		nodes[i] = fmt.Sprintf("node-%05d", i)
	}
	return nodes
}

// Scenario is the membership change every approach sees at one size: the
// first nodes, the node that joins them (appended last, which is the best
// case for jump hash) and the node that leaves them (the middle one, so that
// neither end of an ordered list is favoured).
type Scenario struct {
	Keys    []string
	Nodes   []string
	Joining string
	Leaving string
}

// NewScenario builds the scenario for one size.
func NewScenario(s Size) Scenario {
	all := Nodes(s.Nodes + 1)
	return Scenario{
		Keys:    Keys(s.Keys),
		Nodes:   all[:s.Nodes],
		Joining: all[s.Nodes],
		Leaving: all[s.Nodes/2],
	}
}

// Measure runs one approach through a scenario runs times: a first
// placement, then a join from it, and, from a fresh copy of the first
// placement, a leave. Placements are deterministic, so loads and moves come
// from the first run; times from all of them. It returns an error if a
// placement loses a key or uses a node that is not a member.
func Measure(a Approach, sc Scenario, runs int) (Row, error) {
	row := Row{Approach: a.Name, Size: Size{Keys: len(sc.Keys), Nodes: len(sc.Nodes)}}
	if a.Skip != nil {
		if why := a.Skip(row.Size); why != "" {
			row.Skipped = why
			return row, nil
		}
	}
	joined := append(slices.Clone(sc.Nodes), sc.Joining)
	left := slices.DeleteFunc(slices.Clone(sc.Nodes), func(n string) bool { return n == sc.Leaving })

	var fresh, join, leave []time.Duration
	for r := range max(runs, 1) {
		runtime.GC()
		start := time.Now()
		p := a.New(slices.Clone(sc.Nodes))
		first := p.Assign(sc.Keys)
		fresh = append(fresh, time.Since(start))

		runtime.GC()
		start = time.Now()
		p.Join(sc.Joining)
		afterJoin := p.Assign(sc.Keys)
		join = append(join, time.Since(start))

		p = a.New(slices.Clone(sc.Nodes))
		p.Assign(sc.Keys)
		runtime.GC()
		start = time.Now()
		p.Leave(sc.Leaving)
		afterLeave := p.Assign(sc.Keys)
		leave = append(leave, time.Since(start))

		if r > 0 {
			continue
		}
		for _, check := range []struct {
			what  string
			a     dim.Assignment
			nodes []string
		}{{"first placement", first, sc.Nodes}, {"join", afterJoin, joined}, {"leave", afterLeave, left}} {
			if err := Validate(check.a, sc.Keys, check.nodes); err != nil {
				return row, fmt.Errorf("%s, %s: %s: %w", a.Name, row.Size, check.what, err)
			}
		}
		row.Spread = Spread(first, sc.Nodes)
		row.Peak = float64(MaxLoad(first)) * float64(len(sc.Nodes)) / float64(len(sc.Keys))
		row.JoinMoves = dim.Moves(first, afterJoin)
		row.LeaveMoves = dim.Moves(first, afterLeave)
		row.JoinBound = JoinBound(len(sc.Keys), len(sc.Nodes))
		row.LeaveBound = first.Loads()[sc.Leaving]
	}
	row.Fresh, row.Join, row.Leave = summarise(fresh), summarise(join), summarise(leave)
	return row, nil
}

// Validate checks that a places exactly keys, each on one of nodes.
func Validate(a dim.Assignment, keys, nodes []string) error {
	if len(a) != len(keys) {
		return fmt.Errorf("%d keys placed, want %d", len(a), len(keys))
	}
	member := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		member[n] = true
	}
	for _, k := range keys {
		n, ok := a[k]
		switch {
		case !ok:
			return fmt.Errorf("key %q not placed", k)
		case !member[n]:
			return fmt.Errorf("key %q placed on %q, which is not a member", k, n)
		}
	}
	return nil
}

// Spread is the largest minus the smallest load in a over nodes; a node
// with no key counts as load 0.
func Spread(a dim.Assignment, nodes []string) int {
	if len(nodes) == 0 {
		return 0
	}
	loads := a.Loads()
	lo, hi := math.MaxInt, 0
	for _, n := range nodes {
		lo, hi = min(lo, loads[n]), max(hi, loads[n])
	}
	return hi - lo
}

// MaxLoad is the largest number of keys on one node in a.
func MaxLoad(a dim.Assignment) int {
	hi := 0
	for _, l := range a.Loads() {
		hi = max(hi, l)
	}
	return hi
}

// JoinBound is the fewest moves that can take a perfectly balanced
// placement of n keys on m equal nodes to a perfectly balanced one on m+1:
// the new node must end with at least ⌊n/(m+1)⌋ keys, and all of them come
// from elsewhere.
func JoinBound(n, m int) int { return n / (m + 1) }

// Approaches returns every approach compared, dim first.
func Approaches() []Approach {
	return []Approach{
		{
			Name: "dim.Balance",
			Note: "previous assignment passed in; equal weights",
			New:  newDim,
		},
		{
			Name: "ring: stathat/consistent",
			Note: "its default 20 virtual nodes per node, crc32; membership changed with Add/Remove; " +
				"skipped above 1k nodes because Add re-sorts the whole ring, so building one is quadratic in nodes",
			New:  newStathat,
			Skip: func(s Size) string { return skipAbove(s, 1_000, "building the ring is quadratic in nodes") },
		},
		{
			Name: "ring: serialx/hashring",
			Note: fmt.Sprintf("%d virtual nodes per node (weight %d), md5; AddWeightedNode/RemoveNode", ringVnodes, ringVnodes),
			New:  newSerialx,
		},
		{
			Name: "rendezvous: dgryski/go-rendezvous",
			Note: "rebuilt with New on every change (its Remove indexes past the end of its slices and panics); " +
				"O(keys×nodes), so skipped above 1k nodes",
			New:  newRendezvous,
			Skip: func(s Size) string { return skipAbove(s, 1_000, "O(keys×nodes) lookups") },
		},
		{
			Name: "jump: dgryski/go-jump, renumbered",
			Note: "bucket i is the i-th node of an ordered list; a join appends, a leave deletes the node and " +
				"renumbers every later bucket",
			New: func(nodes []string) Placer { return &jumpPlacer{nodes: nodes} },
		},
		{
			Name: "jump: dgryski/go-jump, last into gap",
			Note: "as above, but a leave moves the last node into the leaver's bucket, the usual workaround",
			New:  func(nodes []string) Placer { return &jumpPlacer{nodes: nodes, fillGap: true} },
		},
		{
			Name: "bounded loads (ε=0.25)",
			Note: fmt.Sprintf("Mirrokni–Thorup–Zadimoghaddam: ring of %d virtual nodes per node, capacity ⌈1.25·N/M⌉, "+
				"keys placed in a fixed hashed order, each walking clockwise past full nodes; recomputed on every change",
				ringVnodes),
			New: func(nodes []string) Placer { return &boundedPlacer{nodes: nodes, eps: 0.25} },
		},
	}
}

func skipAbove(s Size, nodes int, why string) string {
	if s.Nodes > nodes {
		return why
	}
	return ""
}

// ringVnodes is the virtual nodes per node of the rings whose count is
// chosen here: a common setting that keeps the ring's imbalance moderate.
const ringVnodes = 100

// dimPlacer keeps the last assignment and hands it back to Balance, as
// dim's leader does.
type dimPlacer struct {
	nodes []dim.Node
	prev  dim.Assignment
}

func newDim(nodes []string) Placer {
	p := &dimPlacer{}
	for _, n := range nodes {
		p.nodes = append(p.nodes, dim.Node{ID: n})
	}
	return p
}

func (p *dimPlacer) Assign(keys []string) dim.Assignment {
	a, err := dim.Balance(p.prev, keys, p.nodes)
	if err != nil {
		panic(err) // the harness only passes valid input
	}
	p.prev = a
	return a
}

func (p *dimPlacer) Join(node string) { p.nodes = append(p.nodes, dim.Node{ID: node}) }

func (p *dimPlacer) Leave(node string) {
	p.nodes = slices.DeleteFunc(p.nodes, func(n dim.Node) bool { return n.ID == node })
}

type stathatPlacer struct{ ring *consistent.Consistent }

func newStathat(nodes []string) Placer {
	p := &stathatPlacer{ring: consistent.New()}
	for _, n := range nodes {
		p.ring.Add(n)
	}
	return p
}

func (p *stathatPlacer) Assign(keys []string) dim.Assignment {
	a := make(dim.Assignment, len(keys))
	for _, k := range keys {
		n, err := p.ring.Get(k)
		if err != nil {
			panic(err) // the ring is never empty here
		}
		a[k] = n
	}
	return a
}

func (p *stathatPlacer) Join(node string)  { p.ring.Add(node) }
func (p *stathatPlacer) Leave(node string) { p.ring.Remove(node) }

type serialxPlacer struct{ ring *hashring.HashRing }

func newSerialx(nodes []string) Placer {
	weights := make(map[string]int, len(nodes))
	for _, n := range nodes {
		weights[n] = ringVnodes
	}
	return &serialxPlacer{ring: hashring.NewWithWeights(weights)}
}

func (p *serialxPlacer) Assign(keys []string) dim.Assignment {
	a := make(dim.Assignment, len(keys))
	for _, k := range keys {
		n, ok := p.ring.GetNode(k)
		if !ok {
			panic("bench: empty hashring")
		}
		a[k] = n
	}
	return a
}

func (p *serialxPlacer) Join(node string)  { p.ring = p.ring.AddWeightedNode(node, ringVnodes) }
func (p *serialxPlacer) Leave(node string) { p.ring = p.ring.RemoveNode(node) }

type rendezvousPlacer struct {
	nodes []string
	r     *rendezvous.Rendezvous
}

func newRendezvous(nodes []string) Placer {
	return &rendezvousPlacer{nodes: nodes, r: rendezvous.New(nodes, hash64)}
}

func (p *rendezvousPlacer) Assign(keys []string) dim.Assignment {
	a := make(dim.Assignment, len(keys))
	for _, k := range keys {
		a[k] = p.r.Lookup(k)
	}
	return a
}

func (p *rendezvousPlacer) Join(node string) { p.r.Add(node) }

func (p *rendezvousPlacer) Leave(node string) {
	p.nodes = slices.DeleteFunc(p.nodes, func(n string) bool { return n == node })
	p.r = rendezvous.New(p.nodes, hash64)
}

// jumpPlacer maps a key to a bucket number with jump hash and the bucket to
// the node at that index. Jump hash only ever adds or removes the last
// bucket, so a node leaving from the middle has to be modelled: either every
// later node shifts down one bucket, or the last node takes the gap.
type jumpPlacer struct {
	nodes   []string
	fillGap bool
}

func (p *jumpPlacer) Assign(keys []string) dim.Assignment {
	a := make(dim.Assignment, len(keys))
	for _, k := range keys {
		a[k] = p.nodes[jump.Hash(hash64(k), len(p.nodes))]
	}
	return a
}

func (p *jumpPlacer) Join(node string) { p.nodes = append(p.nodes, node) }

func (p *jumpPlacer) Leave(node string) {
	i := slices.Index(p.nodes, node)
	if i < 0 {
		return
	}
	if p.fillGap {
		last := len(p.nodes) - 1
		p.nodes[i] = p.nodes[last]
		p.nodes = p.nodes[:last]
		return
	}
	p.nodes = slices.Delete(p.nodes, i, i+1)
}

// boundedPlacer is consistent hashing with bounded loads: every node takes
// at most ⌈(1+ε)·N/M⌉ keys, and a key whose ring successor is full walks on
// clockwise to the first node with room. The result depends on the order
// keys are placed in; it is fixed here by a hash of the key, independent of
// the ring position, so the placement is a function of the key and node
// sets alone and is recomputed from scratch on every change.
type boundedPlacer struct {
	nodes []string
	eps   float64
}

type ringPoint struct {
	hash uint64
	node int
}

func (p *boundedPlacer) Assign(keys []string) dim.Assignment {
	m := len(p.nodes)
	ring := make([]ringPoint, 0, m*ringVnodes)
	for i, n := range p.nodes {
		for v := range ringVnodes {
			ring = append(ring, ringPoint{hash: hash64(n + "#" + strconv.Itoa(v)), node: i})
		}
	}
	slices.SortFunc(ring, func(x, y ringPoint) int {
		if c := cmp.Compare(x.hash, y.hash); c != 0 {
			return c
		}
		return cmp.Compare(p.nodes[x.node], p.nodes[y.node])
	})

	type placing struct {
		key   string
		hash  uint64
		order uint64
	}
	order := make([]placing, len(keys))
	for i, k := range keys {
		h := hash64(k)
		order[i] = placing{key: k, hash: h, order: mix64(h ^ 0x9e3779b97f4a7c15)}
	}
	slices.SortFunc(order, func(x, y placing) int {
		if c := cmp.Compare(x.order, y.order); c != 0 {
			return c
		}
		return strings.Compare(x.key, y.key)
	})

	capacity := int(math.Ceil((1 + p.eps) * float64(len(keys)) / float64(m)))
	load := make([]int, m)
	a := make(dim.Assignment, len(keys))
	for _, k := range order {
		i, _ := slices.BinarySearchFunc(ring, k.hash, func(pt ringPoint, h uint64) int { return cmp.Compare(pt.hash, h) })
		// Total capacity is at least N, so some node has room and the
		// walk ends.
		for {
			if i == len(ring) {
				i = 0
			}
			if n := ring[i].node; load[n] < capacity {
				load[n]++
				a[k.key] = p.nodes[n]
				break
			}
			i++
		}
	}
	return a
}

func (p *boundedPlacer) Join(node string) { p.nodes = append(p.nodes, node) }

func (p *boundedPlacer) Leave(node string) {
	p.nodes = slices.DeleteFunc(p.nodes, func(n string) bool { return n == node })
}

// hash64 is 64-bit FNV-1a with a splitmix64 finaliser, so that keys which
// differ only in their last characters still spread over the whole range.
func hash64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return mix64(h)
}

func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Compare measures every approach at every size. progress, if not nil, is
// called before each measurement.
func Compare(approaches []Approach, sizes []Size, runs int, progress func(a Approach, s Size)) ([]Row, error) {
	var rows []Row
	for _, s := range sizes {
		sc := NewScenario(s)
		for _, a := range approaches {
			if progress != nil {
				progress(a, s)
			}
			row, err := Measure(a, sc, runs)
			if err != nil {
				return nil, err
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// Markdown renders rows as a Markdown table, one line per approach and size.
func Markdown(rows []Row) string {
	var b strings.Builder
	b.WriteString("| approach | keys/nodes | spread (max−min) | max/mean | join moves (bound) | leave moves (bound) | fresh ms | join ms | leave ms |\n")
	b.WriteString("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rows {
		if r.Skipped != "" {
			fmt.Fprintf(&b, "| %s | %s | skipped: %s | | | | | | |\n", r.Approach, r.Size, r.Skipped)
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %.2f | %d (%d) | %d (%d) | %s | %s | %s |\n",
			r.Approach, r.Size, r.Spread, r.Peak,
			r.JoinMoves, r.JoinBound, r.LeaveMoves, r.LeaveBound,
			ms(r.Fresh), ms(r.Join), ms(r.Leave))
	}
	return b.String()
}

// ms renders a timing as its median in milliseconds.
func ms(t Timing) string {
	v := float64(t.Median) / float64(time.Millisecond)
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
