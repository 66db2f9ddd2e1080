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

// handoffs is this node's part in make-before-break handoffs: the
// instances it prepares for keys that move here, and the running keys it
// holds for their new owner. Owned by the node loop, but for the prepare
// calls, which report on prepareCh, and the announcements, which the event
// goroutine files.
type handoffs[C, I any] struct {
	*env
	calls *callbacks[C, I]
	life  *lifecycle

	prepareCh chan prepareResult[I] // unbuffered: a prepare's outcome, for the node loop
	announced announced             // keys whose new owner prepared them
	prepares  hungSet               // keys with a prepare call in flight, until its outcome is filed or disposed of
	disposing hungSet               // keys whose prepared instance is being disposed of
	shown     [2]int                // prepared and held, as last published

	prepared  map[string]*prepared[I]       // instances prepared for keys that move here
	preparing map[string]context.CancelFunc // prepare calls in flight, with their contexts' cancel
	holding   map[string]time.Time          // moved keys still run here until the new owner prepared, until then
	// unprepared are keys whose prepare failed here, and until when they
	// move the normal way: not prepared again while their old owner lets
	// them go.
	unprepared map[string]time.Time
}

func newHandoffs[C, I any](e *env, calls *callbacks[C, I], life *lifecycle) *handoffs[C, I] {
	return &handoffs[C, I]{
		env:        e,
		calls:      calls,
		life:       life,
		prepareCh:  make(chan prepareResult[I]),
		prepared:   make(map[string]*prepared[I]),
		preparing:  make(map[string]context.CancelFunc),
		holding:    make(map[string]time.Time),
		unprepared: make(map[string]time.Time),
	}
}

// enabled reports whether the service prepares instances (WithPrepare).
func (h *handoffs[C, I]) enabled() bool { return h.calls.prepare != nil }

// take returns the instance prepared for key, if any, for activation.
func (h *handoffs[C, I]) take(key string) *prepared[I] {
	p := h.prepared[key]
	delete(h.prepared, key)
	return p
}

// granted forgets a failed prepare of key: its claim was granted.
func (h *handoffs[C, I]) granted(key string) { delete(h.unprepared, key) }

// held reports whether key runs on here for its new owner.
func (h *handoffs[C, I]) held(key string) bool {
	_, ok := h.holding[key]
	return ok
}

// settle forgets holds of keys that are this node's again or no longer run
// here, and failed prepares of keys that are no longer this node's or whose
// time to move the normal way has passed.
func (h *handoffs[C, I]) settle(mine map[string]bool, running func(key string) bool, now time.Time) {
	for key := range h.holding {
		if mine[key] || !running(key) {
			delete(h.holding, key)
		}
	}
	for key, until := range h.unprepared {
		if !mine[key] || !now.Before(until) {
			delete(h.unprepared, key)
		}
	}
}

// nextDeadline is the earliest end of a hold; zero if none.
func (h *handoffs[C, I]) nextDeadline() time.Time {
	var at time.Time
	for _, d := range h.holding {
		if at.IsZero() || d.Before(at) {
			at = d
		}
	}
	return at
}

// dropAll ends every handoff: the node is fenced or stopping. Prepared
// instances are disposed of, prepare calls cancelled (what they return is
// disposed of: nothing will be activated), holds end.
func (h *handoffs[C, I]) dropAll() {
	h.dropPrepared(func(string, *prepared[I]) bool { return false })
	for _, cancel := range h.preparing {
		cancel()
	}
	clear(h.holding)
	clear(h.unprepared)
	// Each disposal returns by the callback timeout.
	_ = h.disposing.wait(h.runCtx)
}

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
func (h *handoffs[C, I]) holdMoved(key string, ready map[string]bool, now time.Time) bool {
	if !h.enabled() || h.life.stopping() {
		return false
	}
	deadline, held := h.holding[key]
	if !held {
		deadline = now.Add(h.s.prepareTimeout)
		h.holding[key] = deadline
		h.log.Debug("keeping a moved key until its new owner prepared it", "key", key, "for", h.s.prepareTimeout)
	}
	if ready[key] || !now.Before(deadline) {
		delete(h.holding, key)
		return false
	}
	return true
}

