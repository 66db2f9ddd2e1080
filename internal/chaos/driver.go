package chaos

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/faultproxy"
	"github.com/go-dim/dim/internal/redistest"
	"github.com/redis/rueidis"
)

// Timings of the node program in the tests: short, in the relations dim
// demands (heartbeat ≤ (TTL − margin)/2, lock refresh < lock TTL).
const (
	NodeTTL         = time.Second
	Heartbeat       = 100 * time.Millisecond
	FenceMargin     = NodeTTL / 5 // dim's default
	LockTTL         = time.Second
	LockRefresh     = 200 * time.Millisecond
	CallbackTimeout = time.Second
)

// Timing is a node's lease timing: its node TTL and heartbeat. The fence
// margin is dim's default, TTL/5.
type Timing struct {
	TTL       time.Duration
	Heartbeat time.Duration
}

func (t Timing) String() string { return fmt.Sprintf("ttl %v/heartbeat %v", t.TTL, t.Heartbeat) }

// Timings are the node timings the chaos run mixes in one service, each
// in dim's relation heartbeat ≤ (TTL − TTL/5)/2; the first is the default.
var Timings = []Timing{
	{NodeTTL, Heartbeat},
	{1500 * time.Millisecond, 200 * time.Millisecond},
	{2 * time.Second, 300 * time.Millisecond},
	{1500 * time.Millisecond, 100 * time.Millisecond},
}

// MaxTTL is the largest node TTL of [Timings].
func MaxTTL() time.Duration {
	var m time.Duration
	for _, t := range Timings {
		m = max(m, t.TTL)
	}
	return m
}

// DefaultLimits are the bounds the tests hold histories to:
//   - a node woken after a pause beyond its lease must have stopped its old
//     instances within the fence margin, the time dim itself gives an
//     instance to stop;
//   - after the last fault is healed, every key must be live exactly once,
//     evenly spread, within one node TTL (the longest a dead node's lease,
//     or the grace period after a Redis that lost its state, holds a key)
//     plus a margin of 2 s for the rest: a second lease when a join whose
//     reply was lost to the fault holds the node's ID, a restarted process
//     that starts and joins, and a rebalance and its claims.
//
// With nodes of other TTLs in play ([Timings]), the checker scales both:
// the wake bound with the paused node's own TTL (its fence margin), the
// recovery bound by the largest TTL in play over NodeTTL.
//
// A run whose nodes have a move budget sets Limits.Budget: the even spread
// may then take half a node TTL more for every Budget keys that must still
// move once every key is live (a step of the budget is a heartbeat or two
// for the leader to look again, plus the handoffs, prepares included).
var DefaultLimits = Limits{
	NodeTTL:       NodeTTL,
	WakeBound:     FenceMargin,
	RecoveryBound: NodeTTL + 2*time.Second,
	BudgetStep:    NodeTTL / 2,
}

// Service is the dim service name of the test nodes.
const Service = "chaos"

var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// NodeBinary builds the node program once per test binary and returns its
// path. Set CHAOS_NODE_RACE=1 to build it with the race detector (slower;
// the library's own tests already run under -race).
func NodeBinary(tb testing.TB) string {
	tb.Helper()
	build.once.Do(func() {
		build.dir, build.err = os.MkdirTemp("", "chaos-node-")
		if build.err != nil {
			return
		}
		build.bin = filepath.Join(build.dir, "node")
		goBin, err := exec.LookPath("go")
		if err != nil {
			build.err = fmt.Errorf("the go command is needed to build the node program: %w", err)
			return
		}
		args := []string{"build", "-o", build.bin}
		if os.Getenv("CHAOS_NODE_RACE") == "1" {
			args = append(args, "-race")
		}
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command(goBin, append(args, "./node")...)
		cmd.Dir = filepath.Dir(file)
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./node: %w\n%s", err, out)
		}
	})
	if build.err != nil {
		tb.Fatalf("chaos: %v", build.err)
	}
	return build.bin
}

// RemoveNodeBinary deletes what [NodeBinary] built; TestMain calls it.
func RemoveNodeBinary() {
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
}

