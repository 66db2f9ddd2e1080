package chaos

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/faultproxy"
)

var (
	chaosDuration = flag.Duration("chaos.duration", 40*time.Second, "how long the seeded chaos run injects faults (scripts/chaos runs it long)")
	chaosSeed     = flag.Uint64("chaos.seed", 0, "seed of the chaos schedule; 0 picks one (it is printed)")
	chaosNodes    = flag.Int("chaos.nodes", 6, "node processes in the chaos run (5-7)")
	chaosKeys     = flag.Int("chaos.keys", 20, "configured keys at the start of the chaos run")
	chaosReport   = flag.String("chaos.report", "", "write the chaos run's results as JSON to this file")
)

// chaosBudget is the move budget of every node of the chaos run
// (WithMoveBudget(chaosBudget, 0)): a node that comes back after a fault
// takes its share a few keys at a time.
const chaosBudget = 3

// faultKinds are the faults of the chaos run. The schedule deals them
// round-robin from a deck shuffled anew (from the seed) each time it runs
// out, so that every kind comes up equally often, the slow ones included.
var faultKinds = []string{
	"crash", "leader-crash", "multi-crash", "service-restart", "graceful-stop", "pause",
	"cut-upstream", "cut-downstream", "cut-both", "latency-low", "latency-high",
	"redis-restart", "redis-outage", "redis-down", "redis-restart-rdb", "redis-restart-aof", "failover",
	"churn", "callbacks", "mixed-timing", "mass-slow-disconnect", "keyfn-hang", "keyfn-panic",
}

// deck deals fault kinds round-robin in a seeded shuffled order.
type deck struct {
	rng  *rand.Rand
	left []string
}

func (d *deck) next() string {
	if len(d.left) == 0 {
		d.left = slices.Clone(faultKinds)
		d.rng.Shuffle(len(d.left), func(i, j int) { d.left[i], d.left[j] = d.left[j], d.left[i] })
	}
	k := d.left[0]
	d.left = d.left[1:]
	return k
}

// step is one planned fault: what, against which node slot (an index; the
// leader-crash picks whoever leads, and a fault against a node that is not
// running takes the next running one), for how long and with what
// parameter. Plans are drawn from the seed alone, never from what happens
// at run time, so a seed replays the same schedule.
type step struct {
	kind   string
	slot   int
	slots  []int
	gap    time.Duration // wait before it starts
	hold   time.Duration // how long it lasts
	param  time.Duration // latency, outage length, snapshot age, failover delay
	factor float64       // pause length in leases of the paused node
	pick   uint64        // more randomness for churn, callbacks, timings
	flag   bool          // service-restart: SIGTERM instead of SIGKILL; failover: a graceful stop as the handoff; mass-slow-disconnect: cut the node off
}

func planRound(rng *rand.Rand, d *deck, nodes int) []step {
	n := 2 + rng.IntN(3)
	out := make([]step, 0, n)
	for range n {
		kind := d.next()
		s := step{
			kind: kind,
			slot: rng.IntN(nodes),
			gap:  time.Duration(rng.IntN(400)) * time.Millisecond,
			hold: 400*time.Millisecond + time.Duration(rng.IntN(2000))*time.Millisecond,
			pick: rng.Uint64(),
			flag: rng.IntN(2) == 0,
		}
		perm := rng.Perm(nodes)
		s.slots = perm[:2+rng.IntN(2)]
		switch kind {
		case "pause":
			s.factor = 1.2 + rng.Float64()
		case "latency-low":
			s.param = time.Duration(10+rng.IntN(140)) * time.Millisecond // round trip below (TTL − margin)/2
		case "latency-high":
			s.param = time.Duration(250+rng.IntN(350)) * time.Millisecond // round trip above it
		case "redis-outage", "redis-down":
			// Past every node's lease, the longest of the mixed timings
			// included: every node must fence.
			s.param = 3*MaxTTL()/2 + time.Duration(rng.IntN(int(NodeTTL/time.Millisecond)))*time.Millisecond
		case "redis-restart-rdb":
			s.param = time.Duration(300+rng.IntN(2700)) * time.Millisecond // age of the snapshot
		case "failover":
			s.param = time.Duration(rng.IntN(300)) * time.Millisecond // handoff → failover
		}
		out = append(out, s)
	}
	return out
}

