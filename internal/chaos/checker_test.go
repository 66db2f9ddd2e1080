package chaos

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hist builds a history by hand: every event one millisecond after the
// previous one, unless at moves the clock.
type hist struct {
	events []Event
	t      int64
	n      map[string]int64
}

func newHist() *hist { return &hist{t: time.Unix(1000, 0).UnixNano(), n: map[string]int64{}} }

func (h *hist) at(d time.Duration) *hist { h.t += int64(d); return h }

func (h *hist) add(e Event) *hist {
	if e.Src == "" {
		e.Src = "driver"
		if e.Kind.byNode() {
			e.Src = e.Proc()
		}
	}
	h.t += int64(time.Millisecond)
	h.n[e.Src]++
	e.T, e.N, e.Seq = h.t, h.n[e.Src], int64(len(h.events))+1
	h.events = append(h.events, e)
	return h
}

func (k Kind) byNode() bool {
	switch k {
	case Start, Ready, Up, Created, Failed, Cancel, Down, Leader, Stale, Stopping, Stopped,
		Prepare, Prepared, Unprepared, Disposed:
		return true
	}
	return false
}

func (h *hist) spawn(node string) *hist { return h.add(Event{Kind: Spawn, Node: node, PID: 1}) }
func (h *hist) up(node, key, inst string) *hist {
	return h.add(Event{Kind: Up, Node: node, PID: 1, Key: key, Inst: inst}).
		add(Event{Kind: Created, Node: node, PID: 1, Key: key, Inst: inst})
}
func (h *hist) down(node, key, inst string) *hist {
	return h.add(Event{Kind: Down, Node: node, PID: 1, Key: key, Inst: inst})
}
func (h *hist) kind(k Kind, node string) *hist { return h.add(Event{Kind: k, Node: node, PID: 1}) }

var testLimits = Limits{NodeTTL: time.Second, WakeBound: 200 * time.Millisecond, RecoveryBound: 2 * time.Second}

func TestAHandoffWithoutOverlapPasses(t *testing.T) {
	h := newHist().spawn("n1").spawn("n2").
		up("n1", "k", "a").down("n1", "k", "a").
		up("n2", "k", "b")
	r := Check(h.events, testLimits)
	assert.Empty(t, r.Failures())
	assert.Equal(t, 2, r.Instances)
	assert.Equal(t, 1, r.LiveAtEnd)
}

func TestTwoLiveInstancesOfOneKeyAreAnOverlap(t *testing.T) {
	h := newHist().spawn("n1").spawn("n2").
		up("n1", "k", "a").
		up("n2", "k", "b").
		down("n1", "k", "a").
		up("n1", "other", "c")
	r := Check(h.events, testLimits)
	require.Len(t, r.Overlaps, 1)
	assert.Equal(t, "k", r.Overlaps[0].Key)
	assert.Len(t, r.Failures(), 1)
}

func TestAnInstanceBeingCreatedIsAlreadyLive(t *testing.T) {
	h := newHist().spawn("n1").spawn("n2").
		add(Event{Kind: Up, Node: "n1", PID: 1, Key: "k", Inst: "a"}).
		up("n2", "k", "b").
		add(Event{Kind: Failed, Node: "n1", PID: 1, Key: "k", Inst: "a"})
	r := Check(h.events, testLimits)
	assert.Len(t, r.Overlaps, 1)
}

func TestAKilledProcessEndsItsInstancesAtTheKill(t *testing.T) {
	h := newHist().spawn("n1").spawn("n2").
		up("n1", "k", "a").
		kind(Kill, "n1").
		up("n2", "k", "b")
	r := Check(h.events, testLimits)
	assert.Empty(t, r.Failures())
	assert.Empty(t, r.Leaks, "a killed instance is not a leak")
}

func TestAPausedWindowIsLeftOutAndAWakeUpMeasured(t *testing.T) {
	h := newHist().spawn("n1").spawn("n2").
		up("n1", "k", "a").
		kind(Pause, "n1").
		at(time.Second).
		up("n2", "k", "b").
		at(500*time.Millisecond).
		kind(Resume, "n1").
		add(Event{Kind: Cancel, Node: "n1", PID: 1, Key: "k", Inst: "a"}).
		add(Event{Kind: Stale, Node: "n1", PID: 1, Key: "k", Inst: "a", Token: 1, Highest: 2}).
		down("n1", "k", "a")
	r := Check(h.events, testLimits)
	assert.Empty(t, r.Failures())
	assert.Len(t, r.WakeOverl, 1, "the woken node overlaps until it fences, within the bound")
	require.Len(t, r.Wakes, 1)
	w := r.Wakes[0]
	assert.Equal(t, 1, w.Instances)
	assert.Equal(t, time.Millisecond, w.Cancel)
	assert.Equal(t, 3*time.Millisecond, w.Down)
	assert.Equal(t, 1, w.Refused)
	assert.Equal(t, 1, r.Refused)
}