// Node is one slot of the cluster: a node ID, its fault proxy to Redis and
// the process that runs it, if any.
type Node struct {
	ID     string
	Proxy  *faultproxy.Proxy
	Timing Timing // of the next process started
	// Prepare runs the next process with make-before-break (the node
	// program's -prepare), Budget with WithMoveBudget(Budget, 0) (0: none).
	Prepare bool
	Budget  int

	cmd    *exec.Cmd
	pid    int
	done   chan struct{}
	expect string // what the driver did to end it: "", "kill" or "term"
	paused bool
	status string
}

// Cluster is a real redis-server, a fenced resource, and node processes of
// one service around them, each reaching Redis through its own fault
// proxy; all of them write one history.
type Cluster struct {
	tb  testing.TB
	Dir string
	bin string
	// Redis is the Redis master the nodes reach: the only server, or with
	// [Options.Sentinel] the current master, which [Cluster.Failover]
	// changes.
	Redis *redistest.Server
	// Sentinel is the replicated Redis, with [Options.Sentinel]; nil
	// otherwise.
	Sentinel *redistest.Sentinel
	ctl      *faultproxy.Proxy // the driver's own way to Redis, never faulted
	Resource *Resource
	HistPath string
	hist     *Writer
	cfgPath  string
	tail     *Tail
	State    *State
	client   rueidis.Client
	debug    bool

	mu      sync.Mutex // guards the process fields of nodes
	nodes   map[string]*Node
	order   []string
	configs []Config
}

// Options choose the Redis of a cluster.
type Options struct {
	// Persist runs Redis with an append-only file and snapshots on demand,
	// so that it can restart from them (redis-restart-rdb, -aof).
	Persist bool
	// Sentinel runs a master and a replica watched by a Sentinel instead
	// of one server, so that it can fail over. The Sentinel never fails
	// over by itself (its down-after is a minute): only [Cluster.Failover]
	// does, so a killed or frozen master stays the master.
	Sentinel bool
}

// NewCluster starts Redis, the resource and a proxy per node ID, and writes
// configs for keys k00…; it starts no node. Everything is torn down when
// tb's test ends.
func NewCluster(tb testing.TB, ids []string, keys int) *Cluster {
	tb.Helper()
	return NewClusterWith(tb, ids, keys, Options{})
}

// NewClusterWith is [NewCluster] with a Redis chosen by opts.
func NewClusterWith(tb testing.TB, ids []string, keys int, opts Options) *Cluster {
	tb.Helper()
	bin := NodeBinary(tb)
	c := &Cluster{
		tb:     tb,
		Dir:    tb.TempDir(),
		bin:    bin,
		State:  NewState(),
		nodes:  map[string]*Node{},
		debug:  os.Getenv("CHAOS_DEBUG") != "",
		client: nil,
	}
	var ropts []redistest.Option
	if opts.Persist {
		ropts = append(ropts, redistest.WithPersistence())
	}
	if opts.Sentinel {
		c.Sentinel = redistest.StartSentinel(tb, ropts...)
		c.Sentinel.Set("down-after-milliseconds", "60000")
		c.Redis = c.Sentinel.Master()
	} else {
		c.Redis = redistest.Start(tb, ropts...)
	}
	c.HistPath = filepath.Join(c.Dir, "history.jsonl")
	c.cfgPath = filepath.Join(c.Dir, "configs.json")
	var err error
	if c.hist, err = OpenWriter(c.HistPath, "driver"); err != nil {
		tb.Fatal(err)
	}
	c.tail = NewTail(c.HistPath)
	if c.Resource, err = NewResource(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.cleanup)
	if c.ctl, err = faultproxy.New(c.Redis.Addr()); err != nil {
		tb.Fatal(err)
	}
	opt := c.Redis.ClientOption()
	opt.InitAddress = []string{c.ctl.Addr()}
	if c.client, err = rueidis.NewClient(opt); err != nil {
		tb.Fatal(err)
	}
	for _, id := range ids {
		p, err := faultproxy.New(c.Redis.Addr())
		if err != nil {
			tb.Fatal(err)
		}
		c.nodes[id] = &Node{ID: id, Proxy: p, Timing: Timings[0]}
		c.order = append(c.order, id)
	}
	cfgs := make([]Config, keys)
	for i := range cfgs {
		cfgs[i] = Config{Key: fmt.Sprintf("k%02d", i), Version: 1}
	}
	c.SetConfigs(cfgs)
	return c
}

