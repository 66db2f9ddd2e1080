package dim

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"
)

func TestBalanceAvoidingKeepsKeysOffTheNodesThatAvoidThem(t *testing.T) {
	nodes := []Node{{ID: "n1"}, {ID: "n2"}, {ID: "n3"}}
	keys := []string{"a", "b", "c", "d", "e", "f"}
	prev, err := Balance(nil, keys, nodes)
	require.NoError(t, err)
	// n3 does not know the keys it holds (a rolling deploy): they go
	// elsewhere, and n3 takes keys it can run instead, so that loads stay
	// even.
	var avoided []string
	for key, node := range prev {
		if node == "n3" {
			avoided = append(avoided, key)
		}
	}
	avoid := map[string][]string{}
	for _, key := range avoided {
		avoid[key] = []string{"n3"}
	}
	got, err := BalanceAvoiding(prev, keys, nodes, avoid)
	require.NoError(t, err)
	for _, key := range avoided {
		assert.NotEqual(t, "n3", got[key], key)
	}
	assert.Equal(t, map[string]int{"n1": 2, "n2": 2, "n3": 2}, got.Loads())

	// A key that every node avoids stays where it is: an outage everywhere
	// must not empty the fleet.
	all := map[string][]string{"a": {"n1", "n2", "n3"}}
	got, err = BalanceAvoiding(prev, keys, nodes, all)
	require.NoError(t, err)
	assert.Equal(t, prev["a"], got["a"])

	// Without avoidances it is Balance.
	plain, err := BalanceAvoiding(prev, keys, nodes, map[string][]string{"a": {"gone"}})
	require.NoError(t, err)
	assert.Equal(t, prev, plain)
}

func TestBalanceAvoidingProperties(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		prev, keys, nodes := balanceInput(rt)
		avoid := map[string][]string{}
		for _, key := range keys {
			for _, n := range nodes {
				if rapid.IntRange(0, 5).Draw(rt, "avoids") == 0 {
					avoid[key] = append(avoid[key], n.ID)
				}
			}
		}
		got, err := BalanceAvoiding(prev, keys, nodes, avoid)
		require.NoError(rt, err)
		checkAvoiding(rt, keys, nodes, avoid, got)

		again, err := BalanceAvoiding(prev, rapid.Permutation(keys).Draw(rt, "keyOrder"),
			rapid.Permutation(nodes).Draw(rt, "nodeOrder"), avoid)
		require.NoError(rt, err)
		require.Equal(rt, got, again, "result depends on input order")

		plain, err := Balance(prev, keys, nodes)
		require.NoError(rt, err)
		none, err := BalanceAvoiding(prev, keys, nodes, nil)
		require.NoError(rt, err)
		require.Equal(rt, plain, none, "without avoidances it is Balance")
	})
}

// checkAvoiding checks BalanceAvoiding's contract on one result.
func checkAvoiding(t testingT, keys []string, nodes []Node, avoid map[string][]string, got Assignment) {
	weight := map[string]int64{}
	for _, n := range nodes {
		weight[n.ID] = int64(max(n.Weight, 1))
	}
	set := map[string]bool{}
	for _, k := range keys {
		set[k] = true
	}
	if len(nodes) == 0 {
		require.Empty(t, got)
		return
	}
	require.Len(t, got, len(set), "every key is placed")
	loads := got.Loads()
	eligible := func(key, node string) bool { return !slices.Contains(avoid[key], node) }
	for key, node := range got {
		_, live := weight[node]
		require.True(t, live, "key %q on a node that is not live", key)
		some := slices.ContainsFunc(nodes, func(n Node) bool { return eligible(key, n.ID) })
		if some {
			require.True(t, eligible(key, node), "key %q on %s, which avoids it", key, node)
		}
		if !eligible(key, node) {
			continue
		}
		for _, n := range nodes {
			if n.ID == node || !eligible(key, n.ID) {
				continue
			}
			// Without key, node must hold less per weight than n would
			// with it.
			require.Less(t, int64(loads[node]-1)*weight[n.ID], int64(loads[n.ID]+1)*weight[node],
				"key %q on %s (load %d, weight %d) could move to %s (load %d, weight %d)",
				key, node, loads[node], weight[node], n.ID, loads[n.ID], weight[n.ID])
		}
	}
}
