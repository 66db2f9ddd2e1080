package dim

import (
	"context"
	"fmt"
	"runtime/debug"
	"strconv"
	"sync"
	"time"
)

// maxParallelCallbacks bounds how many createInstance, health check or
// disconnect calls run at once on one node.
const maxParallelCallbacks = 16

// entry is one running instance on this node.
type entry[I any] struct {
	key      string
	sum      string // content hash of the config it was created from
	inst     I
	token    uint64
	session  string // the lease it runs under
	cancel   context.CancelFunc
	checking bool
}

// table is the node's local state, owned by the node loop: nothing else
// touches it, so reconciliation is serialised by construction.
type table[I any] struct {
	running  map[string]*entry[I]
	claimed  map[string]uint64    // keys this node owns in Redis, with tokens
	failures map[string]*failure  // keys whose create or health check failed
	waiting  map[string]time.Time // keys whose claim was refused, and when to retry
	retryAt  time.Time            // when to reconcile again after a failed read
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
}

func newTable[I any]() table[I] {
	return table[I]{
		running:  make(map[string]*entry[I]),
		claimed:  make(map[string]uint64),
		failures: make(map[string]*failure),
		waiting:  make(map[string]time.Time),
	}
}

type tokenKey struct{}

type ownership struct {
	key   string
	token uint64
}

// FencingToken returns the fencing token of the claim under which an
// instance runs, from the context dim passed to createInstance. Every claim
// of a key gets a token larger than any earlier claim of that key, so a
// resource the instance writes to can refuse writes carrying an older token:
// a paused or partitioned former owner cannot overwrite its successor.
func FencingToken(ctx context.Context) (uint64, bool) {
	o, ok := ctx.Value(tokenKey{}).(ownership)
	return o.token, ok
}

// InstanceKey returns the config key of the instance whose context this is.
func InstanceKey(ctx context.Context) (string, bool) {
	o, ok := ctx.Value(tokenKey{}).(ownership)
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
			m.dropAll(m.runCtx, "fenced")
			m.unfenced.Store(true)
		case <-m.nodeCh:
			m.reconcile()
		case <-retry.C:
			m.reconcile()
		case <-m.healthTickCh:
			m.startHealthChecks()
		case res := <-m.healthCh:
			m.onHealth(res)
		case done := <-m.handoffCh:
			m.dropAll(m.runCtx, "stopping")
			close(done)
		}
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
	if session, _ := m.lease.current(); session == "" || m.stopping.Load() {
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
	return at, !at.IsZero()
}