func TestAWokenNodeThatFencesTooLateOverlaps(t *testing.T) {
	h := newHist().spawn("n1").spawn("n2").
		up("n1", "k", "a").
		kind(Pause, "n1").
		at(time.Second).
		up("n2", "k", "b").
		kind(Resume, "n1").
		at(300*time.Millisecond).
		down("n1", "k", "a")
	r := Check(h.events, testLimits)
	assert.Len(t, r.Overlaps, 1)
	assert.Len(t, r.WakeViolations, 1)
}

func TestAWokenNodeMustNotCreateBeforeItFenced(t *testing.T) {
	h := newHist().spawn("n1").spawn("n2").
		up("n1", "k", "a").
		kind(Pause, "n1").
		at(time.Second).
		kind(Resume, "n1").
		up("n1", "j", "c").
		down("n1", "k", "a")
	r := Check(h.events, testLimits)
	require.Len(t, r.WakeViolations, 1)
	assert.Contains(t, r.WakeViolations[0], "before it had stopped")
}

func TestAStaleWriteOutsideAWakeUpIsAViolation(t *testing.T) {
	h := newHist().spawn("n1").
		up("n1", "k", "a").
		add(Event{Kind: Stale, Node: "n1", PID: 1, Key: "k", Inst: "a", Token: 1, Highest: 2})
	r := Check(h.events, testLimits)
	assert.Len(t, r.StaleWrites, 1)
}

func TestLeaksAndDoubleDisconnects(t *testing.T) {
	h := newHist().spawn("n1").
		up("n1", "k", "a").
		up("n1", "j", "b").down("n1", "j", "b").down("n1", "j", "b").
		add(Event{Kind: Up, Node: "n1", PID: 1, Key: "f", Inst: "c"}).
		add(Event{Kind: Failed, Node: "n1", PID: 1, Key: "f", Inst: "c"}).
		down("n1", "f", "c").
		kind(Term, "n1").
		add(Event{Kind: Exit, Node: "n1", PID: 1, Expected: true, Detail: "exit 0"})
	r := Check(h.events, testLimits)
	require.Len(t, r.Leaks, 1)
	assert.Contains(t, r.Leaks[0], "a (key k)")
	assert.Len(t, r.DoubleDowns, 2)
}

// prep adds a prepare of key on node that returns instance inst.
func (h *hist) prep(node, key, inst string) *hist {
	return h.add(Event{Kind: Prepare, Node: node, PID: 1, Key: key, Inst: inst}).
		add(Event{Kind: Prepared, Node: node, PID: 1, Key: key, Inst: inst})
}

func (h *hist) ev(k Kind, node, key, inst string) *hist {
	return h.add(Event{Kind: k, Node: node, PID: 1, Key: key, Inst: inst})
}

func TestPreparedInstancesAreActivatedOrDisposedOfOnce(t *testing.T) {
	h := newHist().spawn("n1").spawn("n2").
		up("n1", "k", "a").
		prep("n2", "k", "b").
		down("n1", "k", "a").
		up("n2", "k", "b"). // activated after the old one stopped
		prep("n2", "j", "c").
		ev(Disposed, "n2", "j", "c").
		ev(Prepare, "n2", "x", "d").
		ev(Unprepared, "n2", "x", "d").
		prep("n2", "y", "e").
		ev(Up, "n2", "y", "e").
		ev(Failed, "n2", "y", "e").
		ev(Disposed, "n2", "y", "e"). // disposed of after a failed activate
		prep("n1", "z", "f").
		kind(Kill, "n1") // lost with its process
	h.prep("n2", "w", "g") // pending at the end
	r := Check(h.events, testLimits)
	assert.Empty(t, r.Failures())
	assert.Equal(t, 6, r.Prepares)
	assert.Equal(t, 5, r.Prepared)
	assert.Equal(t, 1, r.PrepareFailed)
	assert.Equal(t, 1, r.Activated)
	assert.Equal(t, 2, r.Disposed)
	assert.Equal(t, 1, r.PreparedKilled)
	assert.Equal(t, 1, r.PreparedAtEnd)
}

