package dim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// errStaleEpoch means Redis refused a write because another leader has a
// newer epoch: this node must stop acting as leader at once.
var errStaleEpoch = errors.New("dim: epoch is stale")

// writeChunk bounds the changes one write script applies, so that a large
// rebalance never blocks Redis for long. Each chunk checks the epoch itself.
const writeChunk = 4096

// leaderLoop rebalances on every trigger until leadership ends: membership
// events, a lease that is about to expire, the config refresh schedule and
// Rebalance requests.
func (m *Manager[C, I]) leaderLoop(ctx context.Context, epoch uint64) {
	expiry := time.NewTimer(0)
	defer expiry.Stop()
	backoff := newBackoff(50*time.Millisecond, m.s.heartbeat)
	trigger := "leader elected"
	lastPrint := ""
	for {
		next, fp, err := m.rebalance(ctx, epoch, trigger, lastPrint)
		switch {
		case errors.Is(err, errStaleEpoch):
			m.log.Warn("stepping down: a newer leader exists", "epoch", epoch)
			return
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			m.log.Warn("rebalance failed", "epoch", epoch, "err", err)
			expiry.Reset(backoff.next())
		default:
			backoff.reset()
			lastPrint = fp
			expiry.Reset(next)
		}
		select {
		case <-ctx.Done():
			return
		case trigger = <-m.leaderCh:
		case <-expiry.C:
			trigger = "lease expiry"
		case done := <-m.handoffLeaderCh:
			// This node is stopping: one last rebalance moves its keys
			// away, then leadership is released.
			if _, _, err := m.rebalance(ctx, epoch, "leader stopping", lastPrint); err != nil {
				m.log.Warn("final rebalance failed", "err", err)
			}
			close(done)
			return
		}
	}
}

// rebalance computes and writes a new assignment. It returns how long until
// the next lease may expire, when it should look again, and the fingerprint
// of the configs it used.
func (m *Manager[C, I]) rebalance(ctx context.Context, epoch uint64, trigger, lastPrint string) (time.Duration, string, error) {
	ctx, span := m.tel.startRebalance(ctx, trigger, epoch)
	var stats rebalanceStats
	stats.start = time.Now()
	next, fp, err := m.rebalanceOnce(ctx, epoch, lastPrint, &stats)
	stats.err = err
	m.tel.endRebalance(ctx, span, stats)
	return next, fp, err
}

func (m *Manager[C, I]) rebalanceOnce(ctx context.Context, epoch uint64, lastPrint string, stats *rebalanceStats) (time.Duration, string, error) {
	rctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
	now, live, err := m.members(rctx)
	cancel()
	if err != nil {
		return 0, "", fmt.Errorf("read members: %w", err)
	}
	var nodes []Node
	var earliest int64
	for _, mb := range live {
		if earliest == 0 || mb.expires < earliest {
			earliest = mb.expires
		}
		if mb.weight > 0 { // weight 0: draining
			nodes = append(nodes, Node{ID: mb.id, Weight: mb.weight})
		}
	}
	next := m.s.nodeTTL
	if earliest > 0 {
		// Look again just after the earliest lease can expire.
		next = time.Duration(earliest-now)*time.Millisecond + 5*time.Millisecond
	}

	rctx, cancel = context.WithTimeout(ctx, m.s.heartbeat)
	prev, err := m.client.Do(rctx, m.client.B().Hgetall().Key(m.k.assign).Build()).AsStrMap()
	cancel()
	if err != nil {
		return 0, "", fmt.Errorf("read assignment: %w", err)
	}

	// Without configs the previous keys stay: a failing getConfig must not
	// stop what runs.
	fp := lastPrint
	var keys []string
	configs, err := m.loadConfigs(ctx)
	if err != nil {
		m.log.Error("cannot read configs; keeping the current keys", "err", err)
		m.tel.configFailed(ctx)
		for key := range prev {
			keys = append(keys, key)
		}
	} else {
		for key := range configs {
			keys = append(keys, key)
		}
		fp = fingerprint(configs)
	}

	assignment, err := Balance(prev, keys, nodes)
	if err != nil {
		return 0, "", err
	}
	if configs == nil {
		// Nodes may not be able to read configs either: move nothing that
		// runs, only place the keys of departed nodes.
		liveIDs := make(map[string]bool, len(nodes))
		for _, n := range nodes {
			liveIDs[n.ID] = true
		}
		for key, node := range prev {
			if liveIDs[node] {
				assignment[key] = node
			}
		}
	}
	stats.nodes, stats.keys = len(nodes), len(assignment)
	stats.moves = Moves(prev, assignment)
	if err := m.writeAssignment(ctx, epoch, prev, assignment, stats); err != nil {
		return 0, "", err
	}
	if fp != lastPrint && lastPrint != "" {
		m.publish(ctx, evConfig)
	}
	return next, fp, nil
}

