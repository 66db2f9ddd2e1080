package dim

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// SummaryLimit is how many problem keys, and how many keys at risk, a
// [Summary] lists at most. Its counts are always complete.
const SummaryLimit = 1000

// Summary is a bounded snapshot of a whole service, read atomically: who
// leads, the live nodes, how many keys are in each state, and the keys that
// do not run (at most [SummaryLimit] of them). What it costs Redis grows
// with the number of nodes and of keys that do not run, not with the number
// of keys that run, so it suits probes, dashboards and metrics of services of
// any size. [Status] is the full snapshot, every key included. Summary is
// plain data with JSON tags.
//
// Counts come from sets and counters that every script writing a key's
// state or owner keeps up to date, so they are exact once every node runs a
// version of dim that keeps them (during a rolling upgrade from an older one
// they may lag). Keys that are creating, or running, by their owner entry
// alone (see [Status.Keys]) have no set to list them from: the listed keys
// are looked for among a bounded number of each node's keys, so that a
// Summary may name fewer of them than its limit allows while it counts them
// all.
type Summary struct {
	Service string `json:"service"`
	// ServerTime is Redis's clock when the snapshot was taken.
	ServerTime time.Time `json:"server_time"`
	// Leader is the recorded leader, "" if none; LeaderLive tells whether it
	// is still a live member.
	Leader     string `json:"leader"`
	LeaderLive bool   `json:"leader_live"`
	Epoch      uint64 `json:"epoch"`
	// Nodes are the members whose lease has not expired, by ID, as in
	// [Status].
	Nodes []NodeStatus `json:"nodes"`
	// Assigned counts the keys in the assignment.
	Assigned int `json:"assigned"`
	// Running counts the keys running on live nodes.
	Running int `json:"running"`
	// States counts the keys live nodes published, by state: every
	// [KeyState], running included, with 0 for the states no key is in.
	States map[KeyState]int `json:"states"`
	// Unowned counts the keys assigned but not running on any live node:
	// Assigned minus Running, which is exact whenever every key that runs
	// is assigned (a key removed from the configs runs until its node has
	// stopped it, and then hides one unowned key).
	Unowned int `json:"unowned"`
	// OnDeadNodes counts the keys assigned to nodes that are no longer live
	// members: they do not run until the leader places them again.
	OnDeadNodes int `json:"on_dead_nodes"`
	// Problems counts the keys live nodes published in a state other than
	// running (creating, failing, hung, stopping, unknown); ProblemKeys
	// lists at most SummaryLimit of them, failing and hung ones first, and
	// ProblemsOmitted says how many were left out.
	Problems        int          `json:"problems"`
	ProblemKeys     []KeyProblem `json:"problem_keys"`
	ProblemsOmitted int          `json:"problems_omitted,omitempty"`
	// AtRisk counts the keys running on suspect nodes; AtRiskKeys lists at
	// most SummaryLimit of them, with the node in Node.
	AtRisk     int          `json:"at_risk"`
	AtRiskKeys []KeyProblem `json:"at_risk_keys"`
	// Moving counts the keys whose state comes from a node other than the
	// one they are assigned to, or that are no longer assigned: handoffs
	// under way. Unlike [Status.Misplaced] it includes the keys of dead
	// nodes until their new node claims them.
	Moving int `json:"moving"`
	// Quarantined counts the keys quarantined service-wide (see
	// [Status.Quarantined]): not assigned, so not in Unowned, and running
	// nowhere until tried again. QuarantinedKeys lists at most SummaryLimit
	// of them, by key.
	Quarantined     int          `json:"quarantined"`
	QuarantinedKeys []Quarantine `json:"quarantined_keys"`
	// Outage is set while the leader judges that most keys fail on every
	// node; see [Status.Outage].
	Outage *Outage `json:"outage,omitempty"`
	// Memory is what Redis says about its memory; see [Status.Memory].
	Memory *RedisMemory `json:"memory,omitempty"`
	// Frozen is set while a freeze holds voluntary moves back; see
	// [Status.Frozen].
	Frozen *FreezeStatus `json:"frozen,omitempty"`
	// Restarting lists the nodes whose keys wait for them to come back; see
	// [Status.Restarting].
	Restarting []RestartHold `json:"restarting"`
	// Grace is set while no claim is granted; see [Status.Grace].
	Grace *Grace `json:"grace,omitempty"`
	// LastRebalance is the outcome of the leader's last rebalance; nil
	// before the first one.
	LastRebalance *LastRebalance `json:"last_rebalance,omitempty"`
	// Pins counts the pinned keys; see [Status.Pins].
	Pins int `json:"pins,omitempty"`
	// Unplaceable counts the keys no live node may take, and
	// UnplaceableKeys names the first of them; see [Status.Unplaceable].
	Unplaceable     int      `json:"unplaceable,omitempty"`
	UnplaceableKeys []string `json:"unplaceable_keys,omitempty"`
}

