// Command demo runs several nodes of one service in this process and walks
// through the events dim exists for: a node joins, a feed breaks everywhere
// (and is quarantined), a node loses its route to one feed (and the feed
// moves), a node stops gracefully, a node crashes, the leader dies. Each node runs simulated connections;
// the demo prints who leads, what runs where, what moved and how long it
// took, and checks that no config ever ran twice at once.
//
// With -zones it runs in two zones instead: the nodes alternate between
// zones a and b, a quarter of the feeds must stay in zone a, a quarter in
// zone b, and the rest spread over both. Zone a dies: zone b takes over
// exactly the feeds allowed to move there, and the feeds that must stay in
// zone a run nowhere and are reported unplaceable; then zone a comes back.
//
//	go run ./examples/demo                      # embedded Redis, the walk-through
//	go run ./examples/demo -redis 127.0.0.1:6379 # a real server
//	go run ./examples/demo -steps=false          # just run until Ctrl-C
//	go run ./examples/demo -zones                # two zones, one of which dies
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-dim/dim"
	"github.com/go-dim/dim/internal/embedded"
	"github.com/go-dim/dim/internal/faultproxy"
	"github.com/go-dim/dim/internal/history"
	"github.com/redis/rueidis"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type flags struct {
	redis   string
	nodes   int
	configs int
	steps   bool
	ttl     time.Duration
	verbose bool
	zones   bool
}

func parseFlags(args []string) (flags, error) {
	var f flags
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.StringVar(&f.redis, "redis", "", "Redis host:port; empty runs an embedded Redis")
	fs.IntVar(&f.nodes, "nodes", 3, "nodes to start with (4 with -zones)")
	fs.IntVar(&f.configs, "configs", 12, "configured instances")
	fs.BoolVar(&f.steps, "steps", true, "walk through join, stop, crash and leader death, then exit; false runs until Ctrl-C")
	fs.DurationVar(&f.ttl, "ttl", time.Second, "node TTL and leader lock TTL")
	fs.BoolVar(&f.verbose, "v", false, "log dim's debug output and every unit of work")
	fs.BoolVar(&f.zones, "zones", false, "run in two zones, a and b, and let zone a die and come back, instead of the walk-through")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	nodesSet := false
	fs.Visit(func(fl *flag.Flag) { nodesSet = nodesSet || fl.Name == "nodes" })
	if f.zones && !nodesSet {
		f.nodes = 4 // two in each zone
	}
	if f.nodes < 2 || f.configs < 1 || f.ttl < 200*time.Millisecond {
		return f, errors.New("need -nodes ≥ 2, -configs ≥ 1 and -ttl ≥ 200ms")
	}
	if f.zones && f.configs < 4 {
		return f, errors.New("-zones needs -configs ≥ 4: a quarter for each zone, the rest spread")
	}
	return f, nil
}

// demo is the service: its nodes, their configs and what they record.
type demo struct {
	f       flags
	out     io.Writer
	start   time.Time
	redis   rueidis.ClientOption
	service string
	rec     *history.Recorder
	configs []source
	admin   rueidis.Client // with -zones: reads status and plans as dimctl does

	mu     sync.Mutex
	nodes  map[string]*node
	next   int
	broken map[string]bool // feeds whose upstream refuses every login
	cut    map[string]bool // "node feed": a node that cannot reach a feed
}

// source is a config: one simulated connection to an upstream. Zone, with
// -zones, is the zone whose nodes alone may run it (data that must stay
// there); "" spreads it over the zones.
type source struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	Zone string `json:"zone,omitempty"`
}

// placeFeed is the demo's placement with -zones: a feed with a zone
// requires it; the others spread over the zones.
func placeFeed(s source) dim.Placement {
	if s.Zone != "" {
		return dim.Placement{Require: map[string]string{"zone": s.Zone}}
	}
	return dim.Placement{Spread: "zone"}
}

// node is one replica, reaching Redis through a proxy the demo can cut to
// simulate a crash.
type node struct {
	id      string
	zone    string // with -zones
	m       *dim.Manager[source, *conn]
	proxy   *faultproxy.Proxy
	crashed bool // cut off, its connections counted dead
	stopped bool // stopped gracefully
}

// conn is a simulated connection; it logs what it does.
type conn struct {
	d     *demo
	node  string
	key   string
	id    int64
	stop  context.CancelFunc
	done  chan struct{}
	token uint64
}

