package faultproxy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/go-dim/dim/internal/faultproxy"
	"github.com/go-dim/dim/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// silence is how long a read must stay unanswered to count as silence. It is
// a read deadline, not a sleep: it bounds a wait that passes only if nothing
// arrives.
const silence = 150 * time.Millisecond

// eventually is the deadline of every poll.
const eventually = 5 * time.Second

// echoServer echoes every connection and counts what it saw.
type echoServer struct {
	l        net.Listener
	wg       sync.WaitGroup
	received atomic.Int64 // bytes read
	eofs     atomic.Int64 // connections closed gracefully by the client
	resets   atomic.Int64 // connections that failed with an error

	mu    sync.Mutex
	conns []net.Conn
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &echoServer{l: l}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, conn)
			s.mu.Unlock()
			s.wg.Add(1)
			go s.serve(conn)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *echoServer) serve(conn net.Conn) {
	defer s.wg.Done()
	defer conn.Close()
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		s.received.Add(int64(n))
		if n > 0 {
			if _, werr := conn.Write(buf[:n]); werr != nil {
				s.resets.Add(1)
				return
			}
		}
		if errors.Is(err, io.EOF) {
			s.eofs.Add(1)
			return
		}
		if err != nil {
			s.resets.Add(1)
			return
		}
	}
}

func (s *echoServer) addr() string { return s.l.Addr().String() }

func newProxy(t *testing.T, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(target)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, eventually)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn.(*net.TCPConn)
}

// roundTrip sends msg and requires it echoed.
func roundTrip(t *testing.T, conn net.Conn, msg string) {
	t.Helper()
	require.NoError(t, conn.SetDeadline(time.Now().Add(eventually)))
	_, err := io.WriteString(conn, msg)
	require.NoError(t, err)
	got := make([]byte, len(msg))
	_, err = io.ReadFull(conn, got)
	require.NoError(t, err)
	require.Equal(t, msg, string(got))
}

// requireSilent requires that nothing arrives on conn for a while, and that
// conn is still open.
func requireSilent(t *testing.T, conn net.Conn) {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(silence)))
	n, err := conn.Read(make([]byte, 1))
	require.Zero(t, n)
	var nerr net.Error
	require.ErrorAs(t, err, &nerr)
	require.True(t, nerr.Timeout(), "want a timeout, got %v", err)
}

// requireReset requires that conn was reset.
func requireReset(t *testing.T, conn net.Conn) {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(eventually)))
	_, err := io.ReadAll(conn)
	require.ErrorIs(t, err, syscall.ECONNRESET)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, eventually, time.Millisecond, what)
}

func TestDirectionString(t *testing.T) {
	for dir, want := range map[faultproxy.Direction]string{
		faultproxy.Upstream:   "upstream",
		faultproxy.Downstream: "downstream",
		faultproxy.Both:       "both",
		0:                     "none",
		4:                     "Direction(4)",
	} {
		require.Equal(t, want, dir.String())
	}
}

func TestForwardsEveryByteBothWays(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.addr())
	require.Equal(t, echo.addr(), p.Target())

	payload := make([]byte, 1<<20)
	_, err := rand.Read(payload)
	require.NoError(t, err)

	var wg sync.WaitGroup
	results := make([][]byte, 4)
	errs := make([]error, 4)
	for i := range results {
		conn := dial(t, p.Addr())
		require.NoError(t, conn.SetDeadline(time.Now().Add(eventually)))
		wg.Go(func() {
			var got []byte
			readDone := make(chan struct{})
			go func() {
				defer close(readDone)
				got, errs[i] = io.ReadAll(conn)
			}()
			if _, err := conn.Write(payload); err != nil {
				errs[i] = err
			}
			_ = conn.CloseWrite()
			<-readDone
			results[i] = got
		})
	}
	wg.Wait()
	for i := range results {
		require.NoError(t, errs[i])
		require.True(t, bytes.Equal(payload, results[i]), "connection %d: payload corrupted", i)
	}
	// Each close was passed on gracefully, and the proxy let the links go.
	waitFor(t, "links released", func() bool { return p.Conns() == 0 })
	require.EqualValues(t, 4, echo.eofs.Load())
	require.Zero(t, echo.resets.Load())
}

func TestCutSilencesWithoutClosing(t *testing.T) {
	tests := []struct {
		name       string
		dir        faultproxy.Direction
		serverGets bool // whether bytes sent during the cut reach the server
	}{
		{"an upstream cut drops what the client sends", faultproxy.Upstream, false},
		{"a downstream cut drops what the server answers", faultproxy.Downstream, true},
		{"a cut both ways drops everything", faultproxy.Both, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			echo := startEcho(t)
			p := newProxy(t, echo.addr())
			conn := dial(t, p.Addr())
			roundTrip(t, conn, "before")

			p.Cut(tt.dir)
			_, err := io.WriteString(conn, "during")
			require.NoError(t, err, "writes still succeed")
			waitFor(t, "the cut drops bytes", func() bool { return p.Broken() == 1 })
			requireSilent(t, conn)
			if tt.serverGets {
				require.EqualValues(t, len("beforeduring"), echo.received.Load())
			} else {
				require.EqualValues(t, len("before"), echo.received.Load())
			}
			require.Equal(t, 1, p.Conns(), "the connection stays open")
			require.Zero(t, echo.eofs.Load()+echo.resets.Load())

			// Healing resets the broken connection; new ones flow.
			p.Heal()
			requireReset(t, conn)
			require.Zero(t, p.Broken())
			roundTrip(t, dial(t, p.Addr()), "after")
		})
	}
}

