package dim

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Maintenance: an operator drains a node (it stays a live member and gets
// no keys, for a while) or freezes the service (no voluntary moves, for a
// while). Both end by themselves: a script that dies must not leave a node
// drained or a service frozen forever.

// DefaultDrainFor and DefaultFreezeFor are the durations dimctl uses when
// none is given.
const (
	DefaultDrainFor  = time.Hour
	DefaultFreezeFor = 30 * time.Minute
)

// maxHold bounds a drain or a freeze.
const maxHold = 7 * 24 * time.Hour

// DrainNode drains a live node of a service for d: the leader moves its keys
// to the other nodes with the normal handoff and gives it none, while it
// stays a member (Status shows it [NodeDrained]). The drain ends by itself after
// d, or with [UndrainNode]. An explicit drain is honoured during a freeze.
// It returns an error wrapping [ErrUnknownNode]
// for a node that is not live, [ErrLastNode] when no other node would take
// keys, or [ErrRedis].
func DrainNode(ctx context.Context, client rueidis.Client, svc Service, node string, d time.Duration) (time.Time, error) {
	k, err := svc.keys()
	if err != nil {
		return time.Time{}, err
	}
	if d <= 0 || d > maxHold {
		return time.Time{}, fmt.Errorf("%w: a drain of %v: want more than 0 and at most %v", ErrInvalidOption, d, maxHold)
	}
	code, until, err := newStore(client, k).drainNode(ctx, node, d)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: drain %q: %w", ErrRedis, node, err)
	}
	switch code {
	case -1:
		return time.Time{}, fmt.Errorf("%w: %q is not a live node of the service", ErrUnknownNode, node)
	case -2:
		return time.Time{}, fmt.Errorf("%w: draining %q would leave no node to run keys", ErrLastNode, node)
	}
	return until, nil
}

// UndrainNode ends a node's drain: the leader gives it keys again. It
// reports whether a drain was in force.
func UndrainNode(ctx context.Context, client rueidis.Client, svc Service, node string) (bool, error) {
	k, err := svc.keys()
	if err != nil {
		return false, err
	}
	had, err := newStore(client, k).undrain(ctx, node)
	if err != nil {
		return false, fmt.Errorf("%w: undrain %q: %w", ErrRedis, node, err)
	}
	return had, nil
}

// Freeze stops voluntary moves in a service for d: joins, weight changes,
// drains that end and manual rebalances move nothing, while failures (a
// crash, a leave, a fence, a key that cannot run where it is) are still
// handled at once, and an explicit drain still moves its node's keys. It
// ends by itself after d, or with [Thaw]; then the leader balances again.
// It returns an error wrapping [ErrFrozen] while another freeze is in force.
func Freeze(ctx context.Context, client rueidis.Client, svc Service, d time.Duration) error {
	k, err := svc.keys()
	if err != nil {
		return err
	}
	if d <= 0 || d > maxHold {
		return fmt.Errorf("%w: a freeze of %v: want more than 0 and at most %v", ErrInvalidOption, d, maxHold)
	}
	left, err := newStore(client, k).freeze(ctx, "frozen", d)
	if err != nil {
		return fmt.Errorf("%w: freeze: %w", ErrRedis, err)
	}
	if left > 0 {
		return fmt.Errorf("%w: for %v more; thaw it first", ErrFrozen, left)
	}
	return nil
}

// Thaw ends a freeze; it reports whether one was in force.
func Thaw(ctx context.Context, client rueidis.Client, svc Service) (bool, error) {
	k, err := svc.keys()
	if err != nil {
		return false, err
	}
	had, err := newStore(client, k).thaw(ctx)
	if err != nil {
		return false, fmt.Errorf("%w: thaw: %w", ErrRedis, err)
	}
	return had, nil
}

// Drain drains this node for d (see [DrainNode]); Undrain ends it.
func (m *Manager[C, I]) Drain(ctx context.Context, d time.Duration) (time.Time, error) {
	if m.life.load() == phaseNew {
		return time.Time{}, ErrNotStarted
	}
	return DrainNode(ctx, m.client, Service{Name: m.s.service, KeyPrefix: m.s.keyPrefix}, m.s.nodeID, d)
}

// Undrain ends this node's drain (see [UndrainNode]).
func (m *Manager[C, I]) Undrain(ctx context.Context) (bool, error) {
	if m.life.load() == phaseNew {
		return false, ErrNotStarted
	}
	return UndrainNode(ctx, m.client, Service{Name: m.s.service, KeyPrefix: m.s.keyPrefix}, m.s.nodeID)
}

// holds are the drains and the freeze in force, as the leader reads them.
type holds struct {
	drained map[string]int64 // node → until, server ms
	frozen  int64            // until, server ms; 0: not frozen
	rollout rolloutHolds
}

// readHolds reads the drains and the freeze in force.
func readHolds(ctx context.Context, client rueidis.Client, k keyspace, now int64) (*holds, error) {
	b := client.B()
	res := client.DoMulti(ctx, b.Hgetall().Key(k.drains).Build(), b.Pttl().Key(k.freeze).Build(),
		b.Hgetall().Key(k.restarting).Build(), b.Hgetall().Key(k.joinWait).Build(), b.Hgetall().Key(k.handoffs).Build())
	raw, err := res[0].AsStrMap()
	if err != nil {
		return nil, fmt.Errorf("read drains: %w", err)
	}
	h := &holds{drained: map[string]int64{}}
	if h.rollout.restarting, err = readHoldMap(res[2], now); err != nil {
		return nil, fmt.Errorf("read restart holds: %w", err)
	}
	if h.rollout.waiting, err = readHoldMap(res[3], now); err != nil {
		return nil, fmt.Errorf("read join holds: %w", err)
	}
	for node, v := range raw {
		if until, err := strconv.ParseInt(v, 10, 64); err == nil && until > now {
			h.drained[node] = until
		}
	}
	pttl, err := res[1].AsInt64()
	if err != nil {
		return nil, fmt.Errorf("read freeze: %w", err)
	}
	if pttl > 0 {
		h.frozen = now + pttl
	}
	return h, nil
}

