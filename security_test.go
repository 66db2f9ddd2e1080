package dim

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests of this file prove that dim keeps what is not its own out of
// reach: TLS, a minimal ACL user, names that cannot inject into keys or
// channels, configs that never reach Redis, services and tenants that share
// a Redis without seeing each other, and the path without client-side
// caching.

func TestTLSWithACertificateGeneratedByTheTest(t *testing.T) {
	// The server takes TLS only, with a certificate for 127.0.0.1 signed by a
	// CA the test has just made; the client trusts that CA and nothing else.
	srv := redistest.Start(t, redistest.WithTLS())
	runScenarios(t, newDirectCluster(t, "svc", srv.ClientOption(), 8))

	t.Run("a client without TLS fails at Start", func(t *testing.T) {
		opt := srv.ClientOption()
		opt.TLSConfig = nil
		err := startOnce(t, "svc", opt)
		require.ErrorIs(t, err, ErrRedis)
		assert.Contains(t, err.Error(), srv.Addr())
	})
	t.Run("a certificate from an untrusted CA fails at Start", func(t *testing.T) {
		opt := srv.ClientOption()
		opt.TLSConfig = &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}
		err := startOnce(t, "svc", opt)
		require.ErrorIs(t, err, ErrRedis)
		assert.Contains(t, err.Error(), "certificate signed by unknown authority")
	})
}