func run(ctx context.Context, args []string, out io.Writer) error {
	f, err := parseFlags(args)
	if err != nil {
		return err
	}
	d := &demo{f: f, out: out, start: time.Now(), rec: history.New(), nodes: map[string]*node{},
		broken: map[string]bool{}, cut: map[string]bool{}}
	for i := range f.configs {
		s := source{Name: fmt.Sprintf("feed-%02d", i+1), URL: fmt.Sprintf("wss://upstream.example/%02d", i+1)}
		if f.zones && i < f.configs/2 {
			s.Zone = []string{"a", "b"}[i/(f.configs/4)%2]
		}
		d.configs = append(d.configs, s)
	}
	if f.redis == "" {
		srv, err := embedded.Start()
		if err != nil {
			return fmt.Errorf("embedded Redis: %w", err)
		}
		defer srv.Close()
		d.redis = srv.ClientOption()
		d.service = "demo"
		d.say("dim demo: %d nodes share %d connections through an embedded Redis at %s", f.nodes, f.configs, srv.Addr())
	} else {
		d.redis = rueidis.ClientOption{InitAddress: []string{f.redis}}
		d.service = fmt.Sprintf("demo-%d", time.Now().UnixNano()%1e6)
		d.say("dim demo: %d nodes share %d connections through Redis at %s (service %s)", f.nodes, f.configs, f.redis, d.service)
	}
	defer d.stopAll()
	if f.zones {
		if d.admin, err = rueidis.NewClient(d.redis); err != nil {
			return err
		}
		defer d.admin.Close()
	}

	for range f.nodes {
		if _, err := d.addNode(ctx); err != nil {
			return err
		}
	}
	took, err := d.waitConverged(ctx, 10*time.Second)
	if err != nil {
		return err
	}
	d.say("every connection is open exactly once after %v (first start waits one node TTL: Redis could have lost a previous run's state)", took.Round(time.Millisecond))
	d.view(ctx)

	switch {
	case f.zones:
		err = d.twoZones(ctx)
	case f.steps:
		err = d.walk(ctx)
	default:
		err = d.watch(ctx)
	}
	if err != nil {
		return err
	}
	d.say("")
	d.say("stopping the remaining nodes")
	d.stopAll()
	return d.verdict()
}

// walk goes through the four events and measures each.
func (d *demo) walk(ctx context.Context) error {
	steps := []struct {
		title string
		do    func(context.Context) (string, error)
	}{
		{"a node joins", d.join},
		{"a feed breaks everywhere", d.quarantine},
		{"a node loses its route to one feed", d.nodeLocal},
		{"a node stops gracefully", d.gracefulStop},
		{"a node crashes", d.crash(false)},
		{"the leader dies", d.crash(true)},
	}
	for i, s := range steps {
		d.say("")
		d.say("step %d: %s", i+1, s.title)
		summary, err := s.do(ctx)
		if err != nil {
			return fmt.Errorf("step %d (%s): %w", i+1, s.title, err)
		}
		d.say("→ %s", summary)
		d.view(ctx)
	}
	return nil
}

func (d *demo) join(ctx context.Context) (string, error) {
	before := d.placement()
	start := time.Now()
	n, err := d.addNode(ctx)
	if err != nil {
		return "", err
	}
	if _, err := d.waitConverged(ctx, 5*time.Second); err != nil {
		return "", err
	}
	took := time.Since(start)
	live := len(d.liveNodes())
	return fmt.Sprintf("%s took %d connections, its fair share (%d to %d each); nothing else moved; balanced %v after Start was called",
		n.id, d.moved(before), len(d.configs)/live, (len(d.configs)+live-1)/live, took.Round(time.Millisecond)), nil
}

func (d *demo) gracefulStop(ctx context.Context) (string, error) {
	victim := d.pick(false)
	held := len(victim.m.Instances())
	start := time.Now()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := victim.m.Stop(sctx); err != nil {
		return "", err
	}
	stopped := time.Since(start)
	d.mu.Lock()
	victim.stopped = true
	d.mu.Unlock()
	if _, err := d.waitConverged(ctx, 5*time.Second); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s handed its %d connections over: Stop returned after %v, all live elsewhere %v after Stop was called (no TTL to wait for)",
		victim.id, held, stopped.Round(time.Millisecond), time.Since(start).Round(time.Millisecond)), nil
}

