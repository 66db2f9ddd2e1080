package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/go-dim/dim"
	"github.com/redis/rueidis"
)

// readsClient is the client name of the reads scenario's own connection, by
// which it finds its calls in SLOWLOG.
const readsClient = "dimbench-reads"

// reads measures the two ways to read a whole service, on a converged
// service of each size: dim.ReadStatus (every key) and dim.ReadSummary
// (counts, and the keys that do not run). Per read: the script's time in
// Redis (SLOWLOG, with every call logged while it runs), the time the
// caller waits (the call and decoding the reply), and the size of the
// reply (the same script replayed on a plain connection, its RESP counted).
func (b *bench) reads(ctx context.Context) error {
	tm := timingFor(b.cfg.readsTTL)
	for _, sz := range b.cfg.reads {
		cs := sz.String()
		runs := b.runs(20)
		c := b.newCluster("reads", sz.Keys, tm)
		mk := b.mark()
		err := func() error {
			defer c.close(ctx)
			if _, err := c.startLocal(ctx, sz.Nodes); err != nil {
				return err
			}
			if _, err := c.waitConverged(ctx, sz.Nodes, converge); err != nil {
				return err
			}
			client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{b.addr}, DisableCache: true,
				ClientName: readsClient})
			if err != nil {
				return err
			}
			defer client.Close()
			restore, err := logEveryCall(ctx, b.admin)
			if err != nil {
				return err
			}
			defer restore()

			svc := dim.Service{Name: c.service}
			kinds := []struct {
				name string
				read func() error
			}{
				{"Status", func() error { _, err := dim.ReadStatus(ctx, client, svc); return err }},
				{"Summary", func() error { _, err := dim.ReadSummary(ctx, client, svc); return err }},
			}
			redisMs := map[string]float64{}
			for _, k := range kinds {
				inRedis := &Result{Scenario: "11 status reads", Case: cs, Metric: k.name + ": time in Redis per read", Unit: "ms"}
				waited := &Result{Scenario: "11 status reads", Case: cs, Metric: k.name + ": time the caller waits", Unit: "ms"}
				// Once unmeasured: the first call loads the script.
				if err := k.read(); err != nil {
					return err
				}
				var last []string
				for range runs {
					if err := b.admin.Do(ctx, b.admin.B().SlowlogReset().Build()).Error(); err != nil {
						return err
					}
					t0 := time.Now()
					if err := k.read(); err != nil {
						return err
					}
					waited.Samples = append(waited.Samples, ms(time.Since(t0)))
					us, args, err := ownSlowlogEntry(ctx, b.admin)
					if err != nil {
						return fmt.Errorf("%s: %w", k.name, err)
					}
					inRedis.Samples = append(inRedis.Samples, float64(us)/1000)
					last = args
				}
				size, err := replySize(ctx, b.addr, last)
				if err != nil {
					return fmt.Errorf("%s: reply size: %w", k.name, err)
				}
				reply := &Result{Scenario: "11 status reads", Case: cs, Metric: k.name + ": reply size", Unit: "KiB",
					Samples: []float64{float64(size) / 1024}}
				inRedis.Note = "SLOWLOG duration of the script call (Redis blocks every other client meanwhile)"
				waited.Note = "dim.Read" + k.name + " from a client of its own, reply decoded"
				b.annotate(mk, inRedis)
				b.add(inRedis)
				b.add(waited)
				b.add(reply)
				redisMs[k.name] = inRedis.Median
			}
			if redisMs["Summary"] > 0 {
				r := &Result{Scenario: "11 status reads", Case: cs, Metric: "Status / Summary time in Redis", Unit: "×",
					Samples: []float64{redisMs["Status"] / redisMs["Summary"]}}
				r.Note = "the same run, the same service: what reading every key costs over reading the summary"
				b.add(r)
			}
			return b.checkOverlaps(c)
		}()
		b.failed("11 status reads", cs, err)
	}
	return nil
}

