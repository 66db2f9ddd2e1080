package dim

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/history"
	"github.com/go-dim/dim/internal/redistest"
	"github.com/go-dim/dim/internal/syncbuf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDuplicateKeysFromGetConfigKeepWhatRuns(t *testing.T) {
	c := newTestCluster(t, 4)
	logs := &syncbuf.Buffer{}
	c.start("n1", WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	creates := c.creates.Load()

	c.setConfigs([]testConfig{{Key: "cfg-00"}, {Key: "cfg-01"}, {Key: "cfg-01", Version: 2}, {Key: "cfg-02"}, {Key: "cfg-03"}})
	require.NoError(t, c.node("n1").m.Rebalance(context.Background()))
	c.eventually(5*time.Second, "the duplicate reported", func() bool {
		return bytes.Contains([]byte(logs.String()), []byte(`dim: duplicate config key: \"cfg-01\"`))
	})
	live := c.rec.LiveByKey()
	assert.Len(t, live, 4, "everything still runs: %s", c.rec.Summary())
	for key, nodes := range live {
		assert.Len(t, nodes, 1, key)
	}
	assert.Equal(t, creates, c.creates.Load(), "nothing was recreated")
}

func TestAnEmptyConfigListStopsEverythingGracefully(t *testing.T) {
	c := newTestCluster(t, 6)
	c.start("n1")
	c.start("n2")
	c.waitConverged(10*time.Second, "n1", "n2")
	c.setConfigs(nil)
	require.NoError(t, c.node("n2").m.Rebalance(context.Background()))
	c.eventually(5*time.Second, "every instance disconnected", func() bool { return len(c.rec.Live()) == 0 })
	downs := 0
	for _, e := range c.rec.Events() {
		if e.Kind == history.Down {
			downs++
		}
	}
	assert.Equal(t, 6, downs, "each instance disconnected once, none crashed")
}

func TestConfigsThatCannotBeKeyedAreClearErrors(t *testing.T) {
	type withFunc struct{ F func() }
	create := func(context.Context, any) (int, error) { return 0, nil }
	tests := []struct {
		name    string
		configs []any
		want    error
		msg     string
	}{
		{"a nil config", []any{nil}, ErrInvalidConfig, "config 0: dim: invalid config: config is nil"},
		{"a nil pointer", []any{(*testConfig)(nil)}, ErrInvalidConfig, "config is nil"},
		{"a config JSON cannot encode", []any{"ok", withFunc{F: func() {}}}, ErrInvalidConfig, "config 1: dim: invalid config: cannot encode config as JSON"},
		{"two equal configs", []any{"same", "same"}, ErrDuplicateKey, "config 1: dim: duplicate config key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(func(context.Context) ([]any, error) { return tt.configs, nil }, create, WithService("s"))
			require.NoError(t, err)
			_, err = m.load(context.Background(), false, &m.leaderConfigGuard)
			require.ErrorIs(t, err, tt.want)
			assert.Contains(t, err.Error(), tt.msg)
		})
	}
	t.Run("an empty key from WithKey", func(t *testing.T) {
		m, err := New(func(context.Context) ([]string, error) { return []string{"x"}, nil },
			func(context.Context, string) (int, error) { return 0, nil },
			WithService("s"), WithKey(func(string) string { return "" }))
		require.NoError(t, err)
		_, err = m.load(context.Background(), false, &m.leaderConfigGuard)
		require.ErrorIs(t, err, ErrInvalidKey)
	})
	t.Run("a panicking key function", func(t *testing.T) {
		m, err := New(func(context.Context) ([]string, error) { return []string{"x"}, nil },
			func(context.Context, string) (int, error) { return 0, nil },
			WithService("s"), WithKey(func(string) string { panic("no key") }))
		require.NoError(t, err)
		_, err = m.load(context.Background(), false, &m.leaderConfigGuard)
		require.ErrorIs(t, err, ErrCallback)
		assert.Contains(t, err.Error(), "no key")
	})
	t.Run("a getConfig that panics", func(t *testing.T) {
		m, err := New(func(context.Context) ([]string, error) { panic("config store exploded") },
			func(context.Context, string) (int, error) { return 0, nil }, WithService("s"))
		require.NoError(t, err)
		_, err = m.load(context.Background(), false, &m.leaderConfigGuard)
		require.ErrorIs(t, err, ErrCallback)
	})
}

func TestAWrongPasswordIsAClearErrorAtStart(t *testing.T) {
	srv := redistest.Start(t, redistest.WithPassword("right"))
	opt := srv.ClientOption()
	opt.Password = "wrong"
	m, err := New(func(context.Context) ([]string, error) { return nil, nil },
		func(context.Context, string) (int, error) { return 0, nil },
		WithService("svc"), WithRedis(opt))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = m.Start(ctx)
	require.ErrorIs(t, err, ErrRedis)
	assert.Contains(t, err.Error(), srv.Addr())
	assert.Contains(t, err.Error(), "WRONGPASS")
}

func TestAStopDeadlineMidHandoffStillDisconnectsEverything(t *testing.T) {
	c := newTestCluster(t, 6)
	c.start("n1")
	c.waitConverged(10*time.Second, "n1")
	n1 := c.node("n1")
	slow := n1.m.calls.disconnect
	var called atomic.Int64
	n1.m.calls.disconnect = func(ctx context.Context, inst *testInst) error {
		called.Add(1)
		time.Sleep(300 * time.Millisecond) // a slow close, longer than Stop allows
		return slow(ctx, inst)
	}
	var running map[string]*testInst
	c.eventually(5*time.Second, "the view shows every instance", func() bool {
		running = n1.m.Instances()
		return len(running) == 6
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := n1.m.Stop(ctx)
	took := time.Since(start)
	require.True(t, errors.Is(err, context.DeadlineExceeded), "Stop returns the context's error: %v", err)
	assert.Less(t, took, 250*time.Millisecond, "Stop returns by its deadline, not when the disconnects do")
	assert.Contains(t, err.Error(), "cfg-00", "Stop names what still runs")
	// Every instance was told to stop before Stop returned.
	assert.EqualValues(t, len(running), called.Load())
	for key, inst := range running {
		assert.Error(t, inst.ctx.Err(), key)
	}
	// Another node gets the keys only once the disconnects returned: the
	// history check of the cleanup catches any overlap.
	c.start("n2")
	c.waitConverged(10*time.Second, "n2")
}