// crash cuts a node off and counts its connections as dead at once, as if
// its process had died: the others must wait out its lease.
func (d *demo) crash(leader bool) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		victim := d.pick(leader)
		held := len(victim.m.Instances())
		var oldEpoch uint64
		if st, err := victim.m.Status(ctx); err == nil {
			oldEpoch = st.Epoch
		}
		d.mu.Lock()
		victim.crashed = true
		d.mu.Unlock()
		start := time.Now()
		victim.proxy.Cut(faultproxy.Both)
		d.rec.Kill(victim.id)
		d.say("%s crashes (its link to Redis goes silent and its %d connections die with it)", victim.id, held)
		var newLeader string
		if leader {
			for newLeader == "" {
				if err := sleep(ctx, 10*time.Millisecond); err != nil {
					return "", err
				}
				for _, n := range d.liveNodes() {
					if n.m.IsLeader() {
						newLeader = n.id
					}
				}
			}
		}
		elected := time.Since(start)
		took, err := d.waitConverged(ctx, 4*d.f.ttl+5*time.Second)
		if err != nil {
			return "", err
		}
		total := elected + took
		if !leader {
			total = took
		}
		msg := fmt.Sprintf("its %d connections live elsewhere %v after the crash (node TTL %v)", held, total.Round(time.Millisecond), d.f.ttl)
		if leader {
			st, _ := d.liveNodes()[0].m.Status(ctx)
			var epoch uint64
			if st != nil {
				epoch = st.Epoch
			}
			higher := "a higher"
			if epoch <= oldEpoch {
				higher = "NOT a higher"
			}
			msg = fmt.Sprintf("%s was elected after %v (lock TTL %v) with %s epoch; %s", newLeader, elected.Round(time.Millisecond), d.f.ttl, higher, msg)
		}
		return msg, nil
	}
}

// watch prints the view whenever it changes, until ctx ends.
func (d *demo) watch(ctx context.Context) error {
	d.say("running until Ctrl-C; start another demo with -redis to add nodes from elsewhere")
	last := ""
	for {
		if err := sleep(ctx, time.Second); err != nil {
			return nil
		}
		if now := fmt.Sprint(d.placement()); now != last {
			last = now
			d.view(ctx)
		}
	}
}

// addNode starts a node; with -zones, in zone a or b by turns.
func (d *demo) addNode(ctx context.Context) (*node, error) {
	zone := ""
	if d.f.zones {
		d.mu.Lock()
		zone = []string{"a", "b"}[d.next%2]
		d.mu.Unlock()
	}
	return d.addNodeIn(ctx, zone)
}

// addNodeIn starts a node in zone ("" for none).
func (d *demo) addNodeIn(ctx context.Context, zone string) (*node, error) {
	d.mu.Lock()
	d.next++
	id := fmt.Sprintf("n%d", d.next)
	d.mu.Unlock()

	proxy, err := faultproxy.New(d.redis.InitAddress[0])
	if err != nil {
		return nil, err
	}
	opt := d.redis
	opt.InitAddress = []string{proxy.Addr()}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if d.f.verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	opts := []dim.Option{
		dim.WithService(d.service),
		dim.WithNodeID(id),
		dim.WithRedis(opt),
		dim.WithKey(func(s source) string { return s.Name }),
		dim.WithHealthcheck(func(_ context.Context, c *conn) error { return d.fault(id, c.key) }),
		dim.WithHealthcheckSchedule("@every 1s"),
		dim.WithQuarantine(3*time.Second, 30*time.Second),
		dim.WithDisconnect(func(ctx context.Context, c *conn) error { return c.close(ctx) }),
		dim.WithNodeTTL(d.f.ttl),
		dim.WithHeartbeat(d.f.ttl / 10),
		dim.WithLeaderLockTTL(d.f.ttl),
		dim.WithLeaderLockRefresh(d.f.ttl / 5),
		dim.WithLogger(logger),
	}
	if zone != "" {
		opts = append(opts, dim.WithLabels(map[string]string{"zone": zone}), dim.WithPlacement(placeFeed))
	}
	m, err := dim.New(
		func(context.Context) ([]source, error) { return d.configs, nil },
		func(ctx context.Context, s source) (*conn, error) { return d.open(ctx, id, s) },
		opts...)
	if err != nil {
		_ = proxy.Close()
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := m.Start(sctx); err != nil {
		_ = proxy.Close()
		return nil, err
	}
	n := &node{id: id, zone: zone, m: m, proxy: proxy}
	d.mu.Lock()
	d.nodes[id] = n
	d.mu.Unlock()
	if zone != "" {
		d.say("%s starts in zone %s", id, zone)
	} else {
		d.say("%s starts", id)
	}
	return n, nil
}

// open is createInstance: a connection that works until its context ends,
// unless the feed or this node's route to it is broken.
func (d *demo) open(ctx context.Context, nodeID string, s source) (*conn, error) {
	if err := d.fault(nodeID, s.Name); err != nil {
		if !d.crashed(nodeID) {
			d.say("  %-3s ✗ cannot open %s: %v", nodeID, s.Name, err)
		}
		return nil, err
	}
	token, _ := dim.FencingToken(ctx)
	wctx, cancel := context.WithCancel(ctx)
	c := &conn{d: d, node: nodeID, key: s.Name, id: d.rec.Up(nodeID, s.Name), stop: cancel, done: make(chan struct{}), token: token}
	if !d.crashed(nodeID) {
		d.say("  %-3s ▶ opens  %s", nodeID, s.Name)
	}
	go c.work(wctx)
	return c, nil
}

// fault is what breaks a feed on a node, nil if nothing does.
func (d *demo) fault(nodeID, key string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.broken[key]:
		return errors.New("the upstream refused the login")
	case d.cut[nodeID+" "+key]:
		return errors.New("no route to the upstream from " + nodeID)
	}
	return nil
}

