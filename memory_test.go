package dim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/history"
	"github.com/go-dim/dim/internal/syncbuf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAFullRedisKeepsWhatRunsAndStartsNothingNew(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 4)
	logs := &syncbuf.Buffer{}
	for _, id := range []string{"n1", "n2"} {
		n := c.newNode(id)
		n.m.log = slog.New(slog.NewTextHandler(logs, nil))
		c.startNode(n)
	}
	c.waitConverged(10*time.Second, "n1", "n2")

	// Another application fills Redis up to its limit, under the
	// documented noeviction policy.
	admin := c.srv.Client(t)
	ctx := context.Background()
	used := newStore(admin, newKeyspace("", c.service)).memory(ctx)
	require.NotNil(t, used)
	require.NoError(t, admin.Do(ctx, admin.B().ConfigSet().ParameterValue().ParameterValue("maxmemory-policy", "noeviction").Build()).Error())
	require.NoError(t, admin.Do(ctx, admin.B().ConfigSet().ParameterValue().
		ParameterValue("maxmemory", fmt.Sprint(used.Used+4<<20)).Build()).Error())
	filler := strings.Repeat("x", 64<<10)
	full := false
	for i := 0; i < 10_000 && !full; i++ {
		err := admin.Do(ctx, admin.B().Set().Key(fmt.Sprintf("other-app:%d", i)).Value(filler).Build()).Error()
		if err != nil {
			require.True(t, isOOM(err), "only memory may refuse the filler: %v", err)
			full = true
		}
	}
	require.True(t, full, "Redis never filled up")
	// It stays full: the other application keeps writing at the limit.
	now := newStore(admin, newKeyspace("", c.service)).memory(ctx)
	require.NoError(t, admin.Do(ctx, admin.B().ConfigSet().ParameterValue().
		ParameterValue("maxmemory", fmt.Sprint(now.Used-1<<20)).Build()).Error())
	st := c.status()
	require.NotNil(t, st.Memory)
	assert.True(t, st.Memory.OutOfMemory, "Status says Redis is out of memory: %+v", st.Memory)

	// A new key is configured: nothing new can start, and the leader says why.
	before := len(c.rec.Events())
	c.setKeys(5)
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := RequestRebalance(rctx, admin, Service{Name: c.service})
	cancel()
	require.ErrorIs(t, err, ErrRebalance)
	assert.Contains(t, err.Error(), "OOM")

	// Several node TTLs: every lease is renewed, nothing fences, nothing
	// that ran stops, and the new key does not start.
	deadline := time.Now().Add(5 * testTTL)
	for time.Now().Before(deadline) {
		for _, e := range c.rec.Events()[before:] {
			require.NotEqual(t, history.Down, e.Kind, "an instance stopped while Redis was full: %+v", e)
		}
		require.Len(t, c.rec.LiveByKey(), 4)
		select {
		case <-c.rec.Changed():
		case <-time.After(50 * time.Millisecond):
		}
	}
	assert.Contains(t, logs.String(), "Redis is out of memory")

	// Memory is freed: the new key starts.
	require.NoError(t, admin.Do(ctx, admin.B().ConfigSet().ParameterValue().ParameterValue("maxmemory", "0").Build()).Error())
	rctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	_, err = RequestRebalance(rctx, admin, Service{Name: c.service})
	cancel()
	require.NoError(t, err)
	c.waitConverged(10*time.Second, "n1", "n2")
	assert.False(t, c.status().Memory.OutOfMemory)
}

func TestIsOOM(t *testing.T) {
	assert.False(t, isOOM(nil))
	assert.False(t, isOOM(errors.New("connection refused")))
	assert.True(t, isOOM(fmt.Errorf("claim: %w", errors.New("OOM command not allowed when used memory > 'maxmemory'."))))
}