// startOnce starts a Manager of service with opt, expecting it to fail, and
// returns the error of Start.
func startOnce(t *testing.T, service string, opt rueidis.ClientOption) error {
	t.Helper()
	opt.Dialer.Timeout = time.Second
	opt.ConnWriteTimeout = time.Second
	m, err := New(func(context.Context) ([]string, error) { return []string{"a"}, nil },
		func(context.Context, string) (int, error) { return 0, nil },
		WithService(service), WithRedis(opt))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	err = m.Start(ctx)
	if err == nil {
		_ = m.Stop(context.Background())
		t.Fatal("Start succeeded")
	}
	t.Logf("Start failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	return err
}

// The documented ACL user is for the service "ingest", with no key prefix.
const (
	aclDocService  = "ingest"
	aclDocUser     = "dim-ingest"
	aclDocPassword = ">CHANGE-ME"
)

// documentedACL returns the ACL SETUSER line of docs/REDIS.md, split into
// arguments: the tests run exactly what the documentation tells operators.
func documentedACL(t *testing.T) []string {
	t.Helper()
	args := aclLine(t, aclDocUser)
	require.Contains(t, args, aclDocPassword)
	return args
}

// aclLine returns the ACL SETUSER line of docs/REDIS.md for user.
func aclLine(t *testing.T, user string) []string {
	t.Helper()
	data, err := os.ReadFile("docs/REDIS.md")
	require.NoError(t, err)
	var found [][]string
	for line := range strings.Lines(string(data)) {
		if args := strings.Fields(line); strings.HasPrefix(line, "ACL SETUSER ") && args[2] == user {
			found = append(found, args)
		}
	}
	require.Len(t, found, 1, "docs/REDIS.md must hold exactly one ACL SETUSER line for %s", user)
	return found[0]
}

// createUser runs the documented ACL SETUSER line for another user,
// password, key prefix and service.
func createUser(t *testing.T, admin rueidis.Client, user, password, prefix, service string) {
	t.Helper()
	args := documentedACL(t)
	docKeys := "dim:{" + aclDocService + "}"
	for i, a := range args {
		switch {
		case i == 2:
			args[i] = user
		case a == aclDocPassword:
			args[i] = ">" + password
		case strings.HasPrefix(a, "~"), strings.HasPrefix(a, "&"):
			require.True(t, strings.HasPrefix(a[1:], docKeys), "pattern %q", a)
			args[i] = a[:1] + prefix + "dim:{" + service + "}" + a[1+len(docKeys):]
		}
	}
	require.NoError(t, admin.Do(context.Background(), admin.B().Arbitrary(args[0], args[1]).Args(args[2:]...).Build()).Error())
}

// aclLog returns the server's ACL LOG: every command refused to a user.
func aclLog(t *testing.T, admin rueidis.Client) []map[string]string {
	t.Helper()
	entries, err := admin.Do(context.Background(), admin.B().AclLog().Count(100).Build()).ToArray()
	require.NoError(t, err)
	var out []map[string]string
	for _, e := range entries {
		m, err := e.AsMap()
		require.NoError(t, err)
		entry := map[string]string{}
		for k, v := range m {
			entry[k], _ = v.ToString()
		}
		out = append(out, entry)
	}
	return out
}

func randomHex(t *testing.T) string {
	b := make([]byte, 8)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

func TestACLMinimalUserFromTheDocsRunsEveryScenario(t *testing.T) {
	adminPassword := "admin-" + randomHex(t)
	srv := redistest.Start(t, redistest.WithPassword(adminPassword))
	admin := srv.Client(t)
	password := randomHex(t)
	createUser(t, admin, aclDocUser, password, "", aclDocService)
	require.NoError(t, admin.Do(context.Background(), admin.B().AclLog().Reset().Build()).Error())
	mon := startMonitor(t, srv.Addr(), nil, "default", adminPassword)

	opt := srv.ClientOption()
	opt.Username, opt.Password = aclDocUser, password
	c := newDirectCluster(t, aclDocService, opt, 8)
	runScenarios(t, c)
	// A node drains and undrains itself as the same user.
	c.start("n5")
	c.waitConverged(5*time.Second, c.running()...)
	drained := c.node(c.follower())
	_, err := drained.m.Drain(context.Background(), time.Minute)
	require.NoError(t, err)
	c.waitConverged(5*time.Second, without(c.running(), drained.id)...)
	was, err := drained.m.Undrain(context.Background())
	require.NoError(t, err)
	require.True(t, was)
	c.waitConverged(5*time.Second, c.running()...)
	// The leader sweeps stale owner entries on the config refresh, which a
	// short run may not reach (a busy leader loop coalesces it with other
	// triggers): sweep once, as the leader does.
	c.leader().m.elector.sweepOwners(context.Background(), &leaderMemory{})
	c.stopAll()
	// Enough: nothing was refused.
	assert.Empty(t, aclLog(t, admin), "commands refused to the documented user")
	// Minimal: every command the line allows was used, except the topology
	// command of Redis Cluster 8, which 7.x does not send, and
	// ZRANGEBYSCORE, which only reads an older dim's record to convert it
	// (TestAnOlderDimsRecordIsConvertedOnlyOnceItsNodesAreGone).
	used := commands(mon.stop())
	for _, rule := range documentedACL(t)[3:] {
		if cmd, ok := strings.CutPrefix(rule, "+"); ok && cmd != "cluster|shards" && cmd != "zrangebyscore" {
			assert.Contains(t, used, cmd, "the documented line allows a command dim did not send")
		}
	}
	t.Logf("commands sent: %v", used)

	t.Run("wrong credentials fail at Start with the server's reason", func(t *testing.T) {
		bad := opt
		bad.Password = "wrong"
		err := startOnce(t, aclDocService, bad)
		require.ErrorIs(t, err, ErrRedis)
		assert.Contains(t, err.Error(), "WRONGPASS")
		assert.Contains(t, err.Error(), srv.Addr())
	})
	t.Run("a user without a command dim needs fails at Start", func(t *testing.T) {
		createUser(t, admin, "dim-lacking", password, "", aclDocService)
		require.NoError(t, admin.Do(context.Background(), admin.B().Arbitrary("ACL", "SETUSER").Args("dim-lacking", "-info").Build()).Error())
		lacking := opt
		lacking.Username = "dim-lacking"
		err := startOnce(t, aclDocService, lacking)
		require.ErrorIs(t, err, ErrRedis)
		assert.Contains(t, err.Error(), "can't run this command")
	})
	t.Run("the user reaches no other key", func(t *testing.T) {
		require.NoError(t, admin.Do(context.Background(), admin.B().Set().Key("other:secret").Value("x").Build()).Error())
		client, err := rueidis.NewClient(opt)
		require.NoError(t, err)
		defer client.Close()
		for _, cmd := range []rueidis.Completed{
			client.B().Get().Key("other:secret").Build(),
			client.B().Hgetall().Key(newKeyspace("", "other").assign).Build(),
			client.B().Publish().Channel(newKeyspace("", "other").channel).Message(evRebalance).Build(),
		} {
			err := client.Do(context.Background(), cmd).Error()
			require.Error(t, err)
			assert.Contains(t, err.Error(), "NOPERM")
		}
	})
}

// secretFeed is a config with a credential in it, which must never reach
// Redis.
type secretFeed struct {
	Name string
	DSN  string
}

// fastTimings are the test timings of testOptions, without its WithKey.
func fastTimings() []Option {
	return []Option{
		WithNodeTTL(testTTL),
		WithHeartbeat(testHeartbeat),
		WithLeaderLockTTL(testLockTTL),
		WithLeaderLockRefresh(testLockEvery),
		WithLeaderHealthcheckSchedule("@every 1s"),
		WithHealthcheckSchedule("@every 1s"),
		WithConfigRefreshSchedule("@every 1s"),
	}
}

func TestSecurityNoConfigContentReachesRedis(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	mon := startMonitor(t, srv.Addr(), nil)

	secret := "TOPSECRET-" + randomHex(t)
	rotated := "ROTATED-" + randomHex(t)
	var mu sync.Mutex
	dsn := secret
	getConfig := func(context.Context) ([]secretFeed, error) {
		mu.Lock()
		defer mu.Unlock()
		var feeds []secretFeed
		for _, name := range []string{"feed-a", "feed-b", "feed-c"} {
			feeds = append(feeds, secretFeed{Name: name, DSN: "postgres://dim:" + dsn + "@db/" + name})
		}
		return feeds, nil
	}
	// Each service's instances, by node and key: the DSN they were made with.
	running := map[string]map[string]string{}
	var managers []*Manager[secretFeed, string]
	for _, service := range []string{"keyed", "hashed"} {
		running[service] = map[string]string{}
		for _, node := range []string{"n1", "n2"} {
			opts := append(fastTimings(), WithService(service), WithNodeID(node), WithRedis(srv.ClientOption()),
				WithDisconnect(func(_ context.Context, id string) error {
					mu.Lock()
					defer mu.Unlock()
					delete(running[service], id)
					return nil
				}))
			if service == "keyed" {
				opts = append(opts, WithKey(func(f secretFeed) string { return f.Name }))
			}
			m, err := New(getConfig, func(_ context.Context, f secretFeed) (string, error) {
				mu.Lock()
				defer mu.Unlock()
				id := node + "/" + f.Name
				running[service][id] = f.DSN
				return id, nil
			}, opts...)
			require.NoError(t, err)
			require.NoError(t, m.Start(context.Background()))
			managers = append(managers, m)
		}
	}
	stopAll := func() {
		for _, m := range managers {
			if m.life.checkStarted() == nil {
				_ = m.Stop(context.Background())
			}
		}
	}
	t.Cleanup(stopAll)
	// allOn reports whether every service runs its three feeds once, all
	// made with the given credential.
	allOn := func(want string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, insts := range running {
			if len(insts) != 3 {
				return false
			}
			for _, got := range insts {
				if !strings.Contains(got, want) {
					return false
				}
			}
		}
		return true
	}
	eventually(t, 10*time.Second, "every feed running", func() bool { return allOn(secret) })
	// Rotating the credential changes every config: keyed, in place; hashed,
	// into new identities.
	mu.Lock()
	dsn = rotated
	mu.Unlock()
	require.NoError(t, managers[0].Rebalance(context.Background()))
	require.NoError(t, managers[2].Rebalance(context.Background()))
	eventually(t, 10*time.Second, "every feed running with the rotated credential", func() bool { return allOn(rotated) })

	// The state in Redis, while the services run: keys, values and every
	// command sent, the events published included.
	state := dump(t, admin)
	require.NotEmpty(t, state)
	stopAll()
	lines := mon.stop()
	require.NotEmpty(t, lines)
	for _, cred := range []string{secret, rotated, "postgres://"} {
		for key, value := range state {
			assert.NotContains(t, key, cred)
			assert.NotContains(t, value, cred, "the value of %s", key)
		}
		for _, line := range lines {
			require.NotContains(t, line, cred, "a command sent to Redis")
		}
	}
	// What identifies a config instead: its key, or a hash of its content.
	assign := state[newKeyspace("", "keyed").assign]
	assert.Contains(t, assign, "feed-a")
	assert.Regexp(t, `^map\[[0-9a-f]{32}:`, state[newKeyspace("", "hashed").assign])
}

// eventually polls cond every 10ms until it holds, failing the test after
// within.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dump returns every key of the server with a printable form of its value.
func dump(t *testing.T, client rueidis.Client) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	var cursor uint64
	for {
		e, err := client.Do(ctx, client.B().Scan().Cursor(cursor).Count(1000).Build()).AsScanEntry()
		require.NoError(t, err)
		for _, key := range e.Elements {
			typ, err := client.Do(ctx, client.B().Type().Key(key).Build()).ToString()
			require.NoError(t, err)
			var v any
			switch typ {
			case "none": // expired since the SCAN
				continue
			case "string":
				v, err = client.Do(ctx, client.B().Get().Key(key).Build()).ToString()
			case "hash":
				v, err = client.Do(ctx, client.B().Hgetall().Key(key).Build()).AsStrMap()
			case "set":
				v, err = client.Do(ctx, client.B().Smembers().Key(key).Build()).AsStrSlice()
			case "zset":
				v, err = client.Do(ctx, client.B().Zrange().Key(key).Min("0").Max("-1").Withscores().Build()).AsZScores()
			case "stream": // the history
				v, err = client.Do(ctx, client.B().Xrange().Key(key).Start("-").End("+").Build()).AsXRange()
			default:
				t.Fatalf("key %s has an unexpected type %s", key, typ)
			}
			if rueidis.IsRedisNil(err) {
				continue
			}
			require.NoError(t, err)
			out[key] = fmt.Sprint(v)
		}
		if cursor = e.Cursor; cursor == 0 {
			return out
		}
	}
}

func TestServicesSharingARedisNeverSeeEachOther(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	// The same config keys and node IDs: only the service differs. Beta, the
	// bystander, gets a longer lease, so that only a failure of isolation
	// can disturb it, not a slow test machine.
	alpha := newDirectCluster(t, "alpha", srv.ClientOption(), 6)
	beta := newDirectCluster(t, "beta", srv.ClientOption(), 6,
		WithNodeTTL(3*time.Second), WithHeartbeat(300*time.Millisecond))
	nodes := []string{"n1", "n2", "n3"}
	for _, id := range nodes {
		alpha.start(id)
		beta.start(id)
	}
	alpha.waitConverged(10*time.Second, nodes...)
	beta.waitConverged(10*time.Second, nodes...)

	betaLeader := beta.leader()
	betaEpoch, _ := betaLeader.m.elector.term.current()
	betaEvents := len(beta.rec.Events())
	betaStatus, err := betaLeader.m.Status(context.Background())
	require.NoError(t, err)

	// Alpha loses its leader and a follower; beta must notice nothing.
	alphaLeader := alpha.leader()
	alpha.crash(alphaLeader.id)
	alpha.stop(alpha.follower())
	alpha.waitConverged(testTTL+2*time.Second, alpha.running()...)
	next := alpha.leader()
	require.NotEqual(t, alphaLeader.id, next.id)

	assert.Len(t, beta.rec.Events(), betaEvents, "beta's instances started or stopped")
	assert.Same(t, betaLeader, beta.leader(), "beta's leader")
	epoch, _ := betaLeader.m.elector.term.current()
	assert.Equal(t, betaEpoch, epoch, "beta's epoch")
	after, err := betaLeader.m.Status(context.Background())
	require.NoError(t, err)
	assert.Equal(t, betaStatus.Owners, after.Owners, "beta's claims")
	assert.Equal(t, betaStatus.Assignment, after.Assignment, "beta's assignment")
	assert.Len(t, after.Nodes, 3, "beta's nodes")

	alphaStatus, err := next.m.Status(context.Background())
	require.NoError(t, err)
	assert.Len(t, alphaStatus.Nodes, 1, "alpha's nodes")
	assert.Equal(t, next.id, alphaStatus.Leader)
	for key, owner := range alphaStatus.Owners {
		assert.Equal(t, next.id, owner.Node, key)
	}
	for key := range dump(t, admin) {
		if !strings.HasPrefix(key, "dim:{alpha}:") && !strings.HasPrefix(key, "dim:{beta}:") {
			t.Errorf("key %q belongs to neither service", key)
		}
	}
}

func TestKeyPrefixPutsEveryKeyAndChannelUnderIt(t *testing.T) {
	srv := redistest.Start(t, redistest.WithPassword("admin-"+randomHex(t)))
	admin := srv.Client(t)
	// Another application's key, which the tenants must never touch.
	require.NoError(t, admin.Do(context.Background(), admin.B().Set().Key("dim:{ingest}:nodes").Value("not dim's").Build()).Error())

	// Two tenants run the same service with the same node IDs, each as an
	// ACL user that may touch nothing outside its prefix.
	tenants := map[string]*directCluster{}
	for _, prefix := range []string{"tenant-a:", "tenant-b:"} {
		user, password := strings.TrimSuffix(prefix, ":"), randomHex(t)
		createUser(t, admin, user, password, prefix, "ingest")
		opt := srv.ClientOption()
		opt.Username, opt.Password = user, password
		c := newDirectCluster(t, "ingest", opt, 4, WithKeyPrefix(prefix))
		c.start("n1")
		c.start("n2")
		tenants[prefix] = c
	}
	for _, c := range tenants {
		c.waitConverged(10*time.Second, "n1", "n2")
	}
	channels, err := admin.Do(context.Background(), admin.B().PubsubChannels().Build()).AsStrSlice()
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"tenant-a:dim:{ingest}:events", "tenant-b:dim:{ingest}:events"}, channels)
	state := dump(t, admin)
	perTenant := map[string]int{}
	for key := range state {
		if key == "dim:{ingest}:nodes" {
			continue
		}
		prefix, _, _ := strings.Cut(key, "dim:{ingest}:")
		assert.Contains(t, tenants, prefix, "key %q", key)
		perTenant[prefix]++
	}
	assert.Len(t, perTenant, 2)
	assert.Equal(t, "not dim's", state["dim:{ingest}:nodes"])
	assert.Empty(t, aclLog(t, admin), "commands refused to a tenant")

	for prefix, c := range tenants {
		st, err := ReadStatus(context.Background(), admin, Service{Name: "ingest", KeyPrefix: prefix})
		require.NoError(t, err)
		assert.Len(t, st.Nodes, 2, prefix)
		assert.Len(t, st.Owners, 4, prefix)
		c.stopAll()
	}
}

