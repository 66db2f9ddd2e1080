// Command dimbench measures dim's failover, handoff and convergence against a
// real redis-server that it starts itself on a free loopback port, and
// prints a table of medians (with min, max and p99 over repeated runs, each
// also as a ratio to its floor) and writes the same as JSON.
//
// Usage:
//
//	dimbench [flags]
//
// Scenarios (-scenarios, comma-separated, default all but scale):
//
//	handoff  a node of M stops gracefully: Stop called → all its keys live elsewhere
//	crash    a node process is SIGKILLed: kill → all its keys live elsewhere, per node TTL
//	leader   the leader process is SIGKILLed (time to a new leader and to every key
//	         live again, per lock TTL), and the leader stops gracefully
//	cold     M nodes start from nothing: first Start → every key live once
//	steady   commands/s, Redis CPU and memory, this process's CPU and heap
//	churn    a rolling restart of all M nodes: moves versus the minimum, and time
//	restart  all M nodes of a known service stop gracefully and M new ones start:
//	         last Start returned → every key live (no grace period), moves
//	rolling  a rolling update of all M nodes as Kubernetes runs one, with a surge
//	         (new node ready, then an old one stops) and in place (stop, start
//	         with the same ID): moves, and the longest time a key ran nowhere
//	fence    a node running n instances with a slow disconnect hook is cut off
//	         from Redis: fence → last disconnect returned, per n
//	prepare  a join moves n keys whose start takes 500 ms: the dark gap per key
//	         with and without WithPrepare (make-before-break)
//	reads    the full status and the summary of a converged service: time in
//	         Redis per read (SLOWLOG), time the caller waits, reply size
//	budget   a node joins M nodes × N keys, each with WithMoveBudget(max, 0) and
//	         without: moves against the fewest, the most keys in flight at once,
//	         steps and time to converge
//	history  M nodes × N keys with the history stream on (the default) and off
//	         (WithHistory(0)): steady commands/s per node and their ratio, and
//	         the cold start's XADDs, per claim/release batch, and their share
//	scale    a first start of M nodes × N keys (1M by default): grace end → every
//	         key live, the longest script call (SLOWLOG), BUSY replies and fences,
//	         memory per key in the process and in Redis, Redis CPU once steady
//
// In-process nodes each have their own Redis connections; crash scenarios
// run the victim as a child process (this program re-executed as "node")
// that reports each createInstance with its time on a pipe.
//
// The floors are measured in the same run: the Redis round trip through
// rueidis (PING p50, before each scenario) and, for crashes, the TTL.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/redis/rueidis"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "node" {
		os.Exit(nodeMain(os.Args[2:]))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// size is a number of nodes and of keys, written "MxN".
type size struct{ Nodes, Keys int }

func (s size) String() string { return fmt.Sprintf("%d nodes × %s keys", s.Nodes, count(s.Keys)) }

func count(n int) string {
	switch {
	case n >= 1000 && n%1000 == 0:
		return strconv.Itoa(n/1000) + "k"
	default:
		return strconv.Itoa(n)
	}
}

// config is the parsed command line.
type config struct {
	scenarios    map[string]bool
	runs         int
	jsonPath     string
	redisAddr    string
	redisServer  string
	ttl          time.Duration
	handoffKeys  []int
	prepareKeys  int
	handoffNodes int
	crashTTLs    []time.Duration
	leaderTTLs   []time.Duration
	leaderStops  int
	cold         []size
	coldTTL      time.Duration
	steady       []size
	steadyTTL    time.Duration
	steadyWindow time.Duration
	churn        []size
	churnTTL     time.Duration
	restart      []size
	restartTTL   time.Duration
	rolling      []size
	rollingTTL   time.Duration
	rollingPause time.Duration
	fence        []int
	budget       []size
	history      []size
	budgetMoves  int
	budgetTTL    time.Duration
	fenceTTL     time.Duration
	reads        []size
	readsTTL     time.Duration
	scale        []size
	scaleTTL     time.Duration
	scaleWindow  time.Duration
	scaleProfile bool
	fenceHook    time.Duration
	cpuProfile   string
	memProfile   string
	mdPath       string
	render       string
	verbose      bool
}

