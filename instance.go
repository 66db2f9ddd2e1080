package dim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// entry is one running instance on this node.
type entry[I any] struct {
	key     string
	sum     string // content hash of the config it was created from
	inst    I
	token   uint64
	session string // the lease it runs under
	gen     string // the record's generation when it was claimed
	ctx     context.Context
	cancel  context.CancelFunc
	lease   context.Context // the lease it runs under: ends when the node fences
	check   guard           // the health check in flight, abandoned or not

	stopOnce sync.Once
	stopping atomic.Bool   // stop has begun: the instance is no longer running
	stopped  chan struct{} // closed once disconnect returned or was abandoned
}

// liveSet is every instance alive on this node. Unlike the table, which only
// the node loop touches, any goroutine may stop its entries: the fence
// stops them all at once, whatever the node loop is doing, and each
// entry's disconnect hook is still called exactly once.
type liveSet[I any] struct {
	mu      sync.Mutex
	entries map[*entry[I]]struct{}
	gen     string          // the generation of Redis's record, as last seen
	stop    func(*entry[I]) // cancels the instance and calls disconnect
}

// add files e unless its context has already ended (a fence that ran
// before it could be filed); the caller then stops it itself.
func (s *liveSet[I]) add(e *entry[I]) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.ctx.Err() != nil {
		return false
	}
	if s.entries == nil {
		s.entries = map[*entry[I]]struct{}{}
	}
	s.entries[e] = struct{}{}
	return true
}

// begin starts stopping e, once; the returned channel closes when its
// disconnect hook has returned or been abandoned at the callback timeout.
func (s *liveSet[I]) begin(e *entry[I]) <-chan struct{} {
	e.stopOnce.Do(func() {
		e.stopping.Store(true)
		e.cancel()
		go func() {
			defer close(e.stopped)
			s.stop(e)
			s.mu.Lock()
			delete(s.entries, e)
			s.mu.Unlock()
		}()
	})
	return e.stopped
}

// generation returns the record's generation as last seen.
func (s *liveSet[I]) generation() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

// setGeneration records the record's generation and, if it changed, returns
// the entries filed under the old one, which must be checked against the
// new record. No entry can be filed under the old one after this.
func (s *liveSet[I]) setGeneration(gen string) (changed bool, check []*entry[I]) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen == s.gen {
		return false, nil
	}
	s.gen = gen
	for e := range s.entries {
		check = append(check, e)
	}
	return true, check
}

// stopAll begins stopping every entry at once.
func (s *liveSet[I]) stopAll() {
	s.mu.Lock()
	all := make([]*entry[I], 0, len(s.entries))
	for e := range s.entries {
		all = append(all, e)
	}
	s.mu.Unlock()
	for _, e := range all {
		s.begin(e)
	}
}

// each calls fn for every entry; fn must not block.
func (s *liveSet[I]) each(fn func(*entry[I])) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for e := range s.entries {
		fn(e)
	}
}

// guard lets one call of a kind of callback run at a time: a call
// abandoned at its timeout keeps its guard until it returns, so that a hung
// callback costs one goroutine, not one per attempt.
type guard struct{ busy atomic.Bool }

// table is the node's local state, owned by the node loop: nothing else
// touches it, so reconciliation is serialised by construction.
type table[I any] struct {
	running   map[string]*entry[I]
	claimed   map[string]uint64             // keys this node owns in Redis, with tokens
	failures  map[string]*failure           // keys whose create or health check failed
	waiting   map[string]time.Time          // keys whose claim was refused, and when to retry
	states    map[string]keyRecord          // what Redis holds of this node's key states
	avoiding  map[string]avoidMark          // keys this node asked the leader to place elsewhere, and why
	prepared  map[string]*prepared[I]       // instances prepared for keys that move here (WithPrepare)
	preparing map[string]context.CancelFunc // prepare calls in flight, with their contexts' cancel
	holding   map[string]time.Time          // moved keys still run here until the new owner prepared, until then
	// unprepared are keys whose prepare failed here, and until when they
	// move the normal way: not prepared again while their old owner lets
	// them go.
	unprepared map[string]time.Time
	retryAt    time.Time // when to reconcile again after a failed read
}

// hungSet holds the keys whose createInstance or disconnect call outlived
// the callback timeout. Such a call may still bring an instance to life, so
// the key is neither created again nor released until the call returns: while
// the node holds its lease, a hanging callback costs liveness, not the
// at-most-one guarantee. (A node that loses its lease cannot hold anything:
// instances must stop within the fence margin; see WithFenceMargin.)
type hungSet struct {
	mu      sync.Mutex
	keys    map[string]int
	changed chan struct{} // closed and replaced on every removal
}

func (h *hungSet) add(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.keys == nil {
		h.keys = map[string]int{}
		h.changed = make(chan struct{})
	}
	h.keys[key]++
}

func (h *hungSet) remove(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.keys[key]--; h.keys[key] <= 0 {
		delete(h.keys, key)
	}
	close(h.changed)
	h.changed = make(chan struct{})
}

func (h *hungSet) list() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	keys := make([]string, 0, len(h.keys))
	for key := range h.keys {
		keys = append(keys, key)
	}
	return keys
}

func (h *hungSet) has(key string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.keys[key] > 0
}

