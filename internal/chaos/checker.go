package chaos

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Limits are the bounds the checker holds a history to.
type Limits struct {
	// NodeTTL is the node lease. A node paused at least this long must
	// fence (cancel and disconnect) every instance it ran when it wakes.
	NodeTTL time.Duration
	// WakeBound is how long after its wake-up a node paused beyond its
	// lease may keep its old instances. Overlaps inside that window are
	// counted apart, as post-wake overlaps; longer ones are violations.
	WakeBound time.Duration
	// RecoveryBound is how long after a Quiet event every configured key
	// may take to be live exactly once, evenly spread, when no node's TTL
	// exceeds NodeTTL; with larger TTLs in play it grows by the largest
	// TTL's excess over NodeTTL.
	RecoveryBound time.Duration
	// Budget is the move budget of the nodes (voluntary moves in flight at
	// once; 0: none), and BudgetStep how long one step of it may take: the
	// leader starts at most Budget moves, and looks again once they may
	// have landed. Keys must be live exactly once within RecoveryBound;
	// the even spread may take one BudgetStep more for every Budget keys
	// that must still move once they are (see budgetAllowance).
	Budget     int
	BudgetStep time.Duration
}

// budgetAllowance is how much longer than the recovery bound an even spread
// may take when excess keys must still move under the move budget, scaled
// like the recovery bound to the largest TTL in play.
func (lim Limits) budgetAllowance(excess int, maxTTL time.Duration) time.Duration {
	if lim.Budget <= 0 || excess <= 0 {
		return 0
	}
	step := lim.BudgetStep
	if lim.NodeTTL > 0 && maxTTL > lim.NodeTTL {
		step = time.Duration(int64(step) * int64(maxTTL) / int64(lim.NodeTTL))
	}
	return time.Duration((excess+lim.Budget-1)/lim.Budget) * step
}

// ttl returns a process's node TTL, NodeTTL if the history does not say.
func (lim Limits) ttl(p *process) time.Duration {
	if p != nil && p.ttl > 0 {
		return p.ttl
	}
	return lim.NodeTTL
}

// wakeBound is WakeBound scaled to a node TTL: the fence margin is a fifth
// of the node's own TTL.
func (lim Limits) wakeBound(ttl time.Duration) time.Duration {
	if lim.NodeTTL <= 0 || ttl <= lim.NodeTTL {
		return lim.WakeBound
	}
	return time.Duration(int64(lim.WakeBound) * int64(ttl) / int64(lim.NodeTTL))
}

// recoveryBound is RecoveryBound with maxTTL the largest TTL in play.
func (lim Limits) recoveryBound(maxTTL time.Duration) time.Duration {
	if maxTTL <= lim.NodeTTL {
		return lim.RecoveryBound
	}
	return lim.RecoveryBound + maxTTL - lim.NodeTTL
}

// Overlap is a stretch of time in which two instances of one key were live
// together (paused windows left out).
type Overlap struct {
	Key      string
	A, B     string // instance IDs
	From, To time.Time
	// Wake is set when the overlap lies in the post-wake window of a node
	// paused beyond its lease, before it fenced itself.
	Wake bool
}

func (o Overlap) String() string {
	return fmt.Sprintf("key %s: %s and %s both live for %v from %s", o.Key, o.A, o.B,
		o.To.Sub(o.From), o.From.Format("15:04:05.000000"))
}

// Wake is what a node paused beyond its lease did when it woke up.
type Wake struct {
	Proc      string
	Paused    time.Duration
	Instances int           // instances it ran when paused
	Cancel    time.Duration // resume → the last of their contexts cancelled
	Down      time.Duration // resume → the last of them disconnected
	Refused   int           // writes with their old tokens the resource refused
}

// Recovery is how a Quiet ended.
type Recovery struct {
	Quiet     time.Time
	Converged bool
	Took      time.Duration // Quiet → the moment it converged for good
	Live      time.Duration // Quiet → every key first live exactly once
	Why       string        // why it had not converged at Settled
	// Faults are the kinds of the faults injected since the last
	// Settled, in order: what this recovery recovered from.
	Faults []string
	// Seq is the Quiet event's sequence number, to find it in the history.
	Seq int64
}

