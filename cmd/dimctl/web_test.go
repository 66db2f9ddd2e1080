package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-dim/dim"
	"github.com/go-dim/dim/internal/redistest"
	"github.com/go-dim/dim/internal/syncbuf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// webInstance is a running dimctl web.
type webInstance struct {
	url    string // http://127.0.0.1:port
	host   string // 127.0.0.1:port
	stderr *syncbuf.Buffer
	client *http.Client
}

var servingRE = regexp.MustCompile(`at http://(127\.0\.0\.1:\d+)/`)

// startWeb runs dimctl web on a free loopback port until the test ends,
// and checks that it then exits 0.
func startWeb(t *testing.T, args ...string) *webInstance {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	stdout, stderr := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, append(args, "-listen", "127.0.0.1:0"), stdout, stderr) }()
	tr := &http.Transport{}
	w := &webInstance{stderr: stderr, client: &http.Client{Transport: tr, Timeout: 20 * time.Second}}
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			assert.Equal(t, exitOK, code, "stderr: %s", stderr)
		case <-time.After(20 * time.Second):
			t.Error("dimctl web did not end when interrupted")
		}
		tr.CloseIdleConnections()
	})
	require.Eventually(t, func() bool {
		select {
		case code := <-done:
			done <- code
			return true
		default:
		}
		m := servingRE.FindStringSubmatch(stdout.String())
		if m != nil {
			w.host, w.url = m[1], "http://"+m[1]
		}
		return m != nil
	}, 20*time.Second, 10*time.Millisecond)
	require.NotEmpty(t, w.url, "dimctl web ended early: %s", stderr)
	return w
}

// readSnapshots reads n snapshots from the page's event stream.
func (w *webInstance) readSnapshots(t *testing.T, n int) []webView {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.url+"/events", nil)
	require.NoError(t, err)
	res, err := w.client.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, "text/event-stream", res.Header.Get("Content-Type"))
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(nil, 8<<20)
	var out []webView
	event := ""
	for len(out) < n && sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			require.Equal(t, "snapshot", event)
			var v webView
			require.NoError(t, json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &v))
			out = append(out, v)
		}
	}
	require.Len(t, out, n, "stream ended: %v", sc.Err())
	return out
}

// waitSnapshot reads the stream until a snapshot satisfies ok.
func (w *webInstance) waitSnapshot(t *testing.T, what string, ok func(webView) bool) webView {
	t.Helper()
	var last webView
	require.Eventually(t, func() bool {
		last = w.readSnapshots(t, 1)[0]
		return ok(last)
	}, 15*time.Second, 20*time.Millisecond, "%s; last snapshot: %+v", what, last)
	return last
}

func (v webView) node(id string) *webNode {
	i := slices.IndexFunc(v.Nodes, func(n webNode) bool { return n.ID == id })
	if i < 0 {
		return nil
	}
	return &v.Nodes[i]
}

// get fetches a path with an optional Host header.
func (w *webInstance) get(t *testing.T, path, host string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, w.url+path, nil)
	require.NoError(t, err)
	if host != "" {
		req.Host = host
	}
	res, err := w.client.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res, string(body)
}

var tokenRE = regexp.MustCompile(`<meta name="dimctl-token" content="([^"]+)">`)

// actionCall is one POST to an action, with every header under the test's
// control.
type actionCall struct {
	path, body, host, origin, token, contentType string
}

func (w *webInstance) post(t *testing.T, c actionCall) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, w.url+c.path, strings.NewReader(c.body))
	require.NoError(t, err)
	if c.host != "" {
		req.Host = c.host
	}
	if c.origin != "" {
		req.Header.Set("Origin", c.origin)
	}
	if c.token != "" {
		req.Header.Set(tokenHeader, c.token)
	}
	if c.contentType != "" {
		req.Header.Set("Content-Type", c.contentType)
	}
	res, err := w.client.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res.StatusCode, string(body)
}

