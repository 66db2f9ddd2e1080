package dim

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis/rueidislock"
)

// lockName is the name of the leader lock under the service's lock prefix.
const lockName = "leader"

// leaderTerm is this node's view of its own leadership: the epoch of its
// term, if any. Work done for the
// leader runs under ctx, which ends the moment leadership is lost.
type leaderTerm struct {
	mu     sync.Mutex
	epoch  uint64 // 0 when not leader
	ctx    context.Context
	cancel context.CancelFunc // releases the lock
	taken  chan grant         // a lock taken by the leader health check
}

func (l *leaderTerm) current() (uint64, context.Context) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.epoch, l.ctx
}

// grant is a held leader lock, won by waiting or by force.
type grant struct {
	ctx     context.Context
	release context.CancelFunc
	err     error
}

// campaignLoop competes for the leader lock for as long as the node runs:
// after losing leadership, or failing to get it, it tries again with backoff,
// never giving up.
func (m *Manager[C, I]) campaignLoop() {
	backoff := newBackoff(50*time.Millisecond, m.s.lockTTL)
	waited := make(chan grant, 1)
	waiting := false
	defer func() {
		if waiting { // the locker returns once runCtx is done
			if g := <-waited; g.err == nil {
				g.release()
			}
		}
	}()
	for m.runCtx.Err() == nil {
		if !m.waitMember() {
			return
		}
		if !waiting {
			// One quick try first, so that every attempt is visible: a lock
			// held elsewhere is an expected outcome, not an error.
			start := time.Now()
			ctx, release, err := m.locker.TryWithContext(m.runCtx, lockName)
			if err == nil {
				epoch, err := m.becomeLeader(ctx)
				if err == nil && epoch != 0 {
					backoff.reset()
					m.lead(ctx, release, epoch)
					continue
				}
				release()
			} else if errors.Is(err, rueidislock.ErrNotLocked) {
				m.tel.election(m.runCtx, start, "lost", 0, nil)
			}
			waiting = true
			go func() {
				ctx, release, err := m.locker.WithContext(m.runCtx, lockName)
				waited <- grant{ctx, release, err}
			}()
		}
		var g grant
		select {
		case <-m.runCtx.Done():
			return
		case g = <-waited:
			waiting = false
		case g = <-m.term.taken:
		}
		if g.err != nil {
			if m.runCtx.Err() != nil || errors.Is(g.err, rueidislock.ErrLockerClosed) {
				return
			}
			if isOOM(g.err) {
				m.log.Warn(outOfMemory, "during", "leader election", "err", g.err)
			} else if !m.slot.saw(m.log, "leader election", g.err) {
				m.log.Warn("leader election failed", "err", g.err)
			}
			sleepCtx(m.runCtx, backoff.next())
			continue
		}
		epoch, err := m.becomeLeader(g.ctx)
		if err != nil || epoch == 0 {
			g.release()
			if err != nil && m.runCtx.Err() == nil && !m.slot.saw(m.log, "leader election", err) {
				m.log.Warn("could not take leadership", "err", err)
			}
			sleepCtx(m.runCtx, backoff.next())
			continue
		}
		backoff.reset()
		m.lead(g.ctx, g.release, epoch)
	}
}

// waitMember blocks until the node holds a lease or the Manager stops.
func (m *Manager[C, I]) waitMember() bool {
	for {
		if session, _ := m.membership.current(); m.life.canTakeWork(session) {
			return true
		}
		select {
		case <-m.runCtx.Done():
			return false
		case <-m.campaignCh:
		}
	}
}

