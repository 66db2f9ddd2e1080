package dim

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

// minMoves is the least number of keys that any perfectly balanced
// assignment must move away from prev. It is derived independently of
// Balance's own steps:
//
// Let K be the set of keys, N = |K|, and for each live node i of weight w_i
// (total W) let f_i = ⌊N·w_i/W⌋ and h_i the number of keys of K that prev puts
// on i. A perfectly balanced assignment gives node i a load q_i ∈ {f_i, f_i+1},
// where f_i+1 is allowed only if N·w_i/W is not an integer, and Σq_i = N; so
// exactly R = N − Σf_i nodes get f_i+1. At most min(h_i, q_i) of i's previous
// keys can stay on i. Raising q_i from f_i to f_i+1 raises min(h_i, q_i) by one
// exactly when h_i > f_i, so the most keys any balanced assignment can keep is
//
//	Σ min(h_i, f_i) + min(R, G),  G = #{i : N·w_i/W ∉ ℤ and h_i > f_i}.
//
// Every key of K that prev assigns (to a live node or not) and that is not
// kept counts as moved, so with P = #{k ∈ K : k ∈ prev}:
//
//	minMoves = P − Σ min(h_i, f_i) − min(R, G).
//
// The bound is tight: giving the R extra keys to G's nodes first and keeping
// min(h_i, q_i) keys on every node reaches it.
func minMoves(prev Assignment, keys []string, nodes []Node) int {
	set := make(map[string]bool)
	for _, k := range keys {
		set[k] = true
	}
	n := int64(len(set))
	var total int64
	for _, node := range nodes {
		total += int64(max(node.Weight, 1))
	}
	held := make(map[string]int64)
	p := 0
	for k := range set {
		if node, ok := prev[k]; ok {
			p++
			held[node]++
		}
	}
	if len(nodes) == 0 {
		return 0
	}
	var kept, floors, gainers int64
	for _, node := range nodes {
		share := n * int64(max(node.Weight, 1))
		f := share / total
		floors += f
		kept += min(held[node.ID], f)
		if share%total != 0 && held[node.ID] > f {
			gainers++
		}
	}
	kept += min(n-floors, gainers)
	return p - int(kept)
}

// testingT is what the checks need from *testing.T and *rapid.T.
type testingT interface {
	require.TestingT
	Helper()
}

// checkBalance verifies every promise of Balance for one input and result.
func checkBalance(t testingT, prev Assignment, keys []string, nodes []Node, got Assignment) {
	t.Helper()
	set := make(map[string]bool)
	for _, k := range keys {
		set[k] = true
	}
	live := make(map[string]int64)
	var total int64
	for _, n := range nodes {
		live[n.ID] = int64(max(n.Weight, 1))
		total += int64(max(n.Weight, 1))
	}

	if len(nodes) == 0 {
		require.Empty(t, got, "no live node, yet keys were assigned")
		return
	}
	require.Len(t, got, len(set), "every key is assigned exactly once")
	for k, node := range got {
		require.True(t, set[k], "assigned key %q was not asked for", k)
		require.Contains(t, live, node, "key %q assigned to node %q, which is not live", k, node)
	}

	loads := got.Loads()
	n := int64(len(set))
	for id, w := range live {
		lo := n * w / total
		hi := (n*w + total - 1) / total
		load := int64(loads[id])
		require.True(t, lo <= load && load <= hi, "node %q holds %d keys, want %d..%d", id, load, lo, hi)
	}

	// A key stays home whenever its node's quota allows.
	held := make(map[string]int)
	stayed := make(map[string]int)
	for k := range set {
		if was, ok := prev[k]; ok {
			held[was]++
			if got[k] == was {
				stayed[was]++
			}
		}
	}
	for id := range live {
		require.Equal(t, min(held[id], loads[id]), stayed[id], "node %q kept too few of its keys", id)
	}
	require.Equal(t, minMoves(prev, keys, nodes), Moves(prev, got), "moves differ from the lower bound")
}

func nodesOf(ids ...string) []Node {
	nodes := make([]Node, len(ids))
	for i, id := range ids {
		nodes[i] = Node{ID: id}
	}
	return nodes
}

func keysN(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%02d", i)
	}
	return keys
}

func mustBalance(t *testing.T, prev Assignment, keys []string, nodes []Node) Assignment {
	t.Helper()
	got, err := Balance(prev, keys, nodes)
	require.NoError(t, err)
	checkBalance(t, prev, keys, nodes, got)
	return got
}

func sortedLoads(a Assignment) []int {
	loads := slices.Collect(maps.Values(a.Loads()))
	slices.Sort(loads)
	return loads
}

