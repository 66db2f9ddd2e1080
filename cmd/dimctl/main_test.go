package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim"
	"github.com/go-dim/dim/internal/faultproxy"
	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, redistest.GoleakOptions()...)
}

// testPrefix is the key prefix of the test service, so that every test also
// checks that -prefix reaches dim.
const testPrefix = "t:"

// dimctl runs the command line and returns its exit code and output.
func dimctl(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code = run(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// startService runs two dim nodes, n1 and n2, of a service with keys a, b and
// c, and returns once every key runs on the node it is assigned to.
func startService(t *testing.T, srv *redistest.Server, service string) *dim.Status {
	t.Helper()
	return startServiceWith(t, srv, service, nil)
}

// startServiceWith is startService with more options for each node.
func startServiceWith(t *testing.T, srv *redistest.Server, service string, extra func(node string) []dim.Option) *dim.Status {
	t.Helper()
	for _, id := range []string{"n1", "n2"} {
		opts := []dim.Option{
			dim.WithService(service), dim.WithKeyPrefix(testPrefix),
			dim.WithKey(func(c string) string { return c }),
			dim.WithRedis(srv.ClientOption()), dim.WithNodeID(id),
			dim.WithNodeTTL(time.Second), dim.WithHeartbeat(100 * time.Millisecond),
			dim.WithLeaderLockTTL(time.Second), dim.WithLeaderLockRefresh(200 * time.Millisecond)}
		if extra != nil {
			opts = append(opts, extra(id)...)
		}
		m, err := dim.New(
			func(context.Context) ([]string, error) { return []string{"a", "b", "c"}, nil },
			func(_ context.Context, cfg string) (string, error) { return cfg, nil },
			opts...)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		require.NoError(t, m.Start(ctx))
		cancel()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			assert.NoError(t, m.Stop(ctx))
		})
	}

	// The first claims of a fresh service wait out a grace period of one
	// node TTL, so poll until everything runs where it is assigned.
	client := srv.Client(t)
	var settled *dim.Status
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		st, err := dim.ReadStatus(t.Context(), client, dim.Service{Name: service, KeyPrefix: testPrefix})
		require.NoError(c, err)
		require.True(c, st.LeaderLive, "leader live")
		require.Len(c, st.Assignment, 3)
		require.Empty(c, st.Unowned)
		require.Empty(c, st.Misplaced)
		require.Len(c, st.Nodes, 2)
		for _, n := range st.Nodes {
			require.Equal(c, dim.NodeActive, n.State, n.ID)
			require.Positive(c, n.Running, n.ID)
			require.Equal(c, n.Assigned, n.Running, n.ID)
		}
		settled = st
	}, 15*time.Second, 20*time.Millisecond)
	return settled
}

// keysOf returns the sorted keys each node runs.
func keysOf(st *dim.Status) map[string][]string {
	runs := map[string][]string{}
	for key, o := range st.Owners {
		if o.Live {
			runs[o.Node] = append(runs[o.Node], key)
		}
	}
	for _, keys := range runs {
		slices.Sort(keys)
	}
	return runs
}

