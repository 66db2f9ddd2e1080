package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/redis/rueidis"
)

// startRedis starts bin on a free port of 127.0.0.1, persisting nothing and
// evicting nothing, and returns once it answers PING. Close kills it and
// removes its files.
func startRedis(bin string) (*redistest.Process, error) {
	srv, err := redistest.Launch(redistest.WithBinary(bin), redistest.WithArgs("--maxmemory-policy", "noeviction"))
	if err != nil {
		return nil, fmt.Errorf("start %s (choose another with -redis-server, or use a running Redis with -redis): %w", bin, err)
	}
	return srv, nil
}

// lastLines returns the last n lines of s on one line.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// pingFloor measures the Redis round trip as dim's client sees it: n
// sequential PINGs through rueidis, in milliseconds.
func pingFloor(ctx context.Context, c rueidis.Client, n int) (*Result, error) {
	r := &Result{Scenario: "floor", Case: "PING through rueidis", Metric: "round trip", Unit: "ms"}
	for range 50 { // warm-up
		if err := c.Do(ctx, c.B().Ping().Build()).Error(); err != nil {
			return nil, err
		}
	}
	for range n {
		start := time.Now()
		if err := c.Do(ctx, c.B().Ping().Build()).Error(); err != nil {
			return nil, err
		}
		r.Samples = append(r.Samples, ms(time.Since(start)))
	}
	r.summarise()
	r.Note = fmt.Sprintf("%d sequential PINGs; p99 %s ms", n, num(r.P99))
	r.Samples = nil // too many to keep; the summary says it
	r.Runs = n
	return r, nil
}

// info returns the fields of one INFO section.
func info(ctx context.Context, c rueidis.Client, section string) (map[string]string, error) {
	s, err := c.Do(ctx, c.B().Info().Section(section).Build()).ToString()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for line := range strings.SplitSeq(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = v
		}
	}
	return out, nil
}

// redisSnapshot is what the steady-state scenario reads from Redis at the
// edges of a window.
type redisSnapshot struct {
	at       time.Time
	calls    map[string]int64 // command → calls (commandstats)
	usec     map[string]int64 // command → microseconds spent in it (commandstats)
	cpu      float64          // used_cpu_user + used_cpu_sys, seconds
	memory   int64            // used_memory
	total    int64            // total_commands_processed
	netInput int64
}

func snapshot(ctx context.Context, c rueidis.Client) (redisSnapshot, error) {
	s := redisSnapshot{at: time.Now(), calls: map[string]int64{}, usec: map[string]int64{}}
	stats, err := info(ctx, c, "commandstats")
	if err != nil {
		return s, err
	}
	for k, v := range stats {
		name, ok := strings.CutPrefix(k, "cmdstat_")
		if !ok {
			continue
		}
		for f := range strings.SplitSeq(v, ",") {
			if n, ok := strings.CutPrefix(f, "calls="); ok {
				s.calls[name], _ = strconv.ParseInt(n, 10, 64)
			}
			if n, ok := strings.CutPrefix(f, "usec="); ok {
				s.usec[name], _ = strconv.ParseInt(n, 10, 64)
			}
		}
	}
	cpu, err := info(ctx, c, "cpu")
	if err != nil {
		return s, err
	}
	u, _ := strconv.ParseFloat(cpu["used_cpu_user"], 64)
	y, _ := strconv.ParseFloat(cpu["used_cpu_sys"], 64)
	s.cpu = u + y
	mem, err := info(ctx, c, "memory")
	if err != nil {
		return s, err
	}
	s.memory, _ = strconv.ParseInt(mem["used_memory"], 10, 64)
	st, err := info(ctx, c, "stats")
	if err != nil {
		return s, err
	}
	s.total, _ = strconv.ParseInt(st["total_commands_processed"], 10, 64)
	s.netInput, _ = strconv.ParseInt(st["total_net_input_bytes"], 10, 64)
	return s, nil
}

// commandDelta is the calls per command between two snapshots, busiest first.
type commandCount struct {
	Name  string  `json:"name"`
	PerS  float64 `json:"per_s"`
	Calls int64   `json:"calls"`
}

func commandDelta(a, b redisSnapshot) (total int64, byCmd []commandCount) {
	secs := b.at.Sub(a.at).Seconds()
	for name, n := range b.calls {
		if name == "info" {
			continue // the snapshots' own
		}
		d := n - a.calls[name]
		if d <= 0 {
			continue
		}
		total += d
		byCmd = append(byCmd, commandCount{Name: name, Calls: d, PerS: float64(d) / secs})
	}
	slices.SortFunc(byCmd, func(x, y commandCount) int { return int(y.Calls - x.Calls) })
	return total, byCmd
}

// serviceKeys lists the Redis keys of a service (dim's keys all start with
// "dim:{service}", see keyspace.go).
func serviceKeys(ctx context.Context, c rueidis.Client, service string) ([]string, error) {
	var keys []string
	var cursor uint64
	for {
		e, err := c.Do(ctx, c.B().Scan().Cursor(cursor).Match("dim:{"+service+"}*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			return nil, err
		}
		keys = append(keys, e.Elements...)
		if cursor = e.Cursor; cursor == 0 {
			return keys, nil
		}
	}
}

// serviceMemory sums MEMORY USAGE (exact: SAMPLES 0) over a service's keys.
func serviceMemory(ctx context.Context, c rueidis.Client, service string) (bytes int64, nkeys int, err error) {
	keys, err := serviceKeys(ctx, c, service)
	if err != nil {
		return 0, 0, err
	}
	for _, k := range keys {
		n, err := c.Do(ctx, c.B().MemoryUsage().Key(k).Samples(0).Build()).AsInt64()
		if err != nil && !rueidis.IsRedisNil(err) {
			return 0, 0, err
		}
		bytes += n
	}
	return bytes, len(keys), nil
}

// dropService deletes a finished service's keys, so that later scenarios
// measure Redis without them.
func dropService(ctx context.Context, c rueidis.Client, service string) error {
	keys, err := serviceKeys(ctx, c, service)
	if err != nil {
		return err
	}
	var errs []error
	for chunk := range slices.Chunk(keys, 500) {
		errs = append(errs, c.Do(ctx, c.B().Unlink().Key(chunk...).Build()).Error())
	}
	return errors.Join(errs...)
}