// chaosResult is what the chaos run records; scripts/chaos puts it in
// RELIABILITY.md.
type chaosResult struct {
	Seed           uint64         `json:"seed"`
	Nodes          int            `json:"nodes"`
	Rounds         int            `json:"rounds"`
	Faults         map[string]int `json:"faults"`
	FaultsTotal    int            `json:"faults_total"`
	Skipped        int            `json:"skipped"`
	SkippedByKind  map[string]int `json:"skipped_by_kind"`
	FailedFailover int            `json:"failovers_not_made"`
	FewestOfAKind  int            `json:"fewest_of_a_kind"`
	SimulatedTime  string         `json:"simulated_time"`
	Events         int            `json:"events"`
	Instances      int            `json:"instances"`
	Overlaps       int            `json:"overlaps"`
	Leaks          int            `json:"leaks"`
	DoubleDowns    int            `json:"double_disconnects"`
	StaleWrites    int            `json:"stale_writes_outside_wakeups"`
	EpochViolation int            `json:"epoch_violations"`
	LeaderTerms    int            `json:"leader_terms"`
	Recoveries     int            `json:"recoveries"`
	Converged      int            `json:"converged"`
	WorstRecovery  string         `json:"worst_recovery"`
	WorstLive      string         `json:"worst_live"`
	RecoveryBound  string         `json:"recovery_bound"`
	Slowest        []string       `json:"slowest_recoveries"` // took, quiet event, the round's faults
	Wakes          int            `json:"wakeups"`
	WakeCancel     string         `json:"worst_wake_cancel"`
	WakeDown       string         `json:"worst_wake_disconnect"`
	WakeOverlaps   int            `json:"post_wake_overlaps"`
	Refused        int            `json:"old_token_writes_refused"`
	Accepted       int            `json:"resource_writes_accepted"`
	TokenChecks    int            `json:"token_checks"`
	TokenPassed    int            `json:"token_checks_passed"`
	TokenRefused   int            `json:"token_checks_refused"`
	RefusedInWake  int            `json:"token_refused_in_post_wake_windows"`
	RefusedBadly   int            `json:"token_refused_violations"`
	MaxTTL         string         `json:"max_node_ttl"`
	// Make-before-break (WithPrepare) and the move budget.
	MoveBudget        int      `json:"move_budget"`
	PrepareCalls      int      `json:"prepare_calls"`
	Prepared          int      `json:"prepared"`
	PrepareFailed     int      `json:"prepare_failed"`
	Activated         int      `json:"activated"`
	Disposed          int      `json:"disposed"`
	PreparedKilled    int      `json:"prepared_lost_with_killed_process"`
	PrepareViolations int      `json:"prepare_violations"`
	Failures          []string `json:"failures"`
}

