package dim

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/history"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// reviewCase builds review inputs: keys k0…, nodes n1…, each node with a
// live session "s-<node>".
func reviewCase(keys, nodes int) *reviewInput {
	in := &reviewInput{
		failureFacts: failureFacts{now: 1_000_000, avoid: map[string][]avoidEntry{},
			quarantine: map[string]quarantineRecord{}, unhealthy: map[string]unhealthyRecord{}, sessions: map[string]string{}},
		prev: Assignment{}, states: map[string]keyRecord{},
		first: 10 * time.Second, max: 80 * time.Second, cooldown: time.Minute, poll: time.Second,
	}
	for i := range keys {
		in.keys = append(in.keys, fmt.Sprintf("k%d", i))
	}
	for i := 1; i <= nodes; i++ {
		id := fmt.Sprintf("n%d", i)
		in.nodes = append(in.nodes, Node{ID: id, Weight: 1})
		in.sessions[id] = "s-" + id
	}
	for i, key := range in.keys {
		in.prev[key] = in.nodes[i%nodes].ID
	}
	return in
}

// giveUp records that node gave key up at ms (server time).
func (in *reviewInput) giveUp(key, node string, at int64) {
	in.avoid[key] = append(in.avoid[key], avoidEntry{node: node, until: at + in.cooldown.Milliseconds()})
}

func (in *reviewInput) runs(key, node string) {
	in.states[key] = keyRecord{Node: node, Session: in.sessions[node], State: KeyRunning}
}

func TestReviewQuarantinesAKeyThatFailedOnThreeNodes(t *testing.T) {
	in := reviewCase(10, 4)
	in.giveUp("k1", "n1", in.now-3000)
	in.giveUp("k1", "n2", in.now-2000)
	v := review(in)
	assert.NotContains(t, v.quarantined, "k1", "two nodes of four are not enough")
	assert.Contains(t, v.keys, "k1")
	assert.ElementsMatch(t, []string{"n1", "n2"}, v.avoid["k1"], "a give-up moves the key")

	in.giveUp("k1", "n5", in.now-1500) // a node that has gone: it does not count
	assert.Empty(t, review(in).quarantined)
	in.giveUp("k1", "n3", in.now-1000)
	in.states["k1"] = keyRecord{Node: "n3", Session: "s-n3", State: KeyFailing, Err: "login refused"}
	v = review(in)
	assert.Equal(t, []string{"k1"}, v.quarantined)
	assert.NotContains(t, v.keys, "k1", "a quarantined key is not placed")
	assert.Len(t, v.keys, 9)
	q := v.setQuarantine["k1"]
	require.NotNil(t, q)
	assert.Equal(t, 1, q.Level)
	assert.Equal(t, in.now, q.Since)
	assert.Equal(t, in.now+10_000, q.Until)
	assert.Equal(t, []string{"n1", "n2", "n3", "n5"}, q.Nodes)
	assert.Equal(t, "login refused", q.Err)
	assert.Equal(t, q.Until, v.wake)
	assert.Nil(t, v.outage)
}

func TestReviewQuarantinesOnFewerNodesWhenFewerMayRunTheKey(t *testing.T) {
	in := reviewCase(10, 2)
	in.giveUp("k1", "n1", in.now-2000)
	in.giveUp("k1", "n2", in.now-1000)
	assert.Equal(t, []string{"k1"}, review(in).quarantined, "both nodes of two gave it up")

	in = reviewCase(10, 3)
	in.avoid["k1"] = []avoidEntry{{node: "n3", until: 0}} // n3 does not know k1
	in.giveUp("k1", "n1", in.now-2000)
	in.giveUp("k1", "n2", in.now-1000)
	assert.Equal(t, []string{"k1"}, review(in).quarantined, "every node that may run it gave it up")
}

