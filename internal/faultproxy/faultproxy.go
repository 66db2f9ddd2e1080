// Package faultproxy is a TCP proxy for tests that injects network faults
// between a client and a server, typically Redis: partitions, refused and
// reset connections, and latency.
//
//	p, err := faultproxy.New(srv.Addr())
//	// point the client at p.Addr() instead of srv.Addr()
//	p.Cut(faultproxy.Both) // the client is partitioned from the server
//	p.Heal()               // ... and no longer
//
// Every fault can be switched at any time from any goroutine; it applies to
// the connections already open and to those opened later.
//
// # Partitions
//
// [Proxy.Cut] silences a direction without closing anything, as a network
// partition does: bytes sent that way after Cut returns are read and
// dropped, so the sender's writes still succeed while the receiver sees
// nothing; a close or reset by the sender is not passed on either. The
// other side keeps a connection open until it gives up by itself, exactly as
// a peer behind a partition would.
//
// A TCP stream cannot lose bytes in the middle and carry on, so
// [Proxy.Heal] resets (closes abruptly on both sides) every connection that
// lost bytes, or a close, during the cut: after healing, a client sees its
// old connection fail and reconnects, and new connections flow normally. A
// connection that sent nothing in a cut direction is intact and survives,
// like an idle connection across a short partition. Bytes dropped are never
// delivered late.
//
// New connections made during a cut are accepted (the proxy cannot hide
// the handshake) and connected to the target, and are cut too: a client
// sees its dial succeed, then silence.
package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// DialTimeout bounds how long the proxy waits to connect to the target for
// each accepted connection; a connection that cannot reach the target is
// reset.
const DialTimeout = 5 * time.Second

// chunkSize is the most bytes read at a time from either side.
const chunkSize = 32 << 10

// queueLen is how many chunks may wait for their latency in one direction
// before the proxy stops reading from the sender.
const queueLen = 64

// ErrClosed is returned by [Proxy.Refuse] after [Proxy.Close].
var ErrClosed = errors.New("faultproxy: proxy closed")

// Direction is a direction of traffic through the proxy, or a set of them.
type Direction uint8

// Directions. Both is the union of the other two.
const (
	// Upstream is the traffic from the client to the server (the target).
	Upstream Direction = 1 << iota
	// Downstream is the traffic from the server back to the client.
	Downstream
	// Both is Upstream and Downstream.
	Both = Upstream | Downstream
)

// String returns "upstream", "downstream", "both" or "none".
func (d Direction) String() string {
	switch d {
	case Upstream:
		return "upstream"
	case Downstream:
		return "downstream"
	case Both:
		return "both"
	case 0:
		return "none"
	}
	return fmt.Sprintf("Direction(%d)", uint8(d))
}

// Proxy forwards every TCP connection accepted on its address to its target,
// subject to the faults switched on. Its methods are safe for concurrent
// use.
type Proxy struct {
	addr   string
	ctx    context.Context // cancelled by Close; bounds dials
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the proxy

	mu        sync.Mutex
	target    string
	listener  net.Listener // nil while refusing
	closed    bool
	cut       Direction
	upDelay   time.Duration
	downDelay time.Duration
	links     map[*link]struct{}
}

// New starts a proxy to target (host:port) listening on a free port of
// 127.0.0.1. The target is dialled anew for every accepted connection, so it
// need not be up yet. Call [Proxy.Close] to stop the proxy.
func New(target string) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target:   target,
		addr:     l.Addr().String(),
		ctx:      ctx,
		cancel:   cancel,
		listener: l,
		links:    make(map[*link]struct{}),
	}
	p.wg.Add(1)
	go p.accept(l)
	return p, nil
}

// Addr returns the address clients connect to, "127.0.0.1:port". It stays
// the same for the proxy's whole life, across [Proxy.Refuse].
func (p *Proxy) Addr() string { return p.addr }

// Target returns the address that new connections are forwarded to.
func (p *Proxy) Target() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.target
}

// SetTarget makes the proxy forward new connections to target (host:port)
// from now on, as a virtual IP moved to a new server (after a failover, say)
// would, and resets every open connection, since each is still joined to
// the old target: clients see their connections fail and reconnect, to the
// new target. Faults switched on (cuts, latency, refusal) stay on.
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
	p.Reset()
}

