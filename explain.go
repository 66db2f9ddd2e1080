package dim

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Why a key is where it is. The leader records, for every key it moves
// between nodes (not for a first placement), when and why, in <p>:why; a
// removed key's record goes. Explain reads it with everything else Redis
// holds of one key.

// Reasons for a move, as recorded.
const (
	MoveNodeGone    = "its node left, crashed, was fenced or stopped"
	MoveNodeDrained = "its node was drained"
	MoveGaveUp      = "its node gave it up after failed creates"
	MoveUnknown     = "its node's getConfig does not return it"
	MoveUnhealthy   = "its node is unhealthy"
	MoveJoinHold    = "a joiner in a rollout took its leaving node's keys"
	MoveQuarantined = "quarantined: it failed on every node it was given to"
	MovePinned      = "pinned by an operator to its new node"
	MoveRequirement = "its node does not meet the key's requirements"
	MoveUnplaceable = "unplaceable: no live node meets its requirements, or all that do are at their caps"
	MoveBalance     = "balance"
)

// whyRecord is one move in <p>:why, key → JSON.
type whyRecord struct {
	At      int64  `json:"t"` // ms, the leader's clock
	From    string `json:"f"`
	To      string `json:"o,omitempty"`
	Reason  string `json:"r"`
	Trigger string `json:"g,omitempty"`
}

// moveReasons says why each change of a rebalance happens: the node a key
// leaves is gone or drained, it avoids the key, or the key moves for
// balance (a join, a weight change, a rebalance request).
func moveReasons(changes []change, p *placement, trigger string) map[string]whyRecord {
	taking := map[string]bool{}
	labels := map[string]map[string]string{}
	unplaceable := make(map[string]bool, len(p.unplaceable))
	for _, key := range p.unplaceable {
		unplaceable[key] = true
	}
	for _, n := range p.nodes {
		taking[n.ID] = true
		labels[n.ID] = n.Labels
	}
	quarantined := map[string]bool{}
	for _, key := range p.verdict.quarantined {
		quarantined[key] = true
	}
	now := time.Now().UnixMilli()
	out := make(map[string]whyRecord, len(changes))
	for _, c := range changes {
		if c.from == "" {
			continue // a first placement: nothing moved
		}
		r := whyRecord{At: now, From: c.from, To: c.to, Trigger: trigger}
		_, drained := p.holds.drained[c.from]
		switch {
		case c.to == "" && quarantined[c.key]:
			r.Reason = MoveQuarantined
		case c.to == "" && unplaceable[c.key]:
			r.Reason = MoveUnplaceable
		case c.to == "":
			continue // removed from the configs: its record goes
		case drained:
			r.Reason = MoveNodeDrained
		case slices.Contains(p.joined, c.to) && !taking[c.from]:
			r.Reason = MoveJoinHold
		case !taking[c.from]:
			r.Reason = MoveNodeGone
		case avoidsAs(p.facts, c.key, c.from, true):
			r.Reason = MoveGaveUp
		case avoidsAs(p.facts, c.key, c.from, false):
			r.Reason = MoveUnknown
		case slices.Contains(p.verdict.avoid[c.key], c.from):
			r.Reason = MoveUnhealthy
		case p.pins[c.key] == c.to:
			r.Reason = MovePinned
		case !meets(labels[c.from], p.placements[c.key].Require):
			r.Reason = MoveRequirement
		default:
			r.Reason = MoveBalance
		}
		out[c.key] = r
	}
	return out
}

// avoidsAs reports whether node avoids key because it gave it up (gaveUp)
// or because it does not know it.
func avoidsAs(f *failureFacts, key, node string, gaveUp bool) bool {
	for _, e := range f.avoid[key] {
		if e.node == node && (e.until > 0) == gaveUp {
			return true
		}
	}
	return false
}

// whyCmds writes the reasons of a rebalance's moves and forgets removed
// keys. They are sent best effort: an explanation is not worth failing a
// rebalance for.
func (e *env) whyCmds(changes []change, why map[string]whyRecord) rueidis.Commands {
	b := e.client.B()
	var cmds rueidis.Commands
	set := b.Hset().Key(e.k.why).FieldValue()
	var gone []string
	n := 0
	for _, c := range changes {
		r, ok := why[c.key]
		if !ok {
			if c.to == "" {
				gone = append(gone, c.key)
			}
			continue
		}
		raw, _ := json.Marshal(r)
		set = set.FieldValue(c.key, string(raw))
		n++
	}
	if n > 0 {
		cmds = append(cmds, set.Build())
	}
	if len(gone) > 0 {
		cmds = append(cmds, b.Hdel().Key(e.k.why).Field(gone...).Build())
	}
	return cmds
}

