package dim

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// KeyState is what a key is doing on the node that holds it, as that node
// published it: Status reports facts, not the plan.
type KeyState string

// Key states.
const (
	// KeyCreating: the node claimed the key and createInstance runs.
	KeyCreating KeyState = "creating"
	// KeyRunning: createInstance returned and the instance's context is live.
	KeyRunning KeyState = "running"
	// KeyFailing: the last create or health check failed; the node tries
	// again at NextRetry.
	KeyFailing KeyState = "failing"
	// KeyHung: a createInstance or disconnect call outlived the callback
	// timeout; the key stays with the node until the call returns.
	KeyHung KeyState = "hung"
	// KeyStopping: the instance is being disconnected.
	KeyStopping KeyState = "stopping"
	// KeyUnknown: the key is assigned to a node whose getConfig does not
	// return it (replicas that disagree on configs, during a rolling
	// deploy): it does not run there.
	KeyUnknown KeyState = "unknown"
	// KeyQuarantined: the key failed on every node it was given to; the
	// leader keeps it off every node until NextRetry (see WithQuarantine).
	// Published by the leader, not by a node.
	KeyQuarantined KeyState = "quarantined"
)

// keyRecord is a key's published state in Redis. Node and session come
// first, in this order: the scripts recognise a node's own entries by the
// prefix {"n":"<node>","s":"<session>".
type keyRecord struct {
	Node     string   `json:"n"`
	Session  string   `json:"s"`
	State    KeyState `json:"st"`
	Since    int64    `json:"t"`           // unix ms, the node's clock
	Attempts int      `json:"a,omitempty"` // consecutive failures
	Retry    int64    `json:"r,omitempty"` // unix ms of the next try
	Err      string   `json:"e,omitempty"` // the last error, shortened
}

// ownerEntry is a key's owner entry: "node session token generation
// [r<ms>]" (see keyspace).
type ownerEntry struct {
	node, session string
	token         uint64
	// implicit is what the entry says the key does, which is its state
	// when the key has no record: creating since the claim, or running.
	implicit keyRecord
}

// parseOwner reads an owner entry. A claim is dated by its token: at least
// the server's time in microseconds when it was minted, and close to it, as
// tokens are minted one per key granted.
func parseOwner(v string) (ownerEntry, bool) {
	f := strings.Fields(v)
	if len(f) < 3 {
		return ownerEntry{}, false
	}
	token, _ := strconv.ParseUint(f[2], 10, 64)
	o := ownerEntry{node: f[0], session: f[1], token: token,
		implicit: keyRecord{Node: f[0], Session: f[1], State: KeyCreating, Since: int64(token / 1000)}}
	for _, x := range f[min(4, len(f)):] {
		if ms, ok := strings.CutPrefix(x, "r"); ok {
			if at, err := strconv.ParseInt(ms, 10, 64); err == nil {
				o.implicit.State, o.implicit.Since = KeyRunning, at
			}
		}
	}
	return o, true
}

// same reports whether two records say the same (ignoring when).
func (r keyRecord) same(o keyRecord) bool {
	return r.State == o.State && r.Attempts == o.Attempts && r.Err == o.Err && r.Session == o.Session
}

// maxErrLen bounds the error text published per key.
const maxErrLen = 200

// stateChunk bounds the keys one state script writes.
const stateChunk = 500

// syncStates publishes what changed in what this node's keys are doing:
// nothing in a steady state, so the cost to Redis does not grow with the
// number of keys. It runs on the node loop, after every change.
func (l *ledger) syncStates(ctx context.Context, session string, running []string, unknown map[string]bool) {
	if session == "" {
		clear(l.states)
		return
	}
	want := make(map[string]keyRecord, len(running))
	now := time.Now()
	rec := func(st KeyState) keyRecord {
		return keyRecord{Node: l.s.nodeID, Session: session, State: st, Since: now.UnixMilli()}
	}
	for _, key := range running {
		want[key] = rec(KeyRunning)
	}
	for key, f := range l.failures {
		if _, ok := want[key]; ok {
			continue
		}
		r := rec(KeyFailing)
		r.Attempts, r.Retry, r.Err = f.attempts, f.next.UnixMilli(), f.err
		want[key] = r
	}
	for _, key := range l.hung.list() {
		if _, claimed := l.claimed[key]; claimed {
			want[key] = rec(KeyHung)
		}
	}
	// A disconnect that runs on shows as stopping until it returns.
	for key := range l.stopping {
		if r, ok := l.states[key]; ok && r.State == KeyStopping {
			want[key] = r
		}
	}
	for key := range unknown {
		if _, ok := want[key]; !ok {
			want[key] = rec(KeyUnknown)
		}
	}
	// A key that only runs is listed, for its owner entry to say so (see
	// keys); any other state is a record.
	var run, pairs []string
	for key, r := range want {
		if old, ok := l.states[key]; ok && old.same(r) {
			continue
		}
		if r.plainRunning() {
			run = append(run, key)
			continue
		}
		b, _ := json.Marshal(r)
		pairs = append(pairs, key, string(b))
	}
	for key := range l.states {
		if _, ok := want[key]; !ok {
			pairs = append(pairs, key, "")
		}
	}
	if len(run) == 0 && len(pairs) == 0 {
		return
	}
	refused, err := l.publishStates(ctx, session, now.UnixMilli(), run, pairs)
	if err != nil {
		l.log.Debug("publishing key states failed; trying again", "err", err)
		l.retryAt = time.Now().Add(l.claimRetry)
		return
	}
	// Keep the timestamps already published for states that did not change;
	// a refused key (another node still owns it) is tried again later.
	for key, r := range want {
		if old, ok := l.states[key]; (ok && old.same(r)) || refused[key] {
			continue
		}
		l.states[key] = r
	}
	for key := range l.states {
		if _, ok := want[key]; !ok {
			delete(l.states, key)
		}
	}
}