func TestAPreparedInstanceNotActivatedOrDisposedOfExactlyOnceIsAViolation(t *testing.T) {
	h := newHist().spawn("n1").spawn("n2").
		prep("n2", "k1", "twice").
		ev(Disposed, "n2", "k1", "twice").
		ev(Disposed, "n2", "k1", "twice").
		prep("n2", "k2", "both").
		up("n2", "k2", "both").
		ev(Disposed, "n2", "k2", "both").
		prep("n2", "k3", "again").
		up("n2", "k3", "again").down("n2", "k3", "again").
		up("n2", "k3", "again").
		ev(Prepare, "n2", "k4", "failed").
		ev(Unprepared, "n2", "k4", "failed").
		ev(Disposed, "n2", "k4", "failed").
		prep("n2", "k5", "late").
		ev(Disposed, "n2", "k5", "late").
		up("n2", "k5", "late").
		prep("n2", "k6", "leaked").
		prep("n2", "k7", "failed-activate").
		ev(Up, "n2", "k7", "failed-activate").
		ev(Failed, "n2", "k7", "failed-activate").
		kind(Term, "n2").
		add(Event{Kind: Exit, Node: "n2", PID: 1, Expected: true, Detail: "exit 0"})
	r := Check(h.events, testLimits)
	want := []string{
		"twice (key k1): disposed of 2 times",
		"both (key k2): activated at event",
		"again (key k3): activated 2 times",
		"failed (key k4): activated 0 and disposed of 1 times, but its prepare never returned it",
		"late (key k5): activated at event",
		"leaked (key k6): neither activated nor disposed of when its process exited",
		"failed-activate (key k7): its activate failed and it was never disposed of",
	}
	require.Len(t, r.PrepareViolations, len(want), "%q", r.PrepareViolations)
	for i, w := range want {
		assert.Contains(t, r.PrepareViolations[i], w)
	}
	assert.Contains(t, r.PrepareViolations[4], "after it was disposed of")
	failures := strings.Join(r.Failures(), "\n")
	assert.Contains(t, failures, "prepared: leaked (key k6)")
}

func TestAnActivatedInstanceIsALiveThatMustNotOverlap(t *testing.T) {
	h := newHist().spawn("n1").spawn("n2").
		up("n1", "k", "a").
		prep("n2", "k", "b").
		up("n2", "k", "b"). // activated while the old one still runs
		down("n1", "k", "a")
	r := Check(h.events, testLimits)
	require.Len(t, r.Overlaps, 1)
	assert.Equal(t, "b", r.Overlaps[0].B)
	assert.Empty(t, r.PrepareViolations)

	h = newHist().spawn("n1").spawn("n2").
		up("n1", "k", "a").
		prep("n2", "k", "b"). // prepared while the old one runs: not a life
		down("n1", "k", "a").
		up("n2", "k", "b")
	assert.Empty(t, Check(h.events, testLimits).Failures())
}

func TestAnUnexpectedExitIsAProblem(t *testing.T) {
	h := newHist().spawn("n1").add(Event{Kind: Exit, Node: "n1", PID: 1, Detail: "exit status 2"})
	r := Check(h.events, testLimits)
	require.Len(t, r.Problems, 1)
	assert.Contains(t, r.Problems[0], "unexpectedly")
}

func TestALostLineIsAProblem(t *testing.T) {
	h := newHist().spawn("n1").up("n1", "k", "a")
	h.events[2].N = 7
	r := Check(h.events, testLimits)
	assert.NotEmpty(t, r.Problems)
}

func TestEpochsMustGrowFromOneLeaderToTheNext(t *testing.T) {
	leader := func(node string, epoch uint64, readAt int64) Event {
		return Event{Kind: Leader, Node: node, PID: 1, Epoch: epoch, ReadAt: readAt}
	}
	t.Run("growing epochs pass", func(t *testing.T) {
		h := newHist()
		h.add(leader("n1", 5, h.t))
		h.add(leader("n2", 6, h.t))
		r := Check(h.events, testLimits)
		assert.Empty(t, r.EpochViolations)
		assert.Equal(t, 2, r.Terms)
	})
	t.Run("a lower epoch read later fails", func(t *testing.T) {
		h := newHist()
		h.add(leader("n1", 5, h.t))
		h.add(leader("n2", 4, h.t+1)) // read after n1's line was written
		r := Check(h.events, testLimits)
		assert.Len(t, r.EpochViolations, 1)
	})
	t.Run("one epoch on two nodes fails", func(t *testing.T) {
		h := newHist()
		h.add(leader("n1", 5, h.t))
		h.add(leader("n2", 5, h.t))
		r := Check(h.events, testLimits)
		assert.NotEmpty(t, r.EpochViolations)
	})
	t.Run("a read that began before the other was written proves nothing", func(t *testing.T) {
		h := newHist()
		early := h.t
		h.add(leader("n1", 5, h.t))
		h.add(leader("n2", 4, early))
		r := Check(h.events, testLimits)
		assert.Empty(t, r.EpochViolations)
	})
}