// wait blocks until no call hangs or ctx ends.
func (h *hungSet) wait(ctx context.Context) error {
	for {
		h.mu.Lock()
		n, ch := len(h.keys), h.changed
		h.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

type failure struct {
	attempts int
	next     time.Time
	err      string // the last error, shortened
	kind     string // "create" or "health check": what failed last
}

func newTable[I any]() table[I] {
	return table[I]{
		running:    make(map[string]*entry[I]),
		claimed:    make(map[string]uint64),
		failures:   make(map[string]*failure),
		waiting:    make(map[string]time.Time),
		states:     make(map[string]keyRecord),
		avoiding:   make(map[string]avoidMark),
		prepared:   make(map[string]*prepared[I]),
		preparing:  make(map[string]context.CancelFunc),
		holding:    make(map[string]time.Time),
		unprepared: make(map[string]time.Time),
	}
}

// ownershipKey is the context key under which an instance's context holds
// its ownership (see FencingToken).
type ownershipKey struct{}

type ownership struct {
	key   string
	token uint64
}

// FencingToken returns the fencing token of the claim under which an
// instance runs, from any context dim passes about it: createInstance's, a
// health check's or a disconnect's. Every instance of a key gets a token
// larger than every earlier instance of that key, so a resource the instance
// writes to can refuse writes carrying an older token: a paused or
// partitioned former owner cannot overwrite its successor.
func FencingToken(ctx context.Context) (uint64, bool) {
	o, ok := ctx.Value(ownershipKey{}).(ownership)
	return o.token, ok
}

// InstanceKey returns the config key of the instance a context dim passed is
// about: createInstance's, a health check's or a disconnect's.
func InstanceKey(ctx context.Context) (string, bool) {
	o, ok := ctx.Value(ownershipKey{}).(ownership)
	return o.key, ok
}

// nodeLoop owns the instance table. Every change to what runs here happens
// on this goroutine, one reconcile at a time.
func (m *Manager[C, I]) nodeLoop() {
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		select {
		case <-m.runCtx.Done():
			return
		case <-m.fenceCh:
			m.live.enter()
			m.dropAll(m.runCtx, "fenced")
			m.life.unfence()
		case <-m.nodeCh:
			m.live.enter()
			m.reconcile()
		case <-retry.C:
			m.live.enter()
			m.reconcile()
		case <-m.healthTickCh:
			m.live.enter()
			m.startHealthChecks()
		case res := <-m.healthCh:
			m.live.enter()
			m.onHealth(res)
		case r := <-m.prepareCh:
			m.live.enter()
			m.onPrepared(r)
		case done := <-m.handoffCh:
			m.live.enter()
			m.dropAll(m.runCtx, "stopping")
			close(done)
		}
		m.live.leave()
		if at, ok := m.nextRetry(); ok {
			retry.Reset(time.Until(at))
		} else {
			retry.Stop()
		}
	}
}

// nextRetry is the earliest time a failed or refused key should be tried
// again.
func (m *Manager[C, I]) nextRetry() (time.Time, bool) {
	// Without a lease, or while stopping, reconcile does nothing, so a retry
	// time that has passed would wake the loop again at once, over and over
	// until the node rejoins. A rejoin triggers a reconcile by itself.
	if session, _ := m.membership.current(); !m.life.canTakeWork(session) {
		return time.Time{}, false
	}
	var at time.Time
	for key, f := range m.tab.failures {
		if m.hung.has(key) {
			continue // its call's return wakes the loop
		}
		if at.IsZero() || f.next.Before(at) {
			at = f.next
		}
	}
	for _, w := range m.tab.waiting {
		if at.IsZero() || w.Before(at) {
			at = w
		}
	}
	if r := m.tab.retryAt; !r.IsZero() && (at.IsZero() || r.Before(at)) {
		at = r
	}
	for _, d := range m.tab.holding {
		if at.IsZero() || d.Before(at) {
			at = d
		}
	}
	return at, !at.IsZero()
}

// reconcile converges this node on its part of the assignment, one phase
// after the other (see reconcilePass): read what this node owns, stop what
// moved away or changed, release it, claim and create what is new, publish
// the key states.
func (m *Manager[C, I]) reconcile() {
	session, leaseCtx := m.membership.current()
	m.dropStale(session)
	if !m.life.canTakeWork(session) {
		return
	}
	m.bookConfirmed(session)
	p := &reconcilePass[C, I]{m: m, session: session, lease: leaseCtx}
	p.stats = reconcileStats{start: time.Now()}
	ctx, span, links := m.tel.startReconcile(leaseCtx)
	p.ctx = ctx
	p.stats.links = links
	defer func() { m.tel.endReconcile(ctx, span, p.stats) }()

	if !p.readMine(span) {
		return
	}
	p.configs, p.fresh = m.nodeConfigs(ctx, p.mine)
	now := p.stopMoved()
	p.release(now)
	p.claimAndCreate()
	p.publish()
}

// reconcilePass is one reconcile: what its phases share, so that each phase
// is a method of its own.
type reconcilePass[C, I any] struct {
	m       *Manager[C, I]
	ctx     context.Context // the reconcile's span, under the lease
	lease   context.Context // the lease, parent of new instances
	session string
	stats   reconcileStats
	mine    map[string]bool      // the keys assigned to this node
	configs map[string]config[C] // this node's configs of those keys
	fresh   bool                 // getConfig answered just now
}

// readMine reads the keys assigned to this node, and links the span to the
// rebalance that last changed them. Without an answer it schedules a retry
// and reports false: nothing else of the pass can go ahead.
func (p *reconcilePass[C, I]) readMine(span trace.Span) bool {
	m, ctx := p.m, p.ctx
	assigned, tp, err := m.readAssigned(ctx)
	if tp != "" && tp != m.lastTrace {
		// A rebalance changed this node's keys since the last look: this
		// reconcile, and any that finish its claims, link to it.
		m.lastTrace = tp
		if link, ok := linkTo(tp); ok {
			span.AddLink(link)
			p.stats.links = append(p.stats.links, link)
		}
	}
	if err != nil {
		p.stats.err = fmt.Errorf("read assignment: %w", err)
		m.tab.retryAt = time.Now().Add(m.s.heartbeat)
		return false
	}
	m.tab.retryAt = time.Time{}
	p.mine = make(map[string]bool, len(assigned))
	for _, k := range assigned {
		p.mine[k] = true
	}
	return true
}

// stopMoved stops what is no longer ours or no longer configured, and
// replaces what changed under the same key. It returns the time it judged
// the holds of moved keys by, which the release phase goes by too.
func (p *reconcilePass[C, I]) stopMoved() time.Time {
	m, mine, configs := p.m, p.mine, p.configs
	var stop, replace []*entry[I]
	ready, now := m.announced.take(), time.Now()
	for key, e := range m.tab.running {
		cfg, ok := configs[key]
		switch {
		case e.stopping.Load():
			// Stopped behind the node loop's back: after a restore, Redis
			// no longer says this node owns it.
			stop = append(stop, e)
		case !mine[key] && ok && m.holdMoved(key, ready, now):
			// Moved away: it runs on until the new owner has prepared.
		case !mine[key] || !ok:
			stop = append(stop, e)
		case cfg.hashed && e.sum == "":
			e.sum = cfg.sum // created before its config could be hashed
		case cfg.hashed && cfg.sum != e.sum:
			replace = append(replace, e)
		}
	}
	m.disconnectAll(append(stop, replace...))
	p.stats.disconnected = len(stop)
	p.stats.replaced = len(replace)
	return now
}

// release forgets what the table keeps about keys that are no longer ours,
// and releases the claims of those that no longer run here (a hung call
// keeps its key claimed until it returns).
func (p *reconcilePass[C, I]) release(now time.Time) {
	m, ctx, session, mine, configs := p.m, p.ctx, p.session, p.mine, p.configs
	for key := range m.tab.holding {
		if _, running := m.tab.running[key]; mine[key] || !running {
			delete(m.tab.holding, key)
		}
	}
	for key, until := range m.tab.unprepared {
		if !mine[key] || !now.Before(until) {
			delete(m.tab.unprepared, key)
		}
	}
	var release []string
	for key := range m.tab.claimed {
		if _, held := m.tab.holding[key]; held {
			continue
		}
		if _, ok := configs[key]; (!mine[key] || !ok) && !m.hung.has(key) {
			release = append(release, key)
		}
	}
	m.dropPrepared(func(key string, pre *prepared[I]) bool {
		cfg, ok := configs[key]
		_, running := m.tab.running[key]
		return mine[key] && ok && !running && pre.session == session && (!cfg.hashed || pre.sum == "" || cfg.sum == pre.sum)
	})
	for key := range m.tab.failures {
		if !mine[key] {
			delete(m.tab.failures, key)
		}
	}
	for key := range m.tab.waiting {
		if !mine[key] {
			delete(m.tab.waiting, key)
		}
	}
	if err := m.release(ctx, session, release); err != nil {
		p.stats.err = err
	}
	p.stats.released = len(release)
}

// claimAndCreate claims and creates what is ours but not running,
// including what was just replaced: claiming a key this node owns returns
// its token. After another node released keys, refused claims are tried
// again at once.
func (p *reconcilePass[C, I]) claimAndCreate() {
	m, ctx, leaseCtx, session, configs := p.m, p.ctx, p.lease, p.session, p.configs
	now := time.Now()
	want := p.wanted(now)
	gen := m.instances.generation()
	// Keys this node already owns are claimed again (a retry after a failed
	// create or health check): not a change of owner, so not history.
	owned := make(map[string]bool)
	for _, key := range want {
		if m.tab.claimed[key] != 0 {
			owned[key] = true
		}
	}
	granted, held, err := m.claim(ctx, session, want)
	if err != nil {
		p.stats.err = err
	}
	p.stats.claimed = len(granted)
	p.stats.refused = held
	var jobs []createJob[C]
	for _, key := range want {
		if token, ok := granted[key]; ok {
			delete(m.tab.waiting, key)
			delete(m.tab.unprepared, key)
			jobs = append(jobs, createJob[C]{key: key, cfg: configs[key], token: token, gen: gen, lease: leaseCtx})
		} else if retry := now.Add(m.claimRetry); err == nil && !m.tab.waiting[key].After(retry) {
			// Held by its old owner: with WithPrepare, get ready meanwhile.
			m.startPrepare(ctx, leaseCtx, session, key, configs[key])
			// Refused: try again soon. A later time set by claim (the end
			// of a grace period) stands, so that the node wakes when the
			// grace ends instead of polling through it.
			m.tab.waiting[key] = retry
		}
	}
	p.stats.created, p.stats.failed = m.createAll(ctx, leaseCtx, session, jobs)
	if len(granted) > 0 {
		claimed := make([]string, 0, len(granted))
		for key := range granted {
			if !owned[key] {
				claimed = append(claimed, key)
			}
		}
		slices.Sort(claimed)
		for chunk := range slices.Chunk(claimed, claimChunk) {
			m.record(ctx, HistoryClaimed, 0, chunk, nil, "")
		}
	}
	p.stats.waiting = len(m.tab.waiting)
}

// wanted lists the keys to claim at now: ours, configured, not running, no
// call of theirs hung, and not waiting out a backoff or a refused claim.
func (p *reconcilePass[C, I]) wanted(now time.Time) []string {
	m := p.m
	retryRefused := m.released.Swap(false)
	var want []string
	for key := range p.mine {
		if _, running := m.tab.running[key]; running {
			continue
		}
		if _, ok := p.configs[key]; !ok || m.hung.has(key) {
			continue
		}
		if f := m.tab.failures[key]; f != nil && now.Before(f.next) {
			continue
		}
		if w, ok := m.tab.waiting[key]; ok && now.Before(w) && !retryRefused {
			continue
		}
		want = append(want, key)
	}
	return want
}

// publish writes the key states, the keys this node avoids and the
// handoffs, and updates Instances' view.
func (p *reconcilePass[C, I]) publish() {
	m, ctx := p.m, p.ctx
	unknown := p.unknown()
	m.tel.setUnknown(len(unknown))
	// States first: the leader, woken by a give-up, reads the key's last
	// error from them.
	m.syncStates(ctx, p.session, unknown)
	m.syncAvoid(ctx, p.configs, unknown)
	if m.prepare != nil {
		m.syncHandoffs(ctx)
	}
	m.publishView()
}

// unknown lists the assigned keys this node has no config for. A key is
// unknown to this node only when getConfig just answered without it: not
// when getConfig failed or the list is merely older than the leader's.
func (p *reconcilePass[C, I]) unknown() map[string]bool {
	m := p.m
	unknown := map[string]bool{}
	for key := range p.mine {
		if _, ok := p.configs[key]; ok {
			continue
		}
		if p.fresh || m.tab.avoiding[key].why == avoidUnknown {
			unknown[key] = true
			if m.tab.states[key].State != KeyUnknown {
				m.log.Warn("assigned a key that this node's getConfig does not return; it cannot run here", "key", key)
			}
		}
	}
	return unknown
}

// scanPage is how many entries one SSCAN or HSCAN of a big set or hash is
// asked for: each page is a bounded command, however many keys there are.
const scanPage = 1000

// readAssigned reads the keys assigned to this node, page by page, each page
// with a timeout of its own, and the trace context of the rebalance that last
// changed them. A key added or removed while the pages are read may be
// missed or seen: the write that changed it publishes an event, which brings
// another reconcile, and claims check the assignment in Redis.
func (m *Manager[C, I]) readAssigned(ctx context.Context) (keys []string, trace string, err error) {
	set := m.k.assigned(m.s.nodeID)
	rctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
	res := m.client.DoMulti(rctx,
		m.client.B().Sscan().Key(set).Cursor(0).Count(scanPage).Build(),
		m.client.B().Hget().Key(m.k.traces).Field(m.s.nodeID).Build())
	cancel()
	trace, _ = res[1].ToString()
	page, err := res[0].AsScanEntry()
	for err == nil {
		keys = append(keys, page.Elements...)
		if page.Cursor == 0 {
			return keys, trace, nil
		}
		rctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
		page, err = m.client.Do(rctx, m.client.B().Sscan().Key(set).Cursor(page.Cursor).Count(scanPage).Build()).AsScanEntry()
		cancel()
	}
	return nil, trace, err
}

// dropStale disconnects instances that run under an older lease: the node was
// fenced and may have rejoined since.
func (m *Manager[C, I]) dropStale(session string) {
	var stale []*entry[I]
	for _, e := range m.tab.running {
		if e.session != session || e.stopping.Load() {
			stale = append(stale, e)
		}
	}
	if len(stale) > 0 {
		m.disconnectAll(stale)
	}
	if session == "" {
		clear(m.tab.claimed)
		clear(m.tab.waiting)
		clear(m.tab.states)
	}
	m.publishView()
}

// dropAll disconnects every instance and releases every claim: the node is
// fenced or stopping.
func (m *Manager[C, I]) dropAll(ctx context.Context, why string) {
	m.dropPrepared(nil)
	for _, cancel := range m.tab.preparing {
		cancel() // what they return is disposed of: nothing will be activated
	}
	clear(m.tab.holding)
	clear(m.tab.unprepared)
	all := make([]*entry[I], 0, len(m.tab.running))
	for _, e := range m.tab.running {
		all = append(all, e)
	}
	if len(all) > 0 {
		m.log.Info("disconnecting all instances", "reason", why, "count", len(all))
	}
	m.disconnectAll(all)
	session, _ := m.membership.current()
	if session != "" {
		m.bookConfirmed(session)
	}
	if session != "" && len(m.tab.claimed) > 0 {
		keys := make([]string, 0, len(m.tab.claimed))
		for key := range m.tab.claimed {
			if !m.hung.has(key) {
				keys = append(keys, key)
			}
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.s.heartbeat)
		if err := m.release(rctx, session, keys); err != nil && !m.slot.saw(m.log, "release", err) {
			m.log.Warn("release failed; the claims expire with the lease", "err", err)
		}
		cancel()
	}
	clear(m.tab.claimed)
	clear(m.tab.waiting)
	clear(m.tab.failures)
	if session, _ := m.membership.current(); session != "" {
		m.syncStates(context.WithoutCancel(ctx), session, nil)
	}
	clear(m.tab.states)
	m.publishView()
}

// claim asks Redis for ownership of keys and returns the granted ones with
// their fencing tokens.
func (m *Manager[C, I]) claim(ctx context.Context, session string, keys []string) (granted map[string]uint64, held int, err error) {
	granted = make(map[string]uint64, len(keys))
	for i := 0; i < len(keys); i += claimChunk {
		if m.membership.checkLease() != session {
			return granted, held, nil // fenced: claims died with the lease
		}
		chunk := keys[i:min(i+claimChunk, len(keys))]
		n, graceEnd, done, err := m.claimChunk(ctx, session, chunk, granted)
		m.live.advance()
		held += n
		if !graceEnd.IsZero() {
			// A grace period refuses every claim until it ends: the keys
			// not asked for yet wait with the chunk, or the node would
			// read its keys and ask again for the next chunk, over and over.
			for _, key := range keys[i:] {
				m.tab.waiting[key] = graceEnd
			}
		}
		if done || err != nil {
			return granted, held, err
		}
	}
	return granted, held, nil
}

// claimChunk bounds the keys one claim script takes, so that no script
// blocks Redis for long.
const claimChunk = 500

// claimChunk claims one chunk of keys into granted, and reports how many
// another live node still holds, when the grace period ends if one refused
// the claim, and whether the rest must wait (the node is fenced, or a grace
// period runs).
func (m *Manager[C, I]) claimChunk(ctx context.Context, session string, keys []string, granted map[string]uint64) (held int, graceEnd time.Time, done bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
	defer cancel()
	res, err := m.db().claim(ctx, m.s.nodeID, session, m.membership.ttlFloor(), m.membership.durable(), keys)
	var bad *badReply
	if err != nil && !errors.As(err, &bad) {
		// The script may have run with its reply lost: keep the keys on the
		// books as claimed, so that they are released if they move away,
		// and publish their states again (a grant drops a key's record).
		for _, key := range keys {
			m.tab.waiting[key] = time.Now().Add(m.claimRetry)
			if _, ok := m.tab.claimed[key]; !ok {
				m.tab.claimed[key] = 0
			}
			delete(m.tab.states, key)
		}
		return 0, time.Time{}, true, fmt.Errorf("claim: %w", err)
	}
	m.slot.over(m.log)
	if err != nil {
		return 0, time.Time{}, true, fmt.Errorf("claim: %w", err)
	}
	switch res.status {
	case -1:
		m.membership.fence(session, "claim refused: not a live member")
		return 0, time.Time{}, true, nil
	case -2:
		m.log.Debug("claims wait for the grace period", "wait_ms", res.wait.Milliseconds())
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
			m.tab.claimed[key] = token
			// The grant dropped the key's record: its owner entry says
			// creating until the node publishes what follows.
			delete(m.tab.states, key)
		}
	}
	return held, time.Time{}, false, nil
}

