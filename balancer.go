package dim

import (
	"cmp"
	"fmt"
	"hash/maphash"
	"maps"
	"math/bits"
	"slices"
	"strings"
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
	// Labels describe the node (zone, region, hardware) for the
	// requirements and spread of [BalanceWith]; Balance ignores them.
	Labels map[string]string
	// MaxKeys caps the keys the node holds under [BalanceWith]; 0 means no
	// cap. Balance ignores it.
	MaxKeys int
	// MaxCost caps the cost units the node holds under [BalanceWith]; 0
	// means no cap. Balance ignores it.
	MaxCost int
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
// Balance runs in O(N log N + M log M) time and O(N + M) memory. Only the
// keys placed by hash and the keys of nodes over their quota are sorted, so a
// join or leave on a balanced assignment takes time close to linear in N.
//
// Balance looks only at node IDs and weights. [BalanceWith] adds node
// labels and caps, per-key requirements, spread and cost, pins and
// avoidances, with this contract, highest priority first: hard
// requirements, pins, caps, node balance (each node within ⌊share⌋ and
// ⌈share⌉ of its weighted max-min-fair share of the keys it may hold),
// spread within ±1 across label values where those allow, and the fewest
// moves among all placements that meet the rest; keys no node may take are returned as
// unplaceable. Without constraints its shares are N·w/W and its result is
// Balance's.
func Balance(prev Assignment, keys []string, nodes []Node) (Assignment, error) {
	b, err := newBalancing(nodes)
	if err != nil {
		return nil, err
	}
	if len(b.nodes) == 0 {
		if slices.Contains(keys, "") {
			return nil, errEmptyKey
		}
		return Assignment{}, nil
	}
	if err := b.readKeys(prev, keys); err != nil {
		return nil, err
	}
	b.setQuotas()
	b.trimToQuotas()
	b.placeRest()
	return b.result(prev), nil
}

var errEmptyKey = fmt.Errorf("%w: empty key", ErrInvalidKey)

// balancing is the working state of one Balance call. Keys are known by
// their index in the caller's slice, which is not reordered, so no choice may
// depend on those indexes: nodes are sorted by ID, and wherever keys need an
// order it is that of a hash of the key, then of the key itself.
type balancing struct {
	keys  []string // as the caller passed them
	nodes []balNode
	// at[i] is the index into nodes of the node keys[i] is on, unplaced
	// while it has none, or duplicate if keys[i] occurs earlier in keys.
	at []int
	// byHash holds the indexes of the keys that placeRest places by hash.
	byHash   []int
	distinct int      // N: the number of different keys
	inPrev   int      // how many of them have an entry in prev
	seen     strIndex // the different keys
}

// Values of balancing.at other than node indexes.
const (
	unplaced  = -1
	duplicate = -2
)

type balNode struct {
	id     string
	hash   uint64
	weight int64
	floor  int64 // ⌊N·w/W⌋
	rem    int64 // (N·w) mod W: the fractional part of the share, times W
	quota  int64
	held   int64 // how many keys are on the node
}

func newBalancing(nodes []Node) (*balancing, error) {
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
	return b, nil
}

// readKeys checks the keys, sets repeats aside and files every key under its
// previous node if that node is still live; the rest go to byHash. Being the
// step that pays for every key, it does per key only a look-up in the set of
// keys seen, one in prev and one among the live nodes (a strIndex too, which
// is cheaper to query than a map), and it visits the keys in the caller's
// order, usually the order their strings lie in memory. Hashing for order
// and sorting are left to the keys that need them.
func (b *balancing) readKeys(prev Assignment, keys []string) error {
	ids := make([]string, len(b.nodes))
	for i, n := range b.nodes {
		ids[i] = n.id
	}
	live := newStrIndex(ids)
	for i := range ids {
		live.add(i)
	}
	b.keys = keys
	b.at = make([]int, len(keys))
	b.seen = newStrIndex(keys)
	for i, k := range keys {
		if k == "" {
			return errEmptyKey
		}
		if !b.seen.add(i) {
			b.at[i] = duplicate
			continue
		}
		b.distinct++
		if id, ok := prev[k]; ok {
			b.inPrev++
			if ni := live.index(id); ni >= 0 {
				b.at[i] = ni
				b.nodes[ni].held++
				continue
			}
		}
		b.at[i] = unplaced
		b.byHash = append(b.byHash, i)
	}
	return nil
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
	keys := int64(b.distinct)
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
	gains := func(n *balNode) bool { return n.held > n.floor }
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

// scoredKey is a key, by its index, with a hash that orders it.
type scoredKey struct {
	score uint64
	key   int
}

// byScore orders scored keys by score, then by the key itself, never by
// index: different keys score alike when their hashes collide.
func (b *balancing) byScore(x, y scoredKey) int {
	if c := cmp.Compare(x.score, y.score); c != 0 {
		return c
	}
	return strings.Compare(b.keys[x.key], b.keys[y.key])
}

// sortByScore sorts keys as byScore does. Sorting all keys of a first
// placement by comparison would take most of Balance's time. But scores are
// uniform hashes, so a counting sort into buckets by their top bits, about
// one key per bucket, leaves only a few keys per bucket to compare; should
// many keys share a bucket, they still take only O(n log n).
func (b *balancing) sortByScore(keys []scoredKey) {
	const small = 256 // below this, the buckets cost more than they save
	if len(keys) < small {
		slices.SortFunc(keys, b.byScore)
		return
	}
	shift := 64 - bits.Len(uint(len(keys)))
	// Bucket d holds the keys whose score>>shift is d. pos[d+1] first
	// counts them; summed up, pos[d] is where bucket d starts; and as keys
	// are put in, where its next key goes, until it is where it ends.
	pos := make([]int, 1<<(64-shift)+1)
	for _, k := range keys {
		pos[k.score>>shift+1]++
	}
	for d := 1; d < len(pos); d++ {
		pos[d] += pos[d-1]
	}
	sorted := make([]scoredKey, len(keys))
	for _, k := range keys {
		d := k.score >> shift
		sorted[pos[d]] = k
		pos[d]++
	}
	start := 0
	for _, end := range pos[:len(pos)-1] {
		if end-start > 1 {
			slices.SortFunc(sorted[start:end], b.byScore)
		}
		start = end
	}
	copy(keys, sorted)
}

// trimToQuotas keeps at most quota of each node's previous keys: those with
// the highest affinity hash to the node, so the choice does not depend on
// order. The rest go to byHash.
func (b *balancing) trimToQuotas() {
	if !slices.ContainsFunc(b.nodes, func(n balNode) bool { return n.held > n.quota }) {
		return
	}
	// Gather the keys of the crowded nodes into one slice, node by node.
	// next[ni] is where the next key of node ni goes, −1 if ni is not
	// crowded; once all are in, it is where the node's run ends.
	next := make([]int, len(b.nodes))
	total := 0
	for ni, n := range b.nodes {
		next[ni] = -1
		if n.held > n.quota {
			next[ni] = total
			total += int(n.held)
		}
	}
	ranked := make([]scoredKey, total)
	for i, ni := range b.at {
		if ni >= 0 && next[ni] >= 0 {
			// The complement, so that the highest affinity sorts first.
			ranked[next[ni]] = scoredKey{^affinity(hashString(b.keys[i]), b.nodes[ni].hash), i}
			next[ni]++
		}
	}
	for ni := range b.nodes {
		n := &b.nodes[ni]
		if n.held <= n.quota {
			continue
		}
		run := ranked[next[ni]-int(n.held) : next[ni]]
		slices.SortFunc(run, b.byScore)
		for _, r := range run[n.quota:] {
			b.at[r.key] = unplaced
			b.byHash = append(b.byHash, r.key)
		}
		n.held = n.quota
	}
}

// placeProbes is how many hashed guesses a key makes for a node with spare
// quota before it takes the next one in order.
const placeProbes = 4

// placeRest puts every key of byHash on a node with spare quota. Keys go in
// (hash, key) order; each probes a few nodes chosen by its hash and takes the
// first with room, else the next node with room after its last probe. A
// union-find over "next node with room" keeps the fallback near O(1), so the
// whole step is O(U log U) rather than the O(U·M) of a full rendezvous.
func (b *balancing) placeRest() {
	order := make([]scoredKey, len(b.byHash))
	for j, i := range b.byHash {
		order[j] = scoredKey{hashString(b.keys[i]), i}
	}
	b.sortByScore(order)
	var spare []int // node indexes with room
	room := make([]int64, 0, len(b.nodes))
	for i, n := range b.nodes {
		if r := n.quota - n.held; r > 0 {
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
	find := func(s int) int {
		for next[s] != s {
			next[s] = next[next[s]]
			s = next[s]
		}
		return s
	}
	take := func(s int, ki int) {
		ni := spare[s]
		b.at[ki] = ni
		b.nodes[ni].held++
		room[s]--
		if room[s] == 0 {
			next[s] = s + 1
		}
	}
	n := uint64(len(spare))
	for _, k := range order {
		h := k.score
		s, placed := 0, false
		for p := range uint64(placeProbes) {
			s = int(mix64(h+p) % n)
			if room[s] > 0 {
				take(s, k.key)
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
		take(f, k.key)
	}
}

// result builds the assignment. When prev holds most of it, as after a join
// or leave, a copy of prev patched where keys changed is much cheaper than
// inserting every key into a new map: maps.Clone copies the table's memory
// wholesale, without hashing a key. That pays only if at least half of the
// keys are in prev, and half of prev's keys are still wanted.
func (b *balancing) result(prev Assignment) Assignment {
	if b.inPrev == 0 || 2*b.inPrev < b.distinct || 2*b.inPrev < len(prev) {
		a := make(Assignment, b.distinct)
		for i, ni := range b.at {
			if ni >= 0 {
				a[b.keys[i]] = b.nodes[ni].id
			}
		}
		return a
	}
	a := maps.Clone(prev)
	if b.inPrev < len(prev) {
		for k := range prev {
			if b.seen.index(k) < 0 {
				delete(a, k)
			}
		}
	}
	// Every key of prev that is still wanted and not in byHash stayed on
	// its node, so a already maps it right.
	for _, i := range b.byHash {
		a[b.keys[i]] = b.nodes[b.at[i]].id
	}
	return a
}

// strIndex finds strings in a slice by value: it maps each string added to
// its index. It is an open-addressing hash table with linear probing, kept at
// most half full, of 8-byte slots in one allocation: smaller, and so quicker
// to fill and probe, than a map[string]int. A slot packs the index plus one
// (zero marks an empty slot) with 24 more bits of the string's hash, so that
// a probe compares strings only when those match too.
//
// Like Go's own maps, the table hashes with a random seed, so that no choice
// of keys can make its probes collide on purpose. The seed decides only where
// a string sits in the table, never anything in the result: Balance stays a
// function of its arguments alone.
type strIndex struct {
	strs  []string
	seed  maphash.Seed
	slots []uint64
	shift uint // 64 − log2(len(slots)): the top bits of a hash pick the slot
}

// indexBits is the width of the index in a strIndex slot; the hash bits fill
// the rest. 2⁴⁰ strings would not fit in memory.
const (
	indexBits = 40
	indexMask = 1<<indexBits - 1
)

// newStrIndex returns an empty index with room for the strings of strs.
func newStrIndex(strs []string) strIndex {
	size := bits.Len(uint(len(strs))) + 1 // 2^size > 2·len(strs)
	return strIndex{
		strs:  strs,
		seed:  maphash.MakeSeed(),
		slots: make([]uint64, 1<<size),
		shift: uint(64 - size),
	}
}

// find returns the slot that holds s, or the empty one where s belongs,
// and the hash bits a slot holding s carries.
func (x *strIndex) find(s string) (slot int, tag uint64) {
	h := maphash.String(x.seed, s)
	tag = h << indexBits
	mask := len(x.slots) - 1
	for p := int(h >> x.shift); ; p = (p + 1) & mask {
		v := x.slots[p]
		if v == 0 || v&^indexMask == tag && x.strs[v&indexMask-1] == s {
			return p, tag
		}
	}
}

// add adds strs[i] and reports whether no equal string was in yet.
func (x *strIndex) add(i int) bool {
	p, tag := x.find(x.strs[i])
	if x.slots[p] != 0 {
		return false
	}
	x.slots[p] = tag | uint64(i+1)
	return true
}

// index returns the index of s, or −1 if s is not in.
func (x *strIndex) index(s string) int {
	p, _ := x.find(s)
	return int(x.slots[p]&indexMask) - 1
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
