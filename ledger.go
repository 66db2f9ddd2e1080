package dim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"
)

// ledger is this node's account of its keys in Redis, and the calls that
// change it: the claims it holds with their tokens, the refused claims
// waiting to be tried again, the failures and their backoff, the key
// states it published and the keys it asked the leader to place elsewhere.
// It is not generic: it knows keys, not configs or instances. Owned by the
// node loop, which tells it what runs (see table).
type ledger struct {
	*env
	membership *membership
	hung       *hungSet       // keys whose create or disconnect outlived its timeout
	confirmed  *confirmedKeys // keys a restore's verify wrote, for the books

	claimRetry time.Duration // how soon a refused claim is tried again
	retryMin   time.Duration // backoff after a failed create or health check
	retryMax   time.Duration

	claimed  map[string]uint64    // keys this node owns in Redis, with tokens
	failures map[string]*failure  // keys whose create or health check failed
	stopping map[string]bool      // keys shown as stopping until their disconnect returns
	waiting  map[string]time.Time // keys whose claim was refused, and when to retry
	states   map[string]keyRecord // what Redis holds of this node's key states
	avoiding map[string]avoidMark // keys this node asked the leader to place elsewhere, and why
	retryAt  time.Time            // when to reconcile again after a failed read or write
}

func newLedger(e *env, mem *membership, hung *hungSet, confirmed *confirmedKeys) *ledger {
	return &ledger{
		env:        e,
		membership: mem,
		hung:       hung,
		confirmed:  confirmed,
		claimRetry: max(e.s.heartbeat/4, 10*time.Millisecond),
		retryMin:   100 * time.Millisecond,
		retryMax:   30 * time.Second,
		claimed:    make(map[string]uint64),
		failures:   make(map[string]*failure),
		stopping:   make(map[string]bool),
		waiting:    make(map[string]time.Time),
		states:     make(map[string]keyRecord),
		avoiding:   make(map[string]avoidMark),
	}
}

// failure is a key's streak of failed creates or health checks.
type failure struct {
	attempts int
	next     time.Time
	err      string // the last error, shortened
	kind     string // "create" or "health check": what failed last
	sum      string // content hash of the config that failed; "" unknown
}

// changed reports whether sum, a config's content hash, is not the one the
// failure was made with; an unknown hash on either side counts as the same.
func (f *failure) changed(sum string) bool { return sum != "" && f.sum != "" && sum != f.sum }

// backingOff reports whether key waits out the backoff of its failures at
// now. A config that changed since the last failure ends the streak: the
// new config is tried at once, without the old one's backoff, which is how
// an operator fixes a broken config.
func (l *ledger) backingOff(key, sum string, now time.Time) bool {
	f := l.failures[key]
	if f == nil {
		return false
	}
	if f.changed(sum) {
		delete(l.failures, key)
		return false
	}
	return now.Before(f.next)
}

// nextRetry is the earliest time a failed or refused key, or a failed read
// or write, should be tried again; zero if none. A failed key that is busy
// (it runs again, or a call of its is under way) waits for no time.
func (l *ledger) nextRetry(busy func(key string) bool) time.Time {
	var at time.Time
	for key, f := range l.failures {
		if l.hung.has(key) || busy(key) {
			continue // its call's return, or its instance's next check, wakes the loop
		}
		if at.IsZero() || f.next.Before(at) {
			at = f.next
		}
	}
	for _, w := range l.waiting {
		if at.IsZero() || w.Before(at) {
			at = w
		}
	}
	if r := l.retryAt; !r.IsZero() && (at.IsZero() || r.Before(at)) {
		at = r
	}
	return at
}

// forget drops the books of a session that ended: its claims died with it.
func (l *ledger) forget() {
	clear(l.stopping)
	clear(l.claimed)
	clear(l.waiting)
	clear(l.states)
}

