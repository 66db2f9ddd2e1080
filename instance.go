package dim

import (
	"context"
	"fmt"
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
			m.calls.startHealthChecks(m.tab.running, m.healthCh)
		case res := <-m.healthCh:
			m.live.enter()
			m.onHealth(res)
		case r := <-m.tab.created:
			// A create that outlasted its reconcile: file it, and whatever
			// else has come, and reconcile to publish it (or to stop it, if
			// its key moved meanwhile).
			m.live.enter()
			m.tab.file(r)
			m.tab.fileReady()
			m.triggerNode()
		case r := <-m.handoffs.prepareCh:
			m.live.enter()
			session, _ := m.membership.current()
			m.handoffs.onPrepared(r, session, m.tab.has(r.key))
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
	at := m.ledger.nextRetry(func(key string) bool { return m.tab.has(key) || m.tab.busy(key) })
	if d := m.handoffs.nextDeadline(); !d.IsZero() && (at.IsZero() || d.Before(at)) {
		at = d
	}
	return at, !at.IsZero()
}

// reconcile converges this node on its part of the assignment, one phase
// after the other (see reconcilePass): read what this node owns, stop what
// moved away or changed, release it, claim and create what is new, publish
// the key states.
func (m *Manager[C, I]) reconcile() {
	session, leaseCtx := m.membership.current()
	m.tab.sweepStopped()
	m.dropStale(session)
	if !m.life.canTakeWork(session) {
		return
	}
	m.ledger.bookConfirmed(session)
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
	assigned, tp, err := m.ledger.readAssigned(ctx)
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
		m.ledger.retryAt = time.Now().Add(m.s.heartbeat)
		return false
	}
	m.ledger.retryAt = time.Time{}
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
	ready, now := m.handoffs.announced.take(), time.Now()
	for key, e := range m.tab.running {
		cfg, ok := configs[key]
		switch {
		case !mine[key] && ok && m.handoffs.holdMoved(key, ready, now):
			// Moved away: it runs on until the new owner has prepared.
		case !mine[key] || !ok:
			stop = append(stop, e)
		case cfg.hashed && e.sum == "":
			e.sum = cfg.sum // created before its config could be hashed
		case cfg.hashed && cfg.sum != e.sum:
			replace = append(replace, e)
		}
	}
	// An announcement for a key whose create still runs here counts once
	// the create is filed: keep it for a later reconcile.
	var later []string
	for key := range ready {
		if _, creating := m.tab.creating[key]; creating {
			later = append(later, key)
		}
	}
	m.handoffs.announced.add(later)
	m.tab.stopInBackground(append(stop, replace...))
	p.stats.disconnected = len(stop)
	p.stats.replaced = len(replace)
	return now
}

