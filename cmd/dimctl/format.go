package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/go-dim/dim"
)

// maxListed is how many keys a line of the text output names before it
// shortens to a count; -json always has them all.
const maxListed = 10

// writeStatus prints a snapshot for people: a summary, the live nodes as a
// table, the keys each node runs, and the keys not yet running where they
// are assigned. Nodes and keys come sorted, so equal snapshots print alike.
func writeStatus(w io.Writer, st *dim.Status) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)

	running := 0
	runs := map[string][]string{}
	for key, ks := range st.Keys {
		if ks.Live && ks.State == dim.KeyRunning {
			running++
			runs[ks.Node] = append(runs[ks.Node], key)
		}
	}
	writeHead(tw, st.Service, st.Leader, st.LeaderLive, st.Epoch,
		fmt.Sprintf("%d assigned, %d running", len(st.Assignment), running), st.ServerTime, st.Grace, st.Memory, st.LastRebalance, st.Frozen, st.Outage)

	nodes := sortedNodes(st.Nodes)
	fmt.Fprintln(tw)
	if len(nodes) == 0 {
		fmt.Fprintln(tw, "no live nodes")
	} else {
		writeNodes(tw, nodes)
		writeRestarting(tw, st.Restarting)
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "INSTANCES")
		for _, n := range nodes {
			fmt.Fprintf(tw, "%s\t%s\n", quote(n.ID), list(runs[n.ID], nil))
		}
	}

	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "PENDING")
	fmt.Fprintf(tw, "unowned\t%d\t%s\n", len(st.Unowned), list(st.Unowned, func(key string) string {
		ks, ok := st.Keys[key]
		if !ok || !ks.Live || ks.Node != st.Assignment[key] {
			return quote(key) + " (to " + quote(st.Assignment[key]) + ")"
		}
		why := string(ks.State)
		if ks.LastError != "" {
			why += ": " + quote(ks.LastError)
		}
		return quote(key) + " (" + quote(st.Assignment[key]) + ", " + why + ")"
	}))
	writeQuarantined(tw, st.Quarantined, len(st.Quarantined))
	writePlacement(tw, len(st.Pins), st.UnplaceableCount, st.Unplaceable)
	if len(st.AtRisk) > 0 {
		fmt.Fprintf(tw, "at risk\t%d\t%s\n", len(st.AtRisk), list(st.AtRisk, func(key string) string {
			return quote(key) + " (on suspect " + quote(st.Keys[key].Node) + ")"
		}))
	}
	fmt.Fprintf(tw, "misplaced\t%d\t%s\n", len(st.Misplaced), list(st.Misplaced, func(key string) string {
		return quote(key) + " (" + quote(st.Owners[key].Node) + " to " + quote(st.Assignment[key]) + ")"
	}))
	return tw.Flush()
}

