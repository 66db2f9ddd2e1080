package dim

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/redis/rueidis"
)

// A Redis out of memory under the noeviction policy refuses every write that
// could grow memory, and without script flags it refuses a script at its
// first write. What keeps a running instance alive — renewing a lease,
// re-asserting an ownership, publishing a state, releasing, leaving —
// needs no new memory, so those scripts carry flags=allow-oom: a full
// Redis stops what is new (claims, the leader's moves and elections), never
// what runs.

// oomFlag lets a script run while Redis is out of memory (Redis 7 script
// flags).
const oomFlag = "#!lua flags=allow-oom\n"

// keepLua is a script that keeps or frees memory. It runs with
// flags=allow-oom on servers that know script flags, and plain on those that
// do not (the embedded test server).
type keepLua struct {
	flagged, plain *rueidis.Lua
}

// keepScript is script for what must run in a full Redis.
func keepScript(body string) *keepLua {
	return &keepLua{flagged: rueidis.NewLuaScript(oomFlag + luaPrelude + body), plain: script(body)}
}

// Exec runs the script; plain records that the server does not compile
// flagged scripts, so that it is asked once per client.
func (s *keepLua) Exec(ctx context.Context, c rueidis.Client, plain *atomic.Bool, keys, args []string) rueidis.RedisResult {
	if plain.Load() {
		return s.plain.Exec(ctx, c, keys, args)
	}
	r := s.flagged.Exec(ctx, c, keys, args)
	if err := r.Error(); err != nil && strings.Contains(err.Error(), "Error compiling script") {
		plain.Store(true)
		return s.plain.Exec(ctx, c, keys, args)
	}
	return r
}

// outOfMemory is what dim logs when Redis refuses a write for memory.
const outOfMemory = "Redis is out of memory: nothing new starts, running instances keep running; free memory or raise maxmemory"

// isOOM reports whether Redis refused a command because it is out of memory.
func isOOM(err error) bool {
	if err == nil {
		return false
	}
	if re, ok := rueidis.IsRedisErr(err); ok {
		return strings.HasPrefix(re.Error(), "OOM")
	}
	return strings.Contains(err.Error(), "OOM command not allowed")
}

// RedisMemory is what Redis says about its memory, for Status.
type RedisMemory struct {
	// OutOfMemory is true when Redis uses more than its maxmemory under a
	// policy that refuses writes (noeviction): nothing new starts, and
	// running instances keep running.
	OutOfMemory bool   `json:"out_of_memory"`
	Used        int64  `json:"used_bytes"`
	Max         int64  `json:"max_bytes"` // 0: no limit
	Policy      string `json:"policy"`
}

// memoryScript reads INFO memory on the server that holds the service's
// keys (in a Cluster, the master of its slot, which a plain INFO may miss).
//
// KEYS: any key of the service
var memoryScript = rueidis.NewLuaScript(`
local s = redis.pcall('INFO', 'memory')
if type(s) == 'table' then return '' end
return s
`)

// readMemory reads INFO memory; nil if the server does not answer it (a user
// without +info, the embedded server).
func readMemory(ctx context.Context, c rueidis.Client, k keyspace) *RedisMemory {
	s, err := memoryScript.Exec(ctx, c, []string{k.nodes}, nil).ToString()
	if err != nil || s == "" {
		return nil
	}
	mem := &RedisMemory{}
	found := false
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch k {
		case "used_memory":
			mem.Used, _ = strconv.ParseInt(v, 10, 64)
			found = true
		case "maxmemory":
			mem.Max, _ = strconv.ParseInt(v, 10, 64)
		case "maxmemory_policy":
			mem.Policy = v
		}
	}
	if !found {
		return nil
	}
	mem.OutOfMemory = mem.Max > 0 && mem.Used >= mem.Max && mem.Policy == "noeviction"
	return mem
}
