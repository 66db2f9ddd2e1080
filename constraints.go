package dim

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// MaxCost is the largest [Placement.Cost] that [BalanceWith] accepts.
const MaxCost = 1 << 20

// LabelNode is a label that every node has without declaring it, whose
// value is the node's ID. Spread over it keeps the keys of a group apart:
// no two of them on one node while another node they may use has none of
// them (as spread is: where the rules above spread allow). Required or
// preferred, it names nodes by ID. Labels a node declares under this name
// are ignored. It costs: every node becomes a class of its own, and every
// group spread over it a flow vertex per node, so it suits a few groups
// (BENCHMARKS.md: 1,000 groups on 1,000 nodes take seconds and gigabytes).
const LabelNode = "dim:node"

// Placement says where one key may run and what it weighs. The zero value
// is a key that any node may run, of cost 1.
type Placement struct {
	// Require lists node labels the key needs: only a node whose label of
	// each name has the given value may hold it. A hard constraint.
	Require map[string]string `json:"require,omitempty"`
	// Spread names a node label whose values the key's group is spread
	// over: the keys of one group on the nodes of each value differ by at
	// most one wherever the constraints above spread allow. Nodes without
	// the label count as one more value, "".
	Spread string `json:"spread,omitempty"`
	// Group names the keys spread together; keys with the same Spread and
	// Group, the same requirements and preferences and the same cost form
	// one group. "" is a group like any other. A Group without a Spread is
	// an error.
	Group string `json:"group,omitempty"`
	// Cost is the key's load in cost units, in [1, MaxCost]; 0 means 1.
	Cost int `json:"cost,omitempty"`
	// Prefer lists node labels the key would rather run on: a soft
	// preference, honoured where requirements, pins, caps, balance and
	// spread allow, and above fewest moves (see [BalanceWith]).
	Prefer map[string]string `json:"prefer,omitempty"`
}

// Constraints are what [BalanceWith] honours beyond counts.
type Constraints struct {
	// Keys holds the placement of each key that has one; a key without
	// an entry has the zero Placement. Entries for keys not in keys are
	// ignored.
	Keys map[string]Placement
	// Pins maps a key to the node an operator put it on. A pin holds while
	// its node is live and meets the key's requirements, even beyond the
	// node's caps and balance; otherwise the key is placed as if unpinned.
	Pins map[string]string
	// Avoid maps a key to nodes that should not hold it, as for
	// [BalanceAvoiding]: an avoidance holds while some other node that
	// meets the key's requirements is live.
	Avoid map[string][]string
}

func (c Constraints) empty() bool {
	return len(c.Keys) == 0 && len(c.Pins) == 0 && len(c.Avoid) == 0
}

// Balanced is what [BalanceWith] returns.
type Balanced struct {
	// Assignment maps every placeable key to its node.
	Assignment Assignment
	// Unplaceable lists, sorted, the keys no live node may take: no node
	// meets their requirements, or every node that does is at its cap.
	Unplaceable []string
}

