package dim

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// redisFootprint is what a service keeps in Redis: per Redis key its size
// (fields, members or entries) and its memory, with the IDs of the live
// nodes written as <node> so that two footprints compare across restarts.
type redisFootprint struct {
	size   map[string]int64
	memory map[string]int64
}

func (f redisFootprint) total(skip ...string) int64 {
	var n int64
	for k, v := range f.memory {
		if !slices.Contains(skip, k) {
			n += v
		}
	}
	return n
}

// footprint reads every Redis key of the cluster's service.
func (c *testCluster) footprint(live []string) redisFootprint {
	c.t.Helper()
	client := c.srv.Client(c.t)
	ctx := context.Background()
	f := redisFootprint{size: map[string]int64{}, memory: map[string]int64{}}
	prefix := "dim:{" + c.service + "}"
	var cursor uint64
	for {
		e, err := client.Do(ctx, client.B().Scan().Cursor(cursor).Match(prefix+"*").Count(1000).Build()).AsScanEntry()
		require.NoError(c.t, err)
		for _, key := range e.Elements {
			typ, err := client.Do(ctx, client.B().Type().Key(key).Build()).ToString()
			require.NoError(c.t, err)
			var size int64
			switch typ {
			case "hash":
				size, err = client.Do(ctx, client.B().Hlen().Key(key).Build()).AsInt64()
			case "set":
				size, err = client.Do(ctx, client.B().Scard().Key(key).Build()).AsInt64()
			case "zset":
				size, err = client.Do(ctx, client.B().Zcard().Key(key).Build()).AsInt64()
			case "stream":
				size, err = client.Do(ctx, client.B().Xlen().Key(key).Build()).AsInt64()
			default:
				size = 1
			}
			require.NoError(c.t, err)
			mem, err := client.Do(ctx, client.B().MemoryUsage().Key(key).Samples(0).Build()).AsInt64()
			if err != nil {
				continue // gone meanwhile
			}
			name := strings.TrimPrefix(key, prefix)
			for i, id := range live {
				name = strings.ReplaceAll(name, id, fmt.Sprintf("<node%d>", i))
			}
			f.size[name], f.memory[name] = size, mem
		}
		if cursor = e.Cursor; cursor == 0 {
			return f
		}
	}
}

// TestChurnLeavesRedisFlat restarts the nodes of a service many times, each
// with a new default node ID as a deploy gives it, crashes some of them, and
// while a crashed node is dead replaces the keys it ran with new ones. What
// the service keeps in Redis must not grow with that history: no Redis key,
// hash field or set member for a node that is gone or a key that is no longer
// configured, and the memory of the second half of the churn no larger than
// after the first rounds (the history stream aside, trimmed to WithHistory).
func TestChurnLeavesRedisFlat(t *testing.T) {
	const keys, nodes, history = 12, 3, 20
	// The membership record: four fields per node (lease, session, weight,
	// TTL) and at most eight of the service's own.
	const recordFields = 4*nodes + 8
	c := newTestCluster(t, keys)
	opts := []Option{WithHistory(history)}
	ids := make([]string, nodes)
	for i := range ids {
		ids[i] = defaultNodeID()
		c.start(ids[i], opts...)
	}
	c.waitConverged(10*time.Second, ids...)
	next := 0 // names the keys that replace a crashed node's
	round := func(r int) {
		i := r % nodes
		old := ids[i]
		if r%4 == 3 {
			var ran []string
			for key, on := range c.rec.LiveByKey() {
				if slices.Contains(on, old) {
					ran = append(ran, key)
				}
			}
			c.crash(old)
			cfgs := slices.DeleteFunc(slices.Clone(c.currentConfigs()), func(cfg testConfig) bool { return slices.Contains(ran, cfg.Key) })
			for range ran {
				next++
				cfgs = append(cfgs, testConfig{Key: fmt.Sprintf("new-%03d", next)})
			}
			c.setConfigs(cfgs)
		} else {
			c.stop(old)
		}
		ids[i] = defaultNodeID()
		c.start(ids[i], opts...)
		c.waitConverged(15*time.Second, ids...)
	}
	// Settled: every record of a departed node or key has had the time to
	// go (a crashed node's lease, the leader's owner sweep, which runs at
	// every config refresh, here every second).
	settle := func(what string) redisFootprint {
		var f redisFootprint
		c.eventually(15*time.Second, what+": no record of a departed node or key", func() bool {
			f = c.footprint(ids)
			return f.size[":owner"] <= keys && f.size[":state"] <= keys && f.size[":nodes"] <= recordFields
		})
		return f
	}
	for r := range 8 {
		round(r)
	}
	first := settle("after 8 restarts")
	for r := 8; r < 24; r++ {
		round(r)
	}
	last := settle("after 24 restarts")

	t.Logf("after 8 restarts: %d B in %d Redis keys; after 24: %d B in %d", first.total(), len(first.size), last.total(), len(last.size))
	for name, size := range last.size {
		t.Logf("  %-28s %6d entries %8d B", name, size, last.memory[name])
	}
	for name := range last.size {
		assert.NotContains(t, name, "-", "a Redis key of a node that is gone: %s", name)
	}
	perKey := []string{":assign", ":owner", ":state", ":why", ":avoid", ":quarantine"}
	perNode := []string{":cfgerr", ":traces", ":handoffs", ":restarting", ":joinwait", ":unhealthy", ":drains"}
	assert.LessOrEqual(t, last.size[":nodes"], int64(recordFields), "the membership record holds a departed node")
	for _, name := range perKey {
		assert.LessOrEqual(t, last.size[name], int64(keys), "%s holds a departed key", name)
	}
	for _, name := range perNode {
		assert.LessOrEqual(t, last.size[name], int64(nodes), "%s holds a departed node", name)
	}
	// Two counts per node: its keys creating and running by their owner
	// entries.
	assert.LessOrEqual(t, last.size[":state:count"], int64(2*nodes), "the counts hold a departed node")
	for name, size := range last.size {
		if strings.HasPrefix(name, ":a:") || strings.HasPrefix(name, ":state:") {
			assert.LessOrEqual(t, size, int64(keys), name)
		}
	}
	// XADD MAXLEN ~ trims whole stream nodes (100 entries by default).
	assert.LessOrEqual(t, last.size[":history"], int64(history+100), "the history stream is trimmed")
	assert.LessOrEqual(t, len(last.size), len(first.size)+1, "Redis keys after 24 restarts, against after 8")
	// Memory: the same records for as many nodes and keys; encodings and
	// the sizes of numbers may differ a little.
	assert.LessOrEqual(t, last.total(":history"), first.total(":history")*5/4,
		"memory after 24 restarts against after 8, history stream aside")
}

// currentConfigs returns the configs getConfig returns now.
func (c *testCluster) currentConfigs() []testConfig {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.configs)
}