// KeyProblem is one key listed in a [Summary], with its published state.
type KeyProblem struct {
	Key string `json:"key"`
	// AssignedTo is the node the key is assigned to, "" if none.
	AssignedTo string `json:"assigned_to"`
	KeyStatus
}

// Summary reads a bounded snapshot of the service from Redis: counts by
// state and the keys that do not run, at a cost that does not grow with the
// number of keys that run. [Manager.Status] reads everything. It may return
// an error wrapping [ErrRedis], or [ErrNotStarted] before Start.
func (m *Manager[C, I]) Summary(ctx context.Context) (*Summary, error) {
	if m.life.load() == phaseNew {
		return nil, ErrNotStarted
	}
	return readSummary(ctx, m.client, m.s.service, m.k, SummaryLimit)
}

// ReadSummary reads a bounded snapshot of a service from Redis without
// running a node, as the dimctl command does; see [Summary]. It returns an
// error wrapping [ErrInvalidOption] for a bad svc, [ErrUnknownService] when
// Redis holds nothing of the service, or [ErrRedis].
func ReadSummary(ctx context.Context, client rueidis.Client, svc Service) (*Summary, error) {
	k, err := svc.keys()
	if err != nil {
		return nil, err
	}
	sum, err := readSummary(ctx, client, svc.Name, k, SummaryLimit)
	if err != nil {
		return nil, err
	}
	if sum.Leader == "" && sum.Epoch == 0 && len(sum.Nodes) == 0 && sum.Assigned == 0 {
		return nil, fmt.Errorf("%w: %q has no nodes, leader or assignment in Redis", ErrUnknownService, svc.Name)
	}
	return sum, nil
}

// readSummary reads a Summary listing at most limit keys of each kind; with
// limit 0 it only counts, and leaves out the quarantines, unhealthy nodes,
// outage, drains, freeze and memory (the leader, which reads it so, knows
// them already).
func readSummary(ctx context.Context, client rueidis.Client, service string, k keyspace, limit int) (*Summary, error) {
	res, err := newStore(client, k).summary(ctx, limit)
	if err != nil {
		return nil, fmt.Errorf("%w: read summary: %w", ErrRedis, err)
	}
	now, _ := res[0].AsInt64()
	sum := &Summary{
		Service:     service,
		ServerTime:  time.UnixMilli(now).UTC(),
		States:      map[KeyState]int{},
		ProblemKeys: []KeyProblem{},
		AtRiskKeys:  []KeyProblem{},
	}

	leaderSession := sum.parseLeader(res[1])
	sessions, assignedLive := sum.parseNodes(res[2], res[3], now)
	sum.Running = sum.States[KeyRunning]
	sum.LeaderLive = sum.Leader != "" && leaderSession != "" && sessions[sum.Leader] == leaderSession

	if counts, _ := res[4].AsIntSlice(); len(counts) == 2 {
		sum.Assigned, sum.Moving = int(counts[0]), int(counts[1])
	}
	sum.Unowned = max(0, sum.Assigned-sum.Running)
	sum.OnDeadNodes = max(0, sum.Assigned-assignedLive)

	if g, _ := res[5].ToArray(); len(g) == 2 {
		left, _ := g[0].AsInt64()
		why, _ := g[1].ToString()
		if left > 0 {
			sum.Grace = &Grace{Left: time.Duration(left) * time.Millisecond, Reason: why}
		}
	}
	sum.parseKeys(res[6], res[7], sessions)
	sum.QuarantinedKeys = []Quarantine{}
	sum.Restarting = []RestartHold{}
	if limit > 0 {
		if err := sum.addVerdicts(ctx, client, k, sessions, limit); err != nil {
			return nil, err
		}
	}
	byKey := func(a, b KeyProblem) int { return strings.Compare(a.Key, b.Key) }
	slices.SortFunc(sum.ProblemKeys, byKey)
	slices.SortFunc(sum.AtRiskKeys, byKey)
	slices.SortFunc(sum.Nodes, func(a, b NodeStatus) int { return strings.Compare(a.ID, b.ID) })
	return sum, nil
}