func TestAgainstALiveService(t *testing.T) {
	srv := redistest.Start(t)
	want := startService(t, srv, "svc")
	conn := []string{"-redis", srv.Addr(), "-prefix", testPrefix}
	args := func(extra ...string) []string { return append(slices.Clone(conn), extra...) }

	t.Run("status shows the leader, both nodes and what they run, from the summary", func(t *testing.T) {
		code, out, errOut := dimctl(t, args("status", "svc")...)
		require.Equal(t, 0, code, errOut)
		assert.Empty(t, errOut)
		assert.Regexp(t, `(?m)^service +svc$`, out)
		assert.Regexp(t, fmt.Sprintf(`(?m)^leader +%s \(live\)$`, want.Leader), out)
		assert.Regexp(t, fmt.Sprintf(`(?m)^epoch +%d$`, want.Epoch), out)
		assert.Regexp(t, `(?m)^keys +3 assigned, 3 running$`, out)
		for id, keys := range keysOf(want) {
			n := len(keys)
			assert.Regexp(t, fmt.Sprintf(`(?m)^%s +1 +active +\S+ +%d +%d$`, id, n, n), out)
		}
		assert.NotContains(t, out, "INSTANCES", "the summary names no running key")
		assert.Regexp(t, `(?m)^unowned +0 +-$`, out)
		assert.Regexp(t, `(?m)^moving +0$`, out)
		t.Logf("dimctl status:\n%s", out)
	})

	t.Run("status -keys shows the leader, both nodes and the keys each runs", func(t *testing.T) {
		code, out, errOut := dimctl(t, args("status", "-keys", "svc")...)
		require.Equal(t, 0, code, errOut)
		assert.Empty(t, errOut)
		assert.Regexp(t, `(?m)^service +svc$`, out)
		assert.Regexp(t, fmt.Sprintf(`(?m)^leader +%s \(live\)$`, want.Leader), out)
		assert.Regexp(t, fmt.Sprintf(`(?m)^epoch +%d$`, want.Epoch), out)
		assert.Regexp(t, `(?m)^keys +3 assigned, 3 running$`, out)
		assert.Regexp(t, `(?m)^NODE +WEIGHT +STATE +LEASE LEFT +ASSIGNED +RUNNING$`, out)
		for id, keys := range keysOf(want) {
			n := len(keys)
			assert.Regexp(t, fmt.Sprintf(`(?m)^%s +1 +active +\S+ +%d +%d$`, id, n, n), out)
			assert.Regexp(t, fmt.Sprintf(`(?m)^%s +%s$`, id, regexp.QuoteMeta(strings.Join(keys, ", "))), out)
		}
		assert.Regexp(t, `(?m)^unowned +0 +-$`, out)
		assert.Regexp(t, `(?m)^misplaced +0 +-$`, out)
		t.Logf("dimctl status:\n%s", out)
	})

	t.Run("status -json decodes back into the status", func(t *testing.T) {
		// Flags after the command work too.
		code, out, errOut := dimctl(t, args("status", "svc", "-json")...)
		require.Equal(t, 0, code, errOut)
		var got dim.Status
		require.NoError(t, json.Unmarshal([]byte(out), &got))
		assert.Equal(t, "svc", got.Service)
		assert.Equal(t, want.Leader, got.Leader)
		assert.True(t, got.LeaderLive)
		assert.Equal(t, want.Epoch, got.Epoch)
		assert.Equal(t, want.Assignment, got.Assignment)
		assert.Equal(t, want.Owners, got.Owners)
		assert.Empty(t, got.Unowned)
		assert.Empty(t, got.Misplaced)
		assert.WithinDuration(t, time.Now(), got.ServerTime, 10*time.Second)
		require.Len(t, got.Nodes, len(want.Nodes))
		for i, n := range got.Nodes {
			w := want.Nodes[i]
			assert.Equal(t, []any{w.ID, w.Weight, w.State, w.Assigned, w.Running},
				[]any{n.ID, n.Weight, n.State, n.Assigned, n.Running})
			assert.Positive(t, n.LeaseLeft)
		}
	})

	t.Run("watch -count 2 prints two snapshots", func(t *testing.T) {
		code, out, errOut := dimctl(t, args("-interval", "10ms", "-count", "2", "watch", "svc")...)
		require.Equal(t, 0, code, errOut)
		assert.Len(t, regexp.MustCompile(`(?m)^service +svc$`).FindAllString(out, -1), 2)
		assert.Contains(t, out, "moving   0\n\nservice", "snapshots separated by a blank line")
		assert.NotContains(t, out, "\x1b", "no ANSI codes when stdout is not a terminal")
	})

	t.Run("watch -json -count 3 prints a stream of three statuses", func(t *testing.T) {
		code, out, errOut := dimctl(t, args("-json", "-interval", "10ms", "-count", "3", "watch", "svc")...)
		require.Equal(t, 0, code, errOut)
		dec := json.NewDecoder(strings.NewReader(out))
		for range 3 {
			var st dim.Status
			require.NoError(t, dec.Decode(&st))
			assert.Equal(t, want.Assignment, st.Assignment)
		}
		var extra dim.Status
		assert.ErrorIs(t, dec.Decode(&extra), io.EOF)
	})

	t.Run("watch ends without error when interrupted", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		var out, errOut bytes.Buffer
		code := run(ctx, args("-interval", "1h", "watch", "svc"), &out, &errOut)
		assert.Equal(t, 0, code, errOut.String())
	})

	t.Run("rebalance waits for the leader and reports its moves", func(t *testing.T) {
		code, out, errOut := dimctl(t, args("rebalance", "svc")...)
		require.Equal(t, 0, code, errOut)
		assert.Equal(t, fmt.Sprintf("rebalanced \"svc\": leader epoch %d moved 0 keys\n", want.Epoch), out)
	})

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"an unknown service name", args("status", "nope"), "nope"},
		{"a service under another prefix", []string{"-redis", srv.Addr(), "status", "svc"}, "svc"},
		{"watch of an unknown service", args("-count", "5", "watch", "nope"), "nope"},
		{"rebalance of an unknown service", args("rebalance", "nope"), "nope"},
	} {
		t.Run(tc.name+" fails with a clear message", func(t *testing.T) {
			code, out, errOut := dimctl(t, tc.args...)
			assert.Equal(t, 1, code)
			assert.Empty(t, out)
			assert.Equal(t, fmt.Sprintf("dimctl: no service %q in Redis at %s (check the name and -prefix)\n", tc.want, srv.Addr()), errOut)
		})
	}
}

// onFirstWrite is an io.Writer that calls fn after its first write. The
// buffer is a field, not embedded, so that io.WriteString cannot bypass
// Write.
type onFirstWrite struct {
	buf  bytes.Buffer
	fn   func()
	done bool
}

func (w *onFirstWrite) Write(p []byte) (int, error) {
	n, err := w.buf.Write(p)
	if !w.done {
		w.done = true
		w.fn()
	}
	return n, err
}

func TestWatchRetriesAfterRedisGoesAway(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	// An assignment alone makes a service known; no node need run.
	require.NoError(t, client.Do(t.Context(),
		client.B().Hset().Key(testPrefix+"dim:{svc}:assign").FieldValue().FieldValue("a", "n1").Build()).Error())

	out := &onFirstWrite{fn: srv.Kill}
	var errOut bytes.Buffer
	code := run(t.Context(), []string{"-redis", srv.Addr(), "-prefix", testPrefix,
		"-timeout", "500ms", "-interval", "10ms", "-count", "3", "watch", "svc"}, out, &errOut)
	assert.Equal(t, 0, code, errOut.String())
	assert.Len(t, regexp.MustCompile(`(?m)^service +svc$`).FindAllString(out.buf.String(), -1), 1)
	lines := strings.Split(strings.TrimSuffix(errOut.String(), "\n"), "\n")
	require.Len(t, lines, 2, errOut.String())
	for _, line := range lines {
		assert.Regexp(t, `^dimctl: (cannot reach|no answer from) Redis at .* \(retrying\)$`, line)
	}
}

// freeAddr returns an address of 127.0.0.1 on which nothing listens.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

