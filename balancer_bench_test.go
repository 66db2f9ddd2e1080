package dim

import (
	"fmt"
	"slices"
	"strconv"
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

// BenchmarkBalanceWith times BalanceWith on the constrained case of issue
// 15: nodes in 3 zones, keys in 10 constraint classes (a third require a
// zone, the rest any), all spread over the zones in groups of their
// class; a first placement, a join (into zone a) and a leave (a middle
// node). Alongside, the unconstrained sizes of BenchmarkBalance through
// BalanceWith with an empty Constraints, which is Balance.
func BenchmarkBalanceWith(b *testing.B) {
	for _, size := range balanceBenchSizes[1:] {
		keys := balanceBenchKeys(size.keys)
		nodes := zonedBenchNodes(size.nodes + 1)
		base, joined := nodes[:size.nodes], nodes
		left := slices.Delete(slices.Clone(base), size.nodes/2, size.nodes/2+1)
		c := zonedBenchConstraints(keys)
		fresh := mustBalanceWithBench(b, nil, keys, base, c)
		b.Run(size.name+"/zones=3/classes=10/fresh", func(b *testing.B) {
			runBalanceWithBench(b, nil, keys, base, c)
		})
		b.Run(size.name+"/zones=3/classes=10/join", func(b *testing.B) {
			runBalanceWithBench(b, fresh, keys, joined, c)
		})
		b.Run(size.name+"/zones=3/classes=10/leave", func(b *testing.B) {
			runBalanceWithBench(b, fresh, keys, left, c)
		})
		// Classes 3 to 5 prefer zone a, b or c besides.
		pc := zonedBenchConstraints(keys)
		for i, k := range keys {
			if class := i % 10; class >= 3 && class < 6 {
				p := pc.Keys[k]
				p.Prefer = map[string]string{"zone": string(rune('a' + class - 3))}
				pc.Keys[k] = p
			}
		}
		preferred := mustBalanceWithBench(b, nil, keys, base, pc)
		b.Run(size.name+"/zones=3/classes=10/prefer/join", func(b *testing.B) {
			runBalanceWithBench(b, preferred, keys, joined, pc)
		})
	}
}

func runBalanceWithBench(b *testing.B, prev Assignment, keys []string, nodes []Node, c Constraints) {
	b.ReportAllocs()
	var (
		next *Balanced
		err  error
	)
	for b.Loop() {
		next, err = BalanceWith(prev, keys, nodes, c)
	}
	if err != nil {
		b.Fatal(err)
	}
	if len(next.Unplaceable) > 0 {
		b.Fatalf("%d keys unplaceable", len(next.Unplaceable))
	}
	loads := next.Assignment.Loads()
	lo, hi := len(keys), 0
	for _, n := range nodes {
		lo, hi = min(lo, loads[n.ID]), max(hi, loads[n.ID])
	}
	b.ReportMetric(float64(Moves(prev, next.Assignment)), "moves/op")
	b.ReportMetric(float64(hi-lo), "spread/op")
}

func mustBalanceWithBench(b *testing.B, prev Assignment, keys []string, nodes []Node, c Constraints) Assignment {
	b.Helper()
	a, err := BalanceWith(prev, keys, nodes, c)
	if err != nil {
		b.Fatal(err)
	}
	return a.Assignment
}

// zonedBenchNodes labels node i with zone "a", "b" or "c" by i mod 3.
func zonedBenchNodes(n int) []Node {
	nodes := balanceBenchNodes(n)
	for i := range nodes {
		nodes[i].Labels = map[string]string{"zone": string(rune('a' + i%3))}
	}
	return nodes
}

// zonedBenchConstraints puts key i in class i mod 10: classes 0–2 require
// zone a, b or c, and every class spreads over the zones as one group.
func zonedBenchConstraints(keys []string) Constraints {
	c := Constraints{Keys: make(map[string]Placement, len(keys))}
	for i, k := range keys {
		class := i % 10
		p := Placement{Spread: "zone", Group: strconv.Itoa(class)}
		if class < 3 {
			p.Require = map[string]string{"zone": string(rune('a' + class))}
		}
		c.Keys[k] = p
	}
	return c
}