// TestChaosRun runs a seeded random schedule of every fault against node
// processes and one redis-server, in rounds: each round injects two to
// four overlapping faults, heals them all, restarts what was stopped and
// waits for convergence. The history is checked at the end. A failing seed
// replays the same schedule:
//
//	go test ./internal/chaos -run TestChaosRun -chaos.seed=N -chaos.duration=40s
func TestChaosRun(t *testing.T) {
	seed := *chaosSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("chaos seed %d (replay: go test ./internal/chaos -run TestChaosRun -chaos.seed=%d -chaos.duration=%v)", seed, seed, *chaosDuration)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	nodes := min(max(*chaosNodes, 5), 7)
	ids := make([]string, nodes)
	for i := range ids {
		ids[i] = fmt.Sprintf("n%d", i+1)
	}
	c := NewClusterWith(t, ids, *chaosKeys, Options{Persist: true, Sentinel: true})
	// One service, mixed timings: slot i starts with Timings[i mod len].
	// Every slot but one, drawn from the seed (apart from the schedule's
	// draws, so that a seed's schedule stays the same), moves keys
	// make-before-break; every node leads with a move budget.
	plain := rand.New(rand.NewPCG(seed, 4)).IntN(nodes)
	for i, id := range ids {
		c.SetTiming(id, Timings[i%len(Timings)])
		c.SetMoves(id, i != plain, chaosBudget)
	}
	t.Logf("make-before-break on every node but %s; move budget %d", ids[plain], chaosBudget)
	c.Start(ids...)
	c.WaitReady(settle, ids...)
	c.Quiet(settle)

	r := &chaosRunner{t: t, c: c, ids: ids, nextKey: *chaosKeys, skippedBy: map[string]int{}}
	d := &deck{rng: rng}
	start := time.Now()
	rounds := 0
	// The run goes on after a violation, so that a long run shows them all
	// and every kind gets its share; the checker reports them at the end.
	for time.Since(start) < *chaosDuration {
		rounds++
		r.round(planRound(rng, d, nodes))
	}
	lim := DefaultLimits
	lim.Budget = chaosBudget
	rep := c.Finish(lim)
	t.Logf("chaos seed %d: %d rounds\n%s", seed, rounds, rep.Summary())
	t.Logf("faults by kind (skipped: %v; failovers the Sentinel did not make: %d):\n%s", r.skippedBy, r.failedFailovers, kindTable(rep.Faults))
	for _, f := range rep.Failures() {
		t.Error(f)
	}
	if t.Failed() {
		t.Logf("replay: go test ./internal/chaos -run TestChaosRun -chaos.seed=%d -chaos.duration=%v", seed, *chaosDuration)
	}
	if *chaosReport != "" {
		writeChaosReport(t, *chaosReport, seed, nodes, rounds, r, rep)
	}
}

type chaosRunner struct {
	t         *testing.T
	c         *Cluster
	ids       []string
	nextKey   int
	skipped   int
	skippedBy map[string]int
	// failedFailovers counts failover faults in which the Sentinel did not
	// fail over in time (the handoff before it happened all the same).
	failedFailovers int
}

// kindTable lists every fault kind with its count, one a line.
func kindTable(faults map[string]int) string {
	var b strings.Builder
	for _, k := range faultKinds {
		fmt.Fprintf(&b, "  %-22s %d\n", k, faults[k])
	}
	return b.String()
}

// heal is a pending end of a fault.
type heal struct {
	at time.Time
	do func()
}

func (r *chaosRunner) round(plan []step) {
	c := r.c
	var heals []heal
	var fenced []func(*State) bool
	for _, s := range plan {
		time.Sleep(s.gap) // the schedule's spacing of faults, not a synchronisation
		heals = r.healDue(heals)
		if h, f := r.inject(s); h != nil || f != nil {
			if h != nil {
				heals = append(heals, heal{at: time.Now().Add(s.hold), do: h})
			}
			if f != nil {
				fenced = append(fenced, f)
			}
		}
	}
	// Let the faults run their course: each ends at its own time.
	slices.SortFunc(heals, func(a, b heal) int { return a.at.Compare(b.at) })
	for _, h := range heals {
		time.Sleep(time.Until(h.at)) // a fault's duration is its parameter
		h.do()
	}
	// Heal what is left and bring every node back.
	for _, id := range r.ids {
		c.Resume(id)
		c.Node(id).Proxy.Heal()
		c.Node(id).Proxy.SetLatency(faultproxy.Both, 0)
	}
	r.behave()
	c.Start(r.ids...)
	first := func(s *State) bool {
		for _, f := range fenced {
			if !f(s) {
				return false
			}
		}
		return true
	}
	c.QuietAfter(settle, first, r.ids...)
}

// healDue runs the heals that are due and returns the rest.
func (r *chaosRunner) healDue(heals []heal) []heal {
	var rest []heal
	for _, h := range heals {
		if time.Now().After(h.at) {
			h.do()
		} else {
			rest = append(rest, h)
		}
	}
	return rest
}