// change is one key whose node changes; "" means none.
type change struct{ key, from, to string }

// writeAssignment writes only the difference between prev and next, fenced
// by the epoch.
func (m *Manager[C, I]) writeAssignment(ctx context.Context, epoch uint64, prev, next Assignment, stats *rebalanceStats) error {
	var changes []change
	for key, to := range next {
		if from := prev[key]; from != to {
			changes = append(changes, change{key, from, to})
		}
	}
	for key, from := range prev {
		if _, ok := next[key]; !ok {
			changes = append(changes, change{key, from, ""})
		}
	}
	stats.changes = len(changes)
	if len(changes) == 0 {
		return nil
	}
	// Deterministic chunks make traces and Redis logs comparable across runs.
	slices.SortFunc(changes, func(a, b change) int {
		if a.key < b.key {
			return -1
		}
		return 1
	})
	for chunk := range slices.Chunk(changes, writeChunk) {
		if err := m.writeChunk(ctx, epoch, chunk); err != nil {
			return err
		}
	}
	for _, c := range changes {
		m.log.Debug("assigned", "key", c.key, "from", c.from, "to", c.to, "epoch", epoch)
	}
	return nil
}

func (m *Manager[C, I]) writeChunk(ctx context.Context, epoch uint64, chunk []change) error {
	index := map[string]int{"": 0}
	var nodes []string
	for _, c := range chunk {
		for _, n := range []string{c.from, c.to} {
			if _, ok := index[n]; !ok {
				nodes = append(nodes, n)
				index[n] = len(nodes)
			}
		}
	}
	keys := make([]string, 0, 2+len(nodes))
	keys = append(keys, m.k.epoch, m.k.assign)
	args := make([]string, 0, 3+len(nodes)+3*len(chunk))
	args = append(args, strconv.FormatUint(epoch, 10), m.k.channel, strconv.Itoa(len(nodes)))
	for _, n := range nodes {
		keys = append(keys, m.k.assigned(n))
		args = append(args, n)
	}
	for _, c := range chunk {
		args = append(args, c.key, strconv.Itoa(index[c.to]), strconv.Itoa(index[c.from]))
	}
	ctx, cancel := context.WithTimeout(ctx, m.s.heartbeat+time.Duration(len(chunk))*time.Millisecond)
	defer cancel()
	ok, err := writeScript.Exec(ctx, m.client, keys, args).AsInt64()
	if err != nil {
		return fmt.Errorf("write assignment: %w", err)
	}
	if ok != 1 {
		return errStaleEpoch
	}
	return nil
}

// publish sends an event on the service channel.
func (m *Manager[C, I]) publish(ctx context.Context, event string) {
	ctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
	defer cancel()
	if err := m.client.Do(ctx, m.client.B().Publish().Channel(m.k.channel).Message(event).Build()).Error(); err != nil {
		m.log.Debug("publish failed", "event", event, "err", err)
	}
}
