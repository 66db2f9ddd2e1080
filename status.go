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

// Status is a snapshot of a whole service as Redis holds it, read atomically:
// who leads, which nodes are live, what is assigned where, who runs what, and
// what is still moving. It is plain data with JSON tags, for dashboards and
// the dimctl command.
type Status struct {
	Service string `json:"service"`
	// ServerTime is Redis's clock when the snapshot was taken.
	ServerTime time.Time `json:"server_time"`
	// Leader is the recorded leader, "" if none; LeaderLive tells whether it
	// is still a live member.
	Leader     string `json:"leader"`
	LeaderLive bool   `json:"leader_live"`
	Epoch      uint64 `json:"epoch"`
	// Nodes are the members whose lease has not expired, by ID.
	Nodes []NodeStatus `json:"nodes"`
	// Assignment maps every key to the node it is assigned to.
	Assignment Assignment `json:"assignment"`
	// Owners maps every claimed key to the node that claimed it.
	Owners map[string]Owner `json:"owners"`
	// Keys maps every key some node published a state for, or that a
	// node owns, to that state: what actually runs, as the node that holds
	// the key says (a key it owns and published nothing else for is
	// creating, or running once it said so).
	Keys map[string]KeyStatus `json:"keys"`
	// Unowned lists keys assigned but not running on any live node: not
	// running anywhere (claimed and failing, hung or still creating
	// included).
	Unowned []string `json:"unowned"`
	// AtRisk lists keys running on suspect nodes: they may be down already.
	AtRisk []string `json:"at_risk"`
	// Misplaced lists keys claimed by a live node they are no longer
	// assigned to: handoffs still under way.
	Misplaced []string `json:"misplaced"`
	// Grace is set while no claim is granted because Redis's record of the
	// service is absent or cannot be trusted; nil otherwise.
	Grace *Grace `json:"grace,omitempty"`
	// LastRebalance is the outcome of the leader's last rebalance; nil
	// before the first one.
	LastRebalance *LastRebalance `json:"last_rebalance,omitempty"`
	// Quarantined lists the keys quarantined service-wide, by key: they are
	// not assigned (so not in Unowned) and run nowhere until tried again.
	Quarantined []Quarantine `json:"quarantined"`
	// Memory is what Redis says about its memory; nil when it does not say
	// (a user without +info). Memory.OutOfMemory means nothing new starts.
	Memory *RedisMemory `json:"memory,omitempty"`
	// Restarting lists nodes that stopped to restart (see WithRestartHold):
	// their keys stay assigned to them, not running, until they are back.
	Restarting []RestartHold `json:"restarting"`
	// Frozen is set while a freeze holds voluntary moves back (see Freeze).
	Frozen *FreezeStatus `json:"frozen,omitempty"`
	// Outage is set while the leader judges that most keys fail on every
	// node; nil otherwise.
	Outage *Outage `json:"outage,omitempty"`
	// Pins maps each pinned key to the node an operator pinned it to (see
	// Pin); a pin holds while that node is live and meets the key's
	// requirements.
	Pins map[string]string `json:"pins,omitempty"`
	// Unplaceable lists, sorted, keys that no live node may take at the
	// leader's last rebalance (no node meets their requirements, or every
	// one that does is at its cap): they run nowhere. At most the first
	// 100 are named; UnplaceableCount counts them all.
	Unplaceable      []string `json:"unplaceable,omitempty"`
	UnplaceableCount int      `json:"unplaceable_count,omitempty"`
}

// Grace is a grace period during which no claim is granted: nodes that
// Redis has forgotten may still run instances until their leases end.
type Grace struct {
	// Left is how long it still runs.
	Left time.Duration `json:"left_ns"`
	// Reason is GraceNew or GraceRestored.
	Reason string `json:"reason"`
}

// Reasons for a grace period.
const (
	// GraceNew: Redis holds no record of the service: its first start, or
	// a Redis that lost its data. The first start of a service waits one
	// node TTL before any instance starts.
	GraceNew = "new"
	// GraceRestored: Redis restarted from a snapshot or log, or failed over,
	// since the record was written, so the record may be older than what
	// nodes did; see docs/SAFETY.md.
	GraceRestored = "restored"
)

