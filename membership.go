package dim

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// lease is this node's membership as it sees it. Its context is the root of
// every instance's context: cancelling it (self-fencing) stops them all at
// once, whatever else the node is doing.
type lease struct {
	mu       sync.Mutex
	session  string    // "" while not a member
	deadline time.Time // local monotonic time after which we must be fenced
	ctx      context.Context
	cancel   context.CancelFunc
}

// current returns the session and its context; the context is already
// cancelled when the node is not a member.
func (l *lease) current() (string, context.Context) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.session, l.ctx
}

func (l *lease) begin(parent context.Context, session string, deadline time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancel != nil {
		l.cancel()
	}
	l.session, l.deadline = session, deadline
	l.ctx, l.cancel = context.WithCancel(parent)
}

// extend moves the local deadline after a renewal that was sent at sent.
func (l *lease) extend(session string, deadline time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.session != session {
		return false
	}
	l.deadline = deadline
	return true
}

// endIf ends the lease if session is current, and reports whether it did.
func (l *lease) endIf(session string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.session != session {
		return false
	}
	l.session = ""
	l.cancel()
	return true
}

// end cancels the lease context and reports whether there was a lease.
func (l *lease) end() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	had := l.session != ""
	l.session = ""
	if l.cancel != nil {
		l.cancel()
	}
	return had
}

func (l *lease) expiresAt() (string, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.session, l.deadline
}

// join registers the node and starts a lease. The local deadline counts from
// before the request was sent, so it can only end earlier than the lease in
// Redis, never later.
func (m *Manager[C, I]) join(ctx context.Context) error {
	// A reply slower than the usable part of a lease would start a lease
	// that is over on arrival.
	ctx, cancel := context.WithTimeout(ctx, m.s.nodeTTL-m.s.fenceMargin())
	defer cancel()
	sent := time.Now()
	res, err := joinScript.Exec(ctx, m.client,
		[]string{m.k.nodes, m.k.sessions, m.k.weights, m.k.grace, m.k.fence},
		[]string{m.s.nodeID, ms(m.s.nodeTTL)}).ToArray()
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	if len(res) != 3 {
		return fmt.Errorf("join: unexpected reply of %d values", len(res))
	}
	session, err := res[0].ToString()
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	if session == "" {
		wait, _ := res[2].AsInt64()
		return &idInUseError{id: m.s.nodeID, wait: time.Duration(wait) * time.Millisecond}
	}
	m.lease.begin(m.runCtx, session, sent.Add(m.s.nodeTTL-m.s.fenceMargin()))
	// Confirm at once: the leader counts the node only from here on.
	if err := m.renew(session, sent.Add(m.s.nodeTTL-m.s.fenceMargin())); err != nil {
		m.lease.end()
		return fmt.Errorf("join: confirm: %w", err)
	}
	m.log.Debug("joined", "session", session)
	return nil
}

// heartbeatLoop renews the lease and fences the node the moment the lease
// may have run out: when a renewal is refused, or when the local deadline
// passes without one. After a fence it rejoins with a new session.
func (m *Manager[C, I]) heartbeatLoop() {
	tick := time.NewTicker(m.s.heartbeat)
	defer tick.Stop()
	deadline := time.NewTimer(m.s.nodeTTL)
	defer deadline.Stop()
	backoff := newBackoff(m.s.heartbeat/4, m.s.heartbeat)
	for {
		if session, until := m.lease.expiresAt(); session != "" {
			deadline.Reset(time.Until(until))
		}
		select {
		case <-m.runCtx.Done():
			return
		case <-deadline.C:
		case <-tick.C:
		}
		// Checked first on every wake-up: a process resumed after a long
		// pause must fence before it sends anything.
		session, until := m.lease.expiresAt()
		if session != "" && !time.Now().Before(until) {
			m.fenceSession(session, "lease expired without renewal")
			continue
		}
		switch {
		case session != "":
			_ = m.renew(session, until)
		case m.stopping.Load():
		case !m.unfenced.Load():
			// Instances of the fenced session are still stopping: the node
			// talks to Redis again only once they are gone.
		default:
			if err := m.join(m.runCtx); err != nil {
				switch {
				case m.runCtx.Err() != nil:
				case errors.Is(err, ErrNodeIDInUse):
					m.log.Debug("rejoin waits for the previous lease", "err", err)
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

// renew sends one heartbeat, bounded so that it cannot outlive the lease.
func (m *Manager[C, I]) renew(session string, until time.Time) error {
	ctx, cancel := context.WithDeadline(m.runCtx, until)
	defer cancel()
	sent := time.Now()
	res, err := heartbeatScript.Exec(ctx, m.client,
		[]string{m.k.nodes, m.k.sessions, m.k.weights},
		[]string{m.s.nodeID, session, ms(m.s.nodeTTL), strconv.Itoa(m.s.weight), m.k.channel}).ToArray()
	if err == nil && len(res) != 2 {
		err = fmt.Errorf("unexpected reply of %d values", len(res))
	}
	if err != nil {
		if m.runCtx.Err() == nil {
			m.log.Debug("heartbeat failed", "err", err)
		}
		return err
	}
	if ok, _ := res[0].AsInt64(); ok != 1 {
		m.fenceSession(session, "membership lost in Redis")
		return errors.New("membership lost")
	}
	m.lease.extend(session, sent.Add(m.s.nodeTTL-m.s.fenceMargin()))
	return nil
}

// fence stops everything this node runs because it can no longer prove it
// owns it: the lease context is cancelled first, so every instance sees its
// context end at once; the node loop then disconnects them.
func (m *Manager[C, I]) fence(reason string) {
	session, _ := m.lease.current()
	m.fenceSession(session, reason)
}

// fenceSession fences only if session is still the current one: a verdict on
// an older session says nothing about a newer one.
func (m *Manager[C, I]) fenceSession(session, reason string) {
	if session == "" || !m.lease.endIf(session) {
		return
	}
	m.unfenced.Store(false) // until the node loop has stopped every instance
	m.log.Warn("fenced: stopping all instances", "reason", reason)
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
	return drainScript.Exec(ctx, m.client,
		[]string{m.k.nodes, m.k.sessions, m.k.weights},
		[]string{m.s.nodeID, session, m.k.channel}).Error()
}

// leave ends the membership.
func (m *Manager[C, I]) leave(ctx context.Context) error {
	session, _ := m.lease.current()
	if session == "" {
		return nil
	}
	m.lease.end()
	return leaveScript.Exec(ctx, m.client,
		[]string{m.k.nodes, m.k.sessions, m.k.weights},
		[]string{m.s.nodeID, session, m.k.channel}).Error()
}

// member is a live node as the leader reads it.
type member struct {
	id      string
	expires int64 // server ms
	weight  int
}

// members drops expired nodes and returns the live ones with the server
// time, in milliseconds.
func (m *Manager[C, I]) members(ctx context.Context) (now int64, live []member, err error) {
	res, err := membersScript.Exec(ctx, m.client,
		[]string{m.k.nodes, m.k.sessions, m.k.weights},
		[]string{m.k.channel}).ToArray()
	if err != nil {
		return 0, nil, err
	}
	if len(res) == 0 || (len(res)-1)%3 != 0 {
		return 0, nil, fmt.Errorf("members: unexpected reply of %d values", len(res))
	}
	now, _ = res[0].AsInt64()
	for i := 1; i < len(res); i += 3 {
		id, _ := res[i].ToString()
		exp, _ := res[i+1].AsInt64()
		w, _ := res[i+2].AsInt64()
		live = append(live, member{id: id, expires: exp, weight: int(w)})
	}
	return now, live, nil
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
