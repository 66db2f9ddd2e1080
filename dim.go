// Package dim runs a service's configured instances — workers, pollers,
// websocket or broker connections, anything long-lived — spread evenly over
// the service's live replicas, with at most one live instance per
// configuration, using Redis as the only shared component.
//
// Every replica creates a [Manager] with the same service name and starts it:
//
//	m, err := dim.New(getConfig, connect,
//		dim.WithService("ingest"),
//		dim.WithRedis(rueidis.ClientOption{InitAddress: []string{"redis:6379"}}),
//		dim.WithHealthcheck(ping),
//		dim.WithDisconnect(closeConn),
//	)
//	if err != nil { ... }
//	if err := m.Start(ctx); err != nil { ... }
//	defer m.Stop(context.Background())
//
// One replica is elected leader through a Redis lock. It calls getConfig,
// spreads the configs' keys over the live replicas with [Balance] (perfectly
// even, fewest moves) and writes the assignment, fenced by its epoch so that
// a deposed leader can never write. Each replica claims the keys assigned to
// it — a claim succeeds only if the key is unowned or its owner's lease has
// run out — and only then calls createInstance. A replica that cannot renew
// its lease stops its instances before the lease can expire in Redis, so no
// configuration ever runs twice, even when a replica is cut off from Redis.
//
// The guarantee rests on Redis being the single source of truth: leases are
// measured in Redis server time, and every replica fences itself a margin
// (a fifth of the node TTL) before its lease can end. Instance contexts carry
// a [FencingToken] for resources that can check it.
//
// Defaults: Redis at 127.0.0.1:6379, node TTL 5s with a heartbeat every
// second, leader lock TTL 5s refreshed every second, health checks every 10s,
// leader health checks every 5s, config refresh every 30s, callbacks bounded
// by 10s. See the With… options.
package dim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
	"github.com/redis/rueidis/rueidislock"
)

// Manager runs this node's share of a service's instances. C is the config
// type, I the instance type. Create it with [New], then [Manager.Start]; a
// stopped Manager is not reused.
//
// A node is one Manager that has joined a service: one process, or one
// replica of a deployment, under one node ID (see [WithNodeID]). The docs
// say "node" throughout; "replica" means the same.
//
// How a node runs, for the reader of this package (not part of the API).
// A Manager is made of three parts that share an env (env.go: settings,
// Redis names, the client and the locker, telemetry, the signals):
//
//   - membership (membership.go) is the node's session, like etcd's
//     Session: its heartbeat loop renews the lease and rejoins after a
//     fence; its watchdog checks the lease on the boot clock. Whichever
//     sees the lease lost fences, and tells the Manager through its hooks:
//     every instance is cancelled and every disconnect hook called at once,
//     whatever the node loop is doing, then fenceCh is signalled.
//   - elector (elector.go, rebalance.go) campaigns for the leader lock,
//     woken by campaignCh; while it holds the lock its leader loop runs
//     under a context that ends with the term, rebalancing on leaderCh and
//     its timers, and once more on its handoffCh when Stop asks.
//     watchLeaderLoop steps down a leader whose loop stops making
//     progress. The Manager feeds it the keys to balance (electorFeed).
//   - The Manager keeps the lifecycle (lifecycle.go) and the configs
//     (config.go), and runs the node loop (nodeLoop, instance.go): it
//     reconciles on nodeCh (its assigned keys against what runs), stops
//     everything on fenceCh, runs health checks on healthTickCh and takes
//     their results from healthCh, files prepares from prepareCh and
//     creates that outlast their reconcile from the table's created
//     channel, and hands off on handoffCh when Stop asks.
//     It works through four helpers it owns, none of which decides
//     anything: table (table.go) is what runs here and the creates and
//     disconnects under way, started at most WithCreateConcurrency at a
//     time and left to finish in the background when they are slow;
//     callbacks (callbacks.go) calls the user's hooks, bounded and traced,
//     and keeps the live instances and the keys whose calls hang, which
//     the fence and Stop reach from other goroutines; ledger (ledger.go,
//     keystate.go) holds what the node holds in Redis — claims and their
//     tokens, refused claims, failures and their backoff, the published
//     key states — and makes the calls that change it; handoffs
//     (handoff.go) prepares keys that move here and holds those that move
//     away (WithPrepare).
//
// Two more goroutines serve all three: the subscription (subscription.go)
// holds a connection of its own to the service's channel and turns events
// into signals (nodeCh, leaderCh, and leaderCheckCh after every
// resubscription); the schedules (every, env.go) run the health checks,
// the leader check (also on leaderCheckCh) and the config refresh, which
// wakes both loops.
//
// Each signal channel has a buffer of one and signal never blocks, so a
// burst of events wakes its loop once. healthCh, the table's created
// channel, handoffCh and the elector's handoffCh are unbuffered: a sender
// waits for the loop (or for the node to stop).
type Manager[C, I any] struct {
	*env
	getConfig   func(context.Context) ([]C, error)
	keyOf       func(C) string
	placementOf func(C) Placement // nil: none

	life lifecycle // new, running, fenced, stopping, stopped

	membership *membership      // the lease, and with it every instance's context
	elector    *elector         // the campaign and, while it leads, the leader loop
	calls      *callbacks[C, I] // the instances, and the hooks that start and stop them

	// One call of each kind at a time; see guard.
	nodeConfigGuard   guard
	leaderConfigGuard guard
	hashGuard         guard

	// Signals, each coalesced in a buffer of one (see the map above).
	fenceCh      chan struct{}
	healthTickCh chan struct{}
	// Unbuffered: the sender waits for the loop that takes it.
	healthCh  chan healthResult[I]
	handoffCh chan chan struct{}

	// Owned by the node loop.
	tab           *table[C, I]    // what runs here, and the calls under way that change it
	ledger        *ledger         // what this node holds in Redis
	handoffs      *handoffs[C, I] // make-before-break (WithPrepare)
	configs       map[string]config[C]
	configsAt     time.Time
	configsStale  atomic.Bool
	released      atomic.Bool // another node released keys since the last reconcile
	lastTrace     string      // trace context of the last rebalance seen
	configBackoff *backoff

	viewMu sync.RWMutex
	view   map[string]I
}

