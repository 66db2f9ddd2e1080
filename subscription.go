package dim

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// subscribe starts the subscription loop and waits until the server has
// confirmed the subscription, refused it, or not answered in time.
func (e *env) subscribe(ctx context.Context, onEvent func(rueidis.PubSubMessage)) error {
	subscribed := make(chan struct{})
	refused := make(chan error, 1)
	e.wg.Go(func() { e.subscribeLoop(onEvent, subscribed, refused) })
	select {
	case <-subscribed:
		return nil
	case err := <-refused:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(max(e.s.nodeTTL, 5*time.Second)):
		return fmt.Errorf("no answer within %v", max(e.s.nodeTTL, 5*time.Second))
	}
}

// subscribeLoop listens on the service channel for as long as the node runs,
// resubscribing after a lost connection. Messages may be lost while it is
// away, so every resubscription triggers a full reconcile and rebalance. The
// subscription has a connection of its own, which also suits servers that
// allow no other command on a subscribed connection.
func (e *env) subscribeLoop(onEvent func(rueidis.PubSubMessage), subscribed chan<- struct{}, refused chan<- error) {
	var once sync.Once
	var ever atomic.Bool
	backoff := newBackoff(50*time.Millisecond, e.s.heartbeat)
	for e.runCtx.Err() == nil {
		var ok atomic.Bool
		err := e.subscribeOnce(onEvent, func() {
			ok.Store(true)
			ever.Store(true)
			once.Do(func() { close(subscribed) })
			e.triggerNode()
			e.triggerLeader(triggerResub)
			signal(e.leaderCheckCh)
		})
		if e.runCtx.Err() != nil {
			return
		}
		// A server that refuses the subscription itself (an ACL without the
		// channel, say) will not change its mind: Start reports it at once.
		if _, isRedisErr := rueidis.IsRedisErr(err); isRedisErr && !ever.Load() {
			select {
			case refused <- err:
			default:
			}
		}
		e.log.Debug("subscription lost", "err", err)
		if ok.Load() {
			backoff.reset()
		}
		sleepCtx(e.runCtx, backoff.next())
	}
}

// subscribeOnce holds one subscription until its connection breaks or the
// node stops; onSubscribed runs once the server confirmed it.
func (e *env) subscribeOnce(onEvent func(rueidis.PubSubMessage), onSubscribed func()) error {
	// Closed, not returned to the pool: unsubscribing a connection that is
	// cut off would block for the write timeout.
	dc, _ := e.client.Dedicate()
	defer dc.Close()
	lost := dc.SetPubSubHooks(rueidis.PubSubHooks{
		OnMessage: onEvent,
		OnSubscription: func(s rueidis.PubSubSubscription) {
			if s.Kind == "subscribe" {
				onSubscribed()
			}
		},
	})
	ctx, cancel := context.WithTimeout(e.runCtx, e.s.nodeTTL)
	err := dc.Do(ctx, dc.B().Subscribe().Channel(e.k.channel).Build()).Error()
	cancel()
	if err != nil {
		return err
	}
	select {
	case err = <-lost:
		return err
	case <-e.runCtx.Done():
		return nil
	}
}

// onEvent routes one message of the service channel.
func (m *Manager[C, I]) onEvent(msg rueidis.PubSubMessage) {
	verb, args := parseEvent(msg.Message)
	switch verb {
	case evJoin, evLeave, evDrain, evAvoid:
		m.triggerLeader("node " + verb)
	case evRebalance:
		if len(args) > 0 {
			m.elector.requests.add(args[0])
		}
		m.configsStale.Store(true)
		m.triggerLeader(triggerRequested)
	case evAssign:
		if len(args) > 1 && slices.Contains(args[1:], m.s.nodeID) {
			m.triggerNode()
		}
	case evPrepared:
		if len(args) > 1 && args[0] != m.s.nodeID {
			m.handoffs.announced.add(decodeKeys(args[1:]))
			m.triggerNode()
		}
	case evRelease:
		if len(args) > 0 && args[0] != m.s.nodeID {
			// A claim refused a moment ago may succeed now: retry it at
			// once, not after claimRetry.
			m.released.Store(true)
			m.triggerNode()
		}
	case evConfig:
		m.configsStale.Store(true)
		m.triggerNode()
	case evLeader:
		m.log.Debug("new leader", "leader", args)
	}
}
