package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-dim/dim"
	"github.com/redis/rueidis"
)

// history prints the service's history, newest first.
func (o *options) history(ctx context.Context, client rueidis.Client, stdout io.Writer) error {
	f := dim.HistoryFilter{Key: o.key, Node: o.nodeFilter, Limit: o.limit}
	if o.since > 0 {
		f.Since = time.Now().Add(-o.since)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	entries, err := dim.ReadHistory(ctx, client, o.dimService(), f)
	if err != nil {
		return err
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(entries)
	}
	if len(entries) == 0 {
		_, err := fmt.Fprintln(stdout, "no history entries")
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tEVENT\tNODE\tWHAT")
	for _, e := range entries {
		what := e.Detail
		switch {
		case len(e.Moves) > 0:
			parts := make([]string, 0, len(e.Moves))
			for _, mv := range e.Moves {
				parts = append(parts, fmt.Sprintf("%s %s→%s", quote(mv.Key), orDash(mv.From), orDash(mv.To)))
			}
			what = list(parts, nil)
		case len(e.Keys) > 0:
			what = strings.TrimSpace(list(e.Keys, quote) + " " + quote(e.Detail))
		case e.Epoch != 0:
			what = fmt.Sprintf("epoch %d", e.Epoch)
		default:
			what = quote(what)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.At.UTC().Format("15:04:05.000"), e.Kind, quote(e.Node), what)
	}
	return tw.Flush()
}
