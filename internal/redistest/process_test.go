package redistest_test

import (
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"

	"github.com/go-dim/dim/internal/redistest"
)

// launch skips under -short, as Start does, and closes the process when
// the test ends only if the test did not.
func launch(t *testing.T, opts ...redistest.Option) *redistest.Process {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test")
	}
	p, err := redistest.Launch(opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func TestLaunchNeedsNoTestAndCloseRemovesEverything(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	require.NoError(t, err)
	p := launch(t, redistest.WithName("launched"), redistest.WithBinary(bin),
		redistest.WithArgs("--maxmemory-policy", "noeviction"))
	require.Equal(t, "launched", p.Name())
	require.True(t, p.Running())

	client, err := rueidis.NewClient(p.ClientOption())
	require.NoError(t, err)
	defer client.Close()
	got, err := client.Do(ctx(t), client.B().ConfigGet().Parameter("maxmemory-policy").Build()).AsStrMap()
	require.NoError(t, err)
	require.Equal(t, "noeviction", got["maxmemory-policy"], "WithArgs reaches the server")
	require.FileExists(t, p.Dir()+"/redis.log")

	require.NoError(t, p.Close())
	require.False(t, p.Running())
	_, err = net.DialTimeout("tcp", p.Addr(), time.Second)
	require.ErrorContains(t, err, "connection refused")
	_, err = os.Stat(p.Dir())
	require.ErrorIs(t, err, os.ErrNotExist, "Close removes the directory Launch made")
	require.NoError(t, p.Close(), "a second Close does nothing")
	require.Error(t, p.Restart(), "a closed process cannot restart")
}

func TestProcessMethodsReturnErrors(t *testing.T) {
	p := launch(t)
	require.NoError(t, p.Pause())
	require.NoError(t, p.Resume())
	require.NoError(t, p.Restart())
	require.True(t, p.Running())
	require.NoError(t, p.Stop())
	require.False(t, p.Running())
	require.NoError(t, p.Stop(), "stopping a stopped server does nothing")
	require.ErrorContains(t, p.RestartFromAOF(), "not started WithPersistence")
}

func TestLaunchBadArgsReturnsTheLog(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	p, err := redistest.Launch(redistest.WithArgs("--no-such-directive", "x"))
	require.Nil(t, p)
	require.ErrorContains(t, err, "exited at start")
	require.ErrorContains(t, err, "no-such-directive")
}

func TestLaunchMissingBinaryWrapsErrNotFound(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := redistest.Launch()
	require.ErrorIs(t, err, redistest.ErrNotFound)
	require.ErrorContains(t, err, "redis-server not found on PATH: run scripts/test, or apt-get install redis-server")

	_, err = redistest.Launch(redistest.WithBinary("/no/such/redis-server"))
	require.ErrorIs(t, err, redistest.ErrNotFound)
	require.ErrorContains(t, err, "/no/such/redis-server not found")
}
