package dim

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// callbacks calls the user's hooks for instances: it creates, activates,
// checks and disconnects them, each call bounded by the callback timeout,
// traced, and with panics recovered. It keeps the instances alive on this
// node and the keys whose calls are under way or outlived their timeout,
// which the fence, a restore's verify and Stop look at from other
// goroutines; the node loop decides what to create and what to stop.
type callbacks[C, I any] struct {
	*env
	membership *membership

	createInstance func(context.Context, C) (I, error)
	healthcheck    func(context.Context, I) error
	disconnect     func(context.Context, I) error
	prepare        func(context.Context, C) (I, error) // nil: no make-before-break (see WithPrepare)
	activate       func(context.Context, I) error

	instances liveSet[I]
	hung      hungSet       // keys whose create or disconnect outlived its timeout
	inflight  hungSet       // keys with a create or disconnect call under way
	confirmed confirmedKeys // keys a restore's verify wrote, for the ledger
}

// create runs createInstance under the callback timeout. The context given to
// it lives as long as the instance: it carries the fencing token and is
// cancelled the moment this node loses the right to run the instance.
func (cb *callbacks[C, I]) create(ctx, leaseCtx context.Context, session string, job createJob[C]) (*entry[I], error) {
	ictx, cancel := context.WithCancel(context.WithValue(leaseCtx, ownershipKey{}, ownership{job.key, job.token}))
	// A fence or a suspend between the claim and now: the claim died with
	// the lease, and createInstance must not see a context that has ended.
	if cb.membership.checkLease() != session || ictx.Err() != nil {
		cancel()
		return nil, fmt.Errorf("%w: the lease ended before create", errNotCreated)
	}
	// In flight from here until createInstance returns, however long: a
	// restore must find it (see verifyOwnership). A claim granted on a record
	// that Redis has since replaced is claimed again instead.
	cb.inflight.add(job.key)
	if job.gen != cb.instances.generation() {
		cb.inflight.remove(job.key)
		cancel()
		return nil, fmt.Errorf("%w: the record was restored by Redis after the claim; claiming again", errNotCreated)
	}
	spanCtx, span := cb.tel.startCallback(ctx, spanCreate, job.key)
	start := time.Now()
	type result struct {
		inst I
		err  error
	}
	done := make(chan result, 1)
	go func() {
		defer cb.inflight.remove(job.key)
		inst, err := callSafely(func() (I, error) { return cb.createInstance(ictx, job.cfg.value) })
		done <- result{inst, err}
	}()
	timer := time.NewTimer(cb.s.timeout)
	defer timer.Stop()
	var err error
	select {
	case r := <-done:
		e := cb.newEntry(job, session, r.inst, ictx, cancel)
		if r.err == nil && cb.instances.add(e) {
			cb.tel.endCallback(spanCtx, span, spanCreate, start, nil)
			return e, nil
		}
		cancel()
		if r.err != nil {
			cb.tel.endCallback(spanCtx, span, spanCreate, start, r.err)
			return nil, r.err
		}
		// Fenced while creating: the new instance must not run.
		<-cb.instances.begin(e)
		err = fmt.Errorf("fenced while creating: %w", ictx.Err())
		cb.tel.endCallback(spanCtx, span, spanCreate, start, err)
		return nil, err
	case <-timer.C:
		err = fmt.Errorf("%w: createInstance did not return within %v", ErrCallback, cb.s.timeout)
	case <-ictx.Done():
		err = fmt.Errorf("fenced while creating: %w", ictx.Err())
	}
	cancel()
	cb.tel.endCallback(spanCtx, span, spanCreate, start, err)
	// The call may still return an instance: it must not leak, and until it
	// is gone the key must not run anywhere else.
	cb.hung.add(job.key)
	go func() {
		defer cb.triggerNode()
		defer cb.hung.remove(job.key)
		if r := <-done; r.err == nil {
			<-cb.instances.begin(cb.newEntry(job, session, r.inst, ictx, cancel))
		}
	}()
	return nil, err
}

