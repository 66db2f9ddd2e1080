package dim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// membership is this node's session in the service, shaped like etcd's
// concurrency.Session: it joins, renews its lease on the heartbeat, fences
// the moment the lease may have run out, rejoins after a fence once its node
// allows it, and leaves. The lease is a context (see lease and current):
// every instance's context derives from it. The membership writes nothing
// of its node's: it tells the node through hooks.
type membership struct {
	*env
	hooks       memberHooks
	lease       lease
	maxTTLSeen  atomic.Int64 // largest node TTL declared in the service, ms
	noIDsLogged atomic.Bool
	lastFence   atomic.Pointer[fenceNote] // a fence not yet in the history
	fencing     sync.Mutex                // held while a fence is told to the node
}

// memberHooks are how a membership tells its node what happened. Each is
// set once, before Start.
type memberHooks struct {
	// generation takes the generation of Redis's record, as every join and
	// renewal reads it, before the lease starts or is extended. It returns
	// a check when the generation changed since the last call; the check
	// must confirm what the node holds in the restored record by until, or
	// the renewal fails and the node fences.
	generation func(gen string) (check func(session string, until time.Time) error)
	// fenced runs once the lease ended without a renewal or was
	// disowned by Redis, for reason: every instance must stop at once. The
	// membership does not rejoin before it has returned.
	fenced func(reason string)
	// mayRejoin reports whether the node may join again after a fence: not
	// while its fenced instances are still stopping, nor once it stops.
	mayRejoin func() bool
	// rejoined runs after a rejoin.
	rejoined func()
}

func newMembership(e *env, hooks memberHooks) *membership {
	mb := &membership{env: e, hooks: hooks}
	mb.lease.ctx, mb.lease.cancel = context.WithCancel(context.Background())
	mb.lease.cancel()
	mb.lease.boot = bootClock
	mb.lease.onExpire = func(session string) { mb.fence(session, "lease expired without renewal") }
	return mb
}

// current returns the session and the lease's context, which is cancelled
// while the node is not a member.
func (mb *membership) current() (string, context.Context) { return mb.lease.current() }

// join registers the node and starts a lease. The lease counts from before
// the request was sent, so it can only end earlier than the lease in Redis,
// never later.
func (mb *membership) join(ctx context.Context) error { return mb.joinRecord(ctx, true) }

// joinRecord is join; upgrade allows it to convert an older dim's record
// once.
func (mb *membership) joinRecord(ctx context.Context, upgrade bool) error {
	// A reply slower than the usable part of a lease would start a lease
	// that is over on arrival.
	valid := mb.s.nodeTTL - mb.s.fenceMargin()
	ctx, cancel := context.WithTimeout(ctx, valid)
	defer cancel()
	sent, sentBoot := time.Now(), mb.lease.boot()
	res, err := mb.db().join(ctx, mb.s.nodeID, mb.s.nodeTTL, mb.ttlFloor(), mb.durable())
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	session := res.session
	if res.oldLayout {
		if !upgrade {
			return fmt.Errorf("%w: %s changed layout again while this node joined", ErrOtherVersion, mb.k.nodes)
		}
		if err := mb.upgradeRecord(ctx); err != nil {
			return err
		}
		return mb.joinRecord(ctx, false)
	}
	if session == "" {
		return &idInUseError{id: mb.s.nodeID, wait: res.grace}
	}
	graceLeft, gen := res.grace, res.gen
	mb.seeTTL(res.maxTTL)
	mb.hooks.generation(gen)
	if gen == "" && mb.noIDsLogged.CompareAndSwap(false, true) {
		mb.log.Warn("Redis gives no run id in INFO: a restart or failover cannot be detected, so every join into a service with no live member waits a grace period (see docs/SAFETY.md)")
	}
	if graceLeft > 0 {
		mb.log.Info("claims wait for the grace period", "wait", graceLeft)
	}
	if err := mb.publishLabels(ctx); err != nil {
		return fmt.Errorf("join: publish labels: %w", err)
	}
	mb.lease.begin(mb.runCtx, session, sent, sentBoot, valid)
	// Confirm at once: the leader counts the node only from here on.
	if err := mb.renew(session); err != nil {
		mb.lease.end()
		return fmt.Errorf("join: confirm: %w", err)
	}
	mb.log.Debug("joined", "session", session)
	mb.recordJoin(ctx, session)
	return nil
}