// Explanation is everything Redis holds of one key: where it is assigned,
// who runs it with which token, what it is doing, why it is where it is, and
// what keeps it off nodes.
type Explanation struct {
	Key string `json:"key"`
	// AssignedTo is the node the key is assigned to, "" if none.
	AssignedTo string `json:"assigned_to"`
	// Owner is who claimed it, nil if nobody holds it.
	Owner *Owner `json:"owner,omitempty"`
	// State is what the node that holds it says it does, nil if none.
	State *KeyStatus `json:"state,omitempty"`
	// LastMove is its last move between nodes and why; nil if it has not
	// moved since it was first placed (or since the record began).
	LastMove *KeyMove `json:"last_move,omitempty"`
	// Avoided lists the nodes that may not get the key, and why.
	Avoided []Avoidance `json:"avoided"`
	// Quarantine is set while the key is quarantined.
	Quarantine *Quarantine `json:"quarantine,omitempty"`
	// Drained, Frozen and Restarting name what holds placement back.
	Drained []string `json:"drained,omitempty"`
	Frozen  bool     `json:"frozen"`
	// Pinned is the node an operator pinned the key to (see Pin), "" if
	// none; the pin holds while that node is live and meets the key's
	// requirements.
	Pinned string `json:"pinned,omitempty"`
	// Unplaceable is set when, at the leader's last rebalance, no live node
	// could take the key (among the first 100 such keys recorded).
	Unplaceable bool `json:"unplaceable,omitempty"`
	// Placement is the key's placement (see WithPlacement) as the leader
	// last stored it; nil for none: any node, cost 1.
	Placement *Placement `json:"placement,omitempty"`
	// Qualifying lists the live nodes that take keys and meet the key's
	// requirements; nil when it requires nothing.
	Qualifying []string `json:"qualifying,omitempty"`
	// PlacedBy says which rules of [BalanceWith] decide where the key is,
	// highest first: a pin, a requirement (and who meets it), a spread or
	// anti-affinity, a preference, a cost; or that nothing constrains it.
	PlacedBy []string `json:"placed_by"`
}

// KeyMove is one move of a key.
type KeyMove struct {
	At      time.Time `json:"at"`
	From    string    `json:"from"`
	To      string    `json:"to"`
	Reason  string    `json:"reason"`
	Trigger string    `json:"trigger,omitempty"`
}

// Avoidance is a node that may not get a key.
type Avoidance struct {
	Node string `json:"node"`
	// Why is "gave up" (until Until) or "unknown" (its getConfig does not
	// return the key).
	Why   string    `json:"why"`
	Until time.Time `json:"until,omitzero"`
}

