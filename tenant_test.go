package dim

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tenant line of docs/REDIS.md, for tenant "a" and service "ingest".
const (
	tenantDocUser   = "dim-a-ingest"
	tenantDocPrefix = "a:"
)

// createTenant runs the documented tenant line for tenant prefix.
func createTenant(t *testing.T, admin rueidis.Client, user, password, prefix string) {
	t.Helper()
	args := aclLine(t, tenantDocUser)
	require.NotContains(t, args, "+client|tracking", "a tenant may not track keys")
	for i, a := range args {
		switch {
		case i == 2:
			args[i] = user
		case a == aclDocPassword:
			args[i] = ">" + password
		case strings.HasPrefix(a, "~"+tenantDocPrefix), strings.HasPrefix(a, "&"+tenantDocPrefix):
			args[i] = a[:1] + prefix + a[1+len(tenantDocPrefix):]
		}
	}
	require.NoError(t, admin.Do(context.Background(), admin.B().Arbitrary(args[0], args[1]).Args(args[2:]...).Build()).Error())
}

func TestTenantsSharingARedisNeitherLearnNorDisturbEachOther(t *testing.T) {
	adminPassword := "admin-" + randomHex(t)
	srv := redistest.Start(t, redistest.WithPassword(adminPassword))
	admin := srv.Client(t)
	ctx := context.Background()
	password := randomHex(t)
	createTenant(t, admin, "dim-a", password, "a:")
	createTenant(t, admin, "dim-b", password, "b:")

	tenant := func(user, prefix string) (rueidis.ClientOption, *directCluster) {
		opt := srv.ClientOption()
		opt.Username, opt.Password, opt.DisableCache = user, password, true
		c := newDirectCluster(t, aclDocService, opt, 6, WithKeyPrefix(prefix))
		for _, id := range []string{"n1", "n2"} {
			c.start(id)
		}
		c.waitConverged(10*time.Second, "n1", "n2")
		return opt, c
	}
	require.NoError(t, admin.Do(ctx, admin.B().AclLog().Reset().Build()).Error())
	aOpt, _ := tenant("dim-a", "a:")
	_, b := tenant("dim-b", "b:")
	assert.Empty(t, aclLog(t, admin), "the tenant line is enough to run dim")
	bLeader := b.leader()
	bEpoch, _ := bLeader.m.elector.term.current()
	bEvents := len(b.rec.Events())
	bBefore, err := bLeader.m.Status(ctx)
	require.NoError(t, err)

	// Tenant a's user, with every command its line allows, against b's keys
	// and channel: ACL DRYRUN asks Redis whether it would run them.
	bk := newKeyspace("b:", aclDocService)
	victims := map[string][]string{
		"evalsha":       {"0123456789012345678901234567890123456789", "1", bk.assign},
		"eval":          {"return redis.call('HGETALL', KEYS[1])", "1", bk.assign},
		"publish":       {bk.channel, "rebalance"},
		"subscribe":     {bk.channel},
		"hget":          {bk.owner, "cfg-00"},
		"hgetall":       {bk.assign},
		"hmget":         {bk.owner, "cfg-00"},
		"hscan":         {bk.owner, "0"},
		"hexists":       {bk.owner, "cfg-00"},
		"hset":          {bk.assign, "cfg-00", "n9"},
		"hdel":          {bk.assign, "cfg-00"},
		"get":           {bk.epoch},
		"set":           {bk.epoch, "1"},
		"del":           {bk.leader},
		"unlink":        {bk.inState(KeyRunning, "n1")},
		"pexpireat":     {bk.nodes, "1"},
		"zrangebyscore": {bk.nodes, "-inf", "+inf"},
		"sadd":          {bk.assigned("n1"), "x"},
		"srem":          {bk.assigned("n1"), "cfg-00"},
		"pttl":          {bk.freeze},
		"xadd":          {bk.history, "*", "e", "forged"},
		"scard":         {bk.inState(KeyRunning, "n1")},
		"sscan":         {bk.inState(KeyRunning, "n1"), "0"},
		"hlen":          {bk.assign},
	}
	keyless := map[string]bool{"ping": true, "time": true, "info": true, "cluster|slots": true, "cluster|shards": true}
	for _, rule := range aclLine(t, tenantDocUser)[3:] {
		cmd, ok := strings.CutPrefix(rule, "+")
		if !ok || keyless[cmd] {
			continue
		}
		args, ok := victims[cmd]
		require.True(t, ok, "the tenant line allows %s: add it to this test", cmd)
		dry := append([]string{"dim-a", strings.ToUpper(cmd)}, args...)
		res, err := admin.Do(ctx, admin.B().Arbitrary("ACL", "DRYRUN").Args(dry...).Build()).ToString()
		require.NoError(t, err, cmd)
		assert.NotEqual(t, "OK", res, "tenant a may run %s on tenant b's keys", cmd)
	}

	// And for real, as tenant a: track every key, script b's keys, publish
	// on b's channel, read b's keys.
	a, err := rueidis.NewClient(aOpt)
	require.NoError(t, err)
	defer a.Close()
	for _, cmd := range []rueidis.Completed{
		a.B().ClientTracking().On().Bcast().Build(),
		a.B().ClientTracking().On().Prefix().Prefix(bk.lock).Bcast().Build(),
		a.B().Eval().Script("return redis.call('HGETALL', KEYS[1])").Numkeys(1).Key(bk.assign).Build(),
		a.B().Eval().Script("return redis.call('HGETALL', '" + bk.assign + "')").Numkeys(0).Build(),
		a.B().Publish().Channel(bk.channel).Message(evRebalance).Build(),
		a.B().Hset().Key(bk.assign).FieldValue().FieldValue("cfg-00", "n9").Build(),
		a.B().Scan().Cursor(0).Build(),
		a.B().Keys().Pattern("*").Build(),
	} {
		args := cmd.Commands() // rueidis recycles a command once it is sent
		err := a.Do(ctx, cmd).Error()
		require.Error(t, err, args)
		assert.Regexp(t, "NOPERM|can't access", err.Error(), args)
	}

	// b noticed nothing.
	assert.Len(t, b.rec.Events(), bEvents, "b's instances started or stopped")
	assert.Same(t, bLeader, b.leader(), "b's leader")
	epoch, _ := bLeader.m.elector.term.current()
	assert.Equal(t, bEpoch, epoch, "b's epoch")
	after, err := bLeader.m.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, bBefore.Assignment, after.Assignment, "b's assignment")
	assert.Equal(t, bBefore.Owners, after.Owners, "b's claims")
}
