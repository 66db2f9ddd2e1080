package redistest_test

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/go-dim/dim/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, redistest.GoleakOptions()...)
}

// ctx returns a context bounded well below the test timeout.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestStartAnswersPing(t *testing.T) {
	srv := redistest.Start(t, redistest.WithName("ping"))
	require.Equal(t, fmt.Sprintf("127.0.0.1:%d", srv.Port()), srv.Addr())
	require.True(t, srv.Running())

	client := srv.Client(t)
	got, err := client.Do(ctx(t), client.B().Ping().Build()).ToString()
	require.NoError(t, err)
	require.Equal(t, "PONG", got)
}

func TestStartPersistsNothing(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	for _, param := range []string{"save", "appendonly"} {
		got, err := client.Do(ctx(t), client.B().ConfigGet().Parameter(param).Build()).AsStrMap()
		require.NoError(t, err)
		require.Contains(t, []string{"", "no"}, got[param], param)
	}
}

func TestServersAreIndependent(t *testing.T) {
	a, b := redistest.Start(t), redistest.Start(t)
	require.NotEqual(t, a.Port(), b.Port())
	ca, cb := a.Client(t), b.Client(t)
	require.NoError(t, ca.Do(ctx(t), ca.B().Set().Key("k").Value("a").Build()).Error())
	require.True(t, rueidis.IsRedisNil(cb.Do(ctx(t), cb.B().Get().Key("k").Build()).Error()))
}

func TestKillRefusesConnections(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill()
	require.False(t, srv.Running())

	_, err := net.DialTimeout("tcp", srv.Addr(), time.Second)
	require.ErrorContains(t, err, "connection refused")

	srv.Kill() // a second kill does nothing
}