// release gives up claims after their instances were disconnected, and tells
// the waiting claimants at once. Each chunk of keys is one bounded script
// call with a timeout of its own.
// A claim whose release fails stays on the books and is released again at
// the next reconcile, which is scheduled soon.
func (m *Manager[C, I]) release(ctx context.Context, session string, keys []string) error {
	if len(keys) == 0 || session == "" {
		for _, key := range keys {
			delete(m.tab.claimed, key)
		}
		return nil
	}
	for chunk := range slices.Chunk(keys, claimChunk) {
		if err := m.releaseChunk(ctx, session, chunk); err != nil {
			m.tab.retryAt = time.Now().Add(m.claimRetry)
			return err
		}
		m.live.advance()
	}
	return nil
}

func (m *Manager[C, I]) releaseChunk(ctx context.Context, session string, keys []string) error {
	ctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
	defer cancel()
	if err := m.db().release(ctx, m.s.nodeID, session, keys); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	m.slot.over(m.log)
	for _, key := range keys {
		delete(m.tab.claimed, key)
		delete(m.tab.states, key) // the release dropped it
	}
	m.record(ctx, HistoryReleased, 0, keys, nil, "")
	return nil
}

type createJob[C any] struct {
	key   string
	cfg   config[C]
	token uint64
	gen   string          // the record's generation when the claim was sent
	lease context.Context // the lease the claim was made under
}

