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
// [StartCluster] forms a Redis Cluster of several such servers.
//
// Integration tests are skipped under `go test -short`; without it, a missing
// redis-server binary fails the test with a hint on how to install it, so a
// misconfigured machine cannot pass silently.
//
// Methods that can fail report through the [testing.TB] given to [Start] or
// [StartCluster], so like [testing.TB.Fatal] they must be called from the
// goroutine running that test.
package redistest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// Defaults of the [Option]s and of [Server.ClientOption].
const (
	// DefaultStartTimeout bounds how long a server may take to answer PING.
	DefaultStartTimeout = 10 * time.Second
	// DefaultStopTimeout bounds how long [Server.Stop] waits for a graceful
	// shutdown before it kills the server.
	DefaultStopTimeout = 10 * time.Second
	// DefaultDialTimeout is the client dial timeout set by
	// [Server.ClientOption]: short, because the server is local.
	DefaultDialTimeout = 2 * time.Second
	// DefaultConnWriteTimeout is the client connection timeout set by
	// [Server.ClientOption], so that a test client notices a silent server
	// in seconds rather than rueidis's default of ten.
	DefaultConnWriteTimeout = 2 * time.Second
)

// skipMessage is what [Start] skips with under -short.
const skipMessage = "integration test: needs redis-server; run without -short"

// startAttempts is how many free ports Start tries before it gives up: a port
// found free can be taken by another process before redis-server binds it.
const startAttempts = 5

// errPortInUse reports that redis-server could not bind its port.
var errPortInUse = errors.New("redistest: port already in use")

// Option configures a server started by [Start] or [StartCluster].
type Option func(*config)

type config struct {
	name         string
	args         []string
	password     string
	tls          bool
	startTimeout time.Duration
	cluster      bool
	persist      bool
	// sentinelConf is the configuration file of a Sentinel process, set by
	// StartSentinel only: the server then runs in Sentinel mode.
	sentinelConf string
}

// WithName names the server in log and failure messages, which helps when a
// test runs several. Default: "redis" (for cluster nodes "node0", "node1", …).
func WithName(name string) Option {
	return func(c *config) { c.name = name }
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
// [Server.ClientOption] authenticates with it. Default: no password.
func WithPassword(password string) Option {
	return func(c *config) { c.password = password }
}

// WithTLS makes the server accept only TLS connections on its port, with a
// certificate for 127.0.0.1 issued by a throwaway CA generated in the test's
// temporary directory. [Server.TLSConfig] returns a client configuration that
// trusts that CA, and [Server.ClientOption] uses it. Clients need no
// certificate. Not supported by [StartCluster]. Default: plain TCP.
func WithTLS() Option {
	return func(c *config) { c.tls = true }
}

// WithStartTimeout bounds how long the server may take to start answering
// PING, on [Start] and on every [Server.Restart]. Default:
// [DefaultStartTimeout].
func WithStartTimeout(d time.Duration) Option {
	return func(c *config) { c.startTimeout = d }
}

// WithPersistence makes the server persist, as a production server would:
// it writes an append-only file (`--appendonly yes --appendfsync everysec`,
// in Redis 7 a directory, appendonlydir, of an RDB base and incremental
// files) and keeps it and any snapshot taken with [Server.Save] across
// restarts. [Server.RestartFromRDB] and [Server.RestartFromAOF] then bring
// the server back from its own files after a crash; [Server.Restart] still
// brings it back empty (it deletes them first). It takes no automatic
// snapshots (`--save ""`). Default: nothing is persisted.
func WithPersistence() Option {
	return func(c *config) { c.persist = true }
}

// withCluster enables cluster mode; it is set by StartCluster only.
func withCluster() Option {
	return func(c *config) { c.cluster = true }
}

// Server is a redis-server process owned by one test. Its address stays the
// same across [Server.Kill] and [Server.Restart]. The methods are safe for
// concurrent use, but those that report failures must be called from the
// test's goroutine.
type Server struct {
	tb      testing.TB
	cfg     config
	bin     string
	dir     string
	logPath string
	tlsConf *tls.Config
	port    int
	busPort int // cluster bus port; 0 unless in cluster mode

	mu     sync.Mutex
	proc   *process // nil while not running
	paused bool
	// role is added to the command line of every later start: the role
	// (replicaof) the server has now, which a failover changes.
	role []string
	// once is added to the command line of the next start only.
	once []string
}

// process is one run of redis-server; done is closed once it has exited and
// been reaped.
type process struct {
	cmd       *exec.Cmd
	done      chan struct{}
	logOffset int64
}

// Start starts a redis-server on a free port of 127.0.0.1 and returns once it
// answers PING. The server is killed, and waited for, when tb's test ends.
//
// Under `go test -short` Start skips the test. If redis-server is not on the
// PATH, or it does not start, Start fails the test with the reason and the
// server's log.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	cfg := config{name: "redis", startTimeout: DefaultStartTimeout}
	for _, opt := range opts {
		opt(&cfg)
	}
	return start(tb, cfg)
}