func TestRestartComesBackEmpty(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	require.NoError(t, client.Do(ctx(t), client.B().Set().Key("k").Value("v").Build()).Error())
	port := srv.Port()

	srv.Restart()
	require.Equal(t, port, srv.Port())
	require.True(t, srv.Running())

	// The same client reconnects by itself; the data is gone.
	err := client.Do(ctx(t), client.B().Get().Key("k").Build()).Error()
	require.True(t, rueidis.IsRedisNil(err), "GET after restart: %v", err)
	n, err := client.Do(ctx(t), client.B().Dbsize().Build()).AsInt64()
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestRestartAfterKillAndStop(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill()
	srv.Restart()
	srv.Stop()
	require.False(t, srv.Running())
	srv.Stop() // stopping a stopped server does nothing
	srv.Restart()

	client := srv.Client(t)
	got, err := client.Do(ctx(t), client.B().Ping().Build()).ToString()
	require.NoError(t, err)
	require.Equal(t, "PONG", got)
}

func TestPauseSilencesTheServer(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	srv.Pause()

	short, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	err := client.Do(short, client.B().Ping().Build()).Error()
	require.ErrorIs(t, err, context.DeadlineExceeded)

	srv.Resume()
	require.NoError(t, client.Do(ctx(t), client.B().Ping().Build()).Error())

	srv.Pause()
	srv.Stop() // a paused server still stops
	require.False(t, srv.Running())
}

func TestWithPassword(t *testing.T) {
	srv := redistest.Start(t, redistest.WithPassword("s3cret"))

	// ClientOption authenticates ...
	client := srv.Client(t)
	require.NoError(t, client.Do(ctx(t), client.B().Ping().Build()).Error())

	// ... and without the password the server refuses.
	opt := srv.ClientOption()
	opt.Password = ""
	_, err := rueidis.NewClient(opt)
	require.ErrorContains(t, err, "NOAUTH")
}

func TestWithArgsDefinesACLUsers(t *testing.T) {
	srv := redistest.Start(t, redistest.WithArgs(
		"--user", "reader", "on", ">pw", "~*", "+get", "+ping", "+hello", "+client",
	))
	opt := srv.ClientOption()
	opt.Username, opt.Password = "reader", "pw"
	opt.DisableCache = true
	client, err := rueidis.NewClient(opt)
	require.NoError(t, err)
	defer client.Close()

	require.True(t, rueidis.IsRedisNil(client.Do(ctx(t), client.B().Get().Key("k").Build()).Error()))
	err = client.Do(ctx(t), client.B().Set().Key("k").Value("v").Build()).Error()
	require.ErrorContains(t, err, "NOPERM")
}

func TestWithTLS(t *testing.T) {
	srv := redistest.Start(t, redistest.WithTLS())
	require.NotNil(t, srv.TLSConfig())

	client := srv.Client(t)
	require.NoError(t, client.Do(ctx(t), client.B().Set().Key("k").Value("v").Build()).Error())

	// Plain TCP is not served.
	opt := srv.ClientOption()
	opt.TLSConfig = nil
	opt.Dialer.Timeout = time.Second
	opt.ConnWriteTimeout = time.Second
	_, err := rueidis.NewClient(opt)
	require.Error(t, err)
}

func TestBadArgsFailWithTheLog(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	ft := failing(t, func(tb testing.TB) { redistest.Start(tb, redistest.WithArgs("--no-such-directive", "x")) })
	require.True(t, ft.failed)
	require.Contains(t, ft.msg, "exited at start")
	require.Contains(t, ft.msg, "no-such-directive")
}

func TestMissingBinaryFailsWithHint(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	t.Setenv("PATH", t.TempDir())
	ft := failing(t, func(tb testing.TB) { redistest.Start(tb) })
	require.True(t, ft.failed)
	require.Contains(t, ft.msg, "redis-server not found on PATH: run scripts/test, or apt-get install redis-server")
}

func TestRequireFailsWithHintWithoutRedisServer(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	redistest.Require(t) // on this machine, it passes

	t.Setenv("PATH", t.TempDir())
	ft := failing(t, redistest.Require)
	require.True(t, ft.failed)
	require.Contains(t, ft.msg, "redis-server not found on PATH: run scripts/test, or apt-get install redis-server")
}

func TestClusterServesAllSlots(t *testing.T) {
	t.Parallel()
	start := time.Now()
	cluster := redistest.StartCluster(t, 3)
	t.Logf("cluster formed in %v", time.Since(start))
	require.Equal(t, 3, cluster.Len())
	require.Len(t, cluster.Addrs(), 3)

	client := cluster.Client(t)
	require.Len(t, client.Nodes(), 3)

	// Keys spread over the slots of every master.
	keys := make([]string, 30)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%d", i)
		require.NoError(t, client.Do(ctx(t), client.B().Set().Key(keys[i]).Value(keys[i]).Build()).Error())
	}
	for i, addr := range cluster.Addrs() {
		n, err := client.Nodes()[addr].Do(ctx(t), client.B().Dbsize().Build()).AsInt64()
		require.NoError(t, err)
		require.Positive(t, n, "node %d holds no key", i)
	}
	for _, key := range keys {
		got, err := client.Do(ctx(t), client.B().Get().Key(key).Build()).ToString()
		require.NoError(t, err)
		require.Equal(t, key, got)
	}

	// A hash tag keeps a service's keys in one slot, so multi-key commands work.
	err := client.Do(ctx(t), client.B().Mset().KeyValue().KeyValue("{svc}a", "1").KeyValue("{svc}b", "2").Build()).Error()
	require.NoError(t, err)
}

func TestClusterNodeRestart(t *testing.T) {
	t.Parallel()
	cluster := redistest.StartCluster(t, 3)
	client := cluster.Client(t)

	node := cluster.Node(0)
	key := keyOn(t, client, node.Addr())
	require.NoError(t, client.Do(ctx(t), client.B().Set().Key(key).Value("v").Build()).Error())

	start := time.Now()
	node.Kill()
	node.Restart()
	cluster.WaitReady()
	t.Logf("cluster ok again %v after the kill", time.Since(start))

	// The node kept its slots and lost its data.
	err := client.Do(ctx(t), client.B().Get().Key(key).Build()).Error()
	require.True(t, rueidis.IsRedisNil(err), "GET after restart: %v", err)
	require.NoError(t, client.Do(ctx(t), client.B().Set().Key(key).Value("w").Build()).Error())
}

