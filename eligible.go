package dim

import (
	"cmp"
	"slices"
)

// BalanceAvoiding is [Balance] for nodes that cannot hold every key: avoid
// maps a key to the nodes that must not hold it (a replica whose getConfig
// does not return the key, or one that gave the key up after failing to
// create it). It is pure and deterministic like Balance, and:
//
//   - A key goes to a node that does not avoid it whenever one is in nodes.
//     A key that every node avoids is placed as Balance places it: a key is
//     never dropped, and where every node fails (an upstream outage) keys stay
//     where they are.
//   - Loads are even among the nodes each key may use: no key sits on a node
//     that, without the key, would still hold as much per unit of weight as
//     another node the key may use would hold with it (with equal weights:
//     loads within ±1 among the eligible nodes). Balance's quotas meet this
//     rule, and without avoidances the result is exactly Balance's.
//   - Keys move only where an avoidance or that evenness requires.
//
// Entries of avoid for keys not in keys, or nodes not in nodes, are ignored.
// It costs Balance's time plus, for each key that must leave an avoiding
// node, a pass over the nodes; many avoidances on a large fleet cost more.
func BalanceAvoiding(prev Assignment, keys []string, nodes []Node, avoid map[string][]string) (Assignment, error) {
	b := newAvoidance(nodes, avoid)
	if !b.any {
		return Balance(prev, keys, nodes)
	}
	// Start from Balance with the avoided placements of prev forgotten, so
	// that they count as keys to place.
	kept := make(Assignment, len(prev))
	for key, node := range prev {
		if !b.avoids(key, node) || !b.hasEligible(key) {
			kept[key] = node
		}
	}
	res, err := Balance(kept, keys, nodes)
	if err != nil {
		return nil, err
	}
	b.load = res.Loads()
	var pending []string
	for key, node := range res {
		if b.avoids(key, node) && b.hasEligible(key) {
			pending = append(pending, key)
			b.load[node]--
			delete(res, key)
		}
	}
	slices.Sort(pending)
	for _, key := range pending {
		best := ""
		for _, n := range b.ids {
			if b.avoids(key, n) {
				continue
			}
			if best == "" || b.less(n, best, prev[key]) {
				best = n
			}
		}
		res[key] = best
		b.load[best]++
	}
	b.even(res)
	return res, nil
}

// avoidance is the working state of one BalanceAvoiding call.
type avoidance struct {
	ids    []string // node IDs, sorted
	weight map[string]int
	avoid  map[string]map[string]bool // key → nodes that avoid it
	load   map[string]int
	any    bool // some live node avoids some key
}

func newAvoidance(nodes []Node, avoid map[string][]string) *avoidance {
	b := &avoidance{weight: map[string]int{}, avoid: map[string]map[string]bool{}}
	for _, n := range nodes {
		w := n.Weight
		if w == 0 {
			w = 1
		}
		b.ids = append(b.ids, n.ID)
		b.weight[n.ID] = w
	}
	slices.Sort(b.ids)
	for key, ns := range avoid {
		for _, n := range ns {
			if _, live := b.weight[n]; live {
				if b.avoid[key] == nil {
					b.avoid[key] = map[string]bool{}
				}
				b.avoid[key][n] = true
				b.any = true
			}
		}
	}
	return b
}

func (b *avoidance) avoids(key, node string) bool { return b.avoid[key][node] }

// hasEligible reports whether some node does not avoid key.
func (b *avoidance) hasEligible(key string) bool { return len(b.avoid[key]) < len(b.ids) }

// cmpAfter compares two nodes by their load relative to weight once each has
// taken one more key: the node that would be less loaded comes first.
func (b *avoidance) cmpAfter(x, y string) int {
	return cmp.Compare(int64(b.load[x]+1)*int64(b.weight[y]), int64(b.load[y]+1)*int64(b.weight[x]))
}

// less orders candidates for a key: the least loaded after taking it, then
// its previous node, then by ID.
func (b *avoidance) less(x, y, prev string) bool {
	if c := b.cmpAfter(x, y); c != 0 {
		return c < 0
	}
	if (x == prev) != (y == prev) {
		return x == prev
	}
	return x < y
}

// heavier reports whether one key of h should move to l: without it, h
// would still hold at least as much per unit of weight as l would with it.
func (b *avoidance) heavier(h, l string) bool {
	return int64(b.load[h]-1)*int64(b.weight[l]) >= int64(b.load[l]+1)*int64(b.weight[h])
}

// even moves keys from heavier to lighter nodes they may use until no such
// move is left: the ±1-among-eligible rule.
func (b *avoidance) even(res Assignment) {
	on := map[string][]string{}
	for key, node := range res {
		on[node] = append(on[node], key)
	}
	for _, keys := range on {
		slices.Sort(keys)
	}
	for {
		// The heaviest nodes first, then the lightest ones for each.
		order := slices.Clone(b.ids)
		slices.SortFunc(order, func(x, y string) int {
			if c := cmp.Compare(int64(b.load[y])*int64(b.weight[x]), int64(b.load[x])*int64(b.weight[y])); c != 0 {
				return c
			}
			return cmp.Compare(x, y)
		})
		moved := false
	search:
		for _, h := range order {
			for i := len(order) - 1; i >= 0; i-- {
				l := order[i]
				if l == h || !b.heavier(h, l) {
					continue
				}
				for j, key := range on[h] {
					if b.avoids(key, l) {
						continue
					}
					on[h] = slices.Delete(on[h], j, j+1)
					k := on[l]
					pos, _ := slices.BinarySearch(k, key)
					on[l] = slices.Insert(k, pos, key)
					res[key] = l
					b.load[h]--
					b.load[l]++
					moved = true
					break search
				}
			}
		}
		if !moved {
			return
		}
	}
}
