// Command node runs one dim node of the chaos test service in its own OS
// process, so that the chaos driver can SIGKILL, SIGSTOP/SIGCONT or SIGTERM
// it. It reads the service's configs from a file the driver writes, and
// appends every instance's life to the shared history: Up before
// createInstance does anything, Created or Failed when it returns, Cancel
// when the instance sees its context end, Down when disconnect has stopped
// it. While live, every instance writes to the driver's fenced resource
// with its fencing token: once when created, every WriteEvery, and a last
// time when disconnected; a refused write is logged as Stale.
//
// With -prepare it runs dim.WithPrepare: prepare is a simulated login
// (chaos.PrepareLogin, honouring its context; the config's Create
// misbehaviour applies to it too) logged as Prepare and Prepared or
// Unprepared; activate checks the fencing token and begins the work as
// create does, logged as Up and Created on the prepared instance's ID; a
// prepared instance given to the disconnect hook before it was activated
// is logged as Disposed. With -budget n it runs dim.WithMoveBudget(n, 0).
//
// It is a test program, started by internal/chaos; see its flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-dim/dim"
	"github.com/go-dim/dim/internal/chaos"
	"github.com/redis/rueidis"
)

// writeEvery is how often a live instance writes to the resource.
const writeEvery = 200 * time.Millisecond

type node struct {
	id       string
	pid      int
	hist     *chaos.Writer
	res      *chaos.ResourceClient
	configs  string
	timeout  time.Duration // the callback timeout
	seq      atomic.Int64
	mu       sync.Mutex
	attempts map[string]int // key@version → create calls in this process

	// m is the running Manager, once made; stopping is set when the
	// program begins a graceful stop.
	m        atomic.Pointer[dim.Manager[chaos.Config, *inst]]
	stopping atomic.Bool
}

type inst struct {
	n      *node
	id     string
	key    string
	token  uint64
	cfg    chaos.Config
	stop   context.CancelFunc
	done   chan struct{}
	health atomic.Int32

	// Of a prepared instance (WithPrepare): its lifetime context, given
	// to prepare, and whether it was activated or disposed of.
	prepared  bool
	life      context.Context
	mu        sync.Mutex
	activated bool
	disposed  bool
}