func TestBalance(t *testing.T) {
	three := nodesOf("a", "b", "c")
	four := nodesOf("a", "b", "c", "d")
	twelveOn := func(nodes []Node) Assignment {
		return mustBalance(t, nil, keysN(12), nodes)
	}

	tests := []struct {
		name      string
		prev      Assignment
		keys      []string
		nodes     []Node
		wantLoads []int // sorted
		wantMoves int
	}{
		{name: "no nodes assigns nothing", keys: keysN(5)},
		{name: "no keys assigns nothing", nodes: three},
		{name: "one key goes to the one node", keys: keysN(1), nodes: nodesOf("a"), wantLoads: []int{1}},
		{name: "ten keys on three nodes split 4/3/3", keys: keysN(10), nodes: three, wantLoads: []int{3, 3, 4}},
		{name: "more nodes than keys gives one key each to some", keys: keysN(3), nodes: nodesOf("a", "b", "c", "d", "e"), wantLoads: []int{1, 1, 1}},
		{
			name: "a joining node receives its quota and nothing else moves",
			prev: twelveOn(three), keys: keysN(12), nodes: four,
			wantLoads: []int{3, 3, 3, 3}, wantMoves: 3,
		},
		{
			name: "a leaving node moves exactly its own keys",
			prev: twelveOn(four), keys: keysN(12), nodes: three,
			wantLoads: []int{4, 4, 4}, wantMoves: 3,
		},
		{
			name: "a join and a leave at once move only the leaver's keys",
			prev: twelveOn(three), keys: keysN(12), nodes: nodesOf("a", "b", "d"),
			wantLoads: []int{4, 4, 4}, wantMoves: 4,
		},
		{
			name:      "weights 1:2:3 split 12 keys 2/4/6",
			keys:      keysN(12),
			nodes:     []Node{{ID: "a", Weight: 1}, {ID: "b", Weight: 2}, {ID: "c", Weight: 3}},
			wantLoads: []int{2, 4, 6},
		},
		{
			name:      "weight zero counts as one",
			keys:      keysN(4),
			nodes:     []Node{{ID: "a", Weight: 0}, {ID: "b", Weight: 1}},
			wantLoads: []int{2, 2},
		},
		{
			name: "the rounded-up quota goes where it saves a move",
			prev: Assignment{
				"k00": "a", "k01": "a", "k02": "a", "k03": "a",
				"k04": "b", "k05": "b", "k06": "b",
				"k07": "c", "k08": "c", "k09": "c",
			},
			keys: keysN(10), nodes: three,
			wantLoads: []int{3, 3, 4}, wantMoves: 0,
		},
		{
			name: "two crowded nodes share one rounded-up slot",
			prev: Assignment{
				"k00": "a", "k01": "a", "k02": "a", "k03": "a",
				"k04": "b", "k05": "b", "k06": "b", "k07": "b",
				"k08": "c", "k09": "c",
			},
			keys: keysN(10), nodes: three,
			wantLoads: []int{3, 3, 4}, wantMoves: 1,
		},
		{
			name: "removed keys and unknown nodes in prev are ignored",
			prev: Assignment{"gone": "a", "k00": "zz", "k01": "b"},
			keys: keysN(2), nodes: nodesOf("a", "b"),
			wantLoads: []int{1, 1}, wantMoves: 1,
		},
		{
			name: "duplicate keys count once",
			keys: []string{"x", "y", "x", "x"}, nodes: nodesOf("a", "b"),
			wantLoads: []int{1, 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustBalance(t, tt.prev, tt.keys, tt.nodes)
			if tt.wantLoads == nil {
				assert.Empty(t, got)
				return
			}
			assert.Equal(t, tt.wantLoads, sortedLoads(got))
			assert.Equal(t, tt.wantMoves, Moves(tt.prev, got))
		})
	}
}

func TestBalanceRejectsBadInput(t *testing.T) {
	tests := []struct {
		name    string
		keys    []string
		nodes   []Node
		wantErr error
		wantMsg string
	}{
		{"an empty node ID", keysN(1), []Node{{ID: ""}}, ErrInvalidNode, "empty node ID"},
		{"a duplicate node ID", keysN(1), nodesOf("a", "b", "a"), ErrInvalidNode, `duplicate node ID "a"`},
		{"a negative weight", keysN(1), []Node{{ID: "a", Weight: -1}}, ErrInvalidNode, "weight -1"},
		{"a weight over MaxWeight", keysN(1), []Node{{ID: "a", Weight: MaxWeight + 1}}, ErrInvalidNode, "weight"},
		{"an empty key", []string{"x", ""}, nodesOf("a"), ErrInvalidKey, "empty key"},
		{"an empty key with no nodes", []string{""}, nil, ErrInvalidKey, "empty key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Balance(nil, tt.keys, tt.nodes)
			require.ErrorIs(t, err, tt.wantErr)
			assert.ErrorContains(t, err, tt.wantMsg)
			assert.Nil(t, got)
		})
	}
}

func TestBalanceIsIndependentOfInputOrder(t *testing.T) {
	keys := keysN(40)
	nodes := []Node{{ID: "a", Weight: 2}, {ID: "b"}, {ID: "c", Weight: 3}, {ID: "d"}}
	prev := mustBalance(t, nil, keys[:30], nodes[:3])
	want := mustBalance(t, prev, keys, nodes)

	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 50 {
		k := slices.Clone(keys)
		n := slices.Clone(nodes)
		rng.Shuffle(len(k), func(i, j int) { k[i], k[j] = k[j], k[i] })
		rng.Shuffle(len(n), func(i, j int) { n[i], n[j] = n[j], n[i] })
		k = append(k, k[:i%7]...) // duplicates are ignored too
		require.Equal(t, want, mustBalance(t, prev, k, n), "shuffle %d", i)
	}
}