// releaseAll releases every claim (but those a hung call holds) and clears
// the books: the node is fenced or stopping, and has disconnected every
// instance.
func (l *ledger) releaseAll(ctx context.Context, session string) {
	if session != "" && len(l.claimed) > 0 {
		keys := make([]string, 0, len(l.claimed))
		for key := range l.claimed {
			if !l.hung.has(key) {
				keys = append(keys, key)
			}
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.s.heartbeat)
		if err := l.release(rctx, session, keys); err != nil && !l.slot.saw(l.log, "release", err) {
			l.log.Warn("release failed; the claims expire with the lease", "err", err)
		}
		cancel()
	}
	clear(l.claimed)
	clear(l.waiting)
	clear(l.failures)
	clear(l.stopping)
	if session, _ := l.membership.current(); session != "" {
		l.syncStates(context.WithoutCancel(ctx), session, nil, nil)
	}
	clear(l.states)
}

// readAssigned reads the keys assigned to this node, page by page, each page
// with a timeout of its own, and the trace context of the rebalance that last
// changed thel. A key added or removed while the pages are read may be
// missed or seen: the write that changed it publishes an event, which brings
// another reconcile, and claims check the assignment in Redis.
func (l *ledger) readAssigned(ctx context.Context) (keys []string, trace string, err error) {
	set := l.k.assigned(l.s.nodeID)
	rctx, cancel := context.WithTimeout(ctx, l.s.heartbeat)
	res := l.client.DoMulti(rctx,
		l.client.B().Sscan().Key(set).Cursor(0).Count(scanPage).Build(),
		l.client.B().Hget().Key(l.k.traces).Field(l.s.nodeID).Build())
	cancel()
	trace, _ = res[1].ToString()
	page, err := res[0].AsScanEntry()
	for err == nil {
		keys = append(keys, page.Elements...)
		if page.Cursor == 0 {
			return keys, trace, nil
		}
		rctx, cancel := context.WithTimeout(ctx, l.s.heartbeat)
		page, err = l.client.Do(rctx, l.client.B().Sscan().Key(set).Cursor(page.Cursor).Count(scanPage).Build()).AsScanEntry()
		cancel()
	}
	return nil, trace, err
}

// claimChunk bounds the keys one claim script takes, so that no script
// blocks Redis for long.
const claimChunk = 500

// claim asks Redis for ownership of keys and returns the granted ones with
// their fencing tokens.
func (l *ledger) claim(ctx context.Context, session string, keys []string) (granted map[string]uint64, held int, err error) {
	granted = make(map[string]uint64, len(keys))
	for i := 0; i < len(keys); i += claimChunk {
		if l.membership.checkLease() != session {
			return granted, held, nil // fenced: claims died with the lease
		}
		chunk := keys[i:min(i+claimChunk, len(keys))]
		n, graceEnd, done, err := l.claimChunk(ctx, session, chunk, granted)
		l.live.advance()
		held += n
		if !graceEnd.IsZero() {
			// A grace period refuses every claim until it ends: the keys
			// not asked for yet wait with the chunk, or the node would
			// read its keys and ask again for the next chunk, over and over.
			for _, key := range keys[i:] {
				l.waiting[key] = graceEnd
			}
		}
		if done || err != nil {
			return granted, held, err
		}
	}
	return granted, held, nil
}

