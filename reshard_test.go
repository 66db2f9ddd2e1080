package dim

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestClusterSlotMigratedKeyByKeyWhileTheServiceRuns reshards the slot of a
// running service the way an operator's tool does, one key at a time with
// 900 ms between keys, so that for tens of seconds the service's keys are
// split between two masters: every multi-key script gets TRYAGAIN meanwhile.
// No node may fence (each keeps its session), no instance may stop or start,
// and afterwards the service still takes a new node in.
func TestClusterSlotMigratedKeyByKeyWhileTheServiceRuns(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	admin := cluster.Client(t)
	from, to := cluster.Addrs()[0], cluster.Addrs()[1]
	service := serviceOn(t, admin, from, "reshard")
	c := newDirectCluster(t, service, cluster.ClientOption(), 12)
	nodes := []string{"n1", "n2", "n3"}
	for _, id := range nodes {
		c.start(id)
	}
	c.waitConverged(10*time.Second, nodes...)
	// Let the leader's first writes and the nodes' states settle, so that
	// every key of the service exists before the migration starts.
	c.eventually(5*time.Second, "every key shown running", func() bool {
		st, err := ReadStatus(context.Background(), admin, Service{Name: service})
		if err != nil {
			return false
		}
		running := 0
		for _, ks := range st.Keys {
			if ks.State == KeyRunning {
				running++
			}
		}
		return running == len(c.keys())
	})

	sessions := map[string]string{}
	for _, id := range nodes {
		sessions[id], _ = c.node(id).m.membership.lease.current()
	}
	before := liveInstances(c.rec)
	creates := c.creates.Load()
	events := len(c.rec.Events())
	k := newKeyspace("", c.service)
	slot := slotOf(t, admin, k.nodes)
	gen := c.node("n1").m.calls.instances.generation()
	require.NotEmpty(t, gen)

	// First the membership record goes first: heartbeats reach it on the
	// new master (after ASK) while that master imports the slot, and
	// adopt it as it is.
	moved := migrateSlot(t, admin, cluster.Addrs(), slot, from, to, k.nodes, 900*time.Millisecond)
	t.Logf("%s: migrated %d keys of slot %d from %s to %s, 900 ms apart, the record first", service, moved, slot, from, to)
	assert.Greater(t, moved, 10, "keys migrated one by one")
	for _, id := range nodes {
		assert.Equal(t, gen, c.node(id).m.calls.instances.generation(), "%s: the record's generation changed: a migration taken for a restore", id)
	}
	// Then on to the third master in the order the server lists the keys:
	// the record may come last, right before the slot changes hands, and
	// no heartbeat may reach it while the slot is imported. The nodes then
	// take it for a restore and confirm what they hold; nothing stops.
	third := cluster.Addrs()[2]
	moved = migrateSlot(t, admin, cluster.Addrs(), slot, to, third, "", 900*time.Millisecond)
	t.Logf("%s: migrated %d keys of slot %d from %s to %s, 900 ms apart", service, moved, slot, to, third)

	for _, id := range nodes {
		now, _ := c.node(id).m.membership.lease.current()
		assert.Equal(t, sessions[id], now, "%s fenced or rejoined during the migration", id)
	}
	assert.Equal(t, before, liveInstances(c.rec), "instances replaced during the migration")
	assert.Equal(t, creates, c.creates.Load(), "instances created during the migration")
	assert.Len(t, c.rec.Events(), events, "instances started or stopped during the migration")

	// The slot now lives on the other master only, and the service works
	// there: a new node gets its share.
	c.start("n4")
	c.waitConverged(15*time.Second, "n1", "n2", "n3", "n4")
	owner, err := admin.Do(context.Background(), admin.B().ClusterNodes().Build()).ToString()
	require.NoError(t, err)
	t.Logf("cluster after the migrations:\n%s", owner)
	assert.Equal(t, 3, c.loads()["n4"], "the joiner's share of 12 keys on 4 nodes")
}

// migrateSlot moves slot from the master at addr from to the one at addr to
// as redis-cli --cluster reshard does, but with a pause between keys:
// IMPORTING on the target, MIGRATING on the source, MIGRATE key by key (the
// key first, if not "", then in the order the source lists them), then
// SETSLOT NODE on every master. It returns the number of keys moved.
func migrateSlot(t *testing.T, admin rueidis.Client, masters []string, slot int64, from, to, first string, gap time.Duration) int {
	t.Helper()
	ctx := context.Background()
	node := func(addr string) rueidis.Client {
		n := admin.Nodes()[addr]
		require.NotNil(t, n, "no cluster node %s", addr)
		return n
	}
	id := func(addr string) string {
		s, err := node(addr).Do(ctx, node(addr).B().Arbitrary("CLUSTER", "MYID").Build()).ToString()
		require.NoError(t, err)
		return s
	}
	src, dst := node(from), node(to)
	srcID, dstID := id(from), id(to)
	setslot := func(c rueidis.Client, how, nodeID string) {
		require.NoError(t, c.Do(ctx, c.B().Arbitrary("CLUSTER", "SETSLOT").Args(strconv.FormatInt(slot, 10), how, nodeID).Build()).Error())
	}
	setslot(dst, "IMPORTING", srcID)
	setslot(src, "MIGRATING", dstID)
	host, port, err := net.SplitHostPort(to)
	require.NoError(t, err)
	moved := 0
	for {
		keys, err := src.Do(ctx, src.B().ClusterGetkeysinslot().Slot(slot).Count(1).Build()).AsStrSlice()
		require.NoError(t, err)
		if len(keys) == 0 {
			break
		}
		if first != "" {
			keys, first = []string{first}, ""
		}
		if moved > 0 {
			time.Sleep(gap) // the pace of the migration, not a wait for anything
		}
		err = src.Do(ctx, src.B().Arbitrary("MIGRATE").Args(host, port, keys[0], "0", "5000").Build()).Error()
		require.NoError(t, err, "MIGRATE %s", keys[0])
		moved++
	}
	setslot(dst, "NODE", dstID)
	setslot(src, "NODE", dstID)
	for _, addr := range masters {
		if addr != from && addr != to {
			setslot(node(addr), "NODE", dstID)
		}
	}
	return moved
}