func TestRecoveryIsMeasuredFromQuietToLastingConvergence(t *testing.T) {
	quiet := Event{Kind: Quiet, Keys: []string{"k1", "k2", "k3"}, Nodes: []string{"n1", "n2"}}
	t.Run("even and in time", func(t *testing.T) {
		h := newHist().spawn("n1").spawn("n2").add(quiet).
			at(300*time.Millisecond).
			up("n1", "k1", "a").up("n2", "k2", "b").up("n2", "k3", "c").
			add(Event{Kind: Settled})
		r := Check(h.events, testLimits)
		assert.Empty(t, r.Failures())
		require.Len(t, r.Recoveries, 1)
		assert.Equal(t, 306*time.Millisecond, r.Recoveries[0].Took)
	})
	t.Run("uneven never converges", func(t *testing.T) {
		h := newHist().spawn("n1").spawn("n2").add(quiet).
			up("n1", "k1", "a").up("n1", "k2", "b").up("n1", "k3", "c").
			add(Event{Kind: Settled})
		r := Check(h.events, testLimits)
		require.Len(t, r.RecoveryFailures, 1)
		assert.Contains(t, r.RecoveryFailures[0], "uneven")
	})
	t.Run("a removed key still live never converges", func(t *testing.T) {
		h := newHist().spawn("n1").spawn("n2").
			up("n2", "gone", "z").
			add(quiet).
			up("n1", "k1", "a").up("n2", "k2", "b").up("n2", "k3", "c").
			add(Event{Kind: Settled})
		r := Check(h.events, testLimits)
		assert.Len(t, r.RecoveryFailures, 1)
	})
	t.Run("too slow", func(t *testing.T) {
		h := newHist().spawn("n1").spawn("n2").add(quiet).
			at(3*time.Second).
			up("n1", "k1", "a").up("n2", "k2", "b").up("n2", "k3", "c").
			add(Event{Kind: Settled})
		r := Check(h.events, testLimits)
		require.Len(t, r.RecoveryFailures, 1)
		assert.Contains(t, r.RecoveryFailures[0], "bound")
	})
	t.Run("a move budget paces the spread, not the keys coming back", func(t *testing.T) {
		// Every key live at once, all on n1; one must move, and does after
		// 2.3 s: past the bound, within one budget step more.
		spread := newHist().spawn("n1").spawn("n2").add(quiet).
			up("n1", "k1", "a").up("n1", "k2", "b").up("n1", "k3", "c").
			at(2300*time.Millisecond).
			down("n1", "k3", "c").up("n2", "k3", "d").
			add(Event{Kind: Settled})
		budget := testLimits
		budget.Budget, budget.BudgetStep = 1, 500*time.Millisecond
		r := Check(spread.events, budget)
		assert.Empty(t, r.Failures())
		require.Len(t, r.Recoveries, 1)
		assert.Greater(t, r.Recoveries[0].Took, 2300*time.Millisecond)
		assert.Less(t, r.Recoveries[0].Live, 10*time.Millisecond)

		r = Check(spread.events, testLimits)
		require.Len(t, r.RecoveryFailures, 1, "without a budget the same spread is too slow")
		assert.Contains(t, r.RecoveryFailures[0], "bound")

		late := newHist().spawn("n1").spawn("n2").add(quiet).
			at(2500*time.Millisecond).
			up("n1", "k1", "a").up("n2", "k2", "b").up("n2", "k3", "c").
			add(Event{Kind: Settled})
		r = Check(late.events, budget)
		require.Len(t, r.RecoveryFailures, 1, "keys that come back late are late under any budget")
		assert.Contains(t, r.RecoveryFailures[0], "every key live only after")
	})
	t.Run("convergence lost again counts from when it came back", func(t *testing.T) {
		h := newHist().spawn("n1").spawn("n2").add(quiet).
			up("n1", "k1", "a").up("n2", "k2", "b").up("n2", "k3", "c").
			down("n2", "k3", "c").
			at(time.Second).
			up("n1", "k3", "d").down("n1", "k3", "d").up("n2", "k3", "e").
			add(Event{Kind: Settled})
		r := Check(h.events, testLimits)
		assert.Empty(t, r.Failures())
		require.Len(t, r.Recoveries, 1)
		assert.Greater(t, r.Recoveries[0].Took, time.Second)
	})
}