// Log appends a driver event to the history.
func (c *Cluster) Log(e Event) Event {
	e, err := c.hist.Log(e)
	if err != nil {
		c.tb.Errorf("chaos: %v", err)
	}
	return e
}

// Fault records that a fault of kind begins.
func (c *Cluster) Fault(kind, detail string) {
	c.Log(Event{Kind: Fault, Fault: kind, Detail: detail})
	if c.debug {
		c.tb.Logf("fault %s %s", kind, detail)
	}
}

// Healed records that a fault of kind ends.
func (c *Cluster) Healed(kind, detail string) {
	c.Log(Event{Kind: Heal, Fault: kind, Detail: detail})
}

// IDs returns every node ID of the cluster.
func (c *Cluster) IDs() []string { return slices.Clone(c.order) }

// Node returns the slot of id.
func (c *Cluster) Node(id string) *Node {
	n := c.nodes[id]
	if n == nil {
		c.tb.Fatalf("chaos: no node %q", id)
	}
	return n
}

// Configs returns the current configs.
func (c *Cluster) Configs() []Config { return slices.Clone(c.configs) }

// Keys returns the currently configured keys.
func (c *Cluster) Keys() []string {
	keys := make([]string, len(c.configs))
	for i, cfg := range c.configs {
		keys[i] = cfg.Key
	}
	return keys
}

// SetConfigs replaces the configs every node reads, records the keys in the
// history and asks the leader to rebalance at once (the config refresh
// schedule would see the change within a second anyway).
func (c *Cluster) SetConfigs(cfgs []Config) {
	c.configs = slices.Clone(cfgs)
	if err := WriteConfigs(c.cfgPath, cfgs); err != nil {
		c.tb.Fatal(err)
	}
	c.Log(Event{Kind: Configs, Keys: c.Keys()})
	if c.client != nil {
		// Fire and forget, as an operator's script might: the driver does
		// not wait for the leader's answer.
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_ = c.client.Do(ctx, c.client.B().Publish().Channel("dim:{"+Service+"}:events").Message("rebalance").Build()).Error()
		cancel()
	}
}

// Start starts a node process for each id that has none.
func (c *Cluster) Start(ids ...string) {
	c.tb.Helper()
	for _, id := range ids {
		n := c.Node(id)
		c.mu.Lock()
		running := n.cmd != nil
		c.mu.Unlock()
		if running {
			continue
		}
		c.spawn(n)
	}
}

func (c *Cluster) spawn(n *Node) {
	c.tb.Helper()
	logFile, err := os.OpenFile(filepath.Join(c.Dir, n.ID+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.tb.Fatal(err)
	}
	defer logFile.Close()
	args := []string{
		"-id", n.ID, "-service", Service,
		"-redis", n.Proxy.Addr(),
		"-history", c.HistPath, "-configs", c.cfgPath, "-resource", c.Resource.Addr(),
		"-ttl", n.Timing.TTL.String(), "-heartbeat", n.Timing.Heartbeat.String(),
		"-lock-ttl", LockTTL.String(), "-lock-refresh", LockRefresh.String(),
		"-timeout", CallbackTimeout.String(),
	}
	if c.debug {
		args = append(args, "-debug")
	}
	detail := n.Timing.String()
	if n.Prepare {
		args = append(args, "-prepare")
		detail += ", prepare"
	}
	if n.Budget > 0 {
		args = append(args, "-budget", strconv.Itoa(n.Budget))
		detail += fmt.Sprintf(", move budget %d", n.Budget)
	}
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The kernel kills the node if the test binary dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.tb.Fatalf("chaos: start node %s: %v", n.ID, err)
	}
	done := make(chan struct{})
	c.mu.Lock()
	n.cmd, n.pid, n.done, n.expect, n.paused, n.status = cmd, cmd.Process.Pid, done, "", false, ""
	c.mu.Unlock()
	c.Log(Event{Kind: Spawn, Node: n.ID, PID: cmd.Process.Pid, TTL: int64(n.Timing.TTL), Detail: detail})
	go func() {
		err := cmd.Wait()
		status := "exit 0"
		if err != nil {
			status = err.Error()
		}
		c.mu.Lock()
		n.status = status
		unexpected := n.expect == ""
		if unexpected {
			n.cmd = nil
		}
		c.mu.Unlock()
		if unexpected {
			c.Log(Event{Kind: Exit, Node: n.ID, PID: cmd.Process.Pid, Detail: status})
		}
		close(done)
	}()
}

