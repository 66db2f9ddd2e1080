package dim_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/go-dim/dim"
	"github.com/redis/rueidis"
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

// BalanceWith places the keys of two tenants: t1's keys must stay in zone
// eu, t2's three replicas are kept on distinct nodes, and one key would
// rather run on the node with a GPU. Then zone eu's node dies: t1's keys
// have nowhere to go and are reported, and nothing else moves.
func ExampleBalanceWith() {
	nodes := []dim.Node{
		{ID: "eu-1", Labels: map[string]string{"zone": "eu"}},
		{ID: "us-1", Labels: map[string]string{"zone": "us", "gpu": "yes"}},
		{ID: "us-2", Labels: map[string]string{"zone": "us"}},
		{ID: "us-3", Labels: map[string]string{"zone": "us"}},
	}
	c := dim.Constraints{Keys: map[string]dim.Placement{
		"t1-a":   {Require: map[string]string{"zone": "eu"}},
		"t1-b":   {Require: map[string]string{"zone": "eu"}},
		"t2-r1":  {Spread: dim.LabelNode, Group: "t2"},
		"t2-r2":  {Spread: dim.LabelNode, Group: "t2"},
		"t2-r3":  {Spread: dim.LabelNode, Group: "t2"},
		"render": {Prefer: map[string]string{"gpu": "yes"}},
	}}
	keys := []string{"t1-a", "t1-b", "t2-r1", "t2-r2", "t2-r3", "render"}

	before, err := dim.BalanceWith(nil, keys, nodes, c)
	if err != nil {
		panic(err)
	}
	after, err := dim.BalanceWith(before.Assignment, keys, nodes[1:], c)
	if err != nil {
		panic(err)
	}
	for _, key := range keys {
		fmt.Printf("%-6s on %-4s then %q\n", key, before.Assignment[key], after.Assignment[key])
	}
	fmt.Println("unplaceable:", after.Unplaceable)
	// Output:
	// t1-a   on eu-1 then ""
	// t1-b   on eu-1 then ""
	// t2-r1  on us-1 then "us-1"
	// t2-r2  on us-3 then "us-3"
	// t2-r3  on us-2 then "us-2"
	// render on us-1 then "us-1"
	// unplaceable: [t1-a t1-b]
}

// Feed is the config type of the examples: one upstream to poll.
type Feed struct {
	Name string
	URL  string
}

// Conn is the instance type of the examples: a connection to a feed.
type Conn struct {
	Feed Feed
}

// waitFor polls cond for up to five seconds.
func waitFor(cond func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return false
}

// sortedKeys lists a map's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// A replica of a service with three feeds. Every replica runs the same
// code; dim gives each its share and moves work when replicas come and go.
// The example runs an in-process Redis; a deployment passes its own address.
func ExampleNew() {
	redis, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer redis.Close()

	getConfig := func(ctx context.Context) ([]Feed, error) {
		return []Feed{{"prices", "wss://a.example"}, {"news", "wss://b.example"}, {"weather", "wss://c.example"}}, nil
	}
	connect := func(ctx context.Context, f Feed) (*Conn, error) {
		// ctx lives as long as the instance: a worker started here stops
		// when dim cancels it.
		return &Conn{Feed: f}, nil
	}
	ping := func(ctx context.Context, c *Conn) error { return nil }
	var mu sync.Mutex
	var closed []string
	closeConn := func(ctx context.Context, c *Conn) error {
		mu.Lock()
		defer mu.Unlock()
		closed = append(closed, c.Feed.Name)
		return nil
	}

	m, err := dim.New(getConfig, connect,
		dim.WithService("feeds"),
		dim.WithRedis(rueidis.ClientOption{InitAddress: []string{redis.Addr()}, DisableCache: true}),
		dim.WithKey(func(f Feed) string { return f.Name }),
		dim.WithHealthcheck(ping),
		dim.WithDisconnect(closeConn),
		// Short leases keep the example quick; the defaults suit production.
		dim.WithNodeTTL(500*time.Millisecond),
		dim.WithHeartbeat(100*time.Millisecond),
	)
	if err != nil {
		panic(err)
	}
	if err := m.Start(context.Background()); err != nil {
		panic(err)
	}
	waitFor(func() bool { return len(m.Instances()) == 3 })
	fmt.Println("running:", sortedKeys(m.Instances()), "leader:", m.IsLeader())

	if err := m.Stop(context.Background()); err != nil {
		panic(err)
	}
	slices.Sort(closed)
	fmt.Println("closed:", closed)
	// Output:
	// running: [news prices weather] leader: true
	// closed: [news prices weather]
}

