package dim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
	"github.com/robfig/cron/v3"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Defaults of every setting, in one place. Each option's doc repeats its own.
const (
	DefaultRedisAddress              = "127.0.0.1:6379"
	DefaultHealthcheckSchedule       = "@every 10s"
	DefaultLeaderHealthcheckSchedule = "@every 5s"
	DefaultConfigRefreshSchedule     = "@every 30s"
	DefaultLeaderLockTTL             = 5 * time.Second
	DefaultLeaderLockRefresh         = time.Second // a fifth of the lock TTL
	DefaultLockKeyMajority           = 1
	DefaultNodeTTL                   = 5 * time.Second
	DefaultHeartbeat                 = time.Second // a fifth of the node TTL
	DefaultCallbackTimeout           = 10 * time.Second
	DefaultWeight                    = 1
	DefaultGiveUpAfter               = 3
	// DefaultCreateConcurrency bounds the createInstance calls that run at
	// once on one node.
	DefaultCreateConcurrency = 16
)

// Option configures a [Manager]. Options are not generic, so call sites read
// dim.WithHealthcheck(check) without type arguments; the hooks that mention
// the config or instance type are checked against C and I by [New].
type Option interface {
	apply(*settings) error
}

type optionFunc func(*settings) error

func (f optionFunc) apply(s *settings) error { return f(s) }

// settings is what the options produce; New turns it into a Manager.
type settings struct {
	service           string
	keyPrefix         string
	redis             rueidis.ClientOption
	client            rueidis.Client // given by WithRedisClient; not dim's to close
	nodeID            string
	weight            int
	nodeTTL           time.Duration
	heartbeat         time.Duration // 0: nodeTTL/5
	lockTTL           time.Duration
	lockRefresh       time.Duration // 0: lockTTL/5
	lockMajority      int
	timeout           time.Duration
	margin            time.Duration // 0: nodeTTL/5
	maxNodeTTL        time.Duration // 0: none
	durable           bool
	nodeMetrics       bool
	giveUpAfter       int // 0: never
	createConcurrency int
	historyLen        int // entries kept in the history stream; 0: none
	restartHold       time.Duration
	joinHold          time.Duration
	budgetAbs         int     // voluntary moves in flight at most; 0: no limit
	budgetRel         float64 // … as a fraction of the keys; 0: no limit
	quarantineFirst   time.Duration
	quarantineMax     time.Duration
	labels            map[string]string // WithLabels
	maxKeys, maxCost  int               // WithCaps; 0: none

	healthSpec       string
	leaderHealthSpec string
	refreshSpec      string
	health           cron.Schedule
	leaderHealth     cron.Schedule
	refresh          cron.Schedule

	// Hooks as given; New checks their types against C and I.
	key            any // func(C) string
	placement      any // func(C) Placement
	healthcheck    any // func(context.Context, I) error
	disconnect     any // func(context.Context, I) error
	prepare        any // func(context.Context, C) (I, error)
	activate       any // func(context.Context, I) error
	prepareTimeout time.Duration

	logger         *slog.Logger
	loggerSet      bool // WithLogger was given, perhaps with nil
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
}

func defaultSettings() settings {
	return settings{
		redis:             rueidis.ClientOption{InitAddress: []string{DefaultRedisAddress}},
		weight:            DefaultWeight,
		giveUpAfter:       DefaultGiveUpAfter,
		createConcurrency: DefaultCreateConcurrency,
		historyLen:        DefaultHistoryLength,
		quarantineFirst:   DefaultQuarantineFirst,
		quarantineMax:     DefaultQuarantineMax,
		nodeTTL:           DefaultNodeTTL,
		lockTTL:           DefaultLeaderLockTTL,
		lockMajority:      DefaultLockKeyMajority,
		timeout:           DefaultCallbackTimeout,
		healthSpec:        DefaultHealthcheckSchedule,
		leaderHealthSpec:  DefaultLeaderHealthcheckSchedule,
		refreshSpec:       DefaultConfigRefreshSchedule,
	}
}

// namePattern restricts service names, key prefixes and node IDs to
// characters that cannot break out of dim's Redis key names, hash tags or
// channel messages: no braces, glob characters, whitespace or controls.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$`)

