package bench

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestSpreadCountsNodesWithoutKeysAsZero(t *testing.T) {
	a := dim.Assignment{"a": "n1", "b": "n1", "c": "n2"}
	assert.Equal(t, 2, Spread(a, []string{"n1", "n2", "n3"}), "loads 2, 1, 0")
	assert.Equal(t, 1, Spread(a, []string{"n1", "n2"}), "loads 2, 1")
	assert.Equal(t, 0, Spread(dim.Assignment{}, nil))
	assert.Equal(t, 2, MaxLoad(a))
}

func TestJoinBoundIsTheNewNodesFloorShare(t *testing.T) {
	tests := []struct{ keys, nodes, want int }{
		{6, 3, 1},           // 6/4 = 1.5
		{10, 3, 2},          // 10/4 = 2.5
		{8, 3, 2},           // 8/4 exactly
		{10_000, 100, 99},   // 10000/101 = 99.0…
		{100_000, 1000, 99}, // 100000/1001 = 99.9…
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, JoinBound(tt.keys, tt.nodes), "%d keys, %d nodes", tt.keys, tt.nodes)
	}
}

func TestValidate(t *testing.T) {
	keys, nodes := []string{"a", "b"}, []string{"n1", "n2"}
	require.NoError(t, Validate(dim.Assignment{"a": "n1", "b": "n1"}, keys, nodes))
	assert.ErrorContains(t, Validate(dim.Assignment{"a": "n1"}, keys, nodes), "1 keys placed, want 2")
	assert.ErrorContains(t, Validate(dim.Assignment{"a": "n1", "c": "n1"}, keys, nodes), `key "b" not placed`)
	assert.ErrorContains(t, Validate(dim.Assignment{"a": "n1", "b": "n9"}, keys, nodes), `"n9", which is not a member`)
}

// moduloPlacer puts the i-th key on node i mod M, which makes every count
// easy to check by hand.
type moduloPlacer struct {
	nodes []string
}

func (p *moduloPlacer) Assign(keys []string) dim.Assignment {
	a := make(dim.Assignment, len(keys))
	for i, k := range keys {
		a[k] = p.nodes[i%len(p.nodes)]
	}
	return a
}

func (p *moduloPlacer) Join(node string) { p.nodes = append(p.nodes, node) }

func (p *moduloPlacer) Leave(node string) {
	p.nodes = slices.DeleteFunc(p.nodes, func(n string) bool { return n == node })
}

func TestMeasureCountsLoadsAndMovesOfATinyPlacement(t *testing.T) {
	sc := NewScenario(Size{Keys: 6, Nodes: 3})
	require.Equal(t, "node-00003", sc.Joining)
	require.Equal(t, "node-00001", sc.Leaving)
	modulo := Approach{Name: "modulo", New: func(nodes []string) Placer { return &moduloPlacer{nodes: nodes} }}

	row, err := Measure(modulo, sc, 3)
	require.NoError(t, err)

	// First:  k0 n0, k1 n1, k2 n2, k3 n0, k4 n1, k5 n2 — loads 2, 2, 2.
	// Join:   k0 n0, k1 n1, k2 n2, k3 n3, k4 n0, k5 n1 — k3, k4, k5 move.
	// Leave:  k0 n0, k1 n2, k2 n0, k3 n2, k4 n0, k5 n2 — k1..k4 move; n1
	// held k1 and k4.
	assert.Equal(t, 0, row.Spread)
	assert.InDelta(t, 1.0, row.Peak, 1e-9)
	assert.Equal(t, 3, row.JoinMoves)
	assert.Equal(t, 1, row.JoinBound, "6 keys on 4 nodes: ⌊1.5⌋")
	assert.Equal(t, 4, row.LeaveMoves)
	assert.Equal(t, 2, row.LeaveBound)
	assert.Equal(t, Size{Keys: 6, Nodes: 3}, row.Size)
	assert.Positive(t, row.Fresh.Max)
	assert.LessOrEqual(t, row.Fresh.Min, row.Fresh.Median)
	assert.LessOrEqual(t, row.Fresh.Median, row.Fresh.Max)
}

func TestMeasureSpreadOfAnUnevenPlacement(t *testing.T) {
	sc := NewScenario(Size{Keys: 4, Nodes: 3})
	allOnFirst := Approach{Name: "first", New: func(nodes []string) Placer { return &firstPlacer{nodes: nodes} }}
	row, err := Measure(allOnFirst, sc, 1)
	require.NoError(t, err)
	assert.Equal(t, 4, row.Spread, "loads 4, 0, 0")
	assert.InDelta(t, 3.0, row.Peak, 1e-9, "4 keys on one node, mean 4/3")
	assert.Equal(t, 0, row.JoinMoves)
	assert.Equal(t, 0, row.LeaveMoves, "the middle node held nothing")
	assert.Equal(t, 0, row.LeaveBound)
}

// firstPlacer puts every key on the first node.
type firstPlacer struct{ nodes []string }

func (p *firstPlacer) Assign(keys []string) dim.Assignment {
	a := make(dim.Assignment, len(keys))
	for _, k := range keys {
		a[k] = p.nodes[0]
	}
	return a
}

func (p *firstPlacer) Join(node string) { p.nodes = append(p.nodes, node) }
func (p *firstPlacer) Leave(node string) {
	p.nodes = slices.DeleteFunc(p.nodes, func(n string) bool { return n == node })
}

