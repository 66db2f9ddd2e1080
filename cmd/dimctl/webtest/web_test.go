//go:build linux

package webtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/png"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/go-dim/dim"
	"github.com/go-dim/dim/internal/redistest"
	"github.com/go-dim/dim/internal/syncbuf"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// Environment of a copy of the test binary that runs one dim node.
const (
	nodeEnv  = "WEBTEST_NODE"  // the node's ID
	redisEnv = "WEBTEST_REDIS" // Redis's address
)

// screenshotEnv names a file to write the page's screenshot to as well (the
// README's picture: DIMCTL_WEBTEST_SCREENSHOT=$PWD/../../../docs/dimctl-web.png).
const screenshotEnv = "DIMCTL_WEBTEST_SCREENSHOT"

const (
	service = "fleet"
	// ttl is the nodes' TTL: the page must show a killed node suspect
	// within one TTL, and its keys running elsewhere within one more.
	ttl      = 4 * time.Second
	interval = 200 * time.Millisecond // dimctl web's poll
	nkeys    = 12
)

func TestMain(m *testing.M) {
	if id := os.Getenv(nodeEnv); id != "" {
		os.Exit(runNode(id, os.Getenv(redisEnv)))
	}
	goleak.VerifyTestMain(m, redistest.GoleakOptions()...)
}

func keys() []string {
	out := make([]string, nkeys)
	for i := range out {
		out[i] = fmt.Sprintf("k%02d", i+1)
	}
	return out
}

// runNode runs one dim node until SIGTERM (or until it is killed).
func runNode(id, addr string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	m, err := dim.New(
		func(context.Context) ([]string, error) { return keys(), nil },
		func(_ context.Context, cfg string) (string, error) { return cfg, nil },
		dim.WithService(service), dim.WithKey(func(c string) string { return c }),
		dim.WithRedis(rueidis.ClientOption{InitAddress: []string{addr}}), dim.WithNodeID(id),
		dim.WithNodeTTL(ttl), dim.WithHeartbeat(ttl/10),
		dim.WithLeaderLockTTL(ttl/2), dim.WithLeaderLockRefresh(ttl/10))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := m.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Stop(sctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startNode runs a node in a copy of this binary, stopped (SIGTERM) when
// the test ends unless the test killed it.
func startNode(t *testing.T, id, addr string) *exec.Cmd {
	t.Helper()
	log, err := os.Create(filepath.Join(t.TempDir(), id+".log"))
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), nodeEnv+"="+id, redisEnv+"="+addr)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = log.Close()
		if t.Failed() {
			out, _ := os.ReadFile(log.Name())
			t.Logf("node %s log:\n%s", id, out)
		}
	})
	return cmd
}

// buildDimctl builds dimctl from this checkout.
func buildDimctl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "dimctl")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = ".." // cmd/dimctl, in dim's own module
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

var servingRE = regexp.MustCompile(`at (http://127\.0\.0\.1:\d+/)`)

// startWeb runs dimctl web and returns the page's URL; the test's end
// interrupts it and checks that it exits 0.
func startWeb(t *testing.T, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stderr := &syncbuf.Buffer{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- line
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			assert.NoError(t, err, "dimctl web's exit; stderr: %s", stderr.String())
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Error("dimctl web did not end on SIGINT")
		}
	})
	select {
	case line := <-lines:
		m := servingRE.FindStringSubmatch(line)
		require.NotNil(t, m, "dimctl web printed %q; stderr: %s", line, stderr.String())
		return m[1]
	case <-time.After(30 * time.Second):
		t.Fatalf("dimctl web did not start; stderr: %s", stderr.String())
		return ""
	}
}

// pageState is what the page shows, read from its DOM.
type pageState struct {
	Conn  string     `json:"conn"`
	Nodes []pageNode `json:"nodes"`
	// History lists the timeline's entries as "kind node what".
	History []string `json:"history"`
}

type pageNode struct {
	ID    string      `json:"id"`
	State string      `json:"state"`
	Cells [][2]string `json:"cells"` // key, state
}

const readPage = `({
  conn: document.getElementById("conn").dataset.conn,
  nodes: [...document.querySelectorAll("#nodes article.node")].map((a) => ({
    id: a.dataset.node,
    state: a.dataset.state,
    cells: [...a.querySelectorAll(".cell")].map((c) => [c.dataset.key, c.dataset.state]),
  })),
  history: [...document.querySelectorAll("#history li")].map((li) =>
    li.querySelector(".kind").textContent + " " + li.querySelector(".who").textContent + " " + li.querySelector(".what").textContent),
})`

func (p pageState) node(id string) *pageNode {
	i := slices.IndexFunc(p.Nodes, func(n pageNode) bool { return n.ID == id })
	if i < 0 {
		return nil
	}
	return &p.Nodes[i]
}

// runsOn maps each key drawn running to its node.
func (p pageState) runsOn() map[string]string {
	out := map[string]string{}
	for _, n := range p.Nodes {
		for _, c := range n.Cells {
			if c[1] == "running" {
				out[c[0]] = n.ID
			}
		}
	}
	return out
}

