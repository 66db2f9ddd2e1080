package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-dim/dim"
	"github.com/go-dim/dim/internal/syncbuf"
	"github.com/redis/rueidis"
)

// timing is the set of dim durations a scenario runs with.
type timing struct {
	TTL         time.Duration `json:"node_ttl_ns"`
	Heartbeat   time.Duration `json:"heartbeat_ns"`
	LockTTL     time.Duration `json:"lock_ttl_ns"`
	LockRefresh time.Duration `json:"lock_refresh_ns"`
	Refresh     string        `json:"config_refresh"`
}

// timingFor keeps dim's default proportions (node TTL 5s, heartbeat 1s, lock
// TTL 5s refreshed every 1s) at another node TTL.
func timingFor(ttl time.Duration) timing {
	return timing{TTL: ttl, Heartbeat: ttl / 5, LockTTL: ttl, LockRefresh: ttl / 5, Refresh: "@every 30s"}
}

func (t timing) String() string {
	return fmt.Sprintf("node TTL %v, heartbeat %v, lock TTL %v, lock refresh %v", t.TTL, t.Heartbeat, t.LockTTL, t.LockRefresh)
}

func (t timing) options() []dim.Option {
	return []dim.Option{
		dim.WithNodeTTL(t.TTL), dim.WithHeartbeat(t.Heartbeat),
		dim.WithLeaderLockTTL(t.LockTTL), dim.WithLeaderLockRefresh(t.LockRefresh),
		dim.WithConfigRefreshSchedule(t.Refresh),
	}
}

// keyNames are the config keys of a service of n instances; parent and child
// processes build the same list.
func keyNames(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%06d", i)
	}
	return keys
}

// newManager builds one node of a benchmark service: configs are plain
// strings keyed by themselves, an instance is its key, and every create and
// disconnect is reported with the time it happened.
func newManager(addr, service, id string, keys []string, t timing, logger *slog.Logger,
	created, disconnected func(key string, at time.Time), extra ...dim.Option) (*dim.Manager[string, string], error) {
	return newManagerWith(addr, service, id, keys, t, logger,
		func(_ context.Context, key string) (string, error) {
			created(key, time.Now())
			return key, nil
		},
		func(_ context.Context, key string) error {
			disconnected(key, time.Now())
			return nil
		}, extra...)
}

// newManagerWith is newManager with the create and disconnect callbacks
// given whole, for scenarios that need an instance's context or a slow
// disconnect.
func newManagerWith(addr, service, id string, keys []string, t timing, logger *slog.Logger,
	create func(ctx context.Context, key string) (string, error),
	disconnect func(ctx context.Context, key string) error, extra ...dim.Option) (*dim.Manager[string, string], error) {
	opts := append([]dim.Option{
		dim.WithService(service),
		dim.WithRedis(rueidis.ClientOption{InitAddress: []string{addr}}),
		dim.WithNodeID(id),
		dim.WithKey(func(k string) string { return k }),
		dim.WithDisconnect(disconnect),
		dim.WithLogger(logger),
	}, t.options()...)
	return dim.New(func(context.Context) ([]string, error) { return keys, nil }, create, append(opts, extra...)...)
}

// tracker records which node runs each key, as the nodes' callbacks report
// it, and lets a scenario wait for a set of keys to be created elsewhere.
type tracker struct {
	mu       sync.Mutex
	live     map[string]string // key → node
	creates  int64
	overlaps int64       // a create while another node still ran the key
	lastAt   time.Time   // the latest create
	times    []time.Time // every create's time, while keepTimes
	keep     bool
	w        *watch
	// Keys disconnected and not yet created again, since when; nil until
	// resetDark. longestDark is the longest such gap that has ended.
	dark        map[string]time.Time
	longestDark time.Duration
	// peakDark is the most keys dark at once since resetDark.
	peakDark int
}

// watch waits for every key of a set to be created on a node other than
// exclude; first and last are the earliest and latest of those creates.
type watch struct {
	pending map[string]bool
	exclude string
	first   time.Time
	last    time.Time
	done    chan struct{}
}

func newTracker() *tracker {
	return &tracker{live: map[string]string{}}
}

