package dim

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// placementByKey is a WithPlacement function from a table keyed by config
// key; keys not in it have no placement.
func placementByKey(table map[string]Placement) Option {
	return WithPlacement(func(c testConfig) Placement { return table[c.Key] })
}

// liveOn returns the node each key runs on, for keys running exactly once.
func (c *testCluster) liveOn() map[string]string {
	out := map[string]string{}
	for key, on := range c.rec.LiveByKey() {
		if len(on) == 1 {
			out[key] = on[0]
		}
	}
	return out
}

func TestPlacementLabelsRequirementsAndUnplaceable(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	table := map[string]Placement{
		"cfg-00": {Require: map[string]string{"zone": "a"}},
		"cfg-01": {Require: map[string]string{"zone": "a"}},
		"cfg-02": {Require: map[string]string{"zone": "b"}},
		"cfg-05": {Require: map[string]string{"zone": "z"}}, // no such zone
	}
	c.start("n1", WithLabels(map[string]string{"zone": "a"}), placementByKey(table))
	c.start("n2", WithLabels(map[string]string{"zone": "b"}), placementByKey(table))
	c.eventually(15*time.Second, "five keys running where their zones allow, cfg-05 reported unplaceable", func() bool {
		on := c.liveOn()
		st := c.status()
		return len(on) == 5 && on["cfg-00"] == "n1" && on["cfg-01"] == "n1" && on["cfg-02"] == "n2" &&
			st.UnplaceableCount == 1 && len(c.rec.LiveByKey()["cfg-05"]) == 0
	})
	st := c.status()
	assert.Equal(t, []string{"cfg-05"}, st.Unplaceable)
	require.Len(t, st.Nodes, 2)
	assert.Equal(t, map[string]string{"zone": "a"}, st.Nodes[0].Labels)
	assert.Equal(t, map[string]string{"zone": "b"}, st.Nodes[1].Labels)
	// Balance over what the zones allow: 5 keys, 2 and 3.
	assert.ElementsMatch(t, []int{2, 3}, []int{c.loads()["n1"], c.loads()["n2"]})

	// A node of zone z joins: cfg-05 runs there, and nothing is
	// unplaceable any more.
	c.start("n3", WithLabels(map[string]string{"zone": "z"}), placementByKey(table))
	c.eventually(15*time.Second, "cfg-05 running on n3", func() bool {
		return c.liveOn()["cfg-05"] == "n3" && c.status().UnplaceableCount == 0
	})
	assert.Empty(t, c.status().Unplaceable)
}

func TestPlacementPins(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	c.start("n1")
	c.start("n2")
	c.waitConverged(15*time.Second, "n1", "n2")
	client := c.srv.Client(t)
	ctx := context.Background()
	svc := WithService(c.service)

	// Pin a key to the node it is not on.
	key := "cfg-00"
	from := c.liveOn()[key]
	to := map[string]string{"n1": "n2", "n2": "n1"}[from]
	require.NoError(t, Pin(ctx, client, key, to, svc))
	c.eventually(15*time.Second, key+" running on its pin's node", func() bool { return c.liveOn()[key] == to })
	assert.Equal(t, map[string]string{key: to}, c.status().Pins)
	// Balance still holds around the pin: 2 and 2.
	c.eventually(15*time.Second, "loads 2 and 2", func() bool {
		l := c.loads()
		return len(c.liveOn()) == 4 && l["n1"] == 2 && l["n2"] == 2
	})
	exp, err := Explain(ctx, client, key, svc)
	require.NoError(t, err)
	assert.Equal(t, to, exp.Pinned)
	require.NotNil(t, exp.LastMove)
	assert.Equal(t, MovePinned, exp.LastMove.Reason)

	// A pin to a node that is not live is refused.
	require.ErrorIs(t, Pin(ctx, client, key, "nobody", svc), ErrUnknownNode)

	// Unpinned, the key stays where it is: balance holds, so nothing moves.
	had, err := Unpin(ctx, client, key, svc)
	require.NoError(t, err)
	assert.True(t, had)
	assert.Empty(t, c.status().Pins)
	had, err = Unpin(ctx, client, key, svc)
	require.NoError(t, err)
	assert.False(t, had)
	before := maps.Clone(c.status().Assignment)
	_, err = RequestRebalance(ctx, client, svc)
	require.NoError(t, err)
	assert.Equal(t, before, c.status().Assignment)
}

func TestPlacementCaps(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 5)
	obs := map[string]*observed{"n1": newObserved(t), "n2": newObserved(t)}
	c.start("n1", append(obs["n1"].options(), WithCaps(1, 0))...)
	c.start("n2", append(obs["n2"].options(), WithCaps(2, 0))...)
	c.eventually(15*time.Second, "three keys running within the caps, two unplaceable", func() bool {
		l := c.loads()
		st := c.status()
		return len(c.liveOn()) == 3 && l["n1"] == 1 && l["n2"] == 2 && st.UnplaceableCount == 2
	})
	leader := c.leader().id
	c.eventually(5*time.Second, "the leader's gauge dim.keys.unplaceable at 2", func() bool {
		n, ok := obs[leader].metric(t, "dim.keys.unplaceable")
		return ok && n == 2
	})
	st := c.status()
	assert.Len(t, st.Unplaceable, 2)
	assert.Equal(t, 1, st.Nodes[0].MaxKeys)
	assert.Equal(t, 2, st.Nodes[1].MaxKeys)
	// Plan sees the caps too: draining n2 leaves only n1's one slot.
	plan, err := Plan(context.Background(), c.srv.Client(t), PlanChange{Drain: "n2"}, WithService(c.service))
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"n1": 1}, plan.Loads)
	assert.Len(t, plan.Unplaceable, 4)
}