// lossyPlacer forgets the last key after a join.
type lossyPlacer struct{ moduloPlacer }

func (p *lossyPlacer) Assign(keys []string) dim.Assignment {
	a := p.moduloPlacer.Assign(keys)
	if len(p.nodes) == 4 {
		delete(a, keys[len(keys)-1])
	}
	return a
}

func TestMeasureRejectsAPlacementThatLosesAKey(t *testing.T) {
	lossy := Approach{Name: "lossy", New: func(nodes []string) Placer { return &lossyPlacer{moduloPlacer{nodes: nodes}} }}
	_, err := Measure(lossy, NewScenario(Size{Keys: 6, Nodes: 3}), 1)
	assert.ErrorContains(t, err, "lossy, 6/3: join: 5 keys placed, want 6")
}

func TestMeasureReportsASkippedSize(t *testing.T) {
	a := Approach{
		Name: "never",
		New:  func([]string) Placer { panic("must not be built") },
		Skip: func(Size) string { return "too slow" },
	}
	row, err := Measure(a, NewScenario(Size{Keys: 10, Nodes: 2}), 1)
	require.NoError(t, err)
	assert.Equal(t, Row{Approach: "never", Size: Size{Keys: 10, Nodes: 2}, Skipped: "too slow"}, row)
	assert.Contains(t, Markdown([]Row{row}), "| never | 10/2 | skipped: too slow |")
}

// TestDimIsBalancedAndMovesTheMinimum is the claim BENCHMARKS.md makes for
// dim's row, on an even and an uneven size.
func TestDimIsBalancedAndMovesTheMinimum(t *testing.T) {
	dimApproach := Approaches()[0]
	require.Equal(t, "dim.Balance", dimApproach.Name)
	for _, s := range []Size{{Keys: 10_000, Nodes: 100}, {Keys: 1003, Nodes: 7}, {Keys: 5, Nodes: 9}} {
		t.Run(s.String(), func(t *testing.T) {
			row, err := Measure(dimApproach, NewScenario(s), 1)
			require.NoError(t, err)
			assert.LessOrEqual(t, row.Spread, 1)
			assert.Equal(t, row.JoinBound, row.JoinMoves)
			assert.Equal(t, row.LeaveBound, row.LeaveMoves)
		})
	}
}

func TestEveryApproachPlacesEveryKeyOnAMember(t *testing.T) {
	sc := NewScenario(Size{Keys: 2000, Nodes: 20})
	for _, a := range Approaches() {
		t.Run(a.Name, func(t *testing.T) {
			row, err := Measure(a, sc, 1)
			require.NoError(t, err)
			require.Empty(t, row.Skipped)
			assert.Equal(t, 2000/21, row.JoinBound)
			if strings.HasPrefix(a.Name, "ring:") || strings.HasPrefix(a.Name, "rendezvous:") {
				// Only the leaving node's keys move, and on a join only
				// keys that go to the new node.
				assert.Equal(t, row.LeaveBound, row.LeaveMoves)
			}
		})
	}
}

func TestBoundedLoadsRespectsItsCapacity(t *testing.T) {
	keys, nodes := Keys(1000), Nodes(16)
	p := &boundedPlacer{nodes: nodes, eps: 0.25}
	a := p.Assign(keys)
	require.NoError(t, Validate(a, keys, nodes))
	assert.LessOrEqual(t, MaxLoad(a), 79, "⌈1.25·1000/16⌉ = ⌈78.125⌉")

	shuffled := slices.Clone(keys)
	slices.Reverse(shuffled)
	assert.Equal(t, a, p.Assign(shuffled), "the placement order is fixed by the keys, not the input order")
}

func TestJumpLeaveModels(t *testing.T) {
	nodes := []string{"a", "b", "c", "d"}
	renumber := &jumpPlacer{nodes: slices.Clone(nodes)}
	renumber.Leave("b")
	assert.Equal(t, []string{"a", "c", "d"}, renumber.nodes)

	fill := &jumpPlacer{nodes: slices.Clone(nodes), fillGap: true}
	fill.Leave("b")
	assert.Equal(t, []string{"a", "d", "c"}, fill.nodes)
}

func TestSummariseTakesTheMedian(t *testing.T) {
	ms := time.Millisecond
	assert.Equal(t, Timing{Median: 2 * ms, Min: ms, Max: 9 * ms}, summarise([]time.Duration{9 * ms, ms, 2 * ms}))
	assert.Equal(t, Timing{Median: 3 * ms, Min: ms, Max: 9 * ms}, summarise([]time.Duration{9 * ms, ms, 2 * ms, 4 * ms}))
	assert.Equal(t, Timing{}, summarise(nil))
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want Size
	}{
		{"10k/100", Size{Keys: 10_000, Nodes: 100}},
		{"100k/1k", Size{Keys: 100_000, Nodes: 1_000}},
		{"1M/10k", Size{Keys: 1_000_000, Nodes: 10_000}},
		{"1500/7", Size{Keys: 1500, Nodes: 7}},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		require.NoError(t, err, tt.in)
		assert.Equal(t, tt.want, got)
		assert.Equal(t, tt.in, got.String())
	}
	for _, bad := range []string{"", "10k", "k/10", "10/1", "-5/3", "10/x"} {
		_, err := ParseSize(bad)
		assert.Error(t, err, bad)
	}
}