// BalanceWith is [Balance] under constraints: node labels and caps
// ([Node.Labels], [Node.MaxKeys], [Node.MaxCost]), per-key requirements,
// spread, preferences and cost, operator pins and avoidances. Like Balance
// it is pure and deterministic: the same sets in any order give the same
// result.
//
// The rules, highest priority first:
//
//  1. Hard requirements: a key goes only to a node that has every label it
//     requires. A key that no live node may take, because none meets its
//     requirements or all that do are at their caps, is returned in
//     Unplaceable, never dropped silently. Which keys of a class of keys
//     are unplaceable, when some of them fit, prefers keys that were not
//     running on a node they may use, then the lowest hash.
//  2. Pins: a pinned key stays on its pin's node while that node is live
//     and meets the key's requirements, even beyond caps and balance.
//  3. Caps: a node holds at most MaxKeys keys and, with costs, MaxCost cost
//     units (pinned keys included; pins alone may exceed a cap).
//  4. Node balance. With unit costs, each node's share is its weighted
//     max-min-fair fractional share of the keys it may hold under the rules
//     above (the lexicographically optimal loads: no fractional move of a
//     key to another node it may use can raise a smaller load/weight ratio
//     without lowering a smaller-or-equal one), and every node holds
//     ⌊share⌋ to ⌈share⌉ keys. Such an integral placement always exists.
//     Without constraints the shares are N·w/W and this is Balance's rule.
//  5. Spread: within each group, the keys on the nodes of each value of the
//     Spread label are within ±1 of each other where the rules above
//     allow; where they do not, the total excess over that band, summed
//     over values and groups, is the least possible. Spread over
//     [LabelNode] is anti-affinity: a group's keys on distinct nodes.
//  6. Preferences: among the placements meeting 1–5, one with the fewest
//     keys on nodes that lack a label they prefer (pinned keys aside).
//  7. Fewest moves: among all placements meeting 1–6, one that moves the
//     fewest keys.
//
// With costs (some Cost above 1), shares are counted in cost units, and
// exact balance with fewest moves is bin packing; BalanceWith instead
// guarantees that each node's cost load is at most ⌈share⌉ plus the
// largest cost of a key it may hold, and that a key whose node is live,
// may hold it and is within its share stays, as documented in costs.go;
// spread is not promised there, and preferences shape the split of cost
// units over node classes, before fewest moves.
//
// Keys are grouped into classes by their constraints (requirements,
// spread, group, preferences, cost, avoided nodes) and nodes by their
// labels; shares
// come from parametric maximum flows over the classes, and the placement
// with the fewest moves from one minimum-cost flow whose size grows with
// the classes and the node count, not with the keys; picking the keys
// themselves is linear apart from sorting the keys that move by hash. It
// stops scaling when classes multiply: a group per tenant, or thousands of
// distinct requirement sets, make the flows the dominant cost; so does
// [LabelNode] in any placement, which makes every node a class of its own.
//
// With empty constraints and no caps it is exactly Balance. Errors are as
// for Balance, plus [ErrInvalidNode] for a negative cap and [ErrInvalidKey]
// for a cost outside [0, MaxCost] or a Group without a Spread.
func BalanceWith(prev Assignment, keys []string, nodes []Node, c Constraints) (*Balanced, error) {
	capped := slices.ContainsFunc(nodes, func(n Node) bool { return n.MaxKeys != 0 || n.MaxCost != 0 })
	if c.empty() && !capped {
		a, err := Balance(prev, keys, nodes)
		if err != nil {
			return nil, err
		}
		res := &Balanced{Assignment: a}
		if len(nodes) == 0 {
			res.Unplaceable = distinctSorted(keys)
		}
		return res, nil
	}
	s, err := newConstrained(keys, nodes, c, false)
	if err != nil {
		return nil, err
	}
	if len(s.nodes) == 0 {
		return &Balanced{Assignment: Assignment{}, Unplaceable: distinctSorted(keys)}, nil
	}
	if !s.readKeys(prev, c) {
		// A requirement or preference names LabelNode: again, with every
		// node labelled with its ID.
		if s, err = newConstrained(keys, nodes, c, true); err != nil {
			return nil, err
		}
		s.readKeys(prev, c)
	}
	s.setUnplaceable()
	if s.costly {
		s.placeCosts()
	} else {
		s.placeUnits()
	}
	return s.result(prev), nil
}

func distinctSorted(keys []string) []string {
	out := slices.Clone(keys)
	slices.Sort(out)
	return slices.Compact(out)
}

// constrained is the working state of one BalanceWith call. As in
// balancing, keys are known by their index in the caller's slice, and no
// choice depends on that index.
type constrained struct {
	keys  []string
	seen  strIndex
	nodes []conNode // by ID
	live  strIndex  // node IDs
	// Node classes, ordered by signature; nodeClass[j] is node j's.
	classes   []nodeClass
	nodeClass []int
	// Key classes, ordered by signature.
	kc []keyClass
	// Per key index: its class, its previous node if it may stay there,
	// its pinned node, or markers.
	class  []int32
	held   []int32
	pinned []int32
	state  []uint8
	// Flexible keys per class, filled by readKeys.
	members [][]int32
	costly  bool // some key costs more than 1
	prefers bool // some key has a preference
	byNode  bool // every node has LabelNode
	total   int  // distinct keys
	inPrev  int  // distinct flexible keys that prev holds
}

// Key states.
const (
	keyFlexible uint8 = iota
	keyDuplicate
	keyPinned
	keyUnplaceable
	keyPlaced
	keyStayed // placed on the node prev has it on
)

type conNode struct {
	id     string
	hash   uint64
	weight int64
	labels map[string]string
	capN   int64 // MaxKeys, 0: none
	capC   int64 // MaxCost, 0: none
	pins   int64 // pinned keys
	pinC   int64 // their cost
}

