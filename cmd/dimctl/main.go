// Command dimctl shows and steers a dim service from the outside: who leads,
// which nodes are live, how many keys each runs and which keys are not
// running or still moving. It reads everything from the service's Redis and
// runs no node itself. status and watch read dim.ReadSummary, whose cost to
// Redis does not grow with the number of keys that run; -keys (the
// instances of each node) and -json read every key with dim.ReadStatus.
//
// Usage:
//
//	dimctl [flags] <command> <service>
//
// The commands are status, watch, rebalance, history, explain, drain,
// undrain, pin, unpin, freeze, thaw, plan, web, purge and services;
// `dimctl -h` lists them and every flag, `dimctl <command> -h` shows one
// command with its flags. -json makes every command but web print JSON:
// status and watch the whole status, the others what they found or did.
//
// web serves one page that shows the service live (server-sent events,
// assets embedded, no external resources): the leader, each node with its
// keys as a grid of cells coloured by state, the keys that do not run, and
// the history. It listens on loopback (-listen, default 127.0.0.1:8080) and
// refuses any other address without -allow-remote. It is read-only unless
// started with -allow-actions, which adds drain, undrain and rebalance
// buttons; their requests must name the listener in Host, come from the
// page's own origin and carry a token that each dimctl web process makes
// anew. -json does not apply to web (a usage error): /snapshot serves the
// latest snapshot as JSON.
//
// dimctl exits 0 on success (for watch and web: when interrupted), 1 when
// Redis or the service is not as expected (web: also when it cannot
// listen), 2 on bad usage, and 3 when status finds the service unhealthy:
// keys not running, suspect nodes or a failed last rebalance, for longer
// than -down-after (so that it can serve as a health probe).
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/go-dim/dim"
	"github.com/redis/rueidis"
)

// Exit codes.
const (
	exitOK        = 0
	exitFailure   = 1
	exitUsage     = 2
	exitUnhealthy = 3
)

// passwordEnv names the environment variable read when -password is not
// given, so that the password need not show in the process list.
const passwordEnv = "DIMCTL_PASSWORD"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options is the parsed command line.
type options struct {
	redis     string
	prefix    string
	json      bool
	keys      bool
	timeout   time.Duration
	interval  time.Duration
	count     int
	downAfter time.Duration
	user      string
	password  string
	tls       bool

	holdFor    time.Duration
	key        string        // history: entries about this key
	nodeFilter string        // history: entries about this node
	since      time.Duration // history: entries this recent
	limit      int           // history, web: at most this many

	listen       string // web: the address to serve on
	allowActions bool   // web: drain, undrain and rebalance buttons
	allowRemote  bool   // web: listen on a non-loopback address
	maxKeys      int    // web: draw every key up to this many

	command string
	service string
	node    string // drain, undrain, plan: a node; explain, pin, unpin: a key
	pinTo   string // pin: the node
	planOp  string // plan: drain or join
	weight  int    // plan join
}

// run is dimctl without the process around it: it returns the exit code and
// ends when ctx does (watch) or when its command is done.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, o := newFlagSet()
	if err := o.parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(stdout, fs, commandIn(args))
			return exitOK
		}
		fmt.Fprintf(stderr, "dimctl: %v\n\n", err)
		printUsage(stderr, fs)
		return exitUsage
	}

	client, err := connect(o)
	if err != nil {
		fmt.Fprintf(stderr, "dimctl: %s\n", o.describeConnect(err))
		return exitFailure
	}
	defer client.Close()

	switch o.command {
	case "status":
		err = o.status(ctx, client, stdout)
	case "watch":
		err = o.watch(ctx, client, stdout, stderr)
	case "rebalance":
		err = o.rebalance(ctx, client, stdout)
	case "purge":
		err = o.purge(ctx, client, stdout)
	case "drain":
		err = o.drain(ctx, client, stdout)
	case "undrain":
		err = o.undrain(ctx, client, stdout)
	case "pin":
		err = o.pin(ctx, client, stdout)
	case "unpin":
		err = o.unpin(ctx, client, stdout)
	case "freeze":
		err = o.freeze(ctx, client, stdout)
	case "thaw":
		err = o.thaw(ctx, client, stdout)
	case "plan":
		err = o.plan(ctx, client, stdout)
	case "explain":
		err = o.explain(ctx, client, stdout)
	case "history":
		err = o.history(ctx, client, stdout)
	case "web":
		err = o.web(ctx, client, stdout, stderr)
	case "services":
		err = o.services(ctx, client, stdout)
	}
	var sick *unhealthy
	if errors.As(err, &sick) {
		fmt.Fprintf(stderr, "dimctl: %s\n", sick)
		return exitUnhealthy
	}
	if err != nil {
		fmt.Fprintf(stderr, "dimctl: %s\n", o.describe(err))
		return exitFailure
	}
	return exitOK
}

