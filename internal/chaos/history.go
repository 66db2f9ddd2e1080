// Package chaos runs dim nodes as real OS processes, injects faults into
// them (SIGKILL, SIGSTOP/SIGCONT, SIGTERM, cut and slow links, a killed,
// restarted or frozen Redis, config churn and misbehaving callbacks) and
// checks the history they leave behind.
//
// Every process — each node and the test driver — appends events to one
// shared history file, opened with O_APPEND and written with one write(2)
// per line, so the file order is a total order of the events consistent
// with real time: a line written after another was written later. Each
// line also carries the wall clock (shared, since all processes run on one
// machine) and a per-writer sequence number that reveals a lost line.
//
// The checker ([Check]) knows nothing of how dim works: it rebuilds every
// instance's life from the history and tests the guarantees against it.
package chaos

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"
)

// Kind is what an event records.
type Kind string

// Events written by a node process.
const (
	// Start: the process runs (PID set) and has not started dim yet.
	Start Kind = "start"
	// Ready: dim's Start returned; the node is a member.
	Ready Kind = "ready"
	// Up: createInstance was entered, before it did anything. The
	// instance is live from here.
	Up Kind = "up"
	// Created: createInstance returned an instance (in time or late).
	Created Kind = "created"
	// Failed: createInstance returned an error or panicked; the instance
	// is no longer live.
	Failed Kind = "failed"
	// Cancel: the instance saw its context end.
	Cancel Kind = "cancel"
	// Down: the disconnect hook finished stopping the instance; it is no
	// longer live.
	Down Kind = "down"
	// Leader: the node observed itself as leader with Epoch, from a
	// status read started at ReadAt.
	Leader Kind = "leader"
	// Stale: the fenced resource refused a write of the instance because
	// a higher token (Highest) had been written.
	Stale Kind = "stale"
	// Stopping and Stopped bracket a graceful stop (SIGTERM).
	Stopping Kind = "stopping"
	Stopped  Kind = "stopped"
)

// Events of make-before-break (dim.WithPrepare), written by a node process.
// A prepared instance is not live: it does no work and holds no token. Its
// activation is an Up with the same Inst (activate was entered, before it
// began any work), followed by Created or Failed like a create; from there
// on it is an instance like any other, live until its Down.
const (
	// Prepare: prepare was entered for Key, its instance to be Inst.
	Prepare Kind = "prepare"
	// Prepared: prepare returned the instance.
	Prepared Kind = "prepared"
	// Unprepared: prepare returned an error or panicked; there is no
	// instance to activate or dispose of.
	Unprepared Kind = "unprepared"
	// Disposed: the disconnect hook was called for a prepared instance that
	// was not activated (or whose activate failed): dim disposed of it.
	Disposed Kind = "disposed"
)

// Events written by the driver.
const (
	// Spawn: the driver started a node process (Node, PID) with node TTL
	// TTL.
	Spawn Kind = "spawn"
	// Kill: a node process was SIGKILLed and reaped; everything it ran
	// died no later than this.
	Kill Kind = "kill"
	// Pause: a node process was SIGSTOPped and is confirmed stopped.
	Pause Kind = "pause"
	// Resume: written just before the SIGCONT that wakes a paused node.
	Resume Kind = "resume"
	// Term: SIGTERM sent to a node process (a graceful stop).
	Term Kind = "term"
	// Exit: a node process exited by itself or after SIGTERM; Detail is
	// its status, Expected tells whether the driver asked for it.
	Exit Kind = "exit"
	// Fault: a fault of kind Fault begins; Heal: it ends.
	Fault Kind = "fault"
	Heal  Kind = "heal"
	// Configs: the configured keys are now Keys.
	Configs Kind = "configs"
	// Quiet: every fault is healed and Nodes run; every key of Keys must
	// become live exactly once, evenly spread over Nodes.
	Quiet Kind = "quiet"
	// Settled: the driver stopped waiting after a Quiet; Detail says
	// whether it saw convergence ("converged") or gave up ("timeout").
	Settled Kind = "settled"
	// End: the run is over.
	End Kind = "end"
)