// inject starts a fault and returns what ends it, and for faults that
// make every node fence, a condition that holds once they all have.
func (r *chaosRunner) inject(s step) (func(), func(*State) bool) {
	c := r.c
	running := func(id string) bool { return slices.Contains(c.Running(), id) }
	// The planned slot, or the next one that runs.
	id := r.ids[s.slot]
	for i := range r.ids {
		if cand := r.ids[(s.slot+i)%len(r.ids)]; running(cand) {
			id = cand
			break
		}
	}
	skip := func() (func(), func(*State) bool) {
		r.skipped++
		r.skippedBy[s.kind]++
		return nil, nil
	}
	switch s.kind {
	case "crash":
		if !running(id) {
			return skip()
		}
		c.Fault(s.kind, id)
		c.Kill(id)
		return func() { c.Start(id); c.Healed(s.kind, id) }, nil
	case "leader-crash":
		c.Sync()
		leader := c.State.Leader()
		if leader == "" || !running(leader) {
			return skip()
		}
		c.Fault(s.kind, leader)
		c.Kill(leader)
		return func() { c.Start(leader); c.Healed(s.kind, leader) }, nil
	case "multi-crash":
		var victims []string
		for _, i := range s.slots {
			if running(r.ids[i]) {
				victims = append(victims, r.ids[i])
			}
		}
		if len(victims) < 2 {
			return skip()
		}
		c.Fault(s.kind, strings.Join(victims, ","))
		c.Kill(victims...)
		return func() { c.Start(victims...); c.Healed(s.kind, strings.Join(victims, ",")) }, nil
	case "service-restart":
		how := "SIGKILL"
		if s.flag {
			how = "SIGTERM"
		}
		c.Fault(s.kind, how)
		if s.flag {
			c.Term(r.ids...)
		} else {
			c.Kill(r.ids...)
		}
		c.Start(r.ids...)
		c.Healed(s.kind, how)
		return nil, nil
	case "graceful-stop":
		if !running(id) {
			return skip()
		}
		c.Fault(s.kind, id)
		c.Term(id)
		return func() { c.Start(id); c.Healed(s.kind, id) }, nil
	case "pause":
		if !running(id) {
			return skip()
		}
		// In leases of the paused node's own TTL.
		length := time.Duration(s.factor * float64(c.Node(id).Timing.TTL))
		c.Fault(s.kind, fmt.Sprintf("%s for %v", id, length))
		c.Pause(id)
		// The pause length is the fault's parameter; Resume ends it.
		at := time.Now().Add(length)
		return func() {
			time.Sleep(time.Until(at))
			c.Resume(id)
			c.Healed(s.kind, id)
		}, nil
	case "cut-upstream", "cut-downstream", "cut-both":
		dir := map[string]faultproxy.Direction{"cut-upstream": faultproxy.Upstream, "cut-downstream": faultproxy.Downstream, "cut-both": faultproxy.Both}[s.kind]
		c.Fault(s.kind, id)
		c.Node(id).Proxy.Cut(dir)
		return func() { c.Node(id).Proxy.Heal(); c.Healed(s.kind, id) }, nil
	case "latency-low", "latency-high":
		c.Fault(s.kind, fmt.Sprintf("%s %v each way", id, s.param))
		c.Node(id).Proxy.SetLatency(faultproxy.Both, s.param)
		return func() { c.Node(id).Proxy.SetLatency(faultproxy.Both, 0); c.Healed(s.kind, id) }, nil
	case "redis-restart":
		c.Fault(s.kind, "empty")
		f := c.Fenced()
		c.Redis.Restart()
		c.Healed(s.kind, "empty")
		return nil, f
	case "redis-outage":
		c.Fault(s.kind, fmt.Sprintf("frozen for %v", s.param))
		f := c.Fenced()
		c.Redis.Pause()
		time.Sleep(s.param) // the outage's length is the fault's parameter
		c.Redis.Resume()
		c.Healed(s.kind, "answers again")
		return nil, f
	case "redis-down":
		// Killed for longer than every lease and the lock TTL, then back
		// empty: nobody may claim before the grace period, and a leader
		// must be elected without a release ever being announced.
		c.Fault(s.kind, fmt.Sprintf("killed for %v, back empty", s.param))
		f := c.Fenced()
		c.Redis.Kill()
		time.Sleep(s.param) // the outage's length is the fault's parameter
		c.Redis.Restart()
		c.Healed(s.kind, "back empty")
		return nil, f
	case "redis-restart-rdb":
		// A snapshot, then changes it lacks (handoffs, claims), then a
		// crash and a restart from the snapshot: Redis comes back with an
		// old record in which old leases and claims are live.
		c.Fault(s.kind, fmt.Sprintf("snapshot %v old", s.param))
		c.Redis.Save()
		r.bump(s.pick, 1+int(s.pick%3))
		time.Sleep(s.param) // the snapshot's age is the fault's parameter
		c.Redis.RestartFromRDB()
		c.Healed(s.kind, "back from the snapshot")
		return nil, nil
	case "redis-restart-aof":
		c.Fault(s.kind, "appendfsync everysec")
		c.Redis.RestartFromAOF()
		c.Healed(s.kind, "back from the append-only file")
		return nil, nil
	case "failover":
		// Cut the replica off, hand keys off (a config change, or a graceful
		// stop), fail over: the new master lacks the handoff.
		what := "config change"
		var victim string
		if s.flag && running(id) {
			what, victim = "graceful stop of "+id, id
		}
		c.Fault(s.kind, "after a "+what)
		err := c.Failover(true, func() {
			if victim != "" {
				c.Term(victim)
			} else {
				r.bump(s.pick, 2+int(s.pick%3))
			}
			time.Sleep(s.param) // the handoff's head start is the fault's parameter
		})
		if err != nil {
			r.failedFailovers++
			c.Healed(s.kind, "no failover: "+err.Error())
		} else {
			c.Healed(s.kind, "master now "+c.Redis.Name())
		}
		if victim != "" {
			return func() { c.Start(victim) }, nil
		}
		return nil, nil
	case "mixed-timing":
		// A rolling change of WithNodeTTL: one node restarts gracefully
		// with another timing.
		if !running(id) {
			return skip()
		}
		cur := c.Node(id).Timing
		next := Timings[int(s.pick%uint64(len(Timings)))]
		if next == cur {
			next = Timings[(int(s.pick%uint64(len(Timings)))+1)%len(Timings)]
		}
		c.Fault(s.kind, fmt.Sprintf("%s from %v to %v", id, cur, next))
		c.Term(id)
		c.SetTiming(id, next)
		c.Start(id)
		c.Healed(s.kind, id)
		return nil, nil
	case "mass-slow-disconnect":
		return r.massSlow(s)
	case "keyfn-hang", "keyfn-panic":
		cfgs := c.Configs()
		i := int(s.pick % uint64(len(cfgs)))
		cfgs[i].KeyFn = strings.TrimPrefix(s.kind, "keyfn-")
		cfgs[i].Version++
		c.Fault(s.kind, cfgs[i].Key)
		c.SetConfigs(cfgs)
		return nil, nil // behave ends it with the round
	case "churn":
		r.churn(s.pick)
		return nil, nil
	case "callbacks":
		r.misbehave(s.pick)
		return nil, nil
	}
	panic("unknown fault " + s.kind)
}