func newFlagSet() (*flag.FlagSet, *options) {
	o := &options{}
	fs := flag.NewFlagSet("dimctl", flag.ContinueOnError)
	// Errors and usage are printed by run, once.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&o.redis, "redis", dim.DefaultRedisAddress, "`host:port` of Redis; comma-separate several to try for a cluster")
	fs.StringVar(&o.prefix, "prefix", "", "the service's key `prefix`, as given to dim.WithKeyPrefix")
	fs.BoolVar(&o.json, "json", false, "print JSON instead of text: for status and watch the whole status, every key included; for the other commands what they found or did")
	fs.BoolVar(&o.keys, "keys", false, "status, watch: read every key and list the instances each node runs; without it (and -json) dimctl reads a summary whose cost to Redis does not grow with the number of keys")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "bound on connecting and on each Redis call")
	fs.DurationVar(&o.interval, "interval", time.Second, "watch, web: time between refreshes")
	fs.DurationVar(&o.holdFor, "for", 0, "drain, freeze: how long it lasts before it ends by itself (default 1h for drain, 30m for freeze)")
	fs.StringVar(&o.key, "key", "", "history: only entries about this `key`")
	fs.StringVar(&o.nodeFilter, "node", "", "history: only entries about this `node`")
	fs.DurationVar(&o.since, "since", 0, "history: only entries this recent (0: all)")
	fs.IntVar(&o.limit, "limit", 100, "history: at most `N` entries; web: the history entries shown")
	fs.StringVar(&o.listen, "listen", defaultListen, "web: `host:port` to serve the page on (loopback unless -allow-remote)")
	fs.BoolVar(&o.allowActions, "allow-actions", false, "web: show drain, undrain and rebalance buttons (guarded by Host, Origin and a per-process token)")
	fs.BoolVar(&o.allowRemote, "allow-remote", false, "web: allow a -listen address that is not loopback; the page has no login, so anyone who reaches it sees the service")
	fs.IntVar(&o.maxKeys, "max-keys", 2000, "web: draw every key as a cell up to `N` keys; above, read the bounded summary and draw only the keys that do not run")
	fs.IntVar(&o.weight, "weight", 1, "plan join: the weight of the node that would join")
	fs.IntVar(&o.count, "count", 0, "watch: stop after `N` refreshes; 0 means until interrupted")
	fs.DurationVar(&o.downAfter, "down-after", 5*time.Second, "status: how long a key must stay not running, or a node suspect, before it counts as down (exit 3); a handoff takes milliseconds")
	fs.StringVar(&o.user, "user", "", "Redis ACL user `name`")
	fs.StringVar(&o.password, "password", "", "Redis `password` (default $"+passwordEnv+")")
	fs.BoolVar(&o.tls, "tls", false, "connect with TLS, verifying the server against the system's roots")
	return fs, o
}