// Report is what the checker found. Failures lists every violation; an
// empty list means the history keeps every guarantee.
type Report struct {
	Events    int
	Span      time.Duration // first to last event
	Processes int
	Instances int // createInstance and activate calls
	Faults    map[string]int
	LiveAtEnd int // instances still live when the history ends
	Overlaps  []Overlap
	WakeOverl []Overlap
	Wakes     []Wake
	Refused   int           // stale writes refused in post-wake windows
	MaxTTL    time.Duration // the largest node TTL in the history
	// TokenAccepted and TokenRefused count the fenced resource's token
	// checks: writes accepted and refused. Refused ones are Refused (in
	// post-wake windows) plus StaleWrites (violations). Set by the driver.
	TokenAccepted, TokenRefused int
	Terms                       int // leadership terms observed
	Recoveries                  []Recovery

	Leaks            []string
	DoubleDowns      []string
	StaleWrites      []string // refused writes outside post-wake windows
	EpochViolations  []string
	WakeViolations   []string
	RecoveryFailures []string
	Problems         []string // anything else: lost lines, crashes of the node program, nonsense events

	// PrepareViolations are prepared instances (dim.WithPrepare) not
	// activated or disposed of exactly once.
	PrepareViolations []string
	// Make-before-break: prepare calls, prepared instances (prepare
	// returned one), prepare calls that failed, prepared instances
	// activated and disposed of, lost with a killed process, and neither
	// yet when the history ends.
	Prepares, Prepared, PrepareFailed, Activated, Disposed, PreparedKilled, PreparedAtEnd int
}

// Failures lists every violation found, each on a line.
func (r *Report) Failures() []string {
	var out []string
	for _, o := range r.Overlaps {
		out = append(out, "overlap: "+o.String())
	}
	add := func(what string, list []string) {
		for _, s := range list {
			out = append(out, what+": "+s)
		}
	}
	add("leak", r.Leaks)
	add("double disconnect", r.DoubleDowns)
	add("prepared", r.PrepareViolations)
	add("stale write", r.StaleWrites)
	add("epoch", r.EpochViolations)
	add("wake-up", r.WakeViolations)
	add("recovery", r.RecoveryFailures)
	add("problem", r.Problems)
	return out
}

// WorstRecovery is the longest time any Quiet took to converge.
func (r *Report) WorstRecovery() time.Duration {
	var worst time.Duration
	for _, rc := range r.Recoveries {
		worst = max(worst, rc.Took)
	}
	return worst
}

// WorstLive returns the longest a converged recovery took until every key
// was live exactly once (its spread may have taken longer).
func (r *Report) WorstLive() time.Duration {
	var worst time.Duration
	for _, rc := range r.Recoveries {
		if rc.Converged {
			worst = max(worst, rc.Live)
		}
	}
	return worst
}

// SlowestRecoveries returns the n slowest converged recoveries, slowest
// first.
func (r *Report) SlowestRecoveries(n int) []Recovery {
	var done []Recovery
	for _, rc := range r.Recoveries {
		if rc.Converged {
			done = append(done, rc)
		}
	}
	slices.SortStableFunc(done, func(a, b Recovery) int { return cmp.Compare(b.Took, a.Took) })
	return done[:min(n, len(done))]
}

// WorstWake returns the longest resume → cancel and resume → disconnect
// times over all wake-ups.
func (r *Report) WorstWake() (cancel, down time.Duration) {
	for _, w := range r.Wakes {
		cancel, down = max(cancel, w.Cancel), max(down, w.Down)
	}
	return cancel, down
}

