package dim_test

import (
	"fmt"
	"slices"

	"github.com/go-dim/dim"
)

// Balance places ten keys on three nodes, then a fourth node joins: it takes
// its share and no other key moves.
func ExampleBalance() {
	keys := []string{"k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"}
	nodes := []dim.Node{{ID: "a"}, {ID: "b"}, {ID: "c"}}

	before, err := dim.Balance(nil, keys, nodes)
	if err != nil {
		panic(err)
	}
	after, err := dim.Balance(before, keys, append(nodes, dim.Node{ID: "d"}))
	if err != nil {
		panic(err)
	}

	show := func(a dim.Assignment) {
		for _, node := range []string{"a", "b", "c", "d"} {
			var held []string
			for key, n := range a {
				if n == node {
					held = append(held, key)
				}
			}
			slices.Sort(held)
			fmt.Println(node, held)
		}
	}
	show(before)
	fmt.Println("after d joins, moved:", dim.Moves(before, after))
	show(after)
	// Output:
	// a [k1 k2 k3 k7]
	// b [k5 k8 k9]
	// c [k0 k4 k6]
	// d []
	// after d joins, moved: 2
	// a [k1 k2 k7]
	// b [k5 k8 k9]
	// c [k0 k4]
	// d [k3 k6]
}