var allScenarios = []string{"handoff", "crash", "leader", "cold", "steady", "churn", "restart", "fence", "rolling", "prepare", "reads", "budget", "history", "scale"}

func flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	return fs
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flagSet("dimbench")
	fs.SetOutput(stderr)
	var (
		cfg                                             config
		scenarios, handoff, crash, leader, cold, steady string
		churn, restart, fence, rolling, reads, budget   string
		history                                         string
		scale                                           string
		quick                                           bool
	)
	fs.StringVar(&scenarios, "scenarios", "all", "comma-separated scenarios: "+strings.Join(allScenarios, ",")+", or all (all but scale, unless -quick)")
	fs.IntVar(&cfg.runs, "runs", 0, "runs per case (0: each case's default, from 3 to 15)")
	fs.StringVar(&cfg.jsonPath, "json", "", "also write the results as JSON to this file")
	fs.StringVar(&cfg.redisAddr, "redis", "", "use this Redis (host:port) instead of starting redis-server")
	fs.StringVar(&cfg.redisServer, "redis-server", "redis-server", "the redis-server binary to start")
	fs.DurationVar(&cfg.ttl, "ttl", time.Second, "node TTL of the handoff and graceful leader stop scenarios")
	fs.StringVar(&handoff, "handoff-keys", "12,1000,10000", "handoff: key counts")
	fs.IntVar(&cfg.handoffNodes, "handoff-nodes", 3, "handoff: nodes (M)")
	fs.StringVar(&crash, "crash-ttls", "1s,2s,5s", "crash: node TTLs")
	fs.StringVar(&leader, "leader-ttls", "1s,2s", "leader: lock TTLs (node TTL the same)")
	fs.IntVar(&cfg.leaderStops, "leader-stops", 15, "leader: graceful leader stops")
	fs.StringVar(&cold, "cold", "3x12,10x1000,100x10000,100x100000", "cold: sizes, nodes x keys")
	fs.DurationVar(&cfg.coldTTL, "cold-ttl", time.Second, "cold: node TTL, which is also the first start's grace")
	fs.StringVar(&steady, "steady", "100x10000,100x1000", "steady: sizes, nodes x keys")
	fs.DurationVar(&cfg.steadyTTL, "steady-ttl", 5*time.Second, "steady: node TTL (5s: dim's default timings)")
	fs.DurationVar(&cfg.steadyWindow, "steady-window", 30*time.Second, "steady: measurement window, split in three")
	fs.StringVar(&churn, "churn", "3x12,10x1000", "churn: sizes, nodes x keys")
	fs.DurationVar(&cfg.churnTTL, "churn-ttl", time.Second, "churn: node TTL")
	fs.StringVar(&restart, "restart", "3x12,100x10000", "restart: sizes, nodes x keys")
	fs.DurationVar(&cfg.restartTTL, "restart-ttl", 5*time.Second, "restart: node TTL (5s: dim's default timings)")
	fs.StringVar(&rolling, "rolling", "10x1000", "rolling: sizes, nodes x keys")
	fs.IntVar(&cfg.prepareKeys, "prepare", 12, "prepare: keys that move in the handoff")
	fs.DurationVar(&cfg.rollingTTL, "rolling-ttl", 5*time.Second, "rolling: node TTL (5s: dim's default timings)")
	fs.DurationVar(&cfg.rollingPause, "rolling-pause", time.Second, "rolling: the orchestrator's reaction between a pod ready (or gone) and its next action")
	fs.StringVar(&budget, "budget", "10x10000", "budget: sizes, nodes x keys, before one more node joins")
	fs.IntVar(&cfg.budgetMoves, "budget-moves", 500, "budget: WithMoveBudget's max, the voluntary moves in flight at most")
	fs.DurationVar(&cfg.budgetTTL, "budget-ttl", 5*time.Second, "budget: node TTL (5s: dim's default timings)")
	fs.StringVar(&fence, "fence", "100,1000,10000", "fence: instance counts of the node that fences")
	fs.DurationVar(&cfg.fenceTTL, "fence-ttl", 2*time.Second, "fence: node TTL; the fence margin is a fifth of it and must exceed -fence-hook")
	fs.DurationVar(&cfg.fenceHook, "fence-hook", 150*time.Millisecond, "fence: how long each disconnect hook takes")
	fs.StringVar(&reads, "reads", "10x100000", "reads: sizes, nodes x keys")
	fs.StringVar(&history, "history", "100x1000,100x10000", "history: sizes, nodes x keys, each run with the history on and off (timings and window of -steady-ttl and -steady-window)")
	fs.DurationVar(&cfg.readsTTL, "reads-ttl", 5*time.Second, "reads: node TTL (5s: dim's default timings)")
	fs.StringVar(&scale, "scale", "3x1000000,10x1000000", "scale: sizes, nodes x keys")
	fs.DurationVar(&cfg.scaleTTL, "scale-ttl", 5*time.Second, "scale: node TTL (5s: dim's default timings)")
	fs.DurationVar(&cfg.scaleWindow, "scale-window", 10*time.Second, "scale: steady-state window once converged")
	fs.BoolVar(&cfg.scaleProfile, "scale-profile", false, "scale: log every Redis call of the cold start (SLOWLOG threshold 0) and sum them by kind; the 20 ms bound is then checked from the same log")
	fs.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run")
	fs.StringVar(&cfg.memProfile, "memprofile", "", "write a heap profile while the first steady-state size runs (else at the end)")
	fs.StringVar(&cfg.mdPath, "md", "", "also write the table as Markdown to this file")
	fs.StringVar(&cfg.render, "render", "", "run nothing: print the table of this JSON file (and -md), as written by -json")
	fs.BoolVar(&cfg.verbose, "v", false, "print dim's warnings as they happen")
	fs.BoolVar(&quick, "quick", false, "tiny sizes and one run each, to check the program works (overrides the size flags)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if quick {
		const ttl = 500 * time.Millisecond
		handoff, crash, leader, cold, steady, churn = "12", ttl.String(), ttl.String(), "3x12", "3x12", "3x12"
		cfg.leaderStops, cfg.ttl, cfg.coldTTL, cfg.steadyTTL, cfg.churnTTL = 2, ttl, ttl, ttl, ttl
		restart, cfg.restartTTL = "3x12", ttl
		rolling, cfg.rollingTTL, cfg.rollingPause = "3x12", ttl, 100*time.Millisecond
		fence, cfg.fenceTTL, cfg.fenceHook = "100", time.Second, 50*time.Millisecond
		reads, cfg.readsTTL = "3x12", ttl
		scale, cfg.scaleTTL, cfg.scaleWindow = "3x300", ttl, 300*time.Millisecond
		budget, cfg.budgetMoves, cfg.budgetTTL = "3x30", 3, ttl
		history = "3x12,3x24"
		cfg.steadyWindow = 900 * time.Millisecond
		if cfg.runs == 0 {
			cfg.runs = 1
		}
	}
	cfg.scenarios = map[string]bool{}
	for s := range strings.SplitSeq(scenarios, ",") {
		s = strings.TrimSpace(s)
		switch {
		case s == "all":
			for _, a := range allScenarios {
				// A million keys take minutes: only when asked for, or tiny.
				cfg.scenarios[a] = a != "scale" || quick
			}
		case strings.Contains(","+strings.Join(allScenarios, ",")+",", ","+s+","):
			cfg.scenarios[s] = true
		default:
			return nil, fmt.Errorf("-scenarios: unknown scenario %q", s)
		}
	}
	var err error
	if cfg.handoffKeys, err = parseList(handoff, strconv.Atoi); err != nil {
		return nil, fmt.Errorf("-handoff-keys: %w", err)
	}
	if cfg.crashTTLs, err = parseList(crash, time.ParseDuration); err != nil {
		return nil, fmt.Errorf("-crash-ttls: %w", err)
	}
	if cfg.leaderTTLs, err = parseList(leader, time.ParseDuration); err != nil {
		return nil, fmt.Errorf("-leader-ttls: %w", err)
	}
	for _, p := range []struct {
		flag string
		s    string
		out  *[]size
	}{{"-cold", cold, &cfg.cold}, {"-steady", steady, &cfg.steady}, {"-churn", churn, &cfg.churn}, {"-restart", restart, &cfg.restart}, {"-rolling", rolling, &cfg.rolling}, {"-reads", reads, &cfg.reads}, {"-budget", budget, &cfg.budget}, {"-history", history, &cfg.history}, {"-scale", scale, &cfg.scale}} {
		if *p.out, err = parseList(p.s, parseSize); err != nil {
			return nil, fmt.Errorf("%s: %w", p.flag, err)
		}
	}
	if cfg.fence, err = parseList(fence, strconv.Atoi); err != nil {
		return nil, fmt.Errorf("-fence: %w", err)
	}
	for _, n := range cfg.fence {
		if n < 1 {
			return nil, fmt.Errorf("-fence: %d instances: at least 1", n)
		}
	}
	if cfg.budgetMoves < 1 {
		return nil, fmt.Errorf("-budget-moves: %d: at least 1", cfg.budgetMoves)
	}
	if cfg.handoffNodes < 2 {
		return nil, errors.New("-handoff-nodes: at least 2")
	}
	if cfg.fenceHook <= 0 || cfg.fenceHook >= cfg.fenceTTL/5 {
		return nil, fmt.Errorf("-fence-hook: %v must be above 0 and below the fence margin, %v (a fifth of -fence-ttl)", cfg.fenceHook, cfg.fenceTTL/5)
	}
	return &cfg, nil
}