// Summary is a few lines for logs and notes.
func (r *Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "history: %d events over %v, %d node processes, %d instances created, %d live at the end\n",
		r.Events, r.Span.Round(time.Millisecond), r.Processes, r.Instances, r.LiveAtEnd)
	kinds := slices.Sorted(maps.Keys(r.Faults))
	var parts []string
	total := 0
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s=%d", k, r.Faults[k]))
		total += r.Faults[k]
	}
	fmt.Fprintf(&b, "faults: %d (%s)\n", total, strings.Join(parts, " "))
	fmt.Fprintf(&b, "overlaps: %d; leaks: %d; double disconnects: %d; stale writes accepted or refused outside wake-ups: %d; epoch violations: %d (%d leader terms)\n",
		len(r.Overlaps), len(r.Leaks), len(r.DoubleDowns), len(r.StaleWrites), len(r.EpochViolations), r.Terms)
	wc, wd := r.WorstWake()
	fmt.Fprintf(&b, "wake-ups beyond the lease: %d; worst resume→cancel %v, resume→disconnect %v; post-wake overlaps %d; old-token writes refused %d\n",
		len(r.Wakes), wc.Round(time.Microsecond), wd.Round(time.Microsecond), len(r.WakeOverl), r.Refused)
	if r.Prepares > 0 {
		fmt.Fprintf(&b, "make-before-break: %d prepare calls, %d prepared (%d failed), %d activated, %d disposed of, %d lost with a killed process, %d pending at the end; violations: %d\n",
			r.Prepares, r.Prepared, r.PrepareFailed, r.Activated, r.Disposed, r.PreparedKilled, r.PreparedAtEnd, len(r.PrepareViolations))
	}
	fmt.Fprintf(&b, "fencing-token checks: %d writes accepted, %d refused (%d inside post-wake windows, %d violations)\n",
		r.TokenAccepted, r.TokenRefused, r.Refused, len(r.StaleWrites))
	ok := 0
	for _, rc := range r.Recoveries {
		if rc.Converged {
			ok++
		}
	}
	fmt.Fprintf(&b, "recoveries: %d/%d converged, worst %v (every key live exactly once within %v at worst)\n",
		ok, len(r.Recoveries), r.WorstRecovery().Round(time.Millisecond), r.WorstLive().Round(time.Millisecond))
	for _, rc := range r.SlowestRecoveries(5) {
		fmt.Fprintf(&b, "  quiet at event %d took %v after %s\n", rc.Seq, rc.Took.Round(time.Millisecond), strings.Join(rc.Faults, ", "))
	}
	fmt.Fprintf(&b, "failures: %d", len(r.Failures()))
	return b.String()
}

// segment is a part of an instance's life in which its process was not
// frozen. wake marks a segment that starts at a Resume.
type segment struct {
	in       *instance
	from, to Event
	wake     bool
}

