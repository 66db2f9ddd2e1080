package dim

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// table is the node's instance table and the calls that fill and empty it,
// owned by the node loop: nothing else touches it, so reconciliation is
// serialised by construction. What the node holds in Redis is on its
// ledger; its handoffs are in handoffs.
//
// A create or a disconnect that takes its time holds up no other key: the
// node loop waits a moment for the calls it starts, and leaves the slower
// ones to finish in the background. Their keys are busy until then: neither
// claimed again nor released, so a key still has at most one instance.
type table[C, I any] struct {
	*env
	calls    *callbacks[C, I]
	ledger   *ledger
	handoffs *handoffs[C, I]
	life     *lifecycle

	running  map[string]*entry[I] // by key
	creating map[string]struct{}  // keys whose create runs; its result is not filed yet
	stopping map[string]*entry[I] // by key: entries whose disconnect runs in the background

	created chan createResult[C, I] // unbuffered: creates that outlasted their reconcile
	slots   chan struct{}           // a slot per create under way (WithCreateConcurrency)
}

func newTable[C, I any](e *env, calls *callbacks[C, I], l *ledger, h *handoffs[C, I], life *lifecycle) *table[C, I] {
	return &table[C, I]{
		env:      e,
		calls:    calls,
		ledger:   l,
		handoffs: h,
		life:     life,
		running:  make(map[string]*entry[I]),
		creating: make(map[string]struct{}),
		stopping: make(map[string]*entry[I]),
		created:  make(chan createResult[C, I]),
		slots:    make(chan struct{}, e.s.createConcurrency),
	}
}

// busy reports whether key has a create or a background disconnect under
// way.
func (t *table[C, I]) busy(key string) bool {
	if _, ok := t.creating[key]; ok {
		return true
	}
	_, ok := t.stopping[key]
	return ok
}

// runs lists the keys whose instances run: not stopping.
func (t *table[C, I]) runs() []string {
	keys := make([]string, 0, len(t.running))
	for key, e := range t.running {
		if !e.stopping.Load() {
			keys = append(keys, key)
		}
	}
	return keys
}

// has reports whether key has an instance in the table: running, or
// stopped behind the node loop's back and not yet taken out (see dropStale);
// not creating, nor stopping in the background.
func (t *table[C, I]) has(key string) bool {
	_, ok := t.running[key]
	return ok
}

type createJob[C any] struct {
	key   string
	cfg   config[C]
	token uint64
	gen   string          // the record's generation when the claim was sent
	lease context.Context // the lease the claim was made under
}

// createResult is what a create or an activate returned, for the node loop
// to file.
type createResult[C, I any] struct {
	job createJob[C]
	e   *entry[I]
	err error
}

// createAll starts creating instances, at most WithCreateConcurrency at a
// time, and files them in the table as they come, until passWait passes
// with none. The others finish in the background: the node loop files them
// from created, and until then their keys are busy. It counts the creates
// it filed, for the reconcile's span.
func (t *table[C, I]) createAll(ctx, leaseCtx context.Context, session string, jobs []createJob[C]) (created, failed int) {
	if len(jobs) == 0 {
		return 0, 0
	}
	pres := make([]*prepared[I], len(jobs))
	ours := make(map[string]bool, len(jobs))
	for i, job := range jobs {
		t.creating[job.key] = struct{}{}
		pres[i] = t.handoffs.take(job.key)
		ours[job.key] = true
	}
	t.wg.Go(func() { t.dispatch(ctx, leaseCtx, session, jobs, pres) })
	idle := time.NewTimer(passWait)
	defer idle.Stop()
	for left := len(jobs); left > 0; {
		select {
		case r := <-t.created:
			if ours[r.job.key] {
				left--
			}
			switch t.file(r) {
			case createdOK:
				created++
			case createFailed:
				failed++
			}
			idle.Reset(passWait)
		case <-idle.C:
			return created, failed
		}
	}
	return created, failed
}

// passWait is how long a reconcile waits for the next of the creates it
// started before it goes on: many quick creates are filed in one pass, and
// slow ones when they return.
const passWait = 100 * time.Millisecond

// dispatch runs the jobs' creates (or activates, with a prepared instance),
// at most WithCreateConcurrency at a time, and hands each result to the node
// loop. Once the node has stopped, the jobs not begun are dropped (their
// prepared instances disposed of) and an instance nobody will file is
// stopped.
func (t *table[C, I]) dispatch(ctx, leaseCtx context.Context, session string, jobs []createJob[C], pres []*prepared[I]) {
	for i, job := range jobs {
		select {
		case t.slots <- struct{}{}:
		case <-t.runCtx.Done():
			for j, job := range jobs[i:] {
				if p := pres[i+j]; p != nil {
					t.calls.dispose(p, job.key)
				}
			}
			return
		}
		p := pres[i]
		t.wg.Go(func() {
			var r createResult[C, I]
			r.job = job
			if t.life.stopping() {
				// Stop came while this create waited for its turn.
				if p != nil {
					t.calls.dispose(p, job.key)
				}
				r.err = fmt.Errorf("%w: the node is stopping", errNotCreated)
			} else if p != nil {
				r.e, r.err = t.calls.activateJob(ctx, session, job, p)
			} else {
				r.e, r.err = t.calls.create(ctx, leaseCtx, session, job)
			}
			// The slot is held until the node loop has the result, so that
			// no more than WithCreateConcurrency results wait for it.
			defer func() { <-t.slots }()
			select {
			case t.created <- r:
			case <-t.runCtx.Done():
				// Nobody will file it: the node has stopped.
				if r.e != nil {
					<-t.calls.instances.begin(r.e)
				}
			}
		})
	}
}

