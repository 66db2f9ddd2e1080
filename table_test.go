package dim

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The instance table below the Manager: creates and disconnects under a
// real session (see membership_test.go for the unit nodes), with hooks the
// test holds at gates. The key "slow…" waits at its gate; "bad" fails.

// unitTable is a table on a joined unit node, its hooks counted.
type unitTable struct {
	*table[string, string]
	node    *unitNode
	gates   sync.Map // key → *gate: the create or disconnect of key waits for it
	creates atomic.Int32
	stops   sync.Map // key → true once its disconnect was called
}

func newUnitTable(t *testing.T, extra ...Option) *unitTable {
	t.Helper()
	n := newUnitNode(t, redistest.Start(t), "n1", extra...)
	require.NoError(t, n.mb.join(context.Background()))
	ut := &unitTable{node: n}
	calls := &callbacks[string, string]{
		createInstance: func(ctx context.Context, key string) (string, error) {
			ut.creates.Add(1)
			ut.hold(key)
			if key == "bad" {
				return "", errors.New("refused")
			}
			return "instance " + key, nil
		},
		disconnect: func(ctx context.Context, inst string) error {
			key := inst[len("instance "):]
			ut.stops.Store(key, true)
			ut.hold(key)
			return nil
		},
	}
	calls.env, calls.membership = n.env, n.mb
	calls.instances.stop = calls.disconnectOne
	var life lifecycle
	l := newLedger(n.env, n.mb, &calls.hung, &calls.confirmed)
	ut.table = newTable(n.env, calls, l, newHandoffs(n.env, calls, &life), &life)
	return ut
}

// gate makes key's calls wait until the returned gate opens.
func (ut *unitTable) gate(t *testing.T, key string) *gate {
	g := newGate(t)
	ut.gates.Store(key, g)
	return g
}

func (ut *unitTable) hold(key string) {
	if g, ok := ut.gates.Load(key); ok {
		g.(*gate).wait()
	}
}

// jobs makes a create job for each key under the node's lease.
func (ut *unitTable) jobs(keys ...string) (context.Context, string, []createJob[string]) {
	session, lease := ut.node.mb.current()
	jobs := make([]createJob[string], len(keys))
	for i, key := range keys {
		jobs[i] = createJob[string]{key: key, cfg: config[string]{value: key}, token: uint64(i + 1),
			gen: ut.calls.instances.generation(), lease: lease}
	}
	return lease, session, jobs
}

// next takes the next create result that outlasted its pass.
func (ut *unitTable) next(t *testing.T) createResult[string, string] {
	t.Helper()
	select {
	case r := <-ut.created:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no create result came")
		return createResult[string, string]{}
	}
}

func TestATableFilesQuickCreatesAndLeavesASlowOneBusy(t *testing.T) {
	t.Parallel()
	ut := newUnitTable(t)
	slow := ut.gate(t, "slow")
	lease, session, jobs := ut.jobs("a", "b", "bad", "slow")

	created, failed := ut.createAll(lease, lease, session, jobs)
	assert.Equal(t, 2, created, "a and b are filed by the pass")
	assert.Equal(t, 1, failed, "bad is filed as failed")
	assert.True(t, ut.has("a") && ut.has("b"))
	assert.NotNil(t, ut.ledger.failures["bad"], "the failure is on the ledger, with its backoff")
	assert.False(t, ut.has("slow"), "a create under way is not in the table")
	assert.True(t, ut.busy("slow"), "its key is busy: neither claimed again nor released")
	assert.ElementsMatch(t, []string{"a", "b"}, ut.runs())

	slow.open()
	r := ut.next(t)
	assert.Equal(t, "slow", r.job.key)
	assert.Equal(t, createdOK, ut.file(r))
	assert.True(t, ut.has("slow"))
	assert.False(t, ut.busy("slow"))
	assert.Equal(t, "instance slow", ut.running["slow"].inst)

	ut.disconnectAll([]*entry[string]{ut.running["a"], ut.running["b"], ut.running["slow"]})
	assert.Empty(t, ut.runs())
}

func TestATableStartsNoMoreCreatesThanItsConcurrency(t *testing.T) {
	t.Parallel()
	ut := newUnitTable(t, WithCreateConcurrency(1))
	first, second := ut.gate(t, "slow1"), ut.gate(t, "slow2")
	lease, session, jobs := ut.jobs("slow1", "slow2")

	created, failed := ut.createAll(lease, lease, session, jobs)
	assert.Zero(t, created+failed, "neither create returned within the pass")
	assert.True(t, ut.busy("slow1") && ut.busy("slow2"), "both keys are busy from the start")
	assert.Equal(t, int32(1), ut.creates.Load(), "the second create waits for a slot")

	first.open()
	assert.Equal(t, createdOK, ut.file(ut.next(t)))
	eventually(t, 5*time.Second, "the second create starts once the first result is taken", func() bool { return ut.creates.Load() == 2 })
	second.open()
	assert.Equal(t, createdOK, ut.file(ut.next(t)))
	assert.ElementsMatch(t, []string{"slow1", "slow2"}, ut.runs())
	ut.disconnectAll([]*entry[string]{ut.running["slow1"], ut.running["slow2"]})
}

func TestATableStopsASlowDisconnectInTheBackground(t *testing.T) {
	t.Parallel()
	ut := newUnitTable(t)
	lease, session, jobs := ut.jobs("a", "slow")
	created, _ := ut.createAll(lease, lease, session, jobs)
	require.Equal(t, 2, created)
	slow := ut.gate(t, "slow")

	ut.stopInBackground([]*entry[string]{ut.running["a"], ut.running["slow"]})
	assert.False(t, ut.has("a") || ut.has("slow"), "both leave the table at once")
	_, aStopped := ut.stops.Load("a")
	assert.True(t, aStopped, "a's disconnect was called")
	assert.False(t, ut.busy("a"), "a quick disconnect leaves nothing behind")
	assert.True(t, ut.busy("slow"), "a slow one keeps its key busy")
	assert.True(t, ut.ledger.stopping["slow"], "and shows it as stopping")
	assert.Equal(t, KeyStopping, ut.ledger.states["slow"].State)

	ut.sweepStopped()
	assert.True(t, ut.busy("slow"), "the sweep keeps a disconnect that still runs")

	select {
	case <-ut.node.env.nodeCh: // a wake-up from before
	default:
	}
	slow.open()
	select {
	case <-ut.node.env.nodeCh:
	case <-time.After(5 * time.Second):
		t.Fatal("the disconnect's return did not wake the node loop")
	}
	ut.sweepStopped()
	assert.False(t, ut.busy("slow"), "the sweep forgets a disconnect that returned")
	assert.False(t, ut.ledger.stopping["slow"])
}
