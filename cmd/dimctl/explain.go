package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/go-dim/dim"
	"github.com/redis/rueidis"
)

// explain prints everything Redis holds of one key, and why it is where it
// is.
func (o *options) explain(ctx context.Context, client rueidis.Client, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	e, err := dim.Explain(ctx, client, o.dimService(), o.node)
	if err != nil {
		return err
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(e)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "key\t%s\n", quote(e.Key))
	fmt.Fprintf(tw, "assigned to\t%s\n", orDash(e.AssignedTo))
	if ow := e.Owner; ow != nil {
		live := "live"
		if !ow.Live {
			live = "not live: its session ended"
		}
		fmt.Fprintf(tw, "owner\t%s, token %d (%s)\n", quote(ow.Node), ow.Token, live)
	} else {
		fmt.Fprintln(tw, "owner\tnone: nobody holds it")
	}
	if s := e.State; s != nil {
		line := fmt.Sprintf("%s on %s since %s", s.State, quote(s.Node), s.Since.UTC().Format(time.TimeOnly))
		if s.Attempts > 0 {
			line += fmt.Sprintf(", %d attempts, next at %s", s.Attempts, s.NextRetry.UTC().Format(time.TimeOnly))
		}
		if s.LastError != "" {
			line += ": " + quote(s.LastError)
		}
		fmt.Fprintf(tw, "state\t%s\n", line)
	}
	switch mv := e.LastMove; {
	case e.Quarantine != nil:
		q := e.Quarantine
		fmt.Fprintf(tw, "why\tquarantined since %s (level %d) after failing on %s; tried again at %s",
			q.Since.UTC().Format(time.TimeOnly), q.Level, list(q.Nodes, quote), q.Until.UTC().Format(time.TimeOnly))
		if q.LastError != "" {
			fmt.Fprintf(tw, "; last error %s", quote(q.LastError))
		}
		fmt.Fprintln(tw)
	case mv != nil:
		fmt.Fprintf(tw, "why\tmoved from %s to %s at %s: %s", quote(mv.From), orDash(mv.To), mv.At.UTC().Format(time.TimeOnly), mv.Reason)
		if mv.Reason == dim.MoveBalance && mv.Trigger != "" {
			fmt.Fprintf(tw, " (%s)", mv.Trigger)
		}
		fmt.Fprintln(tw)
	case e.AssignedTo != "":
		fmt.Fprintln(tw, "why\tplaced there when it was added, or after its last recorded move; it has stayed (fewest moves)")
	}
	for _, line := range e.PlacedBy {
		fmt.Fprintf(tw, "placed by\t%s\n", line)
	}
	for _, a := range e.Avoided {
		line := "its getConfig does not return the key"
		if a.Why == "gave up" {
			line = "gave it up after failed creates, until " + a.Until.UTC().Format(time.TimeOnly)
		}
		fmt.Fprintf(tw, "avoided by\t%s: %s\n", quote(a.Node), line)
	}
	if len(e.Drained) > 0 {
		fmt.Fprintf(tw, "drained\t%s (they get no keys)\n", list(e.Drained, quote))
	}
	if e.Frozen {
		fmt.Fprintln(tw, "frozen\tvoluntary moves are held back")
	}
	if e.Pinned != "" {
		fmt.Fprintf(tw, "pinned\tto %s by an operator: it stays there while that node is live and meets the key's requirements\n", quote(e.Pinned))
	}
	if e.Unplaceable {
		fmt.Fprintln(tw, "unplaceable\tno live node may take it: none meets its requirements, or all that do are at their caps")
	}
	return tw.Flush()
}
