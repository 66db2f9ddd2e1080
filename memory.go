package dim

import (
	"strconv"
	"strings"

	"github.com/redis/rueidis"
)

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

// parseMemory parses INFO memory; nil if there is none.
func parseMemory(s string, err error) *RedisMemory {
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
