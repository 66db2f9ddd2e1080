package dim

import (
	"sync"
	"sync/atomic"
)

// phase is where a Manager is in its life. The order matters: every phase
// from phaseStopping on means the node takes no new work.
type phase int32

const (
	// phaseNew: made by New, not started. Only Start leaves it.
	phaseNew phase = iota
	// phaseRunning: Start has begun (Stop waits for Start on the lifecycle
	// lock, so nothing else needs to tell starting from running), and the
	// node is not fenced.
	phaseRunning
	// phaseFenced: the lease ended without a renewal (or Redis disowned it);
	// the node loop is stopping the fenced session's instances. The node
	// rejoins only once they are gone, which takes it back to phaseRunning.
	phaseFenced
	// phaseStopping: Stop has begun. It hands the node's keys off, stops its
	// instances and leaves; a fence no longer changes the phase.
	phaseStopping
	// phaseStopped: Stop returned (its work may go on in the background
	// after a deadline), or Start failed. A Manager is never reused.
	phaseStopped
)

// String names a phase for logs and test failures.
func (p phase) String() string {
	switch p {
	case phaseNew:
		return "new"
	case phaseRunning:
		return "running"
	case phaseFenced:
		return "fenced"
	case phaseStopping:
		return "stopping"
	case phaseStopped:
		return "stopped"
	}
	return "unknown"
}

// lifecycle owns a Manager's phase. The transitions are:
//
//	new      → running   Start (begin)
//	running  → stopped   Start failed (fail)
//	running  → fenced    the lease was lost (fence)
//	fenced   → running   the node loop stopped the fenced instances (unfence)
//	running,
//	fenced   → stopping  Stop (beginStop)
//	stopping → stopped   Stop returned (end)
//
// Start and Stop hold mu for their whole run; fence and unfence come from
// other goroutines at any time and change the phase only by
// compare-and-swap, so that a fence never undoes a Stop.
type lifecycle struct {
	mu sync.Mutex // serialises Start and Stop
	ph atomic.Int32
}

// load returns the current phase.
func (l *lifecycle) load() phase { return phase(l.ph.Load()) }

// begin moves a new Manager to running; the caller holds mu.
func (l *lifecycle) begin() error {
	if l.ph.CompareAndSwap(int32(phaseNew), int32(phaseRunning)) {
		return nil
	}
	if l.load() == phaseStopped {
		return ErrStopped
	}
	return ErrAlreadyStarted
}

// beginStop moves a started Manager to stopping; the caller holds mu. A
// fence or unfence may race with it, hence the loop.
func (l *lifecycle) beginStop() error {
	for {
		switch p := l.load(); p {
		case phaseNew:
			return ErrNotStarted
		case phaseRunning, phaseFenced:
			if l.ph.CompareAndSwap(int32(p), int32(phaseStopping)) {
				return nil
			}
		default:
			return ErrStopped
		}
	}
}

// end marks the Manager stopped: after Stop, or after a failed Start.
func (l *lifecycle) end() { l.ph.Store(int32(phaseStopped)) }

// fence records a lost lease, unless the Manager is stopping anyway.
func (l *lifecycle) fence() { l.ph.CompareAndSwap(int32(phaseRunning), int32(phaseFenced)) }

// unfence records that the fenced session's instances are gone, so that the
// node may rejoin.
func (l *lifecycle) unfence() { l.ph.CompareAndSwap(int32(phaseFenced), int32(phaseRunning)) }

// stopping reports whether Stop has begun (or the Manager stopped).
func (l *lifecycle) stopping() bool { return l.load() >= phaseStopping }

// checkStarted returns ErrNotStarted before Start and ErrStopped once Stop
// has returned: in between, the calls that talk to Redis may go ahead.
func (l *lifecycle) checkStarted() error {
	switch l.load() {
	case phaseNew:
		return ErrNotStarted
	case phaseStopped:
		return ErrStopped
	}
	return nil
}

// canTakeWork reports whether a node holding session may claim keys, create
// instances or lead: it is a member and is not stopping.
func (l *lifecycle) canTakeWork(session string) bool {
	return session != "" && !l.stopping()
}
