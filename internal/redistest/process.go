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
	"time"

	"github.com/redis/rueidis"
)

// ErrNotFound is wrapped by the error of [Launch] (and reported by [Start])
// when redis-server, or redis-cli for a cluster, cannot be found: it is not
// on the PATH, or not at the path given to [WithBinary].
var ErrNotFound = errors.New("not found")

// errPortInUse reports that redis-server could not bind its port.
var errPortInUse = errors.New("redistest: port already in use")

// startAttempts is how many free ports a start tries before it gives up: a
// port found free can be taken by another process before redis-server binds
// it.
const startAttempts = 5

// Process is a redis-server process on a free port of 127.0.0.1, started by
// [Launch] without a test: every method that can fail returns its error, so
// that a program (such as a benchmark) can use it. [Server] is the same
// process owned by a test. Its address stays the same across [Process.Kill]
// and [Process.Restart]. Its methods are safe for concurrent use.
//
// Each run of the server is waited for by one goroutine, which ends when the
// server exits: call [Process.Close] (or Kill or Stop) before the program, or
// a test checking for leaked goroutines, ends.
type Process struct {
	cfg     config
	bin     string
	dir     string
	ownDir  bool // dir was made by Launch, and Close removes it
	logPath string
	tlsConf *tls.Config
	port    int
	busPort int // cluster bus port; 0 unless in cluster mode

	mu     sync.Mutex
	proc   *run // nil while not running
	paused bool
	// role is added to the command line of every later start: the role
	// (replicaof) the server has now, which a failover changes.
	role []string
	// once is added to the command line of the next start only.
	once []string
}

// run is one run of redis-server; done is closed once it has exited and been
// reaped.
type run struct {
	cmd       *exec.Cmd
	done      chan struct{}
	logOffset int64
}

// Launch starts a redis-server on a free port of 127.0.0.1 and returns once
// it answers PING. The server keeps its files and its log (redis.log) in a
// new temporary directory; [Process.Close] kills the server and removes that
// directory. On Linux the kernel also kills the server if this program dies
// without closing it.
//
// If redis-server cannot be found, the error wraps [ErrNotFound]; if it does
// not start, the error ends with the end of its log.
func Launch(opts ...Option) (*Process, error) {
	return launch(newConfig("redis", opts), "")
}

// newConfig returns the defaults, named name, with opts applied.
func newConfig(name string, opts []Option) config {
	cfg := config{name: name, binary: DefaultBinary, startTimeout: DefaultStartTimeout}
	for _, opt := range opts {
		opt(&cfg)
	}
	return cfg
}

// launch starts a server in dir, or, if dir is "", in a new temporary
// directory that Close removes. On error nothing is left running.
func launch(cfg config, dir string) (*Process, error) {
	bin, err := lookPath(cfg.binary)
	if err != nil {
		return nil, err
	}
	if cfg.tls && cfg.cluster {
		return nil, errors.New("redistest: WithTLS is not supported for clusters")
	}
	p := &Process{cfg: cfg, bin: bin, dir: dir}
	if dir == "" {
		if p.dir, err = os.MkdirTemp("", "redistest-"); err != nil {
			return nil, fmt.Errorf("redistest: %s: %w", cfg.name, err)
		}
		p.ownDir = true
	}
	if err := p.startOnFreePort(); err != nil {
		if p.ownDir {
			_ = os.RemoveAll(p.dir)
		}
		return nil, fmt.Errorf("redistest: %s: %w", cfg.name, err)
	}
	return p, nil
}

func (p *Process) startOnFreePort() error {
	p.logPath = filepath.Join(p.dir, "redis.log")
	if p.cfg.tls {
		conf, err := writeCertificates(p.dir)
		if err != nil {
			return err
		}
		p.tlsConf = conf
	}
	var err error
	for range startAttempts {
		if p.port, err = freePort(); err != nil {
			return err
		}
		if p.cfg.cluster {
			if p.busPort, err = freePort(); err != nil {
				return err
			}
		}
		if err = p.start(); !errors.Is(err, errPortInUse) {
			return err
		}
	}
	return err
}