func (t *tracker) created(node, key string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur, ok := t.live[key]; ok && cur != node {
		t.overlaps++
	}
	t.live[key] = node
	t.creates++
	if since, ok := t.dark[key]; ok {
		t.longestDark = max(t.longestDark, at.Sub(since))
		delete(t.dark, key)
	}
	if at.After(t.lastAt) {
		t.lastAt = at
	}
	if t.keep {
		t.times = append(t.times, at)
	}
	if w := t.w; w != nil && node != w.exclude && w.pending[key] {
		delete(w.pending, key)
		if at.After(w.last) {
			w.last = at
		}
		if w.first.IsZero() || at.Before(w.first) {
			w.first = at
		}
		if len(w.pending) == 0 {
			close(w.done)
			t.w = nil
		}
	}
}

func (t *tracker) disconnected(node, key string) { t.disconnectedAt(node, key, time.Now()) }

func (t *tracker) disconnectedAt(node, key string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.live[key] == node {
		delete(t.live, key)
		if t.dark != nil {
			t.dark[key] = at
			t.peakDark = max(t.peakDark, len(t.dark))
		}
	}
}

// dead forgets what a killed process ran.
func (t *tracker) dead(node string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, n := range t.live {
		if n == node {
			delete(t.live, k)
		}
	}
}

func (t *tracker) liveCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.live)
}

func (t *tracker) keysOf(node string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var keys []string
	for k, n := range t.live {
		if n == node {
			keys = append(keys, k)
		}
	}
	return keys
}

func (t *tracker) counts() (creates, overlaps int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.creates, t.overlaps
}

// waitQuiet waits until no key has been created for quiet, reading only
// the tracker, so that a scenario can let a convergence finish before it
// asks Redis (a status of 10k keys costs Redis milliseconds, which would
// delay the claims being measured).
func (t *tracker) waitQuiet(ctx context.Context, quiet, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		idle := time.Since(t.lastCreate())
		if idle >= quiet {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("keys still being created after %v", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(quiet - idle):
		}
	}
}

// lastCreate is the time of the latest create on any node.
func (t *tracker) lastCreate() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastAt
}

// watchKeys starts waiting for keys to be created on any node but exclude.
func (t *tracker) watchKeys(keys []string, exclude string) *watch {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := &watch{pending: make(map[string]bool, len(keys)), exclude: exclude, done: make(chan struct{})}
	for _, k := range keys {
		w.pending[k] = true
	}
	if len(w.pending) == 0 {
		close(w.done)
	} else {
		t.w = w
	}
	return w
}

// wait returns the time of the last create the watch waited for.
func (t *tracker) wait(ctx context.Context, w *watch, timeout time.Duration) (time.Time, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-w.done:
		return w.last, nil
	case <-ctx.Done():
	case <-timer.C:
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(w.pending)
	if t.w == w {
		t.w = nil
	}
	if ctx.Err() != nil {
		return time.Time{}, ctx.Err()
	}
	return time.Time{}, fmt.Errorf("%d keys still not live elsewhere after %v", n, timeout)
}

// warnCounter is a slog handler that counts dim's warnings and errors, and
// passes them on when verbose.
type warnCounter struct {
	n       atomic.Int64
	fences  atomic.Int64
	mu      sync.Mutex
	first   []string
	verbose io.Writer
}

func (w *warnCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnCounter) Handle(_ context.Context, r slog.Record) error {
	w.n.Add(1)
	if strings.HasPrefix(r.Message, "fenced") {
		w.fences.Add(1)
	}
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	w.mu.Lock()
	if len(w.first) < 5 {
		w.first = append(w.first, b.String())
	}
	w.mu.Unlock()
	if w.verbose != nil {
		fmt.Fprintf(w.verbose, "dim %s: %s\n", r.Level, b.String())
	}
	return nil
}
func (w *warnCounter) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &attrHandler{w, attrs}
}
func (w *warnCounter) WithGroup(string) slog.Handler { return w }

// attrHandler keeps the node's attributes on the counted records.
type attrHandler struct {
	w     *warnCounter
	attrs []slog.Attr
}

