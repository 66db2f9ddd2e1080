package dim

import (
	"fmt"
	"slices"
	"testing"
)

// balanceBenchSizes are the (keys, nodes) pairs the targets in BENCHMARKS.md are
// stated for. nodes is the membership before a join or leave.
var balanceBenchSizes = []struct {
	name  string
	keys  int
	nodes int
}{
	{"keys=10k/nodes=100", 10_000, 100},
	{"keys=100k/nodes=1k", 100_000, 1_000},
	{"keys=1M/nodes=10k", 1_000_000, 10_000},
}

// BenchmarkBalance times one Balance call in the three situations a leader
// meets: a first placement, one node joining a balanced assignment, and one
// node leaving it. Inputs, including the previous assignment, are built
// before the timed loop; moves/op and spread/op describe the result.
func BenchmarkBalance(b *testing.B) {
	for _, size := range balanceBenchSizes {
		keys := balanceBenchKeys(size.keys)
		nodes := balanceBenchNodes(size.nodes + 1)
		base, joined := nodes[:size.nodes], nodes
		// A middle node leaves, so neither end of the ID order is favoured.
		left := slices.Delete(slices.Clone(base), size.nodes/2, size.nodes/2+1)

		b.Run(size.name+"/fresh", func(b *testing.B) {
			runBalanceBench(b, nil, keys, base)
		})
		b.Run(size.name+"/join", func(b *testing.B) {
			runBalanceBench(b, mustBalanceBench(b, nil, keys, base), keys, joined)
		})
		b.Run(size.name+"/leave", func(b *testing.B) {
			runBalanceBench(b, mustBalanceBench(b, nil, keys, base), keys, left)
		})
	}
}

func runBalanceBench(b *testing.B, prev Assignment, keys []string, nodes []Node) {
	b.ReportAllocs()
	var (
		next Assignment
		err  error
	)
	for b.Loop() {
		next, err = Balance(prev, keys, nodes)
	}
	if err != nil {
		b.Fatal(err)
	}
	loads := next.Loads()
	lo, hi := len(keys), 0
	for _, n := range nodes {
		lo, hi = min(lo, loads[n.ID]), max(hi, loads[n.ID])
	}
	b.ReportMetric(float64(Moves(prev, next)), "moves/op")
	b.ReportMetric(float64(hi-lo), "spread/op")
}

func mustBalanceBench(b *testing.B, prev Assignment, keys []string, nodes []Node) Assignment {
	b.Helper()
	a, err := Balance(prev, keys, nodes)
	if err != nil {
		b.Fatal(err)
	}
	return a
}

func balanceBenchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("config-%07d", i)
	}
	return keys
}

func balanceBenchNodes(n int) []Node {
	nodes := make([]Node, n)
	for i := range nodes {
		nodes[i] = Node{ID: fmt.Sprintf("node-%05d", i)}
	}
	return nodes
}