// lookPath finds a binary, by path or on the PATH.
func lookPath(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err == nil {
		return path, nil
	}
	if strings.ContainsRune(name, filepath.Separator) {
		return "", fmt.Errorf("redistest: %s %w: %w", name, ErrNotFound, err)
	}
	return "", fmt.Errorf("redistest: %s %w on PATH: run scripts/test, or apt-get install redis-server", name, ErrNotFound)
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
func (p *Process) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port))
}

// Port returns the server's TCP port.
func (p *Process) Port() int { return p.port }

// Name returns the name given by [WithName].
func (p *Process) Name() string { return p.cfg.name }

// Dir returns the server's working directory: the test's temporary
// directory for a [Server], one made by [Launch] otherwise. Its log is the
// file redis.log there.
func (p *Process) Dir() string { return p.dir }

// TLSConfig returns a new client TLS configuration that trusts the server's
// certificate, or nil if the server was not started [WithTLS].
func (p *Process) TLSConfig() *tls.Config {
	if p.tlsConf == nil {
		return nil
	}
	return p.tlsConf.Clone()
}

// Running reports whether the server process is running (paused counts as
// running).
func (p *Process) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.proc != nil
}

// ClientOption returns rueidis options for this server: its address, its
// password and TLS configuration if any, and timeouts suited to a local
// server ([DefaultDialTimeout], [DefaultConnWriteTimeout]). Callers may
// change any field before creating a client.
func (p *Process) ClientOption() rueidis.ClientOption {
	return clientOption([]string{p.Addr()}, p.cfg.password, p.TLSConfig())
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

// Close kills the server, as [Process.Kill] does, and removes the directory
// that [Launch] made for it; the directory of a [Server] is the test's to
// remove. A closed Process cannot be restarted.
func (p *Process) Close() error {
	p.Kill()
	if !p.ownDir {
		return nil
	}
	if err := os.RemoveAll(p.dir); err != nil {
		return fmt.Errorf("redistest: %s: remove its directory: %w", p.cfg.name, err)
	}
	return nil
}

// Kill kills the server with SIGKILL, as a crash would, and waits until the
// process is gone: the port refuses connections when Kill returns, and all
// data is lost. Killing a server that is not running does nothing.
func (p *Process) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.killLocked()
}

func (p *Process) killLocked() {
	if p.proc == nil {
		return
	}
	// The error only says the process already exited, which is fine.
	_ = p.proc.cmd.Process.Kill()
	<-p.proc.done
	p.proc = nil
	p.paused = false
}

// Stop shuts the server down gracefully with SIGTERM and waits until it has
// exited. If that takes longer than [DefaultStopTimeout] it kills the server
// and returns an error saying so. Stopping a server that is not running does
// nothing.
func (p *Process) Stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return nil
	}
	if p.paused {
		// SIGTERM would wait, pending, for a SIGCONT.
		_ = p.proc.cmd.Process.Signal(syscall.SIGCONT)
		p.paused = false
	}
	_ = p.proc.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(DefaultStopTimeout)
	defer timer.Stop()
	select {
	case <-p.proc.done:
		p.proc = nil
		return nil
	case <-timer.C:
		p.killLocked()
		return fmt.Errorf("redistest: %s did not stop within %v; killed it", p.cfg.name, DefaultStopTimeout)
	}
}

// Restart starts the server again on the same port and returns once it
// answers PING. A running server is killed first. The new server starts
// empty: nothing is persisted, and a server started [WithPersistence] has
// its files deleted first; a cluster node keeps its cluster configuration
// (node ID and slots), as a real node restarting would.
func (p *Process) Restart() error {
	p.Kill()
	if p.cfg.persist {
		for _, name := range []string{rdbFile, aofDir} {
			if err := os.RemoveAll(filepath.Join(p.dir, name)); err != nil {
				return fmt.Errorf("redistest: restart %s empty: %w", p.cfg.name, err)
			}
		}
	}
	if err := p.start(); err != nil {
		return fmt.Errorf("redistest: restart %s: %w", p.cfg.name, err)
	}
	return nil
}

