// Package redistest starts real redis-server processes for tests.
//
// Every server listens on a free loopback port, keeps its files in the test's
// temporary directory, persists nothing (`--save "" --appendonly no`, unless
// started [WithPersistence]) and is killed, and waited for, when the test
// ends:
//
//	srv := redistest.Start(t)
//	client := srv.Client(t)
//	// ... srv.Kill(), srv.Restart(), srv.Pause() to inject faults.
//
// [StartCluster] forms a Redis Cluster of several such servers, and
// [StartSentinel] a replicated pair watched by a Sentinel.
//
// Integration tests are skipped under `go test -short`; without it, a missing
// redis-server binary fails the test with a hint on how to install it, so a
// misconfigured machine cannot pass silently.
//
// Methods that can fail report through the [testing.TB] given to [Start] or
// [StartCluster], so like [testing.TB.Fatal] they must be called from the
// goroutine running that test.
//
// The core needs no test: [Launch] starts the same server for a program and
// returns a [Process], whose methods return their errors and whose
// [Process.Close] ends it. A [Server] is a Process that a test owns.
package redistest

import (
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// Defaults of the [Option]s and of [Process.ClientOption].
const (
	// DefaultBinary is the redis-server binary run unless [WithBinary] names
	// another, looked up on the PATH.
	DefaultBinary = "redis-server"
	// DefaultStartTimeout bounds how long a server may take to answer PING.
	DefaultStartTimeout = 10 * time.Second
	// DefaultStopTimeout bounds how long [Process.Stop] waits for a graceful
	// shutdown before it kills the server.
	DefaultStopTimeout = 10 * time.Second
	// DefaultDialTimeout is the client dial timeout set by
	// [Process.ClientOption]: short, because the server is local.
	DefaultDialTimeout = 2 * time.Second
	// DefaultConnWriteTimeout is the client connection timeout set by
	// [Process.ClientOption], so that a test client notices a silent server
	// in seconds rather than rueidis's default of ten.
	DefaultConnWriteTimeout = 2 * time.Second
)

// skipMessage is what [Start] skips with under -short.
const skipMessage = "integration test: needs redis-server; run without -short"

// Option configures a server started by [Start], [Launch], [StartCluster]
// or [StartSentinel].
type Option func(*config)

type config struct {
	name         string
	binary       string
	args         []string
	password     string
	tls          bool
	startTimeout time.Duration
	persist      bool
	// cluster enables cluster mode; it is set by StartCluster only.
	cluster bool
	// sentinelConf is the configuration file of a Sentinel process, set by
	// StartSentinel only: the server then runs in Sentinel mode.
	sentinelConf string
}

// WithName names the server in log and failure messages, which helps when a
// test runs several. Default: "redis" (for cluster nodes "node0", "node1", …).
func WithName(name string) Option {
	return func(c *config) { c.name = name }
}

// WithBinary runs this redis-server binary: a path, or a name looked up on
// the PATH. Default: [DefaultBinary].
func WithBinary(binary string) Option {
	return func(c *config) { c.binary = binary }
}

// WithArgs appends redis-server command-line arguments after the helper's
// own, so they override its defaults. Each directive starts with "--" and its
// values follow as separate arguments, for example an ACL user:
//
//	redistest.WithArgs("--user", "alice", "on", ">secret", "~*", "+@all")
//
// Repeated use adds up. Default: none.
func WithArgs(args ...string) Option {
	return func(c *config) { c.args = append(c.args, args...) }
}

// WithPassword sets the default user's password (`--requirepass`), and
// [Process.ClientOption] authenticates with it. Default: no password.
func WithPassword(password string) Option {
	return func(c *config) { c.password = password }
}

// WithTLS makes the server accept only TLS connections on its port, with a
// certificate for 127.0.0.1 issued by a throwaway CA generated in the test's
// temporary directory. [Process.TLSConfig] returns a client configuration that
// trusts that CA, and [Process.ClientOption] uses it. Clients need no
// certificate. Not supported by [StartCluster]. Default: plain TCP.
func WithTLS() Option {
	return func(c *config) { c.tls = true }
}

// WithStartTimeout bounds how long the server may take to start answering
// PING, when started and on every [Process.Restart]. Default:
// [DefaultStartTimeout].
func WithStartTimeout(d time.Duration) Option {
	return func(c *config) { c.startTimeout = d }
}

// WithPersistence makes the server persist, as a production server would:
// it writes an append-only file (`--appendonly yes --appendfsync everysec`,
// in Redis 7 a directory, appendonlydir, of an RDB base and incremental
// files) and keeps it and any snapshot taken with [Process.Save] across
// restarts. [Process.RestartFromRDB] and [Process.RestartFromAOF] then bring
// the server back from its own files after a crash; [Process.Restart] still
// brings it back empty (it deletes them first). It takes no automatic
// snapshots (`--save ""`). Default: nothing is persisted.
func WithPersistence() Option {
	return func(c *config) { c.persist = true }
}

// Server is a redis-server [Process] owned by one test: it is killed, and
// waited for, when the test ends, and the methods it adds or redefines
// report failures to the test instead of returning them. Those must be
// called from the test's goroutine; the others are safe for concurrent use.
type Server struct {
	*Process
	tb testing.TB
}

// Start starts a redis-server on a free port of 127.0.0.1 and returns once it
// answers PING. The server is killed, and waited for, when tb's test ends;
// if the test failed, the end of the server's log is logged first.
//
// Under `go test -short` Start skips the test. If redis-server is not on the
// PATH, or it does not start, Start fails the test with the reason and the
// server's log.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	return start(tb, newConfig("redis", opts))
}