// parseLeader reads the leader's part of the summary script's reply, and
// returns the leader's session.
func (sum *Summary) parseLeader(v rueidis.RedisMessage) string {
	leader, _ := v.ToArray()
	var leaderSession string
	if len(leader) == 6 {
		sum.Leader, _ = leader[0].ToString()
		leaderSession, _ = leader[1].ToString()
		e, _ := leader[2].ToString()
		sum.Epoch, _ = strconv.ParseUint(e, 10, 64)
		if at, err := leader[3].AsInt64(); err == nil {
			moves, _ := leader[4].AsInt64()
			msg, _ := leader[5].ToString()
			sum.LastRebalance = &LastRebalance{At: time.UnixMilli(at).UTC(), Moves: int(moves), Error: msg}
		}
	}
	return leaderSession
}

// parseNodes reads the key states and the nodes of the summary script's
// reply, at server time now. It returns the nodes' sessions and how many
// keys are assigned to live nodes.
func (sum *Summary) parseNodes(statesV, nodesV rueidis.RedisMessage, now int64) (map[string]string, int) {
	states, _ := statesV.AsStrSlice()
	for _, st := range states {
		sum.States[KeyState(st)] = 0
	}
	width := 7 + len(states)
	nodes, _ := nodesV.AsStrSlice()
	sessions := map[string]string{}
	suspect := map[string]bool{}
	assignedLive := 0
	for i := 0; i+width <= len(nodes); i += width {
		f := nodes[i : i+width]
		exp, _ := strconv.ParseFloat(f[1], 64)
		ttl, _ := strconv.ParseInt(f[4], 10, 64)
		ns := NodeStatus{ID: f[0], LeaseLeft: time.Duration(int64(exp)-now) * time.Millisecond, TTL: time.Duration(ttl) * time.Millisecond}
		ns.State, ns.Weight = nodeState(f[2], ns.LeaseLeft, ns.TTL)
		ns.ConfigError, ns.ConfigErrorAt, ns.ConfigErrorKeys = parseConfigError(f[5])
		ns.Assigned, _ = strconv.Atoi(f[6])
		assignedLive += ns.Assigned
		for j, st := range states {
			c, _ := strconv.Atoi(f[7+j])
			sum.States[KeyState(st)] += c
			if KeyState(st) == KeyRunning {
				ns.Running = c
				if ns.State == NodeSuspect {
					sum.AtRisk += c
				}
			} else {
				sum.Problems += c
			}
		}
		sessions[ns.ID] = f[3]
		suspect[ns.ID] = ns.State == NodeSuspect
		sum.Nodes = append(sum.Nodes, ns)
	}
	return sessions, assignedLive
}