// Conns returns the number of connections currently forwarded (including
// those silenced by a cut).
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// Broken returns the number of open connections that have lost bytes, or a
// close, to a cut: those that [Proxy.Heal] will reset. Tests can wait on it
// to know that a cut has taken effect.
func (p *Proxy) Broken() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for l := range p.links {
		if l.broken {
			n++
		}
	}
	return n
}

// Cut stops the traffic in direction dir, adding to the directions already
// cut, without closing any connection. Bytes sent in a cut direction after
// Cut returns are dropped, and so are bytes still held back by
// [Proxy.SetLatency]; the sender's writes keep succeeding. Bytes already
// passed on before the cut are not recalled. See the package documentation
// for what follows on [Proxy.Heal].
func (p *Proxy) Cut(dir Direction) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut |= dir & Both
}

// Heal ends every cut: bytes flow again in both directions on new
// connections and on connections that lost nothing. Heal resets each
// connection that lost bytes, or a close, while cut, since its stream is
// broken. It does not undo [Proxy.Refuse] or [Proxy.SetLatency].
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.cut = 0
	var broken []*link
	for l := range p.links {
		if l.broken {
			broken = append(broken, l)
		}
	}
	p.mu.Unlock()
	for _, l := range broken {
		l.teardown(true)
	}
}

// Refuse switches refusing new connections on or off. While on, the proxy
// does not listen, so dials fail at once with "connection refused";
// connections already open are untouched. Turning it off listens again on
// the same address, which fails only if another process took the port
// meanwhile. After [Proxy.Close], Refuse returns [ErrClosed].
func (p *Proxy) Refuse(on bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	switch {
	case on && p.listener != nil:
		err := p.listener.Close()
		p.listener = nil
		if err != nil {
			return fmt.Errorf("faultproxy: stop listening: %w", err)
		}
	case !on && p.listener == nil:
		l, err := net.Listen("tcp", p.addr)
		if err != nil {
			return fmt.Errorf("faultproxy: listen again: %w", err)
		}
		p.listener = l
		p.wg.Add(1)
		go p.accept(l)
	}
	return nil
}

// Reset closes every open connection abruptly, with a TCP reset to both the
// client and the server, as a crashed middlebox would. New connections are
// accepted as usual.
func (p *Proxy) Reset() {
	for _, l := range p.snapshot() {
		l.teardown(true)
	}
}

// SetLatency delays every byte sent in the directions of dir by d from the
// moment the proxy reads it, replacing their previous latency; zero removes
// it. The delay models propagation, not bandwidth: bytes sent in a burst
// arrive in a burst d later. A change applies to bytes read after it.
// Default: no latency.
func (p *Proxy) SetLatency(dir Direction, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if dir&Upstream != 0 {
		p.upDelay = d
	}
	if dir&Downstream != 0 {
		p.downDelay = d
	}
}

// Close stops listening, resets every connection and returns once all the
// proxy's goroutines have finished. It returns the error of closing the
// listener, if any; closing again does nothing and returns nil.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var err error
	if p.listener != nil {
		err = p.listener.Close()
		p.listener = nil
	}
	p.mu.Unlock()
	p.cancel()
	for _, l := range p.snapshot() {
		l.teardown(true)
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) snapshot() []*link {
	p.mu.Lock()
	defer p.mu.Unlock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	return links
}

// accept serves one listener until it is closed, by Refuse or Close.
func (p *Proxy) accept(l net.Listener) {
	defer p.wg.Done()
	for {
		conn, err := l.Accept()
		if err != nil {
			// Either the listener was closed, or something like EMFILE
			// that a test helper has no way to recover from.
			return
		}
		p.wg.Add(1)
		go p.serve(conn.(*net.TCPConn))
	}
}

