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

func TestRestartSharesOnlyWhatNothingWillMoveLater(t *testing.T) {
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
		// removed since, and some moved as its nodes stopped one by one.
		prev, err := Balance(nil, keys[:max(0, nkeys-rng.IntN(3))], old)
		require.NoError(t, err)
		for key := range prev {
			if rng.IntN(4) == 0 {
				prev[key] = old[rng.IntN(len(old))].ID
			}
		}
		var all []Node
		for i := range size {
			all = append(all, Node{ID: "new" + strconv.Itoa(i), Weight: 1})
		}
		var taking []string
		for _, n := range all[:rng.IntN(size+1)] {
			taking = append(taking, n.ID)
		}
		next := restartShares(prev, keys, taking, size)
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
		require.NotEmpty(t, paired, "round %d: a deal that changed nothing", round)
		// The rebalance after the last join moves none of them.
		final, err := Balance(next, keys, all)
		require.NoError(t, err)
		for key, node := range paired {
			require.Equal(t, node, final[key], "round %d: paired key %s moved on once every node joined", round, key)
		}
	}
}

func TestRestartSharesGiveEachJoinerItsShareOnly(t *testing.T) {
	keys := []string{"a", "b", "c", "d", "e", "f", "g"}
	// The departed node x held 5 of 7 keys; over 3 nodes a node holds 2,
	// and one node 3.
	prev := Assignment{"a": "x", "b": "x", "c": "x", "d": "x", "e": "x", "f": "y", "g": "z"}
	next := restartShares(prev, keys, []string{"n2", "n1"}, 3)
	assert.Equal(t, Assignment{"a": "n1", "b": "n1", "c": "n1", "d": "n2", "e": "n2", "f": "y", "g": "z"}, next,
		"the first joiner by ID takes 3 keys, the second 2")
	next = restartShares(prev, keys, []string{"n1", "n2", "n3"}, 3)
	assert.Equal(t, Assignment{"a": "n1", "b": "n1", "c": "n1", "d": "n2", "e": "n2", "f": "n3", "g": "n3"}, next)
	assert.Nil(t, restartShares(prev, keys, nil, 3), "no joiner, no deal")
	assert.Nil(t, restartShares(Assignment{"a": "n1"}, []string{"a"}, []string{"n1"}, 1), "no departed node, no deal")
	assert.Nil(t, restartShares(Assignment{"a": "x"}, []string{"a"}, []string{"n1"}, 0), "no size, no deal")
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
	ex, err := Explain(t.Context(), c.srv.Client(t), Service{Name: c.service}, first[0])
	require.NoError(t, err)
	require.NotNil(t, ex.LastMove)
	assert.Equal(t, MoveNodeGone, ex.LastMove.Reason)
	assert.Equal(t, triggerWholeRestart, ex.LastMove.Trigger)
}

// The last node of a whole restart with new IDs takes its share as it
// joins too, from what the leader read while it waited, instead of waiting
// for the rebalance that follows the last join, which reads everything
// again first. (A heartbeat of 3 s gives the restart a window of 3 s, so
// that the joins, 150 ms apart, all fall within it.)
func TestTheLastNodeOfAWholeRestartTakesItsShareAsItJoins(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	opts := []Option{WithNodeTTL(8 * time.Second), WithHeartbeat(3 * time.Second)}
	c := newTestCluster(t, 12)
	c.startSpread([]string{"a", "b", "c"}, 0, opts...)
	c.waitConverged(10*time.Second, "a", "b", "c")
	c.stopAll()

	c.startSpread([]string{"d", "e", "f"}, 150*time.Millisecond, opts...)
	c.waitConverged(10*time.Second, "d", "e", "f")
	for _, key := range c.keys() {
		ex, err := Explain(t.Context(), c.srv.Client(t), Service{Name: c.service}, key)
		require.NoError(t, err)
		require.NotNil(t, ex.LastMove, key)
		assert.Equal(t, triggerWholeRestart, ex.LastMove.Trigger, "%s, on %s", key, ex.LastMove.To)
	}
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
