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
	seq      atomic.Int64
	mu       sync.Mutex
	attempts map[string]int // key@version → create calls in this process
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
	n := &node{id: *id, pid: pid, hist: hist, res: chaos.NewResourceClient(*resource), configs: *configs, attempts: map[string]int{}}
	n.log(chaos.Event{Kind: chaos.Start, TTL: int64(*ttl)})

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ropt := rueidis.ClientOption{InitAddress: []string{*redisAddr}, ConnWriteTimeout: 2 * time.Second}
	ropt.Dialer.Timeout = 2 * time.Second
	newManager := func() (*dim.Manager[chaos.Config, *inst], error) {
		return dim.New(n.getConfig, n.create,
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
		)
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
	n.log(chaos.Event{Kind: chaos.Ready})

	watchCtx, stopWatch := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { n.watchLeadership(watchCtx, m) })

	<-sigs
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

func (n *node) create(ctx context.Context, cfg chaos.Config) (_ *inst, err error) {
	token, _ := dim.FencingToken(ctx)
	in := &inst{n: n, id: fmt.Sprintf("%s#%d#%d", n.id, n.pid, n.seq.Add(1)), key: cfg.Key, token: token, cfg: cfg}
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
		<-ctx.Done()
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
