package redistest_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"

	"github.com/go-dim/dim/internal/redistest"
)

func TestSentinelFailsOverPlannedThenOnACrash(t *testing.T) {
	t.Parallel()
	start := time.Now()
	s := redistest.StartSentinel(t)
	t.Logf("master, replica and sentinel up in %v", time.Since(start))
	require.Same(t, s.Server(0), s.Master())
	require.Equal(t, redistest.SentinelMasterSet, s.MasterSet())

	client := s.Client(t)
	require.NoError(t, client.Do(ctx(t), client.B().Set().Key("k").Value("v1").Build()).Error())
	// Replicated before the failover, so it survives it.
	n, err := client.Do(ctx(t), client.B().Wait().Numreplicas(1).Timeout(1000).Build()).AsInt64()
	require.NoError(t, err)
	require.EqualValues(t, 1, n)

	start = time.Now()
	next := s.Failover()
	t.Logf("planned failover done in %v", time.Since(start))
	require.Same(t, s.Server(1), next)
	require.Same(t, next, s.Master())
	// The client follows the Sentinel to the new master.
	eventuallyWrites(t, client, "v2")
	got, err := client.Do(ctx(t), client.B().Get().Key("k").Build()).ToString()
	require.NoError(t, err)
	require.Equal(t, "v2", got)

	start = time.Now()
	next.Kill()
	again := s.WaitFailover(next)
	t.Logf("failover after a crash of the master done in %v", time.Since(start))
	require.Same(t, s.Server(0), again)
	eventuallyWrites(t, client, "v3")
}

func TestSentinelWithPassword(t *testing.T) {
	t.Parallel()
	s := redistest.StartSentinel(t, redistest.WithPassword("s3cret"))
	client := s.Client(t)
	require.NoError(t, client.Do(ctx(t), client.B().Set().Key("k").Value("v").Build()).Error())

	opt := s.ClientOption()
	opt.Password = ""
	_, err := rueidis.NewClient(opt)
	require.ErrorContains(t, err, "NOAUTH")
}

// eventuallyWrites sets k to v until a write succeeds on a master.
func eventuallyWrites(t *testing.T, client rueidis.Client, v string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, cancel := context.WithTimeout(t.Context(), time.Second)
		err := client.Do(c, client.B().Set().Key("k").Value(v).Build()).Error()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no write through the Sentinel within 10s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSentinelFailoverAfterDetachLosesWrites(t *testing.T) {
	t.Parallel()
	s := redistest.StartSentinel(t, redistest.WithPersistence())
	s.Set("down-after-milliseconds", "30000")
	client := s.Client(t)
	require.NoError(t, client.Do(ctx(t), client.B().Set().Key("k").Value("kept").Build()).Error())
	n, err := client.Do(ctx(t), client.B().Wait().Numreplicas(1).Timeout(1000).Build()).AsInt64()
	require.NoError(t, err)
	require.EqualValues(t, 1, n)

	s.DetachReplica()
	require.NoError(t, client.Do(ctx(t), client.B().Set().Key("k").Value("lost").Build()).Error())
	old := s.Master()
	next := s.Failover()
	require.NotSame(t, old, next)
	require.Same(t, old, s.Replica())
	got, err := client.Do(ctx(t), client.B().Get().Key("k").Build()).ToString()
	for err != nil {
		time.Sleep(20 * time.Millisecond) // the client follows the Sentinel
		got, err = client.Do(ctx(t), client.B().Get().Key("k").Build()).ToString()
	}
	require.Equal(t, "kept", got, "the write the old master accepted after the detach is lost")

	// A restart keeps the new roles: the new master stays the master.
	next.RestartFromAOF()
	require.Same(t, next, s.Master())
	back := s.Failover()
	require.Same(t, old, back)
}
