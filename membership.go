package dim

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// lease is this node's membership as it sees it. Its context is the root of
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

// join registers the node and starts a lease. The lease counts from before
// the request was sent, so it can only end earlier than the lease in Redis,
// never later.
func (m *Manager[C, I]) join(ctx context.Context) error { return m.joinRecord(ctx, true) }

// joinRecord is join; upgrade allows it to convert an older dim's record
// once.
func (m *Manager[C, I]) joinRecord(ctx context.Context, upgrade bool) error {
	// A reply slower than the usable part of a lease would start a lease
	// that is over on arrival.
	valid := m.s.nodeTTL - m.s.fenceMargin()
	ctx, cancel := context.WithTimeout(ctx, valid)
	defer cancel()
	sent, sentBoot := time.Now(), m.lease.boot()
	res, err := m.db().join(ctx, m.s.nodeID, m.s.nodeTTL, m.ttlFloor(), m.durable())
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	session := res.session
	if res.oldLayout {
		if !upgrade {
			return fmt.Errorf("%w: %s changed layout again while this node joined", ErrOtherVersion, m.k.nodes)
		}
		if err := m.upgradeRecord(ctx); err != nil {
			return err
		}
		return m.joinRecord(ctx, false)
	}
	if session == "" {
		return &idInUseError{id: m.s.nodeID, wait: res.grace}
	}
	graceLeft, gen := res.grace, res.gen
	m.seeTTL(res.maxTTL)
	m.instances.setGeneration(gen)
	if gen == "" && m.noIDsLogged.CompareAndSwap(false, true) {
		m.log.Warn("Redis gives no run id in INFO: a restart or failover cannot be detected, so every join into a service with no live member waits a grace period (see docs/SAFETY.md)")
	}
	if graceLeft > 0 {
		m.log.Info("claims wait for the grace period", "wait", graceLeft)
	}
	if err := m.publishLabels(ctx); err != nil {
		return fmt.Errorf("join: publish labels: %w", err)
	}
	m.lease.begin(m.runCtx, session, sent, sentBoot, valid)
	// Confirm at once: the leader counts the node only from here on.
	if err := m.renew(session); err != nil {
		m.lease.end()
		return fmt.Errorf("join: confirm: %w", err)
	}
	m.log.Debug("joined", "session", session)
	m.recordJoin(ctx, session)
	return nil
}

// upgradeRecord converts the record of an older dim's layout into the
// membership record (see upgradeScript), or says why it cannot.
func (m *Manager[C, I]) upgradeRecord(ctx context.Context) error {
	n, err := m.db().upgrade(ctx)
	switch {
	case err != nil:
		return fmt.Errorf("join: upgrade the record of an older dim: %w", err)
	case n == -1:
		return fmt.Errorf("%w: %s holds live leases of nodes that run an older dim, which keeps its record in another layout; "+
			"stop every node of the older version (or let their leases end) before nodes of this one join (see docs/REDIS.md)",
			ErrOtherVersion, m.k.nodes)
	case n == -2:
		return fmt.Errorf("%w: %s holds a value that dim did not write; remove it or choose another service name or key prefix",
			ErrOtherVersion, m.k.nodes)
	}
	m.log.Info("converted the record of an older dim into this version's layout", "key", m.k.nodes)
	return nil
}

// ttlFloor is the least grace a record that Redis lost or rolled back must
// get: the largest node TTL this process has seen declared in the service,
// its own, and the service-wide bound of WithMaxNodeTTL.
func (m *Manager[C, I]) ttlFloor() time.Duration {
	return max(m.s.nodeTTL, m.s.maxNodeTTL, time.Duration(m.maxTTLSeen.Load())*time.Millisecond)
}

// durable is the scripts' flag for WithDurableRedis.
func (m *Manager[C, I]) durable() string {
	if m.s.durable {
		return "1"
	}
	return "0"
}

func (m *Manager[C, I]) seeTTL(ms int64) {
	for {
		cur := m.maxTTLSeen.Load()
		if ms <= cur || m.maxTTLSeen.CompareAndSwap(cur, ms) {
			return
		}
	}
}