func (cb *callbacks[C, I]) newEntry(job createJob[C], session string, inst I, ctx context.Context, cancel context.CancelFunc) *entry[I] {
	return &entry[I]{key: job.key, sum: job.cfg.sum, inst: inst, token: job.token, session: session,
		gen: job.gen, ctx: ctx, cancel: cancel, lease: job.lease, stopped: make(chan struct{})}
}

// disconnectOne calls the disconnect hook of a stopping entry once, under
// the callback timeout; the entry's context has been cancelled already.
// Returning, with an error or not, means the instance stopped.
func (cb *callbacks[C, I]) disconnectOne(e *entry[I]) {
	if cb.disconnect == nil {
		return
	}
	cb.inflight.add(e.key)
	defer cb.inflight.remove(e.key)
	owned := context.WithValue(cb.runCtx, ownershipKey{}, ownership{e.key, e.token})
	spanCtx, span := cb.tel.startCallback(owned, spanDisconnect, e.key)
	start := time.Now()
	err := cb.callWithTimeout(context.WithoutCancel(spanCtx), e.key, func(ctx context.Context) error {
		// The hook's context ends at the fence too, so that a hook that
		// waits on it returns within the fence margin; the call is still
		// waited for up to the callback timeout, not abandoned.
		hctx, cancel := context.WithCancel(ctx)
		defer cancel()
		if e.lease != nil {
			defer context.AfterFunc(e.lease, cancel)()
		}
		return cb.disconnect(hctx, e.inst)
	})
	cb.tel.endCallback(spanCtx, span, spanDisconnect, start, err)
	if err != nil {
		cb.logPanic(e.key, err)
		cb.log.Warn("disconnect failed", "key", e.key, "err", err)
	}
}

// callWithTimeout runs fn bounded. A call given up on for a key holds that
// key in the hung set until it returns.
func (cb *callbacks[C, I]) callWithTimeout(ctx context.Context, key string, fn func(context.Context) error) error {
	late, err := cb.bounded(ctx, fn)
	if late != nil && key != "" {
		cb.hung.add(key)
		go func() {
			<-late
			cb.hung.remove(key)
			cb.triggerNode()
		}()
	}
	return err
}

// verifyOwnership makes Redis's restored record say again what this node's
// session holds: every key it runs, stops, or has a create or disconnect
// call in flight for (see verifyScript). It runs before the heartbeat that
// brought the new generation extends the lease, so it is done before the
// grace period can end, or the node fences. It may take until the lease
// would end (until): after a Cluster slot migration the client may first
// have to learn the slot's new master.
func (cb *callbacks[C, I]) verifyOwnership(session string, entries []*entry[I], until time.Time) error {
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
	for _, key := range cb.inflight.list() {
		held[key] = true
	}
	for _, key := range cb.hung.list() {
		held[key] = true
	}
	keys := slices.Sorted(maps.Keys(held))
	for chunk := range slices.Chunk(keys, verifyChunk) {
		ctx, cancel := context.WithDeadline(cb.runCtx, until)
		lost, wrote, err := cb.db().verify(ctx, cb.s.nodeID, session, chunk)
		cancel()
		if err != nil {
			return fmt.Errorf("confirm ownership after Redis restored an older record: %w", err)
		}
		cb.confirmed.add(session, wrote)
		for _, key := range lost {
			if e := byKey[key]; e != nil {
				cb.log.Warn("another node holds this key in the restored record; stopping it", "key", key)
				cb.instances.begin(e)
			}
		}
	}
	cb.triggerNode()
	return nil
}

// newGeneration files the generation of Redis's record that a join or
// renewal read. When it changed, what the node holds was claimed in another
// record: the check it returns confirms it in the new one (see
// verifyOwnership).
func (cb *callbacks[C, I]) newGeneration(gen string) func(session string, until time.Time) error {
	changed, check := cb.instances.setGeneration(gen)
	if !changed {
		return nil
	}
	return func(session string, until time.Time) error { return cb.verifyOwnership(session, check, until) }
}