// With a key, a config keeps its identity when its content changes: the
// instance is replaced in place. Without one, dim keys a config by a hash of
// its JSON, so any change makes a new instance.
func ExampleWithKey() {
	redis, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer redis.Close()

	var mu sync.Mutex
	url := "wss://old.example"
	getConfig := func(ctx context.Context) ([]Feed, error) {
		mu.Lock()
		defer mu.Unlock()
		return []Feed{{Name: "prices", URL: url}}, nil
	}
	connect := func(ctx context.Context, f Feed) (*Conn, error) {
		fmt.Println("connect", f.Name, f.URL)
		return &Conn{Feed: f}, nil
	}
	closeConn := func(ctx context.Context, c *Conn) error {
		fmt.Println("close", c.Feed.Name, c.Feed.URL)
		return nil
	}
	m, err := dim.New(getConfig, connect,
		dim.WithService("keyed"),
		dim.WithRedis(rueidis.ClientOption{InitAddress: []string{redis.Addr()}, DisableCache: true}),
		dim.WithKey(func(f Feed) string { return f.Name }),
		dim.WithDisconnect(closeConn),
		dim.WithNodeTTL(500*time.Millisecond),
		dim.WithHeartbeat(100*time.Millisecond),
	)
	if err != nil {
		panic(err)
	}
	if err := m.Start(context.Background()); err != nil {
		panic(err)
	}
	defer m.Stop(context.Background())
	waitFor(func() bool { return len(m.Instances()) == 1 })

	mu.Lock()
	url = "wss://new.example"
	mu.Unlock()
	_ = m.Rebalance(context.Background()) // or wait for the config refresh schedule
	waitFor(func() bool { return m.Instances()["prices"].Feed.URL == "wss://new.example" })
	// Output:
	// connect prices wss://old.example
	// close prices wss://old.example
	// connect prices wss://new.example
	// close prices wss://new.example
}

