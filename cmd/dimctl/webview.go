package main

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/go-dim/dim"
)

// webView is one snapshot as the web page draws it: plain data, built from
// dim's Status (every key a cell) or, for services with more keys than
// -max-keys, from its bounded Summary (only the keys that do not run are
// cells). It holds no config content: dim's status has none, and a node's
// failing getConfig is shown without its message.
type webView struct {
	Service    string    `json:"service"`
	ServerTime time.Time `json:"server_time"`
	Leader     string    `json:"leader"`
	LeaderLive bool      `json:"leader_live"`
	Epoch      uint64    `json:"epoch"`
	// Keys counts the keys assigned and quarantined; Running those running
	// on live nodes.
	Keys    int `json:"keys"`
	Running int `json:"running"`
	// AtRisk counts the running keys on suspect nodes.
	AtRisk int `json:"at_risk"`
	// Full is true when every key is a cell; false when the service has
	// more than MaxKeys keys and the page shows only the keys that do not
	// run (read from the summary, whose cost does not grow with the keys).
	Full    bool      `json:"full"`
	MaxKeys int       `json:"max_keys"`
	Nodes   []webNode `json:"nodes"`
	// Gone are keys assigned to nodes that are no longer live members:
	// they run nowhere until the leader places them again.
	Gone []webCell `json:"gone"`
	// Attention lists the keys that do not run, quarantined ones included,
	// at most webAttentionLimit of them; AttentionMore says how many more.
	Attention     []webCell `json:"attention"`
	AttentionMore int       `json:"attention_more"`
	// Notes are service-wide facts: freeze, grace, outage, memory,
	// restarts, a failed rebalance.
	Notes []webNote `json:"notes"`
	// History is the newest part of the history stream, newest first;
	// HistoryError says why it is missing (an ACL without +xrevrange).
	History      []webEvent `json:"history"`
	HistoryError string     `json:"history_error,omitempty"`
	// Actions tells the page whether to show the action buttons.
	Actions bool `json:"actions"`
	// Error is set, and nothing else, when the last read failed: the page
	// keeps what it shows and says why it is stale.
	Error string    `json:"error,omitempty"`
	At    time.Time `json:"at"`
}

// webNode is one live node and the keys assigned to it.
type webNode struct {
	ID     string `json:"id"`
	Weight int    `json:"weight"`
	// State is dim's node state: active, pending, waiting, draining,
	// drained or suspect.
	State        string `json:"state"`
	LeaseLeftMS  int64  `json:"lease_left_ms"`
	TTLMS        int64  `json:"ttl_ms"`
	DrainedForMS int64  `json:"drained_for_ms,omitempty"`
	WaitingForMS int64  `json:"waiting_for_ms,omitempty"`
	// Unhealthy describes the leader's verdict on the node, "" if none.
	Unhealthy string `json:"unhealthy,omitempty"`
	// ConfigFailing is set while the node's getConfig fails; its message
	// is not shown (it may quote config content).
	ConfigFailing bool `json:"config_failing,omitempty"`
	Assigned      int  `json:"assigned"`
	Running       int  `json:"running"`
	// Cells are the node's keys; Hidden counts the keys assigned to it
	// that are not drawn (running keys of a service above -max-keys).
	Cells  []webCell `json:"cells"`
	Hidden int       `json:"hidden"`
}

// webCell is one key. State is the key's dim state (running, creating,
// failing, hung, stopping, unknown, quarantined) or one the page derives:
// at-risk (running on a suspect node), moving (still held by another
// node), pending (claimed by none yet), gone (assigned to a node no longer
// live).
type webCell struct {
	Key   string `json:"k"`
	State string `json:"s"`
	// Node is the node that holds the key when it is not the one it is
	// assigned to; in Attention, the node it is assigned to.
	Node  string `json:"n,omitempty"`
	Error string `json:"e,omitempty"`
}

// webNote is one service-wide fact; Level is "info", "warn" or "bad".
type webNote struct {
	Level string `json:"level"`
	Text  string `json:"text"`
}

// webEvent is one history entry, its key lists cut to webEventKeys.
type webEvent struct {
	At     time.Time  `json:"at"`
	Kind   string     `json:"kind"`
	Node   string     `json:"node"`
	Epoch  uint64     `json:"epoch,omitempty"`
	Detail string     `json:"detail,omitempty"`
	Keys   []string   `json:"keys,omitempty"`
	Moves  []dim.Move `json:"moves,omitempty"`
	More   int        `json:"more,omitempty"`
}

