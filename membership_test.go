package dim

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/faultproxy"
	"github.com/go-dim/dim/internal/redistest"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests in this file and in elector_test.go run a membership and an
// elector without a Manager, against a real redis-server: what each
// promises, told apart from the node loop and the instances. Each test has
// a server of its own, so they run in parallel (green at -count=20 under
// -race on 2 cores); the integration tests, whose nodes run every loop,
// stay serial.

// unitNode is one node's env, membership and elector, with hooks and a
// feed that the test controls.
type unitNode struct {
	id    string
	env   *env
	mb    *membership
	el    *elector
	proxy *faultproxy.Proxy

	fences    atomic.Int32
	rejoins   atomic.Int32
	asked     atomic.Int32 // how often the heartbeat loop asked mayRejoin
	polled    atomic.Int32 // how often the elector asked whether the node is a member
	mayRejoin atomic.Bool
	keys      atomic.Pointer[[]string] // what the elector is fed; nil: the configs cannot be read
	fenced    chan struct{}            // one value per fence
	hold      chan struct{}            // if set, the fenced hook waits for it to close
	stopping  atomic.Bool              // the node has begun to stop: it takes no work
}

// newUnitNode connects a node named id to srv through a fault proxy. It
// has joined nothing and runs nothing yet.
func newUnitNode(t *testing.T, srv *redistest.Server, id string, extra ...Option) *unitNode {
	t.Helper()
	proxy, err := faultproxy.New(srv.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })
	opts := []Option{
		WithService("unit"), WithNodeID(id),
		WithRedis(rueidis.ClientOption{InitAddress: []string{proxy.Addr()}, DisableRetry: true}),
		WithNodeTTL(testTTL), WithHeartbeat(testHeartbeat),
		WithLeaderLockTTL(testLockTTL), WithLeaderLockRefresh(testLockEvery),
	}
	if l := testLogger(t); l != nil {
		opts = append(opts, WithLogger(l))
	}
	s := defaultSettings()
	for _, o := range append(opts, extra...) {
		require.NoError(t, o.apply(&s))
	}
	s.fillDefaults()
	require.NoError(t, s.validate())

	n := &unitNode{id: id, env: newEnv(s), proxy: proxy, fenced: make(chan struct{}, 16)}
	n.mayRejoin.Store(true)
	_, err = n.env.connect()
	require.NoError(t, err)
	n.env.runCtx, n.env.runCancel = context.WithCancel(context.Background())
	n.mb = newMembership(n.env, memberHooks{
		generation: func(string) func(string, time.Time) error { return nil },
		fenced: func(string) {
			if n.hold != nil {
				<-n.hold
			}
			n.fences.Add(1)
			n.el.stepDown()
			n.fenced <- struct{}{}
		},
		mayRejoin: func() bool {
			n.asked.Add(1)
			return n.mayRejoin.Load()
		},
		rejoined: func() {
			n.rejoins.Add(1)
			n.env.triggerCampaign()
		},
	})
	n.el = newElector(n.env, electorFeed{
		member: func() (string, bool) {
			n.polled.Add(1)
			session, _ := n.mb.current()
			return session, session != "" && !n.stopping.Load()
		},
		generation: func() string { return "" },
		configs: func(context.Context, bool) (leaderInput, error) {
			keys := n.keys.Load()
			if keys == nil {
				return leaderInput{}, errors.New("configs unreadable")
			}
			return leaderInput{keys: slices.Clone(*keys), print: "p"}, nil
		},
	})
	t.Cleanup(n.close)
	return n
}

// runSession starts the heartbeat loop and the watchdog of a joined node.
func (n *unitNode) runSession() {
	n.env.wg.Go(n.mb.heartbeatLoop)
	n.env.wg.Go(n.mb.watchdog)
}

// runElector starts the campaign.
func (n *unitNode) runElector() {
	n.env.wg.Go(n.el.campaignLoop)
	n.env.triggerCampaign()
}

func (n *unitNode) feed(keys ...string) { n.keys.Store(&keys) }

func (n *unitNode) close() {
	n.mb.lease.end()
	n.env.runCancel()
	n.env.wg.Wait()
	select {
	case g := <-n.el.term.taken:
		g.release()
	default:
	}
	n.env.locker.Close()
	n.env.closeClient(n.env.client)
}