func TestUnreachableRedisFailsClearly(t *testing.T) {
	addr := freeAddr(t)
	for _, command := range []string{"status", "watch", "rebalance"} {
		t.Run(command, func(t *testing.T) {
			code, out, errOut := dimctl(t, "-redis", addr, command, "svc")
			assert.Equal(t, 1, code)
			assert.Empty(t, out)
			assert.Regexp(t, `^dimctl: cannot reach Redis at `+regexp.QuoteMeta(addr)+`: .*connection refused\n$`, errOut)
			assert.NotContains(t, errOut, "goroutine")
		})
	}
	goleak.VerifyNone(t, redistest.GoleakOptions()...)
}

func TestHungRedisTimesOut(t *testing.T) {
	srv := redistest.Start(t)
	srv.Pause()
	t.Cleanup(srv.Resume)
	start := time.Now()
	code, out, errOut := dimctl(t, "-redis", srv.Addr(), "-timeout", "200ms", "status", "svc")
	assert.Equal(t, 1, code)
	assert.Empty(t, out)
	assert.Equal(t, "dimctl: no answer from Redis at "+srv.Addr()+" within 200ms (see -timeout)\n", errOut)
	assert.Less(t, time.Since(start), 5*time.Second)
}

func TestCredentialsReachRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.WithArgs("--user", "alice", "on", ">secret", "~*", "+@all"))
	unknown := fmt.Sprintf("dimctl: no service \"svc\" in Redis at %s (check the name and -prefix)\n", srv.Addr())
	for _, tc := range []struct {
		name     string
		args     []string
		env      string
		wantCode int
		want     string
	}{
		{"the right password logs in", []string{"-user", "alice", "-password", "secret"}, "", 1, unknown},
		{"the password may come from the environment", []string{"-user", "alice"}, "secret", 1, unknown},
		{"a wrong password is refused", []string{"-user", "alice", "-password", "wrong"}, "", 1,
			"dimctl: Redis at " + srv.Addr() + " refused: WRONGPASS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(passwordEnv, tc.env)
			code, _, errOut := dimctl(t, append(tc.args, "-redis", srv.Addr(), "status", "svc")...)
			assert.Equal(t, tc.wantCode, code)
			assert.True(t, strings.HasPrefix(errOut, tc.want), "stderr %q does not start with %q", errOut, tc.want)
		})
	}
}

// tlsAddrEnv tells a copy of the test binary to run the TLS check against
// this address, with SSL_CERT_FILE naming the server's CA.
const tlsAddrEnv = "DIMCTL_TEST_TLS_ADDR"

func TestTLSUsesTheSystemRoots(t *testing.T) {
	if addr := os.Getenv(tlsAddrEnv); addr != "" {
		code, _, errOut := dimctl(t, "-tls", "-redis", addr, "status", "svc")
		assert.Equal(t, 1, code)
		assert.Equal(t, fmt.Sprintf("dimctl: no service \"svc\" in Redis at %s (check the name and -prefix)\n", addr), errOut,
			"reached Redis over TLS")
		return
	}

	srv := redistest.Start(t, redistest.WithTLS())
	// crypto/x509 reads the system roots once per process, so the check with
	// the server's CA as SSL_CERT_FILE runs in a fresh copy of this binary.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestTLSUsesTheSystemRoots$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(),
		"SSL_CERT_FILE="+filepath.Join(srv.Dir(), "ca.crt"),
		tlsAddrEnv+"="+srv.Addr())
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)

	code, _, errOut := dimctl(t, "-timeout", "1s", "-redis", srv.Addr(), "status", "svc")
	assert.Equal(t, 1, code)
	assert.Regexp(t, `^dimctl: cannot reach Redis at `+regexp.QuoteMeta(srv.Addr())+`: .* \(does it need -tls\?\)\n$`, errOut)
}

func TestBadUsageExitsTwo(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no arguments", nil, "missing command and service"},
		{"a command without service", []string{"status"}, `missing service after "status"`},
		{"an unknown command", []string{"frob", "svc"}, `unknown command "frob"`},
		{"too many arguments", []string{"status", "svc", "more"}, `too many arguments: ["more"]`},
		{"an unknown flag", []string{"-frob", "status", "svc"}, "flag provided but not defined: -frob"},
		{"a flag without value", []string{"status", "svc", "-redis"}, "flag needs an argument: -redis"},
		{"a zero interval", []string{"-interval", "0s", "watch", "svc"}, "-interval 0s is not positive"},
		{"a negative count", []string{"-count", "-1", "watch", "svc"}, "-count -1 is negative"},
		{"a zero timeout", []string{"-timeout", "0s", "status", "svc"}, "-timeout 0s is not positive"},
		{"an empty address", []string{"-redis", "", "status", "svc"}, "-redis is empty"},
		{"an invalid service name", []string{"status", "a b"}, `"a b" is not a valid service name`},
		{"an invalid prefix", []string{"-prefix", "{x}", "status", "svc"}, `"{x}" is not a valid prefix`},
		{"a drain without node", []string{"drain", "svc"}, `missing node after "drain" "svc"`},
		{"a drain without service", []string{"drain"}, `missing service and node after "drain"`},
		{"an undrain with too much", []string{"undrain", "svc", "n1", "n2"}, `too many arguments: ["n2"]`},
		{"a negative hold", []string{"-for", "-1m", "freeze", "svc"}, "-for -1m0s is negative"},
		{"a plan without change", []string{"plan", "svc"}, "plan needs a service and"},
		{"an unknown plan", []string{"plan", "svc", "explode"}, `unknown plan "explode"`},
		{"a plan drain without node", []string{"plan", "svc", "drain"}, "missing node after plan drain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Nothing listens here: usage is checked before connecting.
			code, out, errOut := dimctl(t, append([]string{"-redis", freeAddr(t)}, tc.args...)...)
			assert.Equal(t, 2, code)
			assert.Empty(t, out)
			assert.True(t, strings.HasPrefix(errOut, "dimctl: "), errOut)
			assert.Contains(t, errOut, tc.want)
			assert.Contains(t, errOut, "\nUsage: dimctl [flags] <command> <service>\n")
		})
	}

	t.Run("-h prints the usage and succeeds", func(t *testing.T) {
		code, out, errOut := dimctl(t, "-h")
		assert.Equal(t, 0, code)
		assert.Empty(t, errOut)
		assert.True(t, strings.HasPrefix(out, "Usage: dimctl [flags] <command> <service>\n"), out)
		assert.Contains(t, out, "-interval duration")
	})

	t.Run("-- ends the flags", func(t *testing.T) {
		code, _, errOut := dimctl(t, "-redis", freeAddr(t), "--", "status", "-json")
		assert.Equal(t, 2, code)
		assert.Contains(t, errOut, `"-json" is not a valid service name`)
	})
}