// waitPage reads the page until ok holds or the deadline passes, and
// returns the state that satisfied it.
func waitPage(t *testing.T, ctx context.Context, deadline time.Time, what string, ok func(pageState) bool) pageState {
	t.Helper()
	var last pageState
	for {
		st, err := chromedp.Run(ctx, chromedp.Evaluate[pageState](readPage))
		require.NoError(t, err)
		last = st
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not by the deadline; the page shows %+v", what, last)
		}
		time.Sleep(20 * time.Millisecond) // the page's own pace, not a synchronization
	}
}

func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no chromium on PATH (scripts/test installs Debian's chromium package)")
	return ""
}

func TestPageShowsANodeCrashAndItsKeysMoving(t *testing.T) {
	bin := buildDimctl(t)
	srv := redistest.Start(t)
	procs := map[string]*exec.Cmd{}
	for _, id := range []string{"n1", "n2", "n3"} {
		procs[id] = startNode(t, id, srv.Addr())
	}
	// The first claims of a fresh service wait out a grace period of one
	// TTL: wait until every key runs, four on each node.
	admin := srv.Client(t)
	var leader string
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		st, err := dim.ReadStatus(t.Context(), admin, dim.Service{Name: service})
		require.NoError(c, err)
		require.True(c, st.LeaderLive)
		require.Len(c, st.Nodes, 3)
		for _, n := range st.Nodes {
			require.Equal(c, dim.NodeActive, n.State, n.ID)
			require.Equal(c, nkeys/3, n.Running, n.ID)
		}
		leader = st.Leader
	}, 30*time.Second+2*ttl, 50*time.Millisecond)

	url := startWeb(t, bin, "-redis", srv.Addr(), "-interval", interval.String(), "-listen", "127.0.0.1:0", "web", service)

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)), chromedp.WindowSize(1280, 820), chromedp.DisableGPU)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses its sandbox as root
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer func() {
		cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
		defer ccancel()
		_ = chromedp.Cancel(cctx)
		cancel()
	}()
	// The first Run starts the browser, whose life is ctx's: no timeout on it.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(url)))

	before := waitPage(t, ctx, time.Now().Add(30*time.Second), "three active nodes, every key running", func(p pageState) bool {
		if p.Conn != "live" || len(p.Nodes) != 3 || len(p.runsOn()) != nkeys {
			return false
		}
		for _, n := range p.Nodes {
			if n.State != "active" || len(n.Cells) != nkeys/3 {
				return false
			}
		}
		return true
	})
	assert.True(t, slices.ContainsFunc(before.History, func(h string) bool { return strings.HasPrefix(h, "elected ") }),
		"the timeline shows the election: %q", before.History)

	// Kill a node that does not lead, as a crash: no Stop, no goodbye.
	victim := "n3"
	if leader == victim {
		victim = "n2"
	}
	var theirs []string
	for _, c := range before.node(victim).Cells {
		theirs = append(theirs, c[0])
	}
	killed := time.Now()
	require.NoError(t, procs[victim].Process.Signal(syscall.SIGKILL))

	suspect := waitPage(t, ctx, killed.Add(ttl), victim+" shown suspect within one TTL", func(p pageState) bool {
		n := p.node(victim)
		return n != nil && n.State == "suspect"
	})
	seen := time.Now()
	t.Logf("%s shown suspect %v after the kill", victim, seen.Sub(killed).Round(time.Millisecond))
	for _, c := range suspect.node(victim).Cells {
		assert.Contains(t, []string{"at-risk", "moving", "pending"}, c[1], "a suspect node's key %s", c[0])
	}
	shot := screenshot(t, ctx)

	after := waitPage(t, ctx, seen.Add(ttl), victim+"'s keys running elsewhere within one more TTL", func(p pageState) bool {
		on := p.runsOn()
		for _, key := range theirs {
			if node, ok := on[key]; !ok || node == victim {
				return false
			}
		}
		return p.node(victim) == nil && len(on) == nkeys
	})
	t.Logf("%s's keys shown running elsewhere %v after the kill", victim, time.Since(killed).Round(time.Millisecond))
	assert.Len(t, after.Nodes, 2)
	// The timeline shows the leader's moves of the victim's keys.
	waitPage(t, ctx, time.Now().Add(5*time.Second), "the moves in the timeline", func(p pageState) bool {
		return slices.ContainsFunc(p.History, func(h string) bool {
			return strings.HasPrefix(h, "assigned ") && strings.Contains(h, victim+"→")
		})
	})

	img, err := png.Decode(bytes.NewReader(shot))
	require.NoError(t, err)
	assert.Equal(t, 1280, img.Bounds().Dx())
	if path := os.Getenv(screenshotEnv); path != "" {
		require.NoError(t, os.WriteFile(path, shot, 0o644))
		t.Logf("screenshot written to %s", path)
	}
}

// screenshot captures the page as PNG.
func screenshot(t *testing.T, ctx context.Context) []byte {
	t.Helper()
	shot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	require.NoError(t, err)
	if len(shot) == 0 {
		require.NoError(t, errors.New("empty screenshot"))
	}
	require.NoError(t, os.WriteFile(filepath.Join(t.TempDir(), "dimctl-web.png"), shot, 0o644))
	return shot
}