func TestCutsAddUp(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.addr())
	conn := dial(t, p.Addr())

	p.Cut(faultproxy.Upstream)
	p.Cut(faultproxy.Downstream)
	// Upstream is still cut: nothing reaches the server.
	_, err := io.WriteString(conn, "x")
	require.NoError(t, err)
	waitFor(t, "the cut drops bytes", func() bool { return p.Broken() == 1 })
	require.Zero(t, echo.received.Load())
}

func TestCutAppliesToNewConnections(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.addr())
	p.Cut(faultproxy.Both)

	// The dial succeeds: the proxy cannot hide the handshake. Then silence.
	conn := dial(t, p.Addr())
	_, err := io.WriteString(conn, "x")
	require.NoError(t, err)
	waitFor(t, "the cut drops bytes", func() bool { return p.Broken() == 1 })
	requireSilent(t, conn)
	require.Zero(t, echo.received.Load())

	p.Heal()
	requireReset(t, conn)
	roundTrip(t, dial(t, p.Addr()), "after")
}

func TestHealKeepsIntactConnections(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.addr())
	conn := dial(t, p.Addr())
	roundTrip(t, conn, "before")

	// Nothing was sent during the cut, so the stream is intact.
	p.Cut(faultproxy.Both)
	requireSilent(t, conn)
	require.Zero(t, p.Broken())
	p.Heal()

	roundTrip(t, conn, "after")
	require.Zero(t, echo.resets.Load())
}

func TestCloseDuringCutIsNotPassedOn(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.addr())
	conn := dial(t, p.Addr())
	roundTrip(t, conn, "before")

	p.Cut(faultproxy.Upstream)
	require.NoError(t, conn.Close())
	waitFor(t, "the cut drops the close", func() bool { return p.Broken() == 1 })
	require.Zero(t, echo.eofs.Load(), "the server saw the close")
	require.Equal(t, 1, p.Conns(), "the server's side stays open")

	// Healing resets the server's side.
	p.Heal()
	waitFor(t, "server side reset", func() bool { return echo.resets.Load() == 1 })
	require.Zero(t, echo.eofs.Load())
	require.Zero(t, p.Conns())
}

func TestRefuse(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.addr())
	open := dial(t, p.Addr())
	roundTrip(t, open, "before")

	require.NoError(t, p.Refuse(true))
	require.NoError(t, p.Refuse(true), "refusing twice is fine")
	_, err := net.DialTimeout("tcp", p.Addr(), eventually)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	roundTrip(t, open, "open connections still work")

	require.NoError(t, p.Refuse(false))
	require.NoError(t, p.Refuse(false), "accepting twice is fine")
	roundTrip(t, dial(t, p.Addr()), "after")
}

func TestReset(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.addr())
	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	roundTrip(t, a, "a")
	roundTrip(t, b, "b")
	require.Equal(t, 2, p.Conns())

	p.Reset()
	requireReset(t, a)
	requireReset(t, b)
	require.Zero(t, p.Conns())
	waitFor(t, "server sides reset", func() bool { return echo.resets.Load() == 2 })

	roundTrip(t, dial(t, p.Addr()), "after")
}

func TestSetTargetMovesNewConnectionsAndResetsOldOnes(t *testing.T) {
	first, second := startEcho(t), startEcho(t)
	p := newProxy(t, first.addr())
	old := dial(t, p.Addr())
	roundTrip(t, old, "old")
	p.Cut(faultproxy.Downstream)

	p.SetTarget(second.addr())
	require.Equal(t, second.addr(), p.Target())
	requireReset(t, old)
	require.Zero(t, p.Conns())

	// The cut stays on across the move.
	cut := dial(t, p.Addr())
	_, err := io.WriteString(cut, "cut")
	require.NoError(t, err)
	requireSilent(t, cut)
	p.Heal()

	roundTrip(t, dial(t, p.Addr()), "new")
	waitFor(t, "the new connection reached the new target", func() bool { return second.received.Load() >= int64(len("cutnew")) })
	require.Equal(t, int64(len("old")), first.received.Load())
}

func TestUnreachableTargetResetsTheClient(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	target := l.Addr().String()
	require.NoError(t, l.Close())

	// The reset may come before the dial completes, or after.
	p := newProxy(t, target)
	conn, err := net.DialTimeout("tcp", p.Addr(), eventually)
	if err == nil {
		defer conn.Close()
		requireReset(t, conn)
		return
	}
	require.ErrorIs(t, err, syscall.ECONNRESET)
}