// Explain tells everything Redis holds of one key (see [Explanation]). A key Redis knows nothing of gives an error wrapping
// [ErrUnknownKey].
func Explain(ctx context.Context, client rueidis.Client, svc Service, key string) (*Explanation, error) {
	k, err := svc.keys()
	if err != nil {
		return nil, err
	}
	b := client.B()
	res := client.DoMulti(ctx,
		b.Hget().Key(k.assign).Field(key).Build(),
		b.Hget().Key(k.owner).Field(key).Build(),
		b.Hget().Key(k.state).Field(key).Build(),
		b.Hget().Key(k.why).Field(key).Build(),
		b.Hget().Key(k.avoid).Field(key).Build(),
		b.Hget().Key(k.quarantine).Field(key).Build(),
		b.Hgetall().Key(k.nodes).Build(),
		b.Hgetall().Key(k.drains).Build(),
		b.Pttl().Key(k.freeze).Build(),
		b.Time().Build(),
		b.Hget().Key(k.pins).Field(key).Build(),
		b.Get().Key(k.unplace).Build(),
		b.Hgetall().Key(k.labels).Build(),
		b.Hget().Key(k.placing).Field(key).Build())
	for _, r := range res {
		if err := r.Error(); err != nil && !rueidis.IsRedisNil(err) {
			return nil, fmt.Errorf("%w: explain %q: %w", ErrRedis, key, err)
		}
	}
	str := func(i int) string { v, _ := res[i].ToString(); return v }
	rec, _ := res[6].AsStrMap()
	sessions := sessionsIn(rec)
	tm, _ := res[9].AsStrSlice()
	var now int64
	if len(tm) == 2 {
		sec, _ := strconv.ParseInt(tm[0], 10, 64)
		usec, _ := strconv.ParseInt(tm[1], 10, 64)
		now = sec*1000 + usec/1000
	}
	e := &Explanation{Key: key, AssignedTo: str(0), Avoided: []Avoidance{}}
	o, owned := parseOwner(str(1))
	if owned {
		e.Owner = &Owner{Node: o.node, Token: o.token, Live: sessions[o.node] == o.session}
	}
	var r keyRecord
	if v := str(2); v != "" && json.Unmarshal([]byte(v), &r) == nil {
		ks := keyStatusOf(r, sessions)
		e.State = &ks
	} else if owned {
		// Without a record, the owner entry says what the key does.
		ks := keyStatusOf(o.implicit, sessions)
		e.State = &ks
	}
	var w whyRecord
	if v := str(3); v != "" && json.Unmarshal([]byte(v), &w) == nil {
		e.LastMove = &KeyMove{At: time.UnixMilli(w.At).UTC(), From: w.From, To: w.To, Reason: w.Reason, Trigger: w.Trigger}
	}
	for _, part := range strings.Fields(str(4)) {
		node, until, _ := strings.Cut(part, "=")
		u, err := strconv.ParseInt(until, 10, 64)
		switch {
		case err != nil:
		case u == 0:
			e.Avoided = append(e.Avoided, Avoidance{Node: node, Why: "unknown"})
		case u > now:
			e.Avoided = append(e.Avoided, Avoidance{Node: node, Why: "gave up", Until: time.UnixMilli(u).UTC()})
		}
	}
	var q quarantineRecord
	if v := str(5); v != "" && json.Unmarshal([]byte(v), &q) == nil {
		e.Quarantine = &Quarantine{Key: key, Level: q.Level, Since: time.UnixMilli(q.Since).UTC(),
			Until: time.UnixMilli(q.Until).UTC(), Nodes: q.Nodes, LastError: q.Err}
	}
	drains, _ := res[7].AsStrMap()
	for node, v := range drains {
		if u, err := strconv.ParseInt(v, 10, 64); err == nil && u > now {
			e.Drained = append(e.Drained, node)
		}
	}
	slices.Sort(e.Drained)
	pttl, _ := res[8].AsInt64()
	e.Frozen = pttl > 0
	e.Pinned = str(10)
	var u unplaceableRecord
	if v := str(11); v != "" && json.Unmarshal([]byte(v), &u) == nil {
		e.Unplaceable = slices.Contains(u.Keys, key)
	}
	if class := str(13); class != "" {
		v, err := client.Do(ctx, b.Hget().Key(k.pclasses).Field(class).Build()).ToString()
		if err != nil && !rueidis.IsRedisNil(err) {
			return nil, fmt.Errorf("%w: explain %q: %w", ErrRedis, key, err)
		}
		var r placingRecord
		if v != "" && json.Unmarshal([]byte(v), &r) == nil {
			p := r.placement()
			e.Placement = &p
		}
	}
	if e.AssignedTo == "" && e.Owner == nil && e.State == nil && e.LastMove == nil && e.Quarantine == nil && len(e.Avoided) == 0 &&
		e.Pinned == "" && !e.Unplaceable && e.Placement == nil {
		return nil, fmt.Errorf("%w: %q in %q", ErrUnknownKey, key, svc.Name)
	}
	labels, _ := res[12].AsStrMap()
	e.placedBy(takers(rec, now, e.Drained), labels)
	return e, nil
}

// takers returns the nodes of a membership record (a HGETALL of it) that
// are live and take keys at server time now: a weight above 0, not drained.
func takers(rec map[string]string, now int64, drained []string) []string {
	var out []string
	for f, v := range rec {
		node, ok := strings.CutPrefix(f, "e:")
		if !ok {
			continue
		}
		exp, err := strconv.ParseFloat(v, 64)
		w, _ := strconv.Atoi(rec["w:"+node])
		if err == nil && int64(exp) > now && w > 0 && !slices.Contains(drained, node) {
			out = append(out, node)
		}
	}
	slices.Sort(out)
	return out
}

