package dim

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestTheLeadersWorkOnEveryKeyDoesNotEatIntoItsReads: placing many keys
// takes the leader more than a heartbeat of computing between its reads
// (a second or more at a million keys on a busy machine); each read has its
// own bound, so the rebalance does not fail with a read whose time was
// spent before it began. With one deadline over the whole placement, the
// read of the pins that follows the failure review timed out at a million
// keys, and the leader started the rebalance over and over.
func TestTheLeadersWorkOnEveryKeyDoesNotEatIntoItsReads(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	k := newKeyspace("", "svc")
	keys := make([]string, 100_000)
	for i := range keys {
		keys[i] = fmt.Sprintf("cfg-%06d", i)
	}
	nodes := []Node{{ID: "n1", Weight: 1}, {ID: "n2", Weight: 1}, {ID: "n3", Weight: 1}}
	const read = 20 * time.Millisecond
	start := time.Now()
	p, err := place(context.Background(), client, k, placeInput{now: time.Now().UnixMilli(), keys: keys, nodes: nodes,
		first: DefaultQuarantineFirst, max: DefaultQuarantineMax, poll: time.Second, budget: -1, read: read})
	took := time.Since(start)
	require.NoError(t, err)
	assert.Len(t, p.next, len(keys))
	t.Logf("placed %d keys in %v, each read bounded by %v", len(keys), took, read)
}