func TestDisableCacheOnARealServer(t *testing.T) {
	srv := redistest.Start(t)
	opt := srv.ClientOption()
	opt.DisableCache = true
	admin, err := rueidis.NewClient(opt)
	require.NoError(t, err)
	defer admin.Close()
	c := newDirectCluster(t, "svc", opt, 6)
	for _, id := range []string{"n1", "n2", "n3"} {
		c.start(id)
	}
	c.waitConverged(10*time.Second, "n1", "n2", "n3")
	// No connection asked for client-side caching.
	clients, err := admin.Do(context.Background(), admin.B().ClientList().Build()).ToString()
	require.NoError(t, err)
	conns := 0
	for line := range strings.Lines(clients) {
		for field := range strings.FieldsSeq(line) {
			if flags, ok := strings.CutPrefix(field, "flags="); ok {
				conns++
				assert.NotContains(t, flags, "t", "a connection with tracking on: %s", line)
			}
		}
	}
	assert.Greater(t, conns, 6)

	// Without invalidations the followers poll the leader lock: a crashed
	// leader, whose lock nobody deletes, is replaced once it expires.
	old := c.leader()
	oldEpoch, _ := old.m.elector.term.current()
	start := time.Now()
	c.crash(old.id)
	next := c.leader()
	elected := time.Since(start)
	epoch, _ := next.m.elector.term.current()
	assert.Greater(t, epoch, oldEpoch)
	c.waitConverged(testTTL+2*time.Second, c.running()...)
	t.Logf("leader crash: new leader after %v (lock TTL %v), every key live after %v", elected, testLockTTL, time.Since(start))

	// A graceful stop deletes the lock, and the poll finds it free at once,
	// where a lock left to expire would hold for most of its TTL.
	c.stop(next.id)
	start = time.Now()
	c.leader()
	t.Logf("leader stop: new leader %v after Stop returned", time.Since(start))
	assert.Less(t, time.Since(start), testLockTTL/2, "a released lock waits for its TTL")
	c.waitConverged(testTTL, c.running()...)
}

