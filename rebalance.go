package dim

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// errStaleEpoch means Redis refused a write because another leader has a
// newer epoch: this node must stop acting as leader at once.
var errStaleEpoch = errors.New("dim: epoch is stale")

// writeChunk bounds the changes one write script applies, so that a large
// rebalance never blocks Redis for long. Each chunk checks the epoch itself.
const writeChunk = 1000

// Triggers of a rebalance, as recorded on its span.
const (
	triggerElected   = "leader elected"
	triggerExpiry    = "lease expiry"
	triggerRefresh   = "config refresh"
	triggerRequested = "rebalance requested"
	triggerResub     = "resubscribed"
	triggerStopping  = "leader stopping"
	triggerReview    = "failure review"
)

// requestSet holds the IDs of rebalance requests that wait for an answer.
type requestSet struct {
	mu  sync.Mutex
	ids []string
}

func (r *requestSet) add(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.ids) < 1000 { // a flood of requests gets no answers, not memory
		r.ids = append(r.ids, id)
	}
}

func (r *requestSet) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := r.ids
	r.ids = nil
	return ids
}

// leaderMemory is what a leader remembers between rebalances.
type leaderMemory struct {
	// busy is when the leader loop last made progress in the current
	// rebalance (unix ns; 0 while idle), for watchLeaderLoop: a big write
	// advances it with every chunk.
	busy            *atomic.Int64
	keys            []string // from the last successful getConfig; nil before one
	print           string   // fingerprint of those configs
	members         string   // the live nodes and weights last balanced over
	observed        time.Time
	moves           int               // of the last rebalance that ran
	assigned        Assignment        // as this leader last wrote it; nil: read it
	sweep           string            // HSCAN cursor of the owner sweep
	gen             string            // the record's generation when assigned was read
	ran             bool              // whether the last call ran a rebalance (not skipped)
	fleet           int               // the service's size as recorded in Redis; -1: unknown
	lastErr         string            // the last recorded outcome, "" if it succeeded
	recorded        bool              // an outcome was recorded in this term
	reviewAt        time.Time         // when failures need another look; zero: none
	moving          map[string]string // voluntary moves in flight under the budget: key → node
	pending         int               // voluntary moves held back by the budget or a freeze
	recordedPending int               // pending as last recorded
	budget          int               // voluntary moves a step may start; -1: no budget
	recordedFlying  int               // len(moving) as last recorded
	// prefetched are the keys read while waiting for a restarting
	// service's nodes, for the rebalance that follows; nil: none.
	prefetched []string
	// placements are the keys' placements from the last successful
	// getConfig (see WithPlacement); nil: none.
	placements map[string]Placement
	// placementSum is their checksum (see placingHash), if placementSummed:
	// computed, like the configs' fingerprint, when their content matters
	// (not at a membership change).
	placementSum    uint64
	placementSummed bool
	// placing is the placements as stored for Plan and Explain; nil:
	// not read in this term.
	placing *placingTable
	// recordedUnplaceable is the unplaceable keys as last recorded,
	// joined; nil: not recorded in this term.
	recordedUnplaceable *string
}

// joinWindow is how long a leader waits for further joins after a join or
// its election before it places keys, and joinWindowMax the longest it
// waits in all: when many nodes start at once, keys are placed once over
// all of them instead of going to the first and then moving on as the rest
// join.
//
// A restart of the whole service settles by count instead (see
// settleJoins): for up to one heartbeat interval after the first node
// joined a service with no live member, while fewer nodes have joined than
// the service had when the leader last counted them, the leader waits for
// them, and places keys the moment the last one has joined.
const (
	joinWindow    = 25 * time.Millisecond
	joinWindowMax = 500 * time.Millisecond
)

