package dim

import (
	"context"
	"maps"
	"slices"
)

// A whole service that restarts with new node IDs (the default ID changes
// with every process) finds its keys assigned to nodes that are all gone.
// Placing them only once every node is back puts the whole assignment
// write, and every node's claims, after the last Start: at 100 nodes ×
// 10,000 keys that is most of the time to live. Instead, while the leader
// waits for the restarting service's nodes (see settleJoins), each node
// that joins takes its share of the departed nodes' keys at once, where the
// rebalance after the last join will leave them.
//
// Keys are dealt only where that rebalance is sure to move none of them:
// with equal weights, no caps, no placements, pins or rollout holds, and
// each joiner given no more than its share of the service as it was (⌊K/M⌋
// keys, or ⌈K/M⌉ while fewer nodes hold that many than K mod M). With
// minimal movement, the balancer moves no key off a node that holds no
// more than its share. Anything else waits for the rebalance that follows
// the joins, as before.

// dealToJoiners gives the nodes that joined a restarting service so far
// their shares of the departed nodes' keys, as described above. size is how
// many nodes the service had. It needs the configured keys, read by
// prefetch; without them it does nothing. Like every assignment write, it
// is fenced by the epoch; a failed write leaves the keys to the rebalance
// that follows.
func (e *elector) dealToJoiners(ctx context.Context, epoch uint64, st *leaderMemory, size int) {
	if st.prefetched == nil || st.assigned == nil || len(st.placements) > 0 || size <= 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	now, live, err := e.db().members(rctx)
	if err != nil {
		return
	}
	h, err := readHolds(rctx, e.client, e.k, now)
	if err != nil || len(h.rollout.restarting) > 0 || len(h.rollout.waiting) > 0 {
		return
	}
	pins, err := e.client.Do(rctx, e.client.B().Hlen().Key(e.k.pins).Build()).AsInt64()
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
	next := restartShares(prev, st.prefetched, taking, size)
	if next == nil {
		return
	}
	stats := rebalanceStats{}
	st.assigned = nil // unknown until the write is done
	if err := e.writeAssignment(ctx, epoch, prev, next, &stats, st.progress); err != nil {
		return
	}
	st.assigned = next
	changes := diff(prev, next)
	e.log.Info("restart: joiners took departed nodes' keys", "keys", len(changes), "epoch", epoch)
	why := make(map[string]whyRecord, len(changes))
	at := now
	for _, c := range changes {
		why[c.key] = whyRecord{At: at, From: c.from, To: c.to, Reason: MoveNodeGone, Trigger: triggerWholeRestart}
	}
	e.bestEffort(ctx, "recording the moves", append(e.whyCmds(changes, why), e.moveCmds(epoch, changes)...))
}

// triggerWholeRestart names, in the reasons of moves, the keys dealt to
// joiners during a whole restart.
const triggerWholeRestart = "node join, whole restart"

// restartShares returns prev with keys of departed nodes dealt to joiners,
// each joiner up to its share of the service of size nodes, so that the
// rebalance over size nodes moves none of them (see above); nil if it
// deals none. A joiner is a node in taking that holds no configured key in
// prev; a departed node is one that holds some and is not in taking.
// Joiners and departed nodes go by ID order and keys by name, so that two
// leaders deal alike, and a joiner takes the keys of one departed node
// where it can.
func restartShares(prev Assignment, keys []string, taking []string, size int) Assignment {
	if size <= 0 || len(keys) == 0 {
		return nil
	}
	held := map[string][]string{}
	for _, key := range keys {
		if node, ok := prev[key]; ok {
			held[node] = append(held[node], key)
		}
	}
	share, extra := len(keys)/size, len(keys)%size
	live := make(map[string]bool, len(taking))
	var joiners []string
	holders, atCeil := 0, 0
	for _, id := range taking {
		live[id] = true
		switch n := len(held[id]); {
		case n == 0:
			joiners = append(joiners, id)
		default:
			holders++
			if extra > 0 && n > share {
				atCeil++
			}
		}
	}
	var departed []string
	for node := range held {
		if !live[node] {
			departed = append(departed, node)
		}
	}
	slices.Sort(joiners)
	slices.Sort(departed)
	var pool []string
	for _, d := range departed {
		pool = append(pool, slices.Sorted(slices.Values(held[d]))...)
	}
	var next Assignment
	for _, j := range joiners {
		if len(pool) == 0 || holders >= size {
			break
		}
		n := share
		if atCeil < extra {
			n++
		}
		n = min(n, len(pool))
		if n == 0 {
			break
		}
		if n > share {
			atCeil++
		}
		if next == nil {
			next = maps.Clone(prev)
		}
		for _, key := range pool[:n] {
			next[key] = j
		}
		pool = pool[n:]
		holders++
	}
	return next
}
