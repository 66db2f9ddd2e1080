package dim

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"maps"
	"math/bits"
	"slices"
	"strconv"

	"github.com/redis/rueidis"
)

// The per-key placements the leader balanced with, stored for Plan and
// Explain, which have no configs: the distinct placements ("classes") in
// <p>:pclasses, number → JSON, and each key with a placement other than
// the zero value in <p>:placing, key → class number. Keys without a
// placement have no entry, so a service without WithPlacement stores
// nothing, and 100k keys of ten classes store ten small JSON values and
// 100k short numbers. The leader writes the difference from what it last
// stored, only when the placements change: nothing in a steady service.

// placingRecord is one class of placements as stored.
type placingRecord struct {
	Require map[string]string `json:"r,omitempty"`
	Spread  string            `json:"s,omitempty"`
	Group   string            `json:"g,omitempty"`
	Cost    int               `json:"c,omitempty"`
	Prefer  map[string]string `json:"p,omitempty"`
}

// placement is r as a Placement: the same fields, in another encoding.
func (r placingRecord) placement() Placement { return Placement(r) }

// placingChunk bounds the fields one HSET or HDEL of the stored placements
// carries.
const placingChunk = 1000

// placementSig appends a canonical text of p to buf: equal for placements
// that BalanceWith treats alike (a cost of 0 is 1).
func placementSig(buf []byte, p Placement) []byte {
	buf = appendLabelSig(buf, p.Require)
	buf = append(buf, '|')
	buf = appendStr(appendStr(buf, p.Spread), p.Group)
	buf = strconv.AppendInt(append(buf, '|'), int64(max(p.Cost, 1)), 10)
	return appendLabelSig(append(buf, '|'), p.Prefer)
}

// isDefault reports whether p places a key like the zero Placement.
func isDefault(p Placement) bool {
	return len(p.Require) == 0 && p.Spread == "" && p.Group == "" && p.Cost <= 1 && len(p.Prefer) == 0
}

// samePlacement reports whether a and b place a key alike.
func samePlacement(a, b Placement) bool {
	return a.Spread == b.Spread && a.Group == b.Group && max(a.Cost, 1) == max(b.Cost, 1) && maps.Equal(a.Require, b.Require) &&
		maps.Equal(a.Prefer, b.Prefer)
}

// placingSeed seeds placingHash: checksums are compared within a process.
var placingSeed = maphash.MakeSeed()