// leaderLoop rebalances on every trigger until leadership ends: membership
// events, a lease that is about to expire, the config refresh schedule and
// Rebalance requests. It returns why it ended, or "" when ctx did. busy
// holds when the current rebalance began, for watchLeaderLoop.
func (e *elector) leaderLoop(ctx context.Context, epoch uint64, busy *atomic.Int64) string {
	expiry := time.NewTimer(0)
	defer expiry.Stop()
	// Quarantines and unhealthy nodes end, and probes are looked at, on
	// their own timer: a lease-expiry check skips unchanged members.
	reviewT := time.NewTimer(time.Hour)
	reviewT.Stop()
	defer reviewT.Stop()
	backoff := newBackoff(50*time.Millisecond, e.s.heartbeat)
	// The first look at what runs comes one TTL into the term: a full
	// status read of a big service would only slow its start down.
	st := leaderMemory{observed: time.Now(), fleet: -1, busy: busy}
	trigger := triggerElected
	for {
		switch trigger {
		case triggerElected, "node " + evJoin, "node " + evDrain, "node " + evLeave:
			// Nodes that start or stop together are balanced over once.
			e.settleJoins(ctx, epoch, &st)
		}
		busy.Store(time.Now().UnixNano())
		next, err := e.rebalance(ctx, epoch, trigger, &st)
		e.answer(ctx, epoch, &st, err)
		switch {
		case errors.Is(err, errStaleEpoch):
			e.log.Warn("stepping down: a newer leader exists", "epoch", epoch)
			return "write refused"
		case err != nil:
			if ctx.Err() != nil {
				return ""
			}
			if isOOM(err) {
				e.log.Warn(outOfMemory, "epoch", epoch, "trigger", trigger, "err", err)
			} else if !e.slot.saw(e.log, "rebalance", err) {
				e.log.Warn("rebalance failed", "epoch", epoch, "trigger", trigger, "err", err)
			}
			expiry.Reset(backoff.next())
		default:
			e.slot.over(e.log)
			backoff.reset()
			expiry.Reset(next)
		}
		if trigger == triggerRefresh || time.Since(st.observed) > e.s.nodeTTL {
			e.observe(ctx, &st)
		}
		if trigger == triggerRefresh {
			e.sweepOwners(ctx, &st)
		}
		reviewT.Stop()
		if !st.reviewAt.IsZero() {
			reviewT.Reset(max(time.Until(st.reviewAt), time.Millisecond))
		}
		busy.Store(0)
		select {
		case <-ctx.Done():
			return ""
		case trigger = <-e.leaderCh:
		case <-expiry.C:
			trigger = triggerExpiry
		case <-reviewT.C:
			trigger = triggerReview
		case done := <-e.handoffCh:
			// This node is stopping: one last rebalance moves its keys
			// away, then leadership is released.
			busy.Store(time.Now().UnixNano())
			if _, err := e.rebalance(ctx, epoch, triggerStopping, &st); err != nil && !e.slot.saw(e.log, "final rebalance", err) {
				e.log.Warn("final rebalance failed", "err", err)
			}
			close(done)
			return "handed off"
		}
	}
}

// sweepChunk is how many owner entries one sweep looks at.
const sweepChunk = 1000

// sweepOwners removes one page of owner entries left by keys that were
// removed while their owner was dead (see sweepScript).
func (e *elector) sweepOwners(ctx context.Context, st *leaderMemory) {
	if st.sweep == "" {
		st.sweep = "0"
	}
	ctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	next, err := e.db().sweep(ctx, st.sweep, sweepChunk)
	if err == nil {
		st.sweep = next
	}
}

// settleJoins waits until no trigger has come for joinWindow, at most
// joinWindowMax in all; the triggers that came are covered by the rebalance
// that follows. While the whole service restarts, it waits for as many
// nodes as the service had instead, for at most one heartbeat interval
// after the restart began, and gives each node that joins meanwhile
// its share of departed nodes' keys where it can (see dealToJoiners).
func (e *elector) settleJoins(ctx context.Context, epoch uint64, st *leaderMemory) {
	f, err := e.readFleet(ctx)
	if err == nil {
		st.fleet = f.size
	}
	if err == nil && f.restarting(e.s.heartbeat) {
		e.prefetch(ctx, st)
		e.awaitFleet(ctx, epoch, st, f.size, e.s.heartbeat-f.since)
		return
	}
	deadline := time.NewTimer(joinWindowMax)
	defer deadline.Stop()
	quiet := time.NewTimer(joinWindow)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-quiet.C:
			return
		case <-e.leaderCh:
			quiet.Reset(joinWindow)
		}
	}
}

