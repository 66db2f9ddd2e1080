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

// elector is this node's part in leading the service: it campaigns for the
// leader lock, and while it holds it, runs the leader loop: it balances the
// configs' keys over the live nodes and writes the assignment, fenced by its
// epoch. It also runs the leader health check every node runs. It knows
// nothing of configs or instances: its node feeds it the keys to balance.
type elector struct {
	*env
	feed       electorFeed
	term       leaderTerm
	requests   requestSet    // rebalance requests waiting for the leader's answer
	deadLeader atomic.Uint64 // epoch of a dead leader seen by the last leader check
	// handoffCh is how Stop asks the leader loop for a last rebalance,
	// which moves the stopping node's keys away. Unbuffered: Stop waits
	// for the loop (or for the term to end).
	handoffCh chan chan struct{}
}

// electorFeed is what an elector asks of its node.
type electorFeed struct {
	// member returns the node's session and whether the node may take
	// work, leadership included: it is a member, not fenced, not stopping.
	member func() (session string, ok bool)
	// generation is the generation of Redis's record as the node last saw
	// it (see liveSet.setGeneration).
	generation func() string
	// configs reads the configs for a rebalance (see leaderInput).
	configs func(ctx context.Context, membership bool) (leaderInput, error)
}

// leaderInput is what a leader balances from one getConfig.
type leaderInput struct {
	keys []string
	// print is the configs' fingerprint; "" when only the keys were asked
	// for (a membership change, which cannot change a config's content).
	print string
	// placements are the keys' placements (see WithPlacement), and their
	// checksum if the content was asked for; placementErr is why they
	// could not be read.
	placements   map[string]Placement
	placementSum uint64
	placementErr error
}

func newElector(e *env, feed electorFeed) *elector {
	el := &elector{env: e, feed: feed, handoffCh: make(chan chan struct{})}
	el.term.taken = make(chan grant, 1)
	return el
}

// isLeader reports whether this node leads the service now.
func (e *elector) isLeader() bool {
	epoch, _ := e.term.current()
	return epoch != 0
}

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
func (e *elector) campaignLoop() {
	backoff := newBackoff(50*time.Millisecond, e.s.lockTTL)
	waited := make(chan grant, 1)
	waiting := false
	defer func() {
		if waiting { // the locker returns once runCtx is done
			if g := <-waited; g.err == nil {
				g.release()
			}
		}
	}()
	// The locker wakes its waiter when Redis tells it that the lock key
	// changed. A notice that never comes (the key deleted by this node's own
	// connection, of which NOLOOP tracking says nothing, or one lost under
	// load) would leave the node waiting while the lock is free, and with
	// no other node to take it, the service without a leader: so the
	// campaign also tries again every lock TTL while it waits.
	poll := time.NewTimer(e.s.lockTTL)
	defer poll.Stop()
	due := false // the poll timer fired while the node waited
	for e.runCtx.Err() == nil {
		if !e.waitMember() {
			return
		}
		if !waiting || due {
			due = false
			// One quick try first, so that every attempt is visible: a lock
			// held elsewhere is an expected outcome, not an error.
			start := time.Now()
			ctx, release, err := e.locker.TryWithContext(e.runCtx, lockName)
			if err == nil {
				epoch, err := e.becomeLeader(ctx)
				if err == nil && epoch != 0 {
					backoff.reset()
					e.lead(ctx, release, epoch)
					continue
				}
				release()
			} else if errors.Is(err, rueidislock.ErrNotLocked) && !waiting {
				e.tel.election(e.runCtx, start, "lost", 0, nil)
			}
			if !waiting {
				waiting = true
				go func() {
					ctx, release, err := e.locker.WithContext(e.runCtx, lockName)
					waited <- grant{ctx, release, err}
				}()
			}
		}
		poll.Reset(e.s.lockTTL)
		var g grant
		select {
		case <-e.runCtx.Done():
			return
		case g = <-waited:
			waiting = false
		case g = <-e.term.taken:
		case <-poll.C:
			due = true
			continue
		}
		if g.err != nil {
			if e.runCtx.Err() != nil || errors.Is(g.err, rueidislock.ErrLockerClosed) {
				return
			}
			if isOOM(g.err) {
				e.log.Warn(outOfMemory, "during", "leader election", "err", g.err)
			} else if !e.slot.saw(e.log, "leader election", g.err) {
				e.log.Warn("leader election failed", "err", g.err)
			}
			sleepCtx(e.runCtx, backoff.next())
			continue
		}
		epoch, err := e.becomeLeader(g.ctx)
		if err != nil || epoch == 0 {
			g.release()
			if err != nil && e.runCtx.Err() == nil && !e.slot.saw(e.log, "leader election", err) {
				e.log.Warn("could not take leadership", "err", err)
			}
			sleepCtx(e.runCtx, backoff.next())
			continue
		}
		backoff.reset()
		e.lead(g.ctx, g.release, epoch)
	}
}

// waitMember blocks until the node holds a lease or the Manager stops.
func (e *elector) waitMember() bool {
	for {
		if _, ok := e.feed.member(); ok {
			return true
		}
		select {
		case <-e.runCtx.Done():
			return false
		case <-e.campaignCh:
		}
	}
}