// writeHead prints the lines that open a status or a summary.
func writeHead(tw io.Writer, service, leader string, leaderLive bool, epoch uint64, keys string, at time.Time,
	g *dim.Grace, mem *dim.RedisMemory, r *dim.LastRebalance, f *dim.FreezeStatus, o *dim.Outage) {
	l := "none"
	switch {
	case leader != "" && leaderLive:
		l = quote(leader) + " (live)"
	case leader != "":
		l = quote(leader) + " (not live: its lease ran out or it rejoined; a new leader takes over)"
	}
	fmt.Fprintf(tw, "service\t%s\n", quote(service))
	fmt.Fprintf(tw, "leader\t%s\n", l)
	fmt.Fprintf(tw, "epoch\t%d\n", epoch)
	fmt.Fprintf(tw, "keys\t%s\n", keys)
	fmt.Fprintf(tw, "time\t%s (Redis)\n", at.UTC().Format("2006-01-02 15:04:05.000 MST"))
	if g != nil {
		why := "Redis holds no record of the service (its first start, or Redis lost its data)"
		if g.Reason == dim.GraceRestored {
			why = "Redis restarted or failed over since the record was written; nodes it forgot may still run instances"
		}
		fmt.Fprintf(tw, "grace\tno instance starts for %s more: %s\n", roundLease(g.Left), why)
	}
	if mem != nil && mem.OutOfMemory {
		fmt.Fprintf(tw, "redis\tOUT OF MEMORY: %d MiB used of maxmemory %d MiB (%s): nothing new starts; running instances keep running\n",
			mem.Used>>20, mem.Max>>20, mem.Policy)
	}
	if r != nil && (r.Error != "" || r.Pending > 0 || r.InFlight > 0) {
		switch {
		case r.Error != "":
			fmt.Fprintf(tw, "rebalance\tfailed at %s: %s\n", r.At.UTC().Format("15:04:05"), quote(r.Error))
		default:
			line := fmt.Sprintf("%d moves in flight, %d held for later steps (move budget or freeze)", r.InFlight, r.Pending)
			if r.Budget > 0 {
				line += fmt.Sprintf("; budget %d a step, %d steps left", r.Budget, r.StepsLeft)
			}
			fmt.Fprintf(tw, "rebalance\t%s\n", line)
		}
	}
	if f != nil {
		fmt.Fprintf(tw, "frozen\tfor %s more: joins, weight changes and rebalances move nothing; failures and drains still do\n", roundLease(f.Left))
	}
	if o != nil {
		fmt.Fprintf(tw, "outage\tsince %s, %d keys fail on every node: keys stay where they are and retry with backoff\n",
			o.Since.UTC().Format("15:04:05"), o.FailingKeys)
	}
}

// writeNodes prints the table of live nodes, sorted, and the nodes whose
// getConfig fails.
func writeNodes(tw io.Writer, nodes []dim.NodeStatus) {
	fmt.Fprintln(tw, "NODE\tWEIGHT\tSTATE\tLEASE LEFT\tASSIGNED\tRUNNING")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\n",
			quote(n.ID), n.Weight, nodeState(n), roundLease(n.LeaseLeft), n.Assigned, n.Running)
	}
	var labelled []dim.NodeStatus
	for _, n := range nodes {
		if len(n.Labels) > 0 || n.MaxKeys > 0 || n.MaxCost > 0 {
			labelled = append(labelled, n)
		}
	}
	if len(labelled) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "LABELS AND CAPS")
		for _, n := range labelled {
			var parts []string
			for _, name := range slices.Sorted(maps.Keys(n.Labels)) {
				parts = append(parts, quote(name)+"="+quote(n.Labels[name]))
			}
			if n.MaxKeys > 0 {
				parts = append(parts, fmt.Sprintf("at most %d keys", n.MaxKeys))
			}
			if n.MaxCost > 0 {
				parts = append(parts, fmt.Sprintf("at most %d cost units", n.MaxCost))
			}
			fmt.Fprintf(tw, "%s\t%s\n", quote(n.ID), strings.Join(parts, ", "))
		}
	}
	var failing []dim.NodeStatus
	for _, n := range nodes {
		if n.ConfigError != "" {
			failing = append(failing, n)
		}
	}
	if len(failing) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "GETCONFIG FAILING")
		for _, n := range failing {
			fmt.Fprintf(tw, "%s\tsince %s, %d keys kept as they were: %s\n", quote(n.ID),
				n.ConfigErrorAt.UTC().Format("15:04:05"), n.ConfigErrorKeys, quote(n.ConfigError))
		}
	}
	var sick []dim.NodeStatus
	for _, n := range nodes {
		if n.Unhealthy != nil {
			sick = append(sick, n)
		}
	}
	if len(sick) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "UNHEALTHY")
		for _, n := range sick {
			u := n.Unhealthy
			fmt.Fprintf(tw, "%s\tno keys until a probe at %s (level %d); failed here, ran elsewhere: %s\n", quote(n.ID),
				u.Until.UTC().Format("15:04:05"), u.Level, list(u.Keys, quote))
		}
	}
}