// parseKeys reads the keys with problems and the keys at risk of the
// summary script's reply.
func (sum *Summary) parseKeys(problems, atRisk rueidis.RedisMessage, sessions map[string]string) {
	recs, _ := problems.AsStrSlice()
	for i := 0; i+3 < len(recs); i += 4 {
		p := KeyProblem{Key: recs[i], AssignedTo: recs[i+3], KeyStatus: KeyStatus{Node: recs[i+1]}}
		var r keyRecord
		if json.Unmarshal([]byte(recs[i+2]), &r) == nil {
			p.KeyStatus = keyStatusOf(r, sessions)
		}
		sum.ProblemKeys = append(sum.ProblemKeys, p)
	}
	sum.ProblemsOmitted = max(0, sum.Problems-len(sum.ProblemKeys))
	risky, _ := atRisk.AsStrSlice()
	for i := 0; i+2 < len(risky); i += 3 {
		sum.AtRiskKeys = append(sum.AtRiskKeys, KeyProblem{Key: risky[i], AssignedTo: risky[i+2],
			KeyStatus: KeyStatus{Node: risky[i+1], State: KeyRunning, Live: true}})
	}
}

// addVerdicts adds the leader's verdicts, holds, placement and memory,
// listing at most limit keys of each kind.
func (sum *Summary) addVerdicts(ctx context.Context, client rueidis.Client, k keyspace, sessions map[string]string, limit int) error {
	// The leader's verdicts: a few entries, not one per key that runs.
	vst := &Status{ServerTime: sum.ServerTime, Nodes: sum.Nodes, Keys: map[string]KeyStatus{}, LastRebalance: sum.LastRebalance}
	if err := readVerdicts(ctx, client, k, vst, sessions); err != nil {
		return err
	}
	sum.Quarantined = len(vst.Quarantined)
	sum.QuarantinedKeys = vst.Quarantined[:min(len(vst.Quarantined), limit)]
	sum.Outage = vst.Outage
	if err := readHoldStatus(ctx, client, k, vst); err != nil {
		return err
	}
	sum.Frozen = vst.Frozen
	sum.Restarting = vst.Restarting
	index := make(map[string]int, len(sum.Nodes))
	for i, n := range sum.Nodes {
		index[n.ID] = i
	}
	// vst.Nodes is sum.Nodes: labels and caps fill in place.
	if err := readPlacementStatus(ctx, client, k, vst, index); err != nil {
		return err
	}
	sum.Pins, sum.Unplaceable = len(vst.Pins), vst.UnplaceableCount
	sum.UnplaceableKeys = vst.Unplaceable[:min(len(vst.Unplaceable), limit)]
	sum.Memory = newStore(client, k).memory(ctx)
	return nil
}

// nodeState reads a node's weight entry ("pending" or a number) and lease:
// its state for Status and Summary, and its weight.
func nodeState(weight string, leaseLeft, ttl time.Duration) (state NodeState, w int) {
	state = NodeActive
	if weight == "pending" {
		state = NodePending
	} else {
		w, _ = strconv.Atoi(weight)
		if w == 0 {
			state = NodeDraining
		}
	}
	// A healthy node renews every heartbeat, at most (TTL − margin)/2: its
	// lease never runs below half its TTL.
	if ttl > 0 && leaseLeft < ttl/2 {
		state = NodeSuspect
	}
	return state, w
}

// parseConfigError reads a node's cfgerr entry ("" for none).
func parseConfigError(v string) (msg string, at time.Time, kept int) {
	var ce configError
	if v == "" || json.Unmarshal([]byte(v), &ce) != nil {
		return "", time.Time{}, 0
	}
	return ce.Err, time.UnixMilli(ce.At).UTC(), ce.Kept
}

// keyStatusOf turns a published record into a KeyStatus, live when its
// session is its node's current one (sessions: node → session of the live
// nodes).
func keyStatusOf(r keyRecord, sessions map[string]string) KeyStatus {
	ks := KeyStatus{Node: r.Node, State: r.State, Live: r.Session != "" && sessions[r.Node] == r.Session,
		Since: time.UnixMilli(r.Since).UTC(), Attempts: r.Attempts, LastError: r.Err}
	if r.Retry > 0 {
		ks.NextRetry = time.UnixMilli(r.Retry).UTC()
	}
	return ks
}