func TestReviewBacksOffAQuarantineAndLetsItGoWhenItRuns(t *testing.T) {
	in := reviewCase(10, 3)
	in.quarantine["k1"] = quarantineRecord{Until: in.now + 5000, Level: 1}
	v := review(in)
	assert.NotContains(t, v.keys, "k1", "still quarantined")
	assert.Equal(t, in.now+5000, v.wake)
	assert.Equal(t, 1, v.underBan)

	// Past its time: on probation, placed again, looked at soon.
	in.now += 6000
	v = review(in)
	assert.Contains(t, v.keys, "k1")
	assert.Empty(t, v.setQuarantine)
	assert.Equal(t, in.now+1000, v.wake)

	// A give-up older than the quarantine's end does not count again.
	in.giveUp("k1", "n1", in.now-7000)
	assert.Empty(t, review(in).quarantined)

	// A give-up on probation doubles the wait.
	in.giveUp("k1", "n2", in.now-100)
	v = review(in)
	assert.Equal(t, []string{"k1"}, v.quarantined)
	assert.Equal(t, 2, v.setQuarantine["k1"].Level)
	assert.Equal(t, in.now+20_000, v.setQuarantine["k1"].Until)

	// The wait is capped.
	in.quarantine["k1"] = quarantineRecord{Until: in.now - 200, Level: 9}
	v = review(in)
	assert.Equal(t, in.now+80_000, v.setQuarantine["k1"].Until)

	// Running on probation ends the quarantine.
	in.quarantine["k1"] = quarantineRecord{Until: in.now - 1, Level: 3}
	in.avoid = map[string][]avoidEntry{}
	in.runs("k1", "n3")
	v = review(in)
	assert.Equal(t, []string{"k1"}, v.released)
	assert.Contains(t, v.setQuarantine, "k1")
	assert.Nil(t, v.setQuarantine["k1"], "the record goes")

	// A stale record (its node's session ended) does not count as running.
	in.states["k1"] = keyRecord{Node: "n3", Session: "old", State: KeyRunning}
	assert.Empty(t, review(in).released)

	// A key no longer configured leaves quarantine.
	in.keys = slices.DeleteFunc(in.keys, func(k string) bool { return k == "k1" })
	v = review(in)
	assert.Equal(t, []string{"k1"}, v.released)
}

func TestReviewCallsItAnOutageWhenMostKeysFail(t *testing.T) {
	in := reviewCase(10, 3)
	for i, key := range in.keys[:6] {
		for _, n := range in.nodes {
			in.giveUp(key, n.ID, in.now-int64(1000+i))
		}
	}
	v := review(in)
	require.NotNil(t, v.outage, "6 of 10 keys fail everywhere")
	assert.Equal(t, 6, v.outage.Keys)
	assert.Equal(t, in.now, v.outage.Since)
	assert.Empty(t, v.quarantined, "nothing is quarantined in an outage")
	assert.Empty(t, v.sick, "no node is unhealthy in an outage")
	assert.Empty(t, v.avoid, "give-ups move nothing in an outage: keys stay where they are")
	assert.Equal(t, in.keys, v.keys)

	// An outage already recorded keeps its start.
	in.outage = &outageRecord{Since: in.now - 5000, Keys: 6}
	in.now += 10
	assert.Equal(t, in.now-5010, review(in).outage.Since)

	// A quarantined key is placed again during an outage.
	in.quarantine["k9"] = quarantineRecord{Until: in.now + 10_000, Level: 1}
	assert.Contains(t, review(in).keys, "k9")

	// One failing key of ten is not an outage.
	in = reviewCase(10, 3)
	in.giveUp("k1", "n1", in.now-1000)
	assert.Nil(t, review(in).outage)
}