// Event is one line of the history.
type Event struct {
	// Seq is the event's position in the file, from 1. It is not written:
	// the reader numbers lines.
	Seq int64 `json:"-"`
	// T is the wall clock in Unix nanoseconds when the line was written.
	T int64 `json:"t"`
	// Src names the writer ("driver", or node#pid) and N counts its lines
	// from 1.
	Src string `json:"src"`
	N   int64  `json:"n"`

	Kind     Kind     `json:"kind"`
	Node     string   `json:"node,omitempty"`
	PID      int      `json:"pid,omitempty"`
	Key      string   `json:"key,omitempty"`
	Inst     string   `json:"inst,omitempty"`
	Token    uint64   `json:"token,omitempty"`
	Highest  uint64   `json:"highest,omitempty"`
	Epoch    uint64   `json:"epoch,omitempty"`
	ReadAt   int64    `json:"read_at,omitempty"`
	Keys     []string `json:"keys,omitempty"`
	Nodes    []string `json:"nodes,omitempty"`
	Fault    string   `json:"fault,omitempty"`
	Expected bool     `json:"expected,omitempty"`
	// TTL is the node TTL a Spawn gives the process, in nanoseconds (0:
	// the checker's Limits.NodeTTL).
	TTL    int64  `json:"ttl,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Time returns T as a time.
func (e Event) Time() time.Time { return time.Unix(0, e.T) }

// Proc names the process an event of a node refers to: "node#pid".
func (e Event) Proc() string { return ProcName(e.Node, e.PID) }

// ProcName names one run of a node: its ID and process ID.
func ProcName(node string, pid int) string { return node + "#" + strconv.Itoa(pid) }

// Writer appends events of one source to a history file. It is safe for
// concurrent use.
type Writer struct {
	mu  sync.Mutex
	f   *os.File
	src string
	n   int64
	buf bytes.Buffer
}

// OpenWriter opens (creating if needed) the history at path for appending
// events of source src.
func OpenWriter(path, src string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("chaos: open history: %w", err)
	}
	return &Writer{f: f, src: src}, nil
}

// Log appends one event, stamping it with the wall clock, the source and
// the next sequence number, in a single write so that lines of different
// processes never interleave. It returns the event as written.
func (w *Writer) Log(e Event) (Event, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.n++
	e.Src, e.N = w.src, w.n
	e.T = time.Now().UnixNano()
	w.buf.Reset()
	enc := json.NewEncoder(&w.buf)
	if err := enc.Encode(e); err != nil { // Encode ends the line with \n
		return e, fmt.Errorf("chaos: encode event: %w", err)
	}
	if _, err := w.f.Write(w.buf.Bytes()); err != nil {
		return e, fmt.Errorf("chaos: write history: %w", err)
	}
	return e, nil
}

// Close closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.f.Close()
}

// ReadFile reads a whole history. A last line without its newline (a
// writer killed mid-line, which O_APPEND writes of one line should never
// leave) is ignored; any other malformed line is an error.
func ReadFile(path string) ([]Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("chaos: open history: %w", err)
	}
	defer f.Close()
	return Read(f)
}

// Read reads a history from r; see [ReadFile].
func Read(r io.Reader) ([]Event, error) {
	var out []Event
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if err == io.EOF {
			return out, nil // a partial last line, if any, is dropped
		}
		if err != nil {
			return out, fmt.Errorf("chaos: read history: %w", err)
		}
		var e Event
		if err := json.Unmarshal(line, &e); err != nil {
			return out, fmt.Errorf("chaos: history line %d: %w", len(out)+1, err)
		}
		e.Seq = int64(len(out)) + 1
		out = append(out, e)
	}
}

// Tail reads a growing history incrementally: each call of Next returns the
// complete lines appended since the previous call.
type Tail struct {
	path    string
	off     int64
	partial []byte
	seq     int64
}

// NewTail follows the history at path from its beginning.
func NewTail(path string) *Tail { return &Tail{path: path} }

// Next returns the events appended since the last call.
func (t *Tail) Next() ([]Event, error) {
	f, err := os.Open(t.path)
	if err != nil {
		return nil, fmt.Errorf("chaos: open history: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(t.off, io.SeekStart); err != nil {
		return nil, fmt.Errorf("chaos: seek history: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("chaos: read history: %w", err)
	}
	t.off += int64(len(data))
	data = append(t.partial, data...)
	last := bytes.LastIndexByte(data, '\n')
	if last < 0 {
		t.partial = data
		return nil, nil
	}
	t.partial = append([]byte(nil), data[last+1:]...)
	var out []Event
	for line := range bytes.SplitSeq(data[:last], []byte{'\n'}) {
		var e Event
		if err := json.Unmarshal(line, &e); err != nil {
			return out, fmt.Errorf("chaos: history line %d: %w", t.seq+1, err)
		}
		t.seq++
		e.Seq = t.seq
		out = append(out, e)
	}
	return out, nil
}