// NodeState is what a live node does, as [Status] and [Summary] show it.
type NodeState string

// The states of a node.
const (
	// NodeActive takes keys.
	NodeActive NodeState = "active"
	// NodePending has joined; its first heartbeat is not yet seen, and
	// until it is the node gets no keys.
	NodePending NodeState = "pending"
	// NodeDraining is stopping: its keys move to other nodes.
	NodeDraining NodeState = "draining"
	// NodeDrained is drained by an operator (see [DrainNode]): a live
	// member that gets no keys until the drain ends.
	NodeDrained NodeState = "drained"
	// NodeWaiting is a joiner held back by a join hold (see
	// [WithJoinHold]) until a leaving node's keys are its to take.
	NodeWaiting NodeState = "waiting"
	// NodeSuspect has not renewed its lease for more than half its node
	// TTL: it is probably gone, and its keys are at risk.
	NodeSuspect NodeState = "suspect"
)

// NodeStatus is one live member of a service.
type NodeStatus struct {
	ID string `json:"id"`
	// Weight is the node's weight; 0 while it drains before stopping.
	Weight int `json:"weight"`
	// Labels, MaxKeys and MaxCost are what the node declared with
	// WithLabels and WithCaps at its join (0: no cap).
	Labels  map[string]string `json:"labels,omitempty"`
	MaxKeys int               `json:"max_keys,omitempty"`
	MaxCost int               `json:"max_cost,omitempty"`
	// State is what the node does (see [NodeState]).
	State NodeState `json:"state"`
	// LeaseLeft is how long the lease runs without renewal.
	LeaseLeft time.Duration `json:"lease_left_ns"`
	// TTL is the node TTL the node declared.
	TTL time.Duration `json:"ttl_ns"`
	// ConfigError is the node's last failed getConfig, "" once one
	// succeeds again; while it fails the node keeps ConfigErrorKeys keys as
	// they were (nothing new starts or stops for them).
	ConfigError     string    `json:"config_error,omitempty"`
	ConfigErrorAt   time.Time `json:"config_error_at,omitzero"`
	ConfigErrorKeys int       `json:"config_error_keys,omitempty"`
	// Assigned counts the keys assigned to the node, Running those it says
	// run there (createInstance returned and the instance's context is
	// live).
	Assigned int `json:"assigned"`
	Running  int `json:"running"`
	// Prepared counts the instances the node prepared for keys that move to
	// it, and Handing the keys it still runs until their new owner has
	// prepared (see WithPrepare).
	Prepared int `json:"prepared,omitempty"`
	Handing  int `json:"handing,omitempty"`
	// WaitingFor is how long a join hold still keeps the node without keys
	// unless another node leaves (see WithJoinHold); its State is then
	// [NodeWaiting].
	WaitingFor time.Duration `json:"waiting_for_ns,omitempty"`
	// DrainedFor is how long an operator's drain still keeps keys off the
	// node (see DrainNode); 0 if it is not drained.
	DrainedFor time.Duration `json:"drained_for_ns,omitempty"`
	// Unhealthy is set while the node gets no keys (or one probe key)
	// because keys failed there that run on other nodes.
	Unhealthy *Unhealthy `json:"unhealthy,omitempty"`
}

// KeyStatus is what one key is doing, as the node that holds it published
// it.
type KeyStatus struct {
	Node  string   `json:"node"`
	State KeyState `json:"state"`
	// Live is false when the node's session is no longer live: then the
	// state is stale and the key does not run there.
	Live bool `json:"live"`
	// Since is when the node entered the state, by its clock.
	Since time.Time `json:"since"`
	// Attempts, NextRetry and LastError describe a failing key.
	Attempts  int       `json:"attempts,omitempty"`
	NextRetry time.Time `json:"next_retry,omitzero"`
	LastError string    `json:"last_error,omitempty"`
}

