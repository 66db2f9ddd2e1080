package dim

import (
	"context"
	"errors"
	"sync/atomic"
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
	opt := Service{Name: c.service}

	var e *Explanation
	var err error
	c.eventually(5*time.Second, "cfg-00 shown running", func() bool {
		e, err = Explain(ctx, admin, opt, "cfg-00")
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
	e, err = Explain(ctx, admin, opt, joined)
	require.NoError(t, err)
	require.NotNil(t, e.LastMove)
	assert.Equal(t, MoveBalance, e.LastMove.Reason)
	assert.Equal(t, "n1", e.LastMove.From)
	assert.Equal(t, "n2", e.LastMove.To)

	_, err = DrainNode(ctx, admin, opt, "n2", time.Minute)
	require.NoError(t, err)
	c.waitConverged(10*time.Second, "n1")
	e, err = Explain(ctx, admin, opt, joined)
	require.NoError(t, err)
	assert.Equal(t, MoveNodeDrained, e.LastMove.Reason)
	assert.Equal(t, []string{"n2"}, e.Drained)

	// A key that fails on a node is given up there: the avoidance shows.
	c.createErr.Store("cfg-03", func() error { return errors.New("refused") })
	c.healthErr.Store("cfg-03", func() error { return errors.New("lost its session") })
	_, err = UndrainNode(ctx, admin, opt, "n2")
	require.NoError(t, err)
	c.eventually(20*time.Second, "cfg-03 given up somewhere", func() bool {
		e, err = Explain(ctx, admin, opt, "cfg-03")
		return err == nil && len(e.Avoided) > 0
	})
	assert.Equal(t, "gave up", e.Avoided[0].Why)

	_, err = Explain(ctx, admin, opt, "no-such-key")
	assert.ErrorIs(t, err, ErrUnknownKey)
}

func TestExplainSaysWhichConstraintPlacedAKey(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 10)
	table := map[string]Placement{
		"cfg-00": {Require: map[string]string{"zone": "a"}},
		"cfg-01": {Require: map[string]string{"zone": "b"}},
		"cfg-02": {Spread: "zone", Group: "tenant-1"},
		"cfg-03": {Require: map[string]string{"zone": "b"}, Prefer: map[string]string{LabelNode: "n3"}},
		"cfg-05": {Require: map[string]string{"zone": "c"}},
		"cfg-07": {Prefer: map[string]string{"zone": "a"}},
		"cfg-08": {Spread: LabelNode, Group: "shard-1"},
		"cfg-09": {Spread: LabelNode, Group: "shard-1"},
	}
	for id, zone := range map[string]string{"n1": "a", "n2": "b", "n3": "b"} {
		c.start(id, WithLabels(map[string]string{"zone": zone}), placementByKey(table))
	}
	admin := c.srv.Client(t)
	ctx := context.Background()
	opt := Service{Name: c.service}
	c.eventually(15*time.Second, "nine keys running, cfg-05 unplaceable", func() bool {
		st := c.status()
		return len(c.liveOn()) == 9 && st.UnplaceableCount == 1 && len(st.Misplaced) == 0
	})
	on := c.liveOn()
	assert.Equal(t, "n1", on["cfg-07"], "cfg-07 prefers zone a, where n1 is, and balance allows it there")
	assert.NotEqual(t, on["cfg-08"], on["cfg-09"], "two keys of one group apart")
	// cfg-04 is pinned to a node it does not run on.
	to := map[string]string{"n1": "n2", "n2": "n3", "n3": "n1"}[c.liveOn()["cfg-04"]]
	require.NoError(t, Pin(ctx, admin, opt, "cfg-04", to))
	c.eventually(10*time.Second, "cfg-04 on its pin's node", func() bool { return c.liveOn()["cfg-04"] == to })

	explain := func(key string) *Explanation {
		t.Helper()
		e, err := Explain(ctx, admin, opt, key)
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
		{"cfg-03", []string{"required zone=b: n2 and n3 qualify", "preferred dim:node=n3: on n3, which has it"}, []string{"n2", "n3"}},
		{"cfg-04", []string{"pinned by an operator to " + to}, nil},
		{"cfg-05", []string{"required zone=c: no live node qualifies, so it runs nowhere"}, []string{}},
		{"cfg-06", []string{"no constraint: any node may hold it, and it is where balance put it with the fewest moves"}, nil},
		{"cfg-07", []string{"preferred zone=a: on n1, which has it"}, nil},
		{"cfg-08", []string{`kept apart from the keys of group "shard-1": one per node where balance allows`}, nil},
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
	require.NoError(t, Pin(ctx, admin, opt, "cfg-00", "n2"))
	assert.Equal(t, []string{
		"pinned to n2 by an operator, but n2 does not meet its requirements: placed as if unpinned",
		"required zone=a: only n1 qualifies",
	}, explain("cfg-00").PlacedBy)
}

func TestPlacedBySaysWhichRulesPlaceAKey(t *testing.T) {
	published := map[string]string{"n1": `{"l":{"zone":"a"},"k":2}`, "n2": `{"l":{"zone":"b"}}`}
	nodes := []string{"n1", "n2"}
	zoneA := map[string]string{"zone": "a"}
	for _, tt := range []struct {
		name string
		e    Explanation
		want []string
	}{
		{"a cost", Explanation{AssignedTo: "n2", Placement: &Placement{Cost: 3}},
			[]string{"cost 3: balanced in cost units"}},
		{"caps leave no room where it may run", Explanation{Unplaceable: true, Placement: &Placement{Require: zoneA}},
			[]string{"required zone=a: only n1 qualifies", "every node that qualifies is at its cap, so it runs nowhere"}},
		{"caps leave no room anywhere", Explanation{Unplaceable: true},
			[]string{"every node is at its cap, so it runs nowhere"}},
		{"a pin to a node that is gone", Explanation{AssignedTo: "n1", Pinned: "n9"},
			[]string{"pinned to n9 by an operator, but n9 is not live or takes no keys: placed as if unpinned",
				"no constraint: any node may hold it, and it is where balance put it with the fewest moves"}},
		{"a preference that balance overrides", Explanation{AssignedTo: "n2", Placement: &Placement{Prefer: zoneA}},
			[]string{"preferred zone=a, but balance or spread keep it on n2"}},
		{"a spread of the default group", Explanation{AssignedTo: "n2", Placement: &Placement{Spread: "zone"}},
			[]string{"spread over zone with the keys of the same requirements, preferences and cost"}},
		{"two labels required", Explanation{Placement: &Placement{Require: map[string]string{"zone": "a", "disk": "ssd"}}},
			[]string{"required disk=ssd,zone=a: no live node qualifies, so it runs nowhere"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.e.placedBy(nodes, published)
			assert.Equal(t, tt.want, tt.e.PlacedBy)
		})
	}
}

func TestExplainShowsAFailingKeysLastErrorAndItsQuarantine(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	var broken atomic.Bool
	broken.Store(true)
	c.createErr.Store("cfg-02", failing(&broken, "upstream refused: code 42"))
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id, fastQuarantine)
	}
	admin := c.srv.Client(t)
	ctx := context.Background()
	svc := Service{Name: c.service}

	var e *Explanation
	var err error
	c.eventually(10*time.Second, "cfg-02 shown failing with its error", func() bool {
		e, err = Explain(ctx, admin, svc, "cfg-02")
		return err == nil && e.State != nil && e.State.State == KeyFailing
	})
	assert.Contains(t, e.State.LastError, "upstream refused: code 42")
	assert.Positive(t, e.State.Attempts)
	assert.False(t, e.State.NextRetry.IsZero(), "a failing key says when it is tried again")

	c.eventually(30*time.Second, "cfg-02 quarantined after failing on every node", func() bool {
		e, err = Explain(ctx, admin, svc, "cfg-02")
		return err == nil && e.Quarantine != nil
	})
	assert.Equal(t, 1, e.Quarantine.Level)
	assert.ElementsMatch(t, []string{"n1", "n2", "n3"}, e.Quarantine.Nodes)
	assert.Contains(t, e.Quarantine.LastError, "upstream refused: code 42")
	assert.True(t, e.Quarantine.Until.After(e.Quarantine.Since))

	// Once it runs, the quarantine is gone from the explanation.
	broken.Store(false)
	c.eventually(30*time.Second, "cfg-02 running again", func() bool {
		e, err = Explain(ctx, admin, svc, "cfg-02")
		return err == nil && e.Quarantine == nil && e.State != nil && e.State.State == KeyRunning
	})
	assert.Empty(t, e.State.LastError)
}