// An outage ends when the keys run again, even where the nodes that gave
// them up keep their give-ups until their cooldown ends: a key that moved
// before the outage was declared runs on another node, and its first
// node's give-up says nothing about it any more.
func TestReviewEndsAnOutageWhenTheKeysRunAgain(t *testing.T) {
	in := reviewCase(6, 3)
	for i, key := range in.keys[:4] {
		in.giveUp(key, "n1", in.now-int64(1000+i))
	}
	in.outage = &outageRecord{Since: in.now - 5000, Keys: 4}
	v := review(in)
	require.NotNil(t, v.outage, "4 of 6 keys given up and not running")
	assert.Equal(t, in.now+in.poll.Milliseconds(), v.wake, "an outage is looked at again every poll: keys that run again publish no event")

	for _, key := range in.keys[:3] {
		in.runs(key, "n2")
	}
	v = review(in)
	assert.Nil(t, v.outage, "3 of the 4 keys run on n2: 1 of 6 fails, no outage")

	// A key that runs on a node whose session is gone does not run.
	in.sessions["n2"] = "s-n2-new"
	assert.NotNil(t, review(in).outage)
}

func TestReviewFindsANodeOnWhichKeysFailThatRunElsewhere(t *testing.T) {
	in := reviewCase(9, 3)
	in.giveUp("k0", "n1", in.now-2000)
	in.giveUp("k3", "n1", in.now-1000)
	in.runs("k0", "n2")
	for key, node := range in.prev {
		if node == "n1" {
			in.prev[key] = "n2"
		}
	}
	v := review(in)
	assert.Equal(t, []string{"n1"}, v.sick)
	u := v.setUnhealthy["n1"]
	require.NotNil(t, u)
	assert.Equal(t, 1, u.Level)
	assert.Equal(t, "s-n1", u.Session)
	assert.Equal(t, []string{"k0", "k3"}, u.Keys)
	for _, key := range in.keys {
		assert.Contains(t, v.avoid[key], "n1", "an unhealthy node gets no key: %s", key)
	}
	assert.Equal(t, u.Until, v.wake)

	// A node that runs something is not unhealthy: its failures are the
	// keys'.
	in.runs("k6", "n1")
	assert.Empty(t, review(in).sick)
	delete(in.states, "k6")

	// Keys that fail nowhere else say nothing about the node yet: it keeps
	// what it has, gets nothing new, and is looked at again soon.
	delete(in.states, "k0")
	in.prev["k6"] = "n1"
	v = review(in)
	assert.Empty(t, v.sick)
	assert.NotContains(t, v.avoid["k6"], "n1", "it keeps what it has")
	assert.Contains(t, v.avoid["k7"], "n1", "it gets nothing new")
	assert.Equal(t, in.now+1000, v.wake)
}

func TestReviewProbesAnUnhealthyNode(t *testing.T) {
	in := reviewCase(9, 3)
	in.unhealthy["n1"] = unhealthyRecord{Until: in.now - 1, Level: 1, Session: "s-n1"}
	v := review(in)
	assert.Empty(t, v.sick)
	allowed := 0
	for _, key := range v.keys {
		if !slices.Contains(v.avoid[key], "n1") {
			allowed++
		}
	}
	assert.Equal(t, 1, allowed, "on probation a node may take one key")
	assert.Equal(t, in.now+1000, v.wake)

	// The probe runs: healthy again.
	probe := in.keys[0]
	for _, key := range v.keys {
		if !slices.Contains(v.avoid[key], "n1") {
			probe = key
		}
	}
	in.prev[probe] = "n1"
	in.runs(probe, "n1")
	v = review(in)
	assert.Equal(t, []string{"n1"}, v.healed)
	assert.Nil(t, v.setUnhealthy["n1"])
	assert.Empty(t, v.avoid)

	// The probe fails: unhealthy again, for twice as long.
	delete(in.states, probe)
	in.giveUp(probe, "n1", in.now)
	v = review(in)
	assert.Equal(t, []string{"n1"}, v.sick)
	assert.Equal(t, 2, v.setUnhealthy["n1"].Level)
	assert.Equal(t, in.now+20_000, v.setUnhealthy["n1"].Until)

	// A restarted node (another session) starts healthy.
	in.sessions["n1"] = "s-n1-again"
	in.avoid = map[string][]avoidEntry{}
	v = review(in)
	assert.Contains(t, v.setUnhealthy, "n1")
	assert.Nil(t, v.setUnhealthy["n1"])
	assert.Empty(t, v.avoid)
}