// createAll creates instances in parallel and files them in the table.
func (m *Manager[C, I]) createAll(ctx, leaseCtx context.Context, session string, jobs []createJob[C]) (created, failed int) {
	type result struct {
		job createJob[C]
		e   *entry[I]
		err error
	}
	results := make(chan result, len(jobs))
	sem := make(chan struct{}, m.s.createConcurrency)
	for _, job := range jobs {
		sem <- struct{}{}
		p := m.tab.prepared[job.key]
		delete(m.tab.prepared, job.key)
		go func() {
			defer func() { <-sem }()
			var e *entry[I]
			var err error
			if p != nil {
				e, err = m.activateJob(ctx, session, job, p)
			} else {
				e, err = m.create(ctx, leaseCtx, session, job)
			}
			results <- result{job, e, err}
		}()
	}
	for range jobs {
		r := <-results
		m.live.advance()
		if errors.Is(r.err, errNotCreated) {
			m.log.Debug("create skipped", "key", r.job.key, "reason", r.err)
			m.tab.waiting[r.job.key] = time.Now().Add(m.claimRetry)
			continue
		}
		if r.err != nil {
			failed++
			m.recordFailure(r.job.key, "create", r.err)
			continue
		}
		created++
		// A create that works ends a streak of failed creates; a streak of
		// failed health checks ends only with a passing check, so that an
		// instance that connects and then always fails is not recreated at
		// the base delay forever.
		if f := m.tab.failures[r.job.key]; f != nil && f.kind != "health check" {
			delete(m.tab.failures, r.job.key)
		}
		m.tab.running[r.job.key] = r.e
	}
	return created, failed
}

