package dim

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRestartPairsOnlyWhereNothingWillMoveLater(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for round := range 300 {
		size := 1 + rng.IntN(8)
		nkeys := rng.IntN(40)
		keys := make([]string, nkeys)
		for i := range keys {
			keys[i] = fmt.Sprintf("k%02d", i)
		}
		var old []Node
		for i := range size + rng.IntN(2) - rng.IntN(2) {
			old = append(old, Node{ID: "old" + strconv.Itoa(i), Weight: 1})
		}
		if len(old) == 0 {
			continue
		}
		// The assignment of the service before it stopped, over as many
		// nodes as it had or one more or less, with some keys added or
		// removed since.
		prev, err := Balance(nil, keys[:max(0, nkeys-rng.IntN(3))], old)
		require.NoError(t, err)
		var all []Node
		for i := range size {
			all = append(all, Node{ID: "new" + strconv.Itoa(i), Weight: 1})
		}
		var taking []string
		for _, n := range all[:rng.IntN(size+1)] {
			taking = append(taking, n.ID)
		}
		next := restartPairs(prev, keys, taking, size)
		if next == nil {
			continue
		}
		paired := map[string]string{}
		for key, node := range next {
			if prev[key] != node {
				require.Contains(t, taking, node, "round %d: a key went to a node that has not joined", round)
				paired[key] = node
			}
		}
		require.NotEmpty(t, paired, "round %d: a pairing that changed nothing", round)
		// Each joiner took exactly one departed node's keys.
		from := map[string]string{}
		for key, node := range paired {
			if f, ok := from[node]; ok {
				require.Equal(t, f, prev[key], "round %d: joiner %s took keys of two departed nodes", round, node)
			}
			from[node] = prev[key]
		}
		// The rebalance after the last join moves none of them.
		final, err := Balance(next, keys, all)
		require.NoError(t, err)
		for key, node := range paired {
			require.Equal(t, node, final[key], "round %d: paired key %s moved on once every node joined", round, key)
		}
	}
}

func TestRestartPairsNothingWhereTheBalanceWouldMoveIt(t *testing.T) {
	keys := []string{"a", "b", "c", "d", "e", "f"}
	// The departed node x held 4 of 6 keys; over 3 nodes a node holds 2.
	prev := Assignment{"a": "x", "b": "x", "c": "x", "d": "x", "e": "y", "f": "z"}
	next := restartPairs(prev, keys, []string{"n1"}, 3)
	require.NotNil(t, next)
	assert.Equal(t, "x", next["a"], "a departed node with more than its share is not paired")
	assert.Equal(t, "n1", next["e"], "the first pairable departed node goes to the joiner")
	assert.Nil(t, restartPairs(prev, keys, nil, 3), "no joiner, no pairing")
	assert.Nil(t, restartPairs(Assignment{"a": "n1"}, []string{"a"}, []string{"n1"}, 1), "no departed node, no pairing")
}

func TestAWholeRestartWithNewIDsPlacesEachNodeAsItJoins(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 12)
	c.startSpread([]string{"a", "b", "c"}, 0, restartOptions()...)
	c.waitConverged(10*time.Second, "a", "b", "c")
	c.stopAll()
	seq := lastSeq(c.rec.Events())

	// The first of three new nodes runs its share (4 keys) while the other
	// two have not joined yet: without pairing it runs nothing until they
	// have, or the restart window (800 ms) has ended and it runs all 12.
	c.start("d", restartOptions()...)
	c.eventually(5*time.Second, "d runs a departed node's 4 keys", func() bool {
		return len(liveOn(c, "d")) == 4
	})
	first := liveOn(c, "d")
	c.startSpread([]string{"e", "f"}, 0, restartOptions()...)
	c.waitConverged(10*time.Second, "d", "e", "f")
	assert.Equal(t, first, liveOn(c, "d"), "d kept the keys it took")
	assert.Empty(t, createdOnMoreThanOneNode(c.rec.Events(), seq), "keys created on one node, then moved to another")
	ex, err := Explain(t.Context(), c.srv.Client(t), first[0], WithService(c.service))
	require.NoError(t, err)
	require.NotNil(t, ex.LastMove)
	assert.Equal(t, MoveNodeGone, ex.LastMove.Reason)
	assert.Equal(t, triggerWholeRestart, ex.LastMove.Trigger)
}

// liveOn returns, sorted, the keys live on node.
func liveOn(c *testCluster, node string) []string {
	var keys []string
	for key, nodes := range c.rec.LiveByKey() {
		if slices.Contains(nodes, node) {
			keys = append(keys, key)
		}
	}
	slices.Sort(keys)
	return keys
}
