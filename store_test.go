package dim

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/go-dim/dim/internal/redistest"
)

// TestStore drives the store's methods against a real redis-server, below
// any Manager: each subtest is a handful of script calls on a service of its
// own, checking what the methods make of the replies. It runs in
// milliseconds once the server is up.
func TestStore(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	ctx := context.Background()
	const ttl = 10 * time.Second

	// joined is a store for service with node joined and confirmed, and no
	// grace period left (a fresh record starts one; see trust).
	joined := func(t *testing.T, service string, nodes ...string) (store, map[string]string) {
		t.Helper()
		db := newStore(client, newKeyspace("", service))
		sessions := map[string]string{}
		for _, n := range nodes {
			r, err := db.join(ctx, n, ttl, 0, "0")
			require.NoError(t, err)
			require.NotEmpty(t, r.session, "join %s", n)
			sessions[n] = r.session
			hb, err := db.heartbeat(ctx, n, r.session, ttl, 1, 0, "0")
			require.NoError(t, err)
			require.True(t, hb.live, "first heartbeat of %s", n)
		}
		require.NoError(t, client.Do(ctx, client.B().Hdel().Key(db.k.nodes).Field("grace", "why").Build()).Error())
		return db, sessions
	}

	t.Run("join, heartbeat and a second join of a live ID", func(t *testing.T) {
		db := newStore(client, newKeyspace("", "s-join"))
		r, err := db.join(ctx, "n1", ttl, 0, "0")
		require.NoError(t, err)
		assert.NotEmpty(t, r.session)
		assert.False(t, r.oldLayout)
		assert.Equal(t, ttl.Milliseconds(), r.maxTTL, "the largest TTL is the only node's")
		assert.Greater(t, r.grace, time.Duration(0), "a fresh record starts a grace period")
		assert.LessOrEqual(t, r.grace, ttl)

		again, err := db.join(ctx, "n1", ttl, 0, "0")
		require.NoError(t, err)
		assert.Empty(t, again.session, "a live session holds the ID")
		assert.Greater(t, again.grace, time.Duration(0), "how long it holds it")

		hb, err := db.heartbeat(ctx, "n1", r.session, ttl, 1, 0, "0")
		require.NoError(t, err)
		assert.True(t, hb.live)
		assert.True(t, hb.hasServer)
		assert.InDelta(t, time.Now().UnixMilli(), hb.server, 5000, "the server's clock")
		assert.Equal(t, r.gen, hb.gen, "the record's generation")

		hb, err = db.heartbeat(ctx, "n1", "not-the-session", ttl, 1, 0, "0")
		require.NoError(t, err)
		assert.False(t, hb.live, "another session is told to fence")

		now, live, err := db.members(ctx)
		require.NoError(t, err)
		assert.InDelta(t, time.Now().UnixMilli(), now, 5000)
		require.Len(t, live, 1)
		assert.Equal(t, member{id: "n1", expires: live[0].expires, weight: 1}, live[0])
	})

	t.Run("claims wait out the grace period", func(t *testing.T) {
		db := newStore(client, newKeyspace("", "s-grace"))
		r, err := db.join(ctx, "n1", ttl, 0, "0")
		require.NoError(t, err)
		c, err := db.claim(ctx, "n1", r.session, 0, "0", []string{"k1"})
		require.NoError(t, err)
		assert.EqualValues(t, -2, c.status)
		assert.Greater(t, c.wait, time.Duration(0))
		assert.Nil(t, c.codes)

		c, err = db.claim(ctx, "n1", "stale", 0, "0", []string{"k1"})
		require.NoError(t, err)
		assert.EqualValues(t, -1, c.status, "a session that is not live is refused first")
	})

	t.Run("lead, write, claim and release", func(t *testing.T) {
		db, sessions := joined(t, "s-claim", "n1", "n2")
		epoch, err := db.lead(ctx, "n1", sessions["n1"])
		require.NoError(t, err)
		require.NotZero(t, epoch)
		l, err := db.leader(ctx)
		require.NoError(t, err)
		assert.Equal(t, recordedLeader{node: "n1", epoch: epoch, live: true}, l)

		// k1 and k2 go from nobody (0) to n1 (1), k3 to n2 (2).
		ok, err := db.write(ctx, epoch, "-", []string{"n1", "n2"}, []bool{true, true},
			[]string{"1", "0", "2", "k1", "k2", "2", "0", "1", "k3"})
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = db.write(ctx, epoch-1, "-", []string{"n1"}, []bool{true}, []string{"1", "0", "1", "k9"})
		require.NoError(t, err)
		assert.False(t, ok, "a stale epoch writes nothing")

		c, err := db.claim(ctx, "n1", sessions["n1"], 0, "0", []string{"k1", "k2", "k3"})
		require.NoError(t, err)
		assert.EqualValues(t, 1, c.status)
		assert.Equal(t, []string{"+", "+", "0"}, c.codes, "k3 is n2's")
		assert.NotZero(t, c.first)

		again, err := db.claim(ctx, "n1", sessions["n1"], 0, "0", []string{"k1"})
		require.NoError(t, err)
		assert.Equal(t, []string{"+"}, again.codes, "a node's own key is granted again")
		assert.Greater(t, again.first, c.first+1, "with a token larger than any before")

		live, refused, err := db.state(ctx, "n1", sessions["n1"], time.Now().UnixMilli(), []string{"k1"},
			[]string{"k3", `{"n":"n1","s":"` + sessions["n1"] + `","st":"failing"}`})
		require.NoError(t, err)
		assert.True(t, live)
		assert.Empty(t, refused, "n1 may write k1 (its own) and k3 (owned by nobody)")

		require.NoError(t, db.release(ctx, "n1", sessions["n1"], []string{"k1", "k2"}))
		owner, err := client.Do(ctx, client.B().Hgetall().Key(db.k.owner).Build()).AsStrMap()
		require.NoError(t, err)
		assert.Empty(t, owner, "released keys have no owner entry")

		require.NoError(t, db.abdicate(ctx, epoch))
		l, err = db.leader(ctx)
		require.NoError(t, err)
		assert.Equal(t, "", l.node, "no leader after a graceful hand-off")
	})

	t.Run("force gate, fleet, drain and leave", func(t *testing.T) {
		db, sessions := joined(t, "s-admin", "n1", "n2")
		first, err := db.forceGate(ctx, "n1", time.Minute)
		require.NoError(t, err)
		second, err := db.forceGate(ctx, "n2", time.Minute)
		require.NoError(t, err)
		assert.True(t, first)
		assert.False(t, second, "one node at a time")

		f, err := db.fleet(ctx)
		require.NoError(t, err)
		assert.Equal(t, 2, f.live)
		assert.Equal(t, 0, f.size, "never counted")
		assert.GreaterOrEqual(t, f.since, time.Duration(0), "a join into an empty service marks a restart")
		size, err := db.fleetSize(ctx, 3, false)
		require.NoError(t, err)
		assert.Equal(t, 3, size)
		size, err = db.fleetSize(ctx, 2, false)
		require.NoError(t, err)
		assert.Equal(t, 3, size, "only a larger size, unless forced")
		size, err = db.fleetSize(ctx, 2, true)
		require.NoError(t, err)
		assert.Equal(t, 2, size)

		code, until, err := db.drainNode(ctx, "n1", time.Minute)
		require.NoError(t, err)
		assert.EqualValues(t, 1, code)
		assert.WithinDuration(t, time.Now().Add(time.Minute), until, 5*time.Second)
		code, _, err = db.drainNode(ctx, "n2", time.Minute)
		require.NoError(t, err)
		assert.EqualValues(t, -2, code, "no node would be left")
		code, _, err = db.drainNode(ctx, "nobody", time.Minute)
		require.NoError(t, err)
		assert.EqualValues(t, -1, code)
		had, err := db.undrain(ctx, "n1")
		require.NoError(t, err)
		assert.True(t, had)

		left, err := db.freeze(ctx, "frozen", time.Minute)
		require.NoError(t, err)
		assert.Zero(t, left)
		left, err = db.freeze(ctx, "frozen", time.Minute)
		require.NoError(t, err)
		assert.Greater(t, left, 50*time.Second, "the freeze in force")
		had, err = db.thaw(ctx)
		require.NoError(t, err)
		assert.True(t, had)

		require.NoError(t, db.leave(ctx, "n2", sessions["n2"]))
		_, live, err := db.members(ctx)
		require.NoError(t, err)
		require.Len(t, live, 1)
		assert.Equal(t, "n1", live[0].id)

		deleted, isLive, err := db.purge(ctx, []string{db.k.fleet})
		require.NoError(t, err)
		assert.True(t, isLive, "a live member keeps the keys")
		assert.Zero(t, deleted)
	})
}