type nodeClass struct {
	sig     string
	labels  map[string]string
	members []int // node indexes, by ID
}

type keyClass struct {
	sig    string
	place  Placement
	cost   int64
	elig   []int  // node classes it may use
	ok     []bool // per node class: may use it
	off    []bool // per node class: lacks a preferred label
	pinned map[string]int64
	// Filled later.
	n int64 // flexible keys that are placeable
}

// newConstrained validates the input and classifies the nodes. byNode
// labels every node with LabelNode, as it is when some key spreads over it
// too.
func newConstrained(keys []string, nodes []Node, c Constraints, byNode bool) (*constrained, error) {
	s := &constrained{keys: keys, byNode: byNode}
	for key, p := range c.Keys {
		switch {
		case p.Cost < 0 || p.Cost > MaxCost:
			return nil, fmt.Errorf("%w: key %q has cost %d, want 0..%d", ErrInvalidKey, key, p.Cost, MaxCost)
		case p.Group != "" && p.Spread == "":
			return nil, fmt.Errorf("%w: key %q has group %q but no spread label", ErrInvalidKey, key, p.Group)
		}
		if p.Cost > 1 {
			s.costly = true
		}
		// Requirements and preferences that name LabelNode are found by
		// readKeys, once per distinct set, rather than by a look-up in
		// every key's maps here.
		if p.Spread == LabelNode {
			byNode = true
		}
	}
	s.byNode = byNode
	var ids []string
	for _, n := range nodes {
		switch {
		case n.ID == "":
			return nil, fmt.Errorf("%w: empty node ID", ErrInvalidNode)
		case n.Weight < 0 || n.Weight > MaxWeight:
			return nil, fmt.Errorf("%w: node %q has weight %d, want 0..%d", ErrInvalidNode, n.ID, n.Weight, MaxWeight)
		case n.MaxKeys < 0 || n.MaxCost < 0:
			return nil, fmt.Errorf("%w: node %q has a negative cap", ErrInvalidNode, n.ID)
		}
		labels := n.Labels
		if _, declared := labels[LabelNode]; byNode || declared {
			labels = maps.Clone(labels)
			if labels == nil {
				labels = map[string]string{}
			}
			delete(labels, LabelNode)
			if byNode {
				labels[LabelNode] = n.ID
			}
		}
		s.nodes = append(s.nodes, conNode{id: n.ID, hash: hashString(n.ID), weight: int64(max(n.Weight, 1)),
			labels: labels, capN: int64(n.MaxKeys), capC: int64(n.MaxCost)})
	}
	slices.SortFunc(s.nodes, func(x, y conNode) int { return cmp.Compare(x.id, y.id) })
	var weights int64
	for i, n := range s.nodes {
		if i > 0 && n.id == s.nodes[i-1].id {
			return nil, fmt.Errorf("%w: duplicate node ID %q", ErrInvalidNode, n.id)
		}
		ids = append(ids, n.id)
		weights += n.weight
	}
	// Shares are exact rationals in 64-bit integers: keys times total
	// weight must stay below 2⁶⁰.
	if weights > 0 && int64(len(keys)+1) > (1<<60)/weights {
		return nil, fmt.Errorf("%w: %d keys on a total weight of %d is too much to balance exactly", ErrInvalidNode, len(keys), weights)
	}
	s.live = newStrIndex(ids)
	for i := range ids {
		s.live.add(i)
	}
	if slices.Contains(keys, "") {
		return nil, errEmptyKey
	}
	s.classifyNodes(c.Avoid)
	return s, nil
}

// labelSig is a canonical text of a label set.
func labelSig(labels map[string]string) string { return string(appendLabelSig(nil, labels)) }

// appendLabelSig appends a canonical text of a label set to buf: its
// names in order, each with its value, every string prefixed by its length.
func appendLabelSig(buf []byte, labels map[string]string) []byte {
	switch len(labels) {
	case 0:
		return buf
	case 1:
		for name, value := range labels {
			buf = appendStr(appendStr(buf, name), value)
		}
		return buf
	}
	for _, name := range slices.Sorted(maps.Keys(labels)) {
		buf = appendStr(appendStr(buf, name), labels[name])
	}
	return buf
}