func (h *attrHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.w.Enabled(ctx, l) }
func (h *attrHandler) Handle(ctx context.Context, r slog.Record) error {
	r = r.Clone()
	r.AddAttrs(h.attrs...)
	return h.w.Handle(ctx, r)
}
func (h *attrHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &attrHandler{h.w, append(slices.Clone(h.attrs), attrs...)}
}
func (h *attrHandler) WithGroup(string) slog.Handler { return h }

// cluster is one service: its nodes, in this process or in child processes,
// and the tracker of what runs where.
type cluster struct {
	b       *bench
	service string
	keys    []string
	t       timing
	tr      *tracker
	nextID  int
	retries atomic.Int64 // failed Starts retried
	logger  *slog.Logger // the nodes' logger, when set (else the bench's warning counter)
	opts    []dim.Option // more options for the nodes started from now on

	mu    sync.Mutex
	local map[string]*dim.Manager[string, string]
	kids  map[string]*child
}

func (b *bench) newCluster(name string, keys int, t timing) *cluster {
	b.seq++
	return &cluster{
		b:       b,
		service: fmt.Sprintf("bench-%d-%s-%d", os.Getpid(), name, b.seq),
		keys:    keyNames(keys),
		t:       t,
		tr:      newTracker(),
		local:   map[string]*dim.Manager[string, string]{},
		kids:    map[string]*child{},
	}
}

func (c *cluster) newID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID++
	return fmt.Sprintf("n%03d", c.nextID)
}

// startLocal starts n in-process nodes concurrently and returns their IDs
// once every Start has returned.
func (c *cluster) startLocal(ctx context.Context, n int) ([]string, error) {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = c.newID()
	}
	_, err := c.startIDs(ctx, ids)
	return ids, err
}

// startIDs starts in-process nodes with the given IDs concurrently and
// returns, once every Start has returned, the instant each one returned.
func (c *cluster) startIDs(ctx context.Context, ids []string) ([]time.Time, error) {
	errs := make([]error, len(ids))
	returned := make([]time.Time, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			errs[i] = c.startOne(ctx, id)
			returned[i] = time.Now()
		})
	}
	wg.Wait()
	return returned, errors.Join(errs...)
}

// startOne starts one in-process node. A Start that fails with a Redis
// error (its join is bounded by one heartbeat, which a loaded machine can
// miss when many nodes start at once) is retried with a new Manager after
// 50 ms, as a supervisor would restart the process; retries are counted.
func (c *cluster) startOne(ctx context.Context, id string) error {
	var err error
	for attempt := range 5 {
		if attempt > 0 {
			c.retries.Add(1)
			time.Sleep(50 * time.Millisecond)
		}
		logger := c.logger
		if logger == nil {
			logger = slog.New(c.b.warns)
		}
		var m *dim.Manager[string, string]
		c.mu.Lock()
		extra := slices.Clone(c.opts)
		c.mu.Unlock()
		m, err = newManager(c.b.addr, c.service, id, c.keys, c.t, logger,
			func(key string, at time.Time) { c.tr.created(id, key, at) },
			func(key string, at time.Time) { c.tr.disconnectedAt(id, key, at) }, extra...)
		if err != nil {
			return err
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = m.Start(sctx)
		cancel()
		if err == nil {
			c.mu.Lock()
			c.local[id] = m
			c.mu.Unlock()
			return nil
		}
		if !errors.Is(err, dim.ErrRedis) || ctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("start %s: %w", id, err)
}

func (c *cluster) manager(id string) *dim.Manager[string, string] {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.local[id]
}

// stopLocal stops one in-process node gracefully.
func (c *cluster) stopLocal(ctx context.Context, id string) error {
	m := c.manager(id)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := m.Stop(sctx)
	c.mu.Lock()
	delete(c.local, id)
	c.mu.Unlock()
	return err
}

// stopAll stops every in-process node concurrently and gracefully, and
// keeps the service's record in Redis (unlike close). It returns how long
// the slowest Stop took.
func (c *cluster) stopAll(ctx context.Context) (time.Duration, error) {
	ids := c.localIDs()
	errs := make([]error, len(ids))
	start := time.Now()
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			if err := c.stopLocal(ctx, id); err != nil {
				errs[i] = fmt.Errorf("stop %s: %w", id, err)
			}
		})
	}
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}