func (m *Manager[C, I]) recordFailure(key, what string, err error) {
	f := m.tab.failures[key]
	if f == nil {
		f = &failure{}
		m.tab.failures[key] = f
	}
	m.logPanic(key, err)
	f.attempts++
	f.kind = what
	f.err = shortError(err)
	// Exponential, capped, with jitter: a failing upstream is not hit by
	// every key in step.
	delay := min(m.retryMin<<min(f.attempts-1, 20), m.retryMax)
	delay = delay/2 + rand.N(delay/2+1)
	f.next = time.Now().Add(delay)
	m.log.Warn(what+" failed", "key", key, "attempt", f.attempts, "retry_in", delay, "err", err)
}

// create runs createInstance under the callback timeout. The context given to
// it lives as long as the instance: it carries the fencing token and is
// cancelled the moment this node loses the right to run the instance.
func (m *Manager[C, I]) create(ctx, leaseCtx context.Context, session string, job createJob[C]) (*entry[I], error) {
	ictx, cancel := context.WithCancel(context.WithValue(leaseCtx, ownershipKey{}, ownership{job.key, job.token}))
	// A fence or a suspend between the claim and now: the claim died with
	// the lease, and createInstance must not see a context that has ended.
	if m.membership.checkLease() != session || ictx.Err() != nil {
		cancel()
		return nil, fmt.Errorf("%w: the lease ended before create", errNotCreated)
	}
	// In flight from here until createInstance returns, however long: a
	// restore must find it (see verifyOwnership). A claim granted on a record
	// that Redis has since replaced is claimed again instead.
	m.inflight.add(job.key)
	if job.gen != m.instances.generation() {
		m.inflight.remove(job.key)
		cancel()
		return nil, fmt.Errorf("%w: the record was restored by Redis after the claim; claiming again", errNotCreated)
	}
	spanCtx, span := m.tel.startCallback(ctx, spanCreate, job.key)
	start := time.Now()
	type result struct {
		inst I
		err  error
	}
	done := make(chan result, 1)
	go func() {
		defer m.inflight.remove(job.key)
		inst, err := callSafely(func() (I, error) { return m.createInstance(ictx, job.cfg.value) })
		done <- result{inst, err}
	}()
	timer := time.NewTimer(m.s.timeout)
	defer timer.Stop()
	var err error
	select {
	case r := <-done:
		e := m.newEntry(job, session, r.inst, ictx, cancel)
		if r.err == nil && m.instances.add(e) {
			m.tel.endCallback(spanCtx, span, spanCreate, start, nil)
			return e, nil
		}
		cancel()
		if r.err != nil {
			m.tel.endCallback(spanCtx, span, spanCreate, start, r.err)
			return nil, r.err
		}
		// Fenced while creating: the new instance must not run.
		<-m.instances.begin(e)
		err = fmt.Errorf("fenced while creating: %w", ictx.Err())
		m.tel.endCallback(spanCtx, span, spanCreate, start, err)
		return nil, err
	case <-timer.C:
		err = fmt.Errorf("%w: createInstance did not return within %v", ErrCallback, m.s.timeout)
	case <-ictx.Done():
		err = fmt.Errorf("fenced while creating: %w", ictx.Err())
	}
	cancel()
	m.tel.endCallback(spanCtx, span, spanCreate, start, err)
	// The call may still return an instance: it must not leak, and until it
	// is gone the key must not run anywhere else.
	m.hung.add(job.key)
	go func() {
		defer m.triggerNode()
		defer m.hung.remove(job.key)
		if r := <-done; r.err == nil {
			<-m.instances.begin(m.newEntry(job, session, r.inst, ictx, cancel))
		}
	}()
	return nil, err
}

