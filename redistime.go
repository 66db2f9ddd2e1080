package dim

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// dim's own scripts read Redis's clock, so leases never depend on a node's
// clock. rueidislock does not: it extends the leader lock with PEXPIREAT at
// a deadline from the node's clock, so a node whose clock is behind writes an
// expiry in the past (and "leads" with no lock in Redis), and one whose clock
// is ahead keeps a crashed leader's lock that much longer. dim acquires the
// lock with a relative expiry (FallbackSETPX) and moves the locker's absolute
// expiries onto Redis's clock, using the offset every heartbeat measures.

// redisClock is a node's measured offset from Redis's clock.
type redisClock struct {
	// offset is the largest Redis − local difference the last heartbeat
	// allows (ms): the reply's server time minus the local time at sending.
	// Moving a deadline by it makes the lock last at least as long in Redis
	// as the locker believes, never shorter.
	offset atomic.Int64
	known  atomic.Bool
	// skew shifts the local clock, for tests that play a node whose clock
	// is wrong; zero in production.
	skew time.Duration
}

// now is the node's clock.
func (c *redisClock) now() time.Time { return time.Now().Add(c.skew) }

// observe records a reply: server is Redis's time in ms, sent the node's
// clock when the request left. It returns the offset.
func (c *redisClock) observe(server int64, sent time.Time) time.Duration {
	off := server - sent.UnixMilli()
	c.offset.Store(off)
	c.known.Store(true)
	return time.Duration(off) * time.Millisecond
}

// lockClient is the client the leader lock uses: it moves the locker's
// absolute expiries (a PEXPIREAT deadline in ms, as a script argument) from
// the node's clock onto Redis's.
type lockClient struct {
	rueidis.Client
	clock  *redisClock
	prefix string // the lock's keys
}

// Do rewrites a lock script's absolute deadline and sends every command on.
func (c lockClient) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	return c.Client.Do(ctx, c.onRedisClock(cmd))
}

// DoMulti is Do for several commands.
func (c lockClient) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	for i, cmd := range cmds {
		cmds[i] = c.onRedisClock(cmd)
	}
	return c.Client.DoMulti(ctx, cmds...)
}

// absoluteMs tells an absolute time in ms from a duration: anything after
// 2001.
const absoluteMs = 1_000_000_000_000

// onRedisClock returns cmd with its deadline moved, if it is a lock script
// call (EVAL or EVALSHA with one lock key and a value and a deadline).
func (c lockClient) onRedisClock(cmd rueidis.Completed) rueidis.Completed {
	args := cmd.Commands()
	if len(args) != 6 || (args[0] != "EVALSHA" && args[0] != "EVAL") || args[2] != "1" ||
		!strings.HasPrefix(args[3], c.prefix) {
		return cmd
	}
	deadline, err := strconv.ParseInt(args[5], 10, 64)
	if err != nil || deadline < absoluteMs {
		return cmd
	}
	shift := c.clock.skew.Milliseconds() // what a node with this clock sends
	if c.clock.known.Load() {
		shift += c.clock.offset.Load()
	}
	if shift == 0 {
		return cmd
	}
	moved := c.Client.B().Arbitrary(args[0], args[1], args[2]).Keys(args[3]).
		Args(args[4], strconv.FormatInt(deadline+shift, 10)).Build()
	if cmd.IsRetryable() {
		moved = moved.ToRetryable()
	}
	return moved
}

// observeClock records this node's offset from Redis's clock, from a
// heartbeat sent and answered at the node's times sent and received, and
// warns once per episode when the node's clock is off by enough to matter
// to anything that does not read Redis's clock (the lock's own idea of its
// validity stays local and safe; the user's own code may not be). Redis
// read its clock somewhere between sending and receiving, so the offset
// lies between server − received and server − sent: the lock's deadlines
// move by the larger, and only an offset beyond what the round trip
// allows is warned of, so that a slow network or a busy process is not
// mistaken for a wrong clock.
func (e *env) observeClock(server int64, sent, received time.Time) {
	most := e.clock.observe(server, sent)
	least := time.Duration(server-received.UnixMilli()) * time.Millisecond
	e.tel.setClockOffset(most)
	limit := e.s.lockTTL / 4
	far := least > limit || most < -limit
	if far && !e.clockWarned.Load() {
		off := most
		if least > limit {
			off = least
		}
		e.log.Warn("this node's clock is off Redis's; dim keeps leases and the leader lock on Redis's clock, but check the node's time sync",
			"offset", off, "round_trip", received.Sub(sent), "lock_ttl", e.s.lockTTL)
	}
	e.clockWarned.Store(far)
}
