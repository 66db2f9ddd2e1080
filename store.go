package dim

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// store is the seam between dim and its Redis protocol: one method per Lua
// script (scripts.go). Each method owns the order of the keys its script
// expects, its arguments and the parsing of its reply, so that the callers
// speak in Go values. A store holds no state of its own beyond what it needs
// to reach Redis, and never touches a Manager's: what a reply means for the
// node (fence, wait, book a claim) stays with the caller.
type store struct {
	c     rueidis.Client
	k     *keyspace
	plain *atomic.Bool // the server does not compile flagged scripts (see keepLua)
}

// newStore is a store for one service's keys outside a Manager (the admin
// functions, Status, Summary).
func newStore(c rueidis.Client, k keyspace) store {
	return store{c: c, k: &k, plain: new(atomic.Bool)}
}

// db is the Manager's store.
func (e *env) db() store {
	return store{c: e.client, k: &e.k, plain: &e.plainScripts}
}

// badReply is a reply that does not have the shape its script returns. The
// script ran: callers that book what a lost reply may have done need not do
// so for it.
type badReply struct{ msg string }

func (e *badReply) Error() string { return e.msg }

func unexpected(n int) error { return &badReply{msg: fmt.Sprintf("unexpected reply of %d values", n)} }

// joinReply is what joinScript answers.
type joinReply struct {
	session   string        // "" when refused
	grace     time.Duration // the grace period left; refused: how long a live session holds the ID
	gen       string        // the record's generation ("" without server ids)
	maxTTL    int64         // the largest node TTL of the live members (ms)
	oldLayout bool          // refused: the record is in an older dim's layout (see upgradeScript)
}

// join registers node with a fresh session (see joinScript).
func (s store) join(ctx context.Context, node string, ttl, floor time.Duration, durable string) (joinReply, error) {
	res, err := joinScript.Exec(ctx, s.c,
		[]string{s.k.nodes, s.k.fence, s.k.fleet, s.k.state},
		[]string{node, ms(ttl), ms(floor), durable}).ToArray()
	if err != nil {
		return joinReply{}, err
	}
	if len(res) != 5 {
		return joinReply{}, unexpected(len(res))
	}
	var r joinReply
	if r.session, err = res[0].ToString(); err != nil {
		return joinReply{}, err
	}
	wait, _ := res[2].AsInt64()
	r.grace = time.Duration(wait) * time.Millisecond
	r.gen, _ = res[3].ToString()
	r.maxTTL, _ = res[4].AsInt64()
	if r.session == "" && r.maxTTL < 0 {
		r.oldLayout, r.maxTTL = true, 0
	}
	return r, nil
}

// upgrade converts an older dim's record (see upgradeScript): 1 done or
// nothing to do, -1 a node of the older layout is live, -2 the key holds
// something dim did not write.
func (s store) upgrade(ctx context.Context) (int64, error) {
	return upgradeScript.Exec(ctx, s.c, append([]string{s.k.nodes}, s.k.legacyKeys()...), nil).AsInt64()
}

// heartbeatReply is what heartbeatScript answers.
type heartbeatReply struct {
	live      bool   // false: the lease has passed or the session was replaced
	server    int64  // the server's clock (ms)
	hasServer bool   // server was read
	gen       string // the record's generation
	maxTTL    int64  // the largest node TTL in the service (ms)
}

// heartbeat renews node's lease (see heartbeatScript).
func (s store) heartbeat(ctx context.Context, node, session string, ttl time.Duration, weight int, floor time.Duration, durable string) (heartbeatReply, error) {
	res, err := heartbeatScript.Exec(ctx, s.c, s.plain,
		[]string{s.k.nodes},
		[]string{node, session, ms(ttl), strconv.Itoa(weight), s.k.channel, ms(floor), durable}).ToArray()
	if err != nil {
		return heartbeatReply{}, err
	}
	if len(res) != 4 {
		return heartbeatReply{}, unexpected(len(res))
	}
	var r heartbeatReply
	var serr error
	r.server, serr = res[1].AsInt64()
	r.hasServer = serr == nil
	r.gen, _ = res[2].ToString()
	r.maxTTL, _ = res[3].AsInt64()
	ok, _ := res[0].AsInt64()
	r.live = ok == 1
	return r, nil
}

