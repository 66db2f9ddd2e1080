package redistest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// Timings of the Sentinel started by [StartSentinel], short so that a test
// sees a failover within seconds.
const (
	// SentinelDownAfter is the Sentinel's down-after-milliseconds: a master
	// that does not answer for this long is taken for failed.
	SentinelDownAfter = 500 * time.Millisecond
	// SentinelFailoverTimeout is the Sentinel's failover-timeout.
	SentinelFailoverTimeout = 2 * time.Second
	// SentinelInfoPeriod is how often the Sentinel reads INFO of the servers
	// (SENTINEL DEBUG info-period; Redis's default is 10 s): how soon it
	// learns of a replica after a failover.
	SentinelInfoPeriod = 200 * time.Millisecond
	// DefaultFailoverTimeout bounds how long [Sentinel.Failover] and
	// [Sentinel.WaitFailover] wait for a new master.
	DefaultFailoverTimeout = 15 * time.Second
)

// SentinelMasterSet is the name under which the Sentinel monitors the master.
const SentinelMasterSet = "redistest"

// Sentinel is a replicated Redis watched by Redis Sentinel: a master, one
// replica of it and one Sentinel process with a quorum of 1, each a [Server]
// owned by one test. Clients find the master through the Sentinel
// ([Sentinel.ClientOption]); after a failover the replica is the master.
type Sentinel struct {
	tb       testing.TB
	data     []*Server // data[0] started as the master, data[1] as its replica
	sentinel *Server
}

// StartSentinel starts a master, a replica of it and a Sentinel that
// monitors them with [SentinelDownAfter] and [SentinelFailoverTimeout], and
// returns once the replica is in sync and the Sentinel knows both. The
// options apply to the two data servers, except that [WithName] is ignored
// (they are "master" and "replica", the Sentinel "sentinel") and [WithTLS]
// is not supported. With [WithPassword] both data servers authenticate to
// each other and the Sentinel authenticates to them; the Sentinel itself
// needs no password. Like [Start], it skips under -short.
func StartSentinel(tb testing.TB, opts ...Option) *Sentinel {
	tb.Helper()
	if testing.Short() {
		tb.Skip(skipMessage)
	}
	base := newConfig("", opts)
	if base.tls {
		tb.Fatal("redistest: WithTLS is not supported for a Sentinel")
	}
	data := func(name string, extra ...string) config {
		cfg := base
		cfg.name = name
		// A replica syncs at once instead of after the default delay of 5s.
		cfg.args = append([]string{"--repl-diskless-sync-delay", "0"}, base.args...)
		if cfg.password != "" {
			// Either server may be the replica after a failover.
			cfg.args = append(cfg.args, "--masterauth", cfg.password)
		}
		cfg.args = append(cfg.args, extra...)
		return cfg
	}
	s := &Sentinel{tb: tb}
	master := start(tb, data("master"))
	replica := start(tb, data("replica", "--replicaof", "127.0.0.1", strconv.Itoa(master.Port())))
	s.data = []*Server{master, replica}

	// known-replica lets the Sentinel see the replica at once instead of at
	// its first INFO of the master, ten seconds later.
	conf := []string{
		fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 1", SentinelMasterSet, master.Port()),
		fmt.Sprintf("sentinel down-after-milliseconds %s %d", SentinelMasterSet, SentinelDownAfter.Milliseconds()),
		fmt.Sprintf("sentinel failover-timeout %s %d", SentinelMasterSet, SentinelFailoverTimeout.Milliseconds()),
		fmt.Sprintf("sentinel known-replica %s 127.0.0.1 %d", SentinelMasterSet, replica.Port()),
	}
	if base.password != "" {
		conf = append(conf, fmt.Sprintf("sentinel auth-pass %s %s", SentinelMasterSet, base.password))
	}
	path := filepath.Join(tb.TempDir(), "sentinel.conf")
	if err := os.WriteFile(path, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		tb.Fatalf("redistest: write the Sentinel configuration: %v", err)
	}
	s.sentinel = start(tb, config{name: "sentinel", binary: base.binary, startTimeout: base.startTimeout, sentinelConf: path})

	if _, err := s.sentinel.do(time.Second, "SENTINEL", "DEBUG", "info-period", strconv.Itoa(int(SentinelInfoPeriod.Milliseconds()))); err != nil {
		tb.Fatalf("redistest: SENTINEL DEBUG info-period: %v", err)
	}
	s.waitUntil(DefaultFailoverTimeout, "the replica in sync and known to the Sentinel", func() error {
		if err := s.inSync(replica); err != nil {
			return err
		}
		st, err := s.state()
		if err != nil {
			return err
		}
		if st.address != master.Addr() || st.status != "ok" || st.replicas != 1 {
			return fmt.Errorf("sentinel reports %+v", st)
		}
		return nil
	})
	return s
}

