package redistest

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// clusterNodeTimeout is the cluster-node-timeout of cluster nodes, in
// milliseconds: short, so that a killed master is marked failed in about a
// second.
const clusterNodeTimeout = 1000

// DefaultClusterTimeout bounds how long forming a cluster, or
// [Cluster.WaitReady], may take.
const DefaultClusterTimeout = 30 * time.Second

// Cluster is a Redis Cluster of masters without replicas, each a [Server]
// owned by one test. Every master holds an even share of the 16384 slots.
type Cluster struct {
	tb    testing.TB
	nodes []*Server
}

// StartCluster starts masters cluster-enabled redis-servers (at least 3, the
// least redis-cli accepts), joins them into a cluster with `redis-cli
// --cluster create`, and returns once every node reports cluster_state:ok
// and knows every other node. The options apply to every node, except that
// [WithName] is ignored: nodes are named "node0", "node1", …, and [WithTLS]
// is not supported. Like [Start], it skips under -short.
func StartCluster(tb testing.TB, masters int, opts ...Option) *Cluster {
	tb.Helper()
	if testing.Short() {
		tb.Skip(skipMessage)
	}
	if masters < 3 {
		tb.Fatalf("redistest: a cluster needs at least 3 masters, not %d", masters)
	}
	cli, err := lookPath("redis-cli")
	if err != nil {
		tb.Fatal(err)
	}
	c := &Cluster{tb: tb}
	for i := range masters {
		cfg := newConfig("", opts)
		cfg.name = "node" + strconv.Itoa(i) // WithName is ignored
		cfg.cluster = true
		c.nodes = append(c.nodes, start(tb, cfg))
	}

	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if pw := c.nodes[0].cfg.password; pw != "" {
		args = append(args, "-a", pw, "--no-auth-warning")
	}
	ctx, cancel := context.WithTimeout(context.Background(), DefaultClusterTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, tail(out, 30))
	}
	c.WaitReady()
	return c
}

// Addrs returns the addresses of the nodes, in node order.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr()
	}
	return addrs
}

// Len returns the number of nodes.
func (c *Cluster) Len() int { return len(c.nodes) }

// Node returns the i-th node, to kill, pause or restart it. A restarted node
// keeps its node ID and slots but has lost its data; call
// [Cluster.WaitReady] before relying on the cluster again.
func (c *Cluster) Node(i int) *Server { return c.nodes[i] }

// WaitReady waits until every node answers CLUSTER INFO with
// cluster_state:ok and knows all the others, failing the test after
// [DefaultClusterTimeout].
func (c *Cluster) WaitReady() {
	c.tb.Helper()
	deadline := time.Now().Add(DefaultClusterTimeout)
	ticker := time.NewTicker(20 * time.Millisecond)
	defer ticker.Stop()
	for {
		err := c.ready()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.tb.Fatalf("redistest: cluster not ready within %v: %v", DefaultClusterTimeout, err)
		}
		<-ticker.C
	}
}

// ready checks every node's view of the cluster once.
func (c *Cluster) ready() error {
	for _, n := range c.nodes {
		info, err := n.do(time.Second, "CLUSTER", "INFO")
		if err != nil {
			return fmt.Errorf("%s: CLUSTER INFO: %w", n.cfg.name, err)
		}
		fields := make(map[string]string)
		for line := range strings.Lines(info) {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
				fields[k] = v
			}
		}
		if state := fields["cluster_state"]; state != "ok" {
			return fmt.Errorf("%s: cluster_state:%s", n.cfg.name, state)
		}
		if known := fields["cluster_known_nodes"]; known != strconv.Itoa(len(c.nodes)) {
			return fmt.Errorf("%s: cluster_known_nodes:%s of %d", n.cfg.name, known, len(c.nodes))
		}
	}
	return nil
}

// ClientOption returns rueidis options that reach the cluster through all
// its nodes, with the same defaults as [Server.ClientOption].
func (c *Cluster) ClientOption() rueidis.ClientOption {
	return clientOption(c.Addrs(), c.nodes[0].cfg.password, nil)
}

// Client returns a rueidis cluster client made from [Cluster.ClientOption],
// closed when tb's test ends.
func (c *Cluster) Client(tb testing.TB) rueidis.Client {
	tb.Helper()
	return newClient(tb, c.ClientOption())
}
