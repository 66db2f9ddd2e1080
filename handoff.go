package dim

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Make-before-break handoff (see WithPrepare). When a running key moves
// away from a live node (a join, a drain, a weight change, a rebalance),
// the new owner cannot claim it while the old one holds it. With WithPrepare
// the new owner prepares an instance meanwhile (prepare: connect, log in,
// warm up; no fencing token yet) and announces it; the old owner keeps
// running the key until that announcement or the prepare timeout, then
// disconnects and releases it; the new owner claims it and activates the
// prepared instance with the claim's token. The key is dark for a
// disconnect, a release and a claim, not for a whole create. Failures
// (a crash, a fence, a key given up) take the normal path.

// prepared is an instance prepared for a key that moves here, not yet
// activated. Owned by the node loop.
type prepared[I any] struct {
	inst    I
	ctx     context.Context // its lifetime context: the instance's once activated
	cancel  context.CancelFunc
	session string
	sum     string // content hash of the config it was prepared from
}

// prepareResult is a prepare call's outcome, for the node loop.
type prepareResult[I any] struct {
	key, session, sum string
	inst              I
	err               error
	ctx               context.Context
	cancel            context.CancelFunc
}

// announced holds the keys whose new owner announced it prepared them: the
// event goroutine adds, the node loop takes.
type announced struct {
	mu   sync.Mutex
	keys map[string]bool
}

func (a *announced) add(keys []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.keys == nil {
		a.keys = map[string]bool{}
	}
	for _, k := range keys {
		if len(a.keys) < 100_000 {
			a.keys[k] = true
		}
	}
}

// take returns the announced keys and forgets them.
func (a *announced) take() map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := a.keys
	a.keys = nil
	return k
}

// encodeKeys and decodeKeys carry keys in an event: a key may hold spaces.
func encodeKeys(keys []string) string {
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = base64.RawURLEncoding.EncodeToString([]byte(k))
	}
	return strings.Join(parts, " ")
}

func decodeKeys(parts []string) []string {
	out := make([]string, 0, len(parts))
	for _, p := range parts {
		if b, err := base64.RawURLEncoding.DecodeString(p); err == nil {
			out = append(out, string(b))
		}
	}
	return out
}

// holdMoved decides, for a running key that moved away, whether this node
// keeps running it until the new owner has prepared: only with WithPrepare,
// only while the node is not stopping, and only until the announcement or
// the prepare timeout.
func (m *Manager[C, I]) holdMoved(key string, ready map[string]bool, now time.Time) bool {
	if m.prepare == nil || m.life.stopping() {
		return false
	}
	deadline, held := m.tab.holding[key]
	if !held {
		deadline = now.Add(m.s.prepareTimeout)
		m.tab.holding[key] = deadline
		m.log.Debug("keeping a moved key until its new owner prepared it", "key", key, "for", m.s.prepareTimeout)
	}
	if ready[key] || !now.Before(deadline) {
		delete(m.tab.holding, key)
		return false
	}
	return true
}

// startPrepare prepares key in the background, once at a time per key. Its
// span is a child of the reconcile's (ctx), like a create's.
func (m *Manager[C, I]) startPrepare(ctx, leaseCtx context.Context, session, key string, cfg config[C]) {
	if _, ok := m.tab.preparing[key]; m.prepare == nil || ok {
		return
	}
	if _, ok := m.tab.prepared[key]; ok {
		return
	}
	if _, failed := m.tab.unprepared[key]; failed {
		return // this move goes the normal way
	}
	pctx, cancel := context.WithCancel(leaseCtx)
	m.tab.preparing[key] = cancel
	// Stop waits for it (see shutdown): what it returns is disposed of
	// before Stop returns.
	m.prepares.add(key)
	go func() {
		defer m.prepares.remove(key)
		// prepare runs under the callback timeout: past it, its context
		// ends, and an instance it returns all the same is disposed of.
		late := time.AfterFunc(m.s.timeout, cancel)
		spanCtx, span := m.tel.startCallback(ctx, spanPrepare, key)
		start := time.Now()
		inst, err := callSafely(func() (I, error) { return m.prepare(pctx, cfg.value) })
		if !late.Stop() {
			if err == nil {
				m.dispose(&prepared[I]{inst: inst, ctx: pctx, cancel: cancel}, key)
			}
			err = fmt.Errorf("%w: prepare did not return within %v", ErrCallback, m.s.timeout)
		}
		m.tel.endCallback(spanCtx, span, spanPrepare, start, err)
		r := prepareResult[I]{key: key, session: session, sum: cfg.sum, inst: inst, err: err, ctx: pctx, cancel: cancel}
		select {
		case m.prepareCh <- r:
		case <-m.runCtx.Done():
			if err == nil {
				m.dispose(&prepared[I]{inst: inst, ctx: pctx, cancel: cancel}, key)
			}
			cancel()
		}
	}()
}

