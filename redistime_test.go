package dim

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/syncbuf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A node whose clock is off Redis's by more than the lock TTL leads as
// steadily as any other, and its lock in Redis lasts the lock TTL: behind, it
// would write expiries in the past (a leader with no lock, a new epoch every
// few hundred milliseconds); ahead, a crashed leader would keep the lock for
// the skew on top of the TTL.
func TestALeaderWhoseClockIsOffKeepsItsLockOnRedisTime(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	for _, skew := range []time.Duration{-1500 * time.Millisecond, 1500 * time.Millisecond} {
		t.Run(fmt.Sprint(skew), func(t *testing.T) {
			c := newTestCluster(t, 4)
			n1 := c.newNode("n1")
			n1.m.clock.skew = skew
			c.startNode(n1)
			c.waitConverged(10*time.Second, "n1")
			require.True(t, n1.m.IsLeader())
			epoch := c.status().Epoch

			admin := c.srv.Client(t)
			ctx := context.Background()
			deadline := time.Now().Add(5 * testLockTTL)
			for time.Now().Before(deadline) {
				require.True(t, n1.m.IsLeader(), "n1 lost its leadership")
				keys, err := admin.Do(ctx, admin.B().Keys().Pattern(n1.m.k.lock+"*").Build()).AsStrSlice()
				require.NoError(t, err)
				require.NotEmpty(t, keys, "the leader holds no lock in Redis")
				for _, key := range keys {
					pttl, err := admin.Do(ctx, admin.B().Pttl().Key(key).Build()).AsInt64()
					require.NoError(t, err)
					require.LessOrEqual(t, pttl, testLockTTL.Milliseconds()+50, "the lock outlasts its TTL in Redis")
				}
				time.Sleep(50 * time.Millisecond)
			}
			assert.Equal(t, epoch, c.status().Epoch, "one leader term throughout")
		})
	}
}

func TestLockClientMovesOnlyLockDeadlines(t *testing.T) {
	c := newTestCluster(t, 1)
	client := c.srv.Client(t)
	clock := &redisClock{}
	clock.observe(2_000_000_000_000+500, time.UnixMilli(2_000_000_000_000))
	lc := lockClient{Client: client, clock: clock, prefix: "dim:{svc}:lock"}
	b := client.B()
	moved := lc.onRedisClock(b.Evalsha().Sha1("abc").Numkeys(1).Key("dim:{svc}:lock:x:0").Arg("v", "1900000000000").Build())
	assert.Equal(t, []string{"EVALSHA", "abc", "1", "dim:{svc}:lock:x:0", "v", "1900000000500"}, moved.Commands())
	for _, cmd := range [][]string{
		{"EVALSHA", "abc", "1", "dim:{svc}:lock:x:0", "v", "1000"}, // a relative expiry
		{"EVALSHA", "abc", "1", "dim:{svc}:owner", "v", "1900000000000"},
		{"GET", "dim:{svc}:lock:x:0"},
	} {
		same := lc.onRedisClock(b.Arbitrary(cmd...).Build())
		assert.Equal(t, cmd, same.Commands())
	}
}

// A slow round trip is not a wrong clock: Redis's time lies somewhere
// between sending and receiving, so only an offset beyond what the round
// trip allows is warned of.
func TestASlowHeartbeatIsNotMistakenForAClockThatIsOff(t *testing.T) {
	s := defaultSettings()
	s.service, s.nodeID, s.lockTTL = "svc", "n1", time.Second
	var logs syncbuf.Buffer
	require.NoError(t, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))).apply(&s))
	s.fillDefaults()
	e := newEnv(s)
	sent := time.UnixMilli(2_000_000_000_000)

	// In step with Redis, 300 ms each way: the reply's server time is 300
	// ms after sending.
	e.observeClock(sent.Add(300*time.Millisecond).UnixMilli(), sent, sent.Add(600*time.Millisecond))
	assert.NotContains(t, logs.String(), "clock is off", "a slow round trip")
	assert.Equal(t, int64(300), e.clock.offset.Load(), "the lock's deadlines still move by the most the round trip allows")

	// 1.5 s behind Redis, answered at once, and 1.5 s ahead: off beyond
	// doubt.
	e.observeClock(sent.Add(1500*time.Millisecond).UnixMilli(), sent, sent.Add(10*time.Millisecond))
	assert.Contains(t, logs.String(), "clock is off")
	e.observeClock(sent.UnixMilli(), sent, sent) // back in step: a new episode
	e.observeClock(sent.Add(-1500*time.Millisecond).UnixMilli(), sent, sent.Add(10*time.Millisecond))
	assert.Equal(t, 2, strings.Count(logs.String(), "clock is off"), "one warning per episode")
}
