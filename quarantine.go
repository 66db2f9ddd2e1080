package dim

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// This file is the leader's review of failures that a single node cannot
// judge: a key that fails wherever it goes (quarantined service-wide, with a
// growing backoff), a node on which keys fail that run elsewhere (unhealthy:
// it gets no keys until a probe succeeds), and an upstream outage (most keys
// fail everywhere: nothing moves, nothing is quarantined, every node keeps
// retrying with its backoff).

// Quarantine is a key that failed on several nodes in a row: it runs
// nowhere until Until, then it is assigned again (on probation) and leaves
// quarantine when it runs. Each quarantine in a row doubles the wait.
type Quarantine struct {
	Key string `json:"key"`
	// Level counts the quarantines in a row, from 1.
	Level int `json:"level"`
	// Since is when this quarantine began (Redis time).
	Since time.Time `json:"since"`
	// Until is when the key is tried again; after it, the key is on
	// probation: assigned, and quarantined again at its next give-up.
	Until time.Time `json:"until"`
	// Nodes are the nodes that gave the key up before the quarantine.
	Nodes []string `json:"nodes"`
	// LastError is the last create error a node published for the key.
	LastError string `json:"last_error,omitempty"`
}

// Unhealthy is a node on which several keys failed that ran on other nodes:
// it gets no keys until Until, then one key as a probe, and is healthy again
// once that key runs there.
type Unhealthy struct {
	// Level counts the times in a row the node was found unhealthy, from 1.
	Level int `json:"level"`
	// Until is when the node gets a probe key.
	Until time.Time `json:"until"`
	// Keys are the keys the node gave up that ran elsewhere.
	Keys []string `json:"keys"`
}

// Outage is the leader's verdict that most keys fail on every node: the
// upstream is down, not a key or a node. Keys then stay where they are and
// retry with backoff; nothing is quarantined and no node is marked
// unhealthy.
type Outage struct {
	Since time.Time `json:"since"`
	// FailingKeys counts the keys given up on some node or quarantined.
	FailingKeys int `json:"failing_keys"`
}

// Defaults of WithQuarantine.
const (
	DefaultQuarantineFirst = 10 * time.Second
	DefaultQuarantineMax   = 10 * time.Minute
)

// quarantineSpread is how many distinct nodes a key must have failed on
// before it is quarantined (fewer when fewer nodes may run it).
const quarantineSpread = 3

// unhealthyKeys is how many distinct keys must fail on a node, with none
// running there, before the node is marked unhealthy.
const unhealthyKeys = 2

// quarantineRecord is a Quarantine in Redis (<p>:quarantine, key → JSON).
type quarantineRecord struct {
	Since int64    `json:"t"` // server ms, when this quarantine began
	Until int64    `json:"u"` // server ms
	Level int      `json:"l"`
	Nodes []string `json:"n,omitempty"`
	Err   string   `json:"e,omitempty"`
}

// unhealthyRecord is an Unhealthy in Redis (<p>:unhealthy, node → JSON). It
// holds for one session of the node: a restarted node starts healthy.
type unhealthyRecord struct {
	Until   int64    `json:"u"` // server ms
	Level   int      `json:"l"`
	Session string   `json:"s"`
	Keys    []string `json:"k,omitempty"`
}

// outageRecord is an Outage in Redis (<p>:outage, JSON).
type outageRecord struct {
	Since int64 `json:"t"` // server ms
	Keys  int   `json:"k"`
}

// avoidEntry is one node's avoidance of a key; until 0 means the node does
// not know the key, otherwise it gave the key up until then.
type avoidEntry struct {
	node  string
	until int64
}

// failureFacts is what the leader read for a review.
type failureFacts struct {
	now        int64                   // server ms
	avoid      map[string][]avoidEntry // live entries only
	quarantine map[string]quarantineRecord
	unhealthy  map[string]unhealthyRecord
	outage     *outageRecord
	sessions   map[string]string // node → its live session
}

// reviewInput is everything the pure review needs.
type reviewInput struct {
	failureFacts
	keys   []string // configured
	nodes  []Node   // that may take keys
	prev   Assignment
	states map[string]keyRecord // of the keys in lookups()
	first  time.Duration
	max    time.Duration
	// cooldown is how long a give-up lasts; it dates each give-up.
	cooldown time.Duration
	// poll is how often a key or node on probation is looked at.
	poll time.Duration
}