// Limits on what one snapshot carries.
const (
	webAttentionLimit = 200
	webEventKeys      = 12
)

// Cell states the page derives.
const (
	cellAtRisk  = "at-risk"
	cellMoving  = "moving"
	cellPending = "pending"
	cellGone    = "gone"
)

// statusView builds the view of a full status, with at most maxKeys cells.
func statusView(st *dim.Status, maxKeys int) *webView {
	v := &webView{Service: st.Service, ServerTime: st.ServerTime, Leader: st.Leader, LeaderLive: st.LeaderLive,
		Epoch: st.Epoch, Keys: len(st.Assignment) + len(st.Quarantined), AtRisk: len(st.AtRisk), MaxKeys: maxKeys}
	v.noNulls()
	v.Full = v.Keys <= maxKeys
	byNode := map[string][]string{}
	for key, node := range st.Assignment {
		byNode[node] = append(byNode[node], key)
	}
	suspect := map[string]bool{}
	for _, n := range st.Nodes {
		suspect[n.ID] = n.State == "suspect"
	}
	cell := func(key, node string) webCell {
		ks, held := st.Keys[key]
		switch {
		case held && ks.Live && ks.Node == node && ks.State == dim.KeyRunning && suspect[node]:
			return webCell{Key: key, State: cellAtRisk}
		case held && ks.Live && ks.Node == node:
			return webCell{Key: key, State: string(ks.State), Error: ks.LastError}
		case held && ks.Live:
			return webCell{Key: key, State: cellMoving, Node: ks.Node}
		default:
			return webCell{Key: key, State: cellPending}
		}
	}
	budget := maxKeys
	for _, n := range sortedNodes(st.Nodes) {
		wn := nodeView(n)
		v.Running += n.Running
		keys := byNode[n.ID]
		slices.Sort(keys)
		for _, key := range keys {
			c := cell(key, n.ID)
			if budget > 0 {
				wn.Cells = append(wn.Cells, c)
				budget--
			} else {
				wn.Hidden++
			}
		}
		delete(byNode, n.ID)
		v.Nodes = append(v.Nodes, wn)
	}
	var gone []string
	for _, keys := range byNode {
		gone = append(gone, keys...)
	}
	slices.Sort(gone)
	for _, key := range gone {
		if budget > 0 {
			v.Gone = append(v.Gone, webCell{Key: key, State: cellGone, Node: st.Assignment[key]})
			budget--
		}
	}

	for _, key := range st.Unowned {
		c := cell(key, st.Assignment[key])
		if c.State == cellPending && slices.Contains(gone, key) {
			c.State = cellGone
		}
		c.Node = st.Assignment[key]
		v.attention(c)
	}
	for _, q := range st.Quarantined {
		v.attention(webCell{Key: q.Key, State: string(dim.KeyQuarantined), Error: q.LastError})
	}
	v.Notes = notes(st.Frozen, st.Grace, st.Outage, st.Memory, st.Restarting, st.LastRebalance, len(st.Quarantined))
	return v
}

// summaryView builds the view of a summary: counts for every node, and
// cells for the keys that do not run.
func summaryView(sum *dim.Summary, maxKeys int) *webView {
	v := &webView{Service: sum.Service, ServerTime: sum.ServerTime, Leader: sum.Leader, LeaderLive: sum.LeaderLive,
		Epoch: sum.Epoch, Keys: sum.Assigned + sum.Quarantined, Running: sum.Running, AtRisk: sum.AtRisk, MaxKeys: maxKeys}
	v.noNulls()
	cells := map[string][]webCell{}
	named := 0
	for _, p := range sum.ProblemKeys {
		c := webCell{Key: p.Key, State: string(p.State), Error: p.LastError}
		if p.AssignedTo != p.Node {
			c.State, c.Node = cellMoving, p.Node
		}
		if p.AssignedTo != "" {
			cells[p.AssignedTo] = append(cells[p.AssignedTo], c)
		}
		c.Node = p.AssignedTo
		if p.AssignedTo != "" { // a key held on its way out is nobody's trouble
			v.attention(c)
			named++
		}
	}
	for _, p := range sum.AtRiskKeys {
		cells[p.Node] = append(cells[p.Node], webCell{Key: p.Key, State: cellAtRisk})
	}
	for _, n := range sortedNodes(sum.Nodes) {
		wn := nodeView(n)
		wn.Cells = orEmpty(cells[n.ID])
		slices.SortFunc(wn.Cells, func(a, b webCell) int { return cmp.Compare(a.Key, b.Key) })
		wn.Hidden = max(0, n.Assigned-len(wn.Cells))
		v.Nodes = append(v.Nodes, wn)
	}
	for _, q := range sum.QuarantinedKeys {
		v.attention(webCell{Key: q.Key, State: string(dim.KeyQuarantined), Error: q.LastError})
	}
	// Keys not claimed by anyone are counted, not named, by a summary.
	v.AttentionMore += max(0, sum.Unowned-named) + max(0, sum.Quarantined-len(sum.QuarantinedKeys))
	v.Notes = notes(sum.Frozen, sum.Grace, sum.Outage, sum.Memory, sum.Restarting, sum.LastRebalance, sum.Quarantined)
	if sum.OnDeadNodes > 0 {
		v.Notes = append(v.Notes, webNote{"bad", fmt.Sprintf("%d keys are assigned to nodes no longer live", sum.OnDeadNodes)})
	}
	return v
}