// placedBy says which rules place the key, from its placement, its pin and
// the labels (published JSON by node) of the nodes that take keys.
func (e *Explanation) placedBy(nodes []string, published map[string]string) {
	var p Placement
	if e.Placement != nil {
		p = *e.Placement
	}
	labels := make(map[string]map[string]string, len(nodes))
	for _, n := range nodes {
		l := maps.Clone(parseNodeLabels(published[n]).Labels)
		if l == nil {
			l = map[string]string{}
		}
		l[LabelNode] = n
		labels[n] = l
	}
	if len(p.Require) > 0 {
		e.Qualifying = []string{}
		for _, n := range nodes {
			if meets(labels[n], p.Require) {
				e.Qualifying = append(e.Qualifying, n)
			}
		}
	}
	e.PlacedBy = []string{}
	var pinLine []string // a pin that does not hold
	if pin := e.Pinned; pin != "" {
		_, live := labels[pin]
		switch {
		case !live:
			e.PlacedBy = append(e.PlacedBy, fmt.Sprintf("pinned to %s by an operator, but %s is not live or takes no keys: placed as if unpinned", pin, pin))
		case !meets(labels[pin], p.Require):
			e.PlacedBy = append(e.PlacedBy, fmt.Sprintf("pinned to %s by an operator, but %s does not meet its requirements: placed as if unpinned", pin, pin))
		default:
			e.PlacedBy = append(e.PlacedBy, "pinned by an operator to "+pin)
			return
		}
		pinLine = e.PlacedBy
	}
	if len(p.Require) > 0 {
		req := requirementText(p.Require)
		switch q := e.Qualifying; len(q) {
		case 0:
			e.PlacedBy = append(e.PlacedBy, "required "+req+": no live node qualifies, so it runs nowhere")
		case 1:
			e.PlacedBy = append(e.PlacedBy, "required "+req+": only "+q[0]+" qualifies")
		default:
			e.PlacedBy = append(e.PlacedBy, "required "+req+": "+strings.Join(q[:len(q)-1], ", ")+" and "+q[len(q)-1]+" qualify")
		}
		if len(e.Qualifying) > 0 && e.Unplaceable {
			e.PlacedBy = append(e.PlacedBy, "every node that qualifies is at its cap, so it runs nowhere")
		}
	} else if e.Unplaceable {
		e.PlacedBy = append(e.PlacedBy, "every node is at its cap, so it runs nowhere")
	}
	group := "the keys of the same requirements, preferences and cost"
	if p.Group != "" {
		group = fmt.Sprintf("the keys of group %q", p.Group)
	}
	switch {
	case p.Spread == LabelNode:
		e.PlacedBy = append(e.PlacedBy, "kept apart from "+group+": one per node where balance allows")
	case p.Spread != "":
		e.PlacedBy = append(e.PlacedBy, fmt.Sprintf("spread over %s with %s", p.Spread, group))
	}
	if len(p.Prefer) > 0 {
		pref := requirementText(p.Prefer)
		switch on, ok := labels[e.AssignedTo]; {
		case ok && meets(on, p.Prefer):
			e.PlacedBy = append(e.PlacedBy, fmt.Sprintf("preferred %s: on %s, which has it", pref, e.AssignedTo))
		case e.AssignedTo != "":
			e.PlacedBy = append(e.PlacedBy, fmt.Sprintf("preferred %s, but balance or spread keep it on %s", pref, e.AssignedTo))
		}
	}
	if p.Cost > 1 {
		e.PlacedBy = append(e.PlacedBy, fmt.Sprintf("cost %d: balanced in cost units", p.Cost))
	}
	if len(e.PlacedBy) == len(pinLine) {
		e.PlacedBy = append(e.PlacedBy, "no constraint: any node may hold it, and it is where balance put it with the fewest moves")
	}
}

// requirementText writes a requirement or preference as name=value pairs
// in name order.
func requirementText(require map[string]string) string {
	parts := make([]string, 0, len(require))
	for _, name := range slices.Sorted(maps.Keys(require)) {
		parts = append(parts, name+"="+require[name])
	}
	return strings.Join(parts, ",")
}