// verdict is what the review decided.
type verdict struct {
	keys  []string            // to balance: quarantined keys left out
	avoid map[string][]string // key → nodes that must not get it
	// Records to write (nil values delete).
	setQuarantine map[string]*quarantineRecord
	setUnhealthy  map[string]*unhealthyRecord
	outage        *outageRecord // the outage record after the review, nil: none
	// wake is when to review again (server ms), 0: no need.
	wake int64
	// For logs and gauges.
	quarantined []string // keys newly quarantined
	released    []string // keys that left quarantine (ran, or removed)
	sick        []string // nodes newly found unhealthy
	healed      []string // nodes healthy again
	underBan    int      // quarantine records in force
	unhealthy   int      // unhealthy records in force
}

// gaveUp returns the nodes that gave key up (live entries).
func (f *failureFacts) gaveUp(key string) []avoidEntry {
	var out []avoidEntry
	for _, e := range f.avoid[key] {
		if e.until > 0 {
			out = append(out, e)
		}
	}
	return out
}

// runsOn reports the live node a state record says runs key, or "".
func (in *reviewInput) runsOn(key string) string {
	r, ok := in.states[key]
	if !ok || r.State != KeyRunning || r.Session == "" || in.sessions[r.Node] != r.Session {
		return ""
	}
	return r.Node
}