// Files a server started [WithPersistence] keeps in its directory.
const (
	rdbFile = "dump.rdb"
	aofDir  = "appendonlydir"
)

// PersistTimeout bounds [Process.Save] and the AOF rewrite that
// [Process.RestartFromRDB] waits for.
const PersistTimeout = 10 * time.Second

// Save takes a snapshot of the data now (SAVE) into the server's RDB file,
// which [Process.RestartFromRDB] loads.
func (p *Process) Save() error {
	if _, err := p.do(PersistTimeout, "SAVE"); err != nil {
		return fmt.Errorf("redistest: SAVE on %s: %w", p.cfg.name, err)
	}
	return nil
}

// RestartFromRDB kills the server with SIGKILL, as a crash would, and starts
// it again on the same port from its last snapshot ([Process.Save]): it
// comes back with the data of that moment, older than what it had when
// killed, and a missing snapshot brings it back empty. A server started
// [WithPersistence] then writes its append-only file again (CONFIG SET
// appendonly yes) from what it loaded, and RestartFromRDB returns once
// that rewrite is done, so that a later [Process.RestartFromAOF] finds a
// complete file.
func (p *Process) RestartFromRDB() error {
	p.mu.Lock()
	p.killLocked()
	p.once = []string{"--appendonly", "no"}
	p.mu.Unlock()
	if err := p.start(); err != nil {
		return fmt.Errorf("redistest: restart %s from its RDB file: %w", p.cfg.name, err)
	}
	if !p.cfg.persist {
		return nil
	}
	if _, err := p.do(time.Second, "CONFIG", "SET", "appendonly", "yes"); err != nil {
		return fmt.Errorf("redistest: %s: CONFIG SET appendonly yes: %w", p.cfg.name, err)
	}
	deadline := time.Now().Add(PersistTimeout)
	for {
		done, err := p.aofRewritten()
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redistest: %s: append-only file not rewritten within %v: %w", p.cfg.name, PersistTimeout, err)
		}
		time.Sleep(5 * time.Millisecond) // polling the server's state
	}
}

// aofRewritten reports whether the append-only file is on and no rewrite is
// running or scheduled.
func (p *Process) aofRewritten() (bool, error) {
	out, err := p.do(time.Second, "INFO", "persistence")
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
func (p *Process) RestartFromAOF() error {
	if !p.cfg.persist {
		return fmt.Errorf("redistest: RestartFromAOF of %s, which was not started WithPersistence", p.cfg.name)
	}
	p.Kill()
	if err := p.start(); err != nil {
		return fmt.Errorf("redistest: restart %s from its append-only file: %w", p.cfg.name, err)
	}
	return nil
}

// Pause freezes the server with SIGSTOP: connections stay open but nothing
// is answered, like a server hung in a long command or a stalled machine.
// [Process.Resume] lets it continue. Pausing a server that is not running
// or already paused does nothing.
func (p *Process) Pause() error {
	return p.signal(syscall.SIGSTOP, true)
}

// Resume continues a server frozen by [Process.Pause].
func (p *Process) Resume() error {
	return p.signal(syscall.SIGCONT, false)
}

func (p *Process) signal(sig syscall.Signal, paused bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil || p.paused == paused {
		return nil
	}
	if err := p.proc.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("redistest: signal %s: %w", p.cfg.name, err)
	}
	p.paused = paused
	return nil
}