// Check tests a history against the guarantees, knowing nothing of how dim
// works:
//
//   - at most one live instance per key at any moment, where an instance is
//     live from its Up to its Down (or Failed, or the Kill or Exit of its
//     process), leaving out the windows in which its process was frozen;
//     a node woken after a pause beyond its lease may overlap others only
//     until it fences itself, within WakeBound (counted apart);
//   - a woken node cancels and disconnects its old instances before it
//     creates anything, and its writes with old tokens are refused;
//   - every created instance is disconnected exactly once, or its process
//     was killed, or it is still live at the end;
//   - every prepared instance (dim.WithPrepare) is activated or disposed of,
//     exactly once and not both, or its process was killed, or it is still
//     pending at the end; an activated one is then an instance like any
//     other, and the rules above hold it (its activation is its Up);
//   - a leader observed after another leader's observation was written has
//     a strictly higher epoch;
//   - after each Quiet, every configured key is live exactly once on the
//     running nodes within RecoveryBound, evenly spread over them within
//     that bound plus the move budget's pacing (see Limits.Budget), and
//     stays so until Settled.
func Check(events []Event, lim Limits) *Report {
	r := &Report{Events: len(events), Faults: map[string]int{}}
	if len(events) == 0 {
		return r
	}
	r.Span = time.Duration(events[len(events)-1].T - events[0].T)
	s := NewState()
	lastN := map[string]int64{}

	type pending struct {
		quiet Event
		since Event // Seq 0 while not converged
		why   string
		// live is the first event at which every key was live exactly
		// once (Seq 0 before), and excess how many keys then had to move
		// for an even spread: the moves that follow are handoffs, each
		// with its own short gap, paced by the move budget.
		live   Event
		excess int
	}
	var q *pending
	// inPlay is the largest TTL of the processes alive since the last
	// Settled: the longest a lease of this round can hold a key.
	var inPlay time.Duration
	var round []string // fault kinds since the last Settled
	alive := func() time.Duration {
		var m time.Duration
		for _, p := range s.procs {
			if p.alive {
				m = max(m, lim.ttl(p))
			}
		}
		return m
	}
	for _, e := range events {
		if n := lastN[e.Src]; e.N != n+1 {
			r.Problems = append(r.Problems, fmt.Sprintf("event %d: %s line %d follows line %d (lines lost or repeated)", e.Seq, e.Src, e.N, n))
		}
		lastN[e.Src] = e.N
		s.Apply(e)
		if e.Kind == Spawn || e.Kind == Start {
			ttl := lim.ttl(s.procs[e.Proc()])
			inPlay = max(inPlay, ttl)
			r.MaxTTL = max(r.MaxTTL, ttl)
		}
		switch e.Kind {
		case Fault:
			r.Faults[e.Fault]++
			round = append(round, e.Fault)
		case Exit:
			if !e.Expected {
				r.Problems = append(r.Problems, fmt.Sprintf("event %d: %s exited unexpectedly: %s", e.Seq, e.Proc(), e.Detail))
			}
		case Quiet:
			q = &pending{quiet: e}
		}
		if q != nil {
			live, excess, why := s.Spread(q.quiet.Keys, q.quiet.Nodes)
			if live && q.live.Seq == 0 {
				q.live, q.excess = e, excess
			}
			if live && excess == 0 {
				if q.since.Seq == 0 {
					q.since = e
				}
			} else {
				q.since, q.why = Event{}, why
			}
			if e.Kind == Settled {
				rc := Recovery{Quiet: q.quiet.Time(), Converged: q.since.Seq != 0, Why: q.why, Faults: round, Seq: q.quiet.Seq}
				round = nil
				if rc.Converged {
					rc.Took = time.Duration(q.since.T - q.quiet.T)
					rc.Live = time.Duration(q.live.T - q.quiet.T)
					bound := lim.recoveryBound(inPlay)
					spread := bound + lim.budgetAllowance(q.excess, inPlay)
					switch {
					case lim.RecoveryBound <= 0:
					case rc.Live > bound:
						r.RecoveryFailures = append(r.RecoveryFailures, fmt.Sprintf("quiet at event %d: every key live only after %v (bound %v)", q.quiet.Seq, rc.Live, bound))
					case rc.Took > spread:
						r.RecoveryFailures = append(r.RecoveryFailures, fmt.Sprintf("quiet at event %d took %v to converge (bound %v, %v with %d keys to move under the move budget)", q.quiet.Seq, rc.Took, bound, spread, q.excess))
					}
				} else {
					r.RecoveryFailures = append(r.RecoveryFailures, fmt.Sprintf("quiet at event %d: not converged at event %d: %s", q.quiet.Seq, e.Seq, q.why))
				}
				r.Recoveries = append(r.Recoveries, rc)
				q = nil
				inPlay = alive()
			}
		}
	}
	r.Problems = append(r.Problems, s.odd...)
	r.Processes = len(s.procs)
	r.Instances = len(s.order)
	end := events[len(events)-1]
	end.Seq++ // open intervals end after the last event

	segs := segments(s, end)
	checkOverlaps(r, s, segs, lim)
	checkInstances(r, s)
	checkPrepared(r, s)
	checkStale(r, segs)
	checkWakes(r, s, lim)
	checkEpochs(r, s.leaders)
	return r
}

// segments cuts every instance's life into the parts in which its process
// was not frozen.
func segments(s *State, end Event) map[*instance][]segment {
	out := make(map[*instance][]segment, len(s.order))
	for _, in := range s.order {
		to := in.end
		if in.live() {
			to = end
		}
		from, wake := in.up, false
		var list []segment
		for _, w := range s.procs[in.proc].pauses {
			if w.from.Seq <= in.up.Seq || w.from.Seq >= to.Seq {
				continue
			}
			list = append(list, segment{in, from, w.from, wake})
			from, wake = w.to, w.to.Kind == Resume
		}
		if open := s.procs[in.proc].paused; open != nil && open.from.Seq > in.up.Seq && open.from.Seq < to.Seq {
			// Still frozen at the end: nothing after the pause counts.
			list = append(list, segment{in, from, open.from, wake})
		} else if from.Seq < to.Seq {
			list = append(list, segment{in, from, to, wake})
		}
		out[in] = list
	}
	return out
}

