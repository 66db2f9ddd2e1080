package dim

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/redis/rueidis"
)

// firstStartKeys is the size of BenchmarkFirstStartRedisCPU's service.
var firstStartKeys = flag.Int("firststart.keys", 100_000, "keys of BenchmarkFirstStartRedisCPU's first start")

// BenchmarkFirstStartRedisCPU measures the Redis CPU a first start costs per
// key, script by script: the leader's assignment write, the nodes' claims,
// their state writes ("running") and the history entries of both, each
// over every key in the chunks dim uses, against one redis-server. The CPU
// is Redis's main thread (INFO cpu), so the load of the machine inflates it
// less than wall time; compare runs made side by side. Each iteration is a
// new service on the same server; -benchtime=1x -count=N gives N samples.
func BenchmarkFirstStartRedisCPU(b *testing.B) {
	keys, nodes := *firstStartKeys, 3
	srv := redistest.Start(b)
	client := srv.Client(b)
	ctx := context.Background()
	i := 0
	for b.Loop() {
		i++
		costs := firstStartCost(ctx, b, client, fmt.Sprintf("bench%d", i), keys, nodes)
		total := 0.0
		for _, c := range costs {
			b.ReportMetric(c.us/float64(keys), c.name+"-µs/key")
			total += c.us
		}
		b.ReportMetric(total/float64(keys), "total-µs/key")
		_ = client.Do(ctx, client.B().Flushall().Build()).Error()
	}
}

// phaseCost is the Redis CPU of one phase of a first start, in µs.
type phaseCost struct {
	name string
	us   float64
}

// redisMainCPU is Redis's main-thread CPU time so far, in µs.
func redisMainCPU(ctx context.Context, tb testing.TB, client rueidis.Client) float64 {
	tb.Helper()
	s, err := client.Do(ctx, client.B().Info().Section("cpu").Build()).ToString()
	if err != nil {
		tb.Fatal(err)
	}
	total := 0.0
	for line := range strings.SplitSeq(s, "\r\n") {
		name, v, ok := strings.Cut(line, ":")
		if ok && (name == "used_cpu_sys_main_thread" || name == "used_cpu_user_main_thread") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatal(err)
			}
			total += f
		}
	}
	return total * 1e6
}

// firstStartCost runs a first start of keys keys on nodes nodes of one
// service script by script, and returns the Redis CPU of each phase.
func firstStartCost(ctx context.Context, tb testing.TB, client rueidis.Client, service string, keys, nodes int) []phaseCost {
	tb.Helper()
	k := newKeyspace("", service)
	db := newStore(client, k)
	must := func(err error) {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
	}
	ids := make([]string, nodes)
	sessions := make([]string, nodes)
	for n := range nodes {
		ids[n] = fmt.Sprintf("node-%d", n)
		// Leases long enough for the whole run, which renews none.
		res, err := db.join(ctx, ids[n], 10*time.Minute, 10*time.Minute, "0")
		must(err)
		sessions[n] = res.session
		_, err = db.heartbeat(ctx, ids[n], sessions[n], 10*time.Minute, 1, 10*time.Minute, "0")
		must(err)
	}
	// No grace period: the claims are granted at once.
	must(client.Do(ctx, client.B().Hset().Key(k.nodes).FieldValue().FieldValue("grace", "0").Build()).Error())
	must(client.Do(ctx, client.B().Set().Key(k.epoch).Value("1").Build()).Error())

	all := make([]string, keys)
	for i := range all {
		all[i] = fmt.Sprintf("cfg-%07d", i)
	}
	mine := make([][]string, nodes)
	var changes []change
	for i, key := range all {
		n := i * nodes / keys
		mine[n] = append(mine[n], key)
		changes = append(changes, change{key: key, to: ids[n]})
	}
	var costs []phaseCost
	phase := func(name string, fn func()) {
		before := redisMainCPU(ctx, tb, client)
		fn()
		costs = append(costs, phaseCost{name, redisMainCPU(ctx, tb, client) - before})
	}
	xadd := func(kind, node string, fields ...string) rueidis.Completed {
		b := client.B().Xadd().Key(k.history).Maxlen().Almost().Threshold(strconv.Itoa(DefaultHistoryLength)).Id("*").
			FieldValue().FieldValue("e", kind).FieldValue("n", node)
		for i := 0; i < len(fields); i += 2 {
			b = b.FieldValue(fields[i], fields[i+1])
		}
		return b.Build()
	}

	phase("write", func() {
		for chunk := range nodeChunks(changes, writeChunk) {
			index := map[string]int{"": 0}
			var used []string
			for _, c := range chunk {
				if _, ok := index[c.to]; !ok {
					used = append(used, c.to)
					index[c.to] = len(used)
				}
			}
			tell := make([]bool, len(used))
			for i := range tell {
				tell[i] = true
			}
			_, err := db.write(ctx, 1, "-", used, tell, writeGroups(chunk, index))
			must(err)
		}
	})
	phase("assigned-history", func() {
		for chunk := range slices.Chunk(changes, writeChunk) {
			moves := make([]Move, len(chunk))
			keys := make([]string, len(chunk))
			for i, c := range chunk {
				moves[i], keys[i] = Move{Key: c.key, To: c.to}, c.key
			}
			kj, _ := json.Marshal(keys)
			mj, _ := json.Marshal(moveRuns(moves))
			must(client.Do(ctx, xadd(HistoryAssigned, "node-0", "p", "1", "k", string(kj), "mr", string(mj))).Error())
		}
	})
	phase("claim", func() {
		for n := range nodes {
			for chunk := range slices.Chunk(mine[n], claimChunk) {
				res, err := db.claim(ctx, ids[n], sessions[n], 10*time.Minute, "0", chunk)
				must(err)
				if res.status != 1 || len(res.codes) != len(chunk) {
					tb.Fatalf("claim: status %d, %d codes", res.status, len(res.codes))
				}
				if res.codes[0] != "+" {
					tb.Fatalf("claim refused: %q", res.codes[0])
				}
			}
		}
	})
	phase("claimed-history", func() {
		for n := range nodes {
			for chunk := range slices.Chunk(mine[n], claimChunk) {
				kj, _ := json.Marshal(chunk)
				must(client.Do(ctx, xadd(HistoryClaimed, ids[n], "k", string(kj))).Error())
			}
		}
	})
	phase("state", func() {
		since := time.Now().UnixMilli()
		for n := range nodes {
			for chunk := range slices.Chunk(mine[n], stateChunk) {
				live, refused, err := db.state(ctx, ids[n], sessions[n], since, chunk, nil)
				must(err)
				if !live || len(refused) != 0 {
					tb.Fatalf("state: live %v, %d refused", live, len(refused))
				}
			}
		}
	})
	// Every key runs on its node, as the summary says.
	sum, err := readSummary(ctx, client, service, k, 0)
	must(err)
	if sum.Running != keys || sum.States[KeyCreating] != 0 {
		tb.Fatalf("after the first start: %d running, %d creating", sum.Running, sum.States[KeyCreating])
	}
	return costs
}