// placingHash hashes a key and its placement; summed over the keys, it is a
// checksum of the placements that does not depend on their order, which
// tells the leader without a lookup per key that nothing changed.
func placingHash(key string, p Placement) uint64 {
	h := maphash.String(placingSeed, p.Spread) ^ bits.RotateLeft64(maphash.String(placingSeed, p.Group), 21) ^
		uint64(max(p.Cost, 1))*0x9e3779b97f4a7c15
	for name, value := range p.Require {
		h += bits.RotateLeft64(maphash.String(placingSeed, name), 43) ^ maphash.String(placingSeed, value)
	}
	for name, value := range p.Prefer {
		h += bits.RotateLeft64(maphash.String(placingSeed, name), 13) ^ bits.RotateLeft64(maphash.String(placingSeed, value), 29)
	}
	// splitmix64's finaliser over both.
	z := maphash.String(placingSeed, key) ^ bits.RotateLeft64(h, 7)
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// placingTable is the stored placements as the leader knows them.
type placingTable struct {
	keys    map[string]int        // key → class number
	bySig   map[string]int        // class signature → number
	classes map[int]Placement     // number → class
	sigs    map[int]string        // number → signature
	next    int                   // the next free class number
	sum     uint64                // placingHash summed over the keys written
	gen     string                // the record's generation when it was read
	raw     map[int]placingRecord // number → as stored, for writing
}

func newPlacingTable() *placingTable {
	return &placingTable{keys: map[string]int{}, bySig: map[string]int{}, classes: map[int]Placement{},
		sigs: map[int]string{}, raw: map[int]placingRecord{}, next: 1}
}

// addClass files class n; a signature stored twice keeps the first number.
func (t *placingTable) addClass(n int, p Placement) {
	sig := string(placementSig(nil, p))
	if _, ok := t.bySig[sig]; !ok {
		t.bySig[sig] = n
	}
	t.classes[n], t.sigs[n] = p, sig
	r := placingRecord(p)
	if r.Cost <= 1 {
		r.Cost = 0
	}
	t.raw[n] = r
	t.next = max(t.next, n+1)
}

// placements returns every stored key's placement.
func (t *placingTable) placements() map[string]Placement {
	out := make(map[string]Placement, len(t.keys))
	for key, n := range t.keys {
		if p, ok := t.classes[n]; ok {
			out[key] = p
		}
	}
	return out
}

// placingWrites is what makes the stored placements the wanted ones.
type placingWrites struct {
	classes map[int]placingRecord // classes to add
	set     map[string]int        // keys to set
	del     []string              // keys to remove
	drop    []int                 // classes no key uses any more
}

func (w *placingWrites) empty() bool {
	return len(w.classes) == 0 && len(w.set) == 0 && len(w.del) == 0 && len(w.drop) == 0
}

// update changes t to want, the placements of the keys (default ones are
// left out), and returns the writes that do the same in Redis.
func (t *placingTable) update(want map[string]Placement) *placingWrites {
	w := &placingWrites{classes: map[int]placingRecord{}, set: map[string]int{}}
	used := make(map[int]bool, len(t.classes))
	var buf []byte
	kept := 0 // stored keys that keep an entry
	for key, p := range want {
		if isDefault(p) {
			continue
		}
		// Most keys keep their class: compare with it before building a
		// signature.
		old, stored := t.keys[key]
		if stored {
			kept++
			if c, ok := t.classes[old]; ok && samePlacement(c, p) {
				used[old] = true
				continue
			}
		}
		buf = placementSig(buf[:0], p)
		n, ok := t.bySig[string(buf)]
		if !ok {
			n = t.next
			t.addClass(n, p)
			w.classes[n] = t.raw[n]
		}
		used[n] = true
		if !stored || old != n {
			t.keys[key] = n
			w.set[key] = n
		}
	}
	if kept < len(t.keys) {
		for key := range t.keys {
			if p, ok := want[key]; !ok || isDefault(p) {
				w.del = append(w.del, key)
			}
		}
		for _, key := range w.del {
			delete(t.keys, key)
		}
	}
	for n := range t.classes {
		if !used[n] {
			w.drop = append(w.drop, n)
		}
	}
	for _, n := range w.drop {
		if t.bySig[t.sigs[n]] == n {
			delete(t.bySig, t.sigs[n])
		}
		delete(t.classes, n)
		delete(t.sigs, n)
		delete(t.raw, n)
	}
	slices.Sort(w.del)
	slices.Sort(w.drop)
	return w
}

// cmds are the commands of w: classes first and unused classes last, so
// that a reader between them finds every key's class.
func (w *placingWrites) cmds(b rueidis.Builder, k keyspace) rueidis.Commands {
	var cmds rueidis.Commands
	if len(w.classes) > 0 {
		set := b.Hset().Key(k.pclasses).FieldValue()
		for _, n := range slices.Sorted(maps.Keys(w.classes)) {
			raw, _ := json.Marshal(w.classes[n])
			set = set.FieldValue(strconv.Itoa(n), string(raw))
		}
		cmds = append(cmds, set.Build())
	}
	keys := slices.Sorted(maps.Keys(w.set))
	for chunk := range slices.Chunk(keys, placingChunk) {
		set := b.Hset().Key(k.placing).FieldValue()
		for _, key := range chunk {
			set = set.FieldValue(key, strconv.Itoa(w.set[key]))
		}
		cmds = append(cmds, set.Build())
	}
	for chunk := range slices.Chunk(w.del, placingChunk) {
		cmds = append(cmds, b.Hdel().Key(k.placing).Field(chunk...).Build())
	}
	if len(w.drop) > 0 {
		fields := make([]string, len(w.drop))
		for i, n := range w.drop {
			fields[i] = strconv.Itoa(n)
		}
		cmds = append(cmds, b.Hdel().Key(k.pclasses).Field(fields...).Build())
	}
	return cmds
}

// readPlacing reads the stored placements, the keys page by page (HSCAN).
// A key whose class is missing (a write in progress) has none.
func readPlacing(ctx context.Context, client rueidis.Client, k keyspace, progress func()) (*placingTable, error) {
	t := newPlacingTable()
	raw, err := client.Do(ctx, client.B().Hgetall().Key(k.pclasses).Build()).AsStrMap()
	if err != nil {
		return nil, fmt.Errorf("read placement classes: %w", err)
	}
	for field, v := range raw {
		n, err := strconv.Atoi(field)
		var r placingRecord
		if err != nil || n < 1 || json.Unmarshal([]byte(v), &r) != nil {
			continue
		}
		t.addClass(n, r.placement())
	}
	var cursor uint64
	for {
		page, err := client.Do(ctx, client.B().Hscan().Key(k.placing).Cursor(cursor).Count(scanPage).Build()).AsScanEntry()
		if err != nil {
			return nil, fmt.Errorf("read placements: %w", err)
		}
		for i := 0; i+1 < len(page.Elements); i += 2 {
			if n, err := strconv.Atoi(page.Elements[i+1]); err == nil {
				t.keys[page.Elements[i]] = n
			}
		}
		if progress != nil {
			progress()
		}
		if cursor = page.Cursor; cursor == 0 {
			return t, nil
		}
	}
}

// storePlacing makes the stored placements those the leader balanced with.
// It reads what is stored once a term (and after a restore of Redis) and
// writes the difference; after that it compares checksums, computed when
// the leader reads the configs' content (its election, the refresh
// schedule, a rebalance request), and writes the difference when they
// differ: nothing at all while the placements stay as they are. A failed
// write is read again next time. Best effort, like the reasons of moves:
// Plan and Explain are worse off without it, placement is not.
func (e *elector) storePlacing(ctx context.Context, st *leaderMemory) {
	gen := e.feed.generation()
	sum := st.placementSum
	switch {
	case st.placing == nil || st.placing.gen != gen:
		rctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
		t, err := readPlacing(rctx, e.client, e.k, st.progress)
		cancel()
		if err != nil {
			e.log.Debug("reading the stored placements failed", "err", err)
			return
		}
		t.gen = gen
		st.placing = t
		if !st.placementSummed {
			sum = 0
			for key, p := range st.placements {
				sum += placingHash(key, p)
			}
		}
	case !st.placementSummed || st.placing.sum == sum:
		return
	}
	w := st.placing.update(st.placements)
	st.placing.sum = sum
	if w.empty() {
		return
	}
	// A few commands of a thousand fields at a time, each batch bounded by
	// a timeout of its own: the first write of a big service is 100
	// commands for 100k keys.
	for batch := range slices.Chunk(w.cmds(e.client.B(), e.k), 8) {
		rctx, cancel := context.WithTimeout(ctx, e.s.heartbeat)
		res := e.client.DoMulti(rctx, batch...)
		cancel()
		for _, r := range res {
			if err := r.Error(); err != nil {
				e.log.Debug("storing the placements failed", "err", err)
				st.placing = nil
				return
			}
		}
		st.progress()
	}
}
