package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/go-dim/dim/internal/syncbuf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, redistest.GoleakOptions()...)
}

func TestDemoWalksThroughEveryStep(t *testing.T) {
	tests := []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"on the embedded Redis", func(*testing.T) []string { return nil }},
		{"on a real redis-server", func(t *testing.T) []string { return []string{"-redis", redistest.Start(t).Addr()} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			require.NoError(t, run(ctx, tt.args(t), &out), out.String())
			for _, want := range []string{
				"every connection is open exactly once",
				"step 1: a node joins", "nothing else moved",
				"step 2: a feed breaks everywhere", "is quarantined after failing on", "open again",
				"step 3: a node loses its route to one feed", "times in a row, and",
				"step 4: a node stops gracefully", "no TTL to wait for",
				"step 5: a node crashes",
				"step 6: the leader dies", "with a higher epoch",
				"no connection ever ran twice at once",
			} {
				assert.Contains(t, out.String(), want)
			}
		})
	}
}

func TestDemoRejectsBadFlags(t *testing.T) {
	var out bytes.Buffer
	assert.Error(t, run(context.Background(), []string{"-nodes", "1"}, &out))
	assert.Error(t, run(context.Background(), []string{"-bogus"}, &out))
}

func TestDemoRunsUntilCancelled(t *testing.T) {
	out := &syncbuf.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-steps=false", "-nodes", "2", "-configs", "4"}, out) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "running until Ctrl-C") {
		require.True(t, time.Now().Before(deadline), "the demo did not settle")
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	require.NoError(t, <-done)
}
