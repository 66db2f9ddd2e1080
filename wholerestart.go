package dim

import (
	"cmp"
	"context"
	"slices"
)

// A whole service that restarts with new node IDs (the default ID changes
// with every process) finds its keys assigned to nodes that are all gone.
// Placing them only once every node is back puts the whole assignment
// write, and every node's claims, after the last Start: at 100 nodes ×
// 10,000 keys that is most of the time to live. Instead, while the leader
// waits for the restarting service's nodes (see settleJoins), it pairs each
// node that joins with one node that departed and gives it that node's keys
// at once, where the rebalance after the last join would leave them.
//
// A pairing is made only where that rebalance is sure to move none of the
// paired keys: with equal weights, no caps, no placements, pins or rollout
// holds, and a departed node that held no more than its share of the
// restarted service (at most ⌈K/M⌉ keys, and no more nodes at ⌈K/M⌉ than
// K mod M allows). With minimal movement, the balancer moves no key off a
// node that holds no more than its share. Anything else waits for the
// rebalance that follows the joins, as before.

// pairJoiners gives the nodes that joined a restarting service so far the
// keys of departed nodes, one departed node each, as described above. size
// is how many nodes the service had. It needs the configured keys, read by
// prefetch; without them it does nothing. Like every assignment write, it
// is fenced by the epoch; a failed write leaves the pairing to the
// rebalance that follows.
func (m *Manager[C, I]) pairJoiners(ctx context.Context, epoch uint64, st *leaderState, size int) {
	if st.prefetched == nil || st.assigned == nil || len(st.placements) > 0 || size <= 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, m.s.heartbeat)
	defer cancel()
	now, live, err := m.members(rctx)
	if err != nil {
		return
	}
	h, err := readHolds(rctx, m.client, m.k, now)
	if err != nil || len(h.rollout.restarting) > 0 || len(h.rollout.waiting) > 0 {
		return
	}
	pins, err := m.client.Do(rctx, m.client.B().Hlen().Key(m.k.pins).Build()).AsInt64()
	if err != nil || pins > 0 {
		return
	}
	var taking []string
	weight := 0
	for _, mb := range live {
		if mb.weight <= 0 {
			continue // draining or pending
		}
		l := parseNodeLabels(mb.labels)
		if l.MaxKeys > 0 || l.MaxCost > 0 || (weight != 0 && mb.weight != weight) {
			return
		}
		weight = mb.weight
		if _, drained := h.drained[mb.id]; !drained {
			taking = append(taking, mb.id)
		}
	}
	prev := st.assigned
	next := restartPairs(prev, st.prefetched, taking, size)
	if next == nil {
		return
	}
	stats := rebalanceStats{}
	st.assigned = nil // unknown until the write is done
	if err := m.writeAssignment(ctx, epoch, prev, next, &stats, st.progress); err != nil {
		return
	}
	st.assigned = next
	changes := diff(prev, next)
	m.log.Info("restart: joiners took departed nodes' keys", "keys", len(changes), "epoch", epoch)
	why := make(map[string]whyRecord, len(changes))
	at := now
	for _, c := range changes {
		why[c.key] = whyRecord{At: at, From: c.from, To: c.to, Reason: MoveNodeGone, Trigger: triggerWholeRestart}
	}
	m.bestEffort(ctx, "recording the moves", append(m.whyCmds(changes, why), m.moveCmds(epoch, changes)...))
}

// triggerWholeRestart names, in the reasons of moves, the pairing of
// joiners with departed nodes during a whole restart.
const triggerWholeRestart = "node join, whole restart"

// restartPairs returns prev with the keys of departed nodes given to
// joiners, one departed node to one joiner, where the rebalance over size
// nodes would move none of them (see above); nil if it pairs none. A joiner
// is a node in taking that holds no configured key in prev; a departed node
// is one that holds some and is not in taking. Pairs go by ID order, so
// that two leaders pair alike.
func restartPairs(prev Assignment, keys []string, taking []string, size int) Assignment {
	if size <= 0 || len(keys) == 0 {
		return nil
	}
	held := map[string][]string{}
	for _, key := range keys {
		if node, ok := prev[key]; ok {
			held[node] = append(held[node], key)
		}
	}
	live := make(map[string]bool, len(taking))
	var joiners []string
	for _, id := range taking {
		live[id] = true
		if len(held[id]) == 0 {
			joiners = append(joiners, id)
		}
	}
	var departed []string
	for node := range held {
		if !live[node] {
			departed = append(departed, node)
		}
	}
	slices.Sort(joiners)
	slices.SortFunc(departed, func(a, b string) int {
		return cmp.Or(cmp.Compare(len(held[b]), len(held[a])), cmp.Compare(a, b))
	})
	share, extra := len(keys)/size, len(keys)%size
	ceil := share
	if extra > 0 {
		ceil++
	}
	holders, atCeil := 0, 0
	for _, id := range taking {
		if n := len(held[id]); n > 0 {
			holders++
			if extra > 0 && n == ceil {
				atCeil++
			}
		}
	}
	var next Assignment
	for _, d := range departed {
		if len(joiners) == 0 || holders >= size {
			break
		}
		n := len(held[d])
		if n > ceil || (extra > 0 && n == ceil && atCeil >= extra) {
			continue
		}
		if extra > 0 && n == ceil {
			atCeil++
		}
		if next == nil {
			next = make(Assignment, len(prev))
			for key, node := range prev {
				next[key] = node
			}
		}
		j := joiners[0]
		joiners = joiners[1:]
		holders++
		for _, key := range held[d] {
			next[key] = j
		}
	}
	return next
}