// awaitFleet waits until as many nodes have joined as the service had, at
// most left. No quiet gap ends the wait: the nodes of a restarting service
// join as fast as their processes start, which a quiet window cannot tell
// from the end of the restart. The nodes that joined so far take departed
// nodes' keys as they come, the last one included (see dealToJoiners).
func (e *elector) awaitFleet(ctx context.Context, epoch uint64, st *leaderMemory, size int, left time.Duration) {
	deadline := time.NewTimer(left)
	defer deadline.Stop()
	e.dealToJoiners(ctx, epoch, st, size)
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-e.leaderCh:
			// The last joiner too takes its share here, from what prefetch
			// read, before the rebalance that follows reads everything
			// again: that rebalance then moves none of the dealt keys.
			e.dealToJoiners(ctx, epoch, st, size)
			if f, err := e.readFleet(ctx); err == nil && f.live >= f.size {
				return
			}
		}
	}
}

// fleet is what the leader knows of the service's size.
type fleet struct {
	live  int           // nodes that have joined and confirmed
	size  int           // nodes the service had when last counted; 0: never
	since time.Duration // since the last restart of the whole service; <0: none
}

// restarting reports whether the whole service restarted less than window
// ago, its size is known and not all its nodes are back.
func (f fleet) restarting(window time.Duration) bool {
	return f.size > 0 && f.since >= 0 && f.since < window && f.live < f.size
}

func (e *elector) readFleet(ctx context.Context) (fleet, error) {
	ctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	f, err := e.db().fleet(ctx)
	if err != nil {
		return fleet{}, fmt.Errorf("read fleet: %w", err)
	}
	return f, nil
}

// recordFleet records how many nodes the service has, for the join window
// of its next restart: at once when it grew, and on the config refresh
// schedule when it shrank (a service that stops as a whole shrinks for a
// moment on every drain; that must not count).
func (e *elector) recordFleet(ctx context.Context, st *leaderMemory, n int, trigger string) {
	if n == 0 || n == st.fleet || (n < st.fleet && trigger != triggerRefresh) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	if size, err := e.db().fleetSize(ctx, n, trigger == triggerRefresh); err == nil {
		st.fleet = size
	}
}

// observe records how many keys are not running where they should, from a
// summary that only counts, so that its cost to Redis does not grow with the
// number of keys: both counts drain to zero after every disturbance.
func (e *elector) observe(ctx context.Context, st *leaderMemory) {
	st.observed = time.Now()
	rctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	sum, err := readSummary(rctx, e.client, e.s.service, e.k, 0)
	if err != nil {
		return
	}
	e.tel.setPending(sum.Unowned, sum.Moving)
}

// rebalance computes and writes a new assignment. It returns how long until
// the next lease may expire, when it should look again.
func (e *elector) rebalance(ctx context.Context, epoch uint64, trigger string, st *leaderMemory) (time.Duration, error) {
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	now, live, err := e.db().members(rctx)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("read members: %w", err)
	}
	var nodes []Node
	var earliest int64
	var sig strings.Builder
	for _, mb := range live {
		if earliest == 0 || mb.expires < earliest {
			earliest = mb.expires
		}
		if mb.weight > 0 { // 0: draining or pending
			l := parseNodeLabels(mb.labels)
			nodes = append(nodes, Node{ID: mb.id, Weight: mb.weight, Labels: l.Labels, MaxKeys: l.MaxKeys, MaxCost: l.MaxCost})
			fmt.Fprintf(&sig, "%s=%d%s ", mb.id, mb.weight, mb.labels)
		}
	}
	next := e.s.nodeTTL
	if earliest > 0 {
		// Look again just after the earliest lease can expire.
		next = time.Duration(earliest-now)*time.Millisecond + 5*time.Millisecond
	}
	// A lease-expiry check that finds the same members is not worth a span.
	st.ran = false
	if trigger == triggerExpiry && sig.String() == st.members {
		return next, nil
	}
	st.ran = true
	ctx, span := e.tel.startRebalance(ctx, trigger, epoch, start)
	stats := rebalanceStats{start: start}
	stats.err = e.assign(ctx, epoch, trigger, now, nodes, st, &stats)
	e.tel.endRebalance(ctx, span, stats)
	st.moves = stats.moves
	if stats.err == nil {
		st.members = sig.String()
		e.recordFleet(ctx, st, stats.nodes, trigger)
	}
	return next, stats.err
}