// SetTiming gives node id the timing t from its next start on.
func (c *Cluster) SetTiming(id string, t Timing) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Node(id).Timing = t
}

// SetMoves gives node id, from its next start on, make-before-break
// (prepare) and a move budget of budget voluntary moves in flight (0: none).
func (c *Cluster) SetMoves(id string, prepare bool, budget int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.Node(id)
	n.Prepare, n.Budget = prepare, budget
}

// Failover fails Redis over to its replica through the Sentinel
// (SENTINEL FAILOVER) and moves every proxy, the nodes' and the driver's,
// to the new master, as a virtual IP would follow it: existing connections
// are cut, new ones reach the new master. With lose, the replica is cut
// off the master's writes first (redistest's DetachReplica) and handoff
// runs before the failover (nil: nothing), so that the new master lacks
// every write the old one accepted meanwhile, handoff's included. The old
// master becomes a replica of the new one. Only with [Options.Sentinel].
func (c *Cluster) Failover(lose bool, handoff func()) error {
	c.tb.Helper()
	if c.Sentinel == nil {
		c.tb.Fatal("chaos: Failover needs a cluster with Options.Sentinel")
	}
	if lose {
		c.Sentinel.DetachReplica()
	}
	if handoff != nil {
		handoff()
	}
	next, err := c.Sentinel.TryFailover()
	if err != nil {
		// A Sentinel that does not fail over in time leaves the master as
		// it was: the run goes on, and says so.
		return err
	}
	c.Redis = next
	for _, id := range c.order {
		c.nodes[id].Proxy.SetTarget(next.Addr())
	}
	c.ctl.SetTarget(next.Addr())
	return nil
}

// proc returns a node's running process, or nil.
func (c *Cluster) proc(id string) (*exec.Cmd, chan struct{}, bool) {
	n := c.Node(id)
	c.mu.Lock()
	defer c.mu.Unlock()
	return n.cmd, n.done, n.paused
}