// parse reads the command line, allowing flags after the positional
// arguments too, and checks it as far as it can without Redis.
func (o *options) parse(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}

	if len(pos) == 0 {
		return errors.New("missing command and service")
	}
	o.command = pos[0]
	switch o.command {
	case "services":
		if len(pos) > 1 {
			return fmt.Errorf("too many arguments: %q", pos[1:])
		}
		o.service = "any" // for the name check below
	case "pin":
		switch len(pos) {
		case 1, 2, 3:
			return errors.New("pin needs a service, a key and a node")
		case 4:
			o.service, o.node, o.pinTo = pos[1], pos[2], pos[3]
		default:
			return fmt.Errorf("too many arguments: %q", pos[4:])
		}
	case "drain", "undrain", "explain", "unpin":
		switch len(pos) {
		case 1:
			return fmt.Errorf("missing service and %s after %q", choose(o.command == "explain" || o.command == "unpin", "key", "node"), pos[0])
		case 2:
			return fmt.Errorf("missing %s after %q %q", choose(o.command == "explain", "key", "node"), pos[0], pos[1])
		case 3:
			o.service, o.node = pos[1], pos[2]
		default:
			return fmt.Errorf("too many arguments: %q", pos[3:])
		}
	case "plan":
		switch {
		case len(pos) < 3:
			return errors.New(`plan needs a service and "drain <node>" or "join [<node>]"`)
		case pos[2] == "drain" && len(pos) == 4, pos[2] == "join" && len(pos) <= 4:
			o.service, o.planOp = pos[1], pos[2]
			if len(pos) == 4 {
				o.node = pos[3]
			}
		case pos[2] != "drain" && pos[2] != "join":
			return fmt.Errorf(`unknown plan %q: "drain <node>" or "join [<node>]"`, pos[2])
		case pos[2] == "drain" && len(pos) == 3:
			return errors.New("missing node after plan drain")
		default:
			return fmt.Errorf("too many arguments: %q", pos[4:])
		}
	case "status", "watch", "rebalance", "purge", "freeze", "thaw", "history", "web":
		switch len(pos) {
		case 1:
			return fmt.Errorf("missing service after %q", pos[0])
		case 2:
			o.service = pos[1]
		default:
			return fmt.Errorf("too many arguments: %q", pos[2:])
		}
	default:
		return fmt.Errorf("unknown command %q (commands: %s)", o.command, strings.Join(commandNames(), ", "))
	}

	if o.redis == "" {
		return errors.New("-redis is empty")
	}
	if o.timeout <= 0 {
		return fmt.Errorf("-timeout %v is not positive", o.timeout)
	}
	if o.interval <= 0 {
		return fmt.Errorf("-interval %v is not positive", o.interval)
	}
	if o.count < 0 {
		return fmt.Errorf("-count %d is negative", o.count)
	}
	if o.downAfter < 0 {
		return fmt.Errorf("-down-after %v is negative", o.downAfter)
	}
	if o.holdFor < 0 {
		return fmt.Errorf("-for %v is negative", o.holdFor)
	}
	if o.since < 0 {
		return fmt.Errorf("-since %v is negative", o.since)
	}
	if o.limit < 1 {
		return fmt.Errorf("-limit %d is below 1", o.limit)
	}
	if o.command == "web" {
		if err := o.checkWeb(); err != nil {
			return err
		}
	}
	if o.password == "" {
		o.password = os.Getenv(passwordEnv)
	}
	return checkNames(o.service, o.prefix)
}

// checkNames validates the service name and key prefix with dim's own rules.
// dim.New checks its options and connects to nothing, so it serves as the
// validator; the Manager is dropped unused.
func checkNames(service, prefix string) error {
	_, err := dim.New(
		func(context.Context) ([]string, error) { return nil, nil },
		func(context.Context, string) (string, error) { return "", nil },
		dim.WithService(service), dim.WithKeyPrefix(prefix))
	if err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), dim.ErrInvalidOption.Error()+": "))
	}
	return nil
}

// dimService names the service the command works on.
func (o *options) dimService() dim.Service {
	return dim.Service{Name: o.service, KeyPrefix: o.prefix}
}