func start(tb testing.TB, cfg config) *Server {
	tb.Helper()
	if testing.Short() {
		tb.Skip(skipMessage)
	}
	bin := lookPath(tb, "redis-server")
	s := &Server{tb: tb, cfg: cfg, bin: bin, dir: tb.TempDir()}
	s.logPath = filepath.Join(s.dir, "redis.log")
	if cfg.tls {
		if cfg.cluster {
			tb.Fatal("redistest: WithTLS is not supported for clusters")
		}
		conf, err := writeCertificates(s.dir)
		if err != nil {
			tb.Fatalf("redistest: %s: %v", cfg.name, err)
		}
		s.tlsConf = conf
	}
	// Registered before the first start, so a failed start is cleaned up too.
	tb.Cleanup(s.cleanup)

	var err error
	for range startAttempts {
		if s.port, err = freePort(); err != nil {
			break
		}
		if cfg.cluster {
			if s.busPort, err = freePort(); err != nil {
				break
			}
		}
		if err = s.start(); !errors.Is(err, errPortInUse) {
			break
		}
	}
	if err != nil {
		tb.Fatalf("redistest: %s: %v", cfg.name, err)
	}
	return s
}

// lookPath finds a binary on the PATH or fails tb with an install hint.
func lookPath(tb testing.TB, name string) string {
	tb.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		tb.Fatalf("redistest: %s not found on PATH: run scripts/test, or apt-get install redis-server", name)
	}
	return path
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// Addr returns the server's address, "127.0.0.1:port".
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// Port returns the server's TCP port.
func (s *Server) Port() int { return s.port }

// Name returns the name given by [WithName].
func (s *Server) Name() string { return s.cfg.name }

// Dir returns the server's working directory, a temporary directory of the
// test. Its log is the file redis.log there.
func (s *Server) Dir() string { return s.dir }

// TLSConfig returns a new client TLS configuration that trusts the server's
// certificate, or nil if the server was not started [WithTLS].
func (s *Server) TLSConfig() *tls.Config {
	if s.tlsConf == nil {
		return nil
	}
	return s.tlsConf.Clone()
}

// Running reports whether the server process is running (paused counts as
// running).
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil
}

// ClientOption returns rueidis options for this server: its address, its
// password and TLS configuration if any, and timeouts suited to a local
// server ([DefaultDialTimeout], [DefaultConnWriteTimeout]). Callers may
// change any field before creating a client.
func (s *Server) ClientOption() rueidis.ClientOption {
	return clientOption([]string{s.Addr()}, s.cfg.password, s.TLSConfig())
}

func clientOption(addrs []string, password string, tlsConf *tls.Config) rueidis.ClientOption {
	opt := rueidis.ClientOption{
		InitAddress:      addrs,
		Password:         password,
		TLSConfig:        tlsConf,
		ConnWriteTimeout: DefaultConnWriteTimeout,
	}
	opt.Dialer.Timeout = DefaultDialTimeout
	return opt
}