// claimChunk claims one chunk of keys into granted, and reports how many
// another live node still holds, when the grace period ends if one refused
// the claim, and whether the rest must wait (the node is fenced, or a grace
// period runs).
func (l *ledger) claimChunk(ctx context.Context, session string, keys []string, granted map[string]uint64) (held int, graceEnd time.Time, done bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, l.s.heartbeat)
	defer cancel()
	res, err := l.db().claim(ctx, l.s.nodeID, session, l.membership.ttlFloor(), l.membership.durable(), keys)
	var bad *badReply
	if err != nil && !errors.As(err, &bad) {
		// The script may have run with its reply lost: keep the keys on the
		// books as claimed, so that they are released if they move away,
		// and publish their states again (a grant drops a key's record).
		for _, key := range keys {
			l.waiting[key] = time.Now().Add(l.claimRetry)
			if _, ok := l.claimed[key]; !ok {
				l.claimed[key] = 0
			}
			delete(l.states, key)
		}
		return 0, time.Time{}, true, fmt.Errorf("claim: %w", err)
	}
	l.slot.over(l.log)
	if err != nil {
		return 0, time.Time{}, true, fmt.Errorf("claim: %w", err)
	}
	switch res.status {
	case -1:
		l.membership.fence(session, "claim refused: not a live member")
		return 0, time.Time{}, true, nil
	case -2:
		l.log.Debug("claims wait for the grace period", "wait_ms", res.wait.Milliseconds())
		return 0, time.Now().Add(res.wait), true, nil
	}
	next := res.first
	for i, key := range keys {
		switch res.codes[i] {
		case "-":
			held++
		case "+":
			// Granted keys have consecutive tokens, in their order.
			token := next
			next++
			granted[key] = token
			l.claimed[key] = token
			// The grant dropped the key's record: its owner entry says
			// creating until the node publishes what follows.
			delete(l.states, key)
		}
	}
	return held, time.Time{}, false, nil
}

// release gives up claims after their instances were disconnected, and tells
// the waiting claimants at once. Each chunk of keys is one bounded script
// call with a timeout of its own.
// A claim whose release fails stays on the books and is released again at
// the next reconcile, which is scheduled soon.
func (l *ledger) release(ctx context.Context, session string, keys []string) error {
	if len(keys) == 0 || session == "" {
		for _, key := range keys {
			delete(l.claimed, key)
		}
		return nil
	}
	for chunk := range slices.Chunk(keys, claimChunk) {
		if err := l.releaseChunk(ctx, session, chunk); err != nil {
			l.retryAt = time.Now().Add(l.claimRetry)
			return err
		}
		l.live.advance()
	}
	return nil
}

func (l *ledger) releaseChunk(ctx context.Context, session string, keys []string) error {
	ctx, cancel := context.WithTimeout(ctx, l.s.heartbeat)
	defer cancel()
	if err := l.db().release(ctx, l.s.nodeID, session, keys); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	l.slot.over(l.log)
	for _, key := range keys {
		delete(l.claimed, key)
		delete(l.states, key) // the release dropped it
	}
	l.record(ctx, HistoryReleased, 0, keys, nil, "")
	return nil
}

// recordFailure counts a failed create or health check of key's instance,
// made from the config whose content hash is sum ("" unknown), and sets
// when the key is tried again.
func (l *ledger) recordFailure(key, sum, what string, err error) {
	f := l.failures[key]
	if f == nil || f.changed(sum) {
		f = &failure{}
		l.failures[key] = f
	}
	f.sum = sum
	l.logPanic(key, err)
	f.attempts++
	f.kind = what
	f.err = shortError(err)
	// Exponential, capped, with jitter: a failing upstream is not hit by
	// every key in step.
	delay := min(l.retryMin<<min(f.attempts-1, 20), l.retryMax)
	delay = delay/2 + rand.N(delay/2+1)
	f.next = time.Now().Add(delay)
	l.log.Warn(what+" failed", "key", key, "attempt", f.attempts, "retry_in", delay, "err", err)
}

// bookConfirmed puts the keys verifyOwnership wrote on the node loop's
// books, so that those it does not run are released like any other claim,
// and has their states published again: a re-asserted owner entry says
// creating, and the restored state hash may have lost their records.
func (l *ledger) bookConfirmed(session string) {
	for _, key := range l.confirmed.take(session) {
		if _, ok := l.claimed[key]; !ok {
			l.claimed[key] = 0
		}
		delete(l.states, key)
	}
}