// checkOverlaps sweeps each key's segments in order of their start.
func checkOverlaps(r *Report, s *State, segs map[*instance][]segment, lim Limits) {
	bound := func(sg segment) int64 { return int64(lim.wakeBound(lim.ttl(s.procs[sg.in.proc]))) }
	byKey := map[string][]segment{}
	for in, list := range segs {
		byKey[in.key] = append(byKey[in.key], list...)
	}
	for _, key := range slices.Sorted(maps.Keys(byKey)) {
		list := byKey[key]
		slices.SortFunc(list, func(a, b segment) int { return int(a.from.Seq - b.from.Seq) })
		var active []segment
		for _, b := range list {
			kept := active[:0]
			for _, a := range active {
				if a.to.Seq > b.from.Seq {
					kept = append(kept, a)
				}
			}
			active = kept
			for _, a := range active {
				if a.in == b.in {
					continue
				}
				to := a.to
				if b.to.Seq < to.Seq {
					to = b.to
				}
				o := Overlap{Key: key, A: a.in.id, B: b.in.id, From: b.from.Time(), To: to.Time()}
				o.Wake = (a.wake && a.to.T-a.from.T <= bound(a)) ||
					(b.wake && b.to.T-b.from.T <= bound(b))
				if o.Wake {
					r.WakeOverl = append(r.WakeOverl, o)
				} else {
					r.Overlaps = append(r.Overlaps, o)
				}
			}
			active = append(active, b)
		}
	}
}

// checkInstances finds leaks and double disconnects.
func checkInstances(r *Report, s *State) {
	for _, in := range s.order {
		switch {
		case in.downs > 1:
			r.DoubleDowns = append(r.DoubleDowns, fmt.Sprintf("%s (key %s) disconnected %d times", in.id, in.key, in.downs))
		case in.downs > 0 && in.endKind == Failed:
			r.DoubleDowns = append(r.DoubleDowns, fmt.Sprintf("%s (key %s) disconnected although its create failed", in.id, in.key))
		}
		switch {
		case in.live():
			r.LiveAtEnd++
		case in.endKind == Exit:
			what := "created and never disconnected"
			if !in.created {
				what = "createInstance still running"
			}
			r.Leaks = append(r.Leaks, fmt.Sprintf("%s (key %s): %s when its process exited at event %d", in.id, in.key, what, in.end.Seq))
		}
	}
}

// checkPrepared holds every prepared instance to its end: activated (an
// activation that returned) or disposed of, exactly once and never both;
// none of it without a prepare that returned the instance. One whose
// process was killed first is lost with it; one whose process exited
// (gracefully or not) first leaked. An activation that failed must be
// disposed of.
func checkPrepared(r *Report, s *State) {
	for _, p := range s.porder {
		r.Prepares++
		name := fmt.Sprintf("%s (key %s)", p.id, p.key)
		bad := func(format string, args ...any) {
			r.PrepareViolations = append(r.PrepareViolations, name+": "+fmt.Sprintf(format, args...))
		}
		switch {
		case p.failed:
			r.PrepareFailed++
		case p.ok:
			r.Prepared++
		}
		if !p.ok {
			if p.ups > 0 || p.disposals > 0 {
				bad("activated %d and disposed of %d times, but its prepare never returned it", p.ups, p.disposals)
			}
			continue
		}
		if p.activated {
			r.Activated++
		}
		if p.disposals > 0 {
			r.Disposed++
		}
		switch {
		case p.ups > 1:
			bad("activated %d times", p.ups)
		case p.disposals > 1:
			bad("disposed of %d times", p.disposals)
		case p.ups > 0 && p.disposals > 0 && p.activation.Seq > p.disposed.Seq:
			bad("activated at event %d, after it was disposed of at event %d", p.activation.Seq, p.disposed.Seq)
		case p.activated && p.disposals > 0:
			bad("activated at event %d and disposed of at event %d", p.activation.Seq, p.disposed.Seq)
		case p.settled():
		case p.died.Kind == Kill:
			r.PreparedKilled++
		case p.died.Seq != 0 && p.ups > 0:
			bad("its activate failed and it was never disposed of before its process exited at event %d", p.died.Seq)
		case p.died.Seq != 0:
			bad("neither activated nor disposed of when its process exited at event %d", p.died.Seq)
		default:
			r.PreparedAtEnd++
		}
	}
}

