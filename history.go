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

// History: every election, join and leave, assignment change, claim and
// release, fence and verdict on failing keys or nodes is appended to a
// bounded Redis Stream of the service (<p>:history, MAXLEN ~), one entry per
// call that changed something, listing its keys: a cold start of 10k keys
// adds a few dozen entries, not 10k. Nothing is appended in a steady state.
// Entries are written after the change, best effort: history explains, it
// never decides.

// DefaultHistoryLength is about how many entries a service's history keeps.
const DefaultHistoryLength = 5000

// History entry kinds.
const (
	HistoryElected     = "elected"     // a node became leader (Epoch)
	HistoryJoined      = "joined"      // a node joined (Detail: its session)
	HistoryLeft        = "left"        // a node left
	HistoryFenced      = "fenced"      // a node fenced itself (Detail: why and when), written when it rejoins
	HistoryAssigned    = "assigned"    // the leader moved Keys (Moves: from → to)
	HistoryClaimed     = "claimed"     // a node claimed Keys
	HistoryReleased    = "released"    // a node released Keys
	HistoryQuarantined = "quarantined" // the leader quarantined Keys
	HistoryRecovered   = "recovered"   // Keys left quarantine
	HistoryUnhealthy   = "unhealthy"   // the leader found Node unhealthy
	HistoryHealthy     = "healthy"     // Node is healthy again
	HistoryOutage      = "outage"      // an outage began (Detail) or ended
)

