package dim

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAnOlderDimsRecordIsConvertedOnlyOnceItsNodesAreGone writes the record
// of the layout before the membership hash (a sorted set of leases, with
// sessions and origin in keys of their own), as a running older dim would
// leave it. A node of this version refuses to join while that record holds
// a live lease, converts it once the lease has passed, keeping the origin
// (so a restore is still detected), and from then on an older dim's first
// command on the record fails.
func TestAnOlderDimsRecordIsConvertedOnlyOnceItsNodesAreGone(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	k := newKeyspace("", "svc")
	legacy := k.legacyKeys()
	tm, err := admin.Do(ctx, admin.B().Time().Build()).AsIntSlice()
	require.NoError(t, err)
	now := tm[0]*1000 + tm[1]/1000
	lease := func(until int64) {
		require.NoError(t, admin.Do(ctx, admin.B().Zadd().Key(k.nodes).ScoreMember().ScoreMember(float64(until), "old1").Build()).Error())
	}
	lease(now + 60_000)
	require.NoError(t, admin.Do(ctx, admin.B().Hset().Key(legacy[0]).FieldValue().FieldValue("old1", "7").Build()).Error())
	require.NoError(t, admin.Do(ctx, admin.B().Hset().Key(legacy[4]).FieldValue().FieldValue("id", "somewhere-else").FieldValue("gen", "42").Build()).Error())

	err = startOnce(t, "svc", srv.ClientOption())
	require.ErrorIs(t, err, ErrOtherVersion)
	assert.Contains(t, err.Error(), "older dim")

	lease(now - 1)
	c := newTestClusterOn(t, 2, srv)
	c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	kind, err := admin.Do(ctx, admin.B().Type().Key(k.nodes).Build()).ToString()
	require.NoError(t, err)
	assert.Equal(t, "hash", kind)
	for _, key := range legacy {
		n, err := admin.Do(ctx, admin.B().Exists().Key(key).Build()).AsInt64()
		require.NoError(t, err)
		assert.Zero(t, n, "%s outlived the conversion", key)
	}
	// The origin came along: written by another server, so it counted as a
	// restore and got a new generation, as it would have in the older dim.
	rec, err := admin.Do(ctx, admin.B().Hgetall().Key(k.nodes).Build()).AsStrMap()
	require.NoError(t, err)
	assert.Equal(t, "restored", rec["why"])
	gen, _ := strconv.ParseInt(rec["gen"], 10, 64)
	assert.Greater(t, gen, int64(42))
	err = admin.Do(ctx, admin.B().Zscore().Key(k.nodes).Member("n1").Build()).Error()
	require.Error(t, err, "an older dim's heartbeat would read the record")
	assert.Contains(t, err.Error(), "WRONGTYPE")
}