// Owner is who claimed a key, with the claim's fencing token.
type Owner struct {
	Node  string `json:"node"`
	Token uint64 `json:"token"`
	Live  bool   `json:"live"`
}

// Status reads a snapshot of the service from Redis. It may return an
// error wrapping [ErrRedis], or [ErrNotStarted] before Start.
func (m *Manager[C, I]) Status(ctx context.Context) (*Status, error) {
	if m.life.load() == phaseNew {
		return nil, ErrNotStarted
	}
	return readStatus(ctx, m.client, m.s.service, m.k)
}

// ReadStatus reads a snapshot of a service from Redis without running a
// node, as the dimctl command does. It returns an error wrapping
// [ErrInvalidOption] for a bad svc, [ErrUnknownService] when Redis holds
// nothing of the service, or [ErrRedis].
func ReadStatus(ctx context.Context, client rueidis.Client, svc Service) (*Status, error) {
	k, err := svc.keys()
	if err != nil {
		return nil, err
	}
	st, err := readStatus(ctx, client, svc.Name, k)
	if err != nil {
		return nil, err
	}
	if st.Leader == "" && st.Epoch == 0 && len(st.Nodes) == 0 && len(st.Assignment) == 0 && len(st.Owners) == 0 {
		return nil, fmt.Errorf("%w: %q has no nodes, leader or assignment in Redis", ErrUnknownService, svc.Name)
	}
	return st, nil
}

// RequestRebalance asks the leader of a service for an immediate rebalance
// with fresh configs, without running a node, and waits for the leader's
// answer: the moves it made, or an error wrapping [ErrRebalance] with the
// leader's reason, or [ErrInvalidOption] for a bad svc. Without a leader to
// answer, it waits until ctx ends and returns an error wrapping ctx.Err().
func RequestRebalance(ctx context.Context, client rueidis.Client, svc Service) (*RebalanceResult, error) {
	k, err := svc.keys()
	if err != nil {
		return nil, err
	}
	id := randomSuffix() + randomSuffix()
	answers := make(chan []string, 1)
	// Closed, not returned to the pool: a connection returned after a
	// subscription is reset with UNSUBSCRIBE and DISCARD, which a user
	// for one service need not be allowed.
	dc, _ := client.Dedicate()
	defer dc.Close()
	lost := dc.SetPubSubHooks(rueidis.PubSubHooks{OnMessage: func(msg rueidis.PubSubMessage) {
		if verb, args := parseEvent(msg.Message); verb == evRebalanced && len(args) >= 4 && args[0] == id {
			select {
			case answers <- args:
			default:
			}
		}
	}})
	if err := dc.Do(ctx, dc.B().Subscribe().Channel(k.channel).Build()).Error(); err != nil {
		return nil, fmt.Errorf("%w: subscribe: %w", ErrRedis, err)
	}
	if err := client.Do(ctx, client.B().Publish().Channel(k.channel).Message(evRebalance+" "+id).Build()).Error(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRedis, err)
	}
	select {
	case args := <-answers:
		epoch, _ := strconv.ParseUint(args[1], 10, 64)
		moves, _ := strconv.Atoi(args[2])
		if args[3] != "ok" {
			return nil, fmt.Errorf("%w: the leader (epoch %d) reports: %s", ErrRebalance, epoch, strings.Join(args[4:], " "))
		}
		return &RebalanceResult{Epoch: epoch, Moves: moves}, nil
	case err := <-lost:
		return nil, fmt.Errorf("%w: subscription lost: %w", ErrRedis, err)
	case <-ctx.Done():
		return nil, fmt.Errorf("no leader answered the rebalance request: %w", ctx.Err())
	}
}

// RebalanceResult is the leader's answer to [RequestRebalance].
type RebalanceResult struct {
	// Epoch is the epoch of the leader that rebalanced.
	Epoch uint64 `json:"epoch"`
	// Moves is how many keys moved between live nodes.
	Moves int `json:"moves"`
}