func connect(o *options) (rueidis.Client, error) {
	opt := rueidis.ClientOption{
		InitAddress: strings.Split(o.redis, ","),
		// No client-side caching: it needs RESP3 and CLIENT TRACKING, which
		// not every server or ACL user has, and dimctl reads each key once.
		DisableCache:     true,
		Username:         o.user,
		Password:         o.password,
		ConnWriteTimeout: o.timeout,
	}
	opt.Dialer.Timeout = o.timeout
	if o.tls {
		// No ServerName: crypto/tls takes it from each address dialled,
		// which also holds for the other nodes of a cluster.
		opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return rueidis.NewClient(opt)
}

// snapshot is one read of a service: the whole status (with -json or
// -keys), or else the summary, whose cost to Redis does not grow with the
// number of keys.
type snapshot struct {
	st  *dim.Status
	sum *dim.Summary
}

// read reads one snapshot, bounded by -timeout.
func (o *options) read(ctx context.Context, client rueidis.Client) (snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if o.json || o.keys {
		st, err := dim.ReadStatus(ctx, client, o.dimService())
		return snapshot{st: st}, err
	}
	sum, err := dim.ReadSummary(ctx, client, o.dimService())
	return snapshot{sum: sum}, err
}

func (o *options) status(ctx context.Context, client rueidis.Client, stdout io.Writer) error {
	snap, err := o.read(ctx, client)
	if err != nil {
		return err
	}
	sick := snap.problems(nil)
	if !sick.none() && o.downAfter > 0 && !sick.onlyRebalance() {
		// A handoff or a rejoin takes milliseconds: look again before
		// calling anything down.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(o.downAfter):
		}
		if snap, err = o.read(ctx, client); err != nil {
			return err
		}
		sick = snap.problems(sick)
	}
	if err := o.write(stdout, snap); err != nil {
		return err
	}
	if sick.none() {
		return nil
	}
	return sick
}

// unhealthy is what makes status exit 3.
type unhealthy struct {
	down      []string // keys not running
	others    int      // keys not running that a summary does not name
	suspect   []string // nodes
	rebalance string   // the last rebalance's error
	oom       bool     // Redis is out of memory
}

// problems finds what is wrong in a snapshot; with before, only what was
// wrong then too.
func (s snapshot) problems(before *unhealthy) *unhealthy {
	if s.st != nil {
		return problems(s.st, before)
	}
	return summaryProblems(s.sum, before)
}

// summaryProblems is problems for a summary: the keys it names (those a
// live node holds in another state than running, and quarantined ones), and
// a count of the others (not claimed yet, on a dead node, or past the
// summary's limit), down when some were both times.
func summaryProblems(sum *dim.Summary, before *unhealthy) *unhealthy {
	u := &unhealthy{}
	named := 0
	var down []string
	for _, p := range sum.ProblemKeys {
		if p.AssignedTo == "" {
			continue // not assigned: a key on its way out
		}
		named++
		down = append(down, p.Key)
	}
	for _, q := range sum.QuarantinedKeys {
		down = append(down, q.Key)
	}
	slices.Sort(down)
	for _, key := range down {
		if before == nil || slices.Contains(before.down, key) {
			u.down = append(u.down, key)
		}
	}
	u.others = max(0, sum.Unowned-named) + max(0, sum.Quarantined-len(sum.QuarantinedKeys))
	if before != nil {
		u.others = min(u.others, before.others)
	}
	u.service(sum.Nodes, sum.LastRebalance, sum.Memory, before)
	return u
}

// problems finds what is wrong in st; with before, only what was wrong then
// too.
func problems(st *dim.Status, before *unhealthy) *unhealthy {
	u := &unhealthy{}
	down := slices.Clone(st.Unowned)
	for _, q := range st.Quarantined {
		down = append(down, q.Key)
	}
	slices.Sort(down)
	for _, key := range down {
		if before == nil || slices.Contains(before.down, key) {
			u.down = append(u.down, key)
		}
	}
	u.service(st.Nodes, st.LastRebalance, st.Memory, before)
	return u
}