// Require does what [Start] does before it starts anything, for a test
// whose redis-server is started by the code under test (through [Launch]):
// under `go test -short` it skips the test, and if redis-server is not on
// the PATH it fails the test with a hint on how to install it.
func Require(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip(skipMessage)
	}
	if _, err := lookPath(DefaultBinary); err != nil {
		tb.Fatal(err)
	}
}

func start(tb testing.TB, cfg config) *Server {
	tb.Helper()
	if testing.Short() {
		tb.Skip(skipMessage)
	}
	p, err := launch(cfg, tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	s := &Server{Process: p, tb: tb}
	tb.Cleanup(s.cleanup)
	return s
}

// cleanup kills the server when the test ends, first showing the end of its
// log if the test failed.
func (s *Server) cleanup() {
	if s.tb.Failed() {
		s.tb.Logf("redistest: %s at %s, end of log:\n%s", s.cfg.name, s.Addr(), s.logSince(0))
	}
	s.Kill()
}

// Client returns a rueidis client of the server made from
// [Process.ClientOption], closed when tb's test ends. tb may be a subtest of
// the one that started the server.
func (s *Server) Client(tb testing.TB) rueidis.Client {
	tb.Helper()
	return newClient(tb, s.ClientOption())
}

func newClient(tb testing.TB, opt rueidis.ClientOption) rueidis.Client {
	tb.Helper()
	client, err := rueidis.NewClient(opt)
	if err != nil {
		tb.Fatalf("redistest: new client of %v: %v", opt.InitAddress, err)
	}
	tb.Cleanup(client.Close)
	return client
}

// Stop is [Process.Stop], logging to the test if the server had to be killed.
func (s *Server) Stop() {
	if err := s.Process.Stop(); err != nil {
		s.tb.Log(err)
	}
}

// Restart is [Process.Restart], failing the test if the server does not
// come back.
func (s *Server) Restart() {
	s.tb.Helper()
	s.fatalIf(s.Process.Restart())
}

// Save is [Process.Save], failing the test on error.
func (s *Server) Save() {
	s.tb.Helper()
	s.fatalIf(s.Process.Save())
}

// RestartFromRDB is [Process.RestartFromRDB], failing the test on error.
func (s *Server) RestartFromRDB() {
	s.tb.Helper()
	s.fatalIf(s.Process.RestartFromRDB())
}

// RestartFromAOF is [Process.RestartFromAOF], failing the test on error.
func (s *Server) RestartFromAOF() {
	s.tb.Helper()
	s.fatalIf(s.Process.RestartFromAOF())
}

// Pause is [Process.Pause], marking the test failed on error.
func (s *Server) Pause() {
	s.tb.Helper()
	s.errorIf(s.Process.Pause())
}

// Resume is [Process.Resume], marking the test failed on error.
func (s *Server) Resume() {
	s.tb.Helper()
	s.errorIf(s.Process.Resume())
}

// fatalIf fails the test with err, if any.
func (s *Server) fatalIf(err error) {
	s.tb.Helper()
	if err != nil {
		s.tb.Fatal(err)
	}
}

// errorIf marks the test failed with err, if any.
func (s *Server) errorIf(err error) {
	s.tb.Helper()
	if err != nil {
		s.tb.Error(err)
	}
}