// bump changes n configs drawn from pick (a new version each): dim
// replaces their instances, a handoff of each.
func (r *chaosRunner) bump(pick uint64, n int) {
	rng := rand.New(rand.NewPCG(pick, 3))
	cfgs := r.c.Configs()
	for range n {
		cfgs[rng.IntN(len(cfgs))].Version++
	}
	r.c.SetConfigs(cfgs)
}

// Mass slow disconnects: keys are added until every running node runs
// massPerNode instances, each of whose disconnects takes massSlow (with
// the node cut off) or some of which hang until the callback timeout
// (with its keys changed instead); the misbehaviour ends massWindow after
// the keys are added, and the keys are removed then.
const (
	massPerNode = 51
	massSlow    = 150 * time.Millisecond
	massWindow  = 6 * time.Second
)

func (r *chaosRunner) massSlow(s step) (func(), func(*State) bool) {
	c := r.c
	running := c.Running()
	if len(running) == 0 {
		r.skipped++
		r.skippedBy[s.kind]++
		return nil, nil
	}
	cfgs := c.Configs()
	until := time.Now().Add(massWindow)
	added := map[string]bool{}
	for i := range max(massPerNode*len(running)-len(cfgs), 0) {
		cfg := Config{Key: fmt.Sprintf("k%02d", r.nextKey), Version: 1, Disconnect: "slow", SlowMS: int(massSlow / time.Millisecond), Until: until.UnixNano()}
		if !s.flag && i%10 == 0 {
			// Hung until its context ends: in a handoff that is the
			// callback timeout; if the node fences meanwhile (an overloaded
			// machine can lose a lease anywhere), the hook's context ends at
			// the fence and it returns within the margin. A 10-minute run
			// where a fence met such hooks ran keys twice before dim ended
			// hook contexts at the fence.
			cfg.Disconnect, cfg.SlowMS = "hang", 0
		}
		r.nextKey++
		added[cfg.Key] = true
		cfgs = append(cfgs, cfg)
	}
	how := "its keys changed"
	if s.flag {
		how = "cut off from Redis"
	}
	c.SetConfigs(cfgs)
	var victim string
	c.Wait(massWindow/2, func(st *State) bool {
		loads := st.Loads()
		for _, id := range running {
			if loads[id] >= massPerNode-1 && (victim == "" || loads[id] > loads[victim]) {
				victim = id
			}
		}
		return victim != ""
	})
	if victim == "" {
		loads := c.State.Loads()
		victim = running[0]
		for _, id := range running {
			if loads[id] > loads[victim] {
				victim = id
			}
		}
	}
	on := c.State.KeysOn(victim)
	c.Fault(s.kind, fmt.Sprintf("%d keys added, %s runs %d, %s", len(added), victim, len(on), how))
	if s.flag {
		c.Node(victim).Proxy.Cut(faultproxy.Both)
	} else {
		cfgs = c.Configs()
		for i := range cfgs {
			if slices.Contains(on, cfgs[i].Key) {
				cfgs[i].Version++
			}
		}
		c.SetConfigs(cfgs)
	}
	return func() {
		// Fast again, then the keys go.
		time.Sleep(time.Until(until))
		c.Node(victim).Proxy.Heal()
		c.SetConfigs(slices.DeleteFunc(c.Configs(), func(cfg Config) bool { return added[cfg.Key] }))
		c.Healed(s.kind, victim)
	}, nil
}

