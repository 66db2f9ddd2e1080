package dim

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/redis/rueidis"
)

// Services lists the dim services in a Redis under a key prefix ("" for
// none), found by their token counters (written at the first join) with SCAN (never KEYS, which would block
// Redis), on every master of a Cluster.
func Services(ctx context.Context, client rueidis.Client, keyPrefix string) ([]string, error) {
	pattern := keyPrefix + "dim:{*}:fence"
	seen := map[string]bool{}
	for _, node := range scanTargets(client) {
		var cursor uint64
		for {
			e, err := node.Do(ctx, node.B().Scan().Cursor(cursor).Match(pattern).Count(1000).Build()).AsScanEntry()
			if err != nil {
				return nil, fmt.Errorf("%w: scan: %w", ErrRedis, err)
			}
			for _, key := range e.Elements {
				rest, ok := strings.CutPrefix(key, keyPrefix+"dim:{")
				if name, ok2 := strings.CutSuffix(rest, "}:fence"); ok && ok2 && namePattern.MatchString(name) {
					seen[name] = true
				}
			}
			if cursor = e.Cursor; cursor == 0 {
				break
			}
		}
	}
	names := make([]string, 0, len(seen))
	for name := range seen {
		names = append(names, name)
	}
	slices.Sort(names)
	return names, nil
}

// scanTargets are the servers a SCAN must visit: each node of a Cluster, or
// the one server.
func scanTargets(client rueidis.Client) []rueidis.Client {
	nodes := client.Nodes()
	if len(nodes) <= 1 {
		return []rueidis.Client{client}
	}
	out := make([]rueidis.Client, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n)
	}
	return out
}

// Purge removes every Redis key of a retired service: its record, counters
// and assignment. It refuses, with an error wrapping [ErrServiceLive], while
// any node of the service holds a live lease; a purged service that starts
// again is a new one (its first start waits a grace period). It returns how
// many keys it deleted.
func Purge(ctx context.Context, client rueidis.Client, svc Service) (int, error) {
	k, err := svc.keys()
	if err != nil {
		return 0, err
	}
	// The keys with the service's hash tag, wherever the scan finds them:
	// one slot, so one master of a Cluster.
	var keys []string
	for _, node := range scanTargets(client) {
		var cursor uint64
		for {
			e, err := node.Do(ctx, node.B().Scan().Cursor(cursor).Match(k.prefix+":*").Count(1000).Build()).AsScanEntry()
			if err != nil {
				return 0, fmt.Errorf("%w: scan: %w", ErrRedis, err)
			}
			keys = append(keys, e.Elements...)
			if cursor = e.Cursor; cursor == 0 {
				break
			}
		}
	}
	if len(keys) == 0 {
		return 0, fmt.Errorf("%w: %q has no keys in Redis", ErrUnknownService, svc.Name)
	}
	keys = slices.DeleteFunc(keys, func(key string) bool { return key == k.nodes })
	total := 0
	db := newStore(client, k)
	// Bounded scripts: a big service's keys go in chunks, the live check
	// repeated in each.
	for chunk := range slices.Chunk(keys, 500) {
		n, live, err := db.purge(ctx, chunk)
		if err != nil {
			return total, fmt.Errorf("%w: purge: %w", ErrRedis, err)
		}
		if live {
			return total, fmt.Errorf("%w: %q has live nodes; stop them first", ErrServiceLive, svc.Name)
		}
		total += n
	}
	n, live, err := db.purge(ctx, []string{k.nodes})
	if err != nil {
		return total, fmt.Errorf("%w: purge: %w", ErrRedis, err)
	}
	if live {
		return total, fmt.Errorf("%w: %q has live nodes; stop them first", ErrServiceLive, svc.Name)
	}
	return total + n, nil
}
