package dim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// summary reads the service's summary from the test's own client.
func (c *testCluster) summary() *Summary {
	c.t.Helper()
	sum, err := ReadSummary(context.Background(), c.srv.Client(c.t), WithService(c.service))
	require.NoError(c.t, err)
	return sum
}

// disagreement compares a summary with a full status read just after it,
// and describes how they differ; "" when they agree in every count and in
// the keys listed.
func disagreement(sum *Summary, st *Status) string {
	var diffs []string
	check := func(what string, got, want any) {
		if fmt.Sprint(got) != fmt.Sprint(want) {
			diffs = append(diffs, fmt.Sprintf("%s: summary %v, status %v", what, got, want))
		}
	}
	live := map[string]bool{}
	for _, n := range st.Nodes {
		live[n.ID] = true
	}
	states := map[KeyState]int{}
	for _, s := range keyStateList {
		states[s] = 0
	}
	var problems []string
	moving := 0
	for key, ks := range st.Keys {
		if ks.State == KeyQuarantined {
			continue // the leader's verdict, compared below
		}
		if ks.Live {
			states[ks.State]++
			if ks.State != KeyRunning {
				problems = append(problems, key+"="+string(ks.State))
			}
		}
		if a := st.Assignment[key]; ks.Node != a {
			moving++
		}
	}
	onDead := 0
	for _, node := range st.Assignment {
		if !live[node] {
			onDead++
		}
	}
	var listed []string
	for _, p := range sum.ProblemKeys {
		listed = append(listed, p.Key+"="+string(p.State))
	}
	var atRisk []string
	for _, p := range sum.AtRiskKeys {
		atRisk = append(atRisk, p.Key)
	}
	check("assigned", sum.Assigned, len(st.Assignment))
	check("running", sum.Running, states[KeyRunning])
	check("states", sum.States, states)
	check("unowned", sum.Unowned, len(st.Unowned))
	check("on dead nodes", sum.OnDeadNodes, onDead)
	check("problems", sum.Problems, len(problems))
	check("problem keys", listed, slices.Sorted(slices.Values(problems)))
	check("at risk", sum.AtRisk, len(st.AtRisk))
	check("at risk keys", atRisk, slices.Sorted(slices.Values(st.AtRisk)))
	check("moving", sum.Moving, moving)
	var quarantined, sq []string
	for _, q := range st.Quarantined {
		quarantined = append(quarantined, q.Key)
	}
	for _, q := range sum.QuarantinedKeys {
		sq = append(sq, q.Key)
	}
	check("quarantined", sum.Quarantined, len(st.Quarantined))
	check("quarantined keys", sq, quarantined)
	check("outage", sum.Outage != nil, st.Outage != nil)
	check("leader", sum.Leader+fmt.Sprint(sum.LeaderLive, sum.Epoch), st.Leader+fmt.Sprint(st.LeaderLive, st.Epoch))
	nodeLine := func(n NodeStatus) string {
		return fmt.Sprintf("%s %s w%d a%d r%d %q unhealthy=%v", n.ID, n.State, n.Weight, n.Assigned, n.Running, n.ConfigError, n.Unhealthy != nil)
	}
	var sn, fn []string
	for _, n := range sum.Nodes {
		sn = append(sn, nodeLine(n))
	}
	for _, n := range st.Nodes {
		fn = append(fn, nodeLine(n))
	}
	check("nodes", sn, fn)
	return strings.Join(diffs, "; ")
}

// keyStateList is every KeyState, as the summary counts them.
var keyStateList = []KeyState{KeyRunning, KeyFailing, KeyHung, KeyUnknown, KeyStopping, KeyCreating}