// New returns a Manager for one replica of a service. getConfig lists the
// configured instances; createInstance starts one. Both are required, as is
// [WithService]. New checks every option and the relations between them and
// returns an error wrapping [ErrInvalidOption] that names the option; it
// connects to nothing, and never panics.
//
// The context createInstance gets is the instance's lifetime: it has no
// deadline, carries [FencingToken] and [InstanceKey], and is cancelled the
// moment this replica must stop the instance. createInstance itself must
// return within the callback timeout ([WithCallbackTimeout]); one that
// returns later counts as failed and its instance, if any, is disconnected
// at once. Stopping an instance always goes in this order: its context is
// cancelled, then the disconnect hook is called once ([WithDisconnect]).
// Write instances so that either one stops them:
//
//	func connect(ctx context.Context, f Feed) (*Conn, error) {
//		c, err := dial(ctx, f) // bounded by the callback timeout
//		if err != nil {
//			return nil, err
//		}
//		go c.run(ctx) // runs until ctx ends
//		return c, nil
//	}
//
// and let disconnect wait until the work has stopped (c.Close and wait).
func New[C, I any](
	getConfig func(context.Context) ([]C, error),
	createInstance func(context.Context, C) (I, error),
	opts ...Option,
) (*Manager[C, I], error) {
	if getConfig == nil {
		return nil, fmt.Errorf("%w: getConfig is nil", ErrInvalidOption)
	}
	if createInstance == nil {
		return nil, fmt.Errorf("%w: createInstance is nil", ErrInvalidOption)
	}
	s := defaultSettings()
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("%w: nil option", ErrInvalidOption)
		}
		if err := opt.apply(&s); err != nil {
			return nil, err
		}
	}
	s.fillDefaults()
	if err := s.validate(); err != nil {
		return nil, err
	}
	m := &Manager[C, I]{
		env:           newEnv(s),
		getConfig:     getConfig,
		calls:         &callbacks[C, I]{createInstance: createInstance},
		fenceCh:       make(chan struct{}, 1),
		healthTickCh:  make(chan struct{}, 1),
		healthCh:      make(chan healthResult[I]),
		handoffCh:     make(chan chan struct{}),
		configBackoff: newBackoff(100*time.Millisecond, 30*time.Second),
		view:          map[string]I{},
	}
	var err error
	if m.keyOf, err = checkHook[func(C) string]("WithKey", s.key, "config type"); err != nil {
		return nil, err
	}
	if m.placementOf, err = checkHook[func(C) Placement]("WithPlacement", s.placement, "config type"); err != nil {
		return nil, err
	}
	if m.calls.healthcheck, err = checkHook[func(context.Context, I) error]("WithHealthcheck", s.healthcheck, "instance type"); err != nil {
		return nil, err
	}
	if m.calls.disconnect, err = checkHook[func(context.Context, I) error]("WithDisconnect", s.disconnect, "instance type"); err != nil {
		return nil, err
	}
	if m.calls.prepare, err = checkHook[func(context.Context, C) (I, error)]("WithPrepare", s.prepare, "config and instance types"); err != nil {
		return nil, err
	}
	if m.calls.activate, err = checkHook[func(context.Context, I) error]("WithPrepare", s.activate, "instance type"); err != nil {
		return nil, err
	}
	m.elector = newElector(m.env, electorFeed{
		member: func() (string, bool) {
			session, _ := m.membership.current()
			return session, m.life.canTakeWork(session)
		},
		generation: m.calls.instances.generation,
		configs:    m.leaderInput,
	})
	m.membership = newMembership(m.env, memberHooks{
		generation: m.calls.newGeneration,
		fenced:     m.fenced,
		mayRejoin:  func() bool { return m.life.load() == phaseRunning },
		rejoined: func() {
			m.triggerNode()
			m.triggerCampaign()
		},
	})
	m.calls.env, m.calls.membership = m.env, m.membership
	m.handoffs = newHandoffs(m.env, m.calls, &m.life)
	m.ledger = newLedger(m.env, m.membership, &m.calls.hung, &m.calls.confirmed)
	m.tab = newTable(m.env, m.calls, m.ledger, m.handoffs, &m.life)
	m.calls.instances.stop = m.calls.disconnectOne
	return m, nil
}

