package dim

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/faultproxy"
	"github.com/stretchr/testify/require"
)

// probe asks h for path and returns the status code and the body.
func probe(t *testing.T, h http.Handler, method, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	body, err := io.ReadAll(rec.Result().Body)
	require.NoError(t, err)
	return rec.Code, string(body)
}

// TestReadyFollowsTheLease: a replica is ready once Start returns, not
// ready while it is fenced (its link to Redis cut), ready again once it has
// rejoined, and not ready after Stop; liveness stays 200 throughout.
func TestReadyFollowsTheLease(t *testing.T) {
	c := newTestCluster(t, 6)
	n := c.newNode("a")
	h := n.m.HealthHandler()

	code, body := probe(t, h, http.MethodGet, ReadyPath)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "not started\n", body)
	code, _ = probe(t, h, http.MethodGet, LivePath)
	require.Equal(t, http.StatusOK, code, "live before Start: the process is starting")

	c.startNode(n)
	require.True(t, n.m.Ready(), "ready as soon as Start returns: it has joined")
	code, body = probe(t, h, http.MethodGet, ReadyPath)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)
	c.waitConverged(5*time.Second, "a")

	n.proxy.Cut(faultproxy.Both)
	c.eventually(3*testTTL, "a not ready once cut off", func() bool {
		require.True(t, n.m.Live(), "liveness must not follow Redis")
		return !n.m.Ready()
	})
	code, body = probe(t, h, http.MethodGet, ReadyPath)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.True(t, strings.Contains(body, "fenced") || strings.Contains(body, "lease"), "reason: %q", body)
	code, _ = probe(t, h, http.MethodGet, LivePath)
	require.Equal(t, http.StatusOK, code)
	c.eventually(3*testTTL, "a fenced: its instances stopped", func() bool { return len(c.rec.Live()) == 0 })
	require.False(t, n.m.Ready(), "still cut off")

	n.proxy.Heal()
	c.eventually(5*testTTL, "a ready again after rejoining", n.m.Ready)
	c.waitConverged(5*time.Second, "a")

	c.stop("a")
	require.False(t, n.m.Ready())
	code, body = probe(t, h, http.MethodGet, ReadyPath)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "stopped\n", body)
	code, _ = probe(t, h, http.MethodGet, LivePath)
	require.Equal(t, http.StatusOK, code, "live after Stop: the process is exiting")
}

// TestLiveWhileRedisIsDown: with Redis killed, the replica fences and is
// not ready, but its liveness stays 200 for several leases; once Redis is
// back it rejoins and is ready again.
func TestLiveWhileRedisIsDown(t *testing.T) {
	c := newTestCluster(t, 4)
	a := c.start("a")
	b := c.start("b")
	c.waitConverged(5*time.Second, "a", "b")
	require.True(t, a.m.Ready())
	require.True(t, b.m.Ready())

	c.srv.Kill()
	down := time.Now()
	c.eventually(3*testTTL, "both not ready with Redis down", func() bool {
		return !a.m.Ready() && !b.m.Ready()
	})
	// Watch liveness for several more leases while the node loops and
	// heartbeats fail against a dead server.
	for _, n := range []*testNode{a, b} {
		code, body := probe(t, n.m.HealthHandler(), http.MethodGet, ReadyPath)
		require.Equal(t, http.StatusServiceUnavailable, code, body)
	}
	deadline := down.Add(5 * testTTL)
	for time.Now().Before(deadline) {
		for _, n := range []*testNode{a, b} {
			code, body := probe(t, n.m.HealthHandler(), http.MethodGet, LivePath)
			require.Equal(t, http.StatusOK, code, "%s livez with Redis down: %s", n.id, body)
		}
		select {
		case <-c.rec.Changed():
		case <-time.After(20 * time.Millisecond):
		}
	}

	c.srv.Restart()
	c.eventually(10*testTTL, "both ready again with Redis back", func() bool {
		return a.m.Ready() && b.m.Ready()
	})
	// Redis came back empty: the keys wait one grace period, then run.
	c.waitConverged(10*testTTL, "a", "b")
}

// TestLiveReportsAStuckLoop checks the verdicts on the loops' progress, and
// that a running Manager whose heartbeat loop stopped coming round is
// reported wedged.
func TestLiveReportsAStuckLoop(t *testing.T) {
	const after = time.Minute
	var l liveness
	now := mono()
	require.Empty(t, l.stuck(now, after), "never started")

	l.beat.Store(now)
	require.Empty(t, l.stuck(now+int64(after), after))
	require.Contains(t, l.stuck(now+int64(after)+1, after), "heartbeat loop")

	l.beat.Store(now + int64(2*after))
	l.enter()
	l.busy.Store(now)
	l.progress.Store(now)
	require.Contains(t, l.stuck(now+int64(2*after), after), "node loop")
	l.advance()
	require.Empty(t, l.stuck(mono(), after), "a call returned: progress")
	l.leave()
	require.Empty(t, l.stuck(now+int64(2*after), after), "idle is not stuck")

	c := newTestCluster(t, 2)
	n := c.start("a")
	require.True(t, n.m.Live())
	require.GreaterOrEqual(t, n.m.WedgedAfter(), time.Minute)
	require.Contains(t, n.m.wedged(time.Now().Add(2*n.m.WedgedAfter())), "wedged")
	c.stop("a")
	require.Empty(t, n.m.wedged(time.Now().Add(2*n.m.WedgedAfter())), "a stopped Manager is not wedged")
}

// TestHealthHandlerRoutes checks paths and methods.
func TestHealthHandlerRoutes(t *testing.T) {
	m, err := New(func(context.Context) ([]string, error) { return nil, nil },
		func(context.Context, string) (string, error) { return "", nil }, WithService("s"))
	require.NoError(t, err)
	h := m.HealthHandler()
	code, _ := probe(t, h, http.MethodGet, "/healthz")
	require.Equal(t, http.StatusNotFound, code)
	code, _ = probe(t, h, http.MethodPost, LivePath)
	require.Equal(t, http.StatusMethodNotAllowed, code)
	code, _ = probe(t, h, http.MethodHead, LivePath)
	require.Equal(t, http.StatusOK, code)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, ReadyPath, nil))
	require.Equal(t, "no-store", rec.Header().Get("Cache-Control"))
	require.True(t, strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain"))
}