// injections are names that would break out of a key's hash tag, glob an
// ACL pattern or split an event message, if dim let them through.
var injections = []string{
	"", "a{b", "a}b", "{a}", "a*", "a?", "a[b]", "a b", "a\tb", "a\nb", "a\rb",
	"a\x00b", "a\x1bb", "a\x7fb", "a\\b", `a"b`, "a'b", "a,b", "a;b", "ä", "a\u2028b",
	"-leading", ".leading", strings.Repeat("a", 129),
}

func TestInjectionThroughNamesIsRefused(t *testing.T) {
	get := func(context.Context) ([]string, error) { return nil, nil }
	create := func(context.Context, string) (int, error) { return 0, nil }
	for _, name := range injections {
		for _, tt := range []struct {
			option string
			opts   []Option
			svc    *Service // the same name for the tools; nil: they take none
			field  string
		}{
			{"WithService", []Option{WithService(name)}, &Service{Name: name}, "Service.Name"},
			{"WithNodeID", []Option{WithService("svc"), WithNodeID(name)}, nil, ""},
			{"WithKeyPrefix", []Option{WithService("svc"), WithKeyPrefix(name)}, &Service{Name: "svc", KeyPrefix: name}, "Service.KeyPrefix"},
		} {
			if tt.option == "WithKeyPrefix" && (name == "" || name == "-leading" || name == ".leading") {
				continue // a prefix may be empty and start with anything it may contain
			}
			t.Run(fmt.Sprintf("%s %q", tt.option, name), func(t *testing.T) {
				_, err := New(get, create, tt.opts...)
				require.ErrorIs(t, err, ErrInvalidOption)
				assert.Contains(t, err.Error(), tt.option)
				if tt.svc == nil {
					return
				}
				// The tools that read a service without running a node check
				// names the same way, before any command is sent.
				_, err = ReadStatus(context.Background(), nil, *tt.svc)
				require.ErrorIs(t, err, ErrInvalidOption)
				assert.Contains(t, err.Error(), tt.field)
				_, err = RequestRebalance(context.Background(), nil, *tt.svc)
				require.ErrorIs(t, err, ErrInvalidOption)
			})
		}
	}
}