// What filing a create's result did.
const (
	createSkipped = iota // not created: the claim is tried again
	createFailed
	createdOK
)

// file files a create's result: the instance in the table, or the failure
// and its backoff.
func (t *table[C, I]) file(r createResult[C, I]) int {
	delete(t.creating, r.job.key)
	t.live.advance()
	if errors.Is(r.err, errNotCreated) {
		t.log.Debug("create skipped", "key", r.job.key, "reason", r.err)
		t.ledger.waiting[r.job.key] = time.Now().Add(t.ledger.claimRetry)
		return createSkipped
	}
	if r.err != nil {
		t.ledger.recordFailure(r.job.key, r.job.cfg.hashedSum(), "create", r.err)
		return createFailed
	}
	// A create that works ends a streak of failed creates; a streak of
	// failed health checks ends only with a passing check, so that an
	// instance that connects and then always fails is not recreated at
	// the base delay forever.
	if f := t.ledger.failures[r.job.key]; f != nil && f.kind != "health check" {
		delete(t.ledger.failures, r.job.key)
	}
	t.running[r.job.key] = r.e
	return createdOK
}

// fileReady files the results that have come, without waiting.
func (t *table[C, I]) fileReady() {
	for {
		select {
		case r := <-t.created:
			t.file(r)
		default:
			return
		}
	}
}

// awaitCreates files every create under way, waiting for each (a create
// returns by the callback timeout, and at once when the lease ends): the
// node is fenced or stopping, and must stop what they bring to life.
func (t *table[C, I]) awaitCreates() {
	for len(t.creating) > 0 {
		select {
		case r := <-t.created:
			t.file(r)
		case <-t.runCtx.Done():
			return
		}
	}
}

// disconnectAll stops entries, all at once, removes them from the table and
// waits until each disconnect hook returned or was abandoned.
func (t *table[C, I]) disconnectAll(entries []*entry[I]) { t.stopEntries(entries, false) }

// stopInBackground is disconnectAll for the node loop's own moves: the
// disconnects still running after stoppingAfter finish in the background,
// their keys busy until they return, which wakes the node loop.
func (t *table[C, I]) stopInBackground(entries []*entry[I]) { t.stopEntries(entries, true) }

// stopEntries stops entries, all at once, and removes them from the table.
// Disconnects that take longer than stoppingAfter show as stopping; in the
// background, or waited for.
func (t *table[C, I]) stopEntries(entries []*entry[I], background bool) {
	if len(entries) == 0 {
		return
	}
	chans := make([]<-chan struct{}, 0, len(entries))
	for _, e := range entries {
		delete(t.running, e.key)
		chans = append(chans, t.calls.instances.begin(e))
	}
	slow := time.NewTimer(stoppingAfter)
	defer slow.Stop()
	for i, ch := range chans {
		select {
		case <-ch:
			t.live.advance()
			continue
		case <-slow.C:
		}
		slow := stillStopping(entries[i:], chans[i:])
		keys, sessions := make([]string, len(slow)), make([]string, len(slow))
		for j, e := range slow {
			keys[j], sessions[j] = e.key, e.session
		}
		t.ledger.markStopping(keys, sessions)
		if background {
			// Each key marked stopping goes to the stopping set, even if its
			// disconnect has returned since: the sweep ends its state.
			for _, e := range slow {
				t.stopping[e.key] = e
				t.wg.Go(func() {
					<-e.stopped
					t.triggerNode()
				})
			}
			return
		}
		for _, ch := range chans[i:] {
			<-ch
			t.live.advance()
		}
		break
	}
	for _, e := range entries {
		t.ledger.stopped(e.key)
	}
}

// sweepStopped forgets the background disconnects that have returned.
func (t *table[C, I]) sweepStopped() {
	for key, e := range t.stopping {
		select {
		case <-e.stopped:
			delete(t.stopping, key)
			t.ledger.stopped(key)
		default:
		}
	}
}

// awaitStopping waits for every background disconnect: the node is fenced
// or stopping, and releases its keys next.
func (t *table[C, I]) awaitStopping() {
	for _, e := range t.stopping {
		<-e.stopped
		t.live.advance()
	}
	t.sweepStopped()
}

// stoppingAfter is how long a disconnect runs before its key is shown as
// stopping; quicker ones are never published.
const stoppingAfter = 100 * time.Millisecond

// stillStopping lists the entries whose disconnect still runs.
func stillStopping[I any](entries []*entry[I], chans []<-chan struct{}) []*entry[I] {
	var slow []*entry[I]
	for i, e := range entries {
		select {
		case <-chans[i]:
		default:
			slow = append(slow, e)
		}
	}
	return slow
}
