package dim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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

// same reports whether two records say the same (ignoring when).
func (r keyRecord) same(o keyRecord) bool {
	return r.State == o.State && r.Attempts == o.Attempts && r.Err == o.Err && r.Session == o.Session
}

// maxErrLen bounds the error text published per key.
const maxErrLen = 200

// stateChunk bounds the keys one state script writes.
const stateChunk = 1000

// syncStates publishes what changed in what this node's keys are doing:
// nothing in a steady state, so the cost to Redis does not grow with the
// number of keys. It runs on the node loop, after every change.
func (m *Manager[C, I]) syncStates(ctx context.Context, session string, unknown map[string]bool) {
	if session == "" {
		clear(m.tab.states)
		return
	}
	want := make(map[string]keyRecord, len(m.tab.running))
	now := time.Now()
	rec := func(st KeyState) keyRecord {
		return keyRecord{Node: m.s.nodeID, Session: session, State: st, Since: now.UnixMilli()}
	}
	for key, e := range m.tab.running {
		if !e.stopping.Load() {
			want[key] = rec(KeyRunning)
		}
	}
	for key, f := range m.tab.failures {
		if _, ok := want[key]; ok {
			continue
		}
		r := rec(KeyFailing)
		r.Attempts, r.Retry, r.Err = f.attempts, f.next.UnixMilli(), f.err
		want[key] = r
	}
	for _, key := range m.hung.list() {
		if _, claimed := m.tab.claimed[key]; claimed {
			want[key] = rec(KeyHung)
		}
	}
	for key := range unknown {
		if _, ok := want[key]; !ok {
			want[key] = rec(KeyUnknown)
		}
	}
	var args []string
	for key, r := range want {
		if old, ok := m.tab.states[key]; ok && old.same(r) {
			continue
		}
		b, _ := json.Marshal(r)
		args = append(args, key, string(b))
	}
	for key := range m.tab.states {
		if _, ok := want[key]; !ok {
			args = append(args, key, "")
		}
	}
	if len(args) == 0 {
		return
	}
	refused, err := m.publishStates(ctx, session, args)
	if err != nil {
		m.log.Debug("publishing key states failed; trying again", "err", err)
		m.tab.retryAt = time.Now().Add(m.claimRetry)
		return
	}
	// Keep the timestamps already published for states that did not change;
	// a refused key (another node still owns it) is tried again later.
	for key, r := range want {
		if old, ok := m.tab.states[key]; (ok && old.same(r)) || refused[key] {
			continue
		}
		m.tab.states[key] = r
	}
	for key := range m.tab.states {
		if _, ok := want[key]; !ok {
			delete(m.tab.states, key)
		}
	}
}

// publishStates writes key/value pairs ("" deletes) in bounded chunks, and
// returns the keys Redis refused because another node owns them.
func (m *Manager[C, I]) publishStates(ctx context.Context, session string, pairs []string) (map[string]bool, error) {
	refused := map[string]bool{}
	for chunk := range slices.Chunk(pairs, 2*stateChunk) {
		cctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
		res, err := stateScript.Exec(cctx, m.client, []string{m.k.nodes, m.k.sessions, m.k.owner, m.k.state},
			append([]string{m.s.nodeID, session}, chunk...)).AsStrSlice()
		cancel()
		if err == nil && len(res) == 0 {
			err = errors.New("empty reply")
		}
		if err != nil {
			return nil, fmt.Errorf("publish key states: %w", err)
		}
		for _, key := range res[1:] {
			refused[key] = true
		}
	}
	if len(refused) > 0 {
		m.tab.retryAt = time.Now().Add(m.claimRetry)
	}
	return refused, nil
}

// shortError is an error's message, cut to maxErrLen.
func shortError(err error) string {
	s := err.Error()
	if len(s) > maxErrLen {
		s = s[:maxErrLen] + "…"
	}
	return s
}