// NodeID returns this replica's ID.
func (m *Manager[C, I]) NodeID() string { return m.s.nodeID }

// Service returns the service name.
func (m *Manager[C, I]) Service() string { return m.s.service }

// IsLeader reports whether this replica currently leads the service.
func (m *Manager[C, I]) IsLeader() bool {
	return m.elector.isLeader()
}

// Instances returns a snapshot of the instances running on this replica, by
// config key. The map is the caller's; the instances are shared.
func (m *Manager[C, I]) Instances() map[string]I {
	m.viewMu.RLock()
	defer m.viewMu.RUnlock()
	out := make(map[string]I, len(m.view))
	for k, v := range m.view {
		out[k] = v
	}
	return out
}

// Start connects to Redis, registers this replica as a member of the service
// and starts its work: election, reconciliation and health checks. It
// returns once the replica is registered; its instances start right after.
// It may return [ErrAlreadyStarted], [ErrStopped], or an error wrapping
// [ErrRedis] that names the address when Redis cannot be reached; then
// nothing is left running.
func (m *Manager[C, I]) Start(ctx context.Context) error {
	m.life.mu.Lock()
	defer m.life.mu.Unlock()
	if err := m.life.begin(); err != nil {
		return err
	}
	if err := m.start(ctx); err != nil {
		m.life.end()
		return err
	}
	m.log.Info("started", "weight", m.s.weight)
	return nil
}