// checkStale sorts refused writes: in a post-wake segment they show the
// fencing token at work; anywhere else a newer owner had already written
// while this instance still ran.
func checkStale(r *Report, segs map[*instance][]segment) {
	for in, list := range segs {
		for _, e := range in.stale {
			woken := false
			for _, sg := range list {
				if sg.wake && e.Seq > sg.from.Seq && e.Seq <= sg.to.Seq+1 {
					woken = true
				}
			}
			if woken {
				r.Refused++
			} else {
				r.StaleWrites = append(r.StaleWrites, fmt.Sprintf("event %d: %s (key %s) wrote with token %d after token %d", e.Seq, in.id, in.key, e.Token, e.Highest))
			}
		}
	}
}

// checkWakes measures how fast each node paused beyond its lease fenced the
// instances it ran, and checks it created nothing before.
func checkWakes(r *Report, s *State, lim Limits) {
	for _, name := range slices.Sorted(maps.Keys(s.procs)) {
		p := s.procs[name]
		ttl := lim.ttl(p)
		wakeBound := lim.wakeBound(ttl)
		for _, w := range p.pauses {
			paused := time.Duration(w.to.T - w.from.T)
			if w.to.Kind != Resume || paused < ttl {
				continue
			}
			wk := Wake{Proc: name, Paused: paused}
			var lastDown Event
			fenced := true
			for _, in := range s.order {
				if in.proc != name || in.up.Seq > w.from.Seq || (!in.live() && in.end.Seq < w.from.Seq) {
					continue
				}
				if !in.live() && in.endKind == Kill {
					continue
				}
				wk.Instances++
				if in.cancel.Seq != 0 {
					wk.Cancel = max(wk.Cancel, time.Duration(max(in.cancel.T-w.to.T, 0)))
				}
				if in.live() {
					fenced = false
					r.WakeViolations = append(r.WakeViolations, fmt.Sprintf("%s woke at event %d and never stopped %s (key %s)", name, w.to.Seq, in.id, in.key))
					continue
				}
				wk.Down = max(wk.Down, time.Duration(in.end.T-w.to.T))
				if in.end.Seq > lastDown.Seq {
					lastDown = in.end
				}
				for _, e := range in.stale {
					if e.Seq > w.to.Seq && e.Seq <= in.end.Seq+1 {
						wk.Refused++
					}
				}
				if in.endKind == Down && time.Duration(in.end.T-w.to.T) > wakeBound {
					r.WakeViolations = append(r.WakeViolations, fmt.Sprintf("%s woke at event %d and stopped %s (key %s) only after %v (bound %v)",
						name, w.to.Seq, in.id, in.key, time.Duration(in.end.T-w.to.T), wakeBound))
				}
			}
			if fenced && lastDown.Seq != 0 {
				for _, in := range s.order {
					if in.proc == name && in.up.Seq > w.to.Seq && in.up.Seq < lastDown.Seq {
						r.WakeViolations = append(r.WakeViolations, fmt.Sprintf("%s created %s (key %s) at event %d, before it had stopped its old instances",
							name, in.id, in.key, in.up.Seq))
					}
				}
			}
			r.Wakes = append(r.Wakes, wk)
		}
	}
}

// checkEpochs: once a leader's observation is written, any leader observed
// by a status read that starts later has a higher epoch, unless it is the
// same term (same process, same epoch).
func checkEpochs(r *Report, leaders []Event) {
	terms := map[string]bool{}
	for _, x := range leaders {
		terms[fmt.Sprintf("%s@%d", x.Proc(), x.Epoch)] = true
	}
	r.Terms = len(terms)
	byEpoch := map[uint64]string{}
	for _, x := range leaders {
		if p, ok := byEpoch[x.Epoch]; ok && p != x.Proc() {
			r.EpochViolations = append(r.EpochViolations, fmt.Sprintf("epoch %d led by both %s and %s", x.Epoch, p, x.Proc()))
		}
		byEpoch[x.Epoch] = x.Proc()
	}
	for i, x := range leaders {
		for _, y := range leaders[i+1:] {
			if y.ReadAt <= x.T || y.Epoch > x.Epoch || (y.Epoch == x.Epoch && y.Proc() == x.Proc()) {
				continue
			}
			r.EpochViolations = append(r.EpochViolations, fmt.Sprintf("event %d: %s leads with epoch %d, observed after %s led with epoch %d (event %d)",
				y.Seq, y.Proc(), y.Epoch, x.Proc(), x.Epoch, x.Seq))
		}
	}
}
