package dim

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestExplainSaysWhereAKeyIsAndWhy(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	admin := c.srv.Client(t)
	ctx := context.Background()
	opt := WithService(c.service)

	var e *Explanation
	var err error
	c.eventually(5*time.Second, "cfg-00 shown running", func() bool {
		e, err = Explain(ctx, admin, "cfg-00", opt)
		return err == nil && e.State != nil && e.State.State == KeyRunning
	})
	assert.Equal(t, "n1", e.AssignedTo)
	require.NotNil(t, e.Owner)
	assert.Equal(t, "n1", e.Owner.Node)
	assert.Positive(t, e.Owner.Token)
	assert.True(t, e.Owner.Live)
	require.NotNil(t, e.State)
	assert.Equal(t, KeyRunning, e.State.State)
	assert.Nil(t, e.LastMove, "a first placement is not a move")

	// A join moves keys for balance; a drain moves them because of the drain.
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	var joined string
	for key, on := range c.rec.LiveByKey() {
		if on[0] == "n2" {
			joined = key
		}
	}
	e, err = Explain(ctx, admin, joined, opt)
	require.NoError(t, err)
	require.NotNil(t, e.LastMove)
	assert.Equal(t, MoveBalance, e.LastMove.Reason)
	assert.Equal(t, "n1", e.LastMove.From)
	assert.Equal(t, "n2", e.LastMove.To)

	_, err = DrainNode(ctx, admin, "n2", time.Minute, opt)
	require.NoError(t, err)
	c.waitConverged(10*time.Second, "n1")
	e, err = Explain(ctx, admin, joined, opt)
	require.NoError(t, err)
	assert.Equal(t, MoveNodeDrained, e.LastMove.Reason)
	assert.Equal(t, []string{"n2"}, e.Drained)

	// A key that fails on a node is given up there: the avoidance shows.
	c.createErr.Store("cfg-03", func() error { return errors.New("refused") })
	c.healthErr.Store("cfg-03", func() error { return errors.New("lost its session") })
	_, err = UndrainNode(ctx, admin, "n2", opt)
	require.NoError(t, err)
	c.eventually(20*time.Second, "cfg-03 given up somewhere", func() bool {
		e, err = Explain(ctx, admin, "cfg-03", opt)
		return err == nil && len(e.Avoided) > 0
	})
	assert.Equal(t, "gave up", e.Avoided[0].Why)

	_, err = Explain(ctx, admin, "no-such-key", opt)
	assert.ErrorIs(t, err, ErrUnknownKey)
}

func TestExplainSaysWhichConstraintPlacedAKey(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 7)
	table := map[string]Placement{
		"cfg-00": {Require: map[string]string{"zone": "a"}},
		"cfg-01": {Require: map[string]string{"zone": "b"}},
		"cfg-02": {Spread: "zone", Group: "tenant-1"},
		"cfg-03": {Cost: 3},
		"cfg-05": {Require: map[string]string{"zone": "c"}},
	}
	for id, zone := range map[string]string{"n1": "a", "n2": "b", "n3": "b"} {
		c.start(id, WithLabels(map[string]string{"zone": zone}), placementByKey(table))
	}
	admin := c.srv.Client(t)
	ctx := context.Background()
	opt := WithService(c.service)
	c.eventually(15*time.Second, "six keys running, cfg-05 unplaceable", func() bool {
		st := c.status()
		return len(c.liveOn()) == 6 && st.UnplaceableCount == 1 && len(st.Misplaced) == 0
	})
	// cfg-04 is pinned to a node it does not run on.
	to := map[string]string{"n1": "n2", "n2": "n3", "n3": "n1"}[c.liveOn()["cfg-04"]]
	require.NoError(t, Pin(ctx, admin, "cfg-04", to, opt))
	c.eventually(10*time.Second, "cfg-04 on its pin's node", func() bool { return c.liveOn()["cfg-04"] == to })

	explain := func(key string) *Explanation {
		t.Helper()
		e, err := Explain(ctx, admin, key, opt)
		require.NoError(t, err)
		return e
	}
	for _, tt := range []struct {
		key        string
		placedBy   []string
		qualifying []string
	}{
		{"cfg-00", []string{"required zone=a: only n1 qualifies"}, []string{"n1"}},
		{"cfg-01", []string{"required zone=b: n2 and n3 qualify"}, []string{"n2", "n3"}},
		{"cfg-02", []string{`spread over zone with the keys of group "tenant-1"`}, nil},
		{"cfg-03", []string{"cost 3: balanced in cost units"}, nil},
		{"cfg-04", []string{"pinned by an operator to " + to}, nil},
		{"cfg-05", []string{"required zone=c: no live node qualifies, so it runs nowhere"}, []string{}},
		{"cfg-06", []string{"no constraint: any node may hold it, and it is where balance put it with the fewest moves"}, nil},
	} {
		t.Run(tt.key, func(t *testing.T) {
			e := explain(tt.key)
			assert.Equal(t, tt.placedBy, e.PlacedBy)
			assert.Equal(t, tt.qualifying, e.Qualifying)
			if p, ok := table[tt.key]; ok {
				require.NotNil(t, e.Placement)
				assert.Equal(t, p, *e.Placement)
			} else {
				assert.Nil(t, e.Placement)
			}
		})
	}
	// A pin to a node that does not meet the key's requirements does not
	// hold, and explain says so.
	require.NoError(t, Pin(ctx, admin, "cfg-00", "n2", opt))
	assert.Equal(t, []string{
		"pinned to n2 by an operator, but n2 does not meet its requirements: placed as if unpinned",
		"required zone=a: only n1 qualifies",
	}, explain("cfg-00").PlacedBy)
}
