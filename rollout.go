package dim

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Rolling deploys. By default a rolling restart moves keys twice: in place
// (stop, start with the same ID) the stopping node's keys move away and
// back; with a surge (a new node joins, then an old one stops) the joiner
// takes a share from everyone, then the leaver's keys spread. Two optional
// holds make each key move at most once:
//
//   - a restart hold (WithRestartHold): a node that stops keeps its
//     assignment for a while; the same node ID coming back finds its keys
//     and nothing else moves. The keys are dark for the restart instead.
//   - a join hold (WithJoinHold): a node that joins gets no keys until a
//     node leaves (or the hold ends); then it takes exactly the leaver's
//     keys.

// rolloutHolds are the restart and join holds in force.
type rolloutHolds struct {
	restarting map[string]nodeHold
	waiting    map[string]nodeHold
	sessions   map[string]string // live node → its session
}

// nodeHold is one node's hold: until when (server ms), and the session that
// took it (a restarting node is back once it has another).
type nodeHold struct {
	until   int64
	session string
}

// readHoldMap reads a hash of node → "until session" and keeps what is in
// force.
func readHoldMap(res rueidis.RedisResult, now int64) (map[string]nodeHold, error) {
	raw, err := res.AsStrMap()
	if err != nil {
		return nil, err
	}
	out := map[string]nodeHold{}
	for node, v := range raw {
		until, session, _ := strings.Cut(v, " ")
		if u, err := strconv.ParseInt(until, 10, 64); err == nil && u > now {
			out[node] = nodeHold{until: u, session: session}
		}
	}
	return out, nil
}

// isBack reports whether a restarting node runs again: live with another
// session than the one that stopped.
func (r *rolloutHolds) isBack(node string, live bool) bool {
	h, held := r.restarting[node]
	return held && live && r.sessions[node] != h.session
}

// rolloutPlan is how the holds shape one placement.
type rolloutPlan struct {
	prev   Assignment // the assignment to balance from: leavers' keys paired with joiners
	keys   []string   // the keys to balance: pinned ones left out
	pinned Assignment // keys that wait for their restarting node
	nodes  []Node     // the nodes that take keys
	// Holds to drop: restarting nodes that are back, joiners that took a
	// leaver's keys.
	back, joined []string
}

// apply pins the keys of restarting nodes and pairs the keys of nodes that
// left (or drain) with waiting joiners. nodes are the live nodes that may
// take keys, drains already left out; live are all of them.
func (r *rolloutHolds) apply(prev Assignment, keys []string, nodes []Node) rolloutPlan {
	p := rolloutPlan{prev: prev, pinned: Assignment{}}
	live := map[string]bool{}
	for _, n := range nodes {
		live[n.ID] = true
	}
	for node := range r.restarting {
		if r.isBack(node, live[node]) {
			p.back = append(p.back, node)
		}
	}
	slices.Sort(p.back)
	for key, node := range prev {
		// Pinned until it is back; while it is still stopping (live, same
		// session) it holds them anyway.
		if _, held := r.restarting[node]; held && !live[node] {
			p.pinned[key] = node
		}
	}
	for _, key := range keys {
		if _, ok := p.pinned[key]; !ok {
			p.keys = append(p.keys, key)
		}
	}
	var waiters []string
	for _, n := range nodes {
		_, waits := r.waiting[n.ID]
		_, restarting := r.restarting[n.ID]
		if waits && !restarting {
			waiters = append(waiters, n.ID)
		} else {
			p.nodes = append(p.nodes, n)
		}
	}
	if len(p.nodes) == 0 {
		// Nobody else takes keys: the joiners do.
		p.nodes, p.joined, waiters = nodes, waiters, nil
	}
	slices.Sort(waiters)
	taking := map[string]bool{}
	for _, n := range p.nodes {
		taking[n.ID] = true
	}
	orphans := map[string][]string{} // leaver → its keys
	for _, key := range p.keys {
		if node, ok := prev[key]; ok && !taking[node] && !slices.Contains(waiters, node) {
			orphans[node] = append(orphans[node], key)
		}
	}
	leavers := make([]string, 0, len(orphans))
	for node := range orphans {
		leavers = append(leavers, node)
	}
	slices.Sort(leavers)
	for i, leaver := range leavers {
		if i >= len(waiters) {
			break
		}
		if i == 0 {
			p.prev = maps.Clone(prev)
		}
		joiner := waiters[i]
		for _, key := range orphans[leaver] {
			p.prev[key] = joiner
		}
		p.joined = append(p.joined, joiner)
		for _, n := range nodes {
			if n.ID == joiner {
				p.nodes = append(p.nodes, n)
			}
		}
	}
	return p
}

// wake is when a hold ends (server ms), 0 if none.
func (r *rolloutHolds) wake() int64 {
	var w int64
	for _, h := range r.restarting {
		w = earliestNonZero(w, h.until)
	}
	for _, h := range r.waiting {
		w = earliestNonZero(w, h.until)
	}
	return w
}

// dropHolds removes holds that are over: restarting nodes that are back,
// joiners that took a leaver's keys.
func (e *elector) dropHolds(ctx context.Context, back, joined []string) {
	b := e.client.B()
	var cmds rueidis.Commands
	if len(back) > 0 {
		cmds = append(cmds, b.Hdel().Key(e.k.restarting).Field(back...).Build())
	}
	if len(joined) > 0 {
		cmds = append(cmds, b.Hdel().Key(e.k.joinWait).Field(joined...).Build())
	}
	e.bestEffort(ctx, "dropping rollout holds (they end by themselves)", cmds)
	for _, node := range joined {
		e.log.Info("a waiting joiner takes keys", "node", node)
	}
}

// hold records a restart or join hold for this node.
func (mb *membership) hold(ctx context.Context, key string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, mb.s.heartbeat)
	defer cancel()
	session, _ := mb.current()
	if err := mb.db().hold(ctx, key, mb.s.nodeID, d, session); err != nil {
		return fmt.Errorf("%w: record a hold: %w", ErrRedis, err)
	}
	return nil
}

// RestartHold is a node that stopped to restart, for Status: its keys stay
// assigned to it, not running, until it is back or the hold ends.
type RestartHold struct {
	Node string        `json:"node"`
	Left time.Duration `json:"left_ns"`
	Keys int           `json:"keys"`
}