// hashTag returns the part of a key Redis Cluster hashes: the text between
// the first "{" and the first "}" after it, if not empty.
func hashTag(key string) (string, bool) {
	open := strings.IndexByte(key, '{')
	if open < 0 {
		return "", false
	}
	end := strings.IndexByte(key[open+1:], '}')
	if end <= 0 {
		return "", false
	}
	return key[open+1 : open+1+end], true
}

// FuzzInjectNamesStayInTheirHashTag checks, for any service name, node ID
// and key prefix that the options accept, that every key and the channel
// keep the service as their hash tag (one slot per service on a Cluster),
// contain no whitespace, control or glob character, and that an event
// naming the node splits back into exactly that node; and that two
// different accepted (prefix, service) pairs never share a key, so an ACL
// pattern written for one can never match the other's keys.
func FuzzInjectNamesStayInTheirHashTag(f *testing.F) {
	for _, name := range injections {
		f.Add("", name, "n1")
		f.Add(name, "svc", "n1")
		f.Add("", "svc", name)
	}
	f.Add("tenant-a:", "ingest", "host-1.example/42@x")
	f.Add("x", "dim:{svc", "n")
	f.Fuzz(func(t *testing.T, prefix, service, node string) {
		var s settings
		for _, opt := range []Option{WithKeyPrefix(prefix), WithService(service), WithNodeID(node)} {
			if err := opt.apply(&s); err != nil {
				require.ErrorIs(t, err, ErrInvalidOption)
				return
			}
		}
		k := newKeyspace(prefix, service)
		names := append(k.legacyKeys(), k.nodes, k.epoch, k.leader, k.forcing,
			k.assign, k.traces, k.owner, k.fence, k.lock+":0:"+lockName, k.channel, k.assigned(node))
		for _, name := range names {
			tag, ok := hashTag(name)
			require.True(t, ok, name)
			require.Equal(t, service, tag, name)
			require.True(t, strings.HasPrefix(name, prefix+"dim:{"+service+"}:"), name)
			require.False(t, strings.ContainsAny(name, "*?[]\\\"'"), name)
			for _, r := range name {
				require.False(t, unicode.IsSpace(r) || unicode.IsControl(r) || r > unicode.MaxASCII, "%q", name)
			}
		}
		for _, verb := range []string{evJoin, evDrain, evLeave, evRelease} {
			got, args := parseEvent(verb + " " + node)
			require.Equal(t, verb, got)
			require.Equal(t, []string{node}, args)
		}
		// The pair is recoverable from the key prefix: the first "{" ends
		// the prefix, since neither part may contain a brace.
		before, rest, _ := strings.Cut(k.prefix, "{")
		require.Equal(t, prefix+"dim:", before)
		require.Equal(t, service+"}", rest)
	})
}