// start is Start's work, in phases: connect, subscribe, join, run the loops.
// A failure leaves nothing running.
func (m *Manager[C, I]) start(ctx context.Context) error {
	addr, err := m.connect()
	if err != nil {
		return err
	}
	m.runCtx, m.runCancel = context.WithCancel(context.WithoutCancel(ctx))
	fail := func(err error) error {
		m.runCancel()
		m.wg.Wait()
		m.locker.Close()
		m.closeClient(m.client)
		return err
	}
	if err := m.subscribe(ctx, m.onEvent); err != nil {
		return fail(fmt.Errorf("%w: subscribe at %s: %w", ErrRedis, addr, err))
	}
	if m.s.joinHold > 0 {
		// Before the join, so that the leader never gives this node a share
		// of everyone's keys in between.
		if err := m.membership.hold(ctx, m.k.joinWait, m.s.joinHold); err != nil {
			return fail(fmt.Errorf("join hold at %s: %w", addr, err))
		}
	}
	if err := m.joinWaiting(ctx); err != nil {
		if errors.Is(err, ErrNodeIDInUse) {
			return fail(err)
		}
		return fail(fmt.Errorf("%w: register at %s: %w", ErrRedis, addr, err))
	}
	m.runLoops()
	return nil
}

// Buffers of the clients dim makes, where the caller's ClientOption leaves
// them unset: a node sends a few commands at a time, and its largest
// replies (a status of a big service) are read through the buffer in
// pieces. rueidis's defaults (0.5 MiB each way and a ring of 1,024 slots per
// connection) cost a node some 10 MiB over its two clients' connections,
// allocated and cleared at every Start.
const (
	leanRingScale = 8         // 256 commands in flight per connection
	leanBuffer    = 64 * 1024 // read and write buffer per connection
)

// lean returns opt with dim's buffer sizes where it sets none.
func lean(opt rueidis.ClientOption) rueidis.ClientOption {
	if opt.RingScaleEachConn == 0 {
		opt.RingScaleEachConn = leanRingScale
	}
	if opt.ReadBufferEachConn == 0 {
		opt.ReadBufferEachConn = leanBuffer
	}
	if opt.WriteBufferEachConn == 0 {
		opt.WriteBufferEachConn = leanBuffer
	}
	return opt
}

// connect makes the Redis client (or takes the given one) and the locker of
// the leader lock, and returns the address to name in errors.
func (e *env) connect() (string, error) {
	addr := fmt.Sprint(e.s.redis.InitAddress)
	opt := lean(e.s.redis)
	lockOpt := rueidislock.LockerOption{
		ClientOption:   opt,
		KeyPrefix:      e.k.lock,
		KeyValidity:    e.s.lockTTL,
		ExtendInterval: e.s.lockRefresh,
		KeyMajority:    int32(e.s.lockMajority),
		// Without NOLOOP, each extension of the lock notifies the leader
		// itself, and rueidislock extends again on every notice: a busy loop
		// of thousands of scripts a second for as long as a leader leads.
		NoLoopTracking: true,
		// Expiries on Redis's clock, not this node's: acquired with a
		// relative expiry, extended at deadlines moved by lockClient.
		FallbackSETPX: true,
		ClientBuilder: func(opt rueidis.ClientOption) (rueidis.Client, error) {
			c, err := rueidis.NewClient(opt)
			if err != nil {
				return nil, err
			}
			return lockClient{Client: c, clock: &e.clock, prefix: e.k.lock}, nil
		},
	}
	client := e.s.client
	if client == nil {
		var err error
		if client, err = rueidis.NewClient(opt); err != nil {
			return addr, fmt.Errorf("%w: connect to %s: %w", ErrRedis, addr, err)
		}
	} else {
		// The locker shares the caller's client, which it must not close
		// and whose invalidations it does not see: it polls instead.
		addr = "the given client"
		lockOpt.ClientOption = rueidis.ClientOption{DisableCache: true}
		lockOpt.ClientBuilder = func(rueidis.ClientOption) (rueidis.Client, error) {
			return lockClient{Client: unclosable{client}, clock: &e.clock, prefix: e.k.lock}, nil
		}
	}
	locker, err := rueidislock.NewLocker(lockOpt)
	if err != nil {
		e.closeClient(client)
		return addr, fmt.Errorf("%w: connect to %s: %w", ErrRedis, addr, err)
	}
	e.client, e.locker = client, locker
	return addr, nil
}