// upgradeRecord converts the record of an older dim's layout into the
// membership record (see upgradeScript), or says why it cannot.
func (mb *membership) upgradeRecord(ctx context.Context) error {
	n, err := mb.db().upgrade(ctx)
	switch {
	case err != nil:
		return fmt.Errorf("join: upgrade the record of an older dim: %w", err)
	case n == -1:
		return fmt.Errorf("%w: %s holds live leases of nodes that run an older dim, which keeps its record in another layout; "+
			"stop every node of the older version (or let their leases end) before nodes of this one join (see docs/REDIS.md)",
			ErrOtherVersion, mb.k.nodes)
	case n == -2:
		return fmt.Errorf("%w: %s holds a value that dim did not write; remove it or choose another service name or key prefix",
			ErrOtherVersion, mb.k.nodes)
	}
	mb.log.Info("converted the record of an older dim into this version's layout", "key", mb.k.nodes)
	return nil
}

// ttlFloor is the least grace a record that Redis lost or rolled back must
// get: the largest node TTL this process has seen declared in the service,
// its own, and the service-wide bound of WithMaxNodeTTL.
func (mb *membership) ttlFloor() time.Duration {
	return max(mb.s.nodeTTL, mb.s.maxNodeTTL, time.Duration(mb.maxTTLSeen.Load())*time.Millisecond)
}

// durable is the scripts' flag for WithDurableRedis.
func (mb *membership) durable() string {
	if mb.s.durable {
		return "1"
	}
	return "0"
}

func (mb *membership) seeTTL(ms int64) {
	for {
		cur := mb.maxTTLSeen.Load()
		if ms <= cur || mb.maxTTLSeen.CompareAndSwap(cur, ms) {
			return
		}
	}
}

// heartbeatLoop renews the lease and rejoins after a fence. The fence itself
// is the lease's own timer (see lease), not this loop's business, so that
// nothing the loop waits for can delay it.
func (mb *membership) heartbeatLoop() {
	tick := time.NewTicker(mb.s.heartbeat)
	defer tick.Stop()
	backoff := newBackoff(mb.s.heartbeat/4, mb.s.heartbeat)
	for {
		select {
		case <-mb.runCtx.Done():
			return
		case <-tick.C:
		}
		mb.live.beatNow()
		session, _ := mb.lease.current()
		switch {
		case session != "":
			_ = mb.renew(session)
		case !mb.mayRejoin():
			// Instances of the fenced session are still stopping, or the
			// node stops: it talks to Redis again only once they are gone.
		default:
			if err := mb.join(mb.runCtx); err != nil {
				switch {
				case mb.runCtx.Err() != nil:
				case errors.Is(err, ErrNodeIDInUse):
					mb.log.Debug("rejoin waits for the previous lease", "err", err)
				case mb.slot.saw(mb.log, "rejoin", err):
				default:
					mb.log.Warn("rejoin failed", "err", err)
				}
				if !sleepCtx(mb.runCtx, backoff.next()) {
					return
				}
				continue
			}
			backoff.reset()
			mb.hooks.rejoined()
		}
	}
}

// watchdog checks the lease on the boot clock, which runs on while a host
// or VM is suspended: a node that wakes after its lease fences within one
// tick, before its heartbeat, claims or creates (which check for themselves
// too).
func (mb *membership) watchdog() {
	tick := time.NewTicker(max(mb.s.fenceMargin()/4, 5*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-mb.runCtx.Done():
			return
		case <-tick.C:
			mb.checkLease()
		}
	}
}

// checkLease fences the node if its lease may have run out, and returns the
// session that is still valid, or "".
func (mb *membership) checkLease() string {
	session, _ := mb.lease.current()
	if session != "" && mb.lease.expired(session) {
		mb.fence(session, "lease expired without renewal")
		return ""
	}
	return session
}