func TestWriteStatusIsSortedAndCompact(t *testing.T) {
	many := map[string]string{}
	owners := map[string]dim.Owner{}
	for i := range 12 {
		key := fmt.Sprintf("k%02d", i)
		many[key] = "n2"
		owners[key] = dim.Owner{Node: "n2", Token: uint64(i + 1), Live: true}
	}
	many["x"], owners["x"] = "n1", dim.Owner{Node: "n2", Token: 20, Live: true}
	many["y"] = "n1"
	owners["z"] = dim.Owner{Node: "gone", Token: 21}
	// What runs is what the nodes say runs.
	keys := map[string]dim.KeyStatus{}
	for key, o := range owners {
		keys[key] = dim.KeyStatus{Node: o.Node, State: dim.KeyRunning, Live: o.Live}
	}

	for _, tc := range []struct {
		name string
		st   *dim.Status
		want string
	}{
		{
			name: "a busy service lists nodes and keys in order, shortened",
			st: &dim.Status{
				Service:    "svc",
				ServerTime: time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC),
				Leader:     "n1", LeaderLive: true, Epoch: 7,
				Nodes: []dim.NodeStatus{
					{ID: "n2", Weight: 2, State: "active", LeaseLeft: 4321 * time.Millisecond, Assigned: 12, Running: 13},
					{ID: "n1", Weight: 1, State: "draining", LeaseLeft: 987654 * time.Microsecond, Assigned: 2},
				},
				Assignment: many,
				Owners:     owners,
				Keys:       keys,
				Unowned:    []string{"y"},
				Misplaced:  []string{"x"},
			},
			want: `service  svc
leader   n1 (live)
epoch    7
keys     14 assigned, 13 running
time     2026-01-02 03:04:05.006 UTC (Redis)

NODE  WEIGHT  STATE     LEASE LEFT  ASSIGNED  RUNNING
n1    1       draining  988ms       2         0
n2    2       active    4.3s        12        13

INSTANCES
n1  -
n2  k00, k01, k02, k03, k04, k05, k06, k07, k08, k09, … (3 more)

PENDING
unowned    1  y (to n1)
misplaced  1  x (n2 to n1)
`,
		},
		{
			name: "a service without live nodes says so",
			st: &dim.Status{
				Service: "svc", ServerTime: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
				Leader: "n1", Epoch: 3,
				Assignment: map[string]string{"a": "n1"},
				Unowned:    []string{"a"},
			},
			want: `service  svc
leader   n1 (not live: its lease ran out or it rejoined; a new leader takes over)
epoch    3
keys     1 assigned, 0 running
time     2026-01-02 03:04:05.000 UTC (Redis)

no live nodes

PENDING
unowned    1  a (to n1)
misplaced  0  -
`,
		},
		{
			name: "a grace period says how long and why",
			st: &dim.Status{
				Service: "svc", ServerTime: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
				Assignment: map[string]string{"a": "n1"},
				Nodes:      []dim.NodeStatus{{ID: "n1", Weight: 1, State: "active", LeaseLeft: time.Second}},
				Unowned:    []string{"a"},
				Grace:      &dim.Grace{Left: 2345 * time.Millisecond, Reason: dim.GraceRestored},
			},
			want: `service  svc
leader   none
epoch    0
keys     1 assigned, 0 running
time     2026-01-02 03:04:05.000 UTC (Redis)
grace    no instance starts for 2.3s more: Redis restarted or failed over since the record was written; nodes it forgot may still run instances

NODE  WEIGHT  STATE   LEASE LEFT  ASSIGNED  RUNNING
n1    1       active  1s          0         0

INSTANCES
n1  -

PENDING
unowned    1  a (to n1)
misplaced  0  -
`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			require.NoError(t, writeStatus(&out, tc.st))
			assert.Equal(t, tc.want, out.String())
		})
	}
}

func TestWriteJSONHasNoNulls(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, writeJSON(&out, &dim.Status{Service: "svc"}))
	assert.NotContains(t, out.String(), "null")
	var got dim.Status
	require.NoError(t, json.Unmarshal(out.Bytes(), &got))
	assert.Equal(t, "svc", got.Service)
}