// churn adds, removes and changes keys, drawn from pick.
func (r *chaosRunner) churn(pick uint64) {
	c := r.c
	rng := rand.New(rand.NewPCG(pick, 1))
	cfgs := c.Configs()
	add, remove, change := rng.IntN(3), rng.IntN(3), 1+rng.IntN(3)
	if len(cfgs)-remove < 10 {
		remove = 0
	}
	if len(cfgs)+add > 30 {
		add = 0
	}
	for range remove {
		i := rng.IntN(len(cfgs))
		cfgs = slices.Delete(cfgs, i, i+1)
	}
	for range change {
		cfgs[rng.IntN(len(cfgs))].Version++
	}
	for range add {
		cfgs = append(cfgs, Config{Key: fmt.Sprintf("k%02d", r.nextKey), Version: 1})
		r.nextKey++
	}
	c.Fault("churn", fmt.Sprintf("add %d, remove %d, change %d", add, remove, change))
	c.SetConfigs(cfgs)
}

// misbehaviours the chaos run gives callbacks. A disconnect that hangs
// until its timeout is left out: it outlives the fence margin, which dim
// documents as outside its guarantee (it has a scenario test of its own).
var misbehaviours = []struct{ create, disconnect, health string }{
	{create: "error"}, {create: "panic"}, {create: "hang"}, {create: "slow"},
	{disconnect: "error"}, {disconnect: "panic"}, {disconnect: "slow"},
	{health: "error"},
}