// startPrepare prepares key in the background, once at a time per key. Its
// span is a child of the reconcile's (ctx), like a create's.
func (h *handoffs[C, I]) startPrepare(ctx, leaseCtx context.Context, session, key string, cfg config[C]) {
	if _, ok := h.preparing[key]; !h.enabled() || ok {
		return
	}
	if _, ok := h.prepared[key]; ok {
		return
	}
	if _, failed := h.unprepared[key]; failed {
		return // this move goes the normal way
	}
	pctx, cancel := context.WithCancel(leaseCtx)
	h.preparing[key] = cancel
	// Stop waits for it (see shutdown): what it returns is disposed of
	// before Stop returns.
	h.prepares.add(key)
	go func() {
		// prepare runs under the callback timeout: past it, its context
		// ends, and an instance it returns all the same is disposed of.
		late := time.AfterFunc(h.s.timeout, cancel)
		spanCtx, span := h.tel.startCallback(ctx, spanPrepare, key)
		start := time.Now()
		inst, err := callSafely(func() (I, error) { return h.calls.prepare(pctx, cfg.value) })
		if !late.Stop() {
			if err == nil {
				h.calls.dispose(&prepared[I]{inst: inst, ctx: pctx, cancel: cancel}, key)
			}
			err = fmt.Errorf("%w: prepare did not return within %v", ErrCallback, h.s.timeout)
		}
		h.tel.endCallback(spanCtx, span, spanPrepare, start, err)
		r := prepareResult[I]{key: key, session: session, sum: cfg.sum, inst: inst, err: err, ctx: pctx, cancel: cancel}
		select {
		case h.prepareCh <- r:
			// onPrepared takes the key out of prepares once the outcome is
			// filed or its disposal begun, so that Stop sees no gap.
		case <-h.runCtx.Done():
			if err == nil {
				h.calls.dispose(&prepared[I]{inst: inst, ctx: pctx, cancel: cancel}, key)
			}
			cancel()
			h.prepares.remove(key)
		}
	}()
}

// onPrepared files a prepare's outcome and announces it, so that the old
// owner lets the key go. A failed prepare is announced too: the key then
// moves the normal way, at once.
func (h *handoffs[C, I]) onPrepared(r prepareResult[I], session string, running bool) {
	defer h.prepares.remove(r.key)
	delete(h.preparing, r.key)
	switch {
	case r.err != nil:
		r.cancel()
		h.unprepared[r.key] = time.Now().Add(h.s.prepareTimeout)
		h.logPanic(r.key, r.err)
		h.log.Warn("prepare failed; the key moves the normal way", "key", r.key, "err", r.err)
	case r.session != session || running || h.life.stopping():
		h.disposeInBackground(&prepared[I]{inst: r.inst, ctx: r.ctx, cancel: r.cancel}, r.key)
		return
	default:
		h.prepared[r.key] = &prepared[I]{inst: r.inst, ctx: r.ctx, cancel: r.cancel, session: r.session, sum: r.sum}
	}
	h.publish(h.runCtx, evPrepared+" "+h.s.nodeID+" "+encodeKeys([]string{r.key}))
	h.triggerNode()
}

// dropPrepared disposes of the prepared instances that will not be
// activated (the key is no longer this node's, its config changed or went,
// or the session they were prepared under ended): those keep refuses.
func (h *handoffs[C, I]) dropPrepared(keep func(key string, p *prepared[I]) bool) {
	for key, p := range h.prepared {
		if !keep(key, p) {
			delete(h.prepared, key)
			h.disposeInBackground(p, key)
		}
	}
}

// disposeInBackground disposes of a prepared instance without waiting for
// it: a slow disconnect holds up no other key. A prepared instance is not
// live, so its key may meanwhile be prepared, created or activated again;
// the fence and Stop wait for every disposal (see disposing).
func (h *handoffs[C, I]) disposeInBackground(p *prepared[I], key string) {
	h.disposing.add(key)
	h.wg.Go(func() {
		defer h.disposing.remove(key)
		h.calls.dispose(p, key)
	})
}

// syncHandoffs publishes this node's handoffs in progress (instances
// prepared, keys held for their new owner) when they changed, for Status.
func (h *handoffs[C, I]) syncHandoffs(ctx context.Context) {
	now := [2]int{len(h.prepared), len(h.holding)}
	if now == h.shown {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, h.s.heartbeat)
	defer cancel()
	b := h.client.B()
	cmd := b.Hdel().Key(h.k.handoffs).Field(h.s.nodeID).Build()
	if now != [2]int{} {
		cmd = b.Hset().Key(h.k.handoffs).FieldValue().FieldValue(h.s.nodeID, fmt.Sprintf("%d %d", now[0], now[1])).Build()
	}
	if err := h.client.Do(ctx, cmd).Error(); err == nil {
		h.shown = now
	}
}
