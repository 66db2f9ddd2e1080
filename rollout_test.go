package dim

import (
	"maps"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/history"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRolloutHoldsPinAndPair(t *testing.T) {
	nodes := []Node{{ID: "a", Weight: 1}, {ID: "c", Weight: 1}, {ID: "d", Weight: 1}}
	prev := Assignment{"k1": "a", "k2": "b", "k3": "b", "k4": "c", "k5": "x", "k6": "x"}
	keys := []string{"k1", "k2", "k3", "k4", "k5", "k6", "k7"}
	r := &rolloutHolds{restarting: map[string]nodeHold{"b": {until: 9, session: "s1"}}, waiting: map[string]nodeHold{"d": {until: 9}},
		sessions: map[string]string{"a": "sa", "c": "sc", "d": "sd"}}
	p := r.apply(prev, keys, nodes)
	assert.Equal(t, Assignment{"k2": "b", "k3": "b"}, p.pinned, "b restarts: its keys wait for it")
	assert.ElementsMatch(t, []string{"k1", "k4", "k5", "k6", "k7"}, p.keys)
	assert.Equal(t, "d", p.prev["k5"], "x left: its keys go to the waiting joiner")
	assert.Equal(t, "d", p.prev["k6"])
	assert.Equal(t, []string{"d"}, p.joined)
	assert.ElementsMatch(t, nodes, p.nodes, "the joiner takes keys from now on")
	assert.Equal(t, "x", prev["k5"], "the caller's assignment is not changed")

	// b still stopping (its old session): nothing changes for it.
	r.sessions["b"] = "s1"
	prev = Assignment{"k1": "a", "k2": "b", "k4": "c"}
	p = r.apply(prev, keys, append(nodes, Node{ID: "b", Weight: 1}))
	assert.Empty(t, p.pinned)
	assert.Empty(t, p.back, "not back: it has not stopped yet")

	// Nobody left: the joiner waits; b is back (a new session): its hold ends.
	r.sessions["b"] = "s2"
	p = r.apply(prev, keys, append(nodes, Node{ID: "b", Weight: 1}))
	assert.Empty(t, p.pinned)
	assert.Equal(t, []string{"b"}, p.back)
	assert.Empty(t, p.joined)
	assert.NotContains(t, p.nodes, Node{ID: "d", Weight: 1}, "d waits")
	assert.True(t, maps.Equal(prev, p.prev))

	// Only waiting joiners: they take keys.
	p = r.apply(Assignment{}, keys, []Node{{ID: "d", Weight: 1}})
	assert.Equal(t, []Node{{ID: "d", Weight: 1}}, p.nodes)
}

func TestARestartInPlaceMovesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 9)
	hold := WithRestartHold(3 * time.Second)
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id, hold)
	}
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	before := c.status().Assignment
	from := len(c.rec.Events())

	// The leader restarts: the hardest case, as leadership moves too.
	victim := c.leader().id
	c.stop(victim)
	var st *Status
	c.eventually(5*time.Second, victim+" shown restarting", func() bool {
		st = c.status()
		return len(st.Restarting) == 1
	})
	assert.Equal(t, victim, st.Restarting[0].Node)
	assert.Equal(t, 3, st.Restarting[0].Keys)
	assert.Equal(t, before, st.Assignment, "nothing moved while it restarts")

	c.start(victim, hold)
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	assert.Equal(t, before, c.status().Assignment)
	for _, e := range c.rec.Events()[from:] {
		assert.Equal(t, victim, e.Node, "only its own keys stopped and started again: %+v", e)
	}
	c.eventually(5*time.Second, "the hold is over", func() bool { return len(c.status().Restarting) == 0 })

	// A node that does not come back: its keys move when the hold ends.
	gone := "n3"
	if victim == gone {
		gone = "n2"
	}
	c.stop(gone)
	var rest []string
	for _, id := range []string{"n1", "n2", "n3"} {
		if id != gone {
			rest = append(rest, id)
		}
	}
	c.eventually(15*time.Second, gone+"'s keys running elsewhere after its hold", func() bool {
		return c.converged(rest...)
	})
	assert.Empty(t, history.Overlaps(c.rec.Events()))
}

func TestASurgeJoinerTakesExactlyTheLeaversKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 9)
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id)
	}
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	c.start("n4", WithJoinHold(time.Minute))
	var st *Status
	c.eventually(5*time.Second, "n4 waiting", func() bool {
		st = c.status()
		n4 := st.node("n4")
		return n4 != nil && n4.State == "waiting"
	})
	assert.Greater(t, st.node("n4").WaitingFor, 50*time.Second)
	before := st.Assignment
	assert.Zero(t, st.node("n4").Assigned, "a waiting joiner gets no keys")

	c.stop("n1")
	c.waitConverged(10*time.Second, "n2", "n3", "n4")
	after := c.status().Assignment
	for key, node := range before {
		if node == "n1" {
			assert.Equal(t, "n4", after[key], "n1's keys went to n4")
		} else {
			assert.Equal(t, node, after[key], "nothing else moved")
		}
	}
	assert.Equal(t, NodeActive, c.status().node("n4").State)
	require.Empty(t, history.Overlaps(c.rec.Events()))
}
