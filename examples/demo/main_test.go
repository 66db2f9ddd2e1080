package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"slices"
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

func TestDemoTwoZonesOneDies(t *testing.T) {
	tests := []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"on the embedded Redis", func(*testing.T) []string { return []string{"-zones"} }},
		{"on a real redis-server", func(t *testing.T) []string { return []string{"-zones", "-redis", redistest.Start(t).Addr()} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// The demo checks the outcome itself and fails otherwise.
			require.NoError(t, run(ctx, tt.args(t), &out), out.String())
			text := out.String()

			// What zone a ran before it died, from the first view.
			inZoneA := map[string]bool{}
			for _, m := range regexp.MustCompile(`(?m)^ +[\d.]+s +(n[13]) +zone a .*│ (.*)$`).FindAllStringSubmatch(text, 2) {
				for _, key := range strings.Fields(m[2]) {
					inZoneA[key] = true
				}
			}
			var movable []string
			for key := range inZoneA {
				if key > "feed-03" { // feed-01 to -03 must stay in zone a
					movable = append(movable, key)
				}
			}
			slices.Sort(movable)
			require.Len(t, inZoneA, 6, "zone a ran half of the 12 feeds:\n%s", text)
			assert.Contains(t, text, "zone a dies: n1 and n3 crash at once")
			assert.Contains(t, text, fmt.Sprintf("zone b took over exactly the %d feeds allowed to move there (%s)", len(movable), strings.Join(movable, " ")))
			assert.Contains(t, text, "nothing in zone b moved")
			assert.Contains(t, text, "reported unplaceable (Status.Unplaceable: feed-01 feed-02 feed-03)")
			assert.Contains(t, text, "dimctl explain demo") // the service is named on the embedded Redis only
			assert.Contains(t, text, "feed-01: required zone=a: no live node qualifies, so it runs nowhere")
			assert.Contains(t, text, "nothing is unplaceable; the spread feeds run 3 in zone a and 3 in zone b")
			assert.Contains(t, text, "no connection ever ran twice at once")
		})
	}
}

func TestDemoRejectsBadFlags(t *testing.T) {
	var out bytes.Buffer
	assert.Error(t, run(context.Background(), []string{"-nodes", "1"}, &out))
	assert.Error(t, run(context.Background(), []string{"-bogus"}, &out))
	assert.Error(t, run(context.Background(), []string{"-zones", "-configs", "3"}, &out))
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