// noNulls makes every list empty rather than null: the page iterates them.
func (v *webView) noNulls() {
	v.Nodes, v.Gone, v.Attention, v.History = []webNode{}, []webCell{}, []webCell{}, []webEvent{}
}

// attention adds a key to the list of keys that do not run.
func (v *webView) attention(c webCell) {
	if len(v.Attention) < webAttentionLimit {
		v.Attention = append(v.Attention, c)
	} else {
		v.AttentionMore++
	}
}

// nodeView is a node without its cells.
func nodeView(n dim.NodeStatus) webNode {
	wn := webNode{ID: n.ID, Weight: n.Weight, State: string(n.State), LeaseLeftMS: n.LeaseLeft.Milliseconds(),
		TTLMS: n.TTL.Milliseconds(), DrainedForMS: n.DrainedFor.Milliseconds(), WaitingForMS: n.WaitingFor.Milliseconds(),
		ConfigFailing: n.ConfigError != "", Assigned: n.Assigned, Running: n.Running, Cells: []webCell{}}
	if u := n.Unhealthy; u != nil {
		wn.Unhealthy = fmt.Sprintf("unhealthy (level %d): %d keys failed here that run elsewhere; a probe key at %s",
			u.Level, len(u.Keys), u.Until.UTC().Format("15:04:05"))
	}
	return wn
}

// notes are the service-wide facts of a status or a summary.
func notes(frozen *dim.FreezeStatus, grace *dim.Grace, outage *dim.Outage, mem *dim.RedisMemory,
	restarting []dim.RestartHold, last *dim.LastRebalance, quarantined int) []webNote {
	out := []webNote{}
	if frozen != nil {
		out = append(out, webNote{"warn", fmt.Sprintf("frozen for %s: joins, weight changes and rebalances move nothing", roundLease(frozen.Left))})
	}
	if grace != nil {
		out = append(out, webNote{"warn", fmt.Sprintf("grace period (%s) for %s: no claim is granted", grace.Reason, roundLease(grace.Left))})
	}
	if outage != nil {
		out = append(out, webNote{"bad", fmt.Sprintf("outage since %s: %d keys fail on every node; keys stay where they are",
			outage.Since.UTC().Format("15:04:05"), outage.FailingKeys)})
	}
	if mem != nil && mem.OutOfMemory {
		out = append(out, webNote{"bad", "Redis is out of memory: nothing new starts"})
	}
	for _, r := range restarting {
		out = append(out, webNote{"info", fmt.Sprintf("%s restarting: %d keys wait for it for %s", r.Node, r.Keys, roundLease(r.Left))})
	}
	if quarantined > 0 {
		out = append(out, webNote{"bad", fmt.Sprintf("%d keys quarantined: they failed on every node they were given to", quarantined)})
	}
	if last != nil && last.Error != "" {
		out = append(out, webNote{"bad", "the last rebalance failed: " + last.Error})
	}
	return out
}

// historyView cuts each entry's keys and moves to webEventKeys.
func historyView(entries []dim.HistoryEntry) []webEvent {
	out := make([]webEvent, 0, len(entries))
	for _, e := range entries {
		ev := webEvent{At: e.At, Kind: e.Kind, Node: e.Node, Epoch: e.Epoch, Detail: e.Detail}
		switch {
		case len(e.Moves) > 0:
			ev.Moves = e.Moves[:min(len(e.Moves), webEventKeys)]
			ev.More = len(e.Moves) - len(ev.Moves)
		case len(e.Keys) > 0:
			ev.Keys = e.Keys[:min(len(e.Keys), webEventKeys)]
			ev.More = len(e.Keys) - len(ev.Keys)
		}
		out = append(out, ev)
	}
	return out
}