// LastRebalance is the outcome of the leader's last rebalance.
type LastRebalance struct {
	At    time.Time `json:"at"`
	Moves int       `json:"moves"`
	// Pending counts the voluntary moves held for later steps by the move
	// budget or a freeze, InFlight those started and not yet landed.
	Pending  int `json:"pending,omitempty"`
	InFlight int `json:"in_flight,omitempty"`
	// Budget is the move budget per step the leader applied (0: none), and
	// StepsLeft the steps the pending moves still take under it.
	Budget    int `json:"budget,omitempty"`
	StepsLeft int `json:"steps_left,omitempty"`
	// Error is the reason it failed, "" if it succeeded.
	Error string `json:"error,omitempty"`
}

func readStatus(ctx context.Context, client rueidis.Client, service string, k keyspace) (*Status, error) {
	res, err := newStore(client, k).status(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: read status: %w", ErrRedis, err)
	}
	now, _ := res[0].AsInt64()
	st := &Status{
		Service:    service,
		ServerTime: time.UnixMilli(now).UTC(),
		Assignment: Assignment{},
		Owners:     map[string]Owner{},
		Keys:       map[string]KeyStatus{},
	}
	leaderSession := st.parseLeader(res[1])
	sessions, index := st.parseNodes(res[2], now)
	st.LeaderLive = st.Leader != "" && sessions[st.Leader] == leaderSession && leaderSession != ""
	st.parseKeys(res[3], res[4], res[6], sessions)
	st.derive(index)
	if g, _ := res[5].ToArray(); len(g) == 2 {
		left, _ := g[0].AsInt64()
		why, _ := g[1].ToString()
		if left > 0 {
			st.Grace = &Grace{Left: time.Duration(left) * time.Millisecond, Reason: why}
		}
	}
	if err := readVerdicts(ctx, client, k, st, sessions); err != nil {
		return nil, err
	}
	if err := readHoldStatus(ctx, client, k, st); err != nil {
		return nil, err
	}
	if err := readPlacementStatus(ctx, client, k, st, index); err != nil {
		return nil, err
	}
	st.Memory = newStore(client, k).memory(ctx)
	slices.SortFunc(st.Nodes, func(a, b NodeStatus) int { return strings.Compare(a.ID, b.ID) })
	return st, nil
}

// parseLeader reads the leader's record: who, its epoch and last
// rebalance. It returns the leader's session.
func (st *Status) parseLeader(v rueidis.RedisMessage) (session string) {
	leader, _ := v.ToArray()
	if len(leader) != 6 {
		return ""
	}
	st.Leader, _ = leader[0].ToString()
	session, _ = leader[1].ToString()
	e, _ := leader[2].ToString()
	st.Epoch, _ = strconv.ParseUint(e, 10, 64)
	if at, err := leader[3].AsInt64(); err == nil {
		moves, _ := leader[4].AsInt64()
		msg, _ := leader[5].ToString()
		st.LastRebalance = &LastRebalance{At: time.UnixMilli(at).UTC(), Moves: int(moves), Error: msg}
	}
	return session
}

// parseNodes reads the live nodes (six fields each: id, expiry, weight,
// session, ttl, config error). It returns each node's session and its
// index in st.Nodes.
func (st *Status) parseNodes(v rueidis.RedisMessage, now int64) (sessions map[string]string, index map[string]int) {
	sessions, index = map[string]string{}, map[string]int{}
	nodes, _ := v.AsStrSlice()
	for i := 0; i+5 < len(nodes); i += 6 {
		id := nodes[i]
		exp, _ := strconv.ParseFloat(nodes[i+1], 64)
		ttl, _ := strconv.ParseInt(nodes[i+4], 10, 64)
		ns := NodeStatus{ID: id, LeaseLeft: time.Duration(int64(exp)-now) * time.Millisecond,
			TTL: time.Duration(ttl) * time.Millisecond}
		ns.State, ns.Weight = nodeState(nodes[i+2], ns.LeaseLeft, ns.TTL)
		if v := nodes[i+5]; v != "" {
			var ce configError
			if json.Unmarshal([]byte(v), &ce) == nil {
				ns.ConfigError, ns.ConfigErrorAt, ns.ConfigErrorKeys = ce.Err, time.UnixMilli(ce.At).UTC(), ce.Kept
			}
		}
		sessions[id] = nodes[i+3]
		index[id] = len(st.Nodes)
		st.Nodes = append(st.Nodes, ns)
	}
	return sessions, index
}