// HistoryEntry is one entry of a service's history.
type HistoryEntry struct {
	ID     string    `json:"id"`
	At     time.Time `json:"at"`
	Kind   string    `json:"kind"`
	Node   string    `json:"node"`
	Epoch  uint64    `json:"epoch,omitempty"`
	Keys   []string  `json:"keys,omitempty"`
	Moves  []Move    `json:"moves,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// historyCmd is the XADD of one entry, or an empty command when the history
// is off.
func (e *env) historyCmd(kind string, epoch uint64, keys []string, moves []Move, detail string) (rueidis.Completed, bool) {
	if e.s.historyLen <= 0 {
		return rueidis.Completed{}, false
	}
	b := e.client.B().Xadd().Key(e.k.history).Maxlen().Almost().Threshold(strconv.Itoa(e.s.historyLen)).Id("*").
		FieldValue().FieldValue("e", kind).FieldValue("n", e.s.nodeID)
	if epoch != 0 {
		b = b.FieldValue("p", strconv.FormatUint(epoch, 10))
	}
	if len(keys) > 0 {
		raw, _ := json.Marshal(keys)
		b = b.FieldValue("k", string(raw))
	}
	if len(moves) > 0 {
		raw, _ := json.Marshal(moveRuns(moves))
		b = b.FieldValue("mr", string(raw))
	}
	if detail != "" {
		b = b.FieldValue("d", detail)
	}
	return b.Build(), true
}

// moveRuns writes moves, whose keys the entry lists in the same order, as
// runs of the same origin and destination: [[from, to, count], …]. A
// chunk of a first start is one run of a thousand keys, which the entry
// then lists once instead of three times.
func moveRuns(moves []Move) [][3]any {
	var runs [][3]any
	for i := 0; i < len(moves); {
		j := i + 1
		for j < len(moves) && moves[j].From == moves[i].From && moves[j].To == moves[i].To {
			j++
		}
		runs = append(runs, [3]any{moves[i].From, moves[i].To, j - i})
		i = j
	}
	return runs
}

// movesOf reads an entry's move runs (see moveRuns) back into moves of its
// keys; nil if they do not match the keys.
func movesOf(raw string, keys []string) []Move {
	var runs [][3]json.RawMessage
	if json.Unmarshal([]byte(raw), &runs) != nil {
		return nil
	}
	moves := make([]Move, 0, len(keys))
	for _, r := range runs {
		var from, to string
		var n int
		if json.Unmarshal(r[0], &from) != nil || json.Unmarshal(r[1], &to) != nil || json.Unmarshal(r[2], &n) != nil ||
			n < 0 || len(moves)+n > len(keys) {
			return nil
		}
		for _, key := range keys[len(moves) : len(moves)+n] {
			moves = append(moves, Move{Key: key, From: from, To: to})
		}
	}
	if len(moves) != len(keys) {
		return nil
	}
	return moves
}

// record appends one entry, best effort.
func (e *env) record(ctx context.Context, kind string, epoch uint64, keys []string, moves []Move, detail string) {
	cmd, ok := e.historyCmd(kind, epoch, keys, moves, detail)
	if !ok {
		return
	}
	e.bestEffort(ctx, "recording history", rueidis.Commands{cmd})
}

// moveCmds append the leader's assignment changes to the history, one
// entry per chunk of moves.
func (e *env) moveCmds(epoch uint64, changes []change) rueidis.Commands {
	var cmds rueidis.Commands
	for chunk := range slices.Chunk(changes, writeChunk) {
		moves := make([]Move, len(chunk))
		keys := make([]string, len(chunk))
		for i, c := range chunk {
			moves[i], keys[i] = Move{Key: c.key, From: c.from, To: c.to}, c.key
		}
		if cmd, ok := e.historyCmd(HistoryAssigned, epoch, keys, moves, ""); ok {
			cmds = append(cmds, cmd)
		}
	}
	return cmds
}

// HistoryFilter narrows ReadHistory: entries about a key, by a node, since
// a time; at most Limit of them (0: 100).
type HistoryFilter struct {
	Key   string
	Node  string
	Since time.Time
	Limit int
}

// ReadHistory returns a service's history, newest first, as the filter
// narrows it. It reads at most 10,000 entries.
func ReadHistory(ctx context.Context, client rueidis.Client, svc Service, f HistoryFilter) ([]HistoryEntry, error) {
	k, err := svc.keys()
	if err != nil {
		return nil, err
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	start := "-"
	if !f.Since.IsZero() {
		start = strconv.FormatInt(f.Since.UnixMilli(), 10)
	}
	// Unfiltered, the newest limit entries are the answer; a filter may
	// have to look further back.
	count := int64(10_000)
	if f.Key == "" && f.Node == "" {
		count = int64(limit)
	}
	raw, err := client.Do(ctx, client.B().Xrevrange().Key(k.history).End("+").Start(start).Count(count).Build()).AsXRange()
	if err != nil {
		return nil, fmt.Errorf("%w: read history: %w", ErrRedis, err)
	}
	out := []HistoryEntry{}
	for _, x := range raw {
		e := HistoryEntry{ID: x.ID, Kind: x.FieldValues["e"], Node: x.FieldValues["n"], Detail: x.FieldValues["d"]}
		if ms, _, ok := strings.Cut(x.ID, "-"); ok {
			if v, err := strconv.ParseInt(ms, 10, 64); err == nil {
				e.At = time.UnixMilli(v).UTC()
			}
		}
		e.Epoch, _ = strconv.ParseUint(x.FieldValues["p"], 10, 64)
		if v := x.FieldValues["k"]; v != "" {
			_ = json.Unmarshal([]byte(v), &e.Keys)
		}
		if v := x.FieldValues["mr"]; v != "" {
			e.Moves = movesOf(v, e.Keys)
		} else if v := x.FieldValues["m"]; v != "" {
			_ = json.Unmarshal([]byte(v), &e.Moves) // written by an older dim
		}
		if f.Node != "" && e.Node != f.Node && !slices.ContainsFunc(e.Moves, func(mv Move) bool { return mv.From == f.Node || mv.To == f.Node }) {
			continue
		}
		if f.Key != "" {
			if !slices.Contains(e.Keys, f.Key) {
				continue
			}
			// Only the key's own move, not the whole chunk's.
			e.Keys = []string{f.Key}
			e.Moves = slices.DeleteFunc(e.Moves, func(mv Move) bool { return mv.Key != f.Key })
		}
		out = append(out, e)
		if len(out) == limit {
			break
		}
	}
	return out, nil
}

// fenceNote is a fence to record once the node can reach Redis again.
type fenceNote struct {
	at     time.Time
	reason string
}

// recordVerdictHistory appends what a failure review changed.
func (e *env) recordVerdictHistory(ctx context.Context, v *verdict, f *failureFacts) {
	var cmds rueidis.Commands
	add := func(kind string, keys []string, detail string) {
		if cmd, ok := e.historyCmd(kind, 0, keys, nil, detail); ok {
			cmds = append(cmds, cmd)
		}
	}
	if len(v.quarantined) > 0 {
		add(HistoryQuarantined, v.quarantined, "")
	}
	if len(v.released) > 0 {
		add(HistoryRecovered, v.released, "")
	}
	for _, node := range v.sick {
		add(HistoryUnhealthy, nil, node)
	}
	for _, node := range v.healed {
		add(HistoryHealthy, nil, node)
	}
	switch {
	case v.outage != nil && f.outage == nil:
		add(HistoryOutage, nil, fmt.Sprintf("began: %d keys fail", v.outage.Keys))
	case v.outage == nil && f.outage != nil:
		add(HistoryOutage, nil, "ended")
	}
	e.bestEffort(ctx, "recording history", cmds)
}