// serve connects an accepted client to the target and starts forwarding.
func (p *Proxy) serve(client *net.TCPConn) {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(p.ctx, DialTimeout)
	target := p.Target()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", target)
	cancel()
	if err != nil {
		reset(client)
		return
	}
	server := conn.(*net.TCPConn)

	l := &link{p: p, client: client, server: server, done: make(chan struct{})}
	l.open.Store(2)
	p.mu.Lock()
	if p.closed || p.listener == nil || p.target != target {
		// Refused, closed or retargeted while dialling: the client must
		// not get through (to the old target).
		p.mu.Unlock()
		reset(client)
		reset(server)
		return
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()

	up := make(chan chunk, queueLen)
	down := make(chan chunk, queueLen)
	p.wg.Add(4)
	go l.read(client, up, Upstream)
	go l.write(server, up, Upstream)
	go l.read(server, down, Downstream)
	go l.write(client, down, Downstream)
}

// reset closes conn with a TCP reset rather than a graceful FIN.
func reset(conn *net.TCPConn) {
	_ = conn.SetLinger(0)
	_ = conn.Close()
}

// delay returns the latency of dir.
func (p *Proxy) delay(dir Direction) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if dir == Upstream {
		return p.upDelay
	}
	return p.downDelay
}

// deliver reports whether bytes (or the end of the stream) may be passed on
// in direction dir now. If dir is cut it marks the link broken instead,
// under the same lock as Heal, so Heal resets every link that lost anything.
func (l *link) deliver(dir Direction) bool {
	p := l.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut&dir != 0 {
		l.broken = true
		return false
	}
	return true
}

// link is one proxied connection: a client and its connection to the
// target, with a reader and a writer goroutine for each direction.
type link struct {
	p              *Proxy
	client, server *net.TCPConn
	done           chan struct{} // closed by teardown
	once           sync.Once
	open           atomic.Int32 // directions not yet ended by a forwarded EOF
	broken         bool         // lost bytes or a close to a cut; guarded by p.mu
}

// chunk is bytes read from one side, due to be written at a given time. A
// chunk with a nil data and a non-nil err marks the end of the stream.
type chunk struct {
	data []byte
	err  error
	due  time.Time
}

// read moves bytes from src into queue, stamped with their due time, and
// finally the end of the stream.
func (l *link) read(src *net.TCPConn, queue chan<- chunk, dir Direction) {
	defer l.p.wg.Done()
	buf := make([]byte, chunkSize)
	for {
		n, err := src.Read(buf)
		due := time.Now().Add(l.p.delay(dir))
		if n > 0 && !l.send(queue, chunk{data: bytes.Clone(buf[:n]), due: due}) {
			return
		}
		if err != nil {
			l.send(queue, chunk{err: err, due: due})
			return
		}
	}
}

// send queues c, unless the link is torn down first.
func (l *link) send(queue chan<- chunk, c chunk) bool {
	select {
	case queue <- c:
		return true
	case <-l.done:
		return false
	}
}

// write passes the chunks of queue on to dst when they are due, unless
// their direction is cut.
func (l *link) write(dst *net.TCPConn, queue <-chan chunk, dir Direction) {
	defer l.p.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		var c chunk
		select {
		case c = <-queue:
		case <-l.done:
			return
		}
		if wait := time.Until(c.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-l.done:
				return
			}
		}
		if !l.deliver(dir) {
			if c.err != nil {
				// The sender's close is lost: hold the link until it is
				// healed, reset or closed.
				return
			}
			continue
		}
		if c.err == nil {
			if _, err := dst.Write(c.data); err != nil {
				l.teardown(true)
				return
			}
			continue
		}
		if !errors.Is(c.err, io.EOF) {
			// The sender's side failed, typically with a reset: pass it on.
			l.teardown(true)
			return
		}
		if err := dst.CloseWrite(); err != nil {
			l.teardown(true)
			return
		}
		if l.open.Add(-1) == 0 {
			// Both sides closed gracefully.
			l.teardown(false)
		}
		return
	}
}

// teardown closes both connections, abruptly if abrupt, and forgets the
// link. Only the first call has an effect.
func (l *link) teardown(abrupt bool) {
	l.once.Do(func() {
		if abrupt {
			reset(l.client)
			reset(l.server)
		} else {
			_ = l.client.Close()
			_ = l.server.Close()
		}
		close(l.done)
		l.p.mu.Lock()
		delete(l.p.links, l)
		l.p.mu.Unlock()
	})
}