// becomeLeader records this node as leader under a new epoch; a node that is
// not a member or is stopping declines (epoch 0).
func (m *Manager[C, I]) becomeLeader(ctx context.Context) (uint64, error) {
	session, _ := m.membership.current()
	if !m.life.canTakeWork(session) {
		return 0, nil
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
	defer cancel()
	epoch, err := m.db().lead(ctx, m.s.nodeID, session)
	var bad *badReply
	if errors.As(err, &bad) {
		return 0, err
	}
	if err != nil {
		m.tel.election(ctx, start, "error", 0, err)
		return 0, err
	}
	m.tel.election(ctx, start, "won", epoch, nil)
	return epoch, nil
}

// lead runs the leader's work until the lock is lost, a write is refused or
// the node stops, then releases the lock. Releasing cancels the lock before
// anything closes the client, so the key goes at once instead of expiring.
func (m *Manager[C, I]) lead(lockCtx context.Context, release context.CancelFunc, epoch uint64) {
	ctx, cancel := context.WithCancel(lockCtx)
	m.term.mu.Lock()
	m.term.epoch, m.term.ctx, m.term.cancel = epoch, ctx, cancel
	m.term.mu.Unlock()
	m.log.Info("became leader", "epoch", epoch)
	m.record(ctx, HistoryElected, epoch, nil, nil, "")
	m.tel.setLeader(epoch)
	start := time.Now()

	var busy atomic.Int64 // when the current rebalance began, unix ns; 0 while idle
	stuck := make(chan struct{})
	go func() {
		defer close(stuck)
		m.watchLeaderLoop(ctx, &busy, cancel)
	}()
	why := m.leaderLoop(ctx, epoch, &busy)
	cancel()
	<-stuck
	if why == "" {
		why = "stepped down" // fenced or stopping
		if lockCtx.Err() != nil && m.runCtx.Err() == nil && !m.life.stopping() {
			if session, _ := m.membership.current(); session != "" {
				why = "lock lost"
			}
		}
	}

	m.term.mu.Lock()
	m.term.epoch, m.term.ctx, m.term.cancel = 0, nil, nil
	m.term.mu.Unlock()
	cancel()
	if why == "handed off" {
		// A graceful end leaves no dead leader on record for others to
		// force out.
		ctx, cancel := context.WithTimeout(m.runCtx, m.s.heartbeat)
		_ = m.db().abdicate(ctx, epoch)
		cancel()
	}
	release()
	m.tel.setLeader(0)
	m.tel.election(m.runCtx, start, why, epoch, nil)
	m.log.Info("leadership ended", "epoch", epoch, "reason", why)
}

// watchLeaderLoop ends the leadership when the leader loop has made no
// progress for longer than any of its bounded steps can take (a big write
// progresses with every chunk, a big read with every page): a leader that holds
// the lock but cannot rebalance would leave joiners without keys forever.
// Releasing the lock lets another node lead; the stuck loop's writes carry
// a stale epoch and are refused.
func (m *Manager[C, I]) watchLeaderLoop(ctx context.Context, busy *atomic.Int64, stepDown context.CancelFunc) {
	bound := m.s.timeout + 2*m.s.nodeTTL + m.s.lockTTL
	tick := time.NewTicker(max(bound/8, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if at := busy.Load(); at != 0 && time.Since(time.Unix(0, at)) > bound {
				m.log.Warn("the leader loop is stuck; stepping down", "busy_for", time.Since(time.Unix(0, at)))
				stepDown()
				return
			}
		}
	}
}

// stepDown ends this node's leadership, if any, at once.
func (m *Manager[C, I]) stepDown() {
	m.term.mu.Lock()
	cancel := m.term.cancel
	m.term.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// recordedLeader is the leader as recorded in Redis.
type recordedLeader struct {
	node  string
	epoch uint64
	live  bool
}

func (m *Manager[C, I]) readLeader(ctx context.Context) (recordedLeader, error) {
	return m.db().leader(ctx)
}

// checkLeader is the leader health check every node runs on its schedule,
// and after its subscription comes back. With no leader recorded (Redis came
// back empty, say) it tries the lock at once: a node waiting for the lock
// hears of a release only from the Redis that lost it. A recorded leader that
// is no longer a live member may still hold the lock (a stuck process), so
// one node forces it out.
func (m *Manager[C, I]) checkLeader() {
	ctx, cancel := context.WithTimeout(m.runCtx, m.s.heartbeat)
	defer cancel()
	start := time.Now()
	st, err := m.readLeader(ctx)
	outcome := "healthy"
	switch {
	case err != nil:
		outcome = "error"
	case st.node == "":
		outcome = "none"
	case !st.live && st.node != m.s.nodeID:
		outcome = "dead"
	}
	m.tel.leaderCheck(ctx, start, st.node, st.epoch, outcome, err)
	if outcome != "dead" && outcome != "none" {
		return
	}
	if session, _ := m.membership.current(); !m.life.canTakeWork(session) || m.IsLeader() {
		return
	}
	if lockCtx, release, err := m.locker.TryWithContext(m.runCtx, lockName); err == nil {
		m.hand(grant{lockCtx, release, nil})
		return
	}
	if outcome != "dead" {
		return
	}
	// A leader elected a moment ago holds the lock before it records
	// itself: force out only a dead leader seen by two checks in a row.
	if m.deadLeader.Swap(st.epoch) != st.epoch {
		return
	}
	ok, err := m.db().forceGate(ctx, m.s.nodeID, m.s.lockTTL)
	if err != nil || !ok {
		return
	}
	m.log.Warn("leader is not a live member; forcing it out", "leader", st.node, "epoch", st.epoch)
	lockCtx, release, err := m.locker.ForceWithContext(m.runCtx, lockName)
	m.tel.election(ctx, start, "forced", 0, err)
	if err == nil {
		m.hand(grant{lockCtx, release, nil})
	}
}

// hand gives a lock taken outside the campaign loop to it.
func (m *Manager[C, I]) hand(g grant) {
	select {
	case m.term.taken <- g:
	default:
		g.release()
	}
}