// Client returns a rueidis client of the server made from
// [Server.ClientOption], closed when tb's test ends. tb may be a subtest of
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

// Kill kills the server with SIGKILL, as a crash would, and waits until the
// process is gone: the port refuses connections when Kill returns, and all
// data is lost. Killing a server that is not running does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *Server) killLocked() {
	if s.proc == nil {
		return
	}
	// The error only says the process already exited, which is fine.
	_ = s.proc.cmd.Process.Kill()
	<-s.proc.done
	s.proc = nil
	s.paused = false
}

// Stop shuts the server down gracefully with SIGTERM and waits until it has
// exited, killing it if that takes longer than [DefaultStopTimeout]. Stopping
// a server that is not running does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	if s.paused {
		// SIGTERM would wait, pending, for a SIGCONT.
		_ = s.proc.cmd.Process.Signal(syscall.SIGCONT)
		s.paused = false
	}
	_ = s.proc.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(DefaultStopTimeout)
	defer timer.Stop()
	select {
	case <-s.proc.done:
		s.proc = nil
	case <-timer.C:
		s.tb.Logf("redistest: %s did not stop within %v; killing it", s.cfg.name, DefaultStopTimeout)
		s.killLocked()
	}
}

// Restart starts the server again on the same port and returns once it
// answers PING. A running server is killed first. The new server starts
// empty: nothing is persisted, and a server started [WithPersistence] has
// its files deleted first; a cluster node keeps its cluster configuration
// (node ID and slots), as a real node restarting would.
func (s *Server) Restart() {
	s.tb.Helper()
	s.mu.Lock()
	s.killLocked()
	s.mu.Unlock()
	if s.cfg.persist {
		for _, name := range []string{rdbFile, aofDir} {
			if err := os.RemoveAll(filepath.Join(s.dir, name)); err != nil {
				s.tb.Fatalf("redistest: restart %s empty: %v", s.cfg.name, err)
			}
		}
	}
	if err := s.start(); err != nil {
		s.tb.Fatalf("redistest: restart %s: %v", s.cfg.name, err)
	}
}

// Files a server started [WithPersistence] keeps in its directory.
const (
	rdbFile = "dump.rdb"
	aofDir  = "appendonlydir"
)

// PersistTimeout bounds [Server.Save] and the AOF rewrite that
// [Server.RestartFromRDB] waits for.
const PersistTimeout = 10 * time.Second

// Save takes a snapshot of the data now (SAVE) into the server's RDB file,
// which [Server.RestartFromRDB] loads.
func (s *Server) Save() {
	s.tb.Helper()
	if _, err := s.do(PersistTimeout, "SAVE"); err != nil {
		s.tb.Fatalf("redistest: SAVE on %s: %v", s.cfg.name, err)
	}
}

// RestartFromRDB kills the server with SIGKILL, as a crash would, and starts
// it again on the same port from its last snapshot ([Server.Save]): it comes
// back with the data of that moment, older than what it had when killed,
// and a missing snapshot brings it back empty. A server started
// [WithPersistence] then writes its append-only file again (CONFIG SET
// appendonly yes) from what it loaded, and RestartFromRDB returns once
// that rewrite is done, so that a later [Server.RestartFromAOF] finds a
// complete file.
func (s *Server) RestartFromRDB() {
	s.tb.Helper()
	s.mu.Lock()
	s.killLocked()
	s.once = []string{"--appendonly", "no"}
	s.mu.Unlock()
	if err := s.start(); err != nil {
		s.tb.Fatalf("redistest: restart %s from its RDB file: %v", s.cfg.name, err)
	}
	if !s.cfg.persist {
		return
	}
	if _, err := s.do(time.Second, "CONFIG", "SET", "appendonly", "yes"); err != nil {
		s.tb.Fatalf("redistest: %s: CONFIG SET appendonly yes: %v", s.cfg.name, err)
	}
	deadline := time.Now().Add(PersistTimeout)
	for {
		done, err := s.aofRewritten()
		if done {
			return
		}
		if time.Now().After(deadline) {
			s.tb.Fatalf("redistest: %s: append-only file not rewritten within %v: %v", s.cfg.name, PersistTimeout, err)
		}
		time.Sleep(5 * time.Millisecond) // polling the server's state
	}
}

