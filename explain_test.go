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