// WithService names the service: every replica of one service passes the same
// name, and all of the service's Redis keys live under it. Letters, digits and
// ". _ : / @ -" only, at most 128 characters. Required.
func WithService(name string) Option {
	return optionFunc(func(s *settings) error {
		if !namePattern.MatchString(name) {
			return invalid("WithService", "%q is not a valid service name: use 1-128 letters, digits or . _ : / @ -, starting with a letter or digit", name)
		}
		s.service = name
		return nil
	})
}

// prefixPattern restricts key prefixes like names, and allows an empty one.
var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9._:/@-]{0,64}$`)

// WithKeyPrefix puts every Redis key and channel of the service under a
// prefix, for sharing a Redis with other applications; ACL key patterns can
// then name it. All replicas of a service must use the same prefix. Same
// characters as [WithService], at most 64. Default: none, keys start with
// "dim:{service}".
func WithKeyPrefix(prefix string) Option {
	return optionFunc(func(s *settings) error {
		if !prefixPattern.MatchString(prefix) {
			return invalid("WithKeyPrefix", "%q is not a valid prefix: use at most 64 letters, digits or . _ : / @ -", prefix)
		}
		s.keyPrefix = prefix
		return nil
	})
}

// WithRedis sets how to connect to Redis. TLS, ACL users, Sentinel and
// Cluster all come through [rueidis.ClientOption]. Where opt leaves them
// unset, dim's clients use smaller buffers than rueidis's defaults (64 KiB
// read and write buffers and a ring of 256 commands per connection): a
// node has a few commands in flight at a time. Default: a single server at
// 127.0.0.1:6379.
func WithRedis(opt rueidis.ClientOption) Option {
	return optionFunc(func(s *settings) error {
		if len(opt.InitAddress) == 0 {
			return invalid("WithRedis", "ClientOption.InitAddress is empty")
		}
		s.redis = opt
		s.client = nil
		return nil
	})
}

// WithRedisURL sets the Redis to connect to as a URL, for the common case:
// "redis://user:password@host:6379/0", "rediss://…" for TLS, or
// "unix:///path/to/socket". For anything more (Sentinel, Cluster, client
// certificates), use [WithRedis]. Default: redis://127.0.0.1:6379.
func WithRedisURL(url string) Option {
	return optionFunc(func(s *settings) error {
		opt, err := rueidis.ParseURL(url)
		if err != nil {
			return invalid("WithRedisURL", "%v", err)
		}
		s.redis = opt
		s.client = nil
		return nil
	})
}

// WithRedisClient makes dim use a client the caller already has, instead of
// connecting with [WithRedis]. dim never closes it. Without client-side
// caching on a client of dim's own, a waiting node polls the leader lock
// every 20 ms instead of being told of its release. Default: none.
func WithRedisClient(c rueidis.Client) Option {
	return optionFunc(func(s *settings) error {
		if c == nil {
			return invalid("WithRedisClient", "the client is nil")
		}
		s.client = c
		return nil
	})
}

// WithNodeID names this replica. IDs must be unique among the live replicas
// of a service: a second process started with the ID of a live one waits in
// Start until the first one's lease ends ([ErrNodeIDInUse] if its context
// ends first), and never takes the first one's keys. Same
// characters as [WithService]. Default: host name, process ID and a random
// suffix.
func WithNodeID(id string) Option {
	return optionFunc(func(s *settings) error {
		if !namePattern.MatchString(id) {
			return invalid("WithNodeID", "%q is not a valid node ID: use 1-128 letters, digits or . _ : / @ -", id)
		}
		s.nodeID = id
		return nil
	})
}

// WithKey sets the identity of a config: configs with the same key are the
// same instance, and a change of content under the same key replaces the
// instance in place. keyOf must be deterministic and return non-empty,
// unique keys. Its type parameter must be the Manager's config type C.
// Default: a SHA-256 hash of the config's JSON encoding, so any change of
// content is a new instance.
func WithKey[C any](keyOf func(C) string) Option {
	return optionFunc(func(s *settings) error {
		if keyOf == nil {
			return invalid("WithKey", "the key function is nil")
		}
		s.key = keyOf
		return nil
	})
}

// WithHealthcheck sets a check run on every instance on the health-check
// schedule, with the callback timeout. An error, a timeout or a panic marks
// the instance unhealthy: it is disconnected and created again, with
// exponential backoff. Its type parameter must be the Manager's instance type
// I. Default: no check.
func WithHealthcheck[I any](check func(ctx context.Context, instance I) error) Option {
	return optionFunc(func(s *settings) error {
		if check == nil {
			return invalid("WithHealthcheck", "the check is nil")
		}
		s.healthcheck = check
		return nil
	})
}

// WithDisconnect sets how to stop an instance: called exactly once for every
// created instance, when it moves away, fails its health check, is fenced or
// the Manager stops, right after the instance's context (the one passed to
// createInstance) was cancelled. Its return, with an error or not, means the
// instance has stopped: the key is released and may start on another
// replica at once, so return only when the instance can no longer act; an
// error is logged and counted. A call that outlives the callback timeout
// keeps the key claimed, here and nowhere else, until it returns. Its
// context ends at the callback timeout, and also the moment the node fences
// (at once, for the calls the fence makes): from then on the hook has the
// fence margin to return before another replica may start the key, so a
// hook that waits on its context returns in time. Its type
// parameter must be the Manager's instance type I. Default: none; the
// instance's context is cancelled all the same.
func WithDisconnect[I any](disconnect func(ctx context.Context, instance I) error) Option {
	return optionFunc(func(s *settings) error {
		if disconnect == nil {
			return invalid("WithDisconnect", "the disconnect function is nil")
		}
		s.disconnect = disconnect
		return nil
	})
}

// WithHealthcheckSchedule sets when instance health checks run, as a cron
// spec with an optional seconds field ("*/10 * * * * *") or a descriptor
// ("@every 10s"). Default: "@every 10s".
func WithHealthcheckSchedule(spec string) Option {
	return optionFunc(func(s *settings) error {
		s.healthSpec = spec
		return nil
	})
}

// WithLeaderHealthcheckSchedule sets when every node checks that the leader is
// still a live member, forcing it out if not. Cron spec as in
// [WithHealthcheckSchedule]. Default: "@every 5s".
func WithLeaderHealthcheckSchedule(spec string) Option {
	return optionFunc(func(s *settings) error {
		s.leaderHealthSpec = spec
		return nil
	})
}

// WithConfigRefreshSchedule sets when the leader calls getConfig to look for
// added, removed or changed configs and rebalances. It is also the period of
// every node's safety reconcile. Cron spec as in [WithHealthcheckSchedule].
// Default: "@every 30s".
func WithConfigRefreshSchedule(spec string) Option {
	return optionFunc(func(s *settings) error {
		s.refreshSpec = spec
		return nil
	})
}

// WithLeaderLockTTL sets how long the leader lock stays valid without being
// extended: a crashed leader is replaced after about this long. Must exceed
// [WithLeaderLockRefresh]. Default: 5s.
func WithLeaderLockTTL(ttl time.Duration) Option {
	return optionFunc(func(s *settings) error {
		s.lockTTL = ttl
		return nil
	})
}

// WithLeaderLockRefresh sets how often the leader extends its lock; less
// than the lock TTL. Default: a fifth of the lock TTL (1s with the default
// TTL).
func WithLeaderLockRefresh(every time.Duration) Option {
	return optionFunc(func(s *settings) error {
		if every <= 0 {
			return invalid("WithLeaderLockRefresh", "%v is not positive", every)
		}
		s.lockRefresh = every
		return nil
	})
}

// WithLockKeyMajority sets rueidislock's KeyMajority: the lock is held on n of
// 2n−1 Redis keys. Default: 1.
func WithLockKeyMajority(n int) Option {
	return optionFunc(func(s *settings) error {
		if n < 1 || n > 16 {
			return invalid("WithLockKeyMajority", "%d is out of range 1..16", n)
		}
		s.lockMajority = n
		return nil
	})
}

// WithNodeTTL sets the node lease: a replica that has not renewed its
// membership for this long, in Redis server time, is dead and its instances
// move. The replica itself stops its instances a margin (a fifth of the TTL)
// before its lease can run out. Default: 5s.
func WithNodeTTL(ttl time.Duration) Option {
	return optionFunc(func(s *settings) error {
		s.nodeTTL = ttl
		return nil
	})
}

// WithMaxNodeTTL declares the largest node TTL any replica of the service
// may use, now or during a rolling change of [WithNodeTTL]. dim waits at
// least this long before it grants claims on a record that Redis lost or
// rolled back, so that every replica Redis forgot has fenced itself first.
// Without it, that wait is the largest TTL that the record or this process
// has seen declared, which misses a replica that joined with a larger TTL
// just before Redis lost its writes. Must not be below this replica's own
// node TTL. Default: none.
func WithMaxNodeTTL(ttl time.Duration) Option {
	return optionFunc(func(s *settings) error {
		if ttl <= 0 {
			return invalid("WithMaxNodeTTL", "%v is not positive", ttl)
		}
		s.maxNodeTTL = ttl
		return nil
	})
}

// WithDurableRedis tells dim that Redis never loses a write it acknowledged:
// a single server (no failover, no replica promotion) with appendonly yes
// and appendfsync always. dim then trusts the record it finds after Redis
// restarted, so that a restart neither stops instances nor holds claims for
// a grace period. Anything less — appendfsync everysec, RDB snapshots, a
// failover to an asynchronous replica — can bring back an older record, and
// trusting it can run a key twice (see docs/SAFETY.md). A record that is
// absent still gets its grace period. Every replica of the service should
// agree; one without it is merely more careful. Default: off.
func WithDurableRedis() Option {
	return optionFunc(func(s *settings) error {
		s.durable = true
		return nil
	})
}

// WithFenceMargin sets how long before its lease can expire in Redis a
// replica that cannot renew it stops its instances: their contexts are
// cancelled and the disconnect hook is called at that moment. Instances must
// be stopped within the margin, which also absorbs any difference between the
// replica's clock rate and Redis's. Default: a fifth of the node TTL.
func WithFenceMargin(d time.Duration) Option {
	return optionFunc(func(s *settings) error {
		if d <= 0 {
			return invalid("WithFenceMargin", "%v is not positive", d)
		}
		s.margin = d
		return nil
	})
}

// WithHeartbeat sets how often a replica renews its lease. At least two
// renewals must fit in the part of the lease before self-fencing, so the
// interval is at most (node TTL − fence margin)/2: 2/5 of the node TTL by
// default. Default: a fifth of the node TTL (1s with the default TTL).
func WithHeartbeat(every time.Duration) Option {
	return optionFunc(func(s *settings) error {
		if every <= 0 {
			return invalid("WithHeartbeat", "%v is not positive", every)
		}
		s.heartbeat = every
		return nil
	})
}

// WithCallbackTimeout bounds each call of createInstance, a health check and
// disconnect; a call past it counts as failed. getConfig has the same bound.
// Default: 10s.
func WithCallbackTimeout(d time.Duration) Option {
	return optionFunc(func(s *settings) error {
		s.timeout = d
		return nil
	})
}

// WithWeight sets this replica's capacity relative to the others: a replica of
// weight 2 runs twice the instances of one of weight 1. In 1..[MaxWeight].
// Default: 1.
func WithWeight(w int) Option {
	return optionFunc(func(s *settings) error {
		if w < 1 || w > MaxWeight {
			return invalid("WithWeight", "%d is out of range 1..%d", w, MaxWeight)
		}
		s.weight = w
		return nil
	})
}

// WithLogger sets where dim logs. A healthy steady state logs nothing above
// Debug; every failure logs at Warn or Error. A nil logger discards
// everything. Default: [slog.Default], Warn and above only, so that no
// failure goes unseen.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(s *settings) error {
		s.logger, s.loggerSet = l, true
		return nil
	})
}

// WithGiveUpAfter sets after how many failed creates in a row a replica
// gives a key up, so that the leader places it on another replica for a
// minute: a failure that is this replica's own (a missing credential, a
// firewall) moves instead of sticking. A key given up by min(3, replicas
// that may run it) replicas is quarantined (see [WithQuarantine]); when most
// keys are given up the leader calls it an outage, and keys stay where they
// are and go on retrying with backoff, so an outage of the upstream does not
// empty the fleet. 0 never gives up. Default: 3.
func WithGiveUpAfter(n int) Option {
	return optionFunc(func(s *settings) error {
		if n < 0 {
			return invalid("WithGiveUpAfter", "%d is negative", n)
		}
		s.giveUpAfter = n
		return nil
	})
}

// WithPrepare makes moves that users do not feel: creating an instance is
// split in two, so that on a voluntary move (a join, a drain, a weight change,
// a rebalance) the new owner prepares while the old instance still runs.
//
// prepare connects, logs in and warms up, with no effect that matters if the
// instance is thrown away; it returns the instance. The old owner keeps
// running the key (no longer assigned to it) until the new owner has
// prepared or within has passed; then it disconnects and releases the key,
// and the new owner claims it and calls activate, which begins the work. The
// key is dark for a disconnect, a release and a claim, not for a whole
// create. At most one activated instance per key runs at any time; the
// fencing token is issued at the claim, so FencingToken works in activate's
// context, not in prepare's. prepare's context is the instance's lifetime
// context: it ends when the instance must stop. A prepared instance that is
// not activated (the plan changed, the key went, the node was fenced) is
// disposed of with the disconnect hook, exactly once, in the background: a
// slow disposal holds up no other key, and does not hold its own either, so
// the disconnect hook of a disposal may run while the same key is prepared,
// created or activated again on this node. That call's context carries no
// fencing token (FencingToken reports false), which tells a disposal from
// the stop of an activated instance: a disposal must not tear down state
// that a newer instance of the key shares.
//
// Failures take the normal path with createInstance: a crash, a fence, a
// key given up, and a failed or late prepare (the old owner then lets the
// key go at once, or after within). Prepare runs before any token exists:
// on an upstream that allows one session per account, preparing is itself
// a side effect that takes the session from the old instance; do not use it
// there. A node that is stopping lets its keys go at once. Every node of the
// service should set it: a node without it does not wait for the new owner.
// Both functions run under the callback timeout.
func WithPrepare[C, I any](prepare func(ctx context.Context, cfg C) (I, error), activate func(ctx context.Context, instance I) error, within time.Duration) Option {
	return optionFunc(func(s *settings) error {
		if prepare == nil || activate == nil {
			return invalid("WithPrepare", "prepare and activate must both be set")
		}
		if within <= 0 {
			return invalid("WithPrepare", "within %v is not positive", within)
		}
		s.prepare, s.activate, s.prepareTimeout = prepare, activate, within
		return nil
	})
}

// WithRestartHold makes a graceful Stop a stop to restart, as in a rolling
// restart in place (a StatefulSet, the same node ID coming back): the node
// does not hand its keys over; it stops its instances, releases them and
// leaves, and the leader keeps them assigned to its ID for d. If the same ID
// joins within d it finds its keys where they were and nothing else moves;
// otherwise they are placed on the other nodes when d ends. The trade-off:
// the node's keys run nowhere while it restarts (and for up to d if it never
// comes back), instead of moving away and back. A crash is not a Stop: its
// keys move as always. Off by default.
func WithRestartHold(d time.Duration) Option {
	return optionFunc(func(s *settings) error {
		if d <= 0 || d > maxHold {
			return invalid("WithRestartHold", "%v is not in (0, %v]", d, maxHold)
		}
		s.restartHold = d
		return nil
	})
}

// WithJoinHold makes a node that joins during a rollout with a surge (a new
// node starts, then an old one stops) wait: it gets no keys until another
// node leaves or is drained, and then takes exactly that node's keys, so that
// each key moves once and the service ends balanced. If no node leaves
// within d, it takes its share the usual way. A node that comes back after
// a restart hold is not held. Off by default.
func WithJoinHold(d time.Duration) Option {
	return optionFunc(func(s *settings) error {
		if d <= 0 || d > maxHold {
			return invalid("WithJoinHold", "%v is not in (0, %v]", d, maxHold)
		}
		s.joinHold = d
		return nil
	})
}

// WithHistory sets about how many entries the service's history keeps (a
// Redis Stream trimmed with MAXLEN ~): elections, joins, leaves, fences,
// moves, claims, releases and verdicts on failing keys and nodes, one entry
// per change listing its keys, read with dimctl history or ReadHistory. 0
// writes none. Default: 5000.
func WithHistory(entries int) Option {
	return optionFunc(func(s *settings) error {
		if entries < 0 {
			return invalid("WithHistory", "%d is negative", entries)
		}
		s.historyLen = entries
		return nil
	})
}

// WithCreateConcurrency bounds how many createInstance calls run at once on
// this node, so that a cold start or a failover of many keys does not hit
// the upstream with all of them together. Disconnects are not bounded: a
// fence must stop every instance at once. Default: 16.
func WithCreateConcurrency(n int) Option {
	return optionFunc(func(s *settings) error {
		if n < 1 {
			return invalid("WithCreateConcurrency", "%d is below 1", n)
		}
		s.createConcurrency = n
		return nil
	})
}

// WithMoveBudget bounds the voluntary moves in flight: after a join, a
// weight change, the end of a drain or a rebalance request, the leader moves
// at most max keys (and at most fraction of all keys, if fraction > 0) at a
// time, and starts the next step when those have landed (their new node
// claimed them). The steps add up to the same minimal number of moves as one
// step would make. Failures are never held back: the keys of a node that
// crashed, left, was fenced or drained, keys given up and new keys are placed
// at once. The leader applies its own setting. 0, 0 (the default) sets no
// limit; a freeze (see [Freeze]) is a budget of zero.
func WithMoveBudget(max int, fraction float64) Option {
	return optionFunc(func(s *settings) error {
		if max < 0 {
			return invalid("WithMoveBudget", "max %d is negative", max)
		}
		if !(fraction >= 0 && fraction <= 1) { // NaN too
			return invalid("WithMoveBudget", "fraction %v is outside 0..1", fraction)
		}
		s.budgetAbs, s.budgetRel = max, fraction
		return nil
	})
}

// WithQuarantine sets the backoff of a key quarantined service-wide because
// it failed on min(3, nodes that may run it) distinct nodes in a row, each of
// which gave it up (see [WithGiveUpAfter]): no node runs the key for first,
// then it is assigned again; if it fails again the wait doubles, up to max.
// The same backoff applies to a node found unhealthy (keys fail there that
// run on other nodes) before it gets a probe key. The leader applies the
// setting of the node that leads. Defaults: 10s and 10m.
func WithQuarantine(first, max time.Duration) Option {
	return optionFunc(func(s *settings) error {
		if first <= 0 {
			return invalid("WithQuarantine", "first %v is not positive", first)
		}
		if max < first {
			return invalid("WithQuarantine", "max %v is shorter than first %v", max, first)
		}
		s.quarantineFirst, s.quarantineMax = first, max
		return nil
	})
}

// WithNodeMetricAttribute adds the node ID to every metric as the attribute
// dim.node. Without it, a node is told apart by the OpenTelemetry resource
// (service.instance.id), which is where its identity belongs: the default
// node ID changes at every restart, and as an attribute it would make new
// series each time. Use it in a process that runs several Managers of one
// service. Default: off.
func WithNodeMetricAttribute() Option {
	return optionFunc(func(s *settings) error {
		s.nodeMetrics = true
		return nil
	})
}

// WithTracerProvider sets the OpenTelemetry tracer provider for dim's spans.
// Default: the global provider at the time New is called.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(s *settings) error {
		s.tracerProvider = tp
		return nil
	})
}

// WithMeterProvider sets the OpenTelemetry meter provider for dim's metrics.
// Default: the global provider at the time New is called.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(s *settings) error {
		s.meterProvider = mp
		return nil
	})
}

func invalid(option, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidOption, option, fmt.Sprintf(format, args...))
}

var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// fillDefaults fills what follows from other settings when it was not set:
// intervals from their TTLs (so that setting a TTL alone works), the node ID
// and the logger. New calls it before validate.
func (s *settings) fillDefaults() {
	if s.heartbeat == 0 {
		s.heartbeat = s.nodeTTL / 5
	}
	if s.lockRefresh == 0 {
		s.lockRefresh = s.lockTTL / 5
	}
	if s.nodeID == "" {
		s.nodeID = defaultNodeID()
	}
	switch {
	case !s.loggerSet:
		s.logger = slog.New(minLevel{slog.Default().Handler(), slog.LevelWarn})
	case s.logger == nil:
		s.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// validate checks single values and the relations between them, and parses
// the schedules. It changes nothing else.
func (s *settings) validate() error {
	if s.service == "" {
		return invalid("WithService", "a service name is required")
	}
	for _, sch := range []struct {
		option string
		spec   string
		out    *cron.Schedule
	}{
		{"WithHealthcheckSchedule", s.healthSpec, &s.health},
		{"WithLeaderHealthcheckSchedule", s.leaderHealthSpec, &s.leaderHealth},
		{"WithConfigRefreshSchedule", s.refreshSpec, &s.refresh},
	} {
		parsed, err := cronParser.Parse(sch.spec)
		if err != nil {
			return invalid(sch.option, "%q: %v", sch.spec, err)
		}
		if every, ok := strings.CutPrefix(sch.spec, "@every "); ok {
			if d, err := time.ParseDuration(strings.TrimSpace(every)); err == nil && d < time.Second {
				return invalid(sch.option, "%q: schedules run at most once a second (cron cannot go below it); use @every 1s or more", sch.spec)
			}
		}
		if parsed.Next(time.Now()).IsZero() {
			return invalid(sch.option, "%q never fires", sch.spec)
		}
		*sch.out = parsed
	}
	switch {
	case s.nodeTTL < 100*time.Millisecond:
		return invalid("WithNodeTTL", "%v is below 100ms", s.nodeTTL)
	case s.fenceMargin() >= s.nodeTTL:
		return invalid("WithFenceMargin", "%v must be shorter than the node TTL %v (the default is a fifth of it, %v)", s.fenceMargin(), s.nodeTTL, s.nodeTTL/5)
	case s.heartbeat < 0:
		return invalid("WithHeartbeat", "%v is not positive", s.heartbeat)
	case s.heartbeat > (s.nodeTTL-s.fenceMargin())/2:
		return invalid("WithHeartbeat", "%v leaves no room for two renewals in a node TTL of %v (at most %v)",
			s.heartbeat, s.nodeTTL, (s.nodeTTL-s.fenceMargin())/2)
	case s.lockTTL < 100*time.Millisecond:
		return invalid("WithLeaderLockTTL", "%v is below 100ms", s.lockTTL)
	case s.lockRefresh < 0:
		return invalid("WithLeaderLockRefresh", "%v is not positive", s.lockRefresh)
	case s.lockRefresh >= s.lockTTL:
		return invalid("WithLeaderLockRefresh", "%v must be shorter than the lock TTL %v (try %v, a fifth of it)", s.lockRefresh, s.lockTTL, s.lockTTL/5)
	case s.timeout <= 0:
		return invalid("WithCallbackTimeout", "%v is not positive", s.timeout)
	case s.maxNodeTTL > 0 && s.maxNodeTTL < s.nodeTTL:
		return invalid("WithMaxNodeTTL", "%v is below this replica's node TTL %v", s.maxNodeTTL, s.nodeTTL)
	}
	return nil
}

// minLevel passes on records at or above min only.
type minLevel struct {
	h   slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.h.Enabled(ctx, l)
}

func (m minLevel) Handle(ctx context.Context, r slog.Record) error { return m.h.Handle(ctx, r) }

func (m minLevel) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevel{m.h.WithAttrs(attrs), m.min}
}

func (m minLevel) WithGroup(name string) slog.Handler { return minLevel{m.h.WithGroup(name), m.min} }

// fenceMargin is how long before its lease can expire in Redis a replica
// stops its instances. It absorbs clock-rate differences and the time the
// instances need to stop.
func (s *settings) fenceMargin() time.Duration {
	if s.margin > 0 {
		return s.margin
	}
	return s.nodeTTL / 5
}

// checkHook verifies that a hook given to an option has the type New needs.
func checkHook[T any](option string, hook any, what string) (T, error) {
	var zero T
	if hook == nil {
		return zero, nil
	}
	fn, ok := hook.(T)
	if !ok {
		return zero, invalid(option, "the function has type %v, but the Manager's %s needs %v",
			reflect.TypeOf(hook), what, reflect.TypeFor[T]())
	}
	return fn, nil
}

func defaultNodeID() string {
	host, err := os.Hostname()
	if err != nil || !namePattern.MatchString(host) {
		host = "node"
	}
	if len(host) > 64 {
		host = host[:64]
	}
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + randomSuffix()
}