// logEveryCall makes SLOWLOG record every command, and returns what puts the
// settings back.
func logEveryCall(ctx context.Context, admin rueidis.Client) (restore func(), err error) {
	return configure(ctx, admin, map[string]string{"slowlog-log-slower-than": "0", "slowlog-max-len": "4096"})
}

// configure sets Redis parameters with CONFIG SET, and returns what puts
// their old values back.
func configure(ctx context.Context, admin rueidis.Client, params map[string]string) (restore func(), err error) {
	old := map[string]string{}
	for p := range params {
		kv, err := admin.Do(ctx, admin.B().ConfigGet().Parameter(p).Build()).AsStrMap()
		if err != nil {
			return nil, fmt.Errorf("CONFIG GET %s: %w", p, err)
		}
		old[p] = kv[p]
	}
	set := func(kv map[string]string) error {
		for p, v := range kv {
			if err := admin.Do(ctx, admin.B().ConfigSet().ParameterValue().ParameterValue(p, v).Build()).Error(); err != nil {
				return fmt.Errorf("CONFIG SET %s: %w", p, err)
			}
		}
		return nil
	}
	if err := set(params); err != nil {
		return nil, err
	}
	return func() { _ = set(old) }, nil
}

// ownSlowlogEntry finds the reads client's one call in SLOWLOG, and returns
// its duration in µs and its arguments.
func ownSlowlogEntry(ctx context.Context, admin rueidis.Client) (us int64, args []string, err error) {
	entries, err := admin.Do(ctx, admin.B().SlowlogGet().Count(4096).Build()).ToArray()
	if err != nil {
		return 0, nil, fmt.Errorf("SLOWLOG GET: %w", err)
	}
	for _, e := range entries {
		f, err := e.ToArray()
		if err != nil || len(f) < 6 {
			continue
		}
		if name, _ := f[5].ToString(); name != readsClient {
			continue
		}
		args, _ := f[3].AsStrSlice()
		if len(args) == 0 || !strings.HasPrefix(strings.ToLower(args[0]), "eval") {
			continue
		}
		us, _ = f[2].AsInt64()
		return us, args, nil
	}
	return 0, nil, errors.New("the read's script call is not in SLOWLOG")
}

// replySize sends a command on a plain connection and counts the bytes of
// its RESP2 reply.
func replySize(ctx context.Context, addr string, args []string) (int64, error) {
	for _, a := range args {
		if strings.HasSuffix(a, "more arguments)") || strings.HasSuffix(a, "more bytes)") {
			return 0, fmt.Errorf("SLOWLOG shortened the command: %q", a)
		}
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	var cmd strings.Builder
	fmt.Fprintf(&cmd, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&cmd, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(conn, cmd.String()); err != nil {
		return 0, err
	}
	r := &countingReader{r: bufio.NewReaderSize(conn, 1<<16)}
	if err := skipReply(r); err != nil {
		return 0, err
	}
	return r.n, nil
}

type countingReader struct {
	r *bufio.Reader
	n int64
}

func (c *countingReader) line() (string, error) {
	s, err := c.r.ReadString('\n')
	c.n += int64(len(s))
	return strings.TrimSuffix(s, "\r\n"), err
}

// skipReply reads one RESP2 reply.
func skipReply(r *countingReader) error {
	l, err := r.line()
	if err != nil {
		return err
	}
	if l == "" {
		return errors.New("empty line in reply")
	}
	switch l[0] {
	case '+', ':':
		return nil
	case '-':
		return fmt.Errorf("redis: %s", l[1:])
	case '$':
		n, err := strconv.Atoi(l[1:])
		if err != nil || n < 0 {
			return err
		}
		m, err := io.CopyN(io.Discard, r.r, int64(n)+2)
		r.n += m
		return err
	case '*':
		n, err := strconv.Atoi(l[1:])
		if err != nil {
			return err
		}
		for range n {
			if err := skipReply(r); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("unexpected reply %q", l)
}