// release forgets what the table keeps about keys that are no longer ours,
// and releases the claims of those that no longer run here (a hung call
// keeps its key claimed until it returns).
func (p *reconcilePass[C, I]) release(now time.Time) {
	m, ctx, session, mine, configs := p.m, p.ctx, p.session, p.mine, p.configs
	m.handoffs.settle(mine, m.tab.has, now)
	var release []string
	for key := range m.ledger.claimed {
		if m.handoffs.held(key) {
			continue
		}
		if _, ok := configs[key]; (!mine[key] || !ok) && !m.calls.hung.has(key) && !m.tab.busy(key) {
			release = append(release, key)
		}
	}
	m.handoffs.dropPrepared(func(key string, pre *prepared[I]) bool {
		cfg, ok := configs[key]
		_, running := m.tab.running[key]
		return mine[key] && ok && !running && pre.session == session && (!cfg.hashed || pre.sum == "" || cfg.sum == pre.sum)
	})
	for key := range m.ledger.failures {
		if !mine[key] {
			delete(m.ledger.failures, key)
		}
	}
	for key := range m.ledger.waiting {
		if !mine[key] {
			delete(m.ledger.waiting, key)
		}
	}
	if err := m.ledger.release(ctx, session, release); err != nil {
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
	gen := m.calls.instances.generation()
	// Keys this node already owns are claimed again (a retry after a failed
	// create or health check): not a change of owner, so not history.
	owned := make(map[string]bool)
	for _, key := range want {
		if m.ledger.claimed[key] != 0 {
			owned[key] = true
		}
	}
	granted, held, err := m.ledger.claim(ctx, session, want)
	if err != nil {
		p.stats.err = err
	}
	p.stats.claimed = len(granted)
	p.stats.refused = held
	var jobs []createJob[C]
	for _, key := range want {
		if token, ok := granted[key]; ok {
			delete(m.ledger.waiting, key)
			m.handoffs.granted(key)
			jobs = append(jobs, createJob[C]{key: key, cfg: configs[key], token: token, gen: gen, lease: leaseCtx})
		} else if retry := now.Add(m.ledger.claimRetry); err == nil && !m.ledger.waiting[key].After(retry) {
			// Held by its old owner: with WithPrepare, get ready meanwhile.
			m.handoffs.startPrepare(ctx, leaseCtx, session, key, configs[key])
			// Refused: try again soon. A later time set by claim (the end
			// of a grace period) stands, so that the node wakes when the
			// grace ends instead of polling through it.
			m.ledger.waiting[key] = retry
		}
	}
	p.stats.created, p.stats.failed = m.tab.createAll(ctx, leaseCtx, session, jobs)
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
	p.stats.waiting = len(m.ledger.waiting)
}

// wanted lists the keys to claim at now: ours, configured, not running, no
// call of theirs hung, and not waiting out a backoff or a refused claim.
func (p *reconcilePass[C, I]) wanted(now time.Time) []string {
	m := p.m
	retryRefused := m.released.Swap(false)
	var want []string
	for key := range p.mine {
		if _, running := m.tab.running[key]; running || m.tab.busy(key) {
			continue
		}
		cfg, ok := p.configs[key]
		if !ok || m.calls.hung.has(key) || m.ledger.backingOff(key, cfg.hashedSum(), now) {
			continue
		}
		if w, ok := m.ledger.waiting[key]; ok && now.Before(w) && !retryRefused {
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
	m.ledger.syncStates(ctx, p.session, m.tab.runs(), unknown)
	m.ledger.syncAvoid(ctx, func(key string) bool { _, ok := p.configs[key]; return ok }, m.tab.has, unknown)
	if m.handoffs.enabled() {
		m.handoffs.syncHandoffs(ctx)
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
		if p.fresh || m.ledger.avoiding[key].why == avoidUnknown {
			unknown[key] = true
			if m.ledger.states[key].State != KeyUnknown {
				m.log.Warn("assigned a key that this node's getConfig does not return; it cannot run here", "key", key)
			}
		}
	}
	return unknown
}

// scanPage is how many entries one SSCAN or HSCAN of a big set or hash is
// asked for: each page is a bounded command, however many keys there are.
const scanPage = 1000

// dropStale stops instances that run under an older lease (the node was
// fenced and may have rejoined since) and takes out those stopped behind
// the node loop's back (after a restore, Redis no longer says this node
// owns them).
func (m *Manager[C, I]) dropStale(session string) {
	var stale []*entry[I]
	for _, e := range m.tab.running {
		if e.session != session || e.stopping.Load() {
			stale = append(stale, e)
		}
	}
	m.tab.stopInBackground(stale)
	if session == "" {
		m.ledger.forget()
	}
	m.publishView()
}

// dropAll disconnects every instance and releases every claim: the node is
// fenced or stopping.
func (m *Manager[C, I]) dropAll(ctx context.Context, why string) {
	m.tab.awaitCreates()
	m.handoffs.dropAll()
	all := make([]*entry[I], 0, len(m.tab.running))
	for _, e := range m.tab.running {
		all = append(all, e)
	}
	if len(all) > 0 {
		m.log.Info("disconnecting all instances", "reason", why, "count", len(all))
	}
	m.tab.disconnectAll(all)
	m.tab.awaitStopping()
	session, _ := m.membership.current()
	if session != "" {
		m.ledger.bookConfirmed(session)
	}
	m.ledger.releaseAll(ctx, session)
	m.publishView()
}

// fenced is the membership's word that the lease ended, and why: every
// instance's context ended with it, and every disconnect hook is called
// now, all at once, whatever the node loop is doing. The node rejoins once
// the node loop has seen every instance stop (see fenceCh).
func (m *Manager[C, I]) fenced(reason string) {
	m.life.fence()
	m.calls.instances.stopAll()
	m.log.Warn("fenced: stopping all instances", "reason", reason)
	m.tel.fenced(m.runCtx, reason)
	m.elector.stepDown()
	signal(m.fenceCh)
}

// onHealth disconnects an unhealthy instance; reconcile creates it again
// after a backoff.
func (m *Manager[C, I]) onHealth(r healthResult[I]) {
	if m.tab.running[r.e.key] != r.e {
		return
	}
	if r.err == nil {
		delete(m.ledger.failures, r.e.key)
		return
	}
	m.tel.healthFailed(m.runCtx, "instance")
	m.tab.stopInBackground([]*entry[I]{r.e})
	m.ledger.recordFailure(r.e.key, r.e.sum, "health check", r.err)
	if session, _ := m.membership.current(); session != "" {
		m.ledger.syncStates(m.runCtx, session, m.tab.runs(), nil)
	}
	m.publishView()
}

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
