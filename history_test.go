package dim

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/faultproxy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// kinds returns the kinds of entries, oldest first.
func kinds(entries []HistoryEntry) []string {
	var out []string
	for i := len(entries) - 1; i >= 0; i-- {
		out = append(out, entries[i].Kind)
	}
	return out
}

func TestHistoryTellsWhatHappenedOneEntryPerChange(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 2000)
	// This test is about what the history says, not about timing: a
	// heartbeat of 300 ms (not the tests' 100 ms) lets a node read its
	// 2,000 keys within one even on a CI machine that runs the chaos
	// package beside this one (there, "read assignment: context deadline
	// exceeded" kept n1 from releasing the moved key for 20 s).
	timing := []Option{WithNodeTTL(3 * time.Second), WithHeartbeat(300 * time.Millisecond)}
	c.start("n1", timing...)
	c.waitConverged(60*time.Second, "n1")
	admin := c.srv.Client(t)
	ctx := context.Background()
	opt := Service{Name: c.service}

	all, err := ReadHistory(ctx, admin, opt, HistoryFilter{Limit: 1000})
	require.NoError(t, err)
	got := kinds(all)
	assert.Contains(t, got, HistoryJoined)
	assert.Contains(t, got, HistoryElected)
	assert.Contains(t, got, HistoryClaimed)
	assert.Less(t, len(all), 20, "a cold start of 2,000 keys is a few entries, not one per key: %v", got)

	c.start("n2", timing...)
	c.waitConverged(60*time.Second, "n1", "n2")
	var moved string
	for key, on := range c.rec.LiveByKey() {
		if on[0] == "n2" {
			moved = key
			break
		}
	}
	// The key's own story: claimed on n1, moved to n2, released by n1,
	// claimed on n2.
	c.eventually(20*time.Second, "the move's release and claim recorded", func() bool {
		mine, err := ReadHistory(ctx, admin, opt, HistoryFilter{Key: moved})
		require.NoError(t, err)
		k := kinds(mine)
		return slices.Contains(k, HistoryAssigned) && slices.Contains(k, HistoryReleased) && len(k) >= 4
	})
	mine, err := ReadHistory(ctx, admin, opt, HistoryFilter{Key: moved})
	require.NoError(t, err)
	var placements []Move
	for _, e := range mine {
		assert.Equal(t, []string{moved}, e.Keys, "a key filter shows only that key")
		if e.Kind == HistoryAssigned {
			assert.Positive(t, e.Epoch)
			placements = append(placements, e.Moves...)
		}
	}
	assert.Equal(t, []Move{{Key: moved, From: "n1", To: "n2"}, {Key: moved, To: "n1"}}, placements,
		"its move, then (older) its first placement")
	byN2, err := ReadHistory(ctx, admin, opt, HistoryFilter{Node: "n2"})
	require.NoError(t, err)
	for _, e := range byN2 {
		assert.True(t, e.Node == "n2" || slices.ContainsFunc(e.Moves, func(m Move) bool { return m.To == "n2" || m.From == "n2" }), "%+v", e)
	}
	future, err := ReadHistory(ctx, admin, opt, HistoryFilter{Since: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	assert.Empty(t, future)

	// A fence shows once the node is back.
	c.node("n2").proxy.Cut(faultproxy.Both)
	c.waitConverged(10*testTTL, "n1")
	c.node("n2").proxy.Heal()
	c.eventually(10*time.Second, "n2's fence in the history", func() bool {
		es, err := ReadHistory(ctx, admin, opt, HistoryFilter{Node: "n2", Limit: 1000})
		require.NoError(t, err)
		return slices.Contains(kinds(es), HistoryFenced)
	})
}

func TestWithHistoryZeroWritesNone(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	c.start("n1", WithHistory(0))
	c.waitConverged(10*time.Second, "n1")
	all, err := ReadHistory(context.Background(), c.srv.Client(t), Service{Name: c.service}, HistoryFilter{})
	require.NoError(t, err)
	assert.Empty(t, all)
}

func TestMoveRunsReadBackAsTheMovesTheyWrite(t *testing.T) {
	moves := []Move{{Key: "a", To: "n1"}, {Key: "b", To: "n1"}, {Key: "c", From: "n2", To: "n1"}, {Key: "d", From: "n1", To: ""}}
	raw, err := json.Marshal(moveRuns(moves))
	require.NoError(t, err)
	assert.JSONEq(t, `[["","n1",2],["n2","n1",1],["n1","",1]]`, string(raw))
	assert.Equal(t, moves, movesOf(string(raw), []string{"a", "b", "c", "d"}))
	assert.Nil(t, movesOf(string(raw), []string{"a", "b", "c"}), "runs for more keys than listed")
	assert.Nil(t, movesOf(`[["","n1",-1]]`, []string{"a"}))
	assert.Nil(t, movesOf(`{}`, []string{"a"}))
}
