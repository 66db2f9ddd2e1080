package history

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestProblems(t *testing.T) {
	tests := []struct {
		name string
		run  func(r *Recorder)
		want []string
	}{
		{"a handoff after the stop is clean", func(r *Recorder) {
			a := r.Up("n1", "k")
			r.Down("n1", "k", a)
			b := r.Up("n2", "k")
			r.Down("n2", "k", b)
		}, nil},
		{"a start before the stop overlaps", func(r *Recorder) {
			a := r.Up("n1", "k")
			b := r.Up("n2", "k")
			r.Down("n1", "k", a)
			r.Down("n2", "k", b)
		}, []string{`overlap: key "k" live on n1 (#1, events 1..3) and n2 (#2, events 2..4)`}},
		{"an instance never stopped overlaps every later one", func(r *Recorder) {
			r.Up("n1", "k")
			b := r.Up("n2", "k")
			r.Down("n2", "k", b)
		}, []string{`overlap: key "k" live on n1 (#1, events 1..0) and n2 (#2, events 2..3)`}},
		{"a failed create never lived", func(r *Recorder) {
			a := r.Up("n1", "k")
			r.Failed("n1", "k", a)
			r.Up("n2", "k")
		}, nil},
		{"a crash ends the lives on that node", func(r *Recorder) {
			r.Up("n1", "k")
			r.Up("n1", "j")
			r.Kill("n1")
			r.Up("n2", "k")
		}, nil},
		{"two stops of one instance", func(r *Recorder) {
			a := r.Up("n1", "k")
			r.Down("n1", "k", a)
			r.Down("n1", "k", a)
		}, []string{"instance #1 disconnected 2 times"}},
		{"a stop of nothing", func(r *Recorder) {
			r.Down("n1", "k", 42)
		}, []string{"instance #42 disconnected but never created"}},
		{"different keys never overlap", func(r *Recorder) {
			r.Up("n1", "k")
			r.Up("n2", "j")
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New()
			tt.run(r)
			assert.Equal(t, tt.want, Problems(r.Events()))
		})
	}
}

func TestLiveAndChanged(t *testing.T) {
	r := New()
	changed := r.Changed()
	a := r.Up("n1", "k")
	select {
	case <-changed:
	default:
		t.Fatal("Changed did not fire on an event")
	}
	r.Up("n2", "j")
	assert.Equal(t, map[string][]string{"k": {"n1"}, "j": {"n2"}}, r.LiveByKey())
	r.Down("n1", "k", a)
	require.Len(t, r.Live(), 1)
	assert.Equal(t, "j", r.Live()[0].Key)
}