// writePlacement prints the lines of unplaceable keys and pins, if there
// are any.
func writePlacement(tw io.Writer, pins, unplaceable int, keys []string) {
	if unplaceable > 0 {
		shown := make([]string, 0, len(keys))
		for _, k := range keys[:min(len(keys), maxListed)] {
			shown = append(shown, quote(k))
		}
		fmt.Fprintf(tw, "unplaceable\t%d\t%s (no live node meets their requirements, or all that do are at their caps)\n", unplaceable, named(shown, unplaceable))
	}
	if pins > 0 {
		fmt.Fprintf(tw, "pinned\t%d\tkeys an operator pinned (dimctl explain shows where)\n", pins)
	}
}

// writeRestarting prints the nodes whose keys wait for them to come back
// (see dim.WithRestartHold).
func writeRestarting(tw io.Writer, holds []dim.RestartHold) {
	if len(holds) == 0 {
		return
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "RESTARTING")
	for _, r := range holds {
		fmt.Fprintf(tw, "%s\t%d keys wait for it, %s more\n", quote(r.Node), r.Keys, roundLease(r.Left))
	}
}

// writeQuarantined prints the line of quarantined keys, if there are any:
// total of them, qs those named.
func writeQuarantined(tw io.Writer, qs []dim.Quarantine, total int) {
	if total == 0 {
		return
	}
	qs = slices.SortedFunc(slices.Values(qs), func(a, b dim.Quarantine) int { return strings.Compare(a.Key, b.Key) })
	shown := make([]string, 0, min(len(qs), maxListed))
	for _, q := range qs[:min(len(qs), maxListed)] {
		s := fmt.Sprintf("%s (failed on %s; tried again at %s, level %d", quote(q.Key), list(q.Nodes, quote),
			q.Until.UTC().Format("15:04:05"), q.Level)
		if q.LastError != "" {
			s += ": " + quote(q.LastError)
		}
		shown = append(shown, s+")")
	}
	fmt.Fprintf(tw, "quarantined\t%d\t%s\n", total, named(shown, total))
}

// named joins names already shown in order, the first maxListed of them,
// and says how many of total it left out.
func named(shown []string, total int) string {
	if len(shown) == 0 && total == 0 {
		return "-"
	}
	s := strings.Join(shown[:min(len(shown), maxListed)], ", ")
	if more := total - min(len(shown), maxListed); more > 0 {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("… (%d more)", more)
	}
	return s
}

// list joins keys sorted, each shown by show if it is not nil, naming at most
// maxListed of them.
func list(keys []string, show func(string) string) string {
	if len(keys) == 0 {
		return "-"
	}
	keys = slices.Sorted(slices.Values(keys))
	shown := slices.Clone(keys[:min(len(keys), maxListed)])
	for i, k := range shown {
		if show != nil {
			shown[i] = show(k)
		} else {
			shown[i] = quote(k)
		}
	}
	s := strings.Join(shown, ", ")
	if more := len(keys) - len(shown); more > 0 {
		s += fmt.Sprintf(", … (%d more)", more)
	}
	return s
}

// quote shows a name or message as it is when every character is printable,
// and Go-quoted otherwise: keys come from the user's key function, and a
// newline or a terminal escape in one must neither forge lines of the output
// nor reach the operator's terminal.
func quote(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// roundLease shortens a lease to the precision that matters to people.
func roundLease(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Millisecond).String()
	}
}

// writeJSON prints a snapshot as indented JSON, with empty lists as [] rather
// than null so that consumers need no special case. Map keys come sorted.
func writeJSON(w io.Writer, st *dim.Status) error {
	out := *st
	out.Nodes = orEmpty(sortedNodes(st.Nodes))
	out.Unowned = orEmpty(slices.Sorted(slices.Values(st.Unowned)))
	out.AtRisk = orEmpty(slices.Sorted(slices.Values(st.AtRisk)))
	if out.Keys == nil {
		out.Keys = map[string]dim.KeyStatus{}
	}
	out.Misplaced = orEmpty(slices.Sorted(slices.Values(st.Misplaced)))
	out.Quarantined = orEmpty(st.Quarantined)
	out.Restarting = orEmpty(st.Restarting)
	if out.Assignment == nil {
		out.Assignment = map[string]string{}
	}
	if out.Owners == nil {
		out.Owners = map[string]dim.Owner{}
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(data, '\n'))
	return err
}

