package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/go-dim/dim"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func cellStates(cells []webCell) map[string]string {
	out := map[string]string{}
	for _, c := range cells {
		out[c.Key] = c.State + "@" + c.Node
	}
	return out
}

func TestStatusViewColoursEveryKey(t *testing.T) {
	st := &dim.Status{
		Service: "svc", Leader: "n1", LeaderLive: true, Epoch: 3,
		Nodes: []dim.NodeStatus{
			{ID: "n2", Weight: 1, State: "suspect", LeaseLeft: 400 * time.Millisecond, TTL: time.Second, Assigned: 2, Running: 2},
			{ID: "n1", Weight: 1, State: "active", LeaseLeft: 900 * time.Millisecond, TTL: time.Second, Assigned: 4, Running: 1,
				ConfigError: "secret=hunter2 does not parse"},
		},
		Assignment: map[string]string{"a": "n1", "b": "n1", "c": "n1", "d": "n1", "e": "n2", "f": "n2", "g": "n3"},
		Keys: map[string]dim.KeyStatus{
			"a": {Node: "n1", State: dim.KeyRunning, Live: true},
			"b": {Node: "n1", State: dim.KeyFailing, Live: true, LastError: "refused"},
			"c": {Node: "n2", State: dim.KeyRunning, Live: true}, // still on n2: moving to n1
			"e": {Node: "n2", State: dim.KeyRunning, Live: true},
			"f": {Node: "n2", State: dim.KeyRunning, Live: true},
			"g": {Node: "n3", State: dim.KeyRunning, Live: false},
		},
		Unowned:     []string{"b", "c", "d", "g"},
		Quarantined: []dim.Quarantine{{Key: "q", Level: 1, LastError: "boom"}},
		Frozen:      &dim.FreezeStatus{Left: 5 * time.Minute},
	}
	v := statusView(st, 100)
	assert.True(t, v.Full)
	assert.Equal(t, 8, v.Keys)
	assert.Equal(t, 3, v.Running)
	require.Len(t, v.Nodes, 2)
	assert.Equal(t, "n1", v.Nodes[0].ID, "nodes by ID")
	assert.Equal(t, map[string]string{"a": "running@", "b": "failing@", "c": "moving@n2", "d": "pending@"}, cellStates(v.Nodes[0].Cells))
	assert.Equal(t, "refused", v.Nodes[0].Cells[1].Error)
	assert.Equal(t, map[string]string{"e": "at-risk@", "f": "at-risk@"}, cellStates(v.Nodes[1].Cells))
	assert.Equal(t, map[string]string{"g": "gone@n3"}, cellStates(v.Gone))
	assert.Equal(t, map[string]string{"b": "failing@n1", "c": "moving@n1", "d": "pending@n1", "g": "gone@n3", "q": "quarantined@"},
		cellStates(v.Attention))
	assert.True(t, v.Nodes[0].ConfigFailing)
	assert.Equal(t, []webNote{
		{"warn", "frozen for 5m0s: joins, weight changes and rebalances move nothing"},
		{"bad", "1 keys quarantined: they failed on every node they were given to"},
	}, v.Notes)

	capped := statusView(st, 3)
	assert.False(t, capped.Full)
	assert.Len(t, capped.Nodes[0].Cells, 3)
	assert.Equal(t, 1, capped.Nodes[0].Hidden)
	assert.Equal(t, 2, capped.Nodes[1].Hidden)
	assert.Empty(t, capped.Gone)
}

func TestSummaryViewDrawsOnlyWhatDoesNotRun(t *testing.T) {
	sum := &dim.Summary{
		Service: "svc", Leader: "n1", LeaderLive: true, Epoch: 3,
		Nodes: []dim.NodeStatus{
			{ID: "n1", State: "active", Assigned: 5000, Running: 4998},
			{ID: "n2", State: "suspect", Assigned: 5000, Running: 5000},
		},
		Assigned: 10000, Running: 9998, Unowned: 5,
		ProblemKeys: []dim.KeyProblem{
			{Key: "x", AssignedTo: "n1", KeyStatus: dim.KeyStatus{Node: "n1", State: dim.KeyFailing, LastError: "refused"}},
			{Key: "y", AssignedTo: "n1", KeyStatus: dim.KeyStatus{Node: "n2", State: dim.KeyStopping}},
			{Key: "z", KeyStatus: dim.KeyStatus{Node: "n2", State: dim.KeyStopping}},
		},
		AtRisk: 5000, AtRiskKeys: []dim.KeyProblem{{Key: "r", KeyStatus: dim.KeyStatus{Node: "n2", State: dim.KeyRunning}}},
		Quarantined: 2, QuarantinedKeys: []dim.Quarantine{{Key: "q"}},
		OnDeadNodes: 1,
	}
	v := summaryView(sum, 2000)
	assert.False(t, v.Full)
	assert.Equal(t, 10002, v.Keys)
	assert.Equal(t, map[string]string{"x": "failing@", "y": "moving@n2"}, cellStates(v.Nodes[0].Cells))
	assert.Equal(t, 4998, v.Nodes[0].Hidden)
	assert.Equal(t, map[string]string{"r": "at-risk@"}, cellStates(v.Nodes[1].Cells))
	assert.Equal(t, map[string]string{"x": "failing@n1", "y": "moving@n1", "q": "quarantined@"}, cellStates(v.Attention),
		"a key on its way out (z) is nobody's trouble")
	assert.Equal(t, 3+1, v.AttentionMore, "unclaimed keys and quarantined ones past the list are counted")
	assert.Contains(t, v.Notes, webNote{"bad", "1 keys are assigned to nodes no longer live"})
}

func TestHistoryViewCutsLongEntries(t *testing.T) {
	keys := make([]string, 30)
	for i := range keys {
		keys[i] = string(rune('a' + i%26))
	}
	ev := historyView([]dim.HistoryEntry{{Kind: dim.HistoryClaimed, Node: "n1", Keys: keys}, {Kind: dim.HistoryElected, Epoch: 7}})
	require.Len(t, ev, 2)
	assert.Len(t, ev[0].Keys, webEventKeys)
	assert.Equal(t, 30-webEventKeys, ev[0].More)
	assert.Equal(t, uint64(7), ev[1].Epoch)
}

func TestViewsHaveNoNullLists(t *testing.T) {
	// A service whose nodes are all gone: no live node, keys on a dead one.
	st := &dim.Status{Service: "svc", Assignment: map[string]string{"a": "n1"}, Unowned: []string{"a"}}
	sum := &dim.Summary{Service: "svc", Assigned: 1, Unowned: 1, OnDeadNodes: 1}
	for name, v := range map[string]*webView{"status": statusView(st, 10), "summary": summaryView(sum, 10), "empty": statusView(&dim.Status{}, 10)} {
		raw, err := json.Marshal(v)
		require.NoError(t, err)
		assert.NotContains(t, string(raw), "null", "%s: the page iterates every list", name)
	}
}