// plainRunning reports whether a record says no more than that its key
// runs since a time, which the key's owner entry can say (see keyspace).
func (r keyRecord) plainRunning() bool {
	return r.State == KeyRunning && r.Attempts == 0 && r.Retry == 0 && r.Err == ""
}

// publishStates writes the states of keys in bounded chunks: run, the keys
// that run since the time since (unix ms), then key/value pairs of records
// ("" deletes). It returns the keys Redis refused because another node owns
// thel.
func (l *ledger) publishStates(ctx context.Context, session string, since int64, run, pairs []string) (map[string]bool, error) {
	refused := map[string]bool{}
	for len(run) > 0 || len(pairs) > 0 {
		r := min(len(run), stateChunk)
		p := min(len(pairs), 2*(stateChunk-r))
		cctx, cancel := context.WithTimeout(ctx, l.s.heartbeat)
		_, res, err := l.db().state(cctx, l.s.nodeID, session, since, run[:r], pairs[:p])
		cancel()
		run, pairs = run[r:], pairs[p:]
		l.live.advance()
		if err != nil {
			return nil, fmt.Errorf("publish key states: %w", err)
		}
		l.slot.over(l.log)
		for _, key := range res {
			refused[key] = true
		}
	}
	if len(refused) > 0 {
		l.retryAt = time.Now().Add(l.claimRetry)
	}
	return refused, nil
}

// markStopping publishes keys whose disconnect still runs as stopping,
// each under the session its instance ran under; they show so until
// stopped is called for them.
func (l *ledger) markStopping(keys, sessions []string) {
	if len(keys) == 0 {
		return
	}
	for _, key := range keys {
		l.stopping[key] = true
	}
	args := make([]string, 0, 2*len(keys))
	for i, key := range keys {
		r := keyRecord{Node: l.s.nodeID, Session: sessions[i], State: KeyStopping, Since: time.Now().UnixMilli()}
		b, _ := json.Marshal(r)
		args = append(args, key, string(b))
		l.states[key] = r
	}
	_, _ = l.publishStates(l.runCtx, sessions[len(sessions)-1], 0, nil, args)
}

// stopped ends the stopping state of key: its disconnect returned.
func (l *ledger) stopped(key string) { delete(l.stopping, key) }

// shortError is an error's message, cut to maxErrLen.
func shortError(err error) string {
	s := err.Error()
	if len(s) > maxErrLen {
		s = s[:maxErrLen] + "…"
	}
	return s
}

// Why a node asked the leader to place a key elsewhere.
const (
	avoidUnknown = 1 // its getConfig does not return the key
	avoidGaveUp  = 2 // it failed to create the key giveUpAfter times in a row
)

// avoidMark is why this node avoids a key, and until when (zero: until it
// says otherwise).
type avoidMark struct {
	why   int
	until time.Time
}

// giveUpCooldown is how long the leader keeps a key off a node that gave it
// up: long enough for another node to try, short enough that a node that
// was only unlucky gets it back.
const giveUpCooldown = time.Minute

// syncAvoid tells the leader which keys this node cannot run: keys its
// getConfig does not return (until it does), and keys whose create failed
// too often in a row (for a cooldown), so that the leader places them on
// other nodes. It runs on the node loop, after a reconcile.
func (l *ledger) syncAvoid(ctx context.Context, known, running func(key string) bool, unknown map[string]bool) {
	var args []string
	now := time.Now()
	next := map[string]avoidMark{}
	for key := range unknown {
		next[key] = avoidMark{why: avoidUnknown}
		if l.avoiding[key].why != avoidUnknown {
			args = append(args, key, "0")
		}
	}
	for key, f := range l.failures {
		if _, ok := next[key]; ok || l.s.giveUpAfter == 0 || f.kind != "create" || f.attempts < l.s.giveUpAfter {
			continue
		}
		// Given up again once the last give-up ran out while the key still
		// fails here: the leader judges outages and unhealthy nodes from
		// live give-ups.
		if old := l.avoiding[key]; old.why == avoidGaveUp && now.Before(old.until) {
			next[key] = old
			continue
		}
		next[key] = avoidMark{why: avoidGaveUp, until: now.Add(giveUpCooldown)}
		if l.avoiding[key].why != avoidGaveUp {
			l.log.Warn("giving the key up after failed creates; the leader places it on another node",
				"key", key, "attempts", f.attempts, "cooldown", giveUpCooldown, "err", f.err)
		}
		args = append(args, key, strconv.FormatInt(giveUpCooldown.Milliseconds(), 10))
	}
	for key, mark := range l.avoiding {
		if _, still := next[key]; still {
			continue
		}
		// A key this node knows again is its to run again; one it still
		// does not know stays avoided (and tracked) after it moved away. A
		// key given up keeps its cooldown in Redis, unless it runs here
		// after all.
		switch {
		case mark.why == avoidUnknown && known(key), mark.why == avoidGaveUp && running(key):
			args = append(args, key, "-")
		case mark.why == avoidUnknown:
			next[key] = mark
		}
	}
	if len(args) == 0 {
		l.avoiding = next
		return
	}
	ctx, cancel := context.WithTimeout(ctx, l.s.heartbeat)
	defer cancel()
	for chunk := range slices.Chunk(args, 2*stateChunk) {
		err := l.db().avoid(ctx, l.s.nodeID, chunk)
		if err != nil {
			l.log.Debug("publishing the keys this node cannot run failed; trying again", "err", err)
			l.retryAt = time.Now().Add(l.claimRetry)
			return
		}
	}
	l.avoiding = next
}