func sortedNodes(nodes []dim.NodeStatus) []dim.NodeStatus {
	return slices.SortedFunc(slices.Values(nodes), func(a, b dim.NodeStatus) int {
		return strings.Compare(a.ID, b.ID)
	})
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// nodeState is a node's state, with how long a drain still runs.
func nodeState(n dim.NodeStatus) string {
	switch {
	case n.DrainedFor > 0:
		return fmt.Sprintf("%s (drain ends in %s)", n.State, roundLease(n.DrainedFor))
	case n.WaitingFor > 0:
		return fmt.Sprintf("%s (join hold ends in %s)", n.State, roundLease(n.WaitingFor))
	case n.Prepared > 0 || n.Handing > 0:
		return fmt.Sprintf("%s (handoffs: %d prepared, %d held for their new owner)", n.State, n.Prepared, n.Handing)
	}
	return string(n.State)
}

// writeSummary prints a summary for people, in the layout of writeStatus:
// the keys by state, the live nodes with their counts, and the keys that do
// not run, by name as far as the summary lists them (a live node holds them
// in another state than running; the others are counted in unowned). It
// names no running key: -keys does.
func writeSummary(w io.Writer, sum *dim.Summary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	keys := fmt.Sprintf("%d assigned, %d running", sum.Assigned, sum.Running)
	for _, st := range []dim.KeyState{dim.KeyFailing, dim.KeyHung, dim.KeyUnknown, dim.KeyStopping, dim.KeyCreating} {
		if n := sum.States[st]; n > 0 {
			keys += fmt.Sprintf(", %d %s", n, st)
		}
	}
	if sum.OnDeadNodes > 0 {
		keys += fmt.Sprintf(", %d on nodes no longer live", sum.OnDeadNodes)
	}
	writeHead(tw, sum.Service, sum.Leader, sum.LeaderLive, sum.Epoch, keys, sum.ServerTime, sum.Grace, sum.Memory, sum.LastRebalance, sum.Frozen, sum.Outage)
	nodes := sortedNodes(sum.Nodes)
	fmt.Fprintln(tw)
	if len(nodes) == 0 {
		fmt.Fprintln(tw, "no live nodes")
	} else {
		writeNodes(tw, nodes)
		writeRestarting(tw, sum.Restarting)
	}

	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "PENDING")
	shown := make([]string, 0, min(len(sum.ProblemKeys), maxListed))
	for _, p := range sum.ProblemKeys[:min(len(sum.ProblemKeys), maxListed)] {
		why := string(p.State)
		if p.LastError != "" {
			why += ": " + quote(p.LastError)
		}
		where := quote(p.Node)
		if p.AssignedTo != p.Node {
			where += " to " + quote(p.AssignedTo)
			if p.AssignedTo == "" {
				where = quote(p.Node) + ", removed"
			}
		}
		shown = append(shown, quote(p.Key)+" ("+where+", "+why+")")
	}
	fmt.Fprintf(tw, "unowned\t%d\t%s\n", sum.Unowned, named(shown, sum.Problems))
	writeQuarantined(tw, sum.QuarantinedKeys, sum.Quarantined)
	writePlacement(tw, sum.Pins, sum.Unplaceable, sum.UnplaceableKeys)
	if sum.AtRisk > 0 {
		var risky []string
		for _, p := range sum.AtRiskKeys {
			risky = append(risky, quote(p.Key)+" (on suspect "+quote(p.Node)+")")
		}
		fmt.Fprintf(tw, "at risk\t%d\t%s\n", sum.AtRisk, named(risky, sum.AtRisk))
	}
	fmt.Fprintf(tw, "moving\t%d\n", sum.Moving)
	return tw.Flush()
}