// service finds what a status and a summary share: nodes suspect (with
// before, only those suspect then too), a failed last rebalance, a full
// Redis.
func (u *unhealthy) service(nodes []dim.NodeStatus, r *dim.LastRebalance, mem *dim.RedisMemory, before *unhealthy) {
	for _, n := range nodes {
		if n.State == "suspect" && (before == nil || slices.Contains(before.suspect, n.ID)) {
			u.suspect = append(u.suspect, n.ID)
		}
	}
	if r != nil && r.Error != "" {
		u.rebalance = r.Error
	}
	u.oom = mem != nil && mem.OutOfMemory
}

func (u *unhealthy) none() bool {
	return u.onlyRebalance() && u.rebalance == "" && !u.oom
}

func (u *unhealthy) onlyRebalance() bool {
	return len(u.down) == 0 && u.others == 0 && len(u.suspect) == 0
}

func (u *unhealthy) Error() string {
	var parts []string
	switch {
	case len(u.down) > 0 && u.others > 0:
		parts = append(parts, fmt.Sprintf("%d keys not running: %s, and %d not claimed", len(u.down)+u.others, list(u.down, quote), u.others))
	case len(u.down) > 0:
		parts = append(parts, fmt.Sprintf("%d keys not running: %s", len(u.down), list(u.down, quote)))
	case u.others > 0:
		parts = append(parts, fmt.Sprintf("%d keys not running, not claimed", u.others))
	}
	if len(u.suspect) > 0 {
		parts = append(parts, fmt.Sprintf("%d nodes suspect: %s", len(u.suspect), list(u.suspect, quote)))
	}
	if u.rebalance != "" {
		parts = append(parts, "the last rebalance failed: "+quote(u.rebalance))
	}
	if u.oom {
		parts = append(parts, "Redis is out of memory: nothing new starts")
	}
	return "unhealthy: " + strings.Join(parts, "; ")
}

// write prints a snapshot in the format chosen by -json.
func (o *options) write(w io.Writer, s snapshot) error {
	switch {
	case s.sum != nil:
		return writeSummary(w, s.sum)
	case o.json:
		return writeJSON(w, s.st)
	default:
		return writeStatus(w, s.st)
	}
}

// ANSI sequences: cursor home, then erase the whole screen.
const clearScreen = "\x1b[H\x1b[2J"

