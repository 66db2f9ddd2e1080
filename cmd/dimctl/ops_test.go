package main

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestEveryCommandHasItsOwnHelp(t *testing.T) {
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			for _, args := range [][]string{{c.name, "-h"}, {"-h", c.name}, {c.name, "svc", "-h"}} {
				code, out, errOut := dimctl(t, args...)
				assert.Equal(t, 0, code, "%q", args)
				assert.Empty(t, errOut)
				assert.True(t, strings.HasPrefix(out, "Usage: dimctl [flags] "+c.name+" "+c.args+"\n"), "%q: %s", args, out)
				assert.Contains(t, out, "Exit codes: 0 done")
				for _, f := range append(c.flags, connectionFlags...) {
					assert.Contains(t, out, "\n  -"+f, "%q lists -%s", args, f)
				}
				assert.NotContains(t, out, "Commands:", "one command's help, not the whole list")
			}
		})
	}
	t.Run("dimctl -h lists every command and the exit codes", func(t *testing.T) {
		code, out, _ := dimctl(t, "-h")
		require.Equal(t, 0, code)
		for _, c := range commands {
			assert.Contains(t, out, "\n  "+c.name+" ")
		}
		assert.Contains(t, out, "Exit codes: 0 done")
	})
}

func TestCommandsThatChangeSomethingPrintJSON(t *testing.T) {
	srv := redistest.Start(t)
	startService(t, srv, "ops")
	base := []string{"-redis", srv.Addr(), "-prefix", testPrefix, "-json"}
	run := func(args ...string) map[string]any {
		t.Helper()
		code, out, errOut := dimctl(t, append(base, args...)...)
		require.Equal(t, 0, code, errOut)
		var v map[string]any
		require.NoError(t, json.Unmarshal([]byte(out), &v), out)
		assert.Equal(t, "ops", v["service"])
		return v
	}

	v := run("drain", "ops", "n2", "-for", "10m")
	assert.Equal(t, "n2", v["drained"])
	assert.EqualValues(t, 600_000, v["for_ms"])
	until, err := time.Parse(time.RFC3339Nano, v["until"].(string))
	require.NoError(t, err)
	assert.WithinDuration(t, time.Now().Add(10*time.Minute), until, time.Minute)
	assert.Equal(t, "n2", run("undrain", "ops", "n2")["undrained"])

	v = run("freeze", "ops", "-for", "5m")
	assert.Equal(t, true, v["frozen"])
	assert.EqualValues(t, 300_000, v["for_ms"])
	assert.Equal(t, false, run("thaw", "ops")["frozen"])

	v = run("pin", "ops", "a", "n1")
	assert.Equal(t, "a", v["pinned"])
	assert.Equal(t, "n1", v["node"])
	assert.Equal(t, "a", run("unpin", "ops", "a")["unpinned"])

	v = run("rebalance", "ops")
	assert.Positive(t, v["epoch"])
	assert.Contains(t, v, "moves")

	t.Run("a refusal is still text on stderr, with exit 1", func(t *testing.T) {
		code, out, errOut := dimctl(t, append(base, "thaw", "ops")...)
		assert.Equal(t, 1, code)
		assert.Empty(t, out)
		assert.Contains(t, errOut, `"ops" is not frozen`)
	})
}

// operatorUser is the user of docs/REDIS.md's operator line.
const operatorUser = "dimctl-ingest"

// operatorLine returns docs/REDIS.md's ACL SETUSER line for dimctl, for
// service and prefix instead of the documented ones.
func operatorLine(t *testing.T, password, prefix, service string) []string {
	t.Helper()
	data, err := os.ReadFile("../../docs/REDIS.md")
	require.NoError(t, err)
	var args []string
	for line := range strings.Lines(string(data)) {
		if f := strings.Fields(line); strings.HasPrefix(line, "ACL SETUSER ") && f[2] == operatorUser {
			require.Nil(t, args, "docs/REDIS.md holds one ACL SETUSER line for %s", operatorUser)
			args = f
		}
	}
	require.NotNil(t, args, "docs/REDIS.md has no ACL SETUSER line for %s", operatorUser)
	const docKeys = "dim:{ingest}"
	for i, a := range args {
		switch {
		case a == ">CHANGE-ME":
			args[i] = ">" + password
		case strings.HasPrefix(a, "~"), strings.HasPrefix(a, "&"):
			require.True(t, strings.HasPrefix(a[1:], docKeys), "pattern %q", a)
			args[i] = a[:1] + prefix + "dim:{" + service + "}" + a[1+len(docKeys):]
		}
	}
	return args
}

func TestTheDocumentedOperatorUserRunsEveryServiceCommand(t *testing.T) {
	srv := redistest.Start(t, redistest.WithPassword("admin-secret"))
	admin := srv.Client(t)
	ctx := context.Background()
	line := operatorLine(t, "op-secret", testPrefix, "ops")
	require.NoError(t, admin.Do(ctx, admin.B().Arbitrary(line[0], line[1]).Args(line[2:]...).Build()).Error())
	startService(t, srv, "ops")
	require.NoError(t, admin.Do(ctx, admin.B().AclLog().Reset().Build()).Error())

	base := []string{"-redis", srv.Addr(), "-prefix", testPrefix, "-user", operatorUser, "-password", "op-secret"}
	for _, args := range [][]string{
		{"status", "ops"}, {"status", "ops", "-json"}, {"status", "ops", "-keys"}, {"watch", "ops", "-count", "1"},
		{"history", "ops"}, {"explain", "ops", "a"}, {"plan", "ops", "drain", "n2"}, {"plan", "ops", "join", "-weight", "2"},
		{"drain", "ops", "n2"}, {"undrain", "ops", "n2"}, {"freeze", "ops"}, {"thaw", "ops"},
		{"pin", "ops", "a", "n1"}, {"unpin", "ops", "a"}, {"rebalance", "ops"},
	} {
		code, _, errOut := dimctl(t, append(base, args...)...)
		assert.Equal(t, 0, code, "%q: %s", args, errOut)
	}
	entries, err := admin.Do(ctx, admin.B().AclLog().Count(100).Build()).ToArray()
	require.NoError(t, err)
	for _, e := range entries {
		m, _ := e.AsStrMap()
		t.Errorf("refused to %s: %s %s (%s)", m["username"], m["context"], m["object"], m["reason"])
	}

	t.Run("the user reaches no other service", func(t *testing.T) {
		startService(t, srv, "other")
		code, _, errOut := dimctl(t, append(base, "drain", "other", "n2")...)
		assert.Equal(t, 1, code)
		assert.Contains(t, errOut, "NOPERM")
	})
}