func TestStatusIsAHealthProbe(t *testing.T) {
	srv := redistest.Start(t)
	// One key never starts: its create fails every time. One key's name
	// carries a newline and a terminal escape, as a key function may make.
	odd := "evil\n\x1b[2Jleader n666"
	m, err := dim.New(
		func(context.Context) ([]string, error) { return []string{"ok", "broken", odd}, nil },
		func(_ context.Context, cfg string) (string, error) {
			if cfg == "broken" {
				return "", errors.New("upstream refused")
			}
			return cfg, nil
		},
		dim.WithService("probe"), dim.WithKey(func(c string) string { return c }),
		dim.WithRedis(srv.ClientOption()), dim.WithNodeID("n1"), dim.WithLogger(nil),
		dim.WithNodeTTL(time.Second), dim.WithHeartbeat(100*time.Millisecond))
	require.NoError(t, err)
	require.NoError(t, m.Start(t.Context()))
	defer func() { assert.NoError(t, m.Stop(context.Background())) }()
	base := []string{"-redis", srv.Addr(), "-down-after", "300ms"}
	var code int
	var out, errOut string
	require.Eventually(t, func() bool {
		code, out, errOut = dimctl(t, append(base, "status", "probe")...)
		return code == exitUnhealthy && strings.Contains(out, "upstream refused")
	}, 10*time.Second, 50*time.Millisecond, "exit %d\n%s\n%s", code, out, errOut)
	assert.Contains(t, errOut, "unhealthy: 1 keys not running: broken")
	// Failing on n1, or already quarantined: n1 is the only node that may
	// run it.
	assert.Regexp(t, `broken \((n1, failing: |failed on n1; tried again at)`, out)
	// With one node, the key is soon quarantined: still down, still exit 3.
	require.Eventually(t, func() bool {
		code, out, errOut = dimctl(t, append(base, "status", "probe")...)
		return code == exitUnhealthy && strings.Contains(out, "quarantined  1")
	}, 10*time.Second, 50*time.Millisecond, "exit %d\n%s\n%s", code, out, errOut)
	assert.Contains(t, out, "broken (failed on n1; tried again at ")
	assert.Contains(t, out, "level 1: upstream refused)")
	assert.Contains(t, errOut, "unhealthy: 1 keys not running: broken")
	assert.Regexp(t, `(?m)^keys +2 assigned, 2 running$`, out, "the summary counts the quarantined key apart")

	// The full read says the same, and names every key.
	code, out, errOut = dimctl(t, append(base, "-keys", "status", "probe")...)
	assert.Equal(t, exitUnhealthy, code, out)
	assert.Contains(t, errOut, "unhealthy: 1 keys not running: broken")
	assert.Contains(t, out, "broken (failed on n1; tried again at ")
	assert.Contains(t, out, strconv.Quote(odd), "a key that is not printable is quoted")
	assert.NotContains(t, out, "\x1b", "no terminal escape reaches the operator")
	for _, line := range strings.Split(out, "\n") {
		assert.False(t, strings.HasPrefix(line, "leader n666"), "no forged line")
	}
}

func TestServicesAndPurge(t *testing.T) {
	srv := redistest.Start(t)
	m, err := dim.New(
		func(context.Context) ([]string, error) { return []string{"a", "b"}, nil },
		func(_ context.Context, cfg string) (string, error) { return cfg, nil },
		dim.WithService("retired"), dim.WithKeyPrefix(testPrefix), dim.WithKey(func(c string) string { return c }),
		dim.WithRedis(srv.ClientOption()), dim.WithLogger(nil),
		dim.WithNodeTTL(time.Second), dim.WithHeartbeat(100*time.Millisecond))
	require.NoError(t, err)
	require.NoError(t, m.Start(t.Context()))
	conn := []string{"-redis", srv.Addr(), "-prefix", testPrefix}
	args := func(extra ...string) []string { return append(slices.Clone(conn), extra...) }

	code, out, errOut := dimctl(t, args("services")...)
	require.Equal(t, 0, code, errOut)
	assert.Equal(t, "retired\n", out)

	code, _, errOut = dimctl(t, args("purge", "retired")...)
	assert.Equal(t, exitFailure, code)
	assert.Contains(t, errOut, "still has live nodes")

	require.NoError(t, m.Stop(t.Context()))
	code, out, errOut = dimctl(t, args("purge", "retired")...)
	require.Equal(t, 0, code, errOut)
	assert.Regexp(t, `^purged "retired": \d+ keys removed\n$`, out)
	keys, err := srv.Client(t).Do(t.Context(), srv.Client(t).B().Keys().Pattern(testPrefix+"*").Build()).AsStrSlice()
	require.NoError(t, err)
	assert.Empty(t, keys, "nothing of the service is left")

	code, _, errOut = dimctl(t, args("status", "retired")...)
	assert.Equal(t, exitFailure, code)
	assert.Contains(t, errOut, "no service")
	code, out, _ = dimctl(t, args("services")...)
	assert.Equal(t, 0, code)
	assert.Empty(t, out)
}

func TestDrainUndrainFreezeThaw(t *testing.T) {
	srv := redistest.Start(t)
	startService(t, srv, "ops")
	base := []string{"-redis", srv.Addr(), "-prefix", testPrefix}
	status := func() *dim.Status {
		st, err := dim.ReadStatus(t.Context(), srv.Client(t), dim.Service{Name: "ops", KeyPrefix: testPrefix})
		require.NoError(t, err)
		return st
	}
	node := func(st *dim.Status, id string) dim.NodeStatus {
		i := slices.IndexFunc(st.Nodes, func(n dim.NodeStatus) bool { return n.ID == id })
		require.GreaterOrEqual(t, i, 0, id)
		return st.Nodes[i]
	}

	code, out, errOut := dimctl(t, append(base, "drain", "ops", "n2", "-for", "10m")...)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, `drained n2 in "ops" until `)
	require.Eventually(t, func() bool {
		n2 := node(status(), "n2")
		return n2.State == "drained" && n2.Assigned == 0 && n2.Running == 0
	}, 10*time.Second, 20*time.Millisecond)
	code, out, _ = dimctl(t, append(base, "status", "ops")...)
	assert.Equal(t, 0, code, "a drained node is not a problem")
	assert.Regexp(t, `n2 +1 +drained \(drain ends in (9m5\d|10m0)s?`, out)

	code, _, errOut = dimctl(t, append(base, "drain", "ops", "n1")...)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "would leave no node to run keys")
	code, _, errOut = dimctl(t, append(base, "drain", "ops", "n9")...)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, `"n9" is not a live node`)

	code, out, errOut = dimctl(t, append(base, "undrain", "ops", "n2")...)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "undrained n2")
	code, _, errOut = dimctl(t, append(base, "undrain", "ops", "n2")...)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "n2 is not drained")
	require.Eventually(t, func() bool { return node(status(), "n2").Running > 0 }, 10*time.Second, 20*time.Millisecond)

	code, out, errOut = dimctl(t, append(base, "freeze", "ops", "-for", "5m")...)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, `froze "ops" for 5m0s`)
	code, _, errOut = dimctl(t, append(base, "freeze", "ops")...)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "already frozen")
	code, out, _ = dimctl(t, append(base, "status", "ops")...)
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "frozen   for ")
	code, out, errOut = dimctl(t, append(base, "thaw", "ops")...)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, `thawed "ops"`)
	code, _, errOut = dimctl(t, append(base, "thaw", "ops")...)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, `"ops" is not frozen`)
}

