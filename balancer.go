package dim

import (
	"cmp"
	"fmt"
	"slices"
)

// MaxWeight is the largest [Node.Weight] that [Balance] accepts. The bound
// keeps every quota computation exact in 64-bit integers.
const MaxWeight = 1 << 20

// Node is a live member of a service that can hold keys.
type Node struct {
	// ID identifies the node; it must be non-empty and unique.
	ID string
	// Weight is the node's capacity relative to the others, in
	// [1, MaxWeight]. Zero means 1, so a zero Node{ID: id} is an equal peer.
	Weight int
}

// Assignment maps each config key to the ID of the node that should run it.
type Assignment map[string]string

// Loads returns how many keys each node holds in a. Nodes without keys are
// absent.
func (a Assignment) Loads() map[string]int {
	loads := make(map[string]int)
	for _, node := range a {
		loads[node]++
	}
	return loads
}

// Moves counts the keys that are in both prev and next but on different
// nodes: the instances a change from prev to next stops and starts elsewhere.
func Moves(prev, next Assignment) int {
	n := 0
	for key, node := range next {
		if was, ok := prev[key]; ok && was != node {
			n++
		}
	}
	return n
}

// Balance spreads keys over nodes and returns the new assignment. It is a pure
// function: the result depends only on the set of keys, the set of nodes and
// prev, never on their order or on anything outside the arguments, so any two
// callers given the same sets compute the same assignment.
//
// The result satisfies, for every input:
//
//   - Every key is assigned to exactly one of nodes if nodes is non-empty;
//     with no nodes the result is empty.
//   - Loads are perfectly even. With N keys and total weight W, a node of
//     weight w holds ⌊N·w/W⌋ or ⌈N·w/W⌉ keys (with equal weights: ⌊N/M⌋ or
//     ⌈N/M⌉), the quotas summing to N.
//   - The fewest keys move. A key stays on its previous node whenever that
//     node is in nodes and within its quota, and the nodes that get the
//     rounded-up quota are chosen to keep the most keys in place. So a node
//     joining receives exactly its quota and nothing else moves, and a node
//     leaving moves exactly its own keys.
//
// Keys that must be placed (new keys, keys of departed nodes, a node's
// excess) go to nodes with spare quota by a stable hash of the key. Entries of
// prev whose key is not in keys or whose node is not in nodes are ignored.
//
// keys is a set: duplicates are counted once. An empty key is reported with
// [ErrInvalidKey]; an empty or duplicate node ID or a weight outside
// [0, MaxWeight] with [ErrInvalidNode].
//
// Balance runs in O(N log N + M log M) time and O(N + M) memory.
func Balance(prev Assignment, keys []string, nodes []Node) (Assignment, error) {
	b, err := newBalancing(keys, nodes)
	if err != nil {
		return nil, err
	}
	if len(b.nodes) == 0 {
		return Assignment{}, nil
	}
	b.keepPrevious(prev)
	b.setQuotas()
	b.trimToQuotas()
	b.placeRest()
	return b.result(), nil
}

// balancing is the working state of one Balance call. Nodes are sorted by ID
// and keys by (hash, key), so every later step is independent of input order.
type balancing struct {
	nodes []balNode
	keys  []balKey // unique keys, sorted
	// unplaced holds indexes into keys that still need a node.
	unplaced []int
}

type balNode struct {
	id     string
	hash   uint64
	weight int64
	floor  int64 // ⌊N·w/W⌋
	rem    int64 // (N·w) mod W: the fractional part of the share, times W
	quota  int64
	held   []int // indexes into keys of the keys this node keeps
}

type balKey struct {
	key  string
	hash uint64
	node int // index into nodes, -1 while unplaced
}

func newBalancing(keys []string, nodes []Node) (*balancing, error) {
	b := &balancing{nodes: make([]balNode, 0, len(nodes))}
	for _, n := range nodes {
		switch {
		case n.ID == "":
			return nil, fmt.Errorf("%w: empty node ID", ErrInvalidNode)
		case n.Weight < 0 || n.Weight > MaxWeight:
			return nil, fmt.Errorf("%w: node %q has weight %d, want 0..%d", ErrInvalidNode, n.ID, n.Weight, MaxWeight)
		}
		w := int64(max(n.Weight, 1))
		b.nodes = append(b.nodes, balNode{id: n.ID, hash: hashString(n.ID), weight: w})
	}
	slices.SortFunc(b.nodes, func(x, y balNode) int { return cmp.Compare(x.id, y.id) })
	for i := 1; i < len(b.nodes); i++ {
		if b.nodes[i].id == b.nodes[i-1].id {
			return nil, fmt.Errorf("%w: duplicate node ID %q", ErrInvalidNode, b.nodes[i].id)
		}
	}

	b.keys = make([]balKey, 0, len(keys))
	for _, k := range keys {
		if k == "" {
			return nil, fmt.Errorf("%w: empty key", ErrInvalidKey)
		}
		b.keys = append(b.keys, balKey{key: k, hash: hashString(k), node: -1})
	}
	slices.SortFunc(b.keys, func(x, y balKey) int {
		if c := cmp.Compare(x.hash, y.hash); c != 0 {
			return c
		}
		return cmp.Compare(x.key, y.key)
	})
	b.keys = slices.CompactFunc(b.keys, func(x, y balKey) bool { return x.key == y.key })
	return b, nil
}