// monitor records every command a Redis server executes, from every client,
// scripts' commands included, through MONITOR on a raw connection.
type monitor struct {
	conn net.Conn
	done chan struct{}

	mu    sync.Mutex
	lines []string
}

func startMonitor(t *testing.T, addr string, tlsConf *tls.Config, auth ...string) *monitor {
	t.Helper()
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	var conn net.Conn
	var err error
	if tlsConf != nil {
		conn, err = tls.DialWithDialer(dialer, "tcp", addr, tlsConf)
	} else {
		conn, err = dialer.Dial("tcp", addr)
	}
	require.NoError(t, err)
	r := bufio.NewReader(conn)
	send := func(args ...string) {
		var b strings.Builder
		b.WriteString("*" + strconv.Itoa(len(args)) + "\r\n")
		for _, a := range args {
			b.WriteString("$" + strconv.Itoa(len(a)) + "\r\n" + a + "\r\n")
		}
		_, err := conn.Write([]byte(b.String()))
		require.NoError(t, err)
		line, err := r.ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "+OK\r\n", line, "%v", args[0])
	}
	if len(auth) > 0 {
		send(append([]string{"AUTH"}, auth...)...)
	}
	send("MONITOR")
	m := &monitor{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			m.mu.Lock()
			m.lines = append(m.lines, strings.TrimSuffix(line, "\r\n"))
			m.mu.Unlock()
		}
	}()
	t.Cleanup(func() { m.stop() })
	return m
}

