package dim

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
	"github.com/redis/rueidis/rueidislock"
	"github.com/robfig/cron/v3"
)

// env is what the parts of a node share and none of them owns: its
// settings and Redis names, its logger and telemetry, the Redis client and
// the locker of the leader lock, the context of its run, and the signals
// that wake its loops. A Manager holds one; its membership and its elector
// point to it. Nothing in env depends on the config or instance type.
type env struct {
	s            settings
	k            keyspace
	log          *slog.Logger
	tel          *telemetry
	plainScripts atomic.Bool  // the server does not compile flagged scripts (see keepLua)
	clock        redisClock   // this node's offset from Redis's clock
	clockWarned  atomic.Bool  // a large offset was logged
	slot         *slotNotice  // a slot migration in the Cluster, told once
	panics       sync.Map     // panics whose stack was logged, by what and message
	live         liveness     // the loops' progress, for Live
	cfgErrs      configErrors // what Status shows of this node's getConfig

	// Set by Start.
	runCtx    context.Context
	runCancel context.CancelFunc
	wg        sync.WaitGroup // the node's goroutines
	client    rueidis.Client
	locker    rueidislock.Locker

	// Signals, each coalesced in a buffer of one (see the map above
	// Manager).
	nodeCh        chan struct{}
	campaignCh    chan struct{}
	leaderCheckCh chan struct{}
	leaderCh      chan string
}

// newEnv returns the env of a node with settings s, which New has checked.
func newEnv(s settings) *env {
	log := s.logger.With("service", s.service, "node", s.nodeID)
	slot := &slotNotice{}
	tel := newTelemetry(s, log)
	tel.slot = slot
	return &env{
		s:             s,
		k:             newKeyspace(s.keyPrefix, s.service),
		log:           log,
		tel:           tel,
		slot:          slot,
		nodeCh:        make(chan struct{}, 1),
		campaignCh:    make(chan struct{}, 1),
		leaderCheckCh: make(chan struct{}, 1),
		leaderCh:      make(chan string, 1),
	}
}

// publish sends an event on the service channel.
func (e *env) publish(ctx context.Context, event string) {
	ctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	if err := e.client.Do(ctx, e.client.B().Publish().Channel(e.k.channel).Message(event).Build()).Error(); err != nil {
		e.log.Debug("publish failed", "event", event, "err", err)
	}
}

// bestEffort sends cmds and logs a failure at Debug: records that end or
// get rewritten by themselves, not worth failing a rebalance for.
func (e *env) bestEffort(ctx context.Context, what string, cmds rueidis.Commands) {
	if len(cmds) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	for _, r := range e.client.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil {
			e.log.Debug(what+" failed", "err", err)
			return
		}
	}
}

func (e *env) triggerNode() { signal(e.nodeCh) }

func (e *env) triggerCampaign() { signal(e.campaignCh) }

// triggerLeader wakes the leader loop; a pending reason is kept, later ones
// coalesce into it.
func (e *env) triggerLeader(reason string) {
	select {
	case e.leaderCh <- reason:
	default:
	}
}

// closeClient closes a client dim made; one given by WithRedisClient stays
// open.
func (e *env) closeClient(c rueidis.Client) {
	if e.s.client == nil {
		c.Close()
	}
}

// every calls fn on a cron schedule, and whenever wake fires (nil: never),
// until the node stops.
func (e *env) every(s cron.Schedule, wake <-chan struct{}, fn func()) {
	for {
		now := time.Now()
		next := s.Next(now)
		if next.IsZero() { // New refuses such specs; never spin on one
			return
		}
		t := time.NewTimer(next.Sub(now))
		select {
		case <-e.runCtx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-wake:
			t.Stop()
		}
		fn()
	}
}

// logPanic logs the stack of a recovered panic the first time it is seen
// for what (a key, or a kind of call): retries log the message only.
func (e *env) logPanic(what string, err error) {
	var p *panicError
	if !errors.As(err, &p) {
		return
	}
	if _, seen := e.panics.LoadOrStore(what+"\x00"+p.value, true); !seen {
		e.log.Error("callback panicked", "what", what, "panic", p.value, "stack", string(p.stack))
	}
}