// heartbeatLoop renews the lease and rejoins after a fence. The fence itself
// is the lease's own timer (see lease), not this loop's business, so that
// nothing the loop waits for can delay it.
func (m *Manager[C, I]) heartbeatLoop() {
	tick := time.NewTicker(m.s.heartbeat)
	defer tick.Stop()
	backoff := newBackoff(m.s.heartbeat/4, m.s.heartbeat)
	for {
		select {
		case <-m.runCtx.Done():
			return
		case <-tick.C:
		}
		m.live.beatNow()
		session, _ := m.lease.current()
		switch {
		case session != "":
			_ = m.renew(session)
		case m.life.stopping():
		case m.life.load() == phaseFenced:
			// Instances of the fenced session are still stopping: the node
			// talks to Redis again only once they are gone.
		default:
			if err := m.join(m.runCtx); err != nil {
				switch {
				case m.runCtx.Err() != nil:
				case errors.Is(err, ErrNodeIDInUse):
					m.log.Debug("rejoin waits for the previous lease", "err", err)
				case m.slot.saw(m.log, "rejoin", err):
				default:
					m.log.Warn("rejoin failed", "err", err)
				}
				if !sleepCtx(m.runCtx, backoff.next()) {
					return
				}
				continue
			}
			backoff.reset()
			m.triggerNode()
			m.triggerCampaign()
		}
	}
}

// watchdog checks the lease on the boot clock, which runs on while a host
// or VM is suspended: a node that wakes after its lease fences within one
// tick, before its heartbeat, claims or creates (which check for themselves
// too).
func (m *Manager[C, I]) watchdog() {
	tick := time.NewTicker(max(m.s.fenceMargin()/4, 5*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-m.runCtx.Done():
			return
		case <-tick.C:
			m.checkLease()
		}
	}
}

// checkLease fences the node if its lease may have run out, and returns the
// session that is still valid, or "".
func (m *Manager[C, I]) checkLease() string {
	session, _ := m.lease.current()
	if session != "" && m.lease.expired(session) {
		m.fenceSession(session, "lease expired without renewal")
		return ""
	}
	return session
}

// renew sends one heartbeat, bounded so that it cannot outlive the lease.
func (m *Manager[C, I]) renew(session string) error {
	if m.checkLease() != session {
		return errors.New("lease expired")
	}
	m.lease.mu.Lock()
	until := m.lease.sent.Add(m.lease.valid)
	m.lease.mu.Unlock()
	ctx, cancel := context.WithDeadline(m.runCtx, until)
	defer cancel()
	sent, sentBoot, sentClock := time.Now(), m.lease.boot(), m.clock.now()
	res, err := m.db().heartbeat(ctx, m.s.nodeID, session, m.s.nodeTTL, m.s.weight, m.ttlFloor(), m.durable())
	if err != nil {
		if m.runCtx.Err() == nil {
			m.log.Debug("heartbeat failed", "err", err)
		}
		return err
	}
	if res.hasServer {
		m.observeClock(res.server, sentClock)
	}
	gen := res.gen
	m.seeTTL(res.maxTTL)
	if !res.live {
		m.fenceSession(session, "membership lost in Redis")
		return errors.New("membership lost")
	}
	if changed, check := m.instances.setGeneration(gen); changed {
		// Redis came back with an older record: it must say again what this
		// node holds before the lease is extended, or the node fences.
		m.log.Warn("Redis restarted or failed over; confirming what this node holds in the restored record")
		if err := m.verifyOwnership(session, check, until); err != nil {
			m.fenceSession(session, err.Error())
			return err
		}
	}
	if !m.lease.extend(session, sent, sentBoot) {
		return errors.New("lease expired")
	}
	return nil
}

// fenceSession fences only if session is still the current one: a verdict on
// an older session says nothing about a newer one.
func (m *Manager[C, I]) fenceSession(session, reason string) {
	if !m.lease.endIf(session) {
		return
	}
	m.life.fence() // until the node loop has stopped every instance
	// Every instance's context ended with the lease; every disconnect hook
	// is called now, all at once, whatever the node loop is doing.
	m.instances.stopAll()
	m.log.Warn("fenced: stopping all instances", "reason", reason)
	m.lastFence.Store(&fenceNote{at: time.Now(), reason: reason})
	m.tel.fenced(m.runCtx, reason)
	m.stepDown()
	signal(m.fenceCh)
}

// drain tells the leader to move this node's keys away while the node keeps
// its lease, so nobody can claim them before they are released.
func (m *Manager[C, I]) drain(ctx context.Context) error {
	session, _ := m.lease.current()
	if session == "" {
		return nil
	}
	return m.db().drain(ctx, m.s.nodeID, session)
}

// leave ends the membership.
func (m *Manager[C, I]) leave(ctx context.Context) error {
	session, _ := m.lease.current()
	if session == "" {
		return nil
	}
	m.lease.end()
	err := m.db().leave(ctx, m.s.nodeID, session)
	if err == nil {
		m.record(ctx, HistoryLeft, 0, nil, nil, session)
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

// members drops expired nodes and returns the live ones with the server
// time, in milliseconds.
func (m *Manager[C, I]) members(ctx context.Context) (now int64, live []member, err error) {
	return m.db().members(ctx)
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