// reconcile converges this node on its part of the assignment: it stops what
// moved away or changed, releases it, then claims and creates what is new.
func (m *Manager[C, I]) reconcile() {
	session, leaseCtx := m.lease.current()
	m.dropStale(session)
	if session == "" || m.stopping.Load() {
		return
	}
	stats := reconcileStats{start: time.Now()}
	ctx, span, links := m.tel.startReconcile(leaseCtx)
	stats.links = links
	defer func() { m.tel.endReconcile(ctx, span, stats) }()

	rctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
	res := m.client.DoMulti(rctx,
		m.client.B().Smembers().Key(m.k.assigned(m.s.nodeID)).Build(),
		m.client.B().Hget().Key(m.k.traces).Field(m.s.nodeID).Build())
	cancel()
	assigned, err := res[0].AsStrSlice()
	if tp, _ := res[1].ToString(); tp != "" && tp != m.lastTrace {
		// A rebalance changed this node's keys since the last look: this
		// reconcile, and any that finish its claims, link to it.
		m.lastTrace = tp
		if link, ok := linkTo(tp); ok {
			span.AddLink(link)
			stats.links = append(stats.links, link)
		}
	}
	if err != nil {
		stats.err = fmt.Errorf("read assignment: %w", err)
		m.tab.retryAt = time.Now().Add(m.s.heartbeat)
		return
	}
	m.tab.retryAt = time.Time{}
	mine := make(map[string]bool, len(assigned))
	for _, k := range assigned {
		mine[k] = true
	}
	configs := m.nodeConfigs(ctx, mine)

	// Stop what is no longer ours or no longer configured; replace what
	// changed under the same key.
	var stop, replace []*entry[I]
	for key, e := range m.tab.running {
		cfg, ok := configs[key]
		switch {
		case !mine[key] || !ok:
			stop = append(stop, e)
		case cfg.sum != e.sum:
			replace = append(replace, e)
		}
	}
	m.disconnectAll(ctx, append(stop, replace...))
	stats.disconnected = len(stop)
	stats.replaced = len(replace)

	var release []string
	for key := range m.tab.claimed {
		if _, ok := configs[key]; (!mine[key] || !ok) && !m.hung.has(key) {
			release = append(release, key)
		}
	}
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
		stats.err = err
	}
	stats.released = len(release)

	// Claim and create what is ours but not running, including what was
	// just replaced: claiming a key this node owns returns its token. After
	// another node released keys, refused claims are tried again at once.
	now := time.Now()
	retryRefused := m.released.Swap(false)
	var want []string
	for key := range mine {
		if _, running := m.tab.running[key]; running {
			continue
		}
		if _, ok := configs[key]; !ok || m.hung.has(key) {
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
	granted, err := m.claim(ctx, session, want)
	if err != nil {
		stats.err = err
	}
	stats.claimed = len(granted)
	stats.refused = len(want) - len(granted)
	var jobs []createJob[C]
	for _, key := range want {
		if token, ok := granted[key]; ok {
			delete(m.tab.waiting, key)
			jobs = append(jobs, createJob[C]{key: key, cfg: configs[key], token: token})
		} else if retry := now.Add(m.claimRetry); err == nil && !m.tab.waiting[key].After(retry) {
			// Refused: try again soon. A later time set by claim (the end
			// of a grace period) stands, so that the node wakes when the
			// grace ends instead of polling through it.
			m.tab.waiting[key] = retry
		}
	}
	stats.created, stats.failed = m.createAll(ctx, leaseCtx, session, jobs)
	stats.waiting = len(m.tab.waiting)
	m.publishView()
}

// dropStale disconnects instances that run under an older lease: the node was
// fenced and may have rejoined since.
func (m *Manager[C, I]) dropStale(session string) {
	var stale []*entry[I]
	for _, e := range m.tab.running {
		if e.session != session {
			stale = append(stale, e)
		}
	}
	if len(stale) > 0 {
		m.disconnectAll(m.runCtx, stale)
	}
	if session == "" {
		clear(m.tab.claimed)
		clear(m.tab.waiting)
	}
	m.publishView()
}

// dropAll disconnects every instance and releases every claim: the node is
// fenced or stopping.
func (m *Manager[C, I]) dropAll(ctx context.Context, why string) {
	all := make([]*entry[I], 0, len(m.tab.running))
	for _, e := range m.tab.running {
		all = append(all, e)
	}
	if len(all) > 0 {
		m.log.Info("disconnecting all instances", "reason", why, "count", len(all))
	}
	m.disconnectAll(ctx, all)
	if session, _ := m.lease.current(); session != "" && len(m.tab.claimed) > 0 {
		keys := make([]string, 0, len(m.tab.claimed))
		for key := range m.tab.claimed {
			if !m.hung.has(key) {
				keys = append(keys, key)
			}
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.s.heartbeat)
		if err := m.release(rctx, session, keys); err != nil {
			m.log.Warn("release failed; the claims expire with the lease", "err", err)
		}
		cancel()
	}
	clear(m.tab.claimed)
	clear(m.tab.waiting)
	clear(m.tab.failures)
	m.publishView()
}

// claim asks Redis for ownership of keys and returns the granted ones with
// their fencing tokens.
func (m *Manager[C, I]) claim(ctx context.Context, session string, keys []string) (map[string]uint64, error) {
	granted := make(map[string]uint64, len(keys))
	if len(keys) == 0 {
		return granted, nil
	}
	ctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
	defer cancel()
	args := append([]string{m.s.nodeID, session}, keys...)
	res, err := claimScript.Exec(ctx, m.client,
		[]string{m.k.nodes, m.k.sessions, m.k.assign, m.k.owner, m.k.fence, m.k.grace}, args).ToArray()
	if err != nil {
		// The script may have run with its reply lost: keep the keys on the
		// books as claimed, so that they are released if they move away.
		for _, key := range keys {
			m.tab.waiting[key] = time.Now().Add(m.claimRetry)
			if _, ok := m.tab.claimed[key]; !ok {
				m.tab.claimed[key] = 0
			}
		}
		return granted, fmt.Errorf("claim: %w", err)
	}
	if len(res) < 2 {
		return granted, fmt.Errorf("claim: unexpected reply of %d values", len(res))
	}
	switch status, _ := res[0].AsInt64(); status {
	case -1:
		m.fenceSession(session, "claim refused: not a live member")
		return granted, nil
	case -2:
		wait, _ := res[1].AsInt64()
		at := time.Now().Add(time.Duration(wait) * time.Millisecond)
		for _, key := range keys {
			m.tab.waiting[key] = at
		}
		m.log.Debug("claims wait for the grace period after Redis lost its state", "wait_ms", wait)
		return granted, nil
	}
	if len(res) != len(keys)+2 {
		return granted, fmt.Errorf("claim: unexpected reply of %d values for %d keys", len(res), len(keys))
	}
	for i, key := range keys {
		s, _ := res[i+2].ToString()
		token, _ := strconv.ParseUint(s, 10, 64)
		if token > 0 {
			granted[key] = token
			m.tab.claimed[key] = token
		}
	}
	return granted, nil
}

// release gives up claims after their instances were disconnected, and tells
// the waiting claimants at once.
// A claim whose release fails stays on the books and is released again at
// the next reconcile, which is scheduled soon.
func (m *Manager[C, I]) release(ctx context.Context, session string, keys []string) error {
	if len(keys) == 0 || session == "" {
		for _, key := range keys {
			delete(m.tab.claimed, key)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
	defer cancel()
	args := append([]string{m.s.nodeID, session, m.k.channel}, keys...)
	if err := releaseScript.Exec(ctx, m.client, []string{m.k.owner}, args).Error(); err != nil {
		m.tab.retryAt = time.Now().Add(m.claimRetry)
		return fmt.Errorf("release: %w", err)
	}
	for _, key := range keys {
		delete(m.tab.claimed, key)
	}
	return nil
}

type createJob[C any] struct {
	key   string
	cfg   config[C]
	token uint64
}

// createAll creates instances in parallel and files them in the table.
func (m *Manager[C, I]) createAll(ctx, leaseCtx context.Context, session string, jobs []createJob[C]) (created, failed int) {
	type result struct {
		job createJob[C]
		e   *entry[I]
		err error
	}
	results := make(chan result, len(jobs))
	sem := make(chan struct{}, maxParallelCallbacks)
	for _, job := range jobs {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			e, err := m.create(ctx, leaseCtx, session, job)
			results <- result{job, e, err}
		}()
	}
	for range jobs {
		r := <-results
		if r.err != nil {
			failed++
			m.recordFailure(r.job.key, "create", r.err)
			continue
		}
		created++
		delete(m.tab.failures, r.job.key)
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
	f.attempts++
	delay := min(m.retryMin<<min(f.attempts-1, 20), m.retryMax)
	f.next = time.Now().Add(delay)
	m.log.Warn(what+" failed", "key", key, "attempt", f.attempts, "retry_in", delay, "err", err)
}

// create runs createInstance under the callback timeout. The context given to
// it lives as long as the instance: it carries the fencing token and is
// cancelled the moment this node loses the right to run the instance.
func (m *Manager[C, I]) create(ctx, leaseCtx context.Context, session string, job createJob[C]) (*entry[I], error) {
	ictx, cancel := context.WithCancel(context.WithValue(leaseCtx, tokenKey{}, ownership{job.key, job.token}))
	spanCtx, span := m.tel.startCallback(ctx, spanCreate, job.key)
	start := time.Now()
	type result struct {
		inst I
		err  error
	}
	done := make(chan result, 1)
	go func() {
		inst, err := callSafely(func() (I, error) { return m.createInstance(ictx, job.cfg.value) })
		done <- result{inst, err}
	}()
	timer := time.NewTimer(m.s.timeout)
	defer timer.Stop()
	var err error
	select {
	case r := <-done:
		if r.err == nil && ictx.Err() == nil {
			m.tel.endCallback(spanCtx, span, spanCreate, start, nil)
			return &entry[I]{key: job.key, sum: job.cfg.sum, inst: r.inst, token: job.token, session: session, cancel: cancel}, nil
		}
		cancel()
		if r.err != nil {
			m.tel.endCallback(spanCtx, span, spanCreate, start, r.err)
			return nil, r.err
		}
		// Fenced while creating: the new instance must not run.
		m.disconnectOne(ctx, &entry[I]{key: job.key, inst: r.inst, cancel: cancel})
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
			m.disconnectOne(context.Background(), &entry[I]{key: job.key, inst: r.inst, cancel: cancel})
		}
	}()
	return nil, err
}

// disconnectAll stops entries in parallel and removes them from the table.
func (m *Manager[C, I]) disconnectAll(ctx context.Context, entries []*entry[I]) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxParallelCallbacks)
	for _, e := range entries {
		delete(m.tab.running, e.key)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			m.disconnectOne(ctx, e)
		})
	}
	wg.Wait()
}

