package dim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// summary reads the service's summary from the test's own client.
func (c *testCluster) summary() *Summary {
	c.t.Helper()
	sum, err := ReadSummary(context.Background(), c.srv.Client(c.t), Service{Name: c.service})
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

// mirrorsExact checks the summary's sets and counts against the state and
// owner hashes: for every live node and state, exactly the keys whose record
// its current session published in that state; for every live node, how
// many keys of its current session have no record and are creating or
// running by their owner entry; no set or count for any other node; and the
// moving set, of the keys whose state (record, or else owner entry) comes
// from another node than the one they are assigned to.
func (c *testCluster) mirrorsExact() string {
	c.t.Helper()
	return mirrorDiff(c.t, c.srv.Client(c.t), c.service)
}

// mirrorDiff is mirrorsExact for any service on client's Redis.
func mirrorDiff(t *testing.T, client rueidis.Client, service string) string {
	t.Helper()
	ctx := context.Background()
	k := newKeyspace("", service)
	st, err := ReadStatus(ctx, client, Service{Name: service})
	require.NoError(t, err)
	rec, err := client.Do(ctx, client.B().Hgetall().Key(k.nodes).Build()).AsStrMap()
	require.NoError(t, err)
	sessions := sessionsIn(rec)
	live := map[string]bool{}
	for _, n := range st.Nodes {
		live[n.ID] = true
	}
	raw, err := client.Do(ctx, client.B().Hgetall().Key(k.state).Build()).AsStrMap()
	require.NoError(t, err)
	owners, err := client.Do(ctx, client.B().Hgetall().Key(k.owner).Build()).AsStrMap()
	require.NoError(t, err)
	want := map[string][]string{}
	wantCounts := map[string]string{}
	var moving []string
	for key, v := range raw {
		var r keyRecord
		require.NoError(t, json.Unmarshal([]byte(v), &r))
		if live[r.Node] && sessions[r.Node] == r.Session {
			set := k.inState(r.State, r.Node)
			want[set] = append(want[set], key)
		}
		if st.Assignment[key] != r.Node {
			moving = append(moving, key)
		}
	}
	counted := map[string]int{}
	for key, v := range owners {
		if _, ok := raw[key]; ok {
			continue
		}
		o, ok := parseOwner(v)
		require.True(t, ok, "owner entry %q", v)
		if live[o.node] && sessions[o.node] == o.session {
			counted[string(o.implicit.State)+":"+o.node]++
		}
		if st.Assignment[key] != o.node {
			moving = append(moving, key)
		}
	}
	for f, n := range counted {
		wantCounts[f] = fmt.Sprint(n)
	}
	if len(moving) > 0 {
		want[k.moving()] = moving
	}
	got := map[string][]string{}
	sets, err := client.Do(ctx, client.B().Keys().Pattern(k.state+":*").Build()).AsStrSlice()
	require.NoError(t, err)
	for _, set := range sets {
		if set == k.counts() {
			continue
		}
		members, err := client.Do(ctx, client.B().Smembers().Key(set).Build()).AsStrSlice()
		require.NoError(t, err)
		got[set] = members
	}
	var diffs []string
	for _, set := range slices.Sorted(maps.Keys(mergeKeys(want, got))) {
		w, g := slices.Sorted(slices.Values(want[set])), slices.Sorted(slices.Values(got[set]))
		if !slices.Equal(w, g) {
			diffs = append(diffs, fmt.Sprintf("%s: want %v, have %v", strings.TrimPrefix(set, k.state), w, g))
		}
	}
	gotCounts, err := client.Do(ctx, client.B().Hgetall().Key(k.counts()).Build()).AsStrMap()
	require.NoError(t, err)
	for f, v := range gotCounts {
		if v == "0" {
			delete(gotCounts, f) // a count that went back to zero
		}
	}
	if !maps.Equal(wantCounts, gotCounts) {
		diffs = append(diffs, fmt.Sprintf("counts: want %v, have %v", wantCounts, gotCounts))
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
	c.start("n1", WithGiveUpAfter(0)) // failing keys stay failing here, not quarantined

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
	sum, err := readSummary(context.Background(), c.srv.Client(t), c.service, newKeyspace("", c.service), 2)
	require.NoError(t, err)
	assert.Equal(t, 5, sum.Problems)
	assert.Len(t, sum.ProblemKeys, 2)
	assert.Equal(t, 3, sum.ProblemsOmitted)
	for _, p := range sum.ProblemKeys {
		assert.Equal(t, KeyFailing, p.State)
	}
	counts, err := readSummary(context.Background(), c.srv.Client(t), c.service, newKeyspace("", c.service), 0)
	require.NoError(t, err)
	assert.Equal(t, 5, counts.Problems)
	assert.Empty(t, counts.ProblemKeys, "a limit of 0 only counts")
}

func TestSummaryOfAnUnknownServiceIsAnError(t *testing.T) {
	srv := redistest.Start(t)
	_, err := ReadSummary(context.Background(), srv.Client(t), Service{Name: "nobody"})
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

// TestMirrorsStayExactThroughAnySequenceOfScripts drives the scripts that
// change keys' owners and states directly, in a random order a real service
// could produce (writes of the assignment, claims, states of every kind,
// releases, confirmations after a restore, sweeps, nodes that leave, crash
// and come back), and checks after every call that the summary's sets and
// counts say exactly what the owner and state hashes say.
func TestMirrorsStayExactThroughAnySequenceOfScripts(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	ctx := context.Background()
	const service = "mirrors"
	k := newKeyspace("", service)
	db := newStore(client, k)
	do := func(what string, r rueidis.RedisResult) rueidis.RedisResult {
		t.Helper()
		require.NoError(t, r.Error(), what)
		return r
	}
	const long = 10 * time.Minute
	ids := []string{"n1", "n2", "n3"}
	sessions := map[string]string{}
	join := func(n string) {
		res, err := db.join(ctx, n, long, long, "0")
		require.NoError(t, err)
		sessions[n] = res.session
		require.NotEmpty(t, sessions[n], "join of %s", n)
		_, err = db.heartbeat(ctx, n, sessions[n], long, 1, long, "0")
		require.NoError(t, err, "heartbeat")
		do("no grace", client.Do(ctx, client.B().Hset().Key(k.nodes).FieldValue().FieldValue("grace", "0").Build()))
	}
	for _, n := range ids {
		join(n)
	}
	do("epoch", client.Do(ctx, client.B().Set().Key(k.epoch).Value("1").Build()))
	keys := make([]string, 16)
	for i := range keys {
		keys[i] = fmt.Sprintf("cfg-%02d", i)
	}
	assigned := map[string]string{}
	rng := rand.New(rand.NewPCG(17, 42))
	some := func() []string {
		var out []string
		for _, key := range keys {
			if rng.IntN(3) == 0 {
				out = append(out, key)
			}
		}
		return out
	}
	anyNode := func() string { return ids[rng.IntN(len(ids))] }
	record := func(n string, st KeyState) string {
		r := keyRecord{Node: n, Session: sessions[n], State: st, Since: time.Now().UnixMilli()}
		if st == KeyFailing {
			r.Attempts, r.Err = 1+rng.IntN(3), "refused"
		}
		b, err := json.Marshal(r)
		require.NoError(t, err)
		return string(b)
	}
	states := []KeyState{KeyFailing, KeyHung, KeyUnknown, KeyStopping, KeyRunning, KeyCreating}
	steps := []struct {
		name string
		run  func() string
	}{
		{"write", func() string {
			var changes []change
			for _, key := range some() {
				to := anyNode()
				if rng.IntN(5) == 0 {
					to = ""
				}
				if to != assigned[key] {
					changes = append(changes, change{key: key, from: assigned[key], to: to})
				}
			}
			if len(changes) == 0 {
				return "nothing"
			}
			slices.SortFunc(changes, func(a, b change) int { return strings.Compare(a.to, b.to) })
			index := map[string]int{"": 0}
			var nodes []string
			for _, c := range changes {
				for _, n := range []string{c.from, c.to} {
					if _, ok := index[n]; !ok {
						nodes = append(nodes, n)
						index[n] = len(nodes)
					}
				}
			}
			tell := make([]bool, len(nodes))
			for i := range tell {
				tell[i] = true
			}
			_, err := db.write(ctx, 1, "-", nodes, tell, writeGroups(changes, index))
			require.NoError(t, err, "write")
			for _, c := range changes {
				if c.to == "" {
					delete(assigned, c.key)
				} else {
					assigned[c.key] = c.to
				}
			}
			return fmt.Sprint(changes)
		}},
		{"claim", func() string {
			n, ks := anyNode(), some()
			if len(ks) == 0 {
				return "nothing"
			}
			_, err := db.claim(ctx, n, sessions[n], long, "0", ks)
			require.NoError(t, err, "claim")
			return n + " " + fmt.Sprint(ks)
		}},
		{"state", func() string {
			n := anyNode()
			var run, pairs []string
			for _, key := range some() {
				switch i := rng.IntN(len(states) + 2); {
				case i < len(states):
					pairs = append(pairs, key, record(n, states[i]))
				case i == len(states):
					run = append(run, key)
				default:
					pairs = append(pairs, key, "")
				}
			}
			_, _, err := db.state(ctx, n, sessions[n], time.Now().UnixMilli(), run, pairs)
			require.NoError(t, err, "state")
			return fmt.Sprintf("%s run %v, %v", n, run, pairs)
		}},
		{"release", func() string {
			n, ks := anyNode(), some()
			if len(ks) == 0 {
				return "nothing"
			}
			require.NoError(t, db.release(ctx, n, sessions[n], ks), "release")
			return n + " " + fmt.Sprint(ks)
		}},
		{"verify", func() string {
			n, ks := anyNode(), some()
			if len(ks) == 0 {
				return "nothing"
			}
			_, _, err := db.verify(ctx, n, sessions[n], ks)
			require.NoError(t, err, "verify")
			return n + " " + fmt.Sprint(ks)
		}},
		{"sweep", func() string {
			_, err := db.sweep(ctx, "0", 100)
			require.NoError(t, err, "sweep")
			return ""
		}},
		{"leave and join", func() string {
			n := anyNode()
			require.NoError(t, db.leave(ctx, n, sessions[n]), "leave")
			join(n)
			return n
		}},
		{"crash and rejoin", func() string {
			n := anyNode()
			do("expire", client.Do(ctx, client.B().Hset().Key(k.nodes).FieldValue().FieldValue("e:"+n, "1").Build()))
			_, _, err := db.members(ctx)
			require.NoError(t, err, "members")
			join(n)
			return n
		}},
	}
	weights := []int{3, 4, 5, 2, 1, 1, 1, 1}
	var log []string
	for i := range 600 {
		w := rng.IntN(18)
		j := 0
		for w >= weights[j] {
			w -= weights[j]
			j++
		}
		log = append(log, fmt.Sprintf("%d %s: %s", i, steps[j].name, steps[j].run()))
		if d := mirrorDiff(t, client, service); d != "" {
			t.Fatalf("after step %s\n%s\nmirrors: %s", log[len(log)-1], strings.Join(log[max(0, len(log)-8):], "\n"), d)
		}
	}
}
