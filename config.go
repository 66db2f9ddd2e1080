package dim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"time"
)

// config is one configured instance as getConfig returned it, with the hash
// of its content that tells whether it changed.
type config[C any] struct {
	value  C
	sum    string
	hashed bool // sum is known; a node hashes only the keyed configs assigned to it
}

// hashedSum is the content hash, or "" while it is not known.
func (c config[C]) hashedSum() string {
	if !c.hashed {
		return ""
	}
	return c.sum
}

// load calls getConfig and keys its result, all under the callback timeout:
// getConfig, the key function and a config's JSON encoding are the user's
// code and may hang or panic. Lazy leaves keyed configs unhashed: a node
// needs the content hash only of the configs assigned to it (see withSums),
// the leader's fingerprint needs all of them. A call that hangs is
// abandoned, and until it returns no other call with the same guard is
// started (the leader and the node loop have one each); the caller keeps
// what it had, as for any failed getConfig. Any error leaves the caller's
// previous configs in force.
func (m *Manager[C, I]) load(ctx context.Context, lazy bool, g *guard) (map[string]config[C], error) {
	var out map[string]config[C]
	err := m.callOnce(ctx, g, "getConfig", func(ctx context.Context) error {
		list, err := m.getConfig(ctx)
		if err != nil {
			return err
		}
		out, err = m.index(list, lazy)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("getConfig: %w", err)
	}
	return out, nil
}

// index keys a config list; lazy leaves keyed configs unhashed.
func (m *Manager[C, I]) index(list []C, lazy bool) (map[string]config[C], error) {
	out := make(map[string]config[C], len(list))
	for i, c := range list {
		key, sum, err := m.identify(c, lazy)
		if err != nil {
			return nil, fmt.Errorf("config %d: %w", i, err)
		}
		n := len(out)
		out[key] = config[C]{value: c, sum: sum, hashed: !lazy || m.keyOf == nil}
		if len(out) == n {
			return nil, fmt.Errorf("config %d: %w: %q", i, ErrDuplicateKey, key)
		}
	}
	return out, nil
}

// withSums hashes the configs of keys that are not hashed yet, under the
// callback timeout: a config's MarshalJSON is the user's code. A config that
// cannot be hashed still runs; only changes of its content go unnoticed.
func (m *Manager[C, I]) withSums(ctx context.Context, configs map[string]config[C], keys map[string]bool) {
	todo := map[string]C{}
	for key := range keys {
		if c, ok := configs[key]; ok && !c.hashed {
			todo[key] = c.value
		}
	}
	if len(todo) == 0 {
		return
	}
	var sums map[string]string
	var failed []string
	err := m.callOnce(ctx, &m.hashGuard, "config JSON encoding", func(context.Context) error {
		sums = make(map[string]string, len(todo))
		for key, v := range todo {
			sum, err := callSafely(func() (string, error) { return contentHash(v) })
			if err != nil {
				failed = append(failed, key)
			}
			sums[key] = sum
		}
		return nil
	})
	if err != nil {
		m.log.Warn("cannot hash configs; changes of their content go unnoticed for now", "err", err)
		m.tel.callbackFailed(ctx, "hash")
		return
	}
	for key, sum := range sums {
		c := configs[key]
		c.sum, c.hashed = sum, true
		configs[key] = c
	}
	if len(failed) > 0 {
		slices.Sort(failed)
		m.log.Warn("configs cannot be encoded as JSON; they run, but changes of their content go unnoticed", "keys", failed)
		m.tel.callbackFailed(ctx, "hash")
	}
}

// identify returns a config's key and content hash. Without WithKey the key
// is the content hash, so every change of content is a new instance.
func (m *Manager[C, I]) identify(c C, lazy bool) (key, sum string, err error) {
	if isNil(c) {
		return "", "", fmt.Errorf("%w: config is nil", ErrInvalidConfig)
	}
	if m.keyOf == nil {
		sum, err = callSafely(func() (string, error) { return contentHash(c) })
		if err != nil {
			return "", "", fmt.Errorf("%w: %w (give WithKey to key such configs)", ErrInvalidConfig, err)
		}
		return sum, sum, nil
	}
	key, err = callSafely(func() (string, error) { return m.keyOf(c), nil })
	if err != nil {
		return "", "", fmt.Errorf("key function: %w", err)
	}
	if key == "" {
		return "", "", fmt.Errorf("%w: the key function returned an empty key", ErrInvalidKey)
	}
	if lazy {
		return key, "", nil
	}
	// A keyed config that cannot be encoded still runs; only changes of its
	// content go unnoticed.
	sum, _ = callSafely(func() (string, error) { return contentHash(c) })
	return key, sum, nil
}

func contentHash(c any) (string, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("cannot encode config as JSON: %w", err)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:16]), nil
}