func TestPlanPrintsMovesAndChangesNothing(t *testing.T) {
	srv := redistest.Start(t)
	before := startService(t, srv, "planned")
	base := []string{"-redis", srv.Addr(), "-prefix", testPrefix}
	code, out, errOut := dimctl(t, append(base, "plan", "planned", "drain", "n1")...)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, `plan  drain n1 in "planned": `)
	assert.Contains(t, out, "nothing was changed")
	assert.Regexp(t, `n2 +3\n`, out)
	for _, key := range keysOf(before)["n1"] {
		assert.Regexp(t, key+` +n1 +n2\n`, out)
	}
	code, out, errOut = dimctl(t, append(base, "-json", "plan", "planned", "join", "n3", "-weight", "2")...)
	require.Equal(t, 0, code, errOut)
	var res dim.PlanResult
	require.NoError(t, json.Unmarshal([]byte(out), &res))
	assert.Contains(t, []int{1, 2}, res.Loads["n3"], "weight 2 of 4 takes half of three keys, rounded either way")
	assert.Len(t, res.Moves, res.Loads["n3"], "only what n3 takes moves")
	code, _, errOut = dimctl(t, append(base, "plan", "planned", "drain", "n9")...)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, `"n9" is not a live node`)
	after, err := dim.ReadStatus(t.Context(), srv.Client(t), dim.Service{Name: "planned", KeyPrefix: testPrefix})
	require.NoError(t, err)
	assert.Equal(t, before.Assignment, after.Assignment)
}

func TestWriteSummaryNamesOnlyWhatDoesNotRun(t *testing.T) {
	odd := "evil\n\x1b[2Jleader n666"
	var problems []dim.KeyProblem
	for i := range 12 {
		problems = append(problems, dim.KeyProblem{Key: fmt.Sprintf("f%02d", i), AssignedTo: "n2",
			KeyStatus: dim.KeyStatus{Node: "n2", State: dim.KeyFailing, Live: true, LastError: "refused"}})
	}
	problems = append(problems[:2],
		dim.KeyProblem{Key: odd, AssignedTo: "n1", KeyStatus: dim.KeyStatus{Node: "n2", State: dim.KeyStopping, Live: true}},
		dim.KeyProblem{Key: "gone", KeyStatus: dim.KeyStatus{Node: "n1", State: dim.KeyStopping, Live: true}})
	sum := &dim.Summary{
		Service:    "svc",
		ServerTime: time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC),
		Leader:     "n1", LeaderLive: true, Epoch: 7,
		Nodes: []dim.NodeStatus{
			{ID: "n2", Weight: 1, State: "suspect", LeaseLeft: 400 * time.Millisecond, TTL: time.Second, Assigned: 50000, Running: 49988},
			{ID: "n1", Weight: 1, State: "active", LeaseLeft: 900 * time.Millisecond, TTL: time.Second, Assigned: 50000, Running: 50000},
		},
		Assigned: 100005, Running: 99988,
		States:  map[dim.KeyState]int{dim.KeyRunning: 99988, dim.KeyFailing: 1200, dim.KeyStopping: 2},
		Unowned: 1217, OnDeadNodes: 5,
		Problems: 1202, ProblemKeys: problems, ProblemsOmitted: 1198,
		AtRisk:     49988,
		AtRiskKeys: []dim.KeyProblem{{Key: "r1", KeyStatus: dim.KeyStatus{Node: "n2", State: dim.KeyRunning, Live: true}}},
		Moving:     1,
	}
	var out bytes.Buffer
	require.NoError(t, writeSummary(&out, sum))
	assert.Equal(t, `service  svc
leader   n1 (live)
epoch    7
keys     100005 assigned, 99988 running, 1200 failing, 2 stopping, 5 on nodes no longer live
time     2026-01-02 03:04:05.006 UTC (Redis)

NODE  WEIGHT  STATE    LEASE LEFT  ASSIGNED  RUNNING
n1    1       active   900ms       50000     50000
n2    1       suspect  400ms       50000     49988

PENDING
unowned  1217   f00 (n2, failing: refused), f01 (n2, failing: refused), "evil\n\x1b[2Jleader n666" (n2 to n1, stopping), gone (n1, removed, stopping), … (1198 more)
at risk  49988  r1 (on suspect n2), … (49987 more)
moving   1
`, out.String())
}