// verify re-asserts node's keys after a restore (see verifyScript): it
// returns the keys another node confirmed, and those it wrote.
func (s store) verify(ctx context.Context, node, session string, keys []string) (lost, wrote []string, err error) {
	res, err := verifyScript.Exec(ctx, s.c, s.plain, []string{s.k.owner, s.k.nodes, s.k.fence, s.k.state, s.k.assign},
		append([]string{node, session}, keys...)).ToArray()
	if err != nil {
		return nil, nil, err
	}
	if len(res) != 2 {
		return nil, nil, unexpected(len(res))
	}
	lost, _ = res[0].AsStrSlice()
	wrote, _ = res[1].AsStrSlice()
	return lost, wrote, nil
}

// drain marks node as stopping (see drainScript).
func (s store) drain(ctx context.Context, node, session string) error {
	return drainScript.Exec(ctx, s.c, s.plain, []string{s.k.nodes}, []string{node, session, s.k.channel}).Error()
}

// leave ends node's membership if session is still its current one (see
// leaveScript).
func (s store) leave(ctx context.Context, node, session string) error {
	return leaveScript.Exec(ctx, s.c, s.plain,
		[]string{s.k.nodes, s.k.cfgErr, s.k.traces, s.k.state, s.k.handoffs, s.k.labels},
		[]string{node, session, s.k.channel}).Error()
}

// members drops expired members and returns the live ones with the server
// time in ms (see membersScript).
func (s store) members(ctx context.Context) (now int64, live []member, err error) {
	res, err := membersScript.Exec(ctx, s.c, s.plain,
		[]string{s.k.nodes, s.k.cfgErr, s.k.traces, s.k.state, s.k.handoffs, s.k.labels},
		[]string{s.k.channel}).ToArray()
	if err != nil {
		return 0, nil, err
	}
	if len(res) == 0 || (len(res)-1)%4 != 0 {
		return 0, nil, fmt.Errorf("members: %w", unexpected(len(res)))
	}
	now, _ = res[0].AsInt64()
	for i := 1; i < len(res); i += 4 {
		id, _ := res[i].ToString()
		exp, _ := res[i+1].AsInt64()
		w, _ := res[i+2].AsInt64()
		labels, _ := res[i+3].ToString()
		live = append(live, member{id: id, expires: exp, weight: int(w), labels: labels})
	}
	return now, live, nil
}

// pin pins key to node; false if node is not live (see pinScript).
func (s store) pin(ctx context.Context, key, node string) (bool, error) {
	n, err := pinScript.Exec(ctx, s.c, []string{s.k.nodes, s.k.pins}, []string{key, node, s.k.channel}).AsInt64()
	return n == 1, err
}

// unpin removes key's pin and reports whether it had one (see unpinScript).
func (s store) unpin(ctx context.Context, key string) (bool, error) {
	n, err := unpinScript.Exec(ctx, s.c, []string{s.k.pins}, []string{key, s.k.channel}).AsInt64()
	return n == 1, err
}

// fleet reads the confirmed live nodes, the recorded size and the time since
// the last restart (see fleetScript).
func (s store) fleet(ctx context.Context) (fleet, error) {
	res, err := fleetScript.Exec(ctx, s.c, []string{s.k.nodes, s.k.fleet}, nil).AsIntSlice()
	if err != nil {
		return fleet{}, err
	}
	if len(res) != 3 {
		return fleet{}, unexpected(len(res))
	}
	since := time.Duration(res[2]) * time.Millisecond
	if res[2] < 0 {
		since = -1
	}
	return fleet{live: int(res[0]), size: int(res[1]), since: since}, nil
}

// fleetSize records the service's size, only a larger one unless forced, and
// returns the size recorded (see fleetSizeScript).
func (s store) fleetSize(ctx context.Context, n int, force bool) (int, error) {
	f := "0"
	if force {
		f = "1"
	}
	size, err := fleetSizeScript.Exec(ctx, s.c, []string{s.k.fleet}, []string{strconv.Itoa(n), f}).AsInt64()
	return int(size), err
}

