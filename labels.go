package dim

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/redis/rueidis"
)

// nodeLabels is what a node publishes about itself for placement, at its
// join: labels and caps. A change takes effect when the node joins again
// (a restart): the leader then places keys by the new labels, moving only
// the keys whose requirements or spread the change touches.
type nodeLabels struct {
	Labels  map[string]string `json:"l,omitempty"`
	MaxKeys int               `json:"k,omitempty"`
	MaxCost int               `json:"c,omitempty"`
}

func (l nodeLabels) empty() bool { return len(l.Labels) == 0 && l.MaxKeys == 0 && l.MaxCost == 0 }

// parseNodeLabels reads a published entry; a malformed one counts as none.
func parseNodeLabels(s string) nodeLabels {
	var l nodeLabels
	if s != "" && json.Unmarshal([]byte(s), &l) != nil {
		return nodeLabels{}
	}
	return l
}

// WithLabels sets labels of this replica (zone, region, hardware), which
// per-key placements (see [WithPlacement]) require and spread over. They
// are published with the membership at every join, shown in [Status], and
// take effect for placement when the node joins: to change them, restart
// the node. Label names must be non-empty and not begin with "dim:" (every
// node has [LabelNode] already). Default: none.
func WithLabels(labels map[string]string) Option {
	return optionFunc(func(s *settings) error {
		for name := range labels {
			if name == "" {
				return invalid("WithLabels", "a label name is empty")
			}
			if strings.HasPrefix(name, "dim:") {
				return invalid("WithLabels", "label %q: names that begin with dim: are dim's own (see LabelNode)", name)
			}
		}
		s.labels = maps.Clone(labels)
		return nil
	})
}

// WithCaps caps what the leader gives this replica: at most maxKeys
// instances and, with per-key costs (see [Placement.Cost]), at most maxCost
// cost units; 0 means no cap. Keys that no live node may take because of
// caps are reported as unplaceable (see [Status]). Pinned keys count but
// are kept even beyond a cap. Default: no caps.
func WithCaps(maxKeys, maxCost int) Option {
	return optionFunc(func(s *settings) error {
		if maxKeys < 0 || maxCost < 0 {
			return invalid("WithCaps", "caps %d and %d: want 0 or more", maxKeys, maxCost)
		}
		s.maxKeys, s.maxCost = maxKeys, maxCost
		return nil
	})
}

// WithPlacement derives each key's placement from its config: the node
// labels it requires, the label its group spreads over, and its cost (see
// [Placement] and [BalanceWith] for what the leader then guarantees).
// placementOf must be deterministic; every node of a service should use
// the same function, since whichever node leads applies its own. Its type
// parameter must be the Manager's config type C. Default: none, every key
// of cost 1 and allowed on every node.
func WithPlacement[C any](placementOf func(C) Placement) Option {
	return optionFunc(func(s *settings) error {
		if placementOf == nil {
			return invalid("WithPlacement", "the placement function is nil")
		}
		s.placement = placementOf
		return nil
	})
}

// placements derives the placement of every configured key that has one
// other than the zero value, and, if sum is set, a checksum of them (see
// placingHash); nil without WithPlacement.
func (m *Manager[C, I]) placements(configs map[string]config[C], sum bool) (map[string]Placement, uint64, error) {
	if m.placementOf == nil {
		return nil, 0, nil
	}
	out := map[string]Placement{}
	var total uint64
	for key, cfg := range configs {
		p := m.placementOf(cfg.value)
		if p.Cost < 0 || p.Cost > MaxCost || (p.Group != "" && p.Spread == "") {
			return nil, 0, fmt.Errorf("%w: the placement of key %q: cost %d, group %q, spread %q", ErrInvalidConfig, key, p.Cost, p.Group, p.Spread)
		}
		if !isDefault(p) {
			out[key] = p
			if sum {
				total += placingHash(key, p)
			}
		}
	}
	return out, total, nil
}

// Pin pins key to node: while node is live and meets the key's
// requirements, the leader keeps the key there, above caps and balance
// (see [BalanceWith]). It returns an error wrapping [ErrUnknownNode] when
// node is not a live member.
func Pin(ctx context.Context, client rueidis.Client, svc Service, key, node string) error {
	k, err := svc.keys()
	if err != nil {
		return err
	}
	if key == "" {
		return fmt.Errorf("%w: pin: empty key", ErrInvalidKey)
	}
	ok, err := newStore(client, k).pin(ctx, key, node)
	if err != nil {
		return fmt.Errorf("%w: pin %q: %w", ErrRedis, key, err)
	}
	if !ok {
		return fmt.Errorf("%w: %q is not a live node of the service", ErrUnknownNode, node)
	}
	return nil
}

// Unpin removes key's pin and reports whether it had one.
func Unpin(ctx context.Context, client rueidis.Client, svc Service, key string) (bool, error) {
	k, err := svc.keys()
	if err != nil {
		return false, err
	}
	had, err := newStore(client, k).unpin(ctx, key)
	if err != nil {
		return false, fmt.Errorf("%w: unpin %q: %w", ErrRedis, key, err)
	}
	return had, nil
}

// unplaceableShown is how many unplaceable keys the leader records by name.
const unplaceableShown = 100

// unplaceableRecord is what the leader records of unplaceable keys.
type unplaceableRecord struct {
	N    int      `json:"n"`
	Keys []string `json:"k"`
}

// recordUnplaceable records, logs and counts the keys no live node may
// take, when they changed.
func (e *elector) recordUnplaceable(ctx context.Context, st *leaderMemory, keys []string) {
	e.tel.setUnplaceable(len(keys))
	sig := strings.Join(keys, "\x00")
	if st.recordedUnplaceable != nil && *st.recordedUnplaceable == sig {
		return
	}
	if len(keys) > 0 {
		e.log.Warn("keys no live node may take: not running anywhere", "count", len(keys), "keys", keys[:min(len(keys), 10)])
	}
	ctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
	defer cancel()
	var cmd rueidis.Completed
	if len(keys) == 0 {
		cmd = e.client.B().Del().Key(e.k.unplace).Build()
	} else {
		b, _ := json.Marshal(unplaceableRecord{N: len(keys), Keys: slices.Clone(keys[:min(len(keys), unplaceableShown)])})
		cmd = e.client.B().Set().Key(e.k.unplace).Value(string(b)).Build()
	}
	if e.client.Do(ctx, cmd).Error() == nil {
		st.recordedUnplaceable = &sig
	}
}