func TestSummaryProblemsNeedTheSameTroubleTwice(t *testing.T) {
	failing := func(keys ...string) *dim.Summary {
		sum := &dim.Summary{Unowned: len(keys)}
		for _, k := range keys {
			sum.ProblemKeys = append(sum.ProblemKeys, dim.KeyProblem{Key: k, AssignedTo: "n1",
				KeyStatus: dim.KeyStatus{Node: "n1", State: dim.KeyFailing}})
		}
		return sum
	}
	first := summaryProblems(failing("a", "b"), nil)
	assert.Equal(t, []string{"a", "b"}, first.down)
	assert.Zero(t, first.others)
	again := summaryProblems(failing("b", "c"), first)
	assert.Equal(t, []string{"b"}, again.down, "only a key down both times is down")
	assert.Equal(t, "unhealthy: 1 keys not running: b", again.Error())

	// Keys not claimed by anyone are not named: counted, and down when
	// some were both times.
	unclaimed := &dim.Summary{Unowned: 3, ProblemKeys: failing("a").ProblemKeys}
	first = summaryProblems(unclaimed, nil)
	assert.Equal(t, 2, first.others)
	assert.Equal(t, "unhealthy: 3 keys not running: a, and 2 not claimed", first.Error())
	assert.True(t, summaryProblems(&dim.Summary{}, first).none(), "a handoff that ended is no trouble")
	assert.Equal(t, 1, summaryProblems(&dim.Summary{Unowned: 1}, first).others)

	// A key held on its way out (no longer assigned) is nobody's trouble.
	leaving := &dim.Summary{ProblemKeys: []dim.KeyProblem{{Key: "x", KeyStatus: dim.KeyStatus{Node: "n1", State: dim.KeyStopping}}}}
	assert.True(t, summaryProblems(leaving, nil).none())

	suspect := &dim.Summary{Nodes: []dim.NodeStatus{{ID: "n2", State: "suspect"}}}
	assert.Equal(t, []string{"n2"}, summaryProblems(suspect, summaryProblems(suspect, nil)).suspect)
	failed := &dim.Summary{LastRebalance: &dim.LastRebalance{Error: "boom"}}
	assert.True(t, summaryProblems(failed, nil).onlyRebalance())
	assert.False(t, summaryProblems(failed, nil).none())
}

func TestStatusProbeSeesANodeCutOff(t *testing.T) {
	srv := redistest.Start(t)
	proxy, err := faultproxy.New(srv.Addr())
	require.NoError(t, err)
	defer func() { _ = proxy.Close() }()
	ropt := srv.ClientOption()
	ropt.InitAddress = []string{proxy.Addr()}
	m, err := dim.New(
		func(context.Context) ([]string, error) { return []string{"a", "b", "c"}, nil },
		func(_ context.Context, cfg string) (string, error) { return cfg, nil },
		dim.WithService("cut"), dim.WithKey(func(c string) string { return c }),
		dim.WithRedis(ropt), dim.WithNodeID("n1"), dim.WithLogger(nil),
		dim.WithNodeTTL(time.Second), dim.WithHeartbeat(100*time.Millisecond))
	require.NoError(t, err)
	require.NoError(t, m.Start(t.Context()))
	defer func() {
		proxy.Heal()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = m.Stop(ctx) // it fenced itself; whether it rejoined before stopping does not matter
	}()
	base := []string{"-redis", srv.Addr(), "-down-after", "200ms"}
	require.Eventually(t, func() bool {
		code, out, _ := dimctl(t, append(base, "status", "cut")...)
		return code == exitOK && strings.Contains(out, "3 assigned, 3 running")
	}, 10*time.Second, 50*time.Millisecond, "every key running")

	// Cut off, the node goes suspect with its keys at risk, then its lease
	// ends and its keys are down.
	proxy.Cut(faultproxy.Both)
	var code int
	var out, errOut string
	require.Eventually(t, func() bool {
		code, out, errOut = dimctl(t, append(base, "status", "cut")...)
		return code == exitUnhealthy && strings.Contains(errOut, "nodes suspect: n1")
	}, 5*time.Second, 20*time.Millisecond, "exit %d\n%s\n%s", code, out, errOut)
	require.Eventually(t, func() bool {
		code, out, errOut = dimctl(t, append(base, "status", "cut")...)
		return code == exitUnhealthy && strings.Contains(errOut, "3 keys not running, not claimed")
	}, 5*time.Second, 20*time.Millisecond, "exit %d\n%s\n%s", code, out, errOut)
	assert.Contains(t, out, "no live nodes")
	assert.Regexp(t, `(?m)^keys +3 assigned, 0 running, 3 on nodes no longer live$`, out)
	assert.Regexp(t, `(?m)^unowned +3 +-$`, out)
}

func TestExplainPrintsWhereAKeyIsAndWhy(t *testing.T) {
	srv := redistest.Start(t)
	st := startService(t, srv, "explained")
	base := []string{"-redis", srv.Addr(), "-prefix", testPrefix}
	code, out, errOut := dimctl(t, append(base, "explain", "explained", "a")...)
	require.Equal(t, 0, code, errOut)
	node := st.Assignment["a"]
	assert.Regexp(t, `assigned to +`+node+`\n`, out)
	assert.Regexp(t, `owner +`+node+`, token \d+ \(live\)`, out)
	assert.Regexp(t, `state +running on `+node+` since `, out)
	assert.Contains(t, out, "placed there when it was added")
	code, out, errOut = dimctl(t, append(base, "-json", "explain", "explained", "a")...)
	require.Equal(t, 0, code, errOut)
	var e dim.Explanation
	require.NoError(t, json.Unmarshal([]byte(out), &e))
	assert.Equal(t, node, e.AssignedTo)
	code, _, errOut = dimctl(t, append(base, "explain", "explained", "zzz")...)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "unknown key")
	code, _, errOut = dimctl(t, append(base, "explain", "explained")...)
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, `missing key after "explain" "explained"`)
}