func (m *Manager[C, I]) newEntry(job createJob[C], session string, inst I, ctx context.Context, cancel context.CancelFunc) *entry[I] {
	return &entry[I]{key: job.key, sum: job.cfg.sum, inst: inst, token: job.token, session: session,
		gen: job.gen, ctx: ctx, cancel: cancel, lease: job.lease, stopped: make(chan struct{})}
}

// errNotCreated marks a create that dim never called: the lease had ended,
// or the claim was granted on a record Redis has since replaced. It is not
// a failure of createInstance, and does not count towards giving a key up.
var errNotCreated = errors.New("dim: create not attempted")

// disconnectAll stops entries, all at once, removes them from the table and
// waits until each disconnect hook returned or was abandoned.
func (m *Manager[C, I]) disconnectAll(entries []*entry[I]) {
	chans := make([]<-chan struct{}, 0, len(entries))
	for _, e := range entries {
		delete(m.tab.running, e.key)
		chans = append(chans, m.instances.begin(e))
	}
	slow := time.NewTimer(stoppingAfter)
	defer slow.Stop()
	for i, ch := range chans {
		select {
		case <-ch:
			m.live.advance()
			continue
		case <-slow.C:
			// Disconnects that take their time show as stopping.
			m.markStopping(entries[i:], chans[i:])
		}
		<-ch
		m.live.advance()
	}
}