// Kill SIGKILLs the processes of ids at once, as a crash would, waits until
// they are reaped and records that everything they ran is dead.
func (c *Cluster) Kill(ids ...string) {
	c.tb.Helper()
	type victim struct {
		n    *Node
		cmd  *exec.Cmd
		done chan struct{}
	}
	var victims []victim
	for _, id := range ids {
		n := c.Node(id)
		c.mu.Lock()
		cmd, done := n.cmd, n.done
		if cmd != nil {
			n.expect = "kill"
		}
		c.mu.Unlock()
		if cmd == nil {
			continue
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		victims = append(victims, victim{n, cmd, done})
	}
	for _, v := range victims {
		<-v.done
		c.mu.Lock()
		v.n.cmd, v.n.paused = nil, false
		c.mu.Unlock()
		c.Log(Event{Kind: Kill, Node: v.n.ID, PID: v.cmd.Process.Pid})
	}
}

// Term stops the processes of ids gracefully with SIGTERM (waking a paused
// one first) and waits for them to exit; one that takes longer than 10 s is
// killed.
func (c *Cluster) Term(ids ...string) {
	c.tb.Helper()
	type victim struct {
		n    *Node
		cmd  *exec.Cmd
		done chan struct{}
	}
	var victims []victim
	for _, id := range ids {
		cmd, done, paused := c.proc(id)
		if cmd == nil {
			continue
		}
		if paused {
			c.Resume(id)
		}
		n := c.Node(id)
		// A process signalled before its program has installed its SIGTERM
		// handler dies of the signal instead of stopping: wait until it has
		// logged its start.
		pid := cmd.Process.Pid
		c.Wait(5*time.Second, func(s *State) bool { return s.Started(id, pid) })
		c.mu.Lock()
		n.expect = "term"
		c.mu.Unlock()
		c.Log(Event{Kind: Term, Node: id, PID: cmd.Process.Pid})
		_ = cmd.Process.Signal(syscall.SIGTERM)
		victims = append(victims, victim{n, cmd, done})
	}
	for _, v := range victims {
		select {
		case <-v.done:
			c.mu.Lock()
			status := v.n.status
			v.n.cmd = nil
			c.mu.Unlock()
			c.Log(Event{Kind: Exit, Node: v.n.ID, PID: v.cmd.Process.Pid, Expected: status == "exit 0", Detail: status})
		case <-time.After(10 * time.Second):
			c.tb.Errorf("chaos: node %s did not stop within 10s of SIGTERM; killing it", v.n.ID)
			c.Kill(v.n.ID)
		}
	}
}

// Pause freezes a node with SIGSTOP and records it once the kernel reports
// the process stopped.
func (c *Cluster) Pause(id string) {
	c.tb.Helper()
	cmd, _, paused := c.proc(id)
	if cmd == nil || paused {
		return
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		c.tb.Fatalf("chaos: SIGSTOP %s: %v", id, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !stopped(cmd.Process.Pid) {
		if time.Now().After(deadline) {
			c.tb.Fatalf("chaos: node %s not stopped 5s after SIGSTOP", id)
		}
		time.Sleep(time.Millisecond)
	}
	c.mu.Lock()
	c.Node(id).paused = true
	c.mu.Unlock()
	c.Log(Event{Kind: Pause, Node: id, PID: cmd.Process.Pid})
}

// Resume records that a paused node wakes, then wakes it with SIGCONT.
func (c *Cluster) Resume(id string) {
	c.tb.Helper()
	cmd, _, paused := c.proc(id)
	if cmd == nil || !paused {
		return
	}
	c.Log(Event{Kind: Resume, Node: id, PID: cmd.Process.Pid})
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		c.tb.Fatalf("chaos: SIGCONT %s: %v", id, err)
	}
	c.mu.Lock()
	c.Node(id).paused = false
	c.mu.Unlock()
}

// stopped reports whether the kernel shows pid as stopped by a signal.
func stopped(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(data, ')')
	return i >= 0 && i+2 < len(data) && (data[i+2] == 'T' || data[i+2] == 't')
}

// Running returns the IDs of the nodes whose process runs and is not
// paused.
func (c *Cluster) Running() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, id := range c.order {
		if n := c.nodes[id]; n.cmd != nil && !n.paused {
			out = append(out, id)
		}
	}
	return out
}

// PID returns the process ID of a node's running process, or 0.
func (c *Cluster) PID(id string) int {
	cmd, _, _ := c.proc(id)
	if cmd == nil {
		return 0
	}
	return cmd.Process.Pid
}

// Sync reads the events appended to the history since the last call into
// State.
func (c *Cluster) Sync() {
	c.tb.Helper()
	events, err := c.tail.Next()
	for _, e := range events {
		c.State.Apply(e)
	}
	if err != nil {
		c.tb.Fatal(err)
	}
}

// Wait polls the history until cond holds, and reports whether it did
// within d.
func (c *Cluster) Wait(d time.Duration, cond func(*State) bool) bool {
	c.tb.Helper()
	deadline := time.Now().Add(d)
	for {
		c.Sync()
		if cond(c.State) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WaitReady waits until the current processes of ids have joined.
func (c *Cluster) WaitReady(d time.Duration, ids ...string) {
	c.tb.Helper()
	ok := c.Wait(d, func(s *State) bool {
		for _, id := range ids {
			p := s.procs[ProcName(id, c.PID(id))]
			if p == nil || !p.ready {
				return false
			}
		}
		return true
	})
	if !ok {
		c.tb.Fatalf("chaos: nodes %v not ready within %v", ids, d)
	}
}

// Leader waits up to d for a running node to observe itself leading and
// returns it.
func (c *Cluster) Leader(d time.Duration) string {
	c.tb.Helper()
	var leader string
	c.Wait(d, func(s *State) bool {
		leader = s.Leader()
		return leader != "" && slices.Contains(c.Running(), leader)
	})
	if leader == "" {
		c.tb.Fatalf("chaos: no leader within %v", d)
	}
	return leader
}

// Quiet records that every fault is over and nodes (by default, every
// running node) should now share the configured keys, then waits up to
// within for that and records the outcome. It returns how long it took, as
// the checker will measure it, and whether it converged.
func (c *Cluster) Quiet(within time.Duration, nodes ...string) (time.Duration, bool) {
	c.tb.Helper()
	return c.QuietAfter(within, nil, nodes...)
}

// settleHold is how long convergence must last before the driver records
// it: long enough for the checker to see it hold.
const settleHold = 200 * time.Millisecond

// QuietAfter is [Cluster.Quiet] for a fault whose effects take a moment to
// show: the driver waits for first to hold (nil: nothing) before it waits
// for convergence. The recovery time still counts from the Quiet, which is
// recorded at once.
func (c *Cluster) QuietAfter(within time.Duration, first func(*State) bool, nodes ...string) (time.Duration, bool) {
	c.tb.Helper()
	if len(nodes) == 0 {
		nodes = c.Running()
	}
	keys := c.Keys()
	q := c.Log(Event{Kind: Quiet, Keys: keys, Nodes: nodes})
	deadline := time.Now().Add(within)
	ok := first == nil || c.Wait(time.Until(deadline), first)
	detail := "converged"
	if !ok {
		detail = "timeout waiting for the fault to take effect"
	}
	for ok {
		var why string
		ok = c.Wait(time.Until(deadline), func(s *State) bool {
			var conv bool
			conv, why = s.Converged(keys, nodes)
			return conv
		})
		if !ok {
			detail = "timeout: " + why
			break
		}
		// Stay a moment, so that the checker sees convergence hold.
		stable := c.Wait(settleHold, func(s *State) bool {
			conv, _ := s.Converged(keys, nodes)
			return !conv
		})
		if !stable {
			break
		}
	}
	s := c.Log(Event{Kind: Settled, Detail: detail})
	took := time.Duration(s.T-q.T) - settleHold
	if !ok {
		c.tb.Errorf("chaos: after quiet: %s (live: %v)", detail, c.State.LiveByKey())
	}
	return took, ok
}

// Fenced returns a condition for [Cluster.QuietAfter]: every instance that
// was live at the time it is called has ended. A Redis that lost its state
// or stopped answering makes every node fence itself.
func (c *Cluster) Fenced() func(*State) bool {
	c.Sync()
	var old []*instance
	for _, byID := range c.State.live {
		for _, in := range byID {
			old = append(old, in)
		}
	}
	return func(*State) bool {
		for _, in := range old {
			if in.live() {
				return false
			}
		}
		return true
	}
}

// Finish stops every node gracefully, ends the history and checks it.
func (c *Cluster) Finish(lim Limits) *Report {
	c.tb.Helper()
	for _, id := range c.order {
		c.Resume(id)
	}
	c.Term(c.order...)
	c.Log(Event{Kind: End})
	return c.Check(lim)
}

// Check reads the whole history and checks it.
func (c *Cluster) Check(lim Limits) *Report {
	c.tb.Helper()
	events, err := ReadFile(c.HistPath)
	if err != nil {
		c.tb.Fatal(err)
	}
	r := Check(events, lim)
	r.TokenAccepted, r.TokenRefused = c.Resource.Counts()
	return r
}

// cleanup kills whatever still runs and closes the proxies, the resource
// and the client.
func (c *Cluster) cleanup() {
	var running []string
	for _, id := range c.order {
		if cmd, _, _ := c.proc(id); cmd != nil {
			running = append(running, id)
		}
	}
	c.Kill(running...)
	for _, id := range c.order {
		_ = c.nodes[id].Proxy.Close()
	}
	if c.ctl != nil {
		_ = c.ctl.Close()
	}
	c.Resource.Close()
	if c.client != nil {
		c.client.Close()
	}
	_ = c.hist.Close()
	if c.tb.Failed() {
		c.tb.Logf("chaos: history and node logs kept in %s", c.keep())
	}
}

// keep copies the history and node logs of a failed test out of its
// temporary directory, which the test framework removes.
func (c *Cluster) keep() string {
	dst, err := os.MkdirTemp("", "chaos-failed-")
	if err != nil {
		return c.Dir + " (removed)"
	}
	entries, _ := os.ReadDir(c.Dir)
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		if data, err := os.ReadFile(filepath.Join(c.Dir, e.Name())); err == nil {
			_ = os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644)
		}
	}
	return dst
}