// appendStr appends s to buf, prefixed by its length.
func appendStr(buf []byte, s string) []byte {
	buf = strconv.AppendInt(buf, int64(len(s)), 10)
	buf = append(buf, ':')
	return append(buf, s...)
}

// classifyNodes groups nodes by their labels. A node that some key avoids
// gets a class of its own, since it may not take every key its labels
// allow; so does, with costs, a node with a cap.
func (s *constrained) classifyNodes(avoid map[string][]string) {
	alone := make([]bool, len(s.nodes))
	for j, n := range s.nodes {
		// With costs, packing within a class needs nodes that take any key.
		alone[j] = s.costly && (n.capN > 0 || n.capC > 0)
	}
	for _, ns := range avoid {
		for _, id := range ns {
			if j := s.live.index(id); j >= 0 {
				alone[j] = true
			}
		}
	}
	bySig := map[string]int{}
	for j, n := range s.nodes {
		sig := labelSig(n.labels)
		if alone[j] {
			sig += "#" + strconv.Quote(n.id)
		}
		c, ok := bySig[sig]
		if !ok {
			c = len(s.classes)
			bySig[sig] = c
			s.classes = append(s.classes, nodeClass{sig: sig, labels: n.labels})
		}
		s.classes[c].members = append(s.classes[c].members, j)
	}
	order := make([]int, len(s.classes))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(x, y int) int { return strings.Compare(s.classes[x].sig, s.classes[y].sig) })
	sorted := make([]nodeClass, len(s.classes))
	for to, from := range order {
		sorted[to] = s.classes[from]
	}
	s.classes = sorted
	s.nodeClass = make([]int, len(s.nodes))
	for c, nc := range s.classes {
		for _, j := range nc.members {
			s.nodeClass[j] = c
		}
	}
}

// meets reports whether labels satisfy a requirement.
func meets(labels, require map[string]string) bool {
	for name, want := range require {
		if got, ok := labels[name]; !ok || got != want {
			return false
		}
	}
	return true
}

// readKeys sorts every key into its class, notes where it may stay and
// honours pins. It returns false, having done nothing useful, when a
// requirement or preference names LabelNode and the nodes do not have it.
func (s *constrained) readKeys(prev Assignment, c Constraints) bool {
	n := len(s.keys)
	s.seen = newStrIndex(s.keys)
	s.class = make([]int32, n)
	s.held = make([]int32, n)
	s.pinned = make([]int32, n)
	s.state = make([]uint8, n)
	// Requirements → the node classes that meet them.
	type reqInfo struct{ ok []bool }
	reqs := map[string]*reqInfo{}
	bySig := map[string]int32{}
	var classes []keyClass
	var buf []byte
	for i, key := range s.keys {
		s.held[i], s.pinned[i] = -1, -1
		if !s.seen.add(i) {
			s.state[i] = keyDuplicate
			continue
		}
		s.total++
		p := c.Keys[key]
		buf = appendLabelSig(buf[:0], p.Require)
		ri := reqs[string(buf)]
		if ri == nil {
			if _, named := p.Require[LabelNode]; named && !s.byNode {
				return false
			}
			ri = &reqInfo{ok: make([]bool, len(s.classes))}
			for ci, nc := range s.classes {
				ri.ok[ci] = meets(nc.labels, p.Require)
			}
			reqs[string(buf)] = ri
		}
		avoided := s.avoided(c.Avoid[key], ri.ok)
		cost := int64(max(p.Cost, 1))
		buf = append(buf, '|')
		buf = appendStr(appendStr(buf, p.Spread), p.Group)
		buf = appendLabelSig(append(buf, '|'), p.Prefer)
		buf = strconv.AppendInt(append(buf, '|'), cost, 10)
		for _, j := range avoided {
			buf = strconv.AppendInt(append(buf, '|'), int64(j), 10)
		}
		ki, ok := bySig[string(buf)]
		if !ok {
			ki = int32(len(classes))
			sig := string(buf)
			bySig[sig] = ki
			kc, ok := s.newKeyClass(sig, p, cost, ri.ok, avoided)
			if !ok {
				return false
			}
			classes = append(classes, kc)
		}
		s.class[i] = ki
		kc := &classes[ki]
		if id, ok := c.Pins[key]; ok {
			if j := s.live.index(id); j >= 0 && ri.ok[s.nodeClass[j]] {
				s.pinned[i] = int32(j)
				s.state[i] = keyPinned
				s.nodes[j].pins++
				s.nodes[j].pinC += cost
				if p.Spread != "" {
					kc.pinned[s.nodes[j].labels[p.Spread]]++
				}
				continue
			}
		}
		if id, ok := prev[key]; ok {
			s.inPrev++
			if j := s.live.index(id); j >= 0 && kc.ok[s.nodeClass[j]] {
				s.held[i] = int32(j)
			}
		}
	}
	s.sortClasses(classes)
	return true
}