func TestLatency(t *testing.T) {
	const d = 100 * time.Millisecond
	tests := []struct {
		name string
		dir  faultproxy.Direction
		min  time.Duration
	}{
		{"upstream latency delays the request", faultproxy.Upstream, d},
		{"downstream latency delays the answer", faultproxy.Downstream, d},
		{"latency both ways delays the round trip twice", faultproxy.Both, 2 * d},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			echo := startEcho(t)
			p := newProxy(t, echo.addr())
			conn := dial(t, p.Addr())
			roundTrip(t, conn, "warm up")

			p.SetLatency(tt.dir, d)
			start := time.Now()
			roundTrip(t, conn, "delayed")
			require.GreaterOrEqual(t, time.Since(start), tt.min)

			p.SetLatency(faultproxy.Both, 0)
			roundTrip(t, conn, "no longer delayed")
		})
	}
}

func TestLatencyKeepsOrder(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.addr())
	conn := dial(t, p.Addr())
	p.SetLatency(faultproxy.Upstream, 50*time.Millisecond)

	// Bytes sent under a long latency, then a short one, still arrive in order.
	_, err := io.WriteString(conn, "first ")
	require.NoError(t, err)
	p.SetLatency(faultproxy.Upstream, 0)
	roundTripPrefix := "first second"
	_, err = io.WriteString(conn, "second")
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(eventually)))
	got := make([]byte, len(roundTripPrefix))
	_, err = io.ReadFull(conn, got)
	require.NoError(t, err)
	require.Equal(t, roundTripPrefix, string(got))
}

func TestCloseStopsEverything(t *testing.T) {
	echo := startEcho(t)
	p, err := faultproxy.New(echo.addr())
	require.NoError(t, err)
	conn := dial(t, p.Addr())
	roundTrip(t, conn, "before")
	p.Cut(faultproxy.Upstream)
	p.SetLatency(faultproxy.Downstream, time.Hour)

	require.NoError(t, p.Close())
	requireReset(t, conn)
	_, err = net.DialTimeout("tcp", p.Addr(), eventually)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	require.NoError(t, p.Close(), "closing twice is fine")
	require.ErrorIs(t, p.Refuse(false), faultproxy.ErrClosed)
}

// TestFaultsUnderLoad switches every fault while clients keep talking, for
// the race detector and to show that no fault deadlocks the proxy.
func TestFaultsUnderLoad(t *testing.T) {
	echo := startEcho(t)
	p := newProxy(t, echo.addr())

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var trips atomic.Int64
	for range 4 {
		wg.Go(func() {
			buf := make([]byte, 64)
			for {
				select {
				case <-stop:
					return
				default:
				}
				conn, err := net.DialTimeout("tcp", p.Addr(), time.Second)
				if err != nil {
					continue // refused
				}
				for i := 0; i < 20; i++ {
					_ = conn.SetDeadline(time.Now().Add(50 * time.Millisecond))
					if _, err := conn.Write(buf); err != nil {
						break
					}
					if _, err := io.ReadFull(conn, buf); err != nil {
						break
					}
					trips.Add(1)
				}
				conn.Close()
			}
		})
	}

	faults := []func(){
		func() { p.Cut(faultproxy.Upstream) },
		func() { p.Cut(faultproxy.Downstream) },
		p.Heal,
		p.Reset,
		func() { require.NoError(t, p.Refuse(true)) },
		func() { require.NoError(t, p.Refuse(false)) },
		func() { p.SetLatency(faultproxy.Both, time.Millisecond) },
		func() { p.SetLatency(faultproxy.Both, 0) },
		func() { _ = p.Conns() + p.Broken() },
	}
	for i := range 300 {
		faults[i%len(faults)]()
		if i%len(faults) == 0 {
			// Let some traffic through between rounds of faults.
			before := trips.Load()
			p.Heal()
			require.NoError(t, p.Refuse(false))
			waitFor(t, "traffic flows", func() bool { return trips.Load() > before })
		}
	}
	close(stop)
	wg.Wait()

	p.Heal()
	require.NoError(t, p.Refuse(false))
	p.SetLatency(faultproxy.Both, 0)
	roundTrip(t, dial(t, p.Addr()), "still works")
}

// TestRedisClientThroughProxy shows what a Redis client sees: a cut makes
// calls time out rather than fail fast, and after healing the client
// recovers by itself.
func TestRedisClientThroughProxy(t *testing.T) {
	srv := redistest.Start(t)
	p := newProxy(t, srv.Addr())
	opt := srv.ClientOption()
	opt.InitAddress = []string{p.Addr()}
	opt.ConnWriteTimeout = 500 * time.Millisecond
	client := newRueidis(t, opt)

	ping := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		return client.Do(ctx, client.B().Ping().Build()).Error()
	}
	require.NoError(t, ping(eventually))

	p.Cut(faultproxy.Both)
	require.ErrorIs(t, ping(silence), context.DeadlineExceeded)

	p.Heal()
	waitFor(t, "the client recovers", func() bool { return ping(time.Second) == nil })
}

func newRueidis(t *testing.T, opt rueidis.ClientOption) rueidis.Client {
	t.Helper()
	client, err := rueidis.NewClient(opt)
	require.NoError(t, err)
	t.Cleanup(client.Close)
	return client
}