// lookups returns the keys whose published state a review needs: those
// given up somewhere, those on probation, and those assigned to nodes that
// may be unhealthy.
func lookups(f *failureFacts, prev Assignment) []string {
	set := map[string]bool{}
	suspects := map[string]bool{}
	gaveUp := map[string]int{}
	for key := range f.avoid {
		for _, e := range f.gaveUp(key) {
			set[key] = true
			gaveUp[e.node]++
		}
	}
	for key, q := range f.quarantine {
		if f.now >= q.Until {
			set[key] = true
		}
	}
	for node, n := range gaveUp {
		if n >= unhealthyKeys {
			suspects[node] = true
		}
	}
	for node := range f.unhealthy {
		suspects[node] = true
	}
	if len(suspects) > 0 {
		for key, node := range prev {
			if suspects[node] {
				set[key] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for key := range set {
		out = append(out, key)
	}
	slices.Sort(out)
	return out
}

// backoff is the quarantine or unhealthy wait at level (from 1).
func (in *reviewInput) backoff(level int) int64 {
	// Doubled step by step up to the cap: a shift by the level could wrap
	// around to a shorter wait.
	d := in.first
	for i := 1; i < level && d < in.max; i++ {
		if d > in.max/2 {
			return in.max.Milliseconds()
		}
		d *= 2
	}
	return min(d, in.max).Milliseconds()
}

// review decides quarantines, unhealthy nodes and outages. It is pure. Its
// phases: forget the records of what is gone, detect an outage (then
// nothing else), move given-up keys, quarantine keys, judge nodes.
func review(in *reviewInput) *verdict {
	v := &verdict{
		avoid:         map[string][]string{},
		setQuarantine: map[string]*quarantineRecord{},
		setUnhealthy:  map[string]*unhealthyRecord{},
	}
	live := make(map[string]bool, len(in.nodes))
	for _, n := range in.nodes {
		live[n.ID] = true
	}
	v.forgetGone(in, live)
	if v.detectOutage(in, live) {
		return v
	}

	// Give-ups move keys, unless the key is quarantined.
	for key := range in.avoid {
		for _, e := range in.gaveUp(key) {
			v.avoid[key] = append(v.avoid[key], e.node)
		}
	}
	quarantined := v.reviewKeys(in, live)
	for _, key := range in.keys {
		if !quarantined[key] {
			v.keys = append(v.keys, key)
		}
	}
	v.underBan = len(quarantined)
	v.reviewNodes(in)
	slices.Sort(v.quarantined)
	slices.Sort(v.released)
	slices.Sort(v.sick)
	slices.Sort(v.healed)
	return v
}

// forgetGone drops the quarantines of keys no longer configured and the
// unhealthy records of nodes gone or rejoined, and keeps the avoidances an
// operator set (those without an end).
func (v *verdict) forgetGone(in *reviewInput, live map[string]bool) {
	configured := make(map[string]bool, len(in.keys))
	for _, key := range in.keys {
		configured[key] = true
	}
	for key := range in.quarantine {
		if !configured[key] {
			v.setQuarantine[key] = nil
			v.released = append(v.released, key)
		}
	}
	for node, u := range in.unhealthy {
		if !live[node] || in.sessions[node] != u.Session {
			v.setUnhealthy[node] = nil
		}
	}
	for key, es := range in.avoid {
		for _, e := range es {
			if e.until == 0 {
				v.avoid[key] = append(v.avoid[key], e.node)
			}
		}
	}
}

// detectOutage reports an outage: most keys fail somewhere and run
// nowhere. Then nothing moves because of a failure, nothing is quarantined
// and no node is unhealthy: every node keeps its keys and retries them with
// its backoff.
//
// A give-up lasts its cooldown, but a key given up by one node may run on
// another (it moved before the outage began), and a key that starts to run
// again publishes no event: so an outage is looked at again every poll,
// and ends once most keys run.
func (v *verdict) detectOutage(in *reviewInput, live map[string]bool) bool {
	failing := 0
	for _, key := range in.keys {
		_, q := in.quarantine[key]
		gaveUp := slices.ContainsFunc(in.gaveUp(key), func(e avoidEntry) bool { return live[e.node] })
		if (q || gaveUp) && in.runsOn(key) == "" {
			failing++
		}
	}
	if failing < 2 || 2*failing < len(in.keys) {
		return false
	}
	v.outage = in.outage
	if v.outage == nil {
		v.outage = &outageRecord{Since: in.now}
	}
	v.outage.Keys = failing
	v.keys = in.keys
	v.wake = in.now + in.poll.Milliseconds()
	return true
}

// reviewKeys quarantines keys that failed on enough distinct nodes, and keys
// on probation that failed again; it releases those that ran. It returns
// the keys under quarantine after the review.
func (v *verdict) reviewKeys(in *reviewInput, live map[string]bool) map[string]bool {
	eligible := func(key string) int {
		n := 0
		for _, node := range in.nodes {
			if !slices.ContainsFunc(in.avoid[key], func(e avoidEntry) bool { return e.node == node.ID && e.until == 0 }) {
				n++
			}
		}
		return n
	}
	quarantined := map[string]bool{}
	for _, key := range in.keys {
		q, held := in.quarantine[key]
		gave := in.gaveUp(key)
		switch {
		case held && in.now < q.Until:
			quarantined[key] = true
			v.wake = earliest(v.wake, q.Until)
			continue
		case held && in.runsOn(key) != "":
			v.setQuarantine[key] = nil
			v.released = append(v.released, key)
			continue
		case held:
			// On probation: a give-up since the quarantine ended fails it.
			again := slices.ContainsFunc(gave, func(e avoidEntry) bool {
				return e.until-in.cooldown.Milliseconds() >= q.Until
			})
			if !again {
				v.wake = earliest(v.wake, in.now+in.poll.Milliseconds())
				continue
			}
			q.Level++
		default:
			// Give-ups count while their nodes are live: the nodes that
			// are left decide, not the nodes that went.
			gaveLive := 0
			for _, e := range gave {
				if live[e.node] {
					gaveLive++
				}
			}
			need := min(quarantineSpread, eligible(key))
			if need == 0 || gaveLive < need {
				continue
			}
			q = quarantineRecord{Level: 1}
		}
		q.Since, q.Until = in.now, in.now+in.backoff(q.Level)
		q.Nodes = nil
		for _, e := range gave {
			q.Nodes = append(q.Nodes, e.node)
		}
		slices.Sort(q.Nodes)
		if r, ok := in.states[key]; ok && r.Err != "" {
			q.Err = r.Err
		}
		v.setQuarantine[key] = &q
		v.quarantined = append(v.quarantined, key)
		quarantined[key] = true
		v.wake = earliest(v.wake, q.Until)
	}
	return quarantined
}

// reviewNodes finds unhealthy nodes: several keys given up, none running
// there, and some of them running elsewhere: the node, not the keys, is at
// fault. It also heals them and puts them on probation. It runs after
// reviewKeys: a probe is chosen among the keys left to balance.
func (v *verdict) reviewNodes(in *reviewInput) {
	gaveUpOn := map[string][]avoidEntry{} // node → its give-ups, keyed by entry.node = key
	for key := range in.avoid {
		for _, e := range in.gaveUp(key) {
			gaveUpOn[e.node] = append(gaveUpOn[e.node], avoidEntry{node: key, until: e.until})
		}
	}
	runsHere := map[string]bool{}
	for key := range in.states {
		if node := in.runsOn(key); node != "" {
			runsHere[node] = true
		}
	}
	for _, n := range in.nodes {
		node := n.ID
		u, held := in.unhealthy[node]
		if held && in.sessions[node] != u.Session {
			held = false
		}
		switch {
		case held && in.now < u.Until:
			v.wake = earliest(v.wake, u.Until)
			v.unhealthy++
			banAll(v.avoid, in.keys, node, "")
			continue
		case held && runsHere[node]:
			v.setUnhealthy[node] = nil
			v.healed = append(v.healed, node)
			continue
		case held:
			again := slices.ContainsFunc(gaveUpOn[node], func(e avoidEntry) bool {
				return e.until-in.cooldown.Milliseconds() >= u.Until
			})
			if !again {
				// On probation: one key, the probe.
				v.unhealthy++
				banAll(v.avoid, v.keys, node, probeKey(in, v, node))
				v.wake = earliest(v.wake, in.now+in.poll.Milliseconds())
				continue
			}
			u.Level++
		default:
			gave := gaveUpOn[node]
			if len(gave) < unhealthyKeys || runsHere[node] {
				continue
			}
			elsewhere := slices.ContainsFunc(gave, func(e avoidEntry) bool {
				on := in.runsOn(e.node)
				return on != "" && on != node
			})
			if !elsewhere {
				v.suspect(in, node)
				continue
			}
			u = unhealthyRecord{Level: 1, Session: in.sessions[node]}
		}
		u.Until = in.now + in.backoff(u.Level)
		u.Keys = nil
		for _, e := range gaveUpOn[node] {
			u.Keys = append(u.Keys, e.node)
		}
		slices.Sort(u.Keys)
		v.setUnhealthy[node] = &u
		v.sick = append(v.sick, node)
		v.unhealthy++
		v.wake = earliest(v.wake, u.Until)
		banAll(v.avoid, in.keys, node, "")
	}
}

// suspect holds a node undecided until the keys it gave up have been tried
// elsewhere: it keeps what it has but gets nothing new, so that running
// keys are not moved onto it meanwhile.
func (v *verdict) suspect(in *reviewInput, node string) {
	for _, key := range in.keys {
		if in.prev[key] != node && !slices.Contains(v.avoid[key], node) {
			v.avoid[key] = append(v.avoid[key], node)
		}
	}
	v.wake = earliest(v.wake, in.now+in.poll.Milliseconds())
}

// probeKey picks the one key an unhealthy node on probation may take: one
// it still holds if any, otherwise the first key it does not avoid.
func probeKey(in *reviewInput, v *verdict, node string) string {
	var best string
	for _, key := range v.keys {
		if slices.Contains(v.avoid[key], node) {
			continue
		}
		if in.prev[key] == node {
			return key
		}
		if best == "" || key < best {
			best = key
		}
	}
	return best
}

// banAll adds node to the avoidances of every key but except.
func banAll(avoid map[string][]string, keys []string, node, except string) {
	for _, key := range keys {
		if key != except && !slices.Contains(avoid[key], node) {
			avoid[key] = append(avoid[key], node)
		}
	}
}

func earliest(a, b int64) int64 {
	if a == 0 {
		return b
	}
	return min(a, b)
}

// readFailures reads the avoidances, quarantines, unhealthy nodes, outage
// and live sessions in one round trip.
func readFailures(ctx context.Context, client rueidis.Client, k keyspace, now int64) (*failureFacts, error) {
	b := client.B()
	res := client.DoMulti(ctx,
		b.Hgetall().Key(k.avoid).Build(),
		b.Hgetall().Key(k.quarantine).Build(),
		b.Hgetall().Key(k.unhealthy).Build(),
		b.Get().Key(k.outage).Build(),
		b.Hgetall().Key(k.nodes).Build())
	f := &failureFacts{now: now, avoid: map[string][]avoidEntry{}, quarantine: map[string]quarantineRecord{},
		unhealthy: map[string]unhealthyRecord{}}
	raw, err := res[0].AsStrMap()
	if err != nil {
		return nil, fmt.Errorf("read avoidances: %w", err)
	}
	for key, val := range raw {
		for _, part := range strings.Fields(val) {
			node, until, ok := strings.Cut(part, "=")
			if u, err := strconv.ParseInt(until, 10, 64); ok && err == nil && (u == 0 || u > now) {
				f.avoid[key] = append(f.avoid[key], avoidEntry{node, u})
			}
		}
	}
	qs, err := res[1].AsStrMap()
	if err != nil {
		return nil, fmt.Errorf("read quarantines: %w", err)
	}
	for key, val := range qs {
		var q quarantineRecord
		if json.Unmarshal([]byte(val), &q) == nil {
			f.quarantine[key] = q
		}
	}
	us, err := res[2].AsStrMap()
	if err != nil {
		return nil, fmt.Errorf("read unhealthy nodes: %w", err)
	}
	for node, val := range us {
		var u unhealthyRecord
		if json.Unmarshal([]byte(val), &u) == nil {
			f.unhealthy[node] = u
		}
	}
	if val, err := res[3].ToString(); err == nil {
		var o outageRecord
		if json.Unmarshal([]byte(val), &o) == nil {
			f.outage = &o
		}
	}
	rec, err := res[4].AsStrMap()
	if err != nil {
		return nil, fmt.Errorf("read sessions: %w", err)
	}
	f.sessions = sessionsIn(rec)
	return f, nil
}

// readStates reads the published states of keys: their records, or what
// their owner entries say (see keyspace).
func readStates(ctx context.Context, client rueidis.Client, k keyspace, look []string) (map[string]keyRecord, error) {
	out := map[string]keyRecord{}
	if len(look) == 0 {
		return out, nil
	}
	// Pages of bounded commands, in one round trip.
	var cmds rueidis.Commands
	for chunk := range slices.Chunk(look, scanPage) {
		cmds = append(cmds, client.B().Hmget().Key(k.state).Field(chunk...).Build(),
			client.B().Hmget().Key(k.owner).Field(chunk...).Build())
	}
	res := client.DoMulti(ctx, cmds...)
	for c, chunk := 0, look; len(chunk) > 0; c += 2 {
		page := chunk[:min(len(chunk), scanPage)]
		chunk = chunk[len(page):]
		vals, err := res[c].ToArray()
		if err != nil {
			return nil, fmt.Errorf("read key states: %w", err)
		}
		owners, err := res[c+1].ToArray()
		if err != nil {
			return nil, fmt.Errorf("read key owners: %w", err)
		}
		for i, key := range page {
			s, err := vals[i].ToString()
			var r keyRecord
			if err == nil && json.Unmarshal([]byte(s), &r) == nil {
				out[key] = r
			} else if v, err := owners[i].ToString(); err == nil {
				if o, ok := parseOwner(v); ok {
					out[key] = o.implicit
				}
			}
		}
	}
	return out, nil
}

// recordVerdict writes what the review changed and logs it.
func (e *elector) recordVerdict(ctx context.Context, f *failureFacts, v *verdict) error {
	b := e.client.B()
	var cmds rueidis.Commands
	var del []string
	for key, q := range v.setQuarantine {
		if q == nil {
			del = append(del, key)
			continue
		}
		raw, _ := json.Marshal(q)
		cmds = append(cmds, b.Hset().Key(e.k.quarantine).FieldValue().FieldValue(key, string(raw)).Build())
	}
	if len(del) > 0 {
		cmds = append(cmds, b.Hdel().Key(e.k.quarantine).Field(del...).Build())
	}
	del = del[:0]
	for node, u := range v.setUnhealthy {
		if u == nil {
			del = append(del, node)
			continue
		}
		raw, _ := json.Marshal(u)
		cmds = append(cmds, b.Hset().Key(e.k.unhealthy).FieldValue().FieldValue(node, string(raw)).Build())
	}
	if len(del) > 0 {
		cmds = append(cmds, b.Hdel().Key(e.k.unhealthy).Field(del...).Build())
	}
	switch {
	case v.outage != nil && (f.outage == nil || f.outage.Keys != v.outage.Keys):
		raw, _ := json.Marshal(v.outage)
		cmds = append(cmds, b.Set().Key(e.k.outage).Value(string(raw)).Build())
	case v.outage == nil && f.outage != nil:
		cmds = append(cmds, b.Del().Key(e.k.outage).Build())
	}
	ctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	if len(cmds) > 0 {
		for _, r := range e.client.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				return fmt.Errorf("record failure review: %w", err)
			}
		}
	}
	// A key out of quarantine starts afresh: the give-ups that led to it
	// must not quarantine it again.
	if len(v.released) > 0 {
		if err := e.db().forgive(ctx, v.released); err != nil {
			return fmt.Errorf("record failure review: %w", err)
		}
	}
	e.recordVerdictHistory(ctx, v, f)
	for _, key := range v.quarantined {
		q := v.setQuarantine[key]
		e.log.Warn("quarantining a key that failed on every node it was given to; no node runs it until it is tried again",
			"key", key, "nodes", q.Nodes, "level", q.Level, "retry_in", time.Duration(q.Until-f.now)*time.Millisecond, "err", q.Err)
	}
	for _, key := range v.released {
		e.log.Info("key left quarantine", "key", key)
	}
	for _, node := range v.sick {
		u := v.setUnhealthy[node]
		e.log.Warn("node marked unhealthy: keys fail there that run on other nodes; it gets no keys until a probe runs",
			"node", node, "keys", u.Keys, "level", u.Level, "probe_in", time.Duration(u.Until-f.now)*time.Millisecond)
	}
	for _, node := range v.healed {
		e.log.Info("node healthy again: its probe key runs", "node", node)
	}
	switch {
	case v.outage != nil && f.outage == nil:
		e.log.Warn("outage: most keys fail on every node; keys stay where they are and retry with backoff",
			"failing_keys", v.outage.Keys)
	case v.outage == nil && f.outage != nil:
		e.log.Info("outage over", "lasted", time.Duration(f.now-f.outage.Since)*time.Millisecond)
	}
	return nil
}

// readVerdicts adds the leader's failure verdicts to a status: quarantined
// keys, unhealthy nodes and an outage.
func readVerdicts(ctx context.Context, client rueidis.Client, k keyspace, st *Status, sessions map[string]string) error {
	b := client.B()
	res := client.DoMulti(ctx,
		b.Hgetall().Key(k.quarantine).Build(),
		b.Hgetall().Key(k.unhealthy).Build(),
		b.Get().Key(k.outage).Build())
	qs, err := res[0].AsStrMap()
	if err != nil {
		return fmt.Errorf("%w: read quarantines: %w", ErrRedis, err)
	}
	st.Quarantined = []Quarantine{}
	for key, val := range qs {
		var q quarantineRecord
		if json.Unmarshal([]byte(val), &q) != nil {
			continue
		}
		st.Quarantined = append(st.Quarantined, Quarantine{Key: key, Level: q.Level, Since: time.UnixMilli(q.Since).UTC(),
			Until: time.UnixMilli(q.Until).UTC(), Nodes: q.Nodes, LastError: q.Err})
		// While it waits, no node holds it: the quarantine is its state.
		if ks, ok := st.Keys[key]; (!ok || !ks.Live) && st.ServerTime.UnixMilli() < q.Until {
			st.Keys[key] = KeyStatus{State: KeyQuarantined, Live: true, Since: time.UnixMilli(q.Since).UTC(),
				NextRetry: time.UnixMilli(q.Until).UTC(), LastError: q.Err}
		}
	}
	slices.SortFunc(st.Quarantined, func(a, b Quarantine) int { return strings.Compare(a.Key, b.Key) })
	us, err := res[1].AsStrMap()
	if err != nil {
		return fmt.Errorf("%w: read unhealthy nodes: %w", ErrRedis, err)
	}
	for i, n := range st.Nodes {
		var u unhealthyRecord
		if val, ok := us[n.ID]; ok && json.Unmarshal([]byte(val), &u) == nil && u.Session == sessions[n.ID] {
			st.Nodes[i].Unhealthy = &Unhealthy{Level: u.Level, Until: time.UnixMilli(u.Until).UTC(), Keys: u.Keys}
		}
	}
	if val, err := res[2].ToString(); err == nil {
		var o outageRecord
		if json.Unmarshal([]byte(val), &o) == nil {
			st.Outage = &Outage{Since: time.UnixMilli(o.Since).UTC(), FailingKeys: o.Keys}
		}
	} else if !rueidis.IsRedisNil(err) {
		return fmt.Errorf("%w: read outage: %w", ErrRedis, err)
	}
	return nil
}