func isNil(c any) bool {
	if c == nil {
		return true
	}
	switch v := reflect.ValueOf(c); v.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Interface, reflect.Func, reflect.Chan:
		return v.IsNil()
	}
	return false
}

// nodeConfigs returns the configs this node knows, calling getConfig again
// when they are marked stale or an assigned key is missing from them (the
// leader saw a newer list). On error the old configs stay in force. fresh
// tells that getConfig was called and answered just now: only then may a
// missing key be taken to be missing from this node's config source.
func (m *Manager[C, I]) nodeConfigs(ctx context.Context, assigned map[string]bool) (configs map[string]config[C], fresh bool) {
	stale := m.configsStale.Swap(false) || m.configs == nil
	if !stale && time.Since(m.configsAt) > m.s.heartbeat {
		for key := range assigned {
			if _, ok := m.configs[key]; !ok {
				stale = true
				break
			}
		}
	}
	if !stale {
		m.withSums(ctx, m.configs, assigned)
		return m.configs, false
	}
	configs, err := m.load(ctx, true, &m.nodeConfigGuard)
	if err != nil {
		m.logPanic("getConfig", err)
		m.log.Error("cannot refresh configs; keeping what runs", "err", err)
		m.tel.configFailed(ctx)
		m.cfgErrs.report(ctx, m, err, len(assigned))
		m.configsStale.Store(true)
		m.ledger.retryAt = time.Now().Add(m.configBackoff.next())
		if m.configs == nil {
			return map[string]config[C]{}, false
		}
		m.withSums(ctx, m.configs, assigned)
		return m.configs, false
	}
	m.configBackoff.reset()
	m.cfgErrs.report(ctx, m, nil, 0)
	m.withSums(ctx, configs, assigned)
	m.configs, m.configsAt = configs, time.Now()
	return configs, true
}

// fingerprint summarises a config list, so the leader can tell nodes when
// content changed under unchanged keys.
func fingerprint[C any](configs map[string]config[C]) string {
	keys := make([]string, 0, len(configs))
	for k := range configs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := sha256.New()
	// "len:key=sum;" per key, built by hand: at a million keys Fprintf
	// was a third of the leader's time here.
	var buf []byte
	for _, k := range keys {
		buf = strconv.AppendInt(buf[:0], int64(len(k)), 10)
		buf = append(append(append(append(append(buf, ':'), k...), '='), configs[k].sum...), ';')
		h.Write(buf)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// configErrors publishes this node's last getConfig failure where Status
// reads it, when it changes: a failure, or the success after one.
type configErrors struct {
	mu   sync.Mutex
	last string
}

func (c *configErrors) report(ctx context.Context, m interface {
	publishConfigError(context.Context, string, int) error
}, err error, kept int) {
	msg := ""
	if err != nil {
		msg = shortError(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if msg == c.last {
		return
	}
	if m.publishConfigError(ctx, msg, kept) == nil {
		c.last = msg
	}
}

// leaderInput reads the configs for the leader (see electorFeed.configs):
// their keys, placements and, unless membership is set, fingerprint.
func (m *Manager[C, I]) leaderInput(ctx context.Context, membership bool) (leaderInput, error) {
	configs, err := m.load(ctx, membership, &m.leaderConfigGuard)
	if err != nil {
		return leaderInput{}, err
	}
	in := leaderInput{keys: make([]string, 0, len(configs))}
	for key := range configs {
		in.keys = append(in.keys, key)
	}
	in.placements, in.placementSum, in.placementErr = m.placements(configs, !membership)
	if !membership {
		in.print = fingerprint(configs)
	}
	return in, nil
}

// publishConfigError writes or clears this node's config error.
func (e *env) publishConfigError(ctx context.Context, msg string, kept int) error {
	ctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	if msg == "" {
		return e.client.Do(ctx, e.client.B().Hdel().Key(e.k.cfgErr).Field(e.s.nodeID).Build()).Error()
	}
	b, _ := json.Marshal(configError{Err: msg, At: time.Now().UnixMilli(), Kept: kept})
	return e.client.Do(ctx, e.client.B().Hset().Key(e.k.cfgErr).FieldValue().FieldValue(e.s.nodeID, string(b)).Build()).Error()
}

// configError is a node's published getConfig failure.
type configError struct {
	Err  string `json:"e"`
	At   int64  `json:"t"` // unix ms, the node's clock
	Kept int    `json:"k"` // keys assigned to the node, kept as they were
}