// startHealthChecks checks every running instance in the background; the
// results come back to the node loop. An instance whose previous check has
// not returned yet (abandoned at its timeout) is not checked again.
func (cb *callbacks[C, I]) startHealthChecks(running map[string]*entry[I], results chan<- healthResult[I]) {
	if cb.healthcheck == nil {
		return
	}
	for _, e := range running {
		if e.stopping.Load() || !e.check.busy.CompareAndSwap(false, true) {
			continue
		}
		cb.wg.Go(func() {
			owned := context.WithValue(cb.runCtx, ownershipKey{}, ownership{e.key, e.token})
			ctx, span := cb.tel.startCallback(owned, spanHealth, e.key)
			start := time.Now()
			err := cb.callGuarded(ctx, &e.check, func(ctx context.Context) error { return cb.healthcheck(ctx, e.inst) })
			cb.tel.endCallback(ctx, span, spanHealth, start, err)
			select {
			case results <- healthResult[I]{e, err}:
			case <-cb.runCtx.Done():
			}
		})
	}
}

// activateJob starts a prepared instance as the claim's instance: activate
// runs with the claim's fencing token, and the instance's context is the
// one it was prepared with.
func (cb *callbacks[C, I]) activateJob(ctx context.Context, session string, job createJob[C], p *prepared[I]) (*entry[I], error) {
	actx := context.WithValue(p.ctx, ownershipKey{}, ownership{job.key, job.token})
	if cb.membership.checkLease() != session || actx.Err() != nil {
		cb.dispose(p, job.key)
		return nil, fmt.Errorf("%w: the lease ended before activate", errNotCreated)
	}
	// In flight until activate returns, however long, as a create is.
	cb.inflight.add(job.key)
	if job.gen != cb.instances.generation() {
		cb.inflight.remove(job.key)
		cb.dispose(p, job.key)
		return nil, fmt.Errorf("%w: the record was restored by Redis after the claim; claiming again", errNotCreated)
	}
	spanCtx, span := cb.tel.startCallback(ctx, spanActivate, job.key)
	start := time.Now()
	late, err := cb.bounded(actx, func(cctx context.Context) error { return cb.activate(cctx, p.inst) })
	cb.tel.endCallback(spanCtx, span, spanActivate, start, err)
	if late != nil {
		// Abandoned at the timeout or a fence, activate may still begin the
		// work: like a late createInstance, the key is neither created
		// again nor released until it returns, and then its instance is
		// disposed of (not before: a disconnect must follow the work's start).
		p.cancel()
		cb.hung.add(job.key)
		go func() {
			defer cb.triggerNode()
			defer cb.hung.remove(job.key)
			defer cb.inflight.remove(job.key)
			<-late
			cb.dispose(p, job.key)
		}()
		return nil, err
	}
	cb.inflight.remove(job.key)
	if err != nil {
		cb.dispose(p, job.key)
		return nil, err
	}
	e := &entry[I]{key: job.key, sum: job.cfg.sum, inst: p.inst, token: job.token, session: session,
		gen: job.gen, ctx: actx, cancel: p.cancel, lease: job.lease, stopped: make(chan struct{})}
	if !cb.instances.add(e) {
		<-cb.instances.begin(e)
		return nil, fmt.Errorf("fenced while activating: %w", actx.Err())
	}
	return e, nil
}

// dispose ends a prepared instance that is not activated: its context is
// cancelled and the disconnect hook is called, exactly once.
func (cb *callbacks[C, I]) dispose(p *prepared[I], key string) {
	p.cancel()
	if cb.disconnect == nil {
		return
	}
	err := cb.callWithTimeout(context.WithoutCancel(cb.runCtx), "", func(ctx context.Context) error {
		return cb.disconnect(ctx, p.inst)
	})
	if err != nil {
		cb.log.Warn("disposing of a prepared instance failed", "key", key, "err", err)
	}
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

// errNotCreated marks a create that dim never called: the lease had ended,
// or the claim was granted on a record Redis has since replaced. It is not
// a failure of createInstance, and does not count towards giving a key up.
var errNotCreated = errors.New("dim: create not attempted")

// verifyChunk bounds the keys one verify script checks.
const verifyChunk = 1000

// confirmedKeys hands the keys verifyOwnership wrote to the record over to
// the node loop, which puts them on its ledger (ledger.claimed). The heartbeat
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

// healthResult is the outcome of one instance health check.
type healthResult[I any] struct {
	e   *entry[I]
	err error
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