// stoppingAfter is how long a disconnect runs before its key is shown as
// stopping; quicker ones are never published.
const stoppingAfter = 100 * time.Millisecond

// markStopping publishes the entries whose disconnect still runs as
// stopping.
func (m *Manager[C, I]) markStopping(entries []*entry[I], chans []<-chan struct{}) {
	var args []string
	session := ""
	for i, e := range entries {
		select {
		case <-chans[i]:
			continue
		default:
		}
		session = e.session
		r := keyRecord{Node: m.s.nodeID, Session: e.session, State: KeyStopping, Since: time.Now().UnixMilli()}
		b, _ := json.Marshal(r)
		args = append(args, e.key, string(b))
		m.tab.states[e.key] = r
	}
	if len(args) > 0 {
		_, _ = m.publishStates(m.runCtx, session, 0, nil, args)
	}
}

// disconnectOne calls the disconnect hook of a stopping entry once, under
// the callback timeout; the entry's context has been cancelled already.
// Returning, with an error or not, means the instance stopped.
func (m *Manager[C, I]) disconnectOne(e *entry[I]) {
	if m.disconnect == nil {
		return
	}
	m.inflight.add(e.key)
	defer m.inflight.remove(e.key)
	owned := context.WithValue(m.runCtx, ownershipKey{}, ownership{e.key, e.token})
	spanCtx, span := m.tel.startCallback(owned, spanDisconnect, e.key)
	start := time.Now()
	err := m.callWithTimeout(context.WithoutCancel(spanCtx), e.key, func(ctx context.Context) error {
		// The hook's context ends at the fence too, so that a hook that
		// waits on it returns within the fence margin; the call is still
		// waited for up to the callback timeout, not abandoned.
		hctx, cancel := context.WithCancel(ctx)
		defer cancel()
		if e.lease != nil {
			defer context.AfterFunc(e.lease, cancel)()
		}
		return m.disconnect(hctx, e.inst)
	})
	m.tel.endCallback(spanCtx, span, spanDisconnect, start, err)
	if err != nil {
		m.logPanic(e.key, err)
		m.log.Warn("disconnect failed", "key", e.key, "err", err)
	}
}

// fenced is the membership's word that the lease ended, and why: every
// instance's context ended with it, and every disconnect hook is called
// now, all at once, whatever the node loop is doing. The node rejoins once
// the node loop has seen every instance stop (see fenceCh).
func (m *Manager[C, I]) fenced(reason string) {
	m.life.fence()
	m.instances.stopAll()
	m.log.Warn("fenced: stopping all instances", "reason", reason)
	m.tel.fenced(m.runCtx, reason)
	m.elector.stepDown()
	signal(m.fenceCh)
}

// newGeneration files the generation of Redis's record that a join or
// renewal read. When it changed, what the node holds was claimed in another
// record: the check it returns confirms it in the new one (see
// verifyOwnership).
func (m *Manager[C, I]) newGeneration(gen string) func(session string, until time.Time) error {
	changed, check := m.instances.setGeneration(gen)
	if !changed {
		return nil
	}
	return func(session string, until time.Time) error { return m.verifyOwnership(session, check, until) }
}

// verifyOwnership makes Redis's restored record say again what this node's
// session holds: every key it runs, stops, or has a create or disconnect
// call in flight for (see verifyScript). It runs before the heartbeat that
// brought the new generation extends the lease, so it is done before the
// grace period can end, or the node fences. It may take until the lease
// would end (until): after a Cluster slot migration the client may first
// have to learn the slot's new master.
func (m *Manager[C, I]) verifyOwnership(session string, entries []*entry[I], until time.Time) error {
	byKey := map[string]*entry[I]{}
	held := map[string]bool{}
	for _, e := range entries {
		if e.session == session {
			held[e.key] = true
			if !e.stopping.Load() {
				byKey[e.key] = e
			}
		}
	}
	for _, key := range m.inflight.list() {
		held[key] = true
	}
	for _, key := range m.hung.list() {
		held[key] = true
	}
	keys := slices.Sorted(maps.Keys(held))
	for chunk := range slices.Chunk(keys, verifyChunk) {
		ctx, cancel := context.WithDeadline(m.runCtx, until)
		lost, wrote, err := m.db().verify(ctx, m.s.nodeID, session, chunk)
		cancel()
		if err != nil {
			return fmt.Errorf("confirm ownership after Redis restored an older record: %w", err)
		}
		m.confirmed.add(session, wrote)
		for _, key := range lost {
			if e := byKey[key]; e != nil {
				m.log.Warn("another node holds this key in the restored record; stopping it", "key", key)
				m.instances.begin(e)
			}
		}
	}
	m.triggerNode()
	return nil
}

// verifyChunk bounds the keys one verify script checks.
const verifyChunk = 1000

// confirmedKeys hands the keys verifyOwnership wrote to the record over to
// the node loop, which puts them on its books (table.claimed). The heartbeat
// looks at what the node holds and writes it a moment later; a key the node
// loop released in between (its disconnect had just returned) was written
// all the same. Only what is on the books is ever released, so without this
// such an entry would refuse every other claim of its key for as long as
// the session lived.
type confirmedKeys struct {
	mu      sync.Mutex
	session string
	keys    []string
}

// add files keys written under session.
func (c *confirmedKeys) add(session string, keys []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.session != session {
		c.session, c.keys = session, nil
	}
	c.keys = append(c.keys, keys...)
}

