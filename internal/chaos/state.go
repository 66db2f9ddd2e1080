package chaos

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// instance is one createInstance call and the life it led.
type instance struct {
	id      string
	node    string
	proc    string
	key     string
	token   uint64
	up      Event
	end     Event // Seq 0 while live
	endKind Kind  // Failed, Down, Kill or Exit
	created bool
	downs   int
	cancel  Event // the first Cancel, Seq 0 if none
	stale   []Event
}

func (i *instance) live() bool { return i.end.Seq == 0 }

// prep is one prepare call (dim.WithPrepare) and what became of the
// instance it returned.
type prep struct {
	id   string
	node string
	proc string
	key  string
	from Event // Prepare
	// ok: prepare returned the instance (Prepared); failed: it returned
	// an error or panicked (Unprepared).
	ok, failed bool
	// ups are the activations begun (Up events of its ID), the first at
	// activation; activated: an activation returned (Created).
	ups        int
	activation Event
	activated  bool
	// disposals counts Disposed events, the first at disposed.
	disposals int
	disposed  Event
	// died is the Kill or Exit of its process, if it ended while the
	// instance was neither activated nor disposed of; Seq 0 otherwise.
	died Event
}

// settled reports whether the prepared instance met its end: activated, or
// disposed of.
func (p *prep) settled() bool { return p.activated || p.disposals > 0 }

// process is one run of a node program.
type process struct {
	name    string
	node    string
	alive   bool
	ready   bool
	started bool // the program logged its start: its SIGTERM handler is installed
	termed  bool
	ttl     time.Duration // node TTL; 0 if the history does not say
	ended   Event         // Kill or Exit
	pauses  []window
	paused  *window // open pause
}

// window is a time a process was frozen: from its Pause to its Resume (or
// the Kill or Exit that ended it while frozen).
type window struct {
	from, to Event
}

// State replays a history: which instances are live, on which processes,
// and which processes run. The driver uses it to wait for convergence and
// the checker to test the guarantees. The zero value is not usable; call
// [NewState].
type State struct {
	insts   map[string]*instance
	order   []*instance
	procs   map[string]*process
	live    map[string]map[string]*instance // key → instance ID → instance
	leaders []Event
	preps   map[string]*prep // by instance ID
	porder  []*prep
	last    Event
	odd     []string // events that make no sense (a Down without Up, ...)
}

// NewState returns an empty State.
func NewState() *State {
	return &State{
		insts: map[string]*instance{},
		procs: map[string]*process{},
		live:  map[string]map[string]*instance{},
		preps: map[string]*prep{},
	}
}

func (s *State) proc(e Event) *process {
	name := e.Proc()
	p := s.procs[name]
	if p == nil {
		p = &process{name: name, node: e.Node, alive: true}
		s.procs[name] = p
	}
	return p
}

// Started reports whether the process pid of node has logged its start.
func (s *State) Started(node string, pid int) bool {
	p := s.procs[ProcName(node, pid)]
	return p != nil && p.started
}

// Apply adds the next event of the history.
func (s *State) Apply(e Event) {
	s.last = e
	switch e.Kind {
	case Spawn, Start:
		p := s.proc(e)
		if e.TTL > 0 {
			p.ttl = time.Duration(e.TTL)
		}
		if e.Kind == Start {
			p.started = true
		}
	case Ready:
		s.proc(e).ready = true
	case Up:
		p := s.proc(e)
		if !p.alive {
			s.odd = append(s.odd, fmt.Sprintf("event %d: instance %s created on %s after it died", e.Seq, e.Inst, p.name))
		}
		if pr := s.preps[e.Inst]; pr != nil {
			pr.ups++
			if pr.ups == 1 {
				pr.activation = e
			}
		}
		if _, dup := s.insts[e.Inst]; dup {
			s.odd = append(s.odd, fmt.Sprintf("event %d: instance ID %s used twice", e.Seq, e.Inst))
			return
		}
		in := &instance{id: e.Inst, node: e.Node, proc: p.name, key: e.Key, token: e.Token, up: e}
		s.insts[e.Inst] = in
		s.order = append(s.order, in)
		if s.live[e.Key] == nil {
			s.live[e.Key] = map[string]*instance{}
		}
		s.live[e.Key][e.Inst] = in
	case Created:
		if in := s.inst(e); in != nil {
			in.created = true
		}
		if pr := s.preps[e.Inst]; pr != nil {
			pr.activated = true
		}
	case Prepare:
		p := s.proc(e)
		if _, dup := s.preps[e.Inst]; dup {
			s.odd = append(s.odd, fmt.Sprintf("event %d: prepared instance ID %s used twice", e.Seq, e.Inst))
			return
		}
		pr := &prep{id: e.Inst, node: e.Node, proc: p.name, key: e.Key, from: e}
		s.preps[e.Inst] = pr
		s.porder = append(s.porder, pr)
	case Prepared, Unprepared, Disposed:
		pr := s.preps[e.Inst]
		if pr == nil {
			s.odd = append(s.odd, fmt.Sprintf("event %d: %s of unknown prepared instance %s", e.Seq, e.Kind, e.Inst))
			return
		}
		switch e.Kind {
		case Prepared:
			pr.ok = true
		case Unprepared:
			pr.failed = true
		case Disposed:
			pr.disposals++
			if pr.disposals == 1 {
				pr.disposed = e
			}
		}
	case Failed:
		if in := s.inst(e); in != nil && in.live() {
			s.endInst(in, e, Failed)
		}
	case Cancel:
		if in := s.inst(e); in != nil && in.cancel.Seq == 0 {
			in.cancel = e
		}
	case Down:
		if in := s.inst(e); in != nil {
			in.downs++
			if in.live() {
				s.endInst(in, e, Down)
			}
		}
	case Stale:
		if in := s.inst(e); in != nil {
			in.stale = append(in.stale, e)
		}
	case Kill, Exit:
		p := s.proc(e)
		p.alive = false
		p.ended = e
		if p.paused != nil {
			p.paused.to = e
			p.pauses = append(p.pauses, *p.paused)
			p.paused = nil
		}
		for _, byID := range s.live {
			for _, in := range byID {
				if in.proc == p.name {
					s.endInst(in, e, e.Kind)
				}
			}
		}
		for _, pr := range s.porder {
			if pr.proc == p.name && !pr.settled() && pr.died.Seq == 0 {
				pr.died = e
			}
		}
	case Term:
		s.proc(e).termed = true
	case Pause:
		p := s.proc(e)
		p.paused = &window{from: e}
	case Resume:
		p := s.proc(e)
		if p.paused != nil {
			p.paused.to = e
			p.pauses = append(p.pauses, *p.paused)
			p.paused = nil
		}
	case Leader:
		s.leaders = append(s.leaders, e)
	}
}