// onPrepared files a prepare's outcome and announces it, so that the old
// owner lets the key go. A failed prepare is announced too: the key then
// moves the normal way, at once.
func (m *Manager[C, I]) onPrepared(r prepareResult[I]) {
	delete(m.tab.preparing, r.key)
	session, _ := m.membership.current()
	_, running := m.tab.running[r.key]
	switch {
	case r.err != nil:
		r.cancel()
		m.tab.unprepared[r.key] = time.Now().Add(m.s.prepareTimeout)
		m.logPanic(r.key, r.err)
		m.log.Warn("prepare failed; the key moves the normal way", "key", r.key, "err", r.err)
	case r.session != session || running || m.life.stopping():
		m.dispose(&prepared[I]{inst: r.inst, ctx: r.ctx, cancel: r.cancel}, r.key)
		return
	default:
		m.tab.prepared[r.key] = &prepared[I]{inst: r.inst, ctx: r.ctx, cancel: r.cancel, session: r.session, sum: r.sum}
	}
	m.publish(m.runCtx, evPrepared+" "+m.s.nodeID+" "+encodeKeys([]string{r.key}))
	m.triggerNode()
}

// dropPrepared disposes of prepared instances that will not be activated:
// the key is no longer this node's, its config changed or went, or the
// session they were prepared under ended (all of them, with keep nil).
func (m *Manager[C, I]) dropPrepared(keep func(key string, p *prepared[I]) bool) {
	var wg sync.WaitGroup
	for key, p := range m.tab.prepared {
		if keep == nil || !keep(key, p) {
			delete(m.tab.prepared, key)
			wg.Go(func() { m.dispose(p, key) })
		}
	}
	wg.Wait()
}

// dispose ends a prepared instance that is not activated: its context is
// cancelled and the disconnect hook is called, exactly once.
func (m *Manager[C, I]) dispose(p *prepared[I], key string) {
	p.cancel()
	if m.disconnect == nil {
		return
	}
	err := m.callWithTimeout(context.WithoutCancel(m.runCtx), "", func(ctx context.Context) error {
		return m.disconnect(ctx, p.inst)
	})
	if err != nil {
		m.log.Warn("disposing of a prepared instance failed", "key", key, "err", err)
	}
}

// activateJob starts a prepared instance as the claim's instance: activate
// runs with the claim's fencing token, and the instance's context is the
// one it was prepared with.
func (m *Manager[C, I]) activateJob(ctx context.Context, session string, job createJob[C], p *prepared[I]) (*entry[I], error) {
	actx := context.WithValue(p.ctx, ownershipKey{}, ownership{job.key, job.token})
	if m.membership.checkLease() != session || actx.Err() != nil {
		m.dispose(p, job.key)
		return nil, fmt.Errorf("%w: the lease ended before activate", errNotCreated)
	}
	// In flight until activate returns, however long, as a create is.
	m.inflight.add(job.key)
	if job.gen != m.instances.generation() {
		m.inflight.remove(job.key)
		m.dispose(p, job.key)
		return nil, fmt.Errorf("%w: the record was restored by Redis after the claim; claiming again", errNotCreated)
	}
	spanCtx, span := m.tel.startCallback(ctx, spanActivate, job.key)
	start := time.Now()
	late, err := m.bounded(actx, func(cctx context.Context) error { return m.activate(cctx, p.inst) })
	m.tel.endCallback(spanCtx, span, spanActivate, start, err)
	if late != nil {
		// Abandoned at the timeout or a fence, activate may still begin the
		// work: like a late createInstance, the key is neither created
		// again nor released until it returns, and then its instance is
		// disposed of (not before: a disconnect must follow the work's start).
		p.cancel()
		m.hung.add(job.key)
		go func() {
			defer m.triggerNode()
			defer m.hung.remove(job.key)
			defer m.inflight.remove(job.key)
			<-late
			m.dispose(p, job.key)
		}()
		return nil, err
	}
	m.inflight.remove(job.key)
	if err != nil {
		m.dispose(p, job.key)
		return nil, err
	}
	e := &entry[I]{key: job.key, sum: job.cfg.sum, inst: p.inst, token: job.token, session: session,
		gen: job.gen, ctx: actx, cancel: p.cancel, lease: job.lease, stopped: make(chan struct{})}
	if !m.instances.add(e) {
		<-m.instances.begin(e)
		return nil, fmt.Errorf("fenced while activating: %w", actx.Err())
	}
	return e, nil
}

// syncHandoffs publishes this node's handoffs in progress (instances
// prepared, keys held for their new owner) when they changed, for Status.
func (m *Manager[C, I]) syncHandoffs(ctx context.Context) {
	now := [2]int{len(m.tab.prepared), len(m.tab.holding)}
	if now == m.handoffsShown {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
	defer cancel()
	b := m.client.B()
	cmd := b.Hdel().Key(m.k.handoffs).Field(m.s.nodeID).Build()
	if now != [2]int{} {
		cmd = b.Hset().Key(m.k.handoffs).FieldValue().FieldValue(m.s.nodeID, fmt.Sprintf("%d %d", now[0], now[1])).Build()
	}
	if err := m.client.Do(ctx, cmd).Error(); err == nil {
		m.handoffsShown = now
	}
}
