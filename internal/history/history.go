// Package history records when instances start and stop and checks the
// record for the guarantees dim makes, knowing nothing of how dim works.
//
// An instance is live from the moment its create call begins until its
// disconnect call returns (or until the test declares it dead, for a crashed
// node). Events are totally ordered by a sequence number taken under one
// lock, so the checks need no clock.
package history

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Kind is what happened to an instance.
type Kind string

// Event kinds.
const (
	Up     Kind = "up"     // createInstance was called
	Failed Kind = "failed" // createInstance returned an error: never live
	Down   Kind = "down"   // the disconnect hook returned
	Dead   Kind = "dead"   // the process running it died
)

// Event is one entry of the history.
type Event struct {
	Seq      int64
	At       time.Time
	Node     string
	Key      string
	Instance int64 // unique per create call
	Kind     Kind
}

// Recorder collects events from any number of goroutines.
type Recorder struct {
	mu     sync.Mutex
	events []Event
	next   int64
	wait   chan struct{} // closed and replaced on every event
}

// New returns an empty Recorder.
func New() *Recorder { return &Recorder{wait: make(chan struct{})} }

func (r *Recorder) add(node, key string, inst int64, kind Kind) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if inst == 0 {
		r.next++
		inst = r.next
	}
	r.events = append(r.events, Event{Seq: int64(len(r.events)) + 1, At: time.Now(), Node: node, Key: key, Instance: inst, Kind: kind})
	close(r.wait)
	r.wait = make(chan struct{})
	return inst
}

// Up records the start of a create call and returns the instance's number.
func (r *Recorder) Up(node, key string) int64 { return r.add(node, key, 0, Up) }

// Failed records that create call inst returned an error.
func (r *Recorder) Failed(node, key string, inst int64) { r.add(node, key, inst, Failed) }

// Down records that instance inst was disconnected.
func (r *Recorder) Down(node, key string, inst int64) { r.add(node, key, inst, Down) }

// Kill records that every instance live on node died with it.
func (r *Recorder) Kill(node string) {
	for _, iv := range r.Live() {
		if iv.Node == node {
			r.add(node, iv.Key, iv.Instance, Dead)
		}
	}
}

// Events returns a copy of the history.
func (r *Recorder) Events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// Changed returns a channel closed at the next event.
func (r *Recorder) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.wait
}

// Interval is one instance's life.
type Interval struct {
	Node     string
	Key      string
	Instance int64
	From, To int64 // sequence numbers; To is 0 while live
	Started  time.Time
	Ended    time.Time
}

// Intervals rebuilds every instance's life from the history.
func Intervals(events []Event) []Interval {
	byInst := map[int64]*Interval{}
	var order []int64
	for _, e := range events {
		iv := byInst[e.Instance]
		switch e.Kind {
		case Up:
			byInst[e.Instance] = &Interval{Node: e.Node, Key: e.Key, Instance: e.Instance, From: e.Seq, Started: e.At}
			order = append(order, e.Instance)
		case Failed:
			delete(byInst, e.Instance)
		case Down, Dead:
			if iv != nil && iv.To == 0 {
				iv.To, iv.Ended = e.Seq, e.At
			}
		}
	}
	out := make([]Interval, 0, len(order))
	for _, inst := range order {
		if iv := byInst[inst]; iv != nil {
			out = append(out, *iv)
		}
	}
	return out
}

// Live returns the instances live now.
func (r *Recorder) Live() []Interval {
	var live []Interval
	for _, iv := range Intervals(r.Events()) {
		if iv.To == 0 {
			live = append(live, iv)
		}
	}
	return live
}

// LiveByKey returns, for each key, the nodes on which it is live now.
func (r *Recorder) LiveByKey() map[string][]string {
	out := map[string][]string{}
	for _, iv := range r.Live() {
		out[iv.Key] = append(out[iv.Key], iv.Node)
	}
	return out
}

// Overlap is a moment when two instances of one key were live together.
type Overlap struct {
	Key  string
	A, B Interval
}

func (o Overlap) String() string {
	return fmt.Sprintf("key %q live on %s (#%d, events %d..%d) and %s (#%d, events %d..%d)",
		o.Key, o.A.Node, o.A.Instance, o.A.From, o.A.To, o.B.Node, o.B.Instance, o.B.From, o.B.To)
}

// Overlaps finds every pair of instances of one key whose lives overlap.
func Overlaps(events []Event) []Overlap {
	byKey := map[string][]Interval{}
	for _, iv := range Intervals(events) {
		byKey[iv.Key] = append(byKey[iv.Key], iv)
	}
	var out []Overlap
	for key, ivs := range byKey {
		slices.SortFunc(ivs, func(a, b Interval) int { return int(a.From - b.From) })
		for i := range ivs {
			for j := i + 1; j < len(ivs); j++ {
				a, b := ivs[i], ivs[j]
				if a.To != 0 && b.From >= a.To {
					break // sorted by start: no later one overlaps a either
				}
				if a.To == 0 || b.From < a.To {
					out = append(out, Overlap{Key: key, A: a, B: b})
				}
			}
		}
	}
	return out
}

// Problems lists every broken rule in the history: overlapping lives, an
// instance stopped twice, a stop of an instance never created.
func Problems(events []Event) []string {
	var out []string
	for _, o := range Overlaps(events) {
		out = append(out, "overlap: "+o.String())
	}
	ups := map[int64]bool{}
	downs := map[int64]int{}
	for _, e := range events {
		switch e.Kind {
		case Up:
			ups[e.Instance] = true
		case Down:
			downs[e.Instance]++
		}
	}
	for inst, n := range downs {
		if !ups[inst] {
			out = append(out, fmt.Sprintf("instance #%d disconnected but never created", inst))
		}
		if n > 1 {
			out = append(out, fmt.Sprintf("instance #%d disconnected %d times", inst, n))
		}
	}
	slices.Sort(out)
	return out
}

// Summary is a one-line description of what is live now, for failure
// messages.
func (r *Recorder) Summary() string {
	var b strings.Builder
	for key, nodes := range r.LiveByKey() {
		fmt.Fprintf(&b, "%s@%v ", key, nodes)
	}
	return b.String()
}