func TestClusterNeedsThreeMasters(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	ft := failing(t, func(tb testing.TB) { redistest.StartCluster(tb, 2) })
	require.True(t, ft.failed)
	require.Contains(t, ft.msg, "at least 3 masters")
}

// keyOn returns a key whose slot the node at addr serves.
func keyOn(t *testing.T, client rueidis.Client, addr string) string {
	t.Helper()
	for i := range 1000 {
		key := fmt.Sprintf("k%d", i)
		got, err := client.Nodes()[addr].Do(ctx(t), client.B().Get().Key(key).Build()).ToString()
		if err == nil || rueidis.IsRedisNil(err) {
			return key
		}
		rerr, ok := rueidis.IsRedisErr(err)
		require.True(t, ok, "GET %s: %v", key, err)
		_, moved := rerr.IsMoved()
		require.True(t, moved, "GET %s: %v", key, err)
		_ = got
	}
	t.Fatalf("no key found on %s", addr)
	return ""
}

// fakeTB records a failure instead of failing the real test, so that tests
// can check what Start reports. Its Fatal ends the calling goroutine.
type fakeTB struct {
	testing.TB
	failed   bool
	msg      string
	cleanups []func()
}

func (f *fakeTB) Helper()               {}
func (f *fakeTB) Cleanup(fn func())     { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Failed() bool          { return f.failed }
func (f *fakeTB) Logf(string, ...any)   {}
func (f *fakeTB) Errorf(string, ...any) { f.failed = true }

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fakeTB) Fatal(args ...any) {
	f.failed, f.msg = true, strings.TrimSuffix(fmt.Sprintln(args...), "\n")
	runtime.Goexit()
}

// failing runs fn with a fakeTB in a goroutine of its own, which the fake's
// Fatal ends the way it would end a test's, then runs the cleanups fn
// registered, and returns the fake to check what was reported.
func failing(t *testing.T, fn func(testing.TB)) *fakeTB {
	t.Helper()
	ft := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(ft)
	}()
	<-done
	ft.runCleanups()
	return ft
}

func (f *fakeTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

func TestRestartFromRDBComesBackWithTheSnapshot(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, redistest.WithPersistence())
	client := srv.Client(t)
	set := func(k, v string) {
		t.Helper()
		require.NoError(t, client.Do(t.Context(), client.B().Set().Key(k).Value(v).Build()).Error())
	}
	get := func(k string) (string, error) {
		c, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		for {
			v, err := client.Do(c, client.B().Get().Key(k).Build()).ToString()
			if err == nil || rueidis.IsRedisNil(err) || c.Err() != nil {
				return v, err
			}
			time.Sleep(10 * time.Millisecond) // reconnecting after the restart
		}
	}
	set("k", "old")
	srv.Save()
	set("k", "new")
	set("after", "x")

	srv.RestartFromRDB()
	v, err := get("k")
	require.NoError(t, err)
	require.Equal(t, "old", v, "the snapshot's value")
	_, err = get("after")
	require.True(t, rueidis.IsRedisNil(err), "a key written after the snapshot: %v", err)

	// The append-only file was rewritten from the snapshot and goes on.
	set("k", "aof")
	require.Eventually(t, func() bool {
		srv.RestartFromAOF()
		v, err := get("k")
		return err == nil && v == "aof"
	}, 10*time.Second, 1100*time.Millisecond, "a write a second old survives a crash with appendfsync everysec")

	srv.Restart()
	_, err = get("k")
	require.True(t, rueidis.IsRedisNil(err), "Restart comes back empty: %v", err)
}