func parseList[T any](s string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := parse(f)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func parseSize(s string) (size, error) {
	a, b, ok := strings.Cut(s, "x")
	n, err1 := strconv.Atoi(a)
	k, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || n < 1 || k < 1 {
		return size{}, fmt.Errorf("%q is not NODESxKEYS", s)
	}
	return size{n, k}, nil
}

// bench is one run of the program.
type bench struct {
	cfg         *config
	addr        string
	admin       rueidis.Client
	exe         string
	seq         int
	warns       *warnCounter
	log         io.Writer
	floor       float64 // PING p50 of the current scenario, ms
	results     []*Result
	details     map[string]any
	failures    int
	heapWritten bool
}

// Report is the JSON document.
type Report struct {
	Machine  map[string]string `json:"machine"`
	Started  time.Time         `json:"started"`
	Took     string            `json:"took"`
	Command  string            `json:"command"`
	Results  []*Result         `json:"results"`
	Details  map[string]any    `json:"details"`
	Warnings int64             `json:"dim_warnings"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "dimbench:", err)
		return 2
	}
	if cfg.render != "" {
		if err := render(cfg, stdout); err != nil {
			fmt.Fprintln(stderr, "dimbench:", err)
			return 1
		}
		return 0
	}
	if err := runBench(ctx, cfg, args, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "dimbench:", err)
		return 1
	}
	return 0
}

func runBench(ctx context.Context, cfg *config, args []string, stdout, stderr io.Writer) (err error) {
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	b := &bench{cfg: cfg, log: stderr, warns: &warnCounter{}, details: map[string]any{}}
	if cfg.verbose {
		b.warns.verbose = stderr
	}
	if b.exe, err = os.Executable(); err != nil {
		b.exe = os.Args[0]
	}
	started := time.Now()
	machine := machineInfo()
	machine["load average at start"] = loadAvg()

	b.addr = cfg.redisAddr
	if b.addr == "" {
		srv, err := startRedis(cfg.redisServer)
		if err != nil {
			return err
		}
		defer srv.Close()
		b.addr = srv.Addr()
		b.progress("redis-server started on %s", b.addr)
	}
	b.admin, err = rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{b.addr}, DisableCache: true})
	if err != nil {
		return fmt.Errorf("connect to %s: %w", b.addr, err)
	}
	defer b.admin.Close()
	if srv, err := info(ctx, b.admin, "server"); err == nil {
		machine["redis"] = srv["redis_version"]
	}

	for _, s := range []struct {
		name string
		fn   func(context.Context) error
	}{
		{"handoff", b.handoff}, {"crash", b.crash}, {"leader", b.leader},
		{"cold", b.cold}, {"steady", b.steady}, {"churn", b.churn},
		{"restart", b.restart}, {"fence", b.fence}, {"rolling", b.rolling}, {"prepare", b.prepare}, {"reads", b.reads},
		{"budget", b.budget}, {"history", b.history}, {"scale", b.scale},
	} {
		if !cfg.scenarios[s.name] {
			continue
		}
		if err := b.measureFloor(ctx, s.name); err != nil {
			return err
		}
		b.progress("scenario %s", s.name)
		start := time.Now()
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		b.progress("scenario %s done in %v", s.name, time.Since(start).Round(time.Millisecond))
	}
	machine["load average at end"] = loadAvg()

	if !b.heapWritten {
		runtime.GC()
		if err := b.heapProfile(); err != nil {
			return err
		}
	}

	printTable(stdout, b.results)
	fmt.Fprintf(stdout, "\nmachine: %s, %s cores, %s; %s; redis %s; load average %s → %s\n",
		machine["cpu"], machine["cores"], machine["memory"], machine["go"], machine["redis"],
		machine["load average at start"], machine["load average at end"])
	if n := b.warns.n.Load(); n > 0 {
		fmt.Fprintf(stdout, "dim logged %d warnings; first: %q\n", n, b.warns.first)
	}
	defer func() {
		if err == nil && b.failures > 0 {
			err = fmt.Errorf("%d cases failed (see the table)", b.failures)
		}
	}()
	if err := writeMarkdown(cfg.mdPath, b.results, machine); err != nil {
		return err
	}
	if cfg.jsonPath != "" {
		rep := Report{Machine: machine, Started: started, Took: time.Since(started).Round(time.Second).String(),
			Command: "dimbench " + strings.Join(args, " "), Results: b.results, Details: b.details,
			Warnings: b.warns.n.Load()}
		data, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(cfg.jsonPath, append(data, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(b.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

// measureFloor measures the Redis round trip before a scenario.
func (b *bench) measureFloor(ctx context.Context, scenario string) error {
	r, err := pingFloor(ctx, b.admin, 2000)
	if err != nil {
		return fmt.Errorf("ping floor: %w", err)
	}
	r.Case = "before " + scenario
	b.floor = r.Median
	b.results = append(b.results, r)
	return nil
}

// runs is the number of runs of a case: -runs, or the case's default.
func (b *bench) runs(def int) int {
	if b.cfg.runs > 0 {
		return b.cfg.runs
	}
	return def
}

// add summarises a result, sets the PING floor if it has none, and keeps it.
func (b *bench) add(r *Result) *Result {
	if r.FloorName == "" && r.Unit == "ms" {
		r.withFloor("PING p50", b.floor)
	}
	r.summarise()
	b.results = append(b.results, r)
	b.progress("  %s / %s / %s: median %s %s (min %s, max %s) over %d runs",
		r.Scenario, r.Case, r.Metric, num(r.Median), r.Unit, num(r.Min), num(r.Max), r.Runs)
	return r
}

// failed records a case that could not be measured, so that the run goes
// on with the others; it reports whether err was not nil.
func (b *bench) failed(scenario, cs string, err error) bool {
	if err == nil {
		return false
	}
	b.progress("  %s / %s FAILED: %v", scenario, cs, err)
	b.results = append(b.results, &Result{Scenario: scenario, Case: cs, Metric: "FAILED", Note: err.Error()})
	b.failures++
	return true
}

// mark is where dim's warning counts stood when a case began.
type mark struct{ warns, fences int64 }

func (b *bench) mark() mark { return mark{b.warns.n.Load(), b.warns.fences.Load()} }

// annotate notes on results how many warnings and self-fencings dim logged
// since m: a fenced node drops its instances and rejoins, which slows
// convergence, and shows a starved process.
func (b *bench) annotate(m mark, results ...*Result) {
	w, f := b.warns.n.Load()-m.warns, b.warns.fences.Load()-m.fences
	if w == 0 {
		return
	}
	for _, r := range results {
		if r.Note != "" {
			r.Note += "; "
		}
		r.Note += fmt.Sprintf("dim logged %d warnings, %d of them self-fencings", w, f)
	}
}

func printTable(w io.Writer, results []*Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "scenario\tcase\tmetric\truns\tmedian\tmin – max\tp99\tfloor\t× floor\ttarget\tmet")
	for _, r := range results {
		floor, ratio := "", ""
		if r.Floor > 0 {
			floor = r.FloorName + " " + num(r.Floor) + " ms"
			ratio = num(r.Ratio)
		}
		met := ""
		if r.Met != nil {
			met = map[bool]string{true: "met", false: "MISSED"}[*r.Met]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s %s\t%s – %s\t%s\t%s\t%s\t%s\t%s\n",
			r.Scenario, r.Case, r.Metric, r.Runs, num(r.Median), r.Unit, num(r.Min), num(r.Max), num(r.P99),
			floor, ratio, r.Target, met)
	}
	tw.Flush()
}

// render prints the table of a JSON report, and writes it as Markdown.
func render(cfg *config, stdout io.Writer) error {
	data, err := os.ReadFile(cfg.render)
	if err != nil {
		return err
	}
	var rep Report
	if err := json.Unmarshal(data, &rep); err != nil {
		return fmt.Errorf("%s: %w", cfg.render, err)
	}
	printTable(stdout, rep.Results)
	return writeMarkdown(cfg.mdPath, rep.Results, rep.Machine)
}

func writeMarkdown(path string, results []*Result, machine map[string]string) error {
	if path == "" {
		return nil
	}
	var md strings.Builder
	printMarkdown(&md, results)
	fmt.Fprintf(&md, "\nMachine: %s, %s cores, %s, %s, kernel %s; Redis %s; load average (1, 5, 15 min) %s at the start, %s at the end.\n",
		machine["cpu"], machine["cores"], machine["memory"], machine["go"], machine["kernel"], machine["redis"],
		machine["load average at start"], machine["load average at end"])
	return os.WriteFile(path, []byte(md.String()), 0o644)
}

// printMarkdown writes the table for BENCHMARKS.md: times in ms, floors
// and ratios, targets, and the notes under it.
func printMarkdown(w io.Writer, results []*Result) {
	fmt.Fprintln(w, "| scenario | case | metric | runs | median | min – max | p99 | floor | × floor | target | met |")
	fmt.Fprintln(w, "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
	for _, r := range results {
		if r.Metric == "FAILED" {
			fmt.Fprintf(w, "| %s | %s | **failed** | | | | | | | | %s |\n", r.Scenario, r.Case, strings.ReplaceAll(r.Note, "|", "/"))
			continue
		}
		floor, ratio, met := "", "", ""
		if r.Floor > 0 {
			floor = r.FloorName + " " + num(r.Floor) + " ms"
			ratio = num(r.Ratio)
		}
		if r.Met != nil {
			met = map[bool]string{true: "met", false: "**missed**"}[*r.Met]
		}
		fmt.Fprintf(w, "| %s | %s | %s | %d | %s %s | %s – %s | %s | %s | %s | %s | %s |\n",
			r.Scenario, r.Case, r.Metric, r.Runs, num(r.Median), r.Unit, num(r.Min), num(r.Max), num(r.P99),
			floor, ratio, r.Target, met)
	}
}

func machineInfo() map[string]string {
	m := map[string]string{
		"go":    runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH,
		"cores": strconv.Itoa(runtime.NumCPU()),
	}
	m["host"], _ = os.Hostname()
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m["cpu"] = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				m["memory"] = fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m["kernel"] = strings.TrimSpace(string(b))
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