func TestExplainAndPlanFollowThePlacements(t *testing.T) {
	srv := redistest.Start(t)
	// n1 is in zone a, n2 in b; key a requires zone a, b spreads over zones.
	placement := dim.WithPlacement(func(key string) dim.Placement {
		switch key {
		case "a":
			return dim.Placement{Require: map[string]string{"zone": "a"}}
		case "b":
			return dim.Placement{Spread: "zone"}
		}
		return dim.Placement{}
	})
	st := startServiceWith(t, srv, "placed", func(node string) []dim.Option {
		return []dim.Option{dim.WithLabels(map[string]string{"zone": map[string]string{"n1": "a", "n2": "b"}[node]}), placement}
	})
	require.Equal(t, "n1", st.Assignment["a"])
	base := []string{"-redis", srv.Addr(), "-prefix", testPrefix}
	code, out, errOut := dimctl(t, append(base, "explain", "placed", "a")...)
	require.Equal(t, 0, code, errOut)
	assert.Regexp(t, `placed by +required zone=a: only n1 qualifies\n`, out)
	code, out, errOut = dimctl(t, append(base, "explain", "placed", "b")...)
	require.Equal(t, 0, code, errOut)
	assert.Regexp(t, `placed by +spread over zone with the keys of the same requirements, preferences and cost\n`, out)
	code, out, errOut = dimctl(t, append(base, "-json", "explain", "placed", "c")...)
	require.Equal(t, 0, code, errOut)
	var e dim.Explanation
	require.NoError(t, json.Unmarshal([]byte(out), &e))
	assert.Equal(t, []string{"no constraint: any node may hold it, and it is where balance put it with the fewest moves"}, e.PlacedBy)
	assert.Nil(t, e.Placement)

	// Draining n1 leaves key a nowhere to go: the plan says so.
	code, out, errOut = dimctl(t, append(base, "plan", "placed", "drain", "n1")...)
	require.Equal(t, 0, code, errOut)
	assert.Regexp(t, `a +n1 +-\n`, out)
	assert.Regexp(t, `unplaceable +a: no live node could take them\n`, out)
	assert.Regexp(t, `n2 +2\n`, out)
}

func TestHistoryPrintsWhatHappened(t *testing.T) {
	srv := redistest.Start(t)
	st := startService(t, srv, "told")
	base := []string{"-redis", srv.Addr(), "-prefix", testPrefix}
	code, out, errOut := dimctl(t, append(base, "history", "told")...)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "TIME")
	assert.Regexp(t, `elected +n[12] +epoch \d+`, out)
	assert.Regexp(t, `joined +n1 `, out)
	node := st.Assignment["a"]
	code, out, errOut = dimctl(t, append(base, "history", "told", "-key", "a")...)
	require.Equal(t, 0, code, errOut)
	assert.Regexp(t, `claimed +`+node+` +a\n`, out)
	assert.NotContains(t, out, "elected", "a key filter shows only the key's entries")
	code, out, errOut = dimctl(t, append(base, "-json", "history", "told", "-node", node, "-limit", "2")...)
	require.Equal(t, 0, code, errOut)
	var entries []dim.HistoryEntry
	require.NoError(t, json.Unmarshal([]byte(out), &entries))
	assert.Len(t, entries, 2)
	code, _, errOut = dimctl(t, append(base, "history", "told", "-limit", "0")...)
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "-limit 0 is below 1")

	// -since leaves out what is older: a drain now is in the last second,
	// the elections and joins of the start are not.
	code, _, errOut = dimctl(t, append(base, "drain", "told", "n2")...)
	require.Equal(t, 0, code, errOut)
	require.Eventually(t, func() bool {
		_, out, _ = dimctl(t, append(base, "history", "told", "-node", "n2")...)
		return strings.Contains(out, "released")
	}, 10*time.Second, 20*time.Millisecond)
	time.Sleep(1100 * time.Millisecond) // let the start fall out of a 1 s window
	code, _, errOut = dimctl(t, append(base, "undrain", "told", "n2")...)
	require.Equal(t, 0, code, errOut)
	require.Eventually(t, func() bool {
		code, out, _ = dimctl(t, append(base, "-json", "history", "told", "-since", "1s")...)
		return code == 0 && strings.Contains(out, `"claimed"`)
	}, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, json.Unmarshal([]byte(out), &entries))
	for _, e := range entries {
		assert.WithinDuration(t, time.Now(), e.At, 2*time.Second, "an entry older than -since: %+v", e)
		assert.NotEqual(t, dim.HistoryJoined, e.Kind, "the start is older than -since")
	}
}

func TestPinUnpin(t *testing.T) {
	srv := redistest.Start(t)
	startService(t, srv, "ops")
	base := []string{"-redis", srv.Addr(), "-prefix", testPrefix}
	status := func() *dim.Status {
		st, err := dim.ReadStatus(t.Context(), srv.Client(t), dim.Service{Name: "ops", KeyPrefix: testPrefix})
		require.NoError(t, err)
		return st
	}
	from := status().Assignment["a"]
	to := map[string]string{"n1": "n2", "n2": "n1"}[from]

	code, out, errOut := dimctl(t, append(base, "pin", "ops", "a", to)...)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "pinned a to "+to)
	require.Eventually(t, func() bool { return status().Assignment["a"] == to }, 10*time.Second, 20*time.Millisecond)
	_, out, _ = dimctl(t, append(base, "status", "ops")...)
	assert.Regexp(t, `pinned +1 +keys an operator pinned`, out)
	code, out, errOut = dimctl(t, append(base, "explain", "ops", "a")...)
	require.Equal(t, 0, code, errOut)
	assert.Regexp(t, `pinned +to `+to+` by an operator`, out)

	code, _, errOut = dimctl(t, append(base, "pin", "ops", "a", "n9")...)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, `"n9" is not a live node`)
	code, _, errOut = dimctl(t, append(base, "pin", "ops", "a")...)
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "pin needs a service, a key and a node")

	code, out, errOut = dimctl(t, append(base, "unpin", "ops", "a")...)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "unpinned a")
	code, _, errOut = dimctl(t, append(base, "unpin", "ops", "a")...)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "a is not pinned")
	assert.Empty(t, status().Pins)
}