// Addr returns the Sentinel's address, for [rueidis.ClientOption.InitAddress].
func (s *Sentinel) Addr() string { return s.sentinel.Addr() }

// MasterSet returns the name of the monitored master, [SentinelMasterSet].
func (s *Sentinel) MasterSet() string { return SentinelMasterSet }

// Server returns data server i: 0 started as the master, 1 as its replica.
// Kill, Pause or Restart them to inject faults; a restarted server comes
// back with the role it had when [Sentinel.Failover] last changed it (at
// first, the one it started with), empty unless it restarts from its own
// files ([WithPersistence]).
func (s *Sentinel) Server(i int) *Server { return s.data[i] }

// SentinelServer returns the Sentinel process itself.
func (s *Sentinel) SentinelServer() *Server { return s.sentinel }

// Master returns the data server the Sentinel currently reports as master,
// failing the test if it cannot tell.
func (s *Sentinel) Master() *Server {
	s.tb.Helper()
	st, err := s.state()
	if err != nil {
		s.tb.Fatalf("redistest: ask the Sentinel for the master: %v", err)
	}
	for _, d := range s.data {
		if d.Addr() == st.address {
			return d
		}
	}
	s.tb.Fatalf("redistest: the Sentinel reports an unknown master %s", st.address)
	return nil
}

// Failover asks the Sentinel for a failover (SENTINEL FAILOVER) and waits as
// [Sentinel.WaitFailover] does. The old master keeps running; the Sentinel
// turns it into a replica of the new one only some ten seconds later, so
// Failover does that at once, as an operator would, and returns once it is
// in sync again: the next failover can then follow right away. It returns
// the new master.
func (s *Sentinel) Failover() *Server {
	s.tb.Helper()
	next, err := s.TryFailover()
	if err != nil {
		s.tb.Fatalf("redistest: %v", err)
	}
	return next
}

// TryFailover is [Sentinel.Failover] that returns an error instead of
// failing the test when the Sentinel does not fail over in time; the
// servers are then left (or put back) as master and replica of the old
// master.
func (s *Sentinel) TryFailover() (*Server, error) {
	old := s.Master()
	// Right after a failover the Sentinel knows the old master as a replica
	// only once it has read its INFO (every SentinelInfoPeriod), and until
	// then answers NOGOODSLAVE.
	err := s.poll(DefaultFailoverTimeout, "the Sentinel to start a failover", func() error {
		_, err := s.sentinel.do(time.Second, "SENTINEL", "FAILOVER", SentinelMasterSet)
		return err
	})
	var next *Server
	if err == nil {
		next, err = s.awaitFailover(old)
	}
	if err != nil {
		// Put a detached replica back on the master it left.
		for _, d := range s.data {
			if d != old {
				_, _ = d.do(time.Second, "REPLICAOF", "127.0.0.1", strconv.Itoa(old.Port()))
			}
		}
		return nil, err
	}
	// Restarts keep the new roles.
	next.setRole("--replicaof", "no", "one")
	old.setRole("--replicaof", "127.0.0.1", strconv.Itoa(next.Port()))
	if _, err := old.do(time.Second, "REPLICAOF", "127.0.0.1", strconv.Itoa(next.Port())); err != nil {
		return nil, fmt.Errorf("make the old master %s a replica: %w", old.Name(), err)
	}
	if err := s.poll(DefaultFailoverTimeout, "the old master in sync with the new one", func() error { return s.inSync(old) }); err != nil {
		return nil, err
	}
	return next, nil
}

// Replica returns the data server that is not [Sentinel.Master].
func (s *Sentinel) Replica() *Server {
	s.tb.Helper()
	if s.Master() == s.data[0] {
		return s.data[1]
	}
	return s.data[0]
}

// DetachReplica cuts the replica off the master's stream of writes without
// telling the Sentinel: the replica is pointed at a port where nothing
// listens (REPLICAOF), so it keeps its data but receives nothing more, like
// a replica whose link has stalled. A [Sentinel.Failover] that follows
// promotes it all the same and so loses every write the master accepted
// since; the Failover reattaches both servers.
func (s *Sentinel) DetachReplica() {
	s.tb.Helper()
	r := s.Replica()
	port, err := freePort()
	if err != nil {
		s.tb.Fatalf("redistest: %v", err)
	}
	if _, err := r.do(time.Second, "REPLICAOF", "127.0.0.1", strconv.Itoa(port)); err != nil {
		s.tb.Fatalf("redistest: detach the replica %s: %v", r.Name(), err)
	}
}