func main() {
	// First of all: a SIGTERM that comes while the program starts must stop
	// it gracefully, not kill it.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	var (
		id        = flag.String("id", "", "node ID")
		service   = flag.String("service", "chaos", "dim service name")
		redisAddr = flag.String("redis", "", "Redis address (host:port)")
		histPath  = flag.String("history", "", "shared history file")
		configs   = flag.String("configs", "", "configs file")
		resource  = flag.String("resource", "", "fenced resource address")
		ttl       = flag.Duration("ttl", time.Second, "node TTL")
		heartbeat = flag.Duration("heartbeat", 100*time.Millisecond, "heartbeat interval")
		lockTTL   = flag.Duration("lock-ttl", time.Second, "leader lock TTL")
		lockEvery = flag.Duration("lock-refresh", 200*time.Millisecond, "leader lock refresh")
		timeout   = flag.Duration("timeout", time.Second, "callback timeout")
		debug     = flag.Bool("debug", false, "log dim at debug level")
		prepare   = flag.Bool("prepare", false, "make-before-break: WithPrepare(prepare, activate, chaos.PrepareWithin)")
		budget    = flag.Int("budget", 0, "WithMoveBudget(n, 0); 0: none")
	)
	flag.Parse()
	if *id == "" || *redisAddr == "" || *histPath == "" || *configs == "" || *resource == "" {
		fmt.Fprintln(os.Stderr, "node: -id, -redis, -history, -configs and -resource are required")
		os.Exit(2)
	}
	pid := os.Getpid()
	hist, err := chaos.OpenWriter(*histPath, chaos.ProcName(*id, pid))
	if err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(1)
	}
	n := &node{id: *id, pid: pid, hist: hist, res: chaos.NewResourceClient(*resource), configs: *configs, timeout: *timeout, attempts: map[string]int{}}
	n.log(chaos.Event{Kind: chaos.Start, TTL: int64(*ttl)})

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ropt := rueidis.ClientOption{InitAddress: []string{*redisAddr}, ConnWriteTimeout: 2 * time.Second}
	ropt.Dialer.Timeout = 2 * time.Second
	var extra []dim.Option
	if *prepare {
		extra = append(extra, dim.WithPrepare(n.prepare, n.activate, chaos.PrepareWithin))
	}
	if *budget > 0 {
		extra = append(extra, dim.WithMoveBudget(*budget, 0))
	}
	newManager := func() (*dim.Manager[chaos.Config, *inst], error) {
		return dim.New(n.getConfig, n.create, append([]dim.Option{
			dim.WithService(*service),
			dim.WithNodeID(*id),
			dim.WithRedis(ropt),
			dim.WithKey(func(c chaos.Config) string { return keyOf(c, *timeout) }),
			dim.WithDisconnect(n.disconnect),
			dim.WithHealthcheck(n.healthcheck),
			dim.WithNodeTTL(*ttl),
			dim.WithHeartbeat(*heartbeat),
			dim.WithLeaderLockTTL(*lockTTL),
			dim.WithLeaderLockRefresh(*lockEvery),
			dim.WithCallbackTimeout(*timeout),
			dim.WithHealthcheckSchedule("@every 1s"),
			dim.WithLeaderHealthcheckSchedule("@every 1s"),
			dim.WithConfigRefreshSchedule("@every 1s"),
			dim.WithLogger(logger),
		}, extra...)...)
	}
	// Start waits while an earlier run of this node ID still holds a lease,
	// and fails when Redis cannot be reached in time (a slow or cut link):
	// then the program tries again with a new Manager, as a supervisor
	// restarting it would.
	var m *dim.Manager[chaos.Config, *inst]
	for {
		if m, err = newManager(); err != nil {
			fmt.Fprintln(os.Stderr, "node:", err)
			os.Exit(1)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = m.Start(ctx)
		cancel()
		if err == nil {
			break
		}
		fmt.Fprintln(os.Stderr, "node: start failed; trying again:", err)
		select {
		case <-sigs:
			n.log(chaos.Event{Kind: chaos.Stopped, Detail: "never started"})
			os.Exit(0)
		case <-time.After(200 * time.Millisecond):
		}
	}
	n.m.Store(m)
	n.log(chaos.Event{Kind: chaos.Ready})

	watchCtx, stopWatch := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { n.watchLeadership(watchCtx, m) })

	<-sigs
	n.stopping.Store(true)
	stopWatch()
	wg.Wait()
	n.log(chaos.Event{Kind: chaos.Stopping})
	// The driver waits 10 s for the process to exit; behind a link slowed
	// to over a second a round trip, Stop's Redis steps take seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	err = m.Stop(ctx)
	cancel()
	n.log(chaos.Event{Kind: chaos.Stopped, Detail: fmt.Sprint(err)})
	n.res.Close()
	if err != nil {
		os.Exit(1)
	}
}

func (n *node) log(e chaos.Event) {
	e.Node, e.PID = n.id, n.pid
	if _, err := n.hist.Log(e); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
	}
}

func (n *node) getConfig(context.Context) ([]chaos.Config, error) {
	return chaos.ReadConfigs(n.configs)
}

// attempt counts this process's create calls for a key and version.
func (n *node) attempt(cfg chaos.Config) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := cfg.Key + "@" + strconv.Itoa(cfg.Version)
	n.attempts[k]++
	return n.attempts[k]
}

// newID names a new instance.
func (n *node) newID() string { return fmt.Sprintf("%s#%d#%d", n.id, n.pid, n.seq.Add(1)) }

func (n *node) create(ctx context.Context, cfg chaos.Config) (_ *inst, err error) {
	token, _ := dim.FencingToken(ctx)
	in := &inst{n: n, id: n.newID(), key: cfg.Key, token: token, cfg: cfg}
	n.log(chaos.Event{Kind: chaos.Up, Key: in.key, Inst: in.id, Token: token})
	returned := false
	defer func() {
		if !returned { // a panic on its way to dim
			n.log(chaos.Event{Kind: chaos.Failed, Key: in.key, Inst: in.id, Detail: "panic"})
		}
	}()
	attempt := n.attempt(cfg)
	switch cfg.Create {
	case "error":
		if attempt <= 2 {
			returned = true
			n.log(chaos.Event{Kind: chaos.Failed, Key: in.key, Inst: in.id, Detail: "error"})
			return nil, fmt.Errorf("create %s: injected error (attempt %d)", cfg.Key, attempt)
		}
	case "panic":
		if attempt == 1 {
			panic("create " + cfg.Key + ": injected panic")
		}
	case "hang":
		if attempt == 1 {
			<-ctx.Done()
			time.Sleep(chaos.HangExtra)
		}
	case "slow":
		select {
		case <-ctx.Done():
		case <-time.After(chaos.SlowCreate):
		}
	}
	n.write(in, "open")
	wctx, stop := context.WithCancel(ctx)
	in.stop, in.done = stop, make(chan struct{})
	go in.run(ctx, wctx)
	returned = true
	n.log(chaos.Event{Kind: chaos.Created, Key: in.key, Inst: in.id})
	return in, nil
}