// agree waits until a summary and the full status read after it agree and
// cond holds for both, and returns them.
func (c *testCluster) agree(within time.Duration, what string, cond func(*Summary, *Status) bool) (*Summary, *Status) {
	c.t.Helper()
	var sum *Summary
	var st *Status
	var last string
	deadline := time.Now().Add(within)
	for {
		sum, st = c.summary(), c.status()
		last = disagreement(sum, st)
		if last == "" && cond(sum, st) {
			return sum, st
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: not within %v; last disagreement: %s", what, within, last)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mirrorsExact checks the summary's sets against the state hash: for every
// live node and state, exactly the keys whose record its current session
// published in that state; no set for any other node; and the moving set.
func (c *testCluster) mirrorsExact() string {
	c.t.Helper()
	ctx := context.Background()
	client := c.srv.Client(c.t)
	k := newKeys("", c.service)
	st := c.status()
	rec, err := client.Do(ctx, client.B().Hgetall().Key(k.nodes).Build()).AsStrMap()
	require.NoError(c.t, err)
	sessions := sessionsIn(rec)
	live := map[string]bool{}
	for _, n := range st.Nodes {
		live[n.ID] = true
	}
	raw, err := client.Do(ctx, client.B().Hgetall().Key(k.state).Build()).AsStrMap()
	require.NoError(c.t, err)
	want := map[string][]string{}
	var moving []string
	for key, v := range raw {
		var r keyRecord
		require.NoError(c.t, json.Unmarshal([]byte(v), &r))
		if live[r.Node] && sessions[r.Node] == r.Session {
			set := k.inState(r.State, r.Node)
			want[set] = append(want[set], key)
		}
		if st.Assignment[key] != r.Node {
			moving = append(moving, key)
		}
	}
	if len(moving) > 0 {
		want[k.moving()] = moving
	}
	got := map[string][]string{}
	sets, err := client.Do(ctx, client.B().Keys().Pattern(k.state+":*").Build()).AsStrSlice()
	require.NoError(c.t, err)
	for _, set := range sets {
		members, err := client.Do(ctx, client.B().Smembers().Key(set).Build()).AsStrSlice()
		require.NoError(c.t, err)
		got[set] = members
	}
	var diffs []string
	for _, set := range slices.Sorted(maps.Keys(mergeKeys(want, got))) {
		w, g := slices.Sorted(slices.Values(want[set])), slices.Sorted(slices.Values(got[set]))
		if !slices.Equal(w, g) {
			diffs = append(diffs, fmt.Sprintf("%s: want %v, have %v", strings.TrimPrefix(set, k.state), w, g))
		}
	}
	return strings.Join(diffs, "; ")
}

func mergeKeys(a, b map[string][]string) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

func TestSummaryAgreesWithStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 6)
	c.createErr.Store("cfg-01", func() error { return errors.New("upstream refused the login") })
	hang := make(chan struct{})
	c.createErr.Store("cfg-02", func() error { <-hang; return nil })
	c.start("n1")

	// One node: a running key, a failing create and a hung one.
	sum, _ := c.agree(10*time.Second, "cfg-01 failing and cfg-02 hung, the rest running", func(sum *Summary, _ *Status) bool {
		return sum.Running == 4 && sum.States[KeyFailing] == 1 && sum.States[KeyHung] == 1
	})
	assert.Equal(t, 6, sum.Assigned)
	assert.Equal(t, 2, sum.Unowned, "a claimed key that does not run is not running")
	require.Len(t, sum.ProblemKeys, 2)
	f := sum.ProblemKeys[0]
	assert.Equal(t, "cfg-01", f.Key)
	assert.Equal(t, "n1", f.AssignedTo)
	assert.Equal(t, KeyFailing, f.State)
	assert.True(t, f.Live)
	assert.Contains(t, f.LastError, "upstream refused the login")
	assert.Positive(t, f.Attempts)
	assert.Equal(t, KeyHung, sum.ProblemKeys[1].State)
	assert.Zero(t, sum.ProblemsOmitted)

	// Both recover; a second node comes: keys move, and the counts follow.
	c.createErr.Delete("cfg-01")
	close(hang)
	c.start("n2")
	c.agree(10*time.Second, "n2 runs its share", func(sum *Summary, _ *Status) bool {
		return len(sum.Nodes) == 2 && sum.Nodes[1].Running == 3 && sum.Running == 6 && sum.Moving == 0
	})

	// n2 crashes: suspect with its keys at risk, then gone with its keys
	// unowned, then placed on n1 again.
	// Its keys will fail on n1 for a while: unowned, and listed.
	refuse := func() error { return errors.New("n1 cannot reach it") }
	for key, ks := range c.status().Keys {
		if ks.Node == "n2" {
			c.createErr.Store(key, refuse)
		}
	}
	c.crash("n2")
	sum, _ = c.agree(testTTL, "n2 suspect while its lease still runs", func(sum *Summary, _ *Status) bool {
		return len(sum.Nodes) == 2 && sum.Nodes[1].State == "suspect"
	})
	assert.Equal(t, 3, sum.AtRisk)
	require.Len(t, sum.AtRiskKeys, 3)
	for _, p := range sum.AtRiskKeys {
		assert.Equal(t, "n2", p.Node)
	}
	sum, _ = c.agree(5*time.Second, "n2's lease over and its keys failing on n1", func(sum *Summary, _ *Status) bool {
		return len(sum.Nodes) == 1 && sum.States[KeyFailing] == 3
	})
	assert.Equal(t, 3, sum.Unowned)
	assert.Equal(t, 3, sum.Running)
	assert.Zero(t, sum.AtRisk)
	for _, p := range sum.ProblemKeys {
		c.createErr.Delete(p.Key)
	}
	c.agree(10*time.Second, "n2's keys running on n1", func(sum *Summary, _ *Status) bool {
		return len(sum.Nodes) == 1 && sum.Running == 6 && sum.OnDeadNodes == 0 && sum.Moving == 0
	})
	c.eventually(5*time.Second, "the mirrors exact, none left for n2", func() bool { return c.mirrorsExact() == "" })

	// n2 comes back under the same ID, with a new session: nothing of its
	// old one counts.
	c.start("n2")
	c.agree(10*time.Second, "n2 back with its share", func(sum *Summary, _ *Status) bool {
		return len(sum.Nodes) == 2 && sum.Nodes[1].Running == 3 && sum.Running == 6 && sum.Moving == 0
	})
	if d := c.mirrorsExact(); d != "" {
		t.Errorf("mirrors drifted: %s", d)
	}

	// Graceful stops leave nothing behind.
	c.stop("n2")
	c.agree(5*time.Second, "n1 alone again", func(sum *Summary, _ *Status) bool {
		return len(sum.Nodes) == 1 && sum.Running == 6 && sum.Moving == 0
	})
	if d := c.mirrorsExact(); d != "" {
		t.Errorf("mirrors drifted: %s", d)
	}
}

func TestSummaryListsAtMostTheLimitAndCountsTheRest(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	c := newTestCluster(t, 8)
	for i := range 5 {
		c.createErr.Store(fmt.Sprintf("cfg-%02d", i), func() error { return errors.New("refused") })
	}
	c.start("n1", WithGiveUpAfter(0))
	c.eventually(10*time.Second, "five keys failing", func() bool { return c.summary().States[KeyFailing] == 5 })
	sum, err := readSummary(context.Background(), c.srv.Client(t), c.service, newKeys("", c.service), 2)
	require.NoError(t, err)
	assert.Equal(t, 5, sum.Problems)
	assert.Len(t, sum.ProblemKeys, 2)
	assert.Equal(t, 3, sum.ProblemsOmitted)
	for _, p := range sum.ProblemKeys {
		assert.Equal(t, KeyFailing, p.State)
	}
	counts, err := readSummary(context.Background(), c.srv.Client(t), c.service, newKeys("", c.service), 0)
	require.NoError(t, err)
	assert.Equal(t, 5, counts.Problems)
	assert.Empty(t, counts.ProblemKeys, "a limit of 0 only counts")
}

func TestSummaryOfAnUnknownServiceIsAnError(t *testing.T) {
	srv := redistest.Start(t)
	_, err := ReadSummary(context.Background(), srv.Client(t), WithService("nobody"))
	require.ErrorIs(t, err, ErrUnknownService)
}

func TestSummaryCountsEveryKeyState(t *testing.T) {
	// The Lua list of states the summary counts is the Go list.
	line := luaPrelude[strings.Index(luaPrelude, "local keyStates"):]
	line = line[:strings.Index(line, "\n")]
	var quoted []string
	for _, s := range keyStateList {
		quoted = append(quoted, "'"+string(s)+"'")
	}
	assert.Equal(t, "local keyStates = {"+strings.Join(quoted, ", ")+"}", line)
}