// disconnectOne cancels the instance's context, then calls the disconnect
// hook once, under the callback timeout.
func (m *Manager[C, I]) disconnectOne(ctx context.Context, e *entry[I]) {
	e.cancel()
	if m.disconnect == nil {
		return
	}
	spanCtx, span := m.tel.startCallback(ctx, spanDisconnect, e.key)
	start := time.Now()
	err := m.callWithTimeout(context.WithoutCancel(spanCtx), e.key, func(ctx context.Context) error {
		return m.disconnect(ctx, e.inst)
	})
	m.tel.endCallback(spanCtx, span, spanDisconnect, start, err)
	if err != nil {
		m.log.Warn("disconnect failed", "key", e.key, "err", err)
	}
}

// healthResult is the outcome of one instance health check.
type healthResult[I any] struct {
	e   *entry[I]
	err error
}

// startHealthChecks checks every running instance in the background; the
// results come back to the node loop.
func (m *Manager[C, I]) startHealthChecks() {
	if m.healthcheck == nil {
		return
	}
	var batch []*entry[I]
	for _, e := range m.tab.running {
		if !e.checking {
			e.checking = true
			batch = append(batch, e)
		}
	}
	if len(batch) == 0 {
		return
	}
	m.wg.Go(func() {
		sem := make(chan struct{}, maxParallelCallbacks)
		var wg sync.WaitGroup
		for _, e := range batch {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				ctx, span := m.tel.startCallback(m.runCtx, spanHealth, e.key)
				start := time.Now()
				err := m.callWithTimeout(ctx, "", func(ctx context.Context) error { return m.healthcheck(ctx, e.inst) })
				m.tel.endCallback(ctx, span, spanHealth, start, err)
				select {
				case m.healthCh <- healthResult[I]{e, err}:
				case <-m.runCtx.Done():
				}
			})
		}
		wg.Wait()
	})
}