// runLoops starts the goroutines of a node that has joined.
func (m *Manager[C, I]) runLoops() {
	m.live.beatNow() // the heartbeat loop's first turn is one heartbeat away
	m.wg.Go(m.membership.heartbeatLoop)
	m.wg.Go(m.membership.watchdog)
	m.wg.Go(m.nodeLoop)
	m.wg.Go(m.elector.campaignLoop)
	m.wg.Go(func() { m.every(m.s.health, nil, func() { signal(m.healthTickCh) }) })
	// The leader check also runs whenever a subscription comes back.
	m.wg.Go(func() { m.every(m.s.leaderHealth, m.leaderCheckCh, m.elector.checkLeader) })
	m.wg.Go(func() {
		m.every(m.s.refresh, nil, func() {
			m.configsStale.Store(true)
			m.triggerNode()
			m.triggerLeader(triggerRefresh)
		})
	})
	m.triggerNode()
	m.triggerCampaign()
}

// joinWaiting joins, waiting out a live session that holds this node's ID
// for as long as ctx allows.
func (m *Manager[C, I]) joinWaiting(ctx context.Context) error {
	var inUse *idInUseError
	for {
		err := m.membership.join(ctx)
		if inUse != nil && ctx.Err() != nil {
			// ctx ended during a retry: the ID being in use is the reason.
			return fmt.Errorf("%w (start context: %w)", inUse, ctx.Err())
		}
		if !errors.As(err, &inUse) {
			return err
		}
		m.log.Warn("node ID in use; waiting for its lease to end", "wait", inUse.wait)
		t := time.NewTimer(inUse.wait + 10*time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (start context: %w)", err, ctx.Err())
		case <-t.C:
		}
	}
}

// Stop hands this replica's instances off gracefully: it asks the leader to
// move its keys away while it still holds its lease, disconnects its
// instances, releases their claims so the new owners start within
// milliseconds, gives up leadership and leaves the service.
//
// Stop returns by ctx's deadline. If the deadline comes first, every
// instance's context has been cancelled and its disconnect hook called when
// Stop returns, and Stop returns an error wrapping ctx.Err() that names the
// keys whose disconnect (or createInstance) has not returned yet. The
// replica then finishes in the background: it keeps its lease, and with it
// those keys, which no other replica may take until the calls return; then
// it releases them and leaves. (If the process exits first, its lease simply
// expires.) Stop returns [ErrNotStarted] before Start and [ErrStopped] on a
// second call.
func (m *Manager[C, I]) Stop(ctx context.Context) error {
	// A Stop during Start waits for Start to finish first.
	m.life.mu.Lock()
	defer m.life.mu.Unlock()
	if err := m.life.beginStop(); err != nil {
		return err
	}
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.shutdown(ctx)
	}()
	select {
	case <-done:
		m.life.end()
		m.log.Info("stopped", "took", time.Since(start))
		return ctx.Err()
	case <-ctx.Done():
	}
	m.life.end()
	return m.stopLate(ctx, start)
}

// stopLate ends a Stop whose deadline came before its work was done: the
// work goes on in the background, and the error names what still runs.
func (m *Manager[C, I]) stopLate(ctx context.Context, start time.Time) error {
	// Nothing may outlive Stop unasked: every instance is told to stop now.
	m.calls.instances.stopAll()
	left := m.stillRunning()
	m.log.Warn("stop deadline passed; finishing in the background", "took", time.Since(start), "still_running", left)
	if len(left) == 0 {
		return fmt.Errorf("dim: stop: %w; leaving in the background", ctx.Err())
	}
	return fmt.Errorf("dim: stop: %w; still running, holding their keys until they return: %s", ctx.Err(), strings.Join(left, ", "))
}

// stillRunning names the calls Stop could not wait for: disconnects of
// instances and hung creates or disconnects, by key.
func (m *Manager[C, I]) stillRunning() []string {
	seen := map[string]bool{}
	m.calls.instances.each(func(e *entry[I]) { seen[e.key] = true })
	for _, key := range m.calls.hung.list() {
		seen[key] = true
	}
	keys := make([]string, 0, len(seen))
	for key := range seen {
		keys = append(keys, strconv.Quote(key))
	}
	slices.Sort(keys)
	if len(keys) > 20 {
		keys = append(keys[:20], fmt.Sprintf("and %d more", len(keys)-20))
	}
	return keys
}