// aofRewritten reports whether the append-only file is on and no rewrite is
// running or scheduled.
func (s *Server) aofRewritten() (bool, error) {
	out, err := s.do(time.Second, "INFO", "persistence")
	if err != nil {
		return false, err
	}
	want := map[string]string{"aof_enabled": "1", "aof_rewrite_in_progress": "0", "aof_rewrite_scheduled": "0", "aof_last_bgrewrite_status": "ok"}
	for line := range strings.Lines(out) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if w, ok := want[k]; ok {
			if v != w {
				return false, fmt.Errorf("%s:%s", k, v)
			}
			delete(want, k)
		}
	}
	if len(want) > 0 {
		return false, fmt.Errorf("INFO persistence lacks %v", want)
	}
	return true, nil
}

// RestartFromAOF kills the server with SIGKILL, as a crash would, and
// starts it again on the same port from its append-only file: with
// `appendfsync everysec` it comes back with what it had up to a second or
// so before the kill (what the kernel had been given survives a process
// crash). The server must have been started [WithPersistence].
func (s *Server) RestartFromAOF() {
	s.tb.Helper()
	if !s.cfg.persist {
		s.tb.Fatalf("redistest: RestartFromAOF of %s, which was not started WithPersistence", s.cfg.name)
	}
	s.mu.Lock()
	s.killLocked()
	s.mu.Unlock()
	if err := s.start(); err != nil {
		s.tb.Fatalf("redistest: restart %s from its append-only file: %v", s.cfg.name, err)
	}
}

// Pause freezes the server with SIGSTOP: connections stay open but nothing
// is answered, like a server hung in a long command or a stalled machine.
// [Server.Resume] lets it continue. Pausing a server that is not running
// or already paused does nothing.
func (s *Server) Pause() {
	s.signal(syscall.SIGSTOP, true)
}

// Resume continues a server frozen by [Server.Pause].
func (s *Server) Resume() {
	s.signal(syscall.SIGCONT, false)
}

func (s *Server) signal(sig syscall.Signal, paused bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil || s.paused == paused {
		return
	}
	if err := s.proc.cmd.Process.Signal(sig); err != nil {
		s.tb.Errorf("redistest: signal %s: %v", s.cfg.name, err)
		return
	}
	s.paused = paused
}

// args returns the command line of the server: the helper's settings first,
// so that the caller's arguments override them.
func (s *Server) args() []string {
	port := strconv.Itoa(s.port)
	aof := []string{"--appendonly", "no"}
	if s.cfg.persist {
		aof = []string{"--appendonly", "yes", "--appendfsync", "everysec", "--appenddirname", aofDir, "--dbfilename", rdbFile}
	}
	args := []string{
		"--bind", "127.0.0.1",
		"--save", "",
		"--dir", s.dir,
		// Lets tests freeze the server with DEBUG SLEEP.
		"--enable-debug-command", "local",
	}
	args = append(args, aof...)
	if s.tlsConf != nil {
		args = append(args,
			"--port", "0",
			"--tls-port", port,
			"--tls-cert-file", filepath.Join(s.dir, serverCertFile),
			"--tls-key-file", filepath.Join(s.dir, serverKeyFile),
			"--tls-ca-cert-file", filepath.Join(s.dir, caCertFile),
			"--tls-auth-clients", "no",
		)
	} else {
		args = append(args, "--port", port)
	}
	if s.cfg.password != "" {
		args = append(args, "--requirepass", s.cfg.password)
	}
	if s.cfg.cluster {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(s.dir, "nodes.conf"),
			"--cluster-node-timeout", strconv.Itoa(clusterNodeTimeout),
			"--cluster-port", strconv.Itoa(s.busPort),
		)
	}
	args = append(args, s.cfg.args...)
	s.mu.Lock()
	args = append(args, s.role...)
	args = append(args, s.once...)
	s.once = nil
	s.mu.Unlock()
	if s.cfg.sentinelConf != "" {
		// Sentinel mode wants its (writable) configuration file first.
		args = append([]string{s.cfg.sentinelConf, "--sentinel"}, args...)
	}
	return args
}