func (d *demo) setFault(set map[string]bool, what string, on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	set[what] = on
}

// quarantine breaks one feed for every node: it fails on each node it is
// given to, then the leader quarantines it instead of letting it bounce
// around the fleet. Repaired, it comes back at its next probe.
func (d *demo) quarantine(ctx context.Context) (string, error) {
	key := d.configs[min(2, len(d.configs)-1)].Name
	d.setFault(d.broken, key, true)
	d.say("%s's upstream starts refusing every login: its health check fails, and so does every reopen", key)
	start := time.Now()
	var q dim.Quarantine
	err := d.until(ctx, 30*time.Second, func(st *dim.Status) bool {
		i := slices.IndexFunc(st.Quarantined, func(q dim.Quarantine) bool { return q.Key == key })
		if i >= 0 {
			q = st.Quarantined[i]
		}
		return i >= 0
	})
	if err != nil {
		return "", err
	}
	took := time.Since(start)
	d.say("%s is quarantined after failing on %s; no node opens it until %s (level %d, last error %q)",
		key, strings.Join(q.Nodes, ", "), q.Until.Local().Format("15:04:05"), q.Level, q.LastError)
	d.view(ctx)
	d.setFault(d.broken, key, false)
	d.say("%s's upstream accepts logins again", key)
	repaired := time.Now()
	if err := d.until(ctx, time.Minute, func(st *dim.Status) bool { return len(st.Quarantined) == 0 && d.converged() }); err != nil {
		return "", err
	}
	return fmt.Sprintf("quarantined %v after it broke, instead of failing through the fleet forever; open again %v after the repair, at its probe",
		took.Round(time.Millisecond), time.Since(repaired).Round(time.Millisecond)), nil
}

// nodeLocal breaks one node's route to one of its feeds: the node gives the
// feed up and another node, which can reach it, opens it.
func (d *demo) nodeLocal(ctx context.Context) (string, error) {
	victim := d.pick(false)
	var key string
	for k, on := range d.placement() {
		if slices.Equal(on, []string{victim.id}) && (key == "" || k < key) {
			key = k
		}
	}
	if key == "" {
		return "", fmt.Errorf("%s runs nothing", victim.id)
	}
	d.setFault(d.cut, victim.id+" "+key, true)
	d.say("%s loses its route to %s's upstream; the other nodes still reach it", victim.id, key)
	start := time.Now()
	if err := d.until(ctx, 30*time.Second, func(*dim.Status) bool {
		on := d.placement()[key]
		return len(on) == 1 && on[0] != victim.id && d.converged()
	}); err != nil {
		return "", err
	}
	took := time.Since(start)
	d.setFault(d.cut, victim.id+" "+key, false)
	return fmt.Sprintf("%s gave %s up after failing %d times in a row, and %s opened it %v after the fault; %s keeps its other feeds",
		victim.id, key, dim.DefaultGiveUpAfter, d.placement()[key][0], took.Round(time.Millisecond), victim.id), nil
}