// commands returns the distinct commands in MONITOR lines, in lower case
// and with the subcommand of CLIENT and CLUSTER, as ACL rules name them
// ("client|tracking").
func commands(lines []string) []string {
	seen := map[string]bool{}
	for _, line := range lines {
		_, rest, ok := strings.Cut(line, "] ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		name := strings.ToLower(strings.Trim(f[0], `"`))
		if (name == "client" || name == "cluster") && len(f) > 1 {
			name += "|" + strings.ToLower(strings.Trim(f[1], `"`))
		}
		seen[name] = true
	}
	out := make([]string, 0, len(seen))
	for name := range seen {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// stop ends the recording and returns what it saw.
func (m *monitor) stop() []string {
	m.conn.Close()
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.lines)
}

func TestStartReportsAMissingChannelPermissionAtOnce(t *testing.T) {
	srv := redistest.Start(t, redistest.WithPassword("admin"))
	createUser(t, srv.Client(t), "u", "pw", "", "ingest") // the documented user, for ingest
	opt := srv.ClientOption()
	opt.Username, opt.Password = "u", "pw"
	start := time.Now()
	err := startOnce(t, "other", opt)
	require.ErrorIs(t, err, ErrRedis)
	assert.Contains(t, err.Error(), "NOPERM")
	assert.Contains(t, err.Error(), srv.Addr())
	t.Logf("refused after %v", time.Since(start))
}