// renew sends one heartbeat, bounded so that it cannot outlive the lease.
func (mb *membership) renew(session string) error {
	if mb.checkLease() != session {
		return errors.New("lease expired")
	}
	mb.lease.mu.Lock()
	until := mb.lease.sent.Add(mb.lease.valid)
	mb.lease.mu.Unlock()
	ctx, cancel := context.WithDeadline(mb.runCtx, until)
	defer cancel()
	sent, sentBoot, sentClock := time.Now(), mb.lease.boot(), mb.clock.now()
	res, err := mb.db().heartbeat(ctx, mb.s.nodeID, session, mb.s.nodeTTL, mb.s.weight, mb.ttlFloor(), mb.durable())
	receivedClock := mb.clock.now()
	if err != nil {
		if mb.runCtx.Err() == nil {
			mb.log.Debug("heartbeat failed", "err", err)
		}
		return err
	}
	if res.hasServer {
		mb.observeClock(res.server, sentClock, receivedClock)
	}
	gen := res.gen
	mb.seeTTL(res.maxTTL)
	if !res.live {
		mb.fence(session, "membership lost in Redis")
		return errors.New("membership lost")
	}
	if check := mb.hooks.generation(gen); check != nil {
		// Redis came back with an older record: it must say again what this
		// node holds before the lease is extended, or the node fences.
		mb.log.Warn("Redis restarted or failed over; confirming what this node holds in the restored record")
		if err := check(session, until); err != nil {
			mb.fence(session, err.Error())
			return err
		}
	}
	if !mb.lease.extend(session, sent, sentBoot) {
		return errors.New("lease expired")
	}
	return nil
}

// fence fences only if session is still the current one: a verdict on
// an older session says nothing about a newer one.
//
// From the end of the lease until the node has heard of the fence, the
// membership does not rejoin (see mayRejoin): a node that has not yet
// begun to stop what it ran must not start a new session.
func (mb *membership) fence(session, reason string) {
	mb.fencing.Lock()
	defer mb.fencing.Unlock()
	if !mb.lease.endIf(session) {
		return
	}
	// The history records the fence before the join that follows it.
	mb.lastFence.Store(&fenceNote{at: time.Now(), reason: reason})
	// Every instance's context ended with the lease; the node calls every
	// disconnect hook now, all at once, whatever its loop is doing.
	mb.hooks.fenced(reason)
}

// mayRejoin reports whether the heartbeat loop may join again: the node is
// not a member, no fence is under way, and the node allows it.
func (mb *membership) mayRejoin() bool {
	mb.fencing.Lock()
	defer mb.fencing.Unlock()
	session, _ := mb.lease.current()
	return session == "" && mb.hooks.mayRejoin()
}

// drain tells the leader to move this node's keys away while the node keeps
// its lease, so nobody can claim them before they are released.
func (mb *membership) drain(ctx context.Context) error {
	session, _ := mb.lease.current()
	if session == "" {
		return nil
	}
	return mb.db().drain(ctx, mb.s.nodeID, session)
}

// leave ends the membership.
func (mb *membership) leave(ctx context.Context) error {
	session, _ := mb.lease.current()
	if session == "" {
		return nil
	}
	mb.lease.end()
	err := mb.db().leave(ctx, mb.s.nodeID, session)
	if err == nil {
		mb.record(ctx, HistoryLeft, 0, nil, nil, session)
	}
	return err
}

// member is a live node as the leader reads it.
type member struct {
	id      string
	expires int64 // server ms
	weight  int
	labels  string // as published (see nodeLabels); "" for none
}

// sessionsIn maps every node in the membership record (a HGETALL of it) to
// its session, whether or not its lease is still live.
func sessionsIn(rec map[string]string) map[string]string {
	out := map[string]string{}
	for f, v := range rec {
		if node, ok := strings.CutPrefix(f, "s:"); ok {
			out[node] = v
		}
	}
	return out
}

// idInUseError reports a live session holding this node's ID.
type idInUseError struct {
	id   string
	wait time.Duration
}

func (e *idInUseError) Error() string {
	return fmt.Sprintf("%v: %q has a live session for %v more (another process with this ID, or this node's own lease from before)",
		ErrNodeIDInUse, e.id, e.wait)
}