// lead records node as leader under a new epoch; 0 if it is not live (see
// leadScript).
func (s store) lead(ctx context.Context, node, session string) (uint64, error) {
	v, err := leadScript.Exec(ctx, s.c,
		[]string{s.k.nodes, s.k.epoch, s.k.leader},
		[]string{node, session, s.k.channel}).ToString()
	if err != nil {
		return 0, err
	}
	epoch, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, &badReply{msg: fmt.Sprintf("leader epoch %q: %v", v, err)}
	}
	return epoch, nil
}

// leader reads the recorded leader and whether it is live (see
// leaderScript).
func (s store) leader(ctx context.Context) (recordedLeader, error) {
	res, err := leaderScript.Exec(ctx, s.c, []string{s.k.nodes, s.k.leader}, nil).ToArray()
	if err != nil {
		return recordedLeader{}, err
	}
	if len(res) != 3 {
		return recordedLeader{}, fmt.Errorf("leader: %w", unexpected(len(res)))
	}
	var st recordedLeader
	st.node, _ = res[0].ToString()
	e, _ := res[1].ToString()
	st.epoch, _ = strconv.ParseUint(e, 10, 64)
	live, _ := res[2].AsInt64()
	st.live = live == 1
	return st, nil
}

// abdicate removes the leader's record if epoch is still current (see
// abdicateScript).
func (s store) abdicate(ctx context.Context, epoch uint64) error {
	return abdicateScript.Exec(ctx, s.c, s.plain, []string{s.k.epoch, s.k.leader}, []string{strconv.FormatUint(epoch, 10)}).Error()
}

// forceGate lets one node at a time force out a dead leader: true if node
// may (see forceGateScript).
func (s store) forceGate(ctx context.Context, node string, ttl time.Duration) (bool, error) {
	ok, err := forceGateScript.Exec(ctx, s.c, []string{s.k.forcing}, []string{node, ms(ttl)}).AsInt64()
	return ok == 1, err
}

// rebalanceResult is the outcome of the leader's last rebalance, as
// resultScript records it.
type rebalanceResult struct {
	moves, pending, inFlight, budget int
	err                              string
}

// result records the outcome of a rebalance if epoch is still the leader's
// (see resultScript).
func (s store) result(ctx context.Context, epoch uint64, r rebalanceResult) error {
	return resultScript.Exec(ctx, s.c, s.plain, []string{s.k.epoch, s.k.leader},
		[]string{strconv.FormatUint(epoch, 10), strconv.Itoa(r.moves), r.err, strconv.Itoa(r.pending),
			strconv.Itoa(r.inFlight), strconv.Itoa(r.budget)}).Error()
}

// write applies a chunk of the assignment's diff for epoch (see
// writeScript): nodes are the nodes involved, numbered from 1 in groups,
// tell says which of them to tell now, groups are writeGroups' output. It
// returns false if the epoch is stale.
func (s store) write(ctx context.Context, epoch uint64, trace string, nodes []string, tell []bool, groups []string) (bool, error) {
	keys := make([]string, 0, 6+len(nodes))
	keys = append(keys, s.k.epoch, s.k.assign, s.k.traces, s.k.nodes, s.k.owner, s.k.state)
	args := make([]string, 0, 4+2*len(nodes)+len(groups))
	args = append(args, strconv.FormatUint(epoch, 10), s.k.channel, trace, strconv.Itoa(len(nodes)))
	for _, n := range nodes {
		keys = append(keys, s.k.assigned(n))
		args = append(args, n)
	}
	for _, t := range tell {
		args = append(args, map[bool]string{true: "1", false: "0"}[t])
	}
	args = append(args, groups...)
	ok, err := writeScript.Exec(ctx, s.c, keys, args).AsInt64()
	return ok == 1, err
}

// claimReply is what claimScript answers.
type claimReply struct {
	status int64         // 1 ok, -1 the node is not live, -2 a grace period runs
	wait   time.Duration // status -2: the grace period left
	first  uint64        // the token of the first granted key; the others follow in order
	codes  []string      // per key: "+" granted, "0" not assigned to the node, "-" held by another live node
}