// leaders returns the in-process nodes that lead.
func (c *cluster) leaders() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for id, m := range c.local {
		if m.IsLeader() {
			out = append(out, id)
		}
	}
	return out
}

// localIDs returns the in-process nodes in ID order.
func (c *cluster) localIDs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, 0, len(c.local))
	for id := range c.local {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// waitLeader polls the in-process nodes every millisecond until one other
// than exclude leads.
func (c *cluster) waitLeader(ctx context.Context, exclude string, timeout time.Duration) (string, time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		for _, id := range c.leaders() {
			if id != exclude {
				return id, time.Now(), nil
			}
		}
		if time.Now().After(deadline) {
			return "", time.Time{}, fmt.Errorf("no in-process node leads after %v", timeout)
		}
		if ctx.Err() != nil {
			return "", time.Time{}, ctx.Err()
		}
		time.Sleep(time.Millisecond)
	}
}

// status reads the service as dimctl does.
func (c *cluster) status(ctx context.Context) (*dim.Status, error) {
	return dim.ReadStatus(ctx, c.b.admin, dim.Service{Name: c.service})
}

// waitConverged polls the service's status until nodes live nodes are all
// active, every key runs exactly where it is assigned, loads differ by at
// most one, and the tracker agrees that every key is live.
func (c *cluster) waitConverged(ctx context.Context, nodes int, timeout time.Duration) (*dim.Status, error) {
	deadline := time.Now().Add(timeout)
	poll := 10 * time.Millisecond
	if len(c.keys) <= 1000 {
		poll = 2 * time.Millisecond
	} else if len(c.keys) > 20000 {
		poll = 200 * time.Millisecond // a status of 100k keys costs Redis tens of ms
	}
	var why string
	for {
		st, err := c.status(ctx)
		if err != nil {
			why = err.Error()
		} else if why = c.unconverged(st, nodes); why == "" {
			return st, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: not converged after %v: %s", c.service, timeout, why)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		time.Sleep(poll)
	}
}

func (c *cluster) unconverged(st *dim.Status, nodes int) string {
	switch {
	case len(st.Nodes) != nodes:
		return fmt.Sprintf("%d live nodes, want %d", len(st.Nodes), nodes)
	case !st.LeaderLive:
		return "no live leader"
	case len(st.Assignment) != len(c.keys):
		return fmt.Sprintf("%d keys assigned, want %d", len(st.Assignment), len(c.keys))
	case len(st.Unowned) > 0:
		return fmt.Sprintf("%d keys unowned", len(st.Unowned))
	case len(st.Misplaced) > 0:
		return fmt.Sprintf("%d keys misplaced", len(st.Misplaced))
	}
	lo, hi := len(c.keys), 0
	for _, n := range st.Nodes {
		if n.State != "active" {
			return n.ID + " is " + string(n.State)
		}
		if n.Running != n.Assigned {
			return fmt.Sprintf("%s runs %d of %d", n.ID, n.Running, n.Assigned)
		}
		lo, hi = min(lo, n.Assigned), max(hi, n.Assigned)
	}
	if hi-lo > 1 {
		return fmt.Sprintf("loads from %d to %d", lo, hi)
	}
	if n := c.tr.liveCount(); n != len(c.keys) {
		return fmt.Sprintf("%d keys live by the callbacks, want %d", n, len(c.keys))
	}
	return ""
}

// close stops every node: in-process ones concurrently and gracefully,
// children by closing their stdin; then it deletes the service's keys.
func (c *cluster) close(ctx context.Context) {
	c.mu.Lock()
	local := c.local
	kids := c.kids
	c.local, c.kids = map[string]*dim.Manager[string, string]{}, map[string]*child{}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, m := range local {
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			_ = m.Stop(sctx)
		})
	}
	for _, k := range kids {
		wg.Go(func() { k.stop() })
	}
	wg.Wait()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_ = dropService(dctx, c.b.admin, c.service)
}

// child is a node running in a child process: this program re-executed as
// "node". It reports creates and disconnects on its stdout, with the time
// each happened, and stops gracefully when its stdin closes.
type child struct {
	id     string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	ready  chan struct{}
	done   chan struct{} // its stdout reached EOF and it exited
	stderr syncbuf.Buffer
}