// avoided returns the nodes (by index) a key avoids that hold: of nodes
// that meet its requirements (meet, by node class), while some other node
// that does is live.
func (s *constrained) avoided(ids []string, meet []bool) []int {
	var avoided []int
	for _, id := range ids {
		if j := s.live.index(id); j >= 0 && meet[s.nodeClass[j]] && !slices.Contains(avoided, j) {
			avoided = append(avoided, j)
		}
	}
	if len(avoided) > 0 {
		eligible := 0
		for ci, ok := range meet {
			if ok {
				eligible += len(s.classes[ci].members)
			}
		}
		if eligible == len(avoided) {
			avoided = nil
		}
	}
	slices.Sort(avoided)
	return avoided
}

// newKeyClass makes the class of keys with signature sig: placement p,
// cost, the node classes that meet the requirements (ok) less those of the
// avoided nodes. It returns false when a preference names LabelNode and
// the nodes do not have it.
func (s *constrained) newKeyClass(sig string, p Placement, cost int64, ok []bool, avoided []int) (keyClass, bool) {
	kc := keyClass{sig: sig, place: p, cost: cost, ok: slices.Clone(ok), pinned: map[string]int64{}}
	if len(p.Prefer) > 0 {
		if _, named := p.Prefer[LabelNode]; named && !s.byNode {
			return keyClass{}, false
		}
		s.prefers = true
		kc.off = make([]bool, len(s.classes))
		for ci, nc := range s.classes {
			kc.off[ci] = !meets(nc.labels, p.Prefer)
		}
	}
	for _, j := range avoided {
		kc.ok[s.nodeClass[j]] = false // its class holds j alone
	}
	for ci, ok := range kc.ok {
		if ok {
			kc.elig = append(kc.elig, ci)
		}
	}
	return kc, true
}

// sortClasses puts the key classes in signature order, so that nothing
// depends on key order, and lists the flexible keys of each.
func (s *constrained) sortClasses(classes []keyClass) {
	order := make([]int32, len(classes))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(x, y int32) int { return strings.Compare(classes[x].sig, classes[y].sig) })
	rank := make([]int32, len(classes))
	s.kc = make([]keyClass, len(classes))
	for to, from := range order {
		s.kc[to] = classes[from]
		rank[from] = int32(to)
	}
	counts := make([]int, len(s.kc))
	for i, st := range s.state {
		if st == keyDuplicate {
			continue
		}
		s.class[i] = rank[s.class[i]]
		if st == keyFlexible {
			counts[s.class[i]]++
		}
	}
	s.members = make([][]int32, len(s.kc))
	for k, n := range counts {
		s.members[k] = make([]int32, 0, n)
	}
	for i, st := range s.state {
		if st == keyFlexible {
			s.members[s.class[i]] = append(s.members[s.class[i]], int32(i))
		}
	}
}

// room is how many keys (in cost units, with costs) node j may take
// beyond its pins; unbounded is larger than all keys together.
func (s *constrained) room(j int, unbounded int64) int64 {
	n := s.nodes[j]
	r := unbounded
	if s.costly {
		if n.capC > 0 {
			r = min(r, max(0, n.capC-n.pinC))
		}
		if n.capN > 0 && n.pins >= n.capN {
			r = 0
		}
		return r
	}
	if n.capN > 0 {
		r = min(r, max(0, n.capN-n.pins))
	}
	if n.capC > 0 {
		r = min(r, max(0, n.capC-n.pinC))
	}
	return r
}