// keepPrevious files every key under its previous node if that node is
// still live; the rest become unplaced.
func (b *balancing) keepPrevious(prev Assignment) {
	index := make(map[string]int, len(b.nodes))
	for i, n := range b.nodes {
		index[n.id] = i
	}
	for ki := range b.keys {
		if ni, ok := index[prev[b.keys[ki].key]]; ok {
			b.nodes[ni].held = append(b.nodes[ni].held, ki)
			continue
		}
		b.unplaced = append(b.unplaced, ki)
	}
}

// setQuotas gives every node ⌊N·w/W⌋ keys and hands the R = N − Σ⌊N·w/W⌋
// remaining ones out as +1 to nodes whose share has a fractional part. A
// node gains a kept key from the +1 exactly when it held more than its floor,
// so those nodes come first; ties go to the larger fractional part (the
// largest-remainder method), then to a hash of the node ID so that no ID is
// favoured everywhere.
func (b *balancing) setQuotas() {
	var total int64
	for _, n := range b.nodes {
		total += n.weight
	}
	keys := int64(len(b.keys))
	extra := keys
	for i := range b.nodes {
		n := &b.nodes[i]
		n.floor = keys * n.weight / total
		n.rem = keys * n.weight % total
		n.quota = n.floor
		extra -= n.floor
	}
	if extra == 0 {
		return
	}
	order := make([]int, 0, len(b.nodes))
	for i, n := range b.nodes {
		if n.rem > 0 {
			order = append(order, i)
		}
	}
	gains := func(n *balNode) bool { return int64(len(n.held)) > n.floor }
	slices.SortFunc(order, func(i, j int) int {
		x, y := &b.nodes[i], &b.nodes[j]
		if gx, gy := gains(x), gains(y); gx != gy {
			if gx {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(y.rem, x.rem); c != 0 {
			return c
		}
		if c := cmp.Compare(x.hash, y.hash); c != 0 {
			return c
		}
		return cmp.Compare(x.id, y.id)
	})
	// Σ rem = extra·W with every rem < W, so there are more than extra
	// candidates and this never runs out.
	for _, i := range order[:extra] {
		b.nodes[i].quota++
	}
}

// trimToQuotas keeps at most quota of each node's previous keys: those with
// the highest affinity hash to the node, so the choice does not depend on
// order. The rest become unplaced.
func (b *balancing) trimToQuotas() {
	for i := range b.nodes {
		n := &b.nodes[i]
		if int64(len(n.held)) <= n.quota {
			continue
		}
		slices.SortFunc(n.held, func(x, y int) int {
			ax, ay := affinity(b.keys[x].hash, n.hash), affinity(b.keys[y].hash, n.hash)
			if c := cmp.Compare(ay, ax); c != 0 {
				return c
			}
			return cmp.Compare(x, y)
		})
		b.unplaced = append(b.unplaced, n.held[n.quota:]...)
		n.held = n.held[:n.quota]
	}
}

// placeProbes is how many hashed guesses a key makes for a node with spare
// quota before it takes the next one in order.
const placeProbes = 4

// placeRest puts every unplaced key on a node with spare quota. Keys go in
// (hash, key) order; each probes a few nodes chosen by its hash and takes the
// first with room, else the next node with room after its last probe. A
// union-find over "next node with room" keeps the fallback near O(1), so the
// whole step is O(U log U) rather than the O(U·M) of a full rendezvous.
func (b *balancing) placeRest() {
	slices.Sort(b.unplaced) // indexes follow the (hash, key) order of keys
	var spare []int         // node indexes with room
	room := make([]int64, 0, len(b.nodes))
	for i, n := range b.nodes {
		if r := n.quota - int64(len(n.held)); r > 0 {
			spare = append(spare, i)
			room = append(room, r)
		}
	}
	if len(spare) == 0 {
		return
	}
	// next[s] is s if spare[s] has room, else a pointer towards the next
	// slot that may; len(spare) wraps to 0.
	next := make([]int, len(spare)+1)
	for s := range next {
		next[s] = s
	}
	var find func(int) int
	find = func(s int) int {
		for next[s] != s {
			next[s] = next[next[s]]
			s = next[s]
		}
		return s
	}
	take := func(s int, ki int) {
		ni := spare[s]
		b.nodes[ni].held = append(b.nodes[ni].held, ki)
		room[s]--
		if room[s] == 0 {
			next[s] = s + 1
		}
	}
	n := uint64(len(spare))
	for _, ki := range b.unplaced {
		h := b.keys[ki].hash
		s, placed := 0, false
		for p := range uint64(placeProbes) {
			s = int(mix64(h+p) % n)
			if room[s] > 0 {
				take(s, ki)
				placed = true
				break
			}
		}
		if placed {
			continue
		}
		f := find(s)
		if f == len(spare) {
			f = find(0)
		}
		take(f, ki)
	}
	b.unplaced = nil
}

func (b *balancing) result() Assignment {
	a := make(Assignment, len(b.keys))
	for _, n := range b.nodes {
		for _, ki := range n.held {
			a[b.keys[ki].key] = n.id
		}
	}
	return a
}

// hashString is 64-bit FNV-1a followed by a mixing step. It must never
// change: every leader of every version has to place keys alike.
func hashString(s string) uint64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= prime
	}
	return mix64(h)
}

// mix64 is the splitmix64 finaliser: it spreads every input bit over the
// whole output.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// affinity scores how strongly a key belongs on a node.
func affinity(key, node uint64) uint64 { return mix64(key ^ node) }