// onHealth disconnects an unhealthy instance; reconcile creates it again
// after a backoff.
func (m *Manager[C, I]) onHealth(r healthResult[I]) {
	r.e.checking = false
	if m.tab.running[r.e.key] != r.e || r.err == nil {
		return
	}
	m.tel.healthFailed(m.runCtx, "instance")
	m.disconnectAll(m.runCtx, []*entry[I]{r.e})
	m.recordFailure(r.e.key, "health check", r.err)
	m.publishView()
}

// callWithTimeout runs a callback with the callback timeout, turning a panic
// into an error and giving up waiting on a callback that ignores its context.
// A call given up on for a key holds that key in the hung set until it
// returns.
func (m *Manager[C, I]) callWithTimeout(ctx context.Context, key string, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, m.s.timeout)
	done := make(chan error, 1)
	go func() {
		_, err := callSafely(func() (struct{}, error) { return struct{}{}, fn(ctx) })
		done <- err
		cancel()
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		// The parent may have ended as the call returned: prefer its result.
		select {
		case err := <-done:
			return err
		default:
		}
	}
	if key != "" {
		m.hung.add(key)
		go func() {
			<-done
			m.hung.remove(key)
			m.triggerNode()
		}()
	}
	return fmt.Errorf("%w: did not return within %v", ErrCallback, m.s.timeout)
}

// callSafely calls fn, turning a panic into an error that carries the stack.
func callSafely[T any](fn func() (T, error)) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: panic: %v\n%s", ErrCallback, r, debug.Stack())
		}
	}()
	return fn()
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