// watch prints a snapshot every -interval until ctx ends or -count snapshots
// are out. A terminal is redrawn in place; anything else gets the snapshots
// one after another, separated by a blank line. The first read must succeed,
// so that a wrong name or address fails at once; later failures are shown
// and retried, since Redis restarting is what one may be watching.
func (o *options) watch(ctx context.Context, client rueidis.Client, stdout, stderr io.Writer) error {
	tty := isTerminal(stdout)
	ticker := time.NewTicker(o.interval)
	defer ticker.Stop()
	var frame strings.Builder
	for n := 1; ; n++ {
		snap, err := o.read(ctx, client)
		if ctx.Err() != nil {
			return nil // interrupted: the normal end of a watch
		}
		if err != nil && n == 1 {
			return err
		}

		frame.Reset()
		if tty {
			fmt.Fprintf(&frame, "%sdimctl watch %s: every %v, Ctrl-C to quit\n\n", clearScreen, o.service, o.interval)
		} else if n > 1 {
			frame.WriteString("\n")
		}
		switch {
		case err != nil && tty:
			fmt.Fprintf(&frame, "dimctl: %s (retrying)\n", o.describe(err))
		case err != nil:
			fmt.Fprintf(stderr, "dimctl: %s (retrying)\n", o.describe(err))
		default:
			if err := o.write(&frame, snap); err != nil {
				return err
			}
		}
		// One write per frame, so that a terminal does not flicker.
		if _, err := io.WriteString(stdout, frame.String()); err != nil {
			return err
		}

		if o.count > 0 && n >= o.count {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// isTerminal reports whether w is a character device such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	info, err := f.Stat()
	return err == nil && info.Mode()&os.ModeCharDevice != 0
}

// rebalance asks the leader for a rebalance and waits for its answer. It
// reads the status first: a request to a service that does not exist, or has
// no live leader, would go unheard without a word.
func (o *options) rebalance(ctx context.Context, client rueidis.Client, stdout io.Writer) error {
	rctx, cancel := context.WithTimeout(ctx, o.timeout)
	st, err := dim.ReadSummary(rctx, client, o.dimService())
	cancel()
	if err != nil {
		return err
	}
	if !st.LeaderLive {
		return fmt.Errorf("service %q has no live leader to rebalance it; a new leader rebalances once elected", o.service)
	}
	rctx, cancel = context.WithTimeout(ctx, o.timeout)
	defer cancel()
	res, err := dim.RequestRebalance(rctx, client, o.dimService())
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("leader %s did not answer the rebalance request within %v (see -timeout)", st.Leader, o.timeout)
	}
	if err != nil {
		return err
	}
	return o.done(stdout, map[string]any{"epoch": res.Epoch, "moves": res.Moves},
		"rebalanced %q: leader epoch %d moved %d keys\n", o.service, res.Epoch, res.Moves)
}

// purge removes a retired service's keys.
func (o *options) purge(ctx context.Context, client rueidis.Client, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	n, err := dim.Purge(ctx, client, o.dimService())
	if err != nil {
		return err
	}
	return o.done(stdout, map[string]any{"purged": true, "removed": n}, "purged %q: %d keys removed\n", o.service, n)
}

// services lists the services in Redis, one per line.
func (o *options) services(ctx context.Context, client rueidis.Client, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	names, err := dim.Services(ctx, client, o.prefix)
	if err != nil {
		return err
	}
	if o.json {
		return json.NewEncoder(stdout).Encode(orEmpty(names))
	}
	for _, name := range names {
		if _, err := fmt.Fprintln(stdout, quote(name)); err != nil {
			return err
		}
	}
	return nil
}

// describe turns an error into the message after "dimctl: ", naming the
// Redis address and what to check, without Go's error chain jargon.
func (o *options) describe(err error) string {
	var rerr *rueidis.RedisError
	switch {
	case errors.Is(err, dim.ErrUnknownService):
		return fmt.Sprintf("no service %q in Redis at %s (check the name and -prefix)", o.service, o.redis)
	case errors.Is(err, dim.ErrServiceLive):
		return fmt.Sprintf("service %q still has live nodes in Redis at %s; stop them before purging it", o.service, o.redis)
	case errors.Is(err, context.Canceled):
		return "interrupted"
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer from Redis at %s within %v (see -timeout)", o.redis, o.timeout)
	case errors.As(err, &rerr):
		return fmt.Sprintf("Redis at %s refused: %s", o.redis, rerr.Error())
	case errors.Is(err, dim.ErrRedis):
		return fmt.Sprintf("cannot reach Redis at %s: %s", o.redis,
			strings.TrimPrefix(err.Error(), dim.ErrRedis.Error()+": "))
	default:
		return err.Error()
	}
}

// describeConnect is describe for the errors of rueidis.NewClient: a refused
// login, or anything from dialling to the handshake.
func (o *options) describeConnect(err error) string {
	var rerr *rueidis.RedisError
	var nerr net.Error
	switch {
	case errors.As(err, &rerr):
		return fmt.Sprintf("Redis at %s refused: %s", o.redis, rerr.Error())
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &nerr) && nerr.Timeout():
		return fmt.Sprintf("no answer from Redis at %s within %v (see -timeout)", o.redis, o.timeout)
	case !o.tls && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)):
		// What a TLS-only server does to a plain connection.
		return fmt.Sprintf("cannot reach Redis at %s: %v (does it need -tls?)", o.redis, err)
	}
	return fmt.Sprintf("cannot reach Redis at %s: %v", o.redis, err)
}

func choose[T any](cond bool, a, b T) T {
	if cond {
		return a
	}
	return b
}