// shutdown is Stop's work, in phases: move the keys away, let the
// leadership go, stop the local instances, leave. ctx bounds only the waits
// that concern the rest of the service (the leader's handoff); what this
// node holds is stopped, released and left in full, in the background if
// Stop has returned.
func (m *Manager[C, I]) shutdown(ctx context.Context) {
	m.moveKeysAway(ctx)
	m.elector.handOff(ctx)
	m.elector.stepDown()
	m.stopLocal(ctx)
	m.leaveAndClose()
}

// moveKeysAway asks for this node's keys to wait for its restart, or else
// to move to other nodes while it still holds its lease.
func (m *Manager[C, I]) moveKeysAway(ctx context.Context) {
	switch {
	case ctx.Err() != nil:
	case m.s.restartHold > 0:
		// A stop to restart: the keys wait for this node ID.
		if err := m.membership.hold(ctx, m.k.restarting, m.s.restartHold); err != nil {
			m.log.Warn("restart hold not recorded; keys move away as on any stop", "err", err)
		} else {
			m.log.Info("stopping to restart: keys wait for this node", "hold", m.s.restartHold)
			break
		}
		fallthrough
	default:
		dctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
		if err := m.membership.drain(dctx); err != nil && ctx.Err() == nil {
			m.log.Warn("drain failed; keys move when the lease expires", "err", err)
		}
		cancel()
	}
}

// stopLocal stops this node's instances, whatever ctx says: nothing may
// leak. It waits for the callbacks that may yet bring an instance to life.
func (m *Manager[C, I]) stopLocal(ctx context.Context) {
	done := make(chan struct{})
	select {
	case m.handoffCh <- done:
		<-done
	case <-m.runCtx.Done():
	}
	// A prepare still running may yet return an instance: the node loop
	// disposes of it, before Stop returns unless ctx ends first (a prepare
	// holds no claim, so the lease need not wait for it).
	if err := m.handoffs.prepares.wait(ctx); err != nil {
		m.log.Warn("prepare calls still running; what they return is disposed of when they do")
	}
	if err := m.handoffs.disposing.wait(ctx); err != nil {
		m.log.Warn("prepared instances still being disposed of; they finish in the background", "keys", m.handoffs.disposing.list())
	}
	// A callback that still hangs may yet bring an instance to life: keep
	// the lease (and so the claims) until it returns.
	if m.calls.hung.wait(ctx) != nil {
		m.log.Warn("callbacks still running; their keys stay claimed until they return")
		_ = m.calls.hung.wait(context.Background())
	}
}

// leaveAndClose leaves the service, ends the node's goroutines and closes
// its connections.
func (m *Manager[C, I]) leaveAndClose() {
	lctx, cancel := context.WithTimeout(context.Background(), m.s.heartbeat)
	if err := m.membership.leave(lctx); err != nil {
		m.log.Warn("leave failed; the lease expires by itself", "err", err)
	}
	cancel()
	m.membership.lease.end()
	m.runCancel()
	m.wg.Wait()
	// Leadership released its lock in lead(); only now may the clients go.
	select {
	case g := <-m.elector.term.taken:
		g.release()
	default:
	}
	m.locker.Close()
	m.closeClient(m.client)
}

// Rebalance asks the leader for an immediate rebalance with fresh configs,
// from any replica. It returns once the request is sent, or [ErrNotStarted]
// or [ErrStopped], or an error wrapping [ErrRedis].
func (m *Manager[C, I]) Rebalance(ctx context.Context) error {
	if err := m.life.checkStarted(); err != nil {
		return err
	}
	if m.IsLeader() {
		m.triggerLeader(triggerRequested)
		return nil
	}
	err := m.client.Do(ctx, m.client.B().Publish().Channel(m.k.channel).Message(evRebalance).Build()).Error()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRedis, err)
	}
	return nil
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// unclosable hands a caller's client to the locker, which closes its client
// when dim stops.
type unclosable struct{ rueidis.Client }

func (unclosable) Close() {}

// backoff doubles a delay from min to max; reset starts over.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max} }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

// sleepCtx waits for d or until ctx ends, and reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