func TestLookupsAreOnlyTheKeysAReviewNeeds(t *testing.T) {
	in := reviewCase(100, 4)
	assert.Empty(t, lookups(&in.failureFacts, in.prev), "nothing failing: nothing to read")
	in.giveUp("k1", "n1", in.now-10)
	assert.Equal(t, []string{"k1"}, lookups(&in.failureFacts, in.prev))
	in.giveUp("k2", "n1", in.now-10)
	look := lookups(&in.failureFacts, in.prev)
	assert.Len(t, look, 2+25, "the give-ups and the keys of the node that gave two up")
}

// failing returns a create error while on holds.
func failing(on *atomic.Bool, msg string) func() error {
	return func() error {
		if on.Load() {
			return errors.New(msg)
		}
		return nil
	}
}

// fastQuarantine makes quarantines short enough for a test.
var fastQuarantine = WithQuarantine(2*time.Second, 4*time.Second)

func TestAKeyThatFailsEverywhereIsQuarantinedThenTriedAgain(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	var broken atomic.Bool
	broken.Store(true)
	c.createErr.Store("cfg-01", failing(&broken, "the feed's credentials were revoked"))
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id, fastQuarantine)
	}
	var st *Status
	c.eventually(30*time.Second, "cfg-01 quarantined after failing on all three nodes", func() bool {
		st = c.status()
		return len(st.Quarantined) == 1
	})
	q := st.Quarantined[0]
	assert.Equal(t, "cfg-01", q.Key)
	assert.Equal(t, 1, q.Level)
	assert.Equal(t, []string{"n1", "n2", "n3"}, q.Nodes)
	assert.Contains(t, q.LastError, "credentials were revoked")
	assert.WithinDuration(t, st.ServerTime.Add(2*time.Second), q.Until, 2*time.Second)
	if ks := st.Keys["cfg-01"]; ks.State == KeyQuarantined {
		assert.Equal(t, q.Until, ks.NextRetry)
		assert.Contains(t, ks.LastError, "credentials were revoked")
	}
	assert.Nil(t, st.Outage)
	for _, n := range st.Nodes {
		assert.Nil(t, n.Unhealthy, "a key's failure is not a node's: %s", n.ID)
	}
	c.eventually(5*time.Second, "cfg-01 unassigned, the other keys running", func() bool {
		st = c.status()
		_, assigned := st.Assignment["cfg-01"]
		return !assigned && len(st.Unowned) == 0 && len(c.rec.LiveByKey()) == 5
	})
	// The summary says the same: five running, one quarantined.
	sum, _ := c.agree(5*time.Second, "the summary agrees while cfg-01 is quarantined", func(sum *Summary, _ *Status) bool {
		return sum.Quarantined == 1 && sum.Running == 5
	})
	require.Len(t, sum.QuarantinedKeys, 1)
	assert.Equal(t, "cfg-01", sum.QuarantinedKeys[0].Key)
	assert.Zero(t, sum.Unowned)

	// Tried again after its backoff, it fails again: quarantined for longer.
	c.eventually(30*time.Second, "cfg-01 quarantined again, at level 2", func() bool {
		st = c.status()
		return len(st.Quarantined) == 1 && st.Quarantined[0].Level >= 2
	})

	// Once the key works, it leaves quarantine at its next probe and runs.
	broken.Store(false)
	c.eventually(30*time.Second, "cfg-01 out of quarantine and running once", func() bool {
		st = c.status()
		return len(st.Quarantined) == 0 && len(c.rec.LiveByKey()["cfg-01"]) == 1
	})
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	assert.Empty(t, history.Overlaps(c.rec.Events()))
}