func TestTheSlowestRecoveriesNameTheirRoundsFaults(t *testing.T) {
	round := func(h *hist, fault string, took time.Duration) *hist {
		return h.add(Event{Kind: Fault, Fault: fault}).
			add(Event{Kind: Quiet, Keys: []string{"k1"}, Nodes: []string{"n1"}}).
			at(took).
			up("n1", "k1", fault).
			add(Event{Kind: Settled}).
			down("n1", "k1", fault)
	}
	h := newHist().spawn("n1")
	h = round(h, "crash", 100*time.Millisecond)
	h = round(h.add(Event{Kind: Fault, Fault: "pause"}), "failover", 900*time.Millisecond)
	h = round(h, "churn", 400*time.Millisecond)
	r := Check(h.events, testLimits)
	slow := r.SlowestRecoveries(2)
	require.Len(t, slow, 2)
	assert.Equal(t, []string{"pause", "failover"}, slow[0].Faults)
	assert.Equal(t, []string{"churn"}, slow[1].Faults)
	assert.Greater(t, slow[0].Took, slow[1].Took)
	assert.Contains(t, r.Summary(), "after pause, failover")
}

func TestFaultsAreCountedByKind(t *testing.T) {
	h := newHist().
		add(Event{Kind: Fault, Fault: "crash"}).
		add(Event{Kind: Fault, Fault: "crash"}).
		add(Event{Kind: Fault, Fault: "pause"})
	r := Check(h.events, testLimits)
	assert.Equal(t, map[string]int{"crash": 2, "pause": 1}, r.Faults)
	assert.Contains(t, r.Summary(), "faults: 3 (crash=2 pause=1)")
}

func TestHistoryFilesRoundTripAcrossWriters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "h.jsonl")
	a, err := OpenWriter(path, "a")
	require.NoError(t, err)
	b, err := OpenWriter(path, "b")
	require.NoError(t, err)
	tail := NewTail(path)
	_, err = a.Log(Event{Kind: Spawn, Node: "n1", PID: 1})
	require.NoError(t, err)
	first, err := tail.Next()
	require.NoError(t, err)
	require.Len(t, first, 1)
	_, err = b.Log(Event{Kind: Up, Node: "n1", PID: 1, Key: "k", Inst: "x"})
	require.NoError(t, err)
	_, err = a.Log(Event{Kind: End})
	require.NoError(t, err)
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())
	// A writer killed mid-line leaves a partial line: readers skip it.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"t":1,"src":"c"`)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	events, err := ReadFile(path)
	require.NoError(t, err)
	require.Len(t, events, 3)
	assert.Equal(t, []int64{1, 2, 3}, []int64{events[0].Seq, events[1].Seq, events[2].Seq})
	assert.Equal(t, "b", events[1].Src)
	assert.Equal(t, int64(2), events[2].N, "per-writer sequence")
	rest, err := tail.Next()
	require.NoError(t, err)
	require.Len(t, rest, 2)
	assert.Equal(t, int64(3), rest[1].Seq)
}

func TestMonitorLinesParse(t *testing.T) {
	cmd, ok := parseMonitorLine(`+1700000000.123456 [0 127.0.0.1:5000] "EVALSHA" "abc" "2" "k1" "k2" "n1" "s\"1"`)
	require.True(t, ok)
	assert.Equal(t, time.Unix(1700000000, 123456000), cmd.At)
	assert.Equal(t, "n1", cmd.ScriptArg())
	assert.Equal(t, `s"1`, cmd.Args[6])
	_, ok = parseMonitorLine("+OK")
	assert.False(t, ok)
	plain, ok := parseMonitorLine(`+1.5 [0 lua] "GET" "x"`)
	require.True(t, ok)
	assert.Equal(t, "", plain.ScriptArg())
	assert.True(t, strings.EqualFold(plain.Args[0], "get"))
}