// until polls the service's status until cond holds.
func (d *demo) until(ctx context.Context, within time.Duration, cond func(*dim.Status) bool) error {
	deadline := time.Now().Add(within)
	for {
		if nodes := d.liveNodes(); len(nodes) > 0 {
			if st, err := nodes[0].m.Status(ctx); err == nil && cond(st) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.rec.Changed():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *conn) work(ctx context.Context) {
	defer close(c.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if c.d.f.verbose {
				c.d.say("  %-3s · %s polled (token %d)", c.node, c.key, c.token)
			}
		}
	}
}

// close is the disconnect hook. A crashed node's connections died with it;
// its late hook calls are not news.
func (c *conn) close(context.Context) error {
	c.stop()
	<-c.done
	if c.d.crashed(c.node) {
		return nil
	}
	c.d.rec.Down(c.node, c.key, c.id)
	c.d.say("  %-3s ■ closes %s", c.node, c.key)
	return nil
}

func (d *demo) crashed(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.nodes[id]
	return n != nil && n.crashed
}

// liveNodes returns the running, uncrashed nodes by ID.
func (d *demo) liveNodes() []*node {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*node
	for _, n := range d.nodes {
		if !n.crashed && !n.stopped {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b *node) int { return strings.Compare(a.id, b.id) })
	return out
}

// pick returns the leader, or a node that does not lead.
func (d *demo) pick(leader bool) *node {
	nodes := d.liveNodes()
	for _, n := range nodes {
		if n.m.IsLeader() == leader {
			return n
		}
	}
	return nodes[len(nodes)-1]
}

// placement maps every live connection to the nodes it runs on.
func (d *demo) placement() map[string][]string {
	return d.rec.LiveByKey()
}

func (d *demo) moved(before map[string][]string) int {
	n := 0
	for key, nodes := range d.placement() {
		if prev := before[key]; len(prev) == 1 && len(nodes) == 1 && prev[0] != nodes[0] {
			n++
		}
	}
	return n
}

// waitConverged polls until every config is live exactly once on a live
// node with even loads, and returns how long that took.
func (d *demo) waitConverged(ctx context.Context, within time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		if d.converged() {
			return time.Since(start), nil
		}
		if time.Since(start) > within {
			return 0, fmt.Errorf("not converged within %v", within)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-d.rec.Changed():
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (d *demo) converged() bool {
	if d.f.zones {
		return d.convergedInZones()
	}
	live := d.liveNodes()
	ids := map[string]bool{}
	for _, n := range live {
		ids[n.id] = true
	}
	loads := map[string]int{}
	placement := d.placement()
	if len(placement) != len(d.configs) {
		return false
	}
	for _, nodes := range placement {
		if len(nodes) != 1 || !ids[nodes[0]] {
			return false
		}
		loads[nodes[0]]++
	}
	lo, hi := len(d.configs)/len(live), (len(d.configs)+len(live)-1)/len(live)
	for _, n := range live {
		if loads[n.id] < lo || loads[n.id] > hi {
			return false
		}
	}
	return true
}

// view prints who leads and what runs where.
func (d *demo) view(ctx context.Context) {
	nodes := d.liveNodes()
	if len(nodes) == 0 {
		return
	}
	st, err := nodes[0].m.Status(ctx)
	if err != nil {
		d.say("  (status unavailable: %v)", err)
		return
	}
	byNode := map[string][]string{}
	for key, on := range d.placement() {
		for _, n := range on {
			byNode[n] = append(byNode[n], key)
		}
	}
	for _, n := range nodes {
		keys := byNode[n.id]
		slices.Sort(keys)
		role := "      "
		if n.id == st.Leader {
			role = "leader"
		}
		if n.zone != "" {
			role = "zone " + n.zone + " " + role
		}
		d.say("  %-3s %s %2d │ %s", n.id, role, len(keys), strings.Join(keys, " "))
	}
}

// verdict checks the whole history: no config ran twice at once.
func (d *demo) verdict() error {
	problems := history.Problems(d.rec.Events())
	d.say("")
	if len(problems) > 0 {
		for _, p := range problems {
			d.say("  %s", p)
		}
		return fmt.Errorf("%d problems in the history", len(problems))
	}
	d.say("checked %d events: no connection ever ran twice at once", len(d.rec.Events()))
	return nil
}

func (d *demo) stopAll() {
	d.mu.Lock()
	nodes := make([]*node, 0, len(d.nodes))
	for _, n := range d.nodes {
		nodes = append(nodes, n)
	}
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range nodes {
		if n.stopped {
			_ = n.proxy.Close()
			continue
		}
		n.stopped = true
		wg.Go(func() {
			// A crashed node cannot reach Redis; its lease is long gone.
			timeout := 3 * time.Second
			if n.crashed {
				timeout = 100 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			_ = n.m.Stop(ctx)
			_ = n.proxy.Close()
		})
	}
	wg.Wait()
}

func (d *demo) say(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if format == "" {
		fmt.Fprintln(d.out)
		return
	}
	fmt.Fprintf(d.out, "%7.3fs  %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