func (e *idInUseError) Unwrap() error { return ErrNodeIDInUse }

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

// recordJoin appends a join, after the fence that preceded it if any.
func (mb *membership) recordJoin(ctx context.Context, session string) {
	if f := mb.lastFence.Swap(nil); f != nil {
		mb.record(ctx, HistoryFenced, 0, nil, nil, fmt.Sprintf("%s: %s", f.at.UTC().Format(time.RFC3339Nano), f.reason))
	}
	mb.record(ctx, HistoryJoined, 0, nil, nil, session)
}

// publishLabels records this node's labels and caps for the leader, or
// removes a previous incarnation's.
func (mb *membership) publishLabels(ctx context.Context) error {
	l := nodeLabels{Labels: mb.s.labels, MaxKeys: mb.s.maxKeys, MaxCost: mb.s.maxCost}
	if l.empty() {
		return mb.client.Do(ctx, mb.client.B().Hdel().Key(mb.k.labels).Field(mb.s.nodeID).Build()).Error()
	}
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	return mb.client.Do(ctx, mb.client.B().Hset().Key(mb.k.labels).FieldValue().FieldValue(mb.s.nodeID, string(b)).Build()).Error()
}

// lease is the membership's lease as this node sees it. Its context is the root of
// every instance's context: cancelling it (self-fencing) stops them all at
// once, whatever else the node is doing.
//
// The lease is valid for TTL − margin from the moment its last confirmed
// renewal was sent, on two clocks: Go's monotonic clock, and the boot clock,
// which also counts the time a suspended host or VM slept (the monotonic
// clock stands still then). A timer fences at the deadline, independent of
// every loop of the node; a watchdog and the checks before every renewal,
// claim and create catch a wake-up after a suspend before the node acts.
type lease struct {
	mu       sync.Mutex
	session  string        // "" while not a member
	sent     time.Time     // monotonic: when the last confirmed renewal was sent
	sentBoot time.Duration // boot clock at the same moment
	valid    time.Duration // TTL − fence margin
	ctx      context.Context
	cancel   context.CancelFunc
	timer    *time.Timer
	onExpire func(session string) // fences; set once by New
	boot     func() time.Duration // the boot clock; tests shift it
}

// current returns the session and its context; the context is already
// cancelled when the node is not a member.
func (l *lease) current() (string, context.Context) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.session, l.ctx
}

func (l *lease) begin(parent context.Context, session string, sent time.Time, sentBoot, valid time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancel != nil {
		l.cancel()
	}
	l.session, l.sent, l.sentBoot, l.valid = session, sent, sentBoot, valid
	l.ctx, l.cancel = context.WithCancel(parent)
	l.armLocked()
}

// armLocked sets the fence timer to the deadline of the current session.
func (l *lease) armLocked() {
	if l.timer != nil {
		l.timer.Stop()
	}
	session := l.session
	l.timer = time.AfterFunc(time.Until(l.sent.Add(l.valid)), func() { l.onExpire(session) })
}

// extend moves the deadline after a renewal of session that was sent at
// sent.
func (l *lease) extend(session string, sent time.Time, sentBoot time.Duration) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.session != session || l.expiredLocked() {
		return false
	}
	l.sent, l.sentBoot = sent, sentBoot
	l.armLocked()
	return true
}

// expired reports whether session's lease may have run out in Redis, on
// either clock. A session that is not current has expired.
func (l *lease) expired(session string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.session != session || l.expiredLocked()
}

func (l *lease) expiredLocked() bool {
	return time.Since(l.sent) >= l.valid || l.boot()-l.sentBoot >= l.valid
}

// endIf ends the lease if session is current, and reports whether it did.
func (l *lease) endIf(session string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if session == "" || l.session != session {
		return false
	}
	l.endLocked()
	return true
}

// end cancels the lease context and reports whether there was a lease.
func (l *lease) end() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	had := l.session != ""
	l.endLocked()
	return had
}

func (l *lease) endLocked() {
	l.session = ""
	if l.timer != nil {
		l.timer.Stop()
	}
	if l.cancel != nil {
		l.cancel()
	}
}