// becomeLeader records this node as leader under a new epoch; a node that is
// not a member or is stopping declines (epoch 0).
func (e *elector) becomeLeader(ctx context.Context) (uint64, error) {
	session, ok := e.feed.member()
	if !ok {
		return 0, nil
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	epoch, err := e.db().lead(ctx, e.s.nodeID, session)
	var bad *badReply
	if errors.As(err, &bad) {
		return 0, err
	}
	if err != nil {
		e.tel.election(ctx, start, "error", 0, err)
		return 0, err
	}
	e.tel.election(ctx, start, "won", epoch, nil)
	return epoch, nil
}

// lead runs the leader's work until the lock is lost, a write is refused or
// the node stops, then releases the lock. Releasing cancels the lock before
// anything closes the client, so the key goes at once instead of expiring.
func (e *elector) lead(lockCtx context.Context, release context.CancelFunc, epoch uint64) {
	ctx, cancel := context.WithCancel(lockCtx)
	e.term.mu.Lock()
	e.term.epoch, e.term.ctx, e.term.cancel = epoch, ctx, cancel
	e.term.mu.Unlock()
	e.log.Info("became leader", "epoch", epoch)
	e.record(ctx, HistoryElected, epoch, nil, nil, "")
	e.tel.setLeader(epoch)
	start := time.Now()

	var busy atomic.Int64 // when the current rebalance began, unix ns; 0 while idle
	stuck := make(chan struct{})
	go func() {
		defer close(stuck)
		e.watchLeaderLoop(ctx, &busy, cancel)
	}()
	why := e.leaderLoop(ctx, epoch, &busy)
	cancel()
	<-stuck
	if why == "" {
		why = "stepped down" // fenced or stopping
		if _, member := e.feed.member(); member && lockCtx.Err() != nil && e.runCtx.Err() == nil {
			why = "lock lost"
		}
	}

	e.term.mu.Lock()
	e.term.epoch, e.term.ctx, e.term.cancel = 0, nil, nil
	e.term.mu.Unlock()
	cancel()
	if why == "handed off" {
		// A graceful end leaves no dead leader on record for others to
		// force out.
		ctx, cancel := context.WithTimeout(e.runCtx, e.s.heartbeat)
		_ = e.db().abdicate(ctx, epoch)
		cancel()
	}
	release()
	e.tel.setLeader(0)
	e.tel.election(e.runCtx, start, why, epoch, nil)
	e.log.Info("leadership ended", "epoch", epoch, "reason", why)
}

// watchLeaderLoop ends the leadership when the leader loop has made no
// progress for longer than any of its bounded steps can take (a big write
// progresses with every chunk, a big read with every page): a leader that holds
// the lock but cannot rebalance would leave joiners without keys forever.
// Releasing the lock lets another node lead; the stuck loop's writes carry
// a stale epoch and are refused.
func (e *elector) watchLeaderLoop(ctx context.Context, busy *atomic.Int64, stepDown context.CancelFunc) {
	bound := e.s.timeout + 2*e.s.nodeTTL + e.s.lockTTL
	tick := time.NewTicker(max(bound/8, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if at := busy.Load(); at != 0 && time.Since(time.Unix(0, at)) > bound {
				e.log.Warn("the leader loop is stuck; stepping down", "busy_for", time.Since(time.Unix(0, at)))
				stepDown()
				return
			}
		}
	}
}

// stepDown ends this node's leadership, if any, at once.
func (e *elector) stepDown() {
	e.term.mu.Lock()
	cancel := e.term.cancel
	e.term.mu.Unlock()
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

func (e *elector) readLeader(ctx context.Context) (recordedLeader, error) {
	return e.db().leader(ctx)
}

// checkLeader is the leader health check every node runs on its schedule,
// and after its subscription comes back. With no leader recorded (Redis came
// back empty, say) it tries the lock at once: a node waiting for the lock
// hears of a release only from the Redis that lost it. A recorded leader that
// is no longer a live member may still hold the lock (a stuck process), so
// one node forces it out.
func (e *elector) checkLeader() {
	ctx, cancel := context.WithTimeout(e.runCtx, e.s.heartbeat)
	defer cancel()
	start := time.Now()
	st, err := e.readLeader(ctx)
	outcome := "healthy"
	switch {
	case err != nil:
		outcome = "error"
	case st.node == "":
		outcome = "none"
	case !st.live && st.node != e.s.nodeID:
		outcome = "dead"
	}
	e.tel.leaderCheck(ctx, start, st.node, st.epoch, outcome, err)
	if outcome != "dead" && outcome != "none" {
		return
	}
	if _, ok := e.feed.member(); !ok || e.isLeader() {
		return
	}
	if lockCtx, release, err := e.locker.TryWithContext(e.runCtx, lockName); err == nil {
		e.hand(grant{lockCtx, release, nil})
		return
	}
	if outcome != "dead" {
		return
	}
	// A leader elected a moment ago holds the lock before it records
	// itself: force out only a dead leader seen by two checks in a row.
	if e.deadLeader.Swap(st.epoch) != st.epoch {
		return
	}
	ok, err := e.db().forceGate(ctx, e.s.nodeID, e.s.lockTTL)
	if err != nil || !ok {
		return
	}
	e.log.Warn("leader is not a live member; forcing it out", "leader", st.node, "epoch", st.epoch)
	lockCtx, release, err := e.locker.ForceWithContext(e.runCtx, lockName)
	e.tel.election(ctx, start, "forced", 0, err)
	if err == nil {
		e.hand(grant{lockCtx, release, nil})
	}
}

// hand gives a lock taken outside the campaign loop to it.
func (e *elector) hand(g grant) {
	select {
	case e.term.taken <- g:
	default:
		g.release()
	}
}

// handOff waits while the leader moves this node's keys itself
// before it lets go, unless its leadership (or ctx) ends first.
func (e *elector) handOff(ctx context.Context) {
	epoch, lctx := e.term.current()
	if epoch == 0 {
		return
	}
	done := make(chan struct{})
	select {
	case e.handoffCh <- done:
		select {
		case <-done:
		case <-lctx.Done():
		case <-ctx.Done():
		}
	case <-lctx.Done():
	case <-ctx.Done():
	}
}