// parseKeys reads the assignment, the owner entries and the keys' state
// records. A key without a record is what its owner entry says (see
// keyspace).
func (st *Status) parseKeys(assign, owner, state rueidis.RedisMessage, sessions map[string]string) {
	if a, _ := assign.AsStrMap(); a != nil {
		st.Assignment = a
	}
	owners, _ := owner.AsStrMap()
	implicit := map[string]keyRecord{}
	for key, v := range owners {
		o, ok := parseOwner(v)
		if !ok {
			continue
		}
		st.Owners[key] = Owner{Node: o.node, Token: o.token, Live: sessions[o.node] == o.session}
		implicit[key] = o.implicit
	}
	states, _ := state.AsStrMap()
	for key, v := range states {
		var r keyRecord
		if json.Unmarshal([]byte(v), &r) != nil {
			continue
		}
		st.Keys[key] = keyStatusOf(r, sessions)
	}
	for key, r := range implicit {
		if _, ok := st.Keys[key]; !ok {
			st.Keys[key] = keyStatusOf(r, sessions)
		}
	}
}

// derive counts each node's assigned and running keys and lists, sorted,
// the keys not running where assigned, at risk on a suspect node, and
// running where they are not assigned.
func (st *Status) derive(index map[string]int) {
	for key, node := range st.Assignment {
		if i, ok := index[node]; ok {
			st.Nodes[i].Assigned++
		}
		if ks, ok := st.Keys[key]; !ok || !ks.Live || ks.State != KeyRunning {
			st.Unowned = append(st.Unowned, key)
		}
	}
	for key, ks := range st.Keys {
		if !ks.Live || ks.State != KeyRunning {
			continue
		}
		if i, ok := index[ks.Node]; ok {
			st.Nodes[i].Running++
			if st.Nodes[i].State == NodeSuspect {
				st.AtRisk = append(st.AtRisk, key)
			}
		}
	}
	for key, o := range st.Owners {
		if o.Live && st.Assignment[key] != o.Node {
			st.Misplaced = append(st.Misplaced, key)
		}
	}
	slices.Sort(st.Unowned)
	slices.Sort(st.AtRisk)
	slices.Sort(st.Misplaced)
}

// readPlacementStatus reads the nodes' labels and caps, the pins and the
// unplaceable keys.
func readPlacementStatus(ctx context.Context, client rueidis.Client, k keyspace, st *Status, index map[string]int) error {
	res := client.DoMulti(ctx,
		client.B().Hgetall().Key(k.labels).Build(),
		client.B().Hgetall().Key(k.pins).Build(),
		client.B().Get().Key(k.unplace).Build())
	labels, err := res[0].AsStrMap()
	if err != nil {
		return fmt.Errorf("%w: read labels: %w", ErrRedis, err)
	}
	for id, v := range labels {
		if i, ok := index[id]; ok {
			l := parseNodeLabels(v)
			st.Nodes[i].Labels, st.Nodes[i].MaxKeys, st.Nodes[i].MaxCost = l.Labels, l.MaxKeys, l.MaxCost
		}
	}
	if st.Pins, err = res[1].AsStrMap(); err != nil {
		return fmt.Errorf("%w: read pins: %w", ErrRedis, err)
	}
	if len(st.Pins) == 0 {
		st.Pins = nil
	}
	v, err := res[2].ToString()
	if rueidis.IsRedisNil(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: read unplaceable keys: %w", ErrRedis, err)
	}
	var r unplaceableRecord
	if json.Unmarshal([]byte(v), &r) == nil {
		st.Unplaceable, st.UnplaceableCount = r.Keys, r.N
	}
	return nil
}
