package dim

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestAStartThatFailsAtItsJoinHoldLeavesNothingRunning(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 2)
	// A join hold that Redis refuses: its hash is a string.
	admin := c.srv.Client(t)
	k := newKeyspace("", c.service)
	require.NoError(t, admin.Do(t.Context(), admin.B().Set().Key(k.joinWait).Value("not a hash").Build()).Error())

	n := c.newNode("n1", WithJoinHold(time.Second))
	ignore := goleak.IgnoreCurrent() // the test's own proxy and clients
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := n.m.Start(ctx)
	require.ErrorIs(t, err, ErrRedis)
	require.ErrorContains(t, err, "hold")
	// No subscription, heartbeat or client goroutine outlives the failed
	// Start.
	goleak.VerifyNone(t, ignore)
}