// answer tells the requesters of a rebalance how it went, and records the
// outcome where Status reads it when it changed: a failure, a recovery, or
// moves.
func (e *elector) answer(ctx context.Context, epoch uint64, st *leaderMemory, err error) {
	ids := e.requests.take()
	if !st.ran && len(ids) == 0 {
		return
	}
	outcome, msg := "ok", ""
	if err != nil {
		outcome, msg = "error", strings.Join(strings.Fields(err.Error()), " ")
	}
	for _, id := range ids {
		e.publish(ctx, fmt.Sprintf("%s %s %d %d %s %s", evRebalanced, id, epoch, st.moves, outcome, msg))
	}
	if st.recorded && msg == st.lastErr && st.moves == 0 && len(ids) == 0 && st.pending == st.recordedPending &&
		len(st.moving) == st.recordedFlying {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	if e.db().result(rctx, epoch, rebalanceResult{moves: st.moves, err: msg, pending: st.pending, inFlight: len(st.moving), budget: st.budget}) == nil {
		st.recorded, st.lastErr, st.recordedPending, st.recordedFlying = true, msg, st.pending, len(st.moving)
	}
}

// assign balances the keys over nodes and writes the difference.
func (e *elector) assign(ctx context.Context, epoch uint64, trigger string, now int64, nodes []Node, st *leaderMemory, stats *rebalanceStats) error {
	// Within a term this leader is the only writer of the assignment, so
	// it reads it once; after a restore of Redis, or a failed write, again.
	prev, err := e.previous(ctx, st, trigger == triggerRefresh)
	if err != nil {
		return err
	}
	prefetched := st.prefetched
	st.prefetched = nil
	if len(nodes) == 0 {
		// Nobody to give keys to: the assignment stays as it is, so that a
		// service that stopped and starts again with the same node IDs finds
		// its keys where they were.
		stats.keys = len(prev)
		return nil
	}
	keys, keep := prefetched, false
	if keys == nil {
		keys, keep = e.leaderKeys(ctx, st, prev, trigger)
	}
	budget, err := e.budgetLeft(ctx, st, prev, len(keys))
	if err != nil {
		return err
	}
	// Each read has a heartbeat; the balancing between them takes what it
	// takes (a second or more at a million keys), under the leader-loop
	// watchdog.
	p, err := place(ctx, e.client, e.k, placeInput{now: now, prev: prev, keys: keys, nodes: nodes,
		first: e.s.quarantineFirst, max: e.s.quarantineMax, poll: e.s.heartbeat, budget: budget, placements: st.placements,
		read: e.s.heartbeat})
	if err != nil {
		return err
	}
	e.recordUnplaceable(ctx, st, p.unplaceable)
	for _, key := range p.moving {
		st.moving[key] = p.next[key]
	}
	e.dropHolds(ctx, p.back, p.joined)
	st.pending = p.held
	if err := e.recordVerdict(ctx, p.facts, p.verdict); err != nil {
		return err
	}
	e.tel.setFailures(p.verdict.underBan, p.verdict.unhealthy, p.verdict.outage != nil)
	st.reviewAt = time.Time{}
	if w := earliestNonZero(p.verdict.wake, p.holds.wake()); w > 0 {
		st.reviewAt = time.Now().Add(time.Duration(w-now) * time.Millisecond)
	}
	switch {
	case p.held > 0 && p.holds.frozen > 0:
		e.log.Info("frozen: voluntary moves held back", "held", p.held)
	case p.held > 0:
		e.log.Info("move budget: voluntary moves held for later steps", "started", len(p.moving), "in_flight", len(st.moving), "held", p.held)
	}
	if len(st.moving) > 0 || (p.held > 0 && p.holds.frozen == 0) {
		// Look again when the moves in flight may have landed.
		at := time.Now().Add(e.s.heartbeat)
		if st.reviewAt.IsZero() || at.Before(st.reviewAt) {
			st.reviewAt = at
		}
	}
	assignment, avoid, nodes := p.next, p.verdict.avoid, p.nodes
	if !keep {
		e.dropAvoidances(ctx, avoid, keys)
	}
	if keep {
		// Without configs nodes may not be able to read them either: move
		// nothing that runs, only place the keys of departed nodes.
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
	st.assigned = nil // unknown until the write is done
	if err := e.writeAssignment(ctx, epoch, prev, assignment, stats, st.progress); err != nil {
		return err
	}
	st.assigned = assignment
	e.storePlacing(ctx, st)
	if changes := diff(prev, assignment); len(changes) > 0 {
		// Why each key moved, and the history: one round trip.
		cmds := e.whyCmds(changes, moveReasons(changes, p, trigger))
		e.bestEffort(ctx, "recording the moves", append(cmds, e.moveCmds(epoch, changes)...))
	}
	return nil
}

// progress tells watchLeaderLoop that the current rebalance moves on.
func (st *leaderMemory) progress() {
	if st.busy != nil && st.busy.Load() != 0 {
		st.busy.Store(time.Now().UnixNano())
	}
}

// previous returns the assignment as this leader last wrote it, reading it
// from Redis once a term, after a restore of Redis, after a failed write,
// or when fresh is set.
func (e *elector) previous(ctx context.Context, st *leaderMemory, fresh bool) (Assignment, error) {
	gen := e.feed.generation()
	if st.assigned != nil && gen == st.gen && !fresh {
		return st.assigned, nil
	}
	read, err := e.readAssignment(ctx, st.progress)
	if err != nil {
		return nil, fmt.Errorf("read assignment: %w", err)
	}
	st.assigned, st.gen = read, gen
	return read, nil
}

// assignPage is how many entries one HSCAN of the assignment asks for: a
// page of 10,000 costs Redis a few milliseconds, and a restart of a service
// of that size reads its assignment in one round trip while its nodes
// start (see prefetch).
const assignPage = 10000

// readAssignment reads the whole assignment page by page (HSCAN), each page
// a bounded command with a timeout of its own. It runs once a term, and the
// leader is the only writer: a page may repeat an entry, which the map
// absorbs, and no entry changes while it reads.
func (e *elector) readAssignment(ctx context.Context, progress func()) (Assignment, error) {
	read := Assignment{}
	var cursor uint64
	for {
		rctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
		page, err := e.client.Do(rctx, e.client.B().Hscan().Key(e.k.assign).Cursor(cursor).Count(assignPage).Build()).AsScanEntry()
		cancel()
		if err != nil {
			return nil, err
		}
		for i := 0; i+1 < len(page.Elements); i += 2 {
			read[page.Elements[i]] = page.Elements[i+1]
		}
		progress()
		if cursor = page.Cursor; cursor == 0 {
			return read, nil
		}
	}
}

// prefetch does, while the leader waits for a restarting service's nodes,
// the part of placing keys that does not depend on who joins: it reads the
// assignment and the configs, so that the rebalance that follows the last
// join does not.
func (e *elector) prefetch(ctx context.Context, st *leaderMemory) {
	prev, err := e.previous(ctx, st, false)
	if err != nil {
		return
	}
	if keys, keep := e.leaderKeys(ctx, st, prev, triggerElected); !keep {
		st.prefetched = keys
	}
}

// leaderKeys returns the keys to balance, from a fresh getConfig: a leader
// that cannot read configs must not move running instances to nodes that
// may not be able to read them either. If getConfig fails, the last keys
// (or those of the current assignment) stay and keep is true.
func (e *elector) leaderKeys(ctx context.Context, st *leaderMemory, prev Assignment, trigger string) (keys []string, keep bool) {
	// Content changes matter on a refresh or a request; a membership change
	// needs the keys only, not a hash of every config's content.
	membership := false
	switch trigger {
	case triggerExpiry, "node " + evJoin, "node " + evDrain, "node " + evLeave, "node " + evAvoid, triggerStopping, triggerReview:
		membership = st.print != ""
	}
	in, err := e.feed.configs(ctx, membership)
	if err != nil {
		e.logPanic("getConfig", err)
		e.log.Error("cannot read configs; keeping the current assignment", "err", err)
		e.tel.configFailed(ctx)
		e.cfgErrs.report(ctx, e.env, err, len(prev))
		if st.keys != nil {
			return st.keys, true
		}
		for key := range prev {
			keys = append(keys, key)
		}
		return keys, true
	}
	e.cfgErrs.report(ctx, e.env, nil, 0)
	st.placementSummed = false
	if in.placementErr != nil {
		e.log.Error("bad placement; keeping the last placements", "err", in.placementErr)
	} else {
		st.placements, st.placementSum, st.placementSummed = in.placements, in.placementSum, !membership
	}
	st.keys = in.keys
	if membership {
		return in.keys, false
	}
	fp := in.print
	if st.print != "" && fp != st.print {
		// Content may have changed under unchanged keys: nodes read their
		// configs again.
		e.publish(ctx, evConfig)
	}
	st.print = fp
	return in.keys, false
}

// dropAvoidances forgets the avoidances of keys that are no longer
// configured.
func (e *elector) dropAvoidances(ctx context.Context, avoid map[string][]string, keys []string) {
	if len(avoid) == 0 {
		return
	}
	set := make(map[string]bool, len(keys))
	for _, k := range keys {
		set[k] = true
	}
	var gone []string
	for k := range avoid {
		if !set[k] {
			gone = append(gone, k)
		}
	}
	if len(gone) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	_ = e.client.Do(ctx, e.client.B().Hdel().Key(e.k.avoid).Field(gone...).Build()).Error()
}

// change is one key whose node changes; "" means none.
type change struct{ key, from, to string }

// writeAssignment writes only the difference between prev and next, fenced
// by the epoch.
func (e *elector) writeAssignment(ctx context.Context, epoch uint64, prev, next Assignment, stats *rebalanceStats, progress func()) error {
	changes := diff(prev, next)
	stats.changes = len(changes)
	if len(changes) == 0 {
		return nil
	}
	// By new node, so that each node hears of its keys once, all of them
	// in one chunk, and starts on them while the next chunks are written;
	// then by key: deterministic chunks make traces and Redis logs
	// comparable across runs.
	slices.SortFunc(changes, func(a, b change) int {
		return cmp.Or(strings.Compare(a.to, b.to), strings.Compare(a.key, b.key))
	})
	// A node is told of its changes once, with the chunk that writes the
	// last of them: a node with many keys does not read its growing set
	// again after every chunk. A chunk that fails leaves its nodes untold,
	// and the rebalance that retries the write tells them.
	chunks := slices.Collect(nodeChunks(changes, writeChunk))
	last := map[string]int{}
	for i, chunk := range chunks {
		for _, c := range chunk {
			last[c.from], last[c.to] = i, i
		}
	}
	for i, chunk := range chunks {
		if err := e.writeChunk(ctx, epoch, chunk, func(node string) bool { return last[node] == i }); err != nil {
			return err
		}
		progress()
	}
	for _, c := range changes {
		e.log.Debug("assigned", "key", c.key, "from", c.from, "to", c.to, "epoch", epoch)
	}
	return nil
}

// diff lists the keys whose node differs between prev and next.
func diff(prev, next Assignment) []change {
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
	return changes
}

// nodeChunks cuts changes, sorted by new node, into chunks of at most size
// changes that split no node's changes, unless one node has more than size.
func nodeChunks(changes []change, size int) iter.Seq[[]change] {
	return func(yield func([]change) bool) {
		for len(changes) > 0 {
			end := min(size, len(changes))
			if end < len(changes) && changes[end].to == changes[end-1].to {
				// Back to the start of the node that would be split, if the
				// chunk holds anything before it.
				cut := end
				for cut > 0 && changes[cut-1].to == changes[end].to {
					cut--
				}
				if cut > 0 {
					end = cut
				}
			}
			if !yield(changes[:end]) {
				return
			}
			changes = changes[end:]
		}
	}
}

// writeChunk writes one chunk of changes, and tells the nodes for which
// tell is true that their keys changed.
func (e *elector) writeChunk(ctx context.Context, epoch uint64, chunk []change, tell func(node string) bool) error {
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
	told := make([]bool, len(nodes))
	for i, n := range nodes {
		told[i] = tell(n)
	}
	trace := traceparent(ctx)
	ctx, cancel := context.WithTimeout(ctx, e.s.heartbeat+time.Duration(len(chunk))*time.Millisecond)
	defer cancel()
	ok, err := e.db().write(ctx, epoch, trace, nodes, told, writeGroups(chunk, index))
	if err != nil {
		return fmt.Errorf("write assignment: %w", err)
	}
	if !ok {
		return errStaleEpoch
	}
	return nil
}

// writeGroups lists a chunk's changes for writeScript: per pair of new and
// old node (numbered by index), in the order the pairs first appear, the
// pair, how many keys make it, and the keys.
func writeGroups(chunk []change, index map[string]int) []string {
	type pair struct{ to, from string }
	var order []pair
	byPair := map[pair][]string{}
	for _, c := range chunk {
		p := pair{c.to, c.from}
		if _, ok := byPair[p]; !ok {
			order = append(order, p)
		}
		byPair[p] = append(byPair[p], c.key)
	}
	args := make([]string, 0, 3*len(order)+len(chunk))
	for _, p := range order {
		keys := byPair[p]
		args = append(args, strconv.Itoa(index[p.to]), strconv.Itoa(index[p.from]), strconv.Itoa(len(keys)))
		args = append(args, keys...)
	}
	return args
}
