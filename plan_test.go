package dim

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// moved returns the keys whose node differs between two assignments.
func moved(before, after Assignment) []Move {
	var out []Move
	for key, to := range after {
		if from := before[key]; from != to {
			out = append(out, Move{Key: key, From: from, To: to})
		}
	}
	return out
}

func TestAPlanIsWhatTheLeaderThenDoes(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 12)
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id)
	}
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	admin := c.srv.Client(t)
	ctx := context.Background()
	opt := Service{Name: c.service}

	// A drain: exactly the drained node's keys move, and the plan names
	// where each goes.
	before := c.status().Assignment
	plan, err := Plan(ctx, admin, opt, PlanChange{Drain: "n2"})
	require.NoError(t, err)
	require.Len(t, plan.Moves, 4)
	for _, mv := range plan.Moves {
		assert.Equal(t, "n2", mv.From)
	}
	assert.Equal(t, map[string]int{"n1": 6, "n3": 6}, plan.Loads)
	assert.Equal(t, before, c.status().Assignment, "a plan changes nothing")
	_, err = DrainNode(ctx, admin, opt, "n2", time.Minute)
	require.NoError(t, err)
	c.waitConverged(5*time.Second, "n1", "n3")
	assert.ElementsMatch(t, plan.Moves, moved(before, c.status().Assignment), "the leader made the planned moves")
	_, err = UndrainNode(ctx, admin, opt, "n2")
	require.NoError(t, err)
	c.waitConverged(5*time.Second, "n1", "n2", "n3")

	// A join with a weight.
	before = c.status().Assignment
	plan, err = Plan(ctx, admin, opt, PlanChange{Join: "n4", JoinWeight: 3})
	require.NoError(t, err)
	assert.Len(t, plan.Moves, 6, "weight 3 of 6: half the keys")
	c.start("n4", WithWeight(3))
	c.eventually(5*time.Second, "n4 holds its share, the others theirs", func() bool {
		l := c.loads()
		return l["n4"] == 6 && l["n1"] == 2 && l["n2"] == 2 && l["n3"] == 2 && len(c.status().Misplaced) == 0
	})
	assert.Equal(t, plan.Loads, Assignment(c.status().Assignment).Loads())
	// Same inputs, same result: the very moves.
	assert.ElementsMatch(t, plan.Moves, moved(before, c.status().Assignment))

	// Bad changes are refused.
	_, err = Plan(ctx, admin, opt, PlanChange{Drain: "n9"})
	assert.ErrorIs(t, err, ErrUnknownNode)
	_, err = Plan(ctx, admin, opt, PlanChange{Join: "n1"})
	assert.ErrorIs(t, err, ErrInvalidOption)
}

func TestAPlanHonoursTheKeysPlacements(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	// Four keys require zone a, where n1 and n2 are; one requires zone c,
	// where nobody is; four may run anywhere.
	c := newTestCluster(t, 9)
	table := map[string]Placement{"cfg-08": {Require: map[string]string{"zone": "c"}}}
	for i := range 4 {
		table[fmt.Sprintf("cfg-%02d", i)] = Placement{Require: map[string]string{"zone": "a"}, Cost: 1}
	}
	for id, zone := range map[string]string{"n1": "a", "n2": "a", "n3": "b"} {
		c.start(id, WithLabels(map[string]string{"zone": zone}), placementByKey(table))
	}
	c.eventually(15*time.Second, "eight keys running, cfg-08 unplaceable", func() bool {
		st := c.status()
		return len(c.liveOn()) == 8 && len(st.Assignment) == 8 && st.UnplaceableCount == 1 && len(st.Misplaced) == 0
	})
	admin := c.srv.Client(t)
	ctx := context.Background()
	opt := Service{Name: c.service}

	// Draining n1: the keys that require zone a can only go to n2, so the
	// others go to n3, and cfg-08 stays unplaceable.
	before := c.status().Assignment
	plan, err := Plan(ctx, admin, opt, PlanChange{Drain: "n1"})
	require.NoError(t, err)
	assert.Equal(t, []string{"cfg-08"}, plan.Unplaceable)
	require.NotEmpty(t, plan.Moves)
	for _, mv := range plan.Moves {
		if table[mv.Key].Require["zone"] == "a" {
			assert.Equal(t, Move{Key: mv.Key, From: "n1", To: "n2"}, mv, "%s requires zone a", mv.Key)
		} else {
			assert.Equal(t, "n3", mv.To, "%s makes room", mv.Key)
		}
	}
	assert.Equal(t, map[string]int{"n2": 4, "n3": 4}, plan.Loads)
	_, err = DrainNode(ctx, admin, opt, "n1", time.Minute)
	require.NoError(t, err)
	c.eventually(10*time.Second, "n1's keys running elsewhere", func() bool {
		return c.loads()["n1"] == 0 && len(c.liveOn()) == 8 && len(c.status().Misplaced) == 0
	})
	assert.ElementsMatch(t, plan.Moves, moved(before, c.status().Assignment), "the leader made the planned moves")
}