// setUnplaceable marks the keys no node may take: those of classes that
// may use no node, and, where caps leave too little room, as many of a
// class as do not fit (by a maximum flow over the classes).
func (s *constrained) setUnplaceable() {
	var total int64
	for k := range s.kc {
		if len(s.kc[k].elig) == 0 {
			for _, i := range s.members[k] {
				s.state[i] = keyUnplaceable
			}
			s.members[k] = nil
		}
		s.kc[k].n = int64(len(s.members[k]))
		total += s.kc[k].n * s.kc[k].cost
	}
	unbounded := total + 1
	bounded := false
	for j := range s.nodes {
		if s.room(j, unbounded) < unbounded {
			bounded = true
		}
	}
	if !bounded || total == 0 {
		return
	}
	// With costs, room is in cost units; a key class's demand is its
	// keys times their cost, and what fits is rounded down to whole keys.
	g := newFlowGraph(2 + len(s.kc) + len(s.classes))
	t := 1 + len(s.kc) + len(s.classes)
	src := make([]int, len(s.kc))
	for k, kc := range s.kc {
		src[k] = g.addArc(0, 1+k, kc.n*kc.cost, 0)
		for _, c := range kc.elig {
			g.addArc(1+k, 1+len(s.kc)+c, flowInf, 0)
		}
	}
	for c, nc := range s.classes {
		var r int64
		for _, j := range nc.members {
			r += s.room(j, unbounded)
		}
		g.addArc(1+len(s.kc)+c, t, r, 0)
	}
	if g.maxFlow(0, t, flowInf, nil) == total {
		return
	}
	for k := range s.kc {
		kc := &s.kc[k]
		fit := g.flow(src[k]) / kc.cost
		if fit == kc.n {
			continue
		}
		// Give up keys that were not running where they may stay first,
		// then by hash.
		ranked := make([]scoredKey, len(s.members[k]))
		for x, i := range s.members[k] {
			score := hashString(s.keys[i]) >> 1
			if s.held[i] >= 0 {
				score |= 1 << 63
			}
			ranked[x] = scoredKey{score, int(i)}
		}
		b := &balancing{keys: s.keys}
		slices.SortFunc(ranked, b.byScore)
		drop := kc.n - fit
		keep := s.members[k][:0]
		for x, r := range ranked {
			if int64(x) < drop {
				s.state[r.key] = keyUnplaceable
			} else {
				keep = append(keep, int32(r.key))
			}
		}
		s.members[k] = keep
		kc.n = fit
	}
}

// fairInput describes the flexible keys and the nodes for fairShares, in
// keys or, with costs, in cost units.
func (s *constrained) fairInput() fairInput {
	in := fairInput{nodes: make([]fairNode, len(s.nodes)), classes: make([][]int, len(s.classes)),
		keys: make([]int64, len(s.kc)), elig: make([][]int, len(s.kc))}
	var total int64
	for k, kc := range s.kc {
		in.keys[k] = kc.n * kc.cost
		in.elig[k] = kc.elig
		total += in.keys[k]
	}
	for j, n := range s.nodes {
		pin := n.pins
		if s.costly {
			pin = n.pinC
		}
		in.nodes[j] = fairNode{w: n.weight, pin: pin, room: s.room(j, total+1)}
	}
	for c, nc := range s.classes {
		in.classes[c] = nc.members
	}
	return in
}

// result builds the assignment and the list of unplaceable keys. Like
// Balance, it patches a copy of prev when prev holds most of it.
func (s *constrained) result(prev Assignment) *Balanced {
	res := &Balanced{}
	for i, st := range s.state {
		if st == keyUnplaceable {
			res.Unplaceable = append(res.Unplaceable, s.keys[i])
		}
	}
	slices.Sort(res.Unplaceable)
	stayed := 0
	for _, st := range s.state {
		if st == keyStayed {
			stayed++
		}
	}
	if 2*stayed < s.total || 2*stayed < len(prev) {
		res.Assignment = make(Assignment, s.total)
		for i, st := range s.state {
			switch st {
			case keyPinned:
				res.Assignment[s.keys[i]] = s.nodes[s.pinned[i]].id
			case keyPlaced, keyStayed:
				res.Assignment[s.keys[i]] = s.nodes[s.held[i]].id
			}
		}
		return res
	}
	a := maps.Clone(prev)
	if s.inPrev < len(prev) {
		for k := range prev {
			if s.seen.index(k) < 0 {
				delete(a, k)
			}
		}
	}
	for i, st := range s.state {
		switch st {
		case keyPinned:
			a[s.keys[i]] = s.nodes[s.pinned[i]].id
		case keyPlaced:
			a[s.keys[i]] = s.nodes[s.held[i]].id
		case keyUnplaceable:
			delete(a, s.keys[i])
		}
	}
	res.Assignment = a
	return res
}