// members lists the live members as the leader reads them.
func (n *unitNode) members(t *testing.T) []string {
	t.Helper()
	_, live, err := n.env.db().members(context.Background())
	require.NoError(t, err)
	var ids []string
	for _, m := range live {
		ids = append(ids, m.id)
	}
	slices.Sort(ids)
	return ids
}

func TestAMembershipJoinsRenewsAndLeaves(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	n := newUnitNode(t, srv, "n1")
	ctx := context.Background()

	require.NoError(t, n.mb.join(ctx))
	session, lease := n.mb.current()
	require.NotEmpty(t, session)
	require.NoError(t, lease.Err(), "a member's lease context is live")
	assert.Equal(t, []string{"n1"}, n.members(t))

	// The heartbeat keeps the lease for many TTLs.
	n.runSession()
	n.mb.lease.mu.Lock()
	first := n.mb.lease.sent
	n.mb.lease.mu.Unlock()
	eventually(t, 4*testTTL, "renewals for two TTLs", func() bool {
		n.mb.lease.mu.Lock()
		defer n.mb.lease.mu.Unlock()
		return n.mb.lease.sent.Sub(first) > 2*testTTL
	})
	again, _ := n.mb.current()
	assert.Equal(t, session, again, "renewals keep the session")
	assert.Zero(t, n.fences.Load())

	require.NoError(t, n.mb.leave(ctx))
	left, _ := n.mb.current()
	assert.Empty(t, left)
	assert.Error(t, lease.Err(), "leaving ends the lease context")
	assert.Empty(t, n.members(t))
	assert.Zero(t, n.fences.Load(), "a leave is not a fence")
}

func TestAMembershipCutOffFencesBeforeItsLeaseEndsAndRejoins(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	n := newUnitNode(t, srv, "n1")
	require.NoError(t, n.mb.join(context.Background()))
	n.runSession()
	before, lease := n.mb.current()

	n.proxy.Cut(faultproxy.Both)
	n.mb.lease.mu.Lock()
	lastSent := n.mb.lease.sent
	n.mb.lease.mu.Unlock()
	select {
	case <-n.fenced:
	case <-time.After(2 * testTTL):
		t.Fatal("a node cut off from Redis did not fence")
	}
	fencedAt := time.Now()
	assert.Error(t, lease.Err(), "the fence ends the lease context")
	// The lease in Redis counts from when the renewal arrived, which is
	// after it was sent: the fence comes a margin before it can end.
	assert.Less(t, fencedAt.Sub(lastSent), testTTL, "fenced before the lease of the last renewal can end in Redis")
	session, _ := n.mb.current()
	assert.Empty(t, session)

	n.proxy.Heal()
	eventually(t, 3*testTTL, "a rejoin", func() bool { return n.rejoins.Load() > 0 })
	after, lease := n.mb.current()
	assert.NotEmpty(t, after)
	assert.NotEqual(t, before, after, "a rejoin starts a new session")
	assert.NoError(t, lease.Err())
	assert.Equal(t, int32(1), n.fences.Load())
}

func TestAFencedMembershipRejoinsOnlyWhenItsNodeAllows(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	n := newUnitNode(t, srv, "n1")
	require.NoError(t, n.mb.join(context.Background()))
	n.mayRejoin.Store(false)
	n.runSession()

	n.mb.fence(func() string { s, _ := n.mb.current(); return s }(), "test")
	<-n.fenced
	asked := n.asked.Load()
	eventually(t, 2*testTTL, "five more heartbeats", func() bool { return n.asked.Load() >= asked+5 })
	assert.Zero(t, n.rejoins.Load(), "no rejoin while the node's instances are still stopping")
	session, _ := n.mb.current()
	assert.Empty(t, session)

	n.mayRejoin.Store(true)
	eventually(t, 2*testTTL, "a rejoin once allowed", func() bool { return n.rejoins.Load() == 1 })
}

func TestAMembershipFencesOnlyTheCurrentSession(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	n := newUnitNode(t, srv, "n1")
	require.NoError(t, n.mb.join(context.Background()))
	n.runSession()
	session, _ := n.mb.current()

	n.mb.fence("an-older-session", "stale verdict")
	now, lease := n.mb.current()
	assert.Equal(t, session, now, "a verdict on another session leaves this one alone")
	assert.NoError(t, lease.Err())
	assert.Zero(t, n.fences.Load())

	n.mb.fence(session, "test")
	assert.Equal(t, int32(1), n.fences.Load())
	n.mb.fence(session, "twice")
	assert.Equal(t, int32(1), n.fences.Load(), "a session is fenced once")
}

