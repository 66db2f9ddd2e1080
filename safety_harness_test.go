package dim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/faultproxy"
	"github.com/go-dim/dim/internal/history"
	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/require"
)

// safetyCluster is a testCluster whose nodes also record every create call's
// fencing token and whether its context had already ended, and whose create
// and disconnect hooks a test can slow down or block. It runs on a Redis
// started with the given options (AOF, for example).
type safetyCluster struct {
	*testCluster

	tokMu  sync.Mutex
	tokens []tokenRecord

	// cancelledAtEntry counts create calls whose context had ended before
	// createInstance was even called.
	cancelledAtEntry atomic.Int64

	onCreate     atomic.Pointer[func(ctx context.Context, node string, cfg testConfig) error]
	onDisconnect atomic.Pointer[func(node, key string)]
}

// tokenRecord is one create call, in the order of the calls.
type tokenRecord struct {
	node     string
	key      string
	instance int64
	token    uint64
}

func newSafetyCluster(t *testing.T, keys int, srvOpts ...redistest.Option) *safetyCluster {
	t.Helper()
	// newTestClusterOn's cleanup checks the history for overlaps and leaks.
	return &safetyCluster{testCluster: newTestClusterOn(t, keys, redistest.Start(t, srvOpts...))}
}

// newNode creates a node without starting it, like testCluster.newNode but
// with the recording hooks of safetyCluster.
func (c *safetyCluster) newNode(id string, extra ...Option) *testNode {
	c.t.Helper()
	proxy, err := faultproxy.New(c.srv.Addr())
	require.NoError(c.t, err)
	c.t.Cleanup(func() { _ = proxy.Close() })
	ropt := c.srv.ClientOption()
	ropt.InitAddress = []string{proxy.Addr()}

	create := func(ctx context.Context, cfg testConfig) (*testInst, error) {
		if ctx.Err() != nil {
			c.cancelledAtEntry.Add(1)
		}
		c.creates.Add(1)
		token, _ := FencingToken(ctx)
		inst := c.rec.Up(id, cfg.Key)
		c.tokMu.Lock()
		c.tokens = append(c.tokens, tokenRecord{node: id, key: cfg.Key, instance: inst, token: token})
		c.tokMu.Unlock()
		if f := c.onCreate.Load(); f != nil {
			if err := (*f)(ctx, id, cfg); err != nil {
				c.rec.Failed(id, cfg.Key, inst)
				return nil, err
			}
		}
		return &testInst{node: id, key: cfg.Key, version: cfg.Version, id: inst, ctx: ctx}, nil
	}
	opts := []Option{
		WithService(c.service),
		WithNodeID(id),
		WithRedis(ropt),
		WithDisconnect(func(_ context.Context, inst *testInst) error {
			if f := c.onDisconnect.Load(); f != nil {
				(*f)(inst.node, inst.key)
			}
			c.rec.Down(inst.node, inst.key, inst.id)
			return nil
		}),
		WithHealthcheck(func(_ context.Context, inst *testInst) error {
			if f, ok := c.healthErr.Load(inst.key); ok {
				return f.(func() error)()
			}
			return nil
		}),
	}
	if l := testLogger(c.t); l != nil {
		opts = append(opts, WithLogger(l.With("node", id)))
	}
	return c.register(id, proxy, create, append(testOptions(opts...), extra...))
}

// start creates and starts a node.
func (c *safetyCluster) start(id string, extra ...Option) *testNode {
	c.t.Helper()
	return c.startNode(c.newNode(id, extra...))
}

func (c *safetyCluster) setOnCreate(f func(ctx context.Context, node string, cfg testConfig) error) {
	c.onCreate.Store(&f)
}

func (c *safetyCluster) setOnDisconnect(f func(node, key string)) {
	c.onDisconnect.Store(&f)
}

// tokenHistory returns every create call's token, in call order.
func (c *safetyCluster) tokenHistory() []tokenRecord {
	c.tokMu.Lock()
	defer c.tokMu.Unlock()
	return slices.Clone(c.tokens)
}

// assertTokensOnlyGrow checks that, for every key, each instance created got
// a fencing token strictly larger than that of every instance of the key
// created before it.
func (c *safetyCluster) assertTokensOnlyGrow(t *testing.T, why string) bool {
	t.Helper()
	highest := map[string]tokenRecord{}
	var bad []string
	for _, r := range c.tokenHistory() {
		if prev, ok := highest[r.key]; ok && r.token <= prev.token {
			bad = append(bad, fmt.Sprintf("key %q: instance #%d on %s got token %d, not above token %d of instance #%d on %s",
				r.key, r.instance, r.node, r.token, prev.token, prev.instance, prev.node))
		}
		if r.token > highest[r.key].token {
			highest[r.key] = r
		}
	}
	if len(bad) > 0 {
		t.Errorf("%s: fencing tokens went backwards or repeated:\n  %s", why, strings.Join(bad, "\n  "))
		return false
	}
	return true
}

// assertNoOverlap fails the test, naming the bug, if two instances of one key
// were ever live together.
func assertNoOverlap(t *testing.T, rec *history.Recorder, bug string) bool {
	t.Helper()
	overlaps := history.Overlaps(rec.Events())
	if len(overlaps) == 0 {
		return true
	}
	slices.SortFunc(overlaps, func(a, b history.Overlap) int { return strings.Compare(a.Key, b.Key) })
	lines := make([]string, 0, len(overlaps))
	for _, o := range overlaps {
		during := "still live"
		if !o.A.Ended.IsZero() {
			during = "for " + o.A.Ended.Sub(o.B.Started).Round(time.Millisecond).String()
		}
		lines = append(lines, fmt.Sprintf("%s, together %s", o, during))
	}
	if len(lines) > 8 {
		lines = append(lines[:8], fmt.Sprintf("… and %d more", len(lines)-8))
	}
	t.Errorf("%s: %d keys ran twice at once:\n  %s", bug, len(overlaps), strings.Join(lines, "\n  "))
	return false
}

// runsOn returns the keys node runs now, sorted.
func runsOn(rec *history.Recorder, node string) []string {
	var keys []string
	for _, iv := range rec.Live() {
		if iv.Node == node {
			keys = append(keys, iv.Key)
		}
	}
	slices.Sort(keys)
	return keys
}

// poll is eventually without failing: it reports whether cond held in time.
func (c *testCluster) poll(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-c.rec.Changed():
		case <-time.After(10 * time.Millisecond):
		}
	}
	return true
}

// copyDir copies a directory tree of regular files.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(to, 0o755))
	entries, err := os.ReadDir(from)
	require.NoError(t, err)
	for _, e := range entries {
		src, dst := filepath.Join(from, e.Name()), filepath.Join(to, e.Name())
		if e.IsDir() {
			copyDir(t, src, dst)
			continue
		}
		b, err := os.ReadFile(src)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(dst, b, 0o644))
	}
}
