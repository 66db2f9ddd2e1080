package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"

	"github.com/go-dim/dim"
	"github.com/redis/rueidis"
)

// plannedJoin names the node of "plan join" when none is given.
const plannedJoin = "new-node"

// plan prints the moves the leader would make for a drain or a join, and
// changes nothing.
func (o *options) plan(ctx context.Context, client rueidis.Client, stdout io.Writer) error {
	change := dim.PlanChange{}
	switch o.planOp {
	case "drain":
		change.Drain = o.node
	case "join":
		change.Join, change.JoinWeight = o.node, o.weight
		if change.Join == "" {
			change.Join = plannedJoin
		}
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	res, err := dim.Plan(ctx, client, o.dimService(), change)
	if err != nil {
		return err
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	what := "drain " + quote(change.Drain)
	if o.planOp == "join" {
		what = fmt.Sprintf("join of %s (weight %d)", quote(change.Join), max(1, change.JoinWeight))
	}
	fmt.Fprintf(tw, "plan\t%s in %q: %d moves; nothing was changed\n", what, o.service, len(res.Moves))
	if res.Frozen {
		fmt.Fprintln(tw, "frozen\ta freeze is in force: these are the moves the leader makes now, not after the thaw")
	}
	if len(res.Unplaceable) > 0 {
		fmt.Fprintf(tw, "unplaceable\t%s: no live node could take them\n", list(res.Unplaceable, quote))
	}
	if len(res.Moves) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "KEY\tFROM\tTO")
		for _, mv := range res.Moves {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", quote(mv.Key), orDash(mv.From), orDash(mv.To))
		}
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tKEYS AFTER")
	nodes := make([]string, 0, len(res.Loads))
	for n := range res.Loads {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	for _, n := range nodes {
		fmt.Fprintf(tw, "%s\t%d\n", quote(n), res.Loads[n])
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return quote(s)
}