// Set changes a setting of the monitored master in the Sentinel
// (SENTINEL SET), for example "down-after-milliseconds" "30000" to keep the
// Sentinel from failing over on its own while a test kills or freezes the
// master.
func (s *Sentinel) Set(option, value string) {
	s.tb.Helper()
	if _, err := s.sentinel.do(time.Second, "SENTINEL", "SET", SentinelMasterSet, option, value); err != nil {
		s.tb.Fatalf("redistest: SENTINEL SET %s %s: %v", option, value, err)
	}
}

// WaitFailover waits until the Sentinel reports a master other than old and
// that server answers as a master, and returns it. Kill the master and call
// WaitFailover to see an unplanned failover. It fails the test after
// [DefaultFailoverTimeout].
func (s *Sentinel) WaitFailover(old *Server) *Server {
	s.tb.Helper()
	next, err := s.awaitFailover(old)
	if err != nil {
		s.tb.Fatalf("redistest: %v", err)
	}
	return next
}

// awaitFailover is WaitFailover returning an error.
func (s *Sentinel) awaitFailover(old *Server) (*Server, error) {
	var next *Server
	err := s.poll(DefaultFailoverTimeout, "a failover away from "+old.Name(), func() error {
		st, err := s.state()
		if err != nil {
			return err
		}
		next = nil
		for _, d := range s.data {
			if d != old && d.Addr() == st.address {
				next = d
			}
		}
		if next == nil {
			return fmt.Errorf("sentinel reports %+v", st)
		}
		role, err := next.info("replication", "role")
		if err != nil {
			return err
		}
		if role != "master" {
			return fmt.Errorf("%s is still a %s", next.Name(), role)
		}
		return nil
	})
	return next, err
}

// ClientOption returns rueidis options that find the master through the
// Sentinel, with the timeouts of [Server.ClientOption] and the password of
// the data servers, if any.
func (s *Sentinel) ClientOption() rueidis.ClientOption {
	opt := clientOption([]string{s.Addr()}, s.data[0].cfg.password, nil)
	opt.Sentinel = rueidis.SentinelOption{MasterSet: SentinelMasterSet}
	opt.Sentinel.Dialer.Timeout = DefaultDialTimeout
	return opt
}

// Client returns a rueidis client made from [Sentinel.ClientOption], closed
// when tb's test ends.
func (s *Sentinel) Client(tb testing.TB) rueidis.Client {
	tb.Helper()
	return newClient(tb, s.ClientOption())
}

// sentinelState is what the Sentinel says about its master.
type sentinelState struct {
	status   string
	address  string
	replicas int
}

// state reads the master's entry of INFO sentinel, a line like
// "master0:name=redistest,status=ok,address=127.0.0.1:6379,slaves=1,sentinels=1".
func (s *Sentinel) state() (sentinelState, error) {
	line, err := s.sentinel.info("sentinel", "master0")
	if err != nil {
		return sentinelState{}, err
	}
	var st sentinelState
	for field := range strings.SplitSeq(line, ",") {
		k, v, _ := strings.Cut(field, "=")
		switch k {
		case "status":
			st.status = v
		case "address":
			st.address = v
		case "slaves":
			st.replicas, _ = strconv.Atoi(v)
		}
	}
	if st.address == "" {
		return st, fmt.Errorf("no master in INFO sentinel: %q", line)
	}
	return st, nil
}

// inSync reports whether d is a replica whose link to its master is up.
func (s *Sentinel) inSync(d *Server) error {
	role, err := d.info("replication", "role")
	if err != nil {
		return err
	}
	link, err := d.info("replication", "master_link_status")
	if err != nil {
		return err
	}
	if role != "slave" || link != "up" {
		return fmt.Errorf("%s: role:%s master_link_status:%s", d.Name(), role, link)
	}
	return nil
}

// waitUntil polls check until it succeeds, failing the test with its last
// error once within has passed.
func (s *Sentinel) waitUntil(within time.Duration, what string, check func() error) {
	s.tb.Helper()
	if err := s.poll(within, what, check); err != nil {
		s.tb.Fatalf("redistest: %v", err)
	}
}

// poll is waitUntil returning the error.
func (s *Sentinel) poll(within time.Duration, what string, check func() error) error {
	deadline := time.Now().Add(within)
	ticker := time.NewTicker(20 * time.Millisecond)
	defer ticker.Stop()
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v: %s: %w", within, what, err)
		}
		<-ticker.C
	}
}

// setRole sets the replicaof arguments of every later start.
func (p *Process) setRole(args ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.role = args
}

// info returns one field of an INFO section of the server.
func (p *Process) info(section, field string) (string, error) {
	out, err := p.do(time.Second, "INFO", section)
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(out) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == field {
			return v, nil
		}
	}
	return "", fmt.Errorf("%s: no %s in INFO %s", p.cfg.name, field, section)
}
