package dim

import (
	"context"
	"fmt"
	"maps"
	"testing"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStoredPlacementsChangeByDifference(t *testing.T) {
	zoneA := Placement{Require: map[string]string{"zone": "a"}}
	spread := Placement{Spread: "zone", Group: "t1"}
	tbl := newPlacingTable()

	w := tbl.update(map[string]Placement{"k1": zoneA, "k2": zoneA, "k3": spread, "k4": {}, "k5": {Cost: 1}})
	assert.Len(t, w.classes, 2, "two distinct placements; default ones are not stored")
	assert.Equal(t, map[string]int{"k1": w.set["k1"], "k2": w.set["k1"], "k3": w.set["k3"]}, w.set)
	assert.NotEqual(t, w.set["k1"], w.set["k3"])
	assert.Empty(t, w.del)
	assert.Empty(t, w.drop)

	// The same placements again, from new maps: nothing to write. A cost
	// of 1 is the default cost.
	same := map[string]Placement{"k1": {Require: map[string]string{"zone": "a"}, Cost: 1}, "k2": zoneA, "k3": spread}
	assert.True(t, tbl.update(same).empty())

	// k2 loses its placement, k3 gets a cost: the spread class goes.
	spreadClass := w.set["k3"]
	w = tbl.update(map[string]Placement{"k1": zoneA, "k3": {Spread: "zone", Group: "t1", Cost: 4}})
	assert.Equal(t, []string{"k2"}, w.del)
	assert.Equal(t, []int{spreadClass}, w.drop)
	require.Len(t, w.classes, 1)
	for n, r := range w.classes {
		assert.Equal(t, placingRecord{Spread: "zone", Group: "t1", Cost: 4}, r)
		assert.Equal(t, map[string]int{"k3": n}, w.set)
		assert.NotEqual(t, spreadClass, n, "class numbers are not reused while a reader may hold one")
	}
	assert.Equal(t, map[string]Placement{"k1": zoneA, "k3": {Spread: "zone", Group: "t1", Cost: 4}}, tbl.placements())

	// Nothing placed any more: everything goes.
	w = tbl.update(nil)
	assert.Equal(t, []string{"k1", "k3"}, w.del)
	assert.Len(t, w.drop, 2)
	assert.Empty(t, tbl.placements())
}

func TestPlacingHashSumsToAChecksumOfTheTable(t *testing.T) {
	sum := func(m map[string]Placement) uint64 {
		var s uint64
		for key, p := range m {
			s += placingHash(key, p)
		}
		return s
	}
	base := map[string]Placement{
		"k1": {Require: map[string]string{"zone": "a", "disk": "ssd"}},
		"k2": {Spread: "zone", Group: "g"},
		"k3": {Cost: 3},
	}
	same := map[string]Placement{
		"k3": {Cost: 3},
		"k2": {Spread: "zone", Group: "g", Cost: 1},
		"k1": {Require: map[string]string{"disk": "ssd", "zone": "a"}},
	}
	assert.Equal(t, sum(base), sum(same))
	for name, changed := range map[string]map[string]Placement{
		"a requirement":              {"k1": {Require: map[string]string{"zone": "b", "disk": "ssd"}}},
		"labels swapped":             {"k1": {Require: map[string]string{"zone": "ssd", "disk": "a"}}},
		"a group":                    {"k2": {Spread: "zone", Group: "h"}},
		"spread and group":           {"k2": {Spread: "g", Group: "zone"}},
		"a cost":                     {"k3": {Cost: 4}},
		"a preference":               {"k3": {Cost: 3, Prefer: map[string]string{"zone": "a"}}},
		"preference for requirement": {"k1": {Prefer: map[string]string{"zone": "a", "disk": "ssd"}}},
		"placements swapped":         {"k1": base["k2"], "k2": base["k1"]},
		"a key more":                 {"k4": {Cost: 2}},
	} {
		m := maps.Clone(base)
		maps.Copy(m, changed)
		assert.NotEqual(t, sum(base), sum(m), name)
	}
}

func TestStoredPlacementsReadBackAsWritten(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	client := redistest.Start(t).Client(t)
	ctx := context.Background()
	k := newKeyspace("", "svc")
	want := map[string]Placement{}
	for i := range 2500 { // more than one chunk and one scan page
		p := Placement{Require: map[string]string{"zone": fmt.Sprint("abc"[i%3 : i%3+1])}}
		if i%2 == 0 {
			p = Placement{Spread: "zone", Group: fmt.Sprint("t", i%5), Cost: 1 + i%3}
		}
		if i%7 == 0 {
			p.Prefer = map[string]string{"disk": "ssd"}
		}
		want[fmt.Sprintf("key-%04d", i)] = p
	}
	write := func(tbl *placingTable, want map[string]Placement) {
		t.Helper()
		for _, r := range client.DoMulti(ctx, tbl.update(want).cmds(client.B(), k)...) {
			require.NoError(t, r.Error())
		}
	}
	normal := func(m map[string]Placement) map[string]Placement {
		out := map[string]Placement{}
		for key, p := range m {
			if p.Cost == 1 {
				p.Cost = 0
			}
			out[key] = p
		}
		return out
	}
	write(newPlacingTable(), want)
	read, err := readPlacing(ctx, client, k, nil)
	require.NoError(t, err)
	assert.Equal(t, normal(want), normal(read.placements()))
	// What a new leader reads is what it would write: nothing to do.
	assert.True(t, read.update(want).empty())

	// A smaller set, written by difference, reads back as such.
	for key := range want {
		if key >= "key-1000" {
			delete(want, key)
		}
	}
	write(read, want)
	read, err = readPlacing(ctx, client, k, nil)
	require.NoError(t, err)
	assert.Equal(t, normal(want), normal(read.placements()))
	n, err := client.Do(ctx, client.B().Hlen().Key(k.pclasses).Build()).AsInt64()
	require.NoError(t, err)
	distinct := map[string]bool{}
	for _, p := range want {
		distinct[string(placementSig(nil, p))] = true
	}
	assert.Equal(t, int64(len(distinct)), n, "one class per distinct placement left, none other")
}

// BenchmarkStoredPlacements is what the leader spends on storing 100k
// keys' placements of the ten classes of BenchmarkBalanceWith, to compare
// with it: at every rebalance the checksum, and when it changed the
// difference with what is stored.
func BenchmarkStoredPlacements(b *testing.B) {
	want := zonedBenchConstraints(balanceBenchKeys(100_000)).Keys
	b.Run("checksum", func(b *testing.B) {
		b.ReportAllocs()
		var sum uint64
		for b.Loop() {
			sum = 0
			for key, p := range want {
				sum += placingHash(key, p)
			}
		}
		if sum == 0 {
			b.Fatal("no checksum")
		}
	})
	b.Run("difference", func(b *testing.B) {
		tbl := newPlacingTable()
		tbl.update(want)
		b.ReportAllocs()
		for b.Loop() {
			if !tbl.update(want).empty() {
				b.Fatal("changed")
			}
		}
	})
}