// take returns and forgets the keys written under session; those written
// under an older session died with it.
func (c *confirmedKeys) take(session string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := c.keys
	c.keys = nil
	if c.session != session {
		return nil
	}
	return keys
}

// bookConfirmed puts the keys verifyOwnership wrote on the node loop's
// books, so that those it does not run are released like any other claim,
// and has their states published again: a re-asserted owner entry says
// creating, and the restored state hash may have lost their records.
func (m *Manager[C, I]) bookConfirmed(session string) {
	for _, key := range m.confirmed.take(session) {
		if _, ok := m.tab.claimed[key]; !ok {
			m.tab.claimed[key] = 0
		}
		delete(m.tab.states, key)
	}
}

// healthResult is the outcome of one instance health check.
type healthResult[I any] struct {
	e   *entry[I]
	err error
}

// startHealthChecks checks every running instance in the background; the
// results come back to the node loop. An instance whose previous check has
// not returned yet (abandoned at its timeout) is not checked again.
func (m *Manager[C, I]) startHealthChecks() {
	if m.healthcheck == nil {
		return
	}
	for _, e := range m.tab.running {
		if e.stopping.Load() || !e.check.busy.CompareAndSwap(false, true) {
			continue
		}
		m.wg.Go(func() {
			owned := context.WithValue(m.runCtx, ownershipKey{}, ownership{e.key, e.token})
			ctx, span := m.tel.startCallback(owned, spanHealth, e.key)
			start := time.Now()
			err := m.callGuarded(ctx, &e.check, func(ctx context.Context) error { return m.healthcheck(ctx, e.inst) })
			m.tel.endCallback(ctx, span, spanHealth, start, err)
			select {
			case m.healthCh <- healthResult[I]{e, err}:
			case <-m.runCtx.Done():
			}
		})
	}
}

// onHealth disconnects an unhealthy instance; reconcile creates it again
// after a backoff.
func (m *Manager[C, I]) onHealth(r healthResult[I]) {
	if m.tab.running[r.e.key] != r.e {
		return
	}
	if r.err == nil {
		delete(m.tab.failures, r.e.key)
		return
	}
	m.tel.healthFailed(m.runCtx, "instance")
	m.disconnectAll([]*entry[I]{r.e})
	m.recordFailure(r.e.key, "health check", r.err)
	if session, _ := m.membership.current(); session != "" {
		m.syncStates(m.runCtx, session, nil)
	}
	m.publishView()
}

// bounded runs a user callback under the callback timeout with panics
// recovered. It returns the callback's error, or, when the callback outlives
// the timeout, an error wrapping [ErrCallback] and a channel (late) that
// closes once the abandoned call returns at last.
func (e *env) bounded(ctx context.Context, fn func(context.Context) error) (late <-chan struct{}, err error) {
	ctx, cancel := context.WithTimeout(ctx, e.s.timeout)
	done := make(chan error, 1)
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		defer cancel()
		_, err := callSafely(func() (struct{}, error) { return struct{}{}, fn(ctx) })
		done <- err
	}()
	select {
	case err := <-done:
		return nil, err
	case <-ctx.Done():
		// The parent may have ended as the call returned: prefer its result.
		select {
		case err := <-done:
			return nil, err
		default:
		}
	}
	return returned, fmt.Errorf("%w: did not return within %v", ErrCallback, e.s.timeout)
}

// callGuarded runs fn bounded with g already held, and lets g go when fn
// returns, even long after an abandoned call.
func (e *env) callGuarded(ctx context.Context, g *guard, fn func(context.Context) error) error {
	late, err := e.bounded(ctx, fn)
	if late == nil {
		g.busy.Store(false)
		return err
	}
	go func() {
		<-late
		g.busy.Store(false)
	}()
	return err
}

// callOnce runs fn like callGuarded if no earlier call of g's kind is still
// running, and fails at once otherwise.
func (e *env) callOnce(ctx context.Context, g *guard, what string, fn func(context.Context) error) error {
	if !g.busy.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: %s: an earlier call has not returned yet", ErrCallback, what)
	}
	return e.callGuarded(ctx, g, fn)
}

// callWithTimeout runs fn bounded. A call given up on for a key holds that
// key in the hung set until it returns.
func (m *Manager[C, I]) callWithTimeout(ctx context.Context, key string, fn func(context.Context) error) error {
	late, err := m.bounded(ctx, fn)
	if late != nil && key != "" {
		m.hung.add(key)
		go func() {
			<-late
			m.hung.remove(key)
			m.triggerNode()
		}()
	}
	return err
}

// callSafely calls fn, turning a panic into a *panicError.
func callSafely[T any](fn func() (T, error)) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &panicError{value: fmt.Sprint(r), stack: debug.Stack()}
		}
	}()
	return fn()
}

// panicError is a recovered panic of a user callback. Its message is short;
// the stack is logged once per key and message (see logPanic).
type panicError struct {
	value string
	stack []byte
}

func (e *panicError) Error() string { return "dim: callback failed: panic: " + e.value }

func (e *panicError) Unwrap() error { return ErrCallback }

// publishView refreshes the read-only copy behind Instances.
func (m *Manager[C, I]) publishView() {
	view := make(map[string]I, len(m.tab.running))
	for key, e := range m.tab.running {
		view[key] = e.inst
	}
	m.viewMu.Lock()
	m.view = view
	m.viewMu.Unlock()
	m.tel.setInstances(len(view))
}