// args returns the command line of the server: the helper's settings first,
// so that the caller's arguments override them.
func (p *Process) args() []string {
	port := strconv.Itoa(p.port)
	aof := []string{"--appendonly", "no"}
	if p.cfg.persist {
		aof = []string{"--appendonly", "yes", "--appendfsync", "everysec", "--appenddirname", aofDir, "--dbfilename", rdbFile}
	}
	args := []string{
		"--bind", "127.0.0.1",
		"--save", "",
		"--dir", p.dir,
		// Lets tests freeze the server with DEBUG SLEEP.
		"--enable-debug-command", "local",
	}
	args = append(args, aof...)
	if p.tlsConf != nil {
		args = append(args,
			"--port", "0",
			"--tls-port", port,
			"--tls-cert-file", filepath.Join(p.dir, serverCertFile),
			"--tls-key-file", filepath.Join(p.dir, serverKeyFile),
			"--tls-ca-cert-file", filepath.Join(p.dir, caCertFile),
			"--tls-auth-clients", "no",
		)
	} else {
		args = append(args, "--port", port)
	}
	if p.cfg.password != "" {
		args = append(args, "--requirepass", p.cfg.password)
	}
	if p.cfg.cluster {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(p.dir, "nodes.conf"),
			"--cluster-node-timeout", strconv.Itoa(clusterNodeTimeout),
			"--cluster-port", strconv.Itoa(p.busPort),
		)
	}
	args = append(args, p.cfg.args...)
	p.mu.Lock()
	args = append(args, p.role...)
	args = append(args, p.once...)
	p.once = nil
	p.mu.Unlock()
	if p.cfg.sentinelConf != "" {
		// Sentinel mode wants its (writable) configuration file first.
		args = append([]string{p.cfg.sentinelConf, "--sentinel"}, args...)
	}
	return args
}

// start runs redis-server and waits until it answers PING. It returns
// errPortInUse if a port was taken.
func (p *Process) start() error {
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	info, err := logFile.Stat()
	if err != nil {
		logFile.Close()
		return fmt.Errorf("open log: %w", err)
	}
	cmd := exec.Command(p.bin, p.args()...)
	cmd.Dir = p.dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	err = cmd.Start()
	// The child has its own copy of the descriptor.
	logFile.Close()
	if err != nil {
		return fmt.Errorf("start %s: %w", p.bin, err)
	}
	proc := &run{cmd: cmd, done: make(chan struct{}), logOffset: info.Size()}
	go func() {
		// The exit status is of no interest: a killed server is expected,
		// and one that exits early is diagnosed from its log.
		_ = cmd.Wait()
		close(proc.done)
	}()
	p.mu.Lock()
	p.proc = proc
	p.mu.Unlock()

	if err := p.waitReady(proc); err != nil {
		p.Kill()
		return err
	}
	return nil
}

// waitReady polls the server with PING until it answers, it exits, or the
// start timeout passes.
func (p *Process) waitReady(proc *run) error {
	deadline := time.Now().Add(p.cfg.startTimeout)
	ticker := time.NewTicker(10 * time.Millisecond)
	defer ticker.Stop()
	for {
		err := p.ping()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING on %s within %v: %w\n%s",
				p.Addr(), p.cfg.startTimeout, err, p.logSince(proc.logOffset))
		}
		select {
		case <-proc.done:
			log := p.logSince(proc.logOffset)
			if strings.Contains(log, "Address already in use") {
				return fmt.Errorf("%w: %d", errPortInUse, p.port)
			}
			return fmt.Errorf("redis-server exited at start (%v):\n%s", proc.cmd.ProcessState, log)
		case <-ticker.C:
		}
	}
}

// ping checks that the server answers a command. Any answer will do, an
// authentication error included, except that a server still loading is not
// ready.
func (p *Process) ping() error {
	reply, err := p.do(time.Second, "PING")
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
func (p *Process) do(timeout time.Duration, args ...string) (string, error) {
	var cmds [][]string
	if p.cfg.password != "" {
		cmds = append(cmds, []string{"AUTH", p.cfg.password})
	}
	cmds = append(cmds, args)
	return do(p.Addr(), p.tlsConf, timeout, cmds...)
}

// logSince returns the server's log from offset on, shortened to its last
// lines.
func (p *Process) logSince(offset int64) string {
	data, err := os.ReadFile(p.logPath)
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