// A node joining and then leaving again returns every key to where it was.
func TestBalanceJoinThenLeaveRestores(t *testing.T) {
	keys := keysN(30)
	before := mustBalance(t, nil, keys, nodesOf("a", "b", "c"))
	joined := mustBalance(t, before, keys, nodesOf("a", "b", "c", "d"))
	left := mustBalance(t, joined, keys, nodesOf("a", "b", "c"))
	assert.Equal(t, 7, Moves(before, joined))
	assert.Equal(t, before.Loads(), left.Loads())
	assert.Equal(t, 7, Moves(joined, left))
}

// balanceInput draws inputs with much overlap between prev, keys and nodes,
// so that joins, leaves, crowded nodes and removed keys all occur.
func balanceInput(t *rapid.T) (Assignment, []string, []Node) {
	keyPool := rapid.IntRange(0, 60).Draw(t, "keyPool")
	nodePool := rapid.IntRange(1, 12).Draw(t, "nodePool")
	key := func(i int) string { return "key-" + strconv.Itoa(i) }
	node := func(i int) string { return "node-" + strconv.Itoa(i) }

	var keys []string
	for i := range keyPool {
		if rapid.IntRange(0, 4).Draw(t, "keyAbsent") > 0 {
			keys = append(keys, key(i))
		}
	}
	weighted := rapid.Bool().Draw(t, "weighted")
	var nodes []Node
	for i := range nodePool {
		if rapid.IntRange(0, 3).Draw(t, "nodeDown") == 0 {
			continue
		}
		w := 0
		if weighted {
			w = rapid.IntRange(0, 7).Draw(t, "weight")
		}
		nodes = append(nodes, Node{ID: node(i), Weight: w})
	}
	prev := Assignment{}
	for i := range keyPool {
		if rapid.IntRange(0, 3).Draw(t, "prevAbsent") > 0 {
			// Skewed towards low node numbers so some nodes are crowded.
			n := rapid.IntRange(0, nodePool).Draw(t, "prevNode")
			prev[key(i)] = node(n * n / max(nodePool, 1))
		}
	}
	return prev, keys, nodes
}

func TestBalanceProperties(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		prev, keys, nodes := balanceInput(rt)
		got, err := Balance(prev, keys, nodes)
		require.NoError(rt, err)
		checkBalance(rt, prev, keys, nodes, got)

		perm := rapid.Permutation(nodes).Draw(rt, "nodeOrder")
		again, err := Balance(prev, rapid.Permutation(keys).Draw(rt, "keyOrder"), perm)
		require.NoError(rt, err)
		require.Equal(rt, got, again, "result depends on input order")

		// Balancing a balanced assignment again changes nothing.
		stable, err := Balance(got, keys, nodes)
		require.NoError(rt, err)
		require.Equal(rt, got, stable)
	})
}

// parseFuzzInput reads "k1,k2", "a:1,b:0" and "k1=a,k2=b" forms; it reports
// false for text it cannot use, so the fuzzer does not waste time there.
func parseFuzzInput(keys, nodes, prev string) (Assignment, []string, []Node, bool) {
	var ks []string
	if keys != "" {
		ks = strings.Split(keys, ",")
	}
	var ns []Node
	if nodes != "" {
		for _, f := range strings.Split(nodes, ",") {
			id, w, _ := strings.Cut(f, ":")
			weight := 0
			if w != "" {
				var err error
				if weight, err = strconv.Atoi(w); err != nil {
					return nil, nil, nil, false
				}
			}
			ns = append(ns, Node{ID: id, Weight: weight})
		}
	}
	p := Assignment{}
	if prev != "" {
		for _, f := range strings.Split(prev, ",") {
			k, n, ok := strings.Cut(f, "=")
			if !ok {
				return nil, nil, nil, false
			}
			p[k] = n
		}
	}
	return p, ks, ns, len(ks) <= 2000 && len(ns) <= 200
}

func FuzzBalance(f *testing.F) {
	f.Add("a,b,c,d,e,f,g", "n1,n2,n3", "a=n1,b=n1,c=n1,d=n2")
	f.Add("a,b,c,d", "n1:1,n2:3", "a=n2,b=n2,c=n2,d=n2")
	f.Add("a,a,b", "n1,n1", "")
	f.Add("", "", "x=y")
	f.Add("a,,b", "n1:-2", "a=n1")
	f.Fuzz(func(t *testing.T, keys, nodes, prev string) {
		p, ks, ns, ok := parseFuzzInput(keys, nodes, prev)
		if !ok {
			t.Skip()
		}
		got, err := Balance(p, ks, ns)
		if err != nil {
			require.Nil(t, got)
			if !errors.Is(err, ErrInvalidKey) && !errors.Is(err, ErrInvalidNode) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		checkBalance(t, p, ks, ns, got)
		again, err := Balance(p, ks, ns)
		require.NoError(t, err)
		require.Equal(t, got, again)
	})
}