// claim takes ownership of keys for node (see claimScript). An error that is
// not a *badReply may hide a claim that ran with its reply lost.
func (s store) claim(ctx context.Context, node, session string, floor time.Duration, durable string, keys []string) (claimReply, error) {
	args := append([]string{node, session, ms(floor), durable}, keys...)
	res, err := claimScript.Exec(ctx, s.c,
		[]string{s.k.nodes, s.k.assign, s.k.owner, s.k.fence, s.k.state}, args).ToArray()
	if err != nil {
		return claimReply{}, err
	}
	if len(res) < 2 {
		return claimReply{}, unexpected(len(res))
	}
	var r claimReply
	r.status, _ = res[0].AsInt64()
	if r.status != 1 {
		wait, _ := res[1].AsInt64()
		r.wait = time.Duration(wait) * time.Millisecond
		return r, nil
	}
	if len(res) != len(keys)+3 {
		return claimReply{}, &badReply{msg: fmt.Sprintf("unexpected reply of %d values for %d keys", len(res), len(keys))}
	}
	first, _ := res[2].ToString()
	if r.first, err = strconv.ParseUint(first, 10, 64); err != nil {
		return claimReply{}, &badReply{msg: fmt.Sprintf("first token %q: %v", first, err)}
	}
	r.codes = make([]string, len(keys))
	for i := range keys {
		r.codes[i], _ = res[i+3].ToString()
	}
	return r, nil
}

// release gives up node's keys with their published states (see
// releaseScript).
func (s store) release(ctx context.Context, node, session string, keys []string) error {
	return releaseScript.Exec(ctx, s.c, s.plain, []string{s.k.owner, s.k.state, s.k.nodes, s.k.assign},
		append([]string{node, session, s.k.channel}, keys...)).Error()
}

// state publishes what node's keys do (see stateScript): run are keys that
// run since since (unix ms), pairs are key, record (JSON, or "" to drop the
// node's own record). It returns whether the session was live (a session
// that is not writes nothing), and the keys the script refused.
func (s store) state(ctx context.Context, node, session string, since int64, run, pairs []string) (live bool, refused []string, err error) {
	args := make([]string, 0, 4+len(run)+len(pairs))
	args = append(args, node, session, strconv.FormatInt(since, 10), strconv.Itoa(len(run)))
	args = append(append(args, run...), pairs...)
	res, err := stateScript.Exec(ctx, s.c, s.plain, []string{s.k.nodes, s.k.owner, s.k.state, s.k.assign}, args).ToArray()
	if err == nil && len(res) == 0 {
		err = errors.New("empty reply")
	}
	if err != nil {
		return false, nil, err
	}
	ok, _ := res[0].AsInt64()
	for _, r := range res[1:] {
		key, _ := r.ToString()
		refused = append(refused, key)
	}
	return ok == 1, refused, nil
}

// avoid records which keys node cannot run (see avoidScript): pairs are
// key, cooldown_ms ("0": until removed, "-": remove).
func (s store) avoid(ctx context.Context, node string, pairs []string) error {
	return avoidScript.Exec(ctx, s.c, []string{s.k.avoid}, append([]string{node, s.k.channel}, pairs...)).Error()
}

// forgive drops the give-ups of keys (see forgiveScript).
func (s store) forgive(ctx context.Context, keys []string) error {
	return forgiveScript.Exec(ctx, s.c, []string{s.k.avoid}, keys).Error()
}

// sweep looks at one page of owner entries from cursor and returns the next
// cursor ("0" at the end; see sweepScript).
func (s store) sweep(ctx context.Context, cursor string, count int) (string, error) {
	return sweepScript.Exec(ctx, s.c, []string{s.k.nodes, s.k.assign, s.k.owner, s.k.state},
		[]string{cursor, strconv.Itoa(count)}).ToString()
}