func TestWebStreamsSnapshotsOfALiveService(t *testing.T) {
	srv := redistest.Start(t)
	want := startService(t, srv, "shown")
	w := startWeb(t, "-redis", srv.Addr(), "-prefix", testPrefix, "-interval", "50ms", "web", "shown")

	res, page := w.get(t, "/", "")
	require.Equal(t, http.StatusOK, res.StatusCode)
	assert.Contains(t, page, "<title>dim · shown</title>")
	assert.NotContains(t, page, "dimctl-token", "a read-only page carries no token")
	assert.Contains(t, page, "read-only")
	assert.Contains(t, res.Header.Get("Content-Security-Policy"), "script-src 'self'")
	assert.Equal(t, "DENY", res.Header.Get("X-Frame-Options"))
	for _, path := range []string{"/app.js", "/style.css"} {
		res, body := w.get(t, path, "")
		assert.Equal(t, http.StatusOK, res.StatusCode, path)
		assert.NotEmpty(t, body, path)
	}
	assert.NotRegexp(t, `(?i)https?://`, page, "the page loads nothing from elsewhere")

	snaps := w.readSnapshots(t, 2)
	for _, v := range snaps {
		assert.Empty(t, v.Error)
		assert.Equal(t, "shown", v.Service)
		assert.Equal(t, want.Leader, v.Leader)
		assert.True(t, v.LeaderLive)
		assert.Equal(t, want.Epoch, v.Epoch)
		assert.Equal(t, 3, v.Keys)
		assert.Equal(t, 3, v.Running)
		assert.True(t, v.Full)
		assert.Empty(t, v.Attention)
		assert.False(t, v.Actions)
		require.Len(t, v.Nodes, 2)
		for id, keys := range keysOf(want) {
			n := v.node(id)
			require.NotNil(t, n, id)
			assert.Equal(t, "active", n.State)
			assert.Positive(t, n.LeaseLeftMS)
			assert.Equal(t, int64(1000), n.TTLMS)
			var cells []string
			for _, c := range n.Cells {
				assert.Equal(t, "running", c.State, c.Key)
				cells = append(cells, c.Key)
			}
			assert.Equal(t, keys, cells)
		}
		kinds := map[string]bool{}
		for _, e := range v.History {
			kinds[e.Kind] = true
		}
		assert.True(t, kinds[dim.HistoryElected] && kinds[dim.HistoryJoined] && kinds[dim.HistoryClaimed], "history: %v", kinds)
	}
	assert.True(t, snaps[1].At.After(snaps[0].At), "the second snapshot is a new read")

	res, body := w.get(t, "/snapshot", "")
	require.Equal(t, http.StatusOK, res.StatusCode)
	var v webView
	require.NoError(t, json.Unmarshal([]byte(body), &v))
	assert.Equal(t, "shown", v.Service)
}

func TestWebActionsAreRefusedUnlessAllowed(t *testing.T) {
	srv := redistest.Start(t)
	startService(t, srv, "guarded")
	w := startWeb(t, "-redis", srv.Addr(), "-prefix", testPrefix, "-interval", "50ms", "web", "guarded")
	for _, path := range []string{"/api/drain", "/api/undrain", "/api/rebalance"} {
		code, body := w.post(t, actionCall{path: path, body: `{"node":"n2"}`, origin: w.url, token: "anything", contentType: "application/json"})
		assert.Equal(t, http.StatusForbidden, code, path)
		assert.Contains(t, body, "actions are off: start dimctl web with -allow-actions", path)
	}
	st, err := dim.ReadStatus(t.Context(), srv.Client(t), dim.Service{Name: "guarded", KeyPrefix: testPrefix})
	require.NoError(t, err)
	for _, n := range st.Nodes {
		assert.Equal(t, dim.NodeActive, n.State, n.ID)
	}
}