// start runs redis-server and waits until it answers PING. It returns
// errPortInUse if a port was taken.
func (s *Server) start() error {
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	info, err := logFile.Stat()
	if err != nil {
		logFile.Close()
		return fmt.Errorf("open log: %w", err)
	}
	cmd := exec.Command(s.bin, s.args()...)
	cmd.Dir = s.dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	err = cmd.Start()
	// The child has its own copy of the descriptor.
	logFile.Close()
	if err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	proc := &process{cmd: cmd, done: make(chan struct{}), logOffset: info.Size()}
	go func() {
		// The exit status is of no interest: a killed server is expected,
		// and one that exits early is diagnosed from its log.
		_ = cmd.Wait()
		close(proc.done)
	}()
	s.mu.Lock()
	s.proc = proc
	s.mu.Unlock()

	if err := s.waitReady(proc); err != nil {
		s.Kill()
		return err
	}
	return nil
}

// waitReady polls the server with PING until it answers, it exits, or the
// start timeout passes.
func (s *Server) waitReady(proc *process) error {
	deadline := time.Now().Add(s.cfg.startTimeout)
	ticker := time.NewTicker(10 * time.Millisecond)
	defer ticker.Stop()
	for {
		err := s.ping()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING on %s within %v: %w\n%s",
				s.Addr(), s.cfg.startTimeout, err, s.logSince(proc.logOffset))
		}
		select {
		case <-proc.done:
			log := s.logSince(proc.logOffset)
			if strings.Contains(log, "Address already in use") {
				return fmt.Errorf("%w: %d", errPortInUse, s.port)
			}
			return fmt.Errorf("redis-server exited at start (%v):\n%s", proc.cmd.ProcessState, log)
		case <-ticker.C:
		}
	}
}

// ping checks that the server answers a command. Any answer will do, an
// authentication error included, except that a server still loading is not
// ready.
func (s *Server) ping() error {
	reply, err := s.do(time.Second, "PING")
	var rerr replyError
	if errors.As(err, &rerr) && !strings.HasPrefix(string(rerr), "LOADING") {
		return nil
	}
	if err != nil {
		return err
	}
	if reply != "PONG" {
		return fmt.Errorf("PING answered %q", reply)
	}
	return nil
}

// do sends one command to the server on a new connection, authenticating
// first if the server has a password, and returns the reply.
func (s *Server) do(timeout time.Duration, args ...string) (string, error) {
	var cmds [][]string
	if s.cfg.password != "" {
		cmds = append(cmds, []string{"AUTH", s.cfg.password})
	}
	cmds = append(cmds, args)
	return do(s.Addr(), s.tlsConf, timeout, cmds...)
}

// logSince returns the server's log from offset on, shortened to its last
// lines.
func (s *Server) logSince(offset int64) string {
	data, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if offset > int64(len(data)) {
		offset = 0
	}
	return tail(data[offset:], 30)
}

// tail returns the last n lines of data, indented.
func tail(data []byte, n int) string {
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	var b strings.Builder
	for _, line := range lines {
		b.WriteString("\t| ")
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// cleanup kills the server when the test ends, first showing the end of its
// log if the test failed.
func (s *Server) cleanup() {
	if s.tb.Failed() {
		s.tb.Logf("redistest: %s at %s, end of log:\n%s", s.cfg.name, s.Addr(), s.logSince(0))
	}
	s.Kill()
}