func TestANodeOnWhichKeysFailThatRunElsewhereIsUnhealthyUntilAProbeRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	c.start("n1", fastQuarantine)
	c.start("n2", fastQuarantine)
	c.waitConverged(10*time.Second, "n1", "n2")
	var sick atomic.Bool
	sick.Store(true)
	n3 := c.newNode("n3", fastQuarantine)
	create := n3.m.calls.createInstance
	n3.m.calls.createInstance = func(ctx context.Context, cfg testConfig) (*testInst, error) {
		if sick.Load() {
			return nil, errors.New("n3 cannot resolve the upstream's name")
		}
		return create(ctx, cfg)
	}
	c.startNode(n3)
	var st *Status
	c.eventually(30*time.Second, "n3 unhealthy, every key running on n1 and n2", func() bool {
		st = c.status()
		i := slices.IndexFunc(st.Nodes, func(n NodeStatus) bool { return n.ID == "n3" })
		return i >= 0 && st.Nodes[i].Unhealthy != nil && len(st.Unowned) == 0 && c.converged("n1", "n2")
	})
	assert.Empty(t, st.Quarantined, "the keys are fine: nothing is quarantined")
	assert.Nil(t, st.Outage)
	i := slices.IndexFunc(st.Nodes, func(n NodeStatus) bool { return n.ID == "n3" })
	u := st.Nodes[i].Unhealthy
	assert.GreaterOrEqual(t, len(u.Keys), 2)
	assert.Equal(t, 0, st.Nodes[i].Assigned, "an unhealthy node gets no keys")

	// The node recovers: its probe runs, and it gets its share back.
	sick.Store(false)
	c.eventually(30*time.Second, "n3 healthy and running its share", func() bool {
		st = c.status()
		i := slices.IndexFunc(st.Nodes, func(n NodeStatus) bool { return n.ID == "n3" })
		return i >= 0 && st.Nodes[i].Unhealthy == nil && c.converged("n1", "n2", "n3")
	})
	assert.Empty(t, history.Overlaps(c.rec.Events()))
}

func TestAnOutageKeepsKeysWhereTheyAreAndRetries(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	var down atomic.Bool
	down.Store(true)
	for _, key := range c.keys() {
		c.createErr.Store(key, failing(&down, "upstream unavailable"))
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id, fastQuarantine)
	}
	var st *Status
	c.eventually(30*time.Second, "an outage declared", func() bool {
		st = c.status()
		return st.Outage != nil
	})
	assert.GreaterOrEqual(t, st.Outage.FailingKeys, 3)
	// Long enough for a key to be given up by three nodes in turn, or a
	// quarantine to pass, if failures moved keys: they do not.
	before := maps.Clone(st.Assignment)
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		st = c.status()
		require.Empty(t, st.Quarantined, "nothing is quarantined in an outage")
		for _, n := range st.Nodes {
			require.Nil(t, n.Unhealthy, "no node is unhealthy in an outage")
		}
		require.Len(t, st.Assignment, 6, "the fleet keeps every key")
		select {
		case <-c.rec.Changed():
		case <-time.After(100 * time.Millisecond):
		}
	}
	assert.Equal(t, before, st.Assignment, "keys stay where they are")
	for _, ks := range st.Keys {
		assert.Equal(t, KeyFailing, ks.State, "every key keeps retrying")
	}

	down.Store(false)
	c.waitConverged(60*time.Second, "n1", "n2", "n3")
	c.eventually(30*time.Second, "the outage over", func() bool { return c.status().Outage == nil })
}

// The backoff doubles up to its cap and stays there, however long a key
// keeps failing: a shift by the level would wrap around to a short wait.
func TestQuarantineBackoffStaysAtItsCap(t *testing.T) {
	in := &reviewInput{first: 10 * time.Second, max: 10 * time.Minute}
	require.Equal(t, int64(10_000), in.backoff(1))
	require.Equal(t, int64(20_000), in.backoff(2))
	for level := 7; level < 200; level++ {
		require.Equal(t, int64(600_000), in.backoff(level), "level %d", level)
	}
	huge := &reviewInput{first: 24 * time.Hour, max: 1<<63 - 1}
	for level := 1; level < 100; level++ {
		require.Positive(t, huge.backoff(level), "level %d", level)
	}
}
