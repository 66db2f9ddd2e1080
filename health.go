package dim

import (
	"net/http"
	"sync/atomic"
	"time"
)

// Paths served by [Manager.HealthHandler].
const (
	ReadyPath = "/readyz" // readiness: 200 while [Manager.Ready], else 503
	LivePath  = "/livez"  // liveness: 200 unless the Manager is wedged, else 503
)

// Ready reports whether this replica is a full member of its service: it has
// been started, holds a lease that has not run out (it joined, and its last
// renewal is recent enough), is not fenced and is not stopping or stopped.
//
// A replica that is ready may be assigned keys; one that is not runs none,
// or is about to stop running them. Readiness depends on Redis: a replica
// that cannot renew its lease fences itself and is not ready until it has
// rejoined. Kubernetes uses it to pace a rolling update (the next old pod
// goes once the new one is ready) and a PodDisruptionBudget counts ready
// pods; see docs/KUBERNETES.md.
func (m *Manager[C, I]) Ready() bool { return m.notReady() == "" }

// notReady says why the replica is not ready, or "" when it is.
func (m *Manager[C, I]) notReady() string {
	switch m.life.load() {
	case phaseNew:
		return "not started"
	case phaseStopped:
		return "stopped"
	case phaseStopping:
		return "stopping"
	case phaseFenced:
		return "fenced: stopping its instances"
	}
	session, _ := m.membership.current()
	if session == "" {
		return "no lease: joining, or fenced and rejoining"
	}
	if m.membership.lease.expired(session) {
		return "lease expired: fencing"
	}
	return ""
}

// Live reports whether this replica's Manager is not wedged. It never asks
// Redis, and a Redis that is down or unreachable never makes it false: every
// call dim makes to Redis has a deadline, so its loops keep turning while
// Redis is away (the replica fences and tries to rejoin, and is not
// [Manager.Ready], but it is live). Restarting the process would not bring
// Redis back, and restarting every replica at once would only add a cold
// start to the outage.
//
// Live is false only when one of the replica's two loops has stopped making
// progress while the Manager runs:
//
//   - the heartbeat loop, which renews the lease and rejoins after a fence,
//     has not come round for [Manager.WedgedAfter];
//   - the node loop, which creates and disconnects instances, has been
//     inside one step for WedgedAfter without progress: no create or
//     disconnect returning (or abandoned at its timeout), and no chunk of
//     claims or key states answered.
//
// Every wait inside either loop is bounded (Redis calls by the heartbeat or
// the lease, callbacks by [WithCallbackTimeout]), and a step with many keys
// shows progress as it goes, so either is a bug in dim or a process starved
// of CPU, which a restart is the right answer to. Before
// Start, and from Stop on, Live is true: a replica that is stopping finishes
// in the background and its process is about to exit anyway.
func (m *Manager[C, I]) Live() bool { return m.wedged(time.Now()) == "" }

// WedgedAfter is how long a loop of this replica must make no progress
// before [Manager.Live] reports false: three callback timeouts and six node
// TTLs, and at least a minute (one minute at the default timings). A
// liveness probe should tolerate at least this long before it restarts the
// process; the probe's own failure threshold comes on top.
func (m *Manager[C, I]) WedgedAfter() time.Duration {
	return max(time.Minute, 3*m.s.timeout+6*m.s.nodeTTL)
}

// wedged says which loop is stuck at now, or "" when none is.
func (m *Manager[C, I]) wedged(now time.Time) string {
	if p := m.life.load(); p != phaseRunning && p != phaseFenced {
		return ""
	}
	return m.live.stuck(monoAt(now), m.WedgedAfter())
}

// HealthHandler returns an http.Handler for probes of this replica:
//
//	GET /readyz  200 "ok" while [Manager.Ready], else 503 and the reason
//	GET /livez   200 "ok" while [Manager.Live], else 503 and the stuck loop
//
// HEAD works too; other methods get 405 and other paths 404. Serve it on a
// port of its own, or mount it on a mux under both paths:
//
//	go http.ListenAndServe(":8081", m.HealthHandler())
//
//	mux.Handle(dim.ReadyPath, m.HealthHandler())
//	mux.Handle(dim.LivePath, m.HealthHandler())
//
// Liveness never depends on Redis (see [Manager.Live]); readiness does. The
// handler takes no lock that the Manager's loops hold, so it answers even
// when they are stuck. docs/KUBERNETES.md shows the probes of a Deployment.
func (m *Manager[C, I]) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var why string
		switch r.URL.Path {
		case ReadyPath:
			why = m.notReady()
		case LivePath:
			why = m.wedged(time.Now())
		default:
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if why != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(why + "\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
}

// liveness is the progress the two loops report, on the monotonic clock
// (see mono). 0 means never or idle.
type liveness struct {
	beat     atomic.Int64 // the heartbeat loop last came round
	busy     atomic.Int64 // the node loop is inside a step, since then
	progress atomic.Int64 // the node loop's step last saw a call return
}

// beatNow records a turn of the heartbeat loop.
func (l *liveness) beatNow() { l.beat.Store(mono()) }

// enter records the start of a step of the node loop, leave its end.
func (l *liveness) enter() {
	now := mono()
	l.progress.Store(now)
	l.busy.Store(now)
}

func (l *liveness) leave() { l.busy.Store(0) }

// advance records that a call of the node loop's current step returned
// (safe from any goroutine).
func (l *liveness) advance() { l.progress.Store(mono()) }

// stuck names the loop that has made no progress for after at now.
func (l *liveness) stuck(now int64, after time.Duration) string {
	if b := l.beat.Load(); b != 0 && time.Duration(now-b) > after {
		return "wedged: the heartbeat loop has not come round for " + time.Duration(now-b).Round(time.Second).String()
	}
	if l.busy.Load() != 0 {
		if p := l.progress.Load(); time.Duration(now-p) > after {
			return "wedged: the node loop has made no progress for " + time.Duration(now-p).Round(time.Second).String()
		}
	}
	return ""
}

// monoStart anchors mono: durations since it are read on Go's monotonic
// clock, which a change of the wall clock does not move.
var monoStart = time.Now()

// mono is the monotonic time now, in nanoseconds since monoStart (never 0).
func mono() int64 { return monoAt(time.Now()) }

func monoAt(t time.Time) int64 { return int64(t.Sub(monoStart)) + 1 }