func TestWebActionsNeedHostOriginAndToken(t *testing.T) {
	srv := redistest.Start(t)
	startService(t, srv, "acted")
	w := startWeb(t, "-redis", srv.Addr(), "-prefix", testPrefix, "-interval", "50ms", "-allow-actions", "web", "acted")
	_, page := w.get(t, "/", "")
	m := tokenRE.FindStringSubmatch(page)
	require.NotNil(t, m, "the page carries the token")
	token := m[1]
	assert.GreaterOrEqual(t, len(token), 20)

	port := w.host[strings.LastIndexByte(w.host, ':')+1:]
	right := actionCall{path: "/api/drain", body: `{"node":"n2","for":"10m"}`, origin: w.url, token: token, contentType: "application/json"}
	for _, tc := range []struct {
		name string
		edit func(*actionCall)
		code int
		want string
	}{
		{"no token", func(c *actionCall) { c.token = "" }, http.StatusForbidden, "missing or wrong X-Dimctl-Token"},
		{"a wrong token", func(c *actionCall) { c.token = strings.ToUpper(token) + "x" }, http.StatusForbidden, "missing or wrong X-Dimctl-Token"},
		{"a foreign Origin", func(c *actionCall) { c.origin = "http://evil.example" }, http.StatusForbidden, "another origin"},
		{"another port's Origin", func(c *actionCall) { c.origin = "http://127.0.0.1:1" }, http.StatusForbidden, "another origin"},
		{"no Origin", func(c *actionCall) { c.origin = "" }, http.StatusForbidden, "no Origin header"},
		{"a foreign Host (DNS rebinding)", func(c *actionCall) { c.host, c.origin = "evil.example:"+port, "http://evil.example:"+port },
			http.StatusMisdirectedRequest, "unknown Host evil.example:"},
		{"a Host with another port", func(c *actionCall) { c.host = "127.0.0.1:1" }, http.StatusMisdirectedRequest, "unknown Host"},
		{"a form's content type", func(c *actionCall) { c.contentType = "application/x-www-form-urlencoded" }, http.StatusForbidden, "application/json"},
	} {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			c := right
			tc.edit(&c)
			code, body := w.post(t, c)
			assert.Equal(t, tc.code, code)
			assert.Contains(t, body, tc.want)
		})
	}
	t.Run("a foreign Host cannot read the page or the stream either", func(t *testing.T) {
		for _, path := range []string{"/", "/events", "/snapshot", "/app.js"} {
			res, body := w.get(t, path, "attacker.example:"+port)
			assert.Equal(t, http.StatusMisdirectedRequest, res.StatusCode, path)
			assert.NotContains(t, body, token)
		}
		res, _ := w.get(t, "/", "localhost:"+port)
		assert.Equal(t, http.StatusOK, res.StatusCode, "localhost is this machine")
	})
	v := w.readSnapshots(t, 1)[0]
	assert.True(t, v.Actions)
	require.NotNil(t, v.node("n2"))
	assert.Equal(t, "active", v.node("n2").State, "no refused request drained anything")

	t.Run("with everything right a drain works", func(t *testing.T) {
		code, body := w.post(t, right)
		require.Equal(t, http.StatusOK, code, body)
		assert.Contains(t, body, `drained n2 in \"acted\" until `)
		v := w.waitSnapshot(t, "n2 drained and empty", func(v webView) bool {
			n := v.node("n2")
			return n != nil && n.State == "drained" && n.Assigned == 0 && n.Running == 0 && v.Running == 3
		})
		assert.InDelta(t, (10 * time.Minute).Milliseconds(), v.node("n2").DrainedForMS, float64(time.Minute.Milliseconds()))
		assert.Len(t, v.node("n1").Cells, 3, "every key runs on n1")
		assert.Contains(t, w.stderr.String(), "dimctl web: drain n2 from 127.0.0.1:")
	})
	t.Run("bad input gets a clear error", func(t *testing.T) {
		c := right
		c.body = `{"node":"n9"}`
		code, body := w.post(t, c)
		assert.Equal(t, http.StatusConflict, code)
		assert.Contains(t, body, `\"n9\" is not a live node`)
		c.body = `{"node":"n1","for":"soon"}`
		code, body = w.post(t, c)
		assert.Equal(t, http.StatusBadRequest, code)
		assert.Contains(t, body, `bad duration \"soon\"`)
		c.body = `{"nod":"n1"}`
		code, body = w.post(t, c)
		assert.Equal(t, http.StatusBadRequest, code)
		assert.Contains(t, body, "unknown field")
	})
	t.Run("undrain and rebalance work", func(t *testing.T) {
		c := right
		c.path, c.body = "/api/undrain", `{"node":"n2"}`
		code, body := w.post(t, c)
		require.Equal(t, http.StatusOK, code, body)
		assert.Contains(t, body, "undrained n2")
		w.waitSnapshot(t, "n2 runs keys again", func(v webView) bool {
			n := v.node("n2")
			return n != nil && n.State == "active" && n.Running > 0
		})
		c.path, c.body = "/api/rebalance", `{}`
		code, body = w.post(t, c)
		require.Equal(t, http.StatusOK, code, body)
		assert.Contains(t, body, `rebalanced \"acted\"`)
	})
}

func TestWebUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"a non-loopback address", []string{"-listen", "0.0.0.0:0", "web", "svc"}, "-listen 0.0.0.0:0 is not a loopback address"},
		{"every address", []string{"-listen", ":8080", "web", "svc"}, "-listen :8080 is not a loopback address"},
		{"a bad address", []string{"-listen", "nowhere", "web", "svc"}, `-listen "nowhere": `},
		{"-json", []string{"-json", "web", "svc"}, "-json does not apply to web"},
		{"no keys drawn", []string{"-max-keys", "0", "web", "svc"}, "-max-keys 0 is below 1"},
		{"no service", []string{"web"}, `missing service after "web"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := dimctl(t, tc.args...)
			assert.Equal(t, exitUsage, code)
			assert.Empty(t, out)
			assert.Contains(t, errOut, tc.want)
		})
	}
	t.Run("-h lists web", func(t *testing.T) {
		code, out, _ := dimctl(t, "-h")
		assert.Equal(t, exitOK, code)
		assert.Contains(t, out, "web <service> [-listen 127.0.0.1:8080] [-allow-actions]")
		assert.Contains(t, out, "-allow-remote")
	})
	t.Run("an unknown service fails at once", func(t *testing.T) {
		srv := redistest.Start(t)
		code, out, errOut := dimctl(t, "-redis", srv.Addr(), "-listen", "127.0.0.1:0", "web", "nope")
		assert.Equal(t, exitFailure, code)
		assert.Empty(t, out)
		assert.Equal(t, fmt.Sprintf("dimctl: no service %q in Redis at %s (check the name and -prefix)\n", "nope", srv.Addr()), errOut)
	})
}

func TestOpenPagesShareOnePoller(t *testing.T) {
	srv := redistest.Start(t)
	startService(t, srv, "shared")
	w := startWeb(t, "-redis", srv.Addr(), "-prefix", testPrefix, "-interval", "100ms", "web", "shared")

	// Two pages read at once; one poller feeds both, so they see the same
	// snapshots (each snapshot is stamped with the time of its read).
	pages := make([][]webView, 2)
	var wg sync.WaitGroup
	for i := range pages {
		wg.Go(func() { pages[i] = w.readSnapshots(t, 6) })
	}
	wg.Wait()
	seen := map[time.Time]bool{}
	for _, v := range pages[0] {
		seen[v.At] = true
	}
	shared := 0
	for _, v := range pages[1] {
		if seen[v.At] {
			shared++
		}
	}
	assert.GreaterOrEqual(t, shared, 4, "the pages saw different reads: one poller per page")
}