func (s *State) inst(e Event) *instance {
	in := s.insts[e.Inst]
	if in == nil {
		s.odd = append(s.odd, fmt.Sprintf("event %d: %s of unknown instance %s", e.Seq, e.Kind, e.Inst))
	}
	return in
}

func (s *State) endInst(in *instance, e Event, kind Kind) {
	in.end, in.endKind = e, kind
	delete(s.live[in.key], in.id)
	if len(s.live[in.key]) == 0 {
		delete(s.live, in.key)
	}
}

// Instances returns how many createInstance calls the history holds.
func (s *State) Instances() int { return len(s.order) }

// LiveByKey returns, for every key with a live instance, the nodes that run
// one, sorted.
func (s *State) LiveByKey() map[string][]string {
	out := make(map[string][]string, len(s.live))
	for key, byID := range s.live {
		for _, in := range byID {
			out[key] = append(out[key], in.node)
		}
		slices.Sort(out[key])
	}
	return out
}

// Loads returns how many live instances each node runs.
func (s *State) Loads() map[string]int {
	out := map[string]int{}
	for _, byID := range s.live {
		for _, in := range byID {
			out[in.node]++
		}
	}
	return out
}

// KeysOn returns the keys live on node, sorted.
func (s *State) KeysOn(node string) []string {
	var out []string
	for key, byID := range s.live {
		for _, in := range byID {
			if in.node == node {
				out = append(out, key)
			}
		}
	}
	slices.Sort(out)
	return out
}

// Running reports whether a process of node runs and is not paused.
func (s *State) Running(node string) bool {
	for _, p := range s.procs {
		if p.node == node && p.alive && p.paused == nil {
			return true
		}
	}
	return false
}

// Leader returns the node of the latest Leader event whose process still
// runs, or "".
func (s *State) Leader() string {
	for i := len(s.leaders) - 1; i >= 0; i-- {
		e := s.leaders[i]
		if p := s.procs[e.Proc()]; p != nil && p.alive && p.paused == nil {
			return e.Node
		}
	}
	return ""
}

// Converged reports whether every key of keys is live exactly once, created
// and on a running process of one of nodes, no other key is live, and the
// loads are perfectly even over nodes (each holds ⌊K/N⌋ or ⌈K/N⌉). The
// instances of a paused process are left out: they do nothing. If not
// converged, it says why.
func (s *State) Converged(keys, nodes []string) (bool, string) {
	live, excess, why := s.Spread(keys, nodes)
	return live && excess == 0, why
}

// Spread is Converged in two parts: live reports whether every key of keys
// is live exactly once, created and on a running process of one of nodes,
// and no other key is live; excess is then how many keys must still move
// for the loads to be even (0: converged). why says what is not so.
func (s *State) Spread(keys, nodes []string) (live bool, excess int, why string) {
	if len(nodes) == 0 {
		return false, 0, "no nodes"
	}
	want := make(map[string]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	member := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		member[n] = true
	}
	running := map[string][]*instance{}
	for key, byID := range s.live {
		for _, in := range byID {
			if p := s.procs[in.proc]; p != nil && p.paused != nil {
				continue
			}
			if !want[key] {
				return false, 0, fmt.Sprintf("key %s is live on %s but not configured", key, in.node)
			}
			running[key] = append(running[key], in)
		}
	}
	loads := map[string]int{}
	for _, key := range keys {
		list := running[key]
		if len(list) != 1 {
			return false, 0, fmt.Sprintf("key %s is live %d times", key, len(list))
		}
		in := list[0]
		switch p := s.procs[in.proc]; {
		case !in.created:
			return false, 0, fmt.Sprintf("key %s is still being created on %s", key, in.node)
		case !member[in.node] || p == nil || !p.alive:
			return false, 0, fmt.Sprintf("key %s runs on %s, which is not one of the running nodes", key, in.node)
		}
		loads[in.node]++
	}
	lo := len(keys) / len(nodes)
	hi := lo
	if len(keys)%len(nodes) != 0 {
		hi++
	}
	over, under := 0, 0
	for _, n := range nodes {
		over += max(0, loads[n]-hi)
		under += max(0, lo-loads[n])
	}
	if excess = max(over, under); excess > 0 {
		return true, excess, fmt.Sprintf("uneven loads %s (want %d..%d each)", formatLoads(loads, nodes), lo, hi)
	}
	return true, 0, ""
}

func formatLoads(loads map[string]int, nodes []string) string {
	parts := make([]string, 0, len(nodes))
	for _, n := range nodes {
		parts = append(parts, fmt.Sprintf("%s=%d", n, loads[n]))
	}
	return strings.Join(parts, " ")
}