// prepare is a simulated login for cfg's key: it takes chaos.PrepareLogin,
// ends early when its context does, and misbehaves as the config's Create
// asks (per attempt, counted with create's). It does no work and writes
// nothing: there is no fencing token yet.
func (n *node) prepare(ctx context.Context, cfg chaos.Config) (_ *inst, err error) {
	in := &inst{n: n, id: n.newID(), key: cfg.Key, cfg: cfg, prepared: true, life: ctx}
	n.log(chaos.Event{Kind: chaos.Prepare, Key: in.key, Inst: in.id})
	returned := false
	defer func() {
		if !returned { // a panic on its way to dim
			n.log(chaos.Event{Kind: chaos.Unprepared, Key: in.key, Inst: in.id, Detail: "panic"})
		}
	}()
	login := chaos.PrepareLogin
	switch attempt := n.attempt(cfg); cfg.Create {
	case "error":
		if attempt <= 2 {
			returned = true
			n.log(chaos.Event{Kind: chaos.Unprepared, Key: in.key, Inst: in.id, Detail: "error"})
			return nil, fmt.Errorf("prepare %s: injected error (attempt %d)", cfg.Key, attempt)
		}
	case "panic":
		if attempt == 1 {
			panic("prepare " + cfg.Key + ": injected panic")
		}
	case "hang":
		if attempt == 1 {
			// Past the callback timeout, then it returns all the same.
			login = n.timeout + chaos.HangExtra
		}
	case "slow":
		login = chaos.SlowCreate
	}
	select {
	case <-ctx.Done():
		returned = true
		n.log(chaos.Event{Kind: chaos.Unprepared, Key: in.key, Inst: in.id, Detail: "context ended"})
		return nil, fmt.Errorf("prepare %s: %w", cfg.Key, ctx.Err())
	case <-time.After(login):
	}
	returned = true
	n.log(chaos.Event{Kind: chaos.Prepared, Key: in.key, Inst: in.id})
	return in, nil
}

// activate begins the work of a prepared instance as create does: it logs
// Up with the claim's fencing token, writes with it, and runs until the
// instance's lifetime context (prepare's) ends.
func (n *node) activate(ctx context.Context, in *inst) error {
	token, ok := dim.FencingToken(ctx)
	in.mu.Lock()
	defer in.mu.Unlock()
	in.token = token
	n.log(chaos.Event{Kind: chaos.Up, Key: in.key, Inst: in.id, Token: token})
	switch {
	case !ok:
		n.log(chaos.Event{Kind: chaos.Failed, Key: in.key, Inst: in.id, Detail: "no fencing token"})
		return fmt.Errorf("activate %s: no fencing token in its context", in.key)
	case in.disposed:
		n.log(chaos.Event{Kind: chaos.Failed, Key: in.key, Inst: in.id, Detail: "disposed of"})
		return fmt.Errorf("activate %s: already disposed of", in.key)
	}
	n.write(in, "open")
	wctx, stop := context.WithCancel(in.life)
	in.stop, in.done = stop, make(chan struct{})
	in.activated = true
	go in.run(in.life, wctx)
	n.log(chaos.Event{Kind: chaos.Created, Key: in.key, Inst: in.id})
	return nil
}

// run writes to the resource until the instance stops, and logs when dim
// cancels its context.
func (in *inst) run(ictx, wctx context.Context) {
	defer close(in.done)
	tick := time.NewTicker(writeEvery)
	defer tick.Stop()
	for {
		select {
		case <-ictx.Done():
			in.n.log(chaos.Event{Kind: chaos.Cancel, Key: in.key, Inst: in.id})
			return
		case <-wctx.Done():
			return
		case <-tick.C:
			in.n.write(in, "tick")
		}
	}
}

