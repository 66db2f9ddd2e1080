package dim

import (
	"testing"

	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
)

func TestLeanBuffersFillOnlyWhatTheCallerLeftUnset(t *testing.T) {
	got := lean(rueidis.ClientOption{InitAddress: []string{"x:1"}})
	assert.Equal(t, leanRingScale, got.RingScaleEachConn)
	assert.Equal(t, leanBuffer, got.ReadBufferEachConn)
	assert.Equal(t, leanBuffer, got.WriteBufferEachConn)
	assert.Equal(t, []string{"x:1"}, got.InitAddress)

	set := rueidis.ClientOption{RingScaleEachConn: 12, ReadBufferEachConn: 1 << 20, WriteBufferEachConn: 1 << 19}
	assert.Equal(t, set, lean(set), "what the caller set stays")
}
