package dim

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The transitions of lifecycle's doc comment, and the ones it refuses.
func TestLifecycleTransitions(t *testing.T) {
	var l lifecycle
	require.Equal(t, phaseNew, l.load())
	require.ErrorIs(t, l.checkStarted(), ErrNotStarted)
	require.ErrorIs(t, l.beginStop(), ErrNotStarted)

	require.NoError(t, l.begin())
	require.ErrorIs(t, l.begin(), ErrAlreadyStarted)
	require.NoError(t, l.checkStarted())
	require.True(t, l.canTakeWork("s1"))
	require.False(t, l.canTakeWork(""))

	l.fence()
	require.Equal(t, phaseFenced, l.load())
	require.True(t, l.canTakeWork("s1"), "canTakeWork goes by the session, which a fenced node no longer has")
	l.unfence()
	require.Equal(t, phaseRunning, l.load())

	// A fence during Stop leaves it stopping; an unfence cannot undo Stop.
	l.fence()
	require.NoError(t, l.beginStop())
	require.Equal(t, phaseStopping, l.load())
	l.unfence()
	l.fence()
	require.Equal(t, phaseStopping, l.load())
	require.True(t, l.stopping())
	require.False(t, l.canTakeWork("s1"))
	require.NoError(t, l.checkStarted(), "calls that talk to Redis go ahead while Stop runs")
	require.ErrorIs(t, l.beginStop(), ErrStopped)

	l.end()
	require.Equal(t, phaseStopped, l.load())
	require.ErrorIs(t, l.checkStarted(), ErrStopped)
	require.ErrorIs(t, l.begin(), ErrStopped)
	require.ErrorIs(t, l.beginStop(), ErrStopped)
	require.Equal(t, "stopped", l.load().String())
}