func (n *node) write(in *inst, what string) {
	highest, err := n.res.Write(in.key, in.token)
	if errors.Is(err, chaos.ErrRefused) {
		n.log(chaos.Event{Kind: chaos.Stale, Key: in.key, Inst: in.id, Token: in.token, Highest: highest, Detail: what})
	}
}

// keyOf is the key function: it misbehaves as the config asks.
func keyOf(c chaos.Config, timeout time.Duration) string {
	switch c.KeyFn {
	case "hang":
		time.Sleep(chaos.KeyHang(timeout))
	case "panic":
		panic("key function of " + c.Key + ": injected panic")
	}
	return c.Key
}

func (n *node) disconnect(ctx context.Context, in *inst) error {
	if in.prepared {
		in.mu.Lock()
		dispose := !in.activated
		in.disposed = in.disposed || dispose
		in.mu.Unlock()
		if dispose {
			return n.dispose(ctx, in)
		}
	}
	misbehave := in.cfg.Until == 0 || time.Now().UnixNano() < in.cfg.Until
	switch {
	case !misbehave:
	case in.cfg.Disconnect == "slow":
		d := chaos.SlowDisconnect
		if in.cfg.SlowMS > 0 {
			d = time.Duration(in.cfg.SlowMS) * time.Millisecond
		}
		time.Sleep(d)
	case in.cfg.Disconnect == "hang":
		n.hang(ctx)
	}
	in.stop()
	<-in.done
	n.write(in, "close")
	n.log(chaos.Event{Kind: chaos.Down, Key: in.key, Inst: in.id})
	switch in.cfg.Disconnect {
	case "error":
		return fmt.Errorf("disconnect %s: injected error", in.key)
	case "panic":
		panic("disconnect " + in.key + ": injected panic")
	}
	return nil
}

// hang is a disconnect that hangs until its context ends (the callback
// timeout), or until the node loses its lease: dim documents that a
// disconnect that goes on past the fence margin may outlive the lease,
// which is outside its guarantee, so a hung disconnect here honours the
// fence (the Manager no longer Ready while the program is not stopping).
// Faults that cost a lease and mass hung disconnects overlap in a round.
func (n *node) hang(ctx context.Context) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if m := n.m.Load(); m != nil && !n.stopping.Load() && !m.Ready() {
			return
		}
	}
}

// dispose is the disconnect hook for a prepared instance that was not
// activated: it logs Disposed, misbehaving as the config's Disconnect asks.
func (n *node) dispose(ctx context.Context, in *inst) error {
	if in.cfg.Until == 0 || time.Now().UnixNano() < in.cfg.Until {
		switch in.cfg.Disconnect {
		case "slow":
			time.Sleep(chaos.SlowDisconnect)
		case "hang":
			n.hang(ctx)
		}
	}
	n.log(chaos.Event{Kind: chaos.Disposed, Key: in.key, Inst: in.id})
	switch in.cfg.Disconnect {
	case "error":
		return fmt.Errorf("dispose %s: injected error", in.key)
	case "panic":
		panic("dispose " + in.key + ": injected panic")
	}
	return nil
}

func (n *node) healthcheck(_ context.Context, in *inst) error {
	if in.cfg.Health == "error" && in.health.Add(1) == 1 {
		return fmt.Errorf("health %s: injected failure", in.key)
	}
	return nil
}

// watchLeadership logs every term this node leads, with its epoch as Redis
// records it, read after the term began.
func (n *node) watchLeadership(ctx context.Context, m *dim.Manager[chaos.Config, *inst]) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var logged uint64
	var checked time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !m.IsLeader() {
			logged = 0
			continue
		}
		// A rising edge is read at once; a long term again now and then, in
		// case it ended and a new one began between two polls.
		if logged != 0 && time.Since(checked) < time.Second {
			continue
		}
		checked = time.Now()
		readAt := time.Now().UnixNano()
		sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		st, err := m.Status(sctx)
		cancel()
		if err != nil || st.Leader != n.id || st.Epoch == logged || !m.IsLeader() {
			continue
		}
		logged = st.Epoch
		n.log(chaos.Event{Kind: chaos.Leader, Epoch: st.Epoch, ReadAt: readAt})
	}
}