// without returns nodes less the drained ones, unless that leaves none:
// keys must run somewhere.
func (h *holds) without(nodes []Node) []Node {
	out := make([]Node, 0, len(nodes))
	for _, n := range nodes {
		if _, ok := h.drained[n.ID]; !ok {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nodes
	}
	return out
}

// wake is when a hold ends (server ms), 0 if none is in force.
func (h *holds) wake() int64 {
	w := earliestNonZero(h.frozen, h.rollout.wake())
	for _, until := range h.drained {
		w = earliestNonZero(w, until)
	}
	return w
}

func earliestNonZero(a, b int64) int64 {
	if a == 0 {
		return b
	}
	if b == 0 {
		return a
	}
	return min(a, b)
}

// FreezeStatus is a freeze in force, for Status.
type FreezeStatus struct {
	// Left is how long it still runs.
	Left time.Duration `json:"left_ns"`
}

// readHoldStatus adds the drains and the freeze to a status.
func readHoldStatus(ctx context.Context, client rueidis.Client, k keyspace, st *Status) error {
	b := client.B()
	res := client.DoMulti(ctx, b.Hgetall().Key(k.drains).Build(), b.Pttl().Key(k.freeze).Build(),
		b.Hmget().Key(k.leader).Field("rb_pending", "rb_flight", "rb_budget").Build(),
		b.Hgetall().Key(k.restarting).Build(), b.Hgetall().Key(k.joinWait).Build(), b.Hgetall().Key(k.handoffs).Build())
	raw, err := res[0].AsStrMap()
	if err != nil {
		return fmt.Errorf("%w: read drains: %w", ErrRedis, err)
	}
	now := st.ServerTime.UnixMilli()
	for i, n := range st.Nodes {
		until, err := strconv.ParseInt(raw[n.ID], 10, 64)
		if err != nil || until <= now {
			continue
		}
		st.Nodes[i].DrainedFor = time.Duration(until-now) * time.Millisecond
		if n.State == NodeActive {
			st.Nodes[i].State = NodeDrained
		}
	}
	pttl, err := res[1].AsInt64()
	if err != nil {
		return fmt.Errorf("%w: read freeze: %w", ErrRedis, err)
	}
	if pttl > 0 {
		st.Frozen = &FreezeStatus{Left: time.Duration(pttl) * time.Millisecond}
	}
	restarting, err := readHoldMap(res[3], now)
	if err != nil {
		return fmt.Errorf("%w: read restart holds: %w", ErrRedis, err)
	}
	waiting, err := readHoldMap(res[4], now)
	if err != nil {
		return fmt.Errorf("%w: read join holds: %w", ErrRedis, err)
	}
	handoffs, err := res[5].AsStrMap()
	if err != nil {
		return fmt.Errorf("%w: read handoffs: %w", ErrRedis, err)
	}
	live := map[string]bool{}
	for i, n := range st.Nodes {
		live[n.ID] = true
		if f := strings.Fields(handoffs[n.ID]); len(f) == 2 {
			st.Nodes[i].Prepared, _ = strconv.Atoi(f[0])
			st.Nodes[i].Handing, _ = strconv.Atoi(f[1])
		}
		if h, ok := waiting[n.ID]; ok && n.State == NodeActive {
			st.Nodes[i].State = NodeWaiting
			st.Nodes[i].WaitingFor = time.Duration(h.until-now) * time.Millisecond
		}
	}
	st.Restarting = []RestartHold{}
	for node, rh := range restarting {
		if live[node] {
			continue
		}
		h := RestartHold{Node: node, Left: time.Duration(rh.until-now) * time.Millisecond}
		for _, on := range st.Assignment {
			if on == node {
				h.Keys++
			}
		}
		st.Restarting = append(st.Restarting, h)
	}
	slices.SortFunc(st.Restarting, func(a, b RestartHold) int { return strings.Compare(a.Node, b.Node) })
	if st.Assignment == nil && len(st.Restarting) > 0 {
		// A summary reads no assignment: count each node's set instead.
		cmds := make(rueidis.Commands, len(st.Restarting))
		for i, h := range st.Restarting {
			cmds[i] = b.Scard().Key(k.assigned(h.Node)).Build()
		}
		for i, r := range client.DoMulti(ctx, cmds...) {
			n, err := r.AsInt64()
			if err != nil {
				return fmt.Errorf("%w: read restart holds: %w", ErrRedis, err)
			}
			st.Restarting[i].Keys = int(n)
		}
	}
	if r := st.LastRebalance; r != nil {
		budget, err := res[2].ToArray()
		if err != nil {
			return fmt.Errorf("%w: read move budget: %w", ErrRedis, err)
		}
		if len(budget) == 3 {
			pending, _ := budget[0].AsInt64()
			flying, _ := budget[1].AsInt64()
			limit, _ := budget[2].AsInt64()
			r.Pending, r.InFlight = int(pending), int(flying)
			if limit > 0 {
				r.Budget = int(limit)
				r.StepsLeft = (r.Pending + r.Budget - 1) / r.Budget
			}
		}
	}
	return nil
}