func TestASecondMembershipWithTheSameIDWaitsForTheFirst(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	first := newUnitNode(t, srv, "n1")
	second := newUnitNode(t, srv, "n1")
	require.NoError(t, first.mb.join(context.Background()))
	first.runSession()

	err := second.mb.join(context.Background())
	require.ErrorIs(t, err, ErrNodeIDInUse)
	var inUse *idInUseError
	require.ErrorAs(t, err, &inUse)
	assert.Greater(t, inUse.wait, time.Duration(0))
	assert.LessOrEqual(t, inUse.wait, testTTL)

	require.NoError(t, first.mb.leave(context.Background()))
	require.NoError(t, second.mb.join(context.Background()), "the ID is free once its holder left")
}

func TestAMembershipDoesNotRejoinWhileItsFenceIsUnderWay(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	n := newUnitNode(t, srv, "n1")
	ctx := context.Background()
	require.NoError(t, n.mb.join(ctx))
	n.hold = make(chan struct{})
	n.runSession()
	session, _ := n.mb.current()
	// Redis has dropped the session (a restore without it, say), so a join
	// would succeed at once: only the membership can hold it back.
	require.NoError(t, n.env.db().leave(ctx, "n1", session))

	fenced := make(chan struct{})
	go func() {
		defer close(fenced)
		n.mb.fence(session, "test")
	}()
	// The node has not yet had the chance to stop its instances (its
	// hook is running): heartbeats pass, and none may rejoin meanwhile.
	time.Sleep(5 * testHeartbeat)
	assert.Zero(t, n.rejoins.Load(), "rejoined while the node was still being fenced")
	close(n.hold)
	<-fenced
	eventually(t, 2*testTTL, "a rejoin once the fence is done", func() bool { return n.rejoins.Load() == 1 })
}

func TestAFenceIsInTheHistoryBeforeTheRejoinThatFollowsIt(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	n := newUnitNode(t, srv, "n1")
	ctx := context.Background()
	require.NoError(t, n.mb.join(ctx))
	first, _ := n.mb.current()
	n.runSession()

	n.mb.fence(first, "a test fence")
	eventually(t, 2*testTTL, "a rejoin", func() bool { return n.rejoins.Load() == 1 })
	second, _ := n.mb.current()

	var kinds, details []string
	eventually(t, testTTL, "three entries", func() bool {
		h, err := ReadHistory(ctx, n.env.client, Service{Name: "unit"}, HistoryFilter{Node: "n1"})
		require.NoError(t, err)
		kinds, details = nil, nil
		for i := len(h) - 1; i >= 0; i-- { // oldest first
			kinds, details = append(kinds, h[i].Kind), append(details, h[i].Detail)
		}
		return len(h) >= 3
	})
	assert.Equal(t, []string{HistoryJoined, HistoryFenced, HistoryJoined}, kinds)
	assert.Equal(t, first, details[0])
	assert.Contains(t, details[1], "a test fence")
	assert.Equal(t, second, details[2])
}

func TestARestoredRecordThatDisownsTheNodeFencesItAtTheNextRenewal(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, redistest.WithPersistence())
	n := newUnitNode(t, srv, "n1")
	checked := make(chan string, 1)
	seen := ""
	n.mb.hooks.generation = func(gen string) func(string, time.Time) error {
		if seen == "" || gen == seen {
			seen = gen
			return nil
		}
		seen = gen
		return func(session string, _ time.Time) error {
			checked <- session
			return errors.New("the restored record does not hold this node's keys")
		}
	}
	require.NoError(t, n.mb.join(context.Background()))
	session, lease := n.mb.current()
	n.runSession()

	// The snapshot holds the node's live session; the restarted server
	// has a new run id, so the record's generation changes.
	srv.Save()
	srv.RestartFromRDB()
	select {
	case s := <-checked:
		assert.Equal(t, session, s, "the check confirms the current session")
	case <-time.After(2 * testTTL):
		t.Fatal("the renewal after a restart asked for no check")
	}
	eventually(t, testTTL, "the fence", func() bool { return n.fences.Load() == 1 })
	assert.Error(t, lease.Err())
}