// misbehave makes one to three keys' callbacks misbehave until the round
// ends.
func (r *chaosRunner) misbehave(pick uint64) {
	c := r.c
	rng := rand.New(rand.NewPCG(pick, 2))
	cfgs := c.Configs()
	var what []string
	for range 1 + rng.IntN(3) {
		i := rng.IntN(len(cfgs))
		m := misbehaviours[rng.IntN(len(misbehaviours))]
		cfgs[i].Create, cfgs[i].Disconnect, cfgs[i].Health = m.create, m.disconnect, m.health
		cfgs[i].Version++
		what = append(what, fmt.Sprintf("%s:%s%s%s", cfgs[i].Key, m.create, m.disconnect, m.health))
	}
	c.Fault("callbacks", strings.Join(what, " "))
	c.SetConfigs(cfgs)
}

// behave ends every misbehaviour.
func (r *chaosRunner) behave() {
	cfgs := r.c.Configs()
	changed := false
	for i := range cfgs {
		if cfgs[i].Misbehaves() {
			cfgs[i] = cfgs[i].Behave()
			cfgs[i].Version++
			changed = true
		}
	}
	if changed {
		r.c.SetConfigs(cfgs)
		r.c.Healed("callbacks", "all behave")
	}
}

func writeChaosReport(t *testing.T, path string, seed uint64, nodes, rounds int, r *chaosRunner, rep *Report) {
	total := 0
	fewest := -1
	for _, k := range faultKinds {
		total += rep.Faults[k]
		if fewest < 0 || rep.Faults[k] < fewest {
			fewest = rep.Faults[k]
		}
	}
	wc, wd := rep.WorstWake()
	converged := 0
	for _, rc := range rep.Recoveries {
		if rc.Converged {
			converged++
		}
	}
	res := chaosResult{
		Seed: seed, Nodes: nodes, Rounds: rounds, Faults: rep.Faults, FaultsTotal: total, Skipped: r.skipped,
		SkippedByKind: r.skippedBy, FewestOfAKind: fewest, FailedFailover: r.failedFailovers,
		SimulatedTime: rep.Span.Round(time.Millisecond).String(), Events: rep.Events, Instances: rep.Instances,
		Overlaps: len(rep.Overlaps), Leaks: len(rep.Leaks), DoubleDowns: len(rep.DoubleDowns),
		StaleWrites: len(rep.StaleWrites), EpochViolation: len(rep.EpochViolations), LeaderTerms: rep.Terms,
		Recoveries: len(rep.Recoveries), Converged: converged,
		WorstRecovery: rep.WorstRecovery().Round(time.Millisecond).String(),
		WorstLive:     rep.WorstLive().Round(time.Millisecond).String(),
		Slowest:       slowest(rep),
		RecoveryBound: DefaultLimits.recoveryBound(rep.MaxTTL).String(),
		Wakes:         len(rep.Wakes), WakeCancel: wc.Round(time.Microsecond).String(), WakeDown: wd.Round(time.Microsecond).String(),
		WakeOverlaps: len(rep.WakeOverl), Refused: rep.Refused, Accepted: rep.TokenAccepted,
		TokenChecks: rep.TokenAccepted + rep.TokenRefused, TokenPassed: rep.TokenAccepted, TokenRefused: rep.TokenRefused,
		RefusedInWake: rep.Refused, RefusedBadly: len(rep.StaleWrites), MaxTTL: rep.MaxTTL.String(),
		MoveBudget: chaosBudget, PrepareCalls: rep.Prepares, Prepared: rep.Prepared, PrepareFailed: rep.PrepareFailed,
		Activated: rep.Activated, Disposed: rep.Disposed, PreparedKilled: rep.PreparedKilled,
		PrepareViolations: len(rep.PrepareViolations),
		Failures:          rep.Failures(),
	}
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		t.Error(err)
		return
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		t.Error(err)
	}
}

// slowest describes the run's ten slowest recoveries, for the report.
func slowest(rep *Report) []string {
	var out []string
	for _, rc := range rep.SlowestRecoveries(10) {
		out = append(out, fmt.Sprintf("%v at event %d after %s", rc.Took.Round(time.Millisecond), rc.Seq, strings.Join(rc.Faults, ", ")))
	}
	return out
}