// drainNode drains a live node for d (see drainNodeScript): code 1 with the
// drain's end, -1 the node is not live, -2 no node would be left to take keys.
func (s store) drainNode(ctx context.Context, node string, d time.Duration) (code int64, until time.Time, err error) {
	res, err := drainNodeScript.Exec(ctx, s.c, []string{s.k.nodes, s.k.drains}, []string{node, ms(d), s.k.channel}).AsIntSlice()
	if err != nil {
		return 0, time.Time{}, err
	}
	if len(res) == 0 || (res[0] == 1 && len(res) != 2) {
		return 0, time.Time{}, unexpected(len(res))
	}
	if res[0] != 1 {
		return res[0], time.Time{}, nil
	}
	return 1, time.UnixMilli(res[1]).UTC(), nil
}

// undrain ends node's drain and reports whether one was in force (see
// undrainScript).
func (s store) undrain(ctx context.Context, node string) (bool, error) {
	n, err := undrainScript.Exec(ctx, s.c, []string{s.k.drains}, []string{node, s.k.channel}).AsInt64()
	return n == 1, err
}

// freeze freezes the service for d on behalf of who, unless a freeze is in
// force: then it returns the time that one has left (see freezeScript).
func (s store) freeze(ctx context.Context, who string, d time.Duration) (time.Duration, error) {
	left, err := freezeScript.Exec(ctx, s.c, []string{s.k.freeze}, []string{who, ms(d), s.k.channel}).AsInt64()
	return time.Duration(left) * time.Millisecond, err
}

// thaw ends a freeze and reports whether one was in force (see thawScript).
func (s store) thaw(ctx context.Context) (bool, error) {
	n, err := thawScript.Exec(ctx, s.c, []string{s.k.freeze}, []string{s.k.channel}).AsInt64()
	return n == 1, err
}

// hold records node's hold in hash (restarting or joinWait) for d on Redis's
// clock, with the session it was taken in (see holdScript).
func (s store) hold(ctx context.Context, hash, node string, d time.Duration, session string) error {
	return holdScript.Exec(ctx, s.c, []string{hash}, []string{node, ms(d), session}).Error()
}

// purge deletes keys of a retired service unless a member is live (see
// purgeScript): it returns how many it deleted, and live true when it
// refused.
func (s store) purge(ctx context.Context, keys []string) (deleted int, live bool, err error) {
	n, err := purgeScript.Exec(ctx, s.c, append([]string{s.k.nodes}, keys...), nil).AsInt64()
	if err != nil {
		return 0, false, err
	}
	if n < 0 {
		return 0, true, nil
	}
	return int(n), false, nil
}

// status reads everything a Status needs in one atomic step (see
// statusScript). readStatus turns the reply into a Status: the reply has the
// shape of that type, and parsing it stays beside it.
func (s store) status(ctx context.Context) ([]rueidis.RedisMessage, error) {
	res, err := statusScript.Exec(ctx, s.c,
		[]string{s.k.nodes, s.k.leader, s.k.assign, s.k.owner, s.k.state, s.k.cfgErr}, nil).ToArray()
	if err != nil {
		return nil, err
	}
	if len(res) != 7 {
		return nil, unexpected(len(res))
	}
	return res, nil
}

// summary reads what a Summary needs in one atomic step, listing at most
// limit keys of each kind (see summaryScript). Summary parses the reply.
func (s store) summary(ctx context.Context, limit int) ([]rueidis.RedisMessage, error) {
	res, err := summaryScript.Exec(ctx, s.c,
		[]string{s.k.nodes, s.k.leader, s.k.assign, s.k.state, s.k.cfgErr, s.k.owner},
		[]string{strconv.Itoa(limit), s.k.assigned("")}).ToArray()
	if err != nil {
		return nil, err
	}
	if len(res) != 8 {
		return nil, unexpected(len(res))
	}
	return res, nil
}

// memory reads INFO memory on the server that holds the service's keys (see
// memoryScript); nil if the server does not answer it (a user without +info,
// the embedded server).
func (s store) memory(ctx context.Context) *RedisMemory {
	return parseMemory(memoryScript.Exec(ctx, s.c, []string{s.k.nodes}, nil).ToString())
}