// startChild starts a node process and returns once it is registered.
func (c *cluster) startChild(ctx context.Context) (*child, error) {
	id := c.newID()
	args := []string{"node",
		"-redis", c.b.addr, "-service", c.service, "-id", id, "-keys", strconv.Itoa(len(c.keys)),
		"-ttl", c.t.TTL.String(), "-heartbeat", c.t.Heartbeat.String(),
		"-lock-ttl", c.t.LockTTL.String(), "-lock-refresh", c.t.LockRefresh.String(),
		"-refresh", c.t.Refresh,
	}
	k := &child{id: id, cmd: exec.Command(c.b.exe, args...), ready: make(chan struct{}), done: make(chan struct{})}
	k.cmd.Stderr = &k.stderr
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := k.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if k.stdin, err = k.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := k.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start node process: %w", err)
	}
	go func() {
		defer close(k.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 1 && f[0] == "ready":
				close(k.ready)
			case len(f) == 3 && f[0] == "c":
				ns, _ := strconv.ParseInt(f[2], 10, 64)
				c.tr.created(id, f[1], time.Unix(0, ns))
			case len(f) == 3 && f[0] == "d":
				c.tr.disconnected(id, f[1])
			}
		}
		_ = k.cmd.Wait()
	}()
	select {
	case <-k.ready:
	case <-k.done:
		return nil, fmt.Errorf("node process %s exited: %s", id, lastLines(k.stderr.String(), 5))
	case <-time.After(30 * time.Second):
		k.kill()
		return nil, fmt.Errorf("node process %s not ready after 30s: %s", id, lastLines(k.stderr.String(), 5))
	case <-ctx.Done():
		k.kill()
		return nil, ctx.Err()
	}
	c.mu.Lock()
	c.kids[id] = k
	c.mu.Unlock()
	return k, nil
}

// kill sends SIGKILL and waits until the process is gone and its last
// reports are read.
func (k *child) kill() {
	_ = k.cmd.Process.Signal(syscall.SIGKILL)
	<-k.done
}

// stop asks the node to stop gracefully, killing it after 30 s.
func (k *child) stop() {
	_ = k.stdin.Close()
	select {
	case <-k.done:
	case <-time.After(30 * time.Second):
		k.kill()
	}
}

// killChild crashes a child node: SIGKILL, then the tracker forgets what
// it ran. It returns the instant just before the signal.
func (c *cluster) killChild(k *child) time.Time {
	c.mu.Lock()
	delete(c.kids, k.id)
	c.mu.Unlock()
	at := time.Now()
	_ = k.cmd.Process.Signal(syscall.SIGKILL)
	<-k.done
	c.tr.dead(k.id)
	return at
}

// nodeMain is the child process: one dim node that reports on stdout.
func nodeMain(args []string) int {
	fs := flagSet("node")
	addr := fs.String("redis", "", "Redis address")
	service := fs.String("service", "", "service name")
	id := fs.String("id", "", "node ID")
	nkeys := fs.Int("keys", 12, "number of configs")
	var t timing
	fs.DurationVar(&t.TTL, "ttl", time.Second, "node TTL")
	fs.DurationVar(&t.Heartbeat, "heartbeat", 200*time.Millisecond, "heartbeat")
	fs.DurationVar(&t.LockTTL, "lock-ttl", time.Second, "leader lock TTL")
	fs.DurationVar(&t.LockRefresh, "lock-refresh", 200*time.Millisecond, "leader lock refresh")
	fs.StringVar(&t.Refresh, "refresh", "@every 30s", "config refresh schedule")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	report := func(verb, key string, at time.Time) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(w, "%s %s %d\n", verb, key, at.UnixNano())
		_ = w.Flush()
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := newManager(*addr, *service, *id, keyNames(*nkeys), t, logger,
		func(key string, at time.Time) { report("c", key, at) },
		func(key string, at time.Time) { report("d", key, at) })
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	err = m.Start(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mu.Lock()
	fmt.Fprintln(w, "ready")
	_ = w.Flush()
	mu.Unlock()
	// Run until the parent closes stdin (or dies), then stop gracefully.
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Stop(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "stop:", err)
		return 1
	}
	return 0
}