// Stop hands the replica's instances to the others and returns once they
// are disconnected, or when ctx ends.
func ExampleManager_Stop() {
	redis, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer redis.Close()

	m, err := dim.New(
		func(ctx context.Context) ([]Feed, error) { return []Feed{{Name: "prices"}}, nil },
		func(ctx context.Context, f Feed) (*Conn, error) { return &Conn{Feed: f}, nil },
		dim.WithService("stopping"),
		dim.WithRedis(rueidis.ClientOption{InitAddress: []string{redis.Addr()}, DisableCache: true}),
		dim.WithDisconnect(func(ctx context.Context, c *Conn) error {
			fmt.Println("closing", c.Feed.Name)
			return nil
		}),
		dim.WithNodeTTL(500*time.Millisecond),
		dim.WithHeartbeat(100*time.Millisecond),
	)
	if err != nil {
		panic(err)
	}
	if err := m.Start(context.Background()); err != nil {
		panic(err)
	}
	waitFor(func() bool { return len(m.Instances()) == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = m.Stop(ctx)
	fmt.Println("stopped:", err, "running:", len(m.Instances()))
	fmt.Println("again:", m.Stop(ctx))
	// Output:
	// closing prices
	// stopped: <nil> running: 0
	// again: dim: stopped
}

// With WithPrepare, a key that moves between live replicas is prepared on
// its new replica while the old instance still runs: here replica a is
// drained, b prepares the feed, a closes it, and b activates it with the
// claim's fencing token.
func ExampleWithPrepare() {
	redis, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer redis.Close()

	replica := func(id string) *dim.Manager[Feed, *Conn] {
		m, err := dim.New(
			func(ctx context.Context) ([]Feed, error) { return []Feed{{Name: "prices"}}, nil },
			func(ctx context.Context, f Feed) (*Conn, error) {
				fmt.Println(id+": connect", f.Name)
				return &Conn{Feed: f}, nil
			},
			dim.WithService("prepared"),
			dim.WithNodeID(id),
			dim.WithRedis(rueidis.ClientOption{InitAddress: []string{redis.Addr()}, DisableCache: true}),
			dim.WithPrepare(
				func(ctx context.Context, f Feed) (*Conn, error) {
					fmt.Println(id+": prepare", f.Name) // log in, warm up; no work yet
					return &Conn{Feed: f}, nil
				},
				func(ctx context.Context, c *Conn) error {
					_, ok := dim.FencingToken(ctx)
					fmt.Println(id+": activate", c.Feed.Name, "with a token:", ok)
					return nil
				}, 5*time.Second),
			dim.WithDisconnect(func(ctx context.Context, c *Conn) error {
				fmt.Println(id+": close", c.Feed.Name)
				return nil
			}),
			dim.WithNodeTTL(500*time.Millisecond),
			dim.WithHeartbeat(100*time.Millisecond),
		)
		if err != nil {
			panic(err)
		}
		if err := m.Start(context.Background()); err != nil {
			panic(err)
		}
		return m
	}
	a := replica("a")
	waitFor(func() bool { return len(a.Instances()) == 1 })
	b := replica("b")
	waitFor(func() bool { // b's first heartbeat makes it a node that takes keys
		st, err := b.Status(context.Background())
		return err == nil && len(st.Nodes) == 2 && st.Nodes[1].State == "active"
	})
	if _, err := a.Drain(context.Background(), time.Minute); err != nil {
		panic(err)
	}
	waitFor(func() bool { return len(b.Instances()) == 1 })
	_ = a.Stop(context.Background())
	_ = b.Stop(context.Background())
	// Output:
	// a: connect prices
	// b: prepare prices
	// a: close prices
	// b: activate prices with a token: true
	// b: close prices
}

// A program that runs no node reads a service as dimctl does, naming it
// with a dim.Service.
func ExampleReadStatus() {
	redis, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer redis.Close()
	addr := rueidis.ClientOption{InitAddress: []string{redis.Addr()}, DisableCache: true}

	getConfig := func(ctx context.Context) ([]string, error) { return []string{"a", "b"}, nil }
	create := func(ctx context.Context, name string) (string, error) { return name, nil }
	m, err := dim.New(getConfig, create, dim.WithService("feeds"), dim.WithRedis(addr), dim.WithNodeID("n1"),
		dim.WithKey(func(name string) string { return name }),
		dim.WithNodeTTL(500*time.Millisecond), dim.WithHeartbeat(100*time.Millisecond))
	if err != nil {
		panic(err)
	}
	if err := m.Start(context.Background()); err != nil {
		panic(err)
	}
	waitFor(func() bool { return len(m.Instances()) == 2 })

	client, err := rueidis.NewClient(addr)
	if err != nil {
		panic(err)
	}
	defer client.Close()
	var st *dim.Status
	waitFor(func() bool {
		st, err = dim.ReadStatus(context.Background(), client, dim.Service{Name: "feeds"})
		return err == nil && len(st.Owners) == 2
	})
	fmt.Println("leader:", st.Leader, "assignment:", st.Assignment)

	_, err = dim.ReadStatus(context.Background(), client, dim.Service{Name: "nobody"})
	fmt.Println(errors.Is(err, dim.ErrUnknownService))
	if err := m.Stop(context.Background()); err != nil {
		panic(err)
	}
	// Output:
	// leader: n1 assignment: map[a:n1 b:n1]
	// true
}
