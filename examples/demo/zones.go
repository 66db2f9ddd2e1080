package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-dim/dim"
	"github.com/go-dim/dim/internal/faultproxy"
)

// twoZones lets zone a die, all its nodes at once, and checks that zone b
// takes over exactly the feeds allowed to move there: the feeds that must
// stay in zone a run nowhere and are reported unplaceable, the others run
// in zone b, and nothing that ran in zone b moves. Then zone a comes back
// with new nodes, and every feed runs again.
func (d *demo) twoZones(ctx context.Context) error {
	zoneOf := map[string]string{} // feed → the zone it requires, if any
	for _, s := range d.configs {
		zoneOf[s.Name] = s.Zone
	}
	var dying []*node
	nodeZone := map[string]string{}
	for _, n := range d.liveNodes() {
		nodeZone[n.id] = n.zone
		if n.zone == "a" {
			dying = append(dying, n)
		}
	}
	before := d.placement()
	var stuck, movable []string // feeds in zone a that must stay, and may move
	for key, on := range before {
		switch {
		case nodeZone[on[0]] != "a":
		case zoneOf[key] == "a":
			stuck = append(stuck, key)
		default:
			movable = append(movable, key)
		}
	}
	slices.Sort(stuck)
	slices.Sort(movable)

	d.say("")
	d.say("zone a dies: %s crash at once (their links to Redis go silent and their connections die with them)", names(dying))
	start := time.Now()
	d.mu.Lock()
	for _, n := range dying {
		n.crashed = true
	}
	d.mu.Unlock()
	for _, n := range dying {
		n.proxy.Cut(faultproxy.Both)
		d.rec.Kill(n.id)
	}
	var st *dim.Status
	if err := d.until(ctx, 4*d.f.ttl+10*time.Second, func(s *dim.Status) bool {
		st = s
		return d.converged() && slices.Equal(s.Unplaceable, stuck) && len(s.Misplaced) == 0
	}); err != nil {
		return fmt.Errorf("zone b did not take over: %w", err)
	}
	took := time.Since(start)
	after := d.placement()
	for key, on := range before {
		now := after[key]
		switch {
		case slices.Contains(stuck, key):
			if len(now) != 0 {
				return fmt.Errorf("%s must stay in zone a but runs on %v", key, now)
			}
		case slices.Contains(movable, key):
			if len(now) != 1 || nodeZone[now[0]] != "b" {
				return fmt.Errorf("%s did not move to zone b: it runs on %v", key, now)
			}
		case !slices.Equal(now, on):
			return fmt.Errorf("%s moved from %v to %v though its zone lives", key, on, now)
		}
	}
	d.say("→ zone b took over exactly the %d feeds allowed to move there (%s) %v after the crash (node TTL %v); nothing in zone b moved",
		len(movable), strings.Join(movable, " "), took.Round(time.Millisecond), d.f.ttl)
	d.say("→ the %d feeds that must stay in zone a run nowhere and are reported unplaceable (Status.Unplaceable: %s)",
		len(stuck), strings.Join(st.Unplaceable, " "))
	if len(stuck) > 0 {
		why, err := d.explain(ctx, stuck[0])
		if err != nil {
			return err
		}
		d.say("→ dimctl explain %s %s: %s", d.service, stuck[0], why)
	}
	d.view(ctx)

	d.say("")
	d.say("zone a comes back: %d new nodes start there", len(dying))
	start = time.Now()
	for range dying {
		if _, err := d.addNodeIn(ctx, "a"); err != nil {
			return err
		}
	}
	if err := d.until(ctx, 10*time.Second, func(s *dim.Status) bool {
		return d.converged() && len(s.Unplaceable) == 0 && len(s.Misplaced) == 0
	}); err != nil {
		return fmt.Errorf("zone a did not take its feeds back: %w", err)
	}
	back := d.placement()
	for _, key := range stuck {
		if on := back[key]; len(on) != 1 || d.zone(on[0]) != "a" {
			return fmt.Errorf("%s runs on %v, not in zone a", key, on)
		}
	}
	spread := map[string]int{}
	for key, on := range back {
		if zoneOf[key] == "" {
			spread[d.zone(on[0])]++
		}
	}
	d.say("→ the feeds that must stay in zone a run again there %v after the first new node started; nothing is unplaceable; the spread feeds run %d in zone a and %d in zone b",
		time.Since(start).Round(time.Millisecond), spread["a"], spread["b"])
	d.view(ctx)
	return nil
}

// explain returns what dim.Explain says placed key.
func (d *demo) explain(ctx context.Context, key string) (string, error) {
	e, err := dim.Explain(ctx, d.admin, dim.Service{Name: d.service}, key)
	if err != nil {
		return "", err
	}
	return strings.Join(e.PlacedBy, "; "), nil
}

// convergedInZones reports whether every feed that some live node may run
// runs exactly once, on such a node, and the others run nowhere; and
// whether the leader is done: every live node takes part, and a plan of a
// rebalance now (dim.Plan, which balances with the feeds' placements as the
// leader stored them) moves nothing.
func (d *demo) convergedInZones() bool {
	zones := map[string]bool{}
	ids := map[string]string{}
	live := d.liveNodes()
	for _, n := range live {
		zones[n.zone] = true
		ids[n.id] = n.zone
	}
	placement := d.placement()
	for _, s := range d.configs {
		on := placement[s.Name]
		if s.Zone != "" && !zones[s.Zone] {
			if len(on) != 0 {
				return false
			}
			continue
		}
		zone, ok := "", false
		if len(on) == 1 {
			zone, ok = ids[on[0]]
		}
		if !ok || (s.Zone != "" && zone != s.Zone) {
			return false
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.f.ttl)
	defer cancel()
	opt := dim.Service{Name: d.service}
	st, err := dim.ReadStatus(ctx, d.admin, opt)
	if err != nil || len(st.Misplaced) > 0 {
		return false
	}
	active := 0
	for _, n := range st.Nodes {
		if _, ok := ids[n.ID]; ok && n.State == "active" {
			active++
		}
	}
	if active != len(live) {
		return false
	}
	plan, err := dim.Plan(ctx, d.admin, opt, dim.PlanChange{})
	return err == nil && len(plan.Moves) == 0
}

// zone returns a node's zone.
func (d *demo) zone(id string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n := d.nodes[id]; n != nil {
		return n.zone
	}
	return ""
}

// names lists the nodes' IDs.
func names(nodes []*node) string {
	ids := make([]string, len(nodes))
	for i, n := range nodes {
		ids[i] = n.id
	}
	return strings.Join(ids, " and ")
}
