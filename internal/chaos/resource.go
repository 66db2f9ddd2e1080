package chaos

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Resource is a store that instances write to with their fencing token, as
// dim's documentation recommends: it accepts a write for a key only if its
// token is at least the highest it has accepted for that key. A former
// owner — a node woken from a pause, say — writing with its old token after
// a new owner wrote is refused.
//
// It runs in the driver, outside Redis and outside every node, so neither
// a Redis restart nor a node's faults touch it. The protocol is one line
// per write: "W key token" answered by "OK" or "NO highest".
type Resource struct {
	l  net.Listener
	wg sync.WaitGroup

	mu       sync.Mutex
	highest  map[string]uint64
	conns    map[net.Conn]bool
	accepted int
	refused  int
	closed   bool
}

// NewResource starts a resource on a free loopback port.
func NewResource() (*Resource, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("chaos: resource: %w", err)
	}
	r := &Resource{l: l, highest: map[string]uint64{}, conns: map[net.Conn]bool{}}
	r.wg.Go(r.accept)
	return r, nil
}

// Addr is where nodes connect.
func (r *Resource) Addr() string { return r.l.Addr().String() }

// Counts returns how many writes were accepted and refused.
func (r *Resource) Counts() (accepted, refused int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.accepted, r.refused
}

// Close stops the resource and waits for its goroutines.
func (r *Resource) Close() {
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.l.Close()
	r.wg.Wait()
}

func (r *Resource) accept() {
	for {
		c, err := r.l.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			c.Close()
			return
		}
		r.conns[c] = true
		r.mu.Unlock()
		r.wg.Go(func() { r.serve(c) })
	}
}

func (r *Resource) serve(c net.Conn) {
	defer func() {
		r.mu.Lock()
		delete(r.conns, c)
		r.mu.Unlock()
		c.Close()
	}()
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "W" {
			fmt.Fprintf(c, "ERR bad request\n")
			continue
		}
		token, err := strconv.ParseUint(f[2], 10, 64)
		if err != nil {
			fmt.Fprintf(c, "ERR bad token\n")
			continue
		}
		if _, err := c.Write([]byte(r.write(f[1], token))); err != nil {
			return
		}
	}
}

func (r *Resource) write(key string, token uint64) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h := r.highest[key]; token < h {
		r.refused++
		return "NO " + strconv.FormatUint(h, 10) + "\n"
	}
	r.highest[key] = token
	r.accepted++
	return "OK\n"
}

// ErrRefused reports a write refused for its stale token.
var ErrRefused = errors.New("chaos: write refused: stale token")

// ResourceClient writes to a [Resource] over one connection, reconnecting
// after an error. It is safe for concurrent use.
type ResourceClient struct {
	addr string
	mu   sync.Mutex
	conn net.Conn
	rd   *bufio.Reader
}

// NewResourceClient returns a client of the resource at addr; it connects
// on first use.
func NewResourceClient(addr string) *ResourceClient { return &ResourceClient{addr: addr} }

// Write writes for key with token. A refused write returns the highest
// token and an error wrapping [ErrRefused].
func (c *ResourceClient) Write(key string, token uint64) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		conn, err := net.DialTimeout("tcp", c.addr, time.Second)
		if err != nil {
			return 0, fmt.Errorf("chaos: resource: %w", err)
		}
		c.conn, c.rd = conn, bufio.NewReader(conn)
	}
	fail := func(err error) (uint64, error) {
		c.conn.Close()
		c.conn = nil
		return 0, fmt.Errorf("chaos: resource: %w", err)
	}
	_ = c.conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprintf(c.conn, "W %s %d\n", key, token); err != nil {
		return fail(err)
	}
	line, err := c.rd.ReadString('\n')
	if err != nil {
		return fail(err)
	}
	line = strings.TrimSpace(line)
	switch {
	case line == "OK":
		return 0, nil
	case strings.HasPrefix(line, "NO "):
		h, _ := strconv.ParseUint(strings.TrimPrefix(line, "NO "), 10, 64)
		return h, fmt.Errorf("%w: key %s token %d < %d", ErrRefused, key, token, h)
	}
	return fail(fmt.Errorf("unexpected reply %q", line))
}

// Close closes the connection.
func (c *ResourceClient) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}
