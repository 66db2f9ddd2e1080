package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them. The
// crash scenarios re-execute the running binary as a node process, which
// under `go test` is this test binary: "node" runs the node instead of the
// tests.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "node" {
		os.Exit(nodeMain(os.Args[2:]))
	}
	goleak.VerifyTestMain(m, redistest.GoleakOptions()...)
}

// TestQuick runs every scenario once at its smallest size against a
// redis-server the program starts itself, and checks the table and the JSON.
func TestQuick(t *testing.T) {
	redistest.Require(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	path := filepath.Join(t.TempDir(), "out.json")
	var out, errOut bytes.Buffer
	start := time.Now()
	if code := run(ctx, []string{"-quick", "-json", path}, &out, &errOut); code != 0 {
		t.Fatalf("exit code %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	t.Logf("took %v", time.Since(start))

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range rep.Results {
		seen[r.Scenario] = true
		if r.Runs == 0 || r.Median < 0 || r.Min > r.Median || r.Median > r.Max {
			t.Errorf("%s / %s / %s: bad summary %+v", r.Scenario, r.Case, r.Metric, r)
		}
		if r.Unit == "ms" && r.Scenario != "floor" && r.Floor <= 0 {
			t.Errorf("%s / %s / %s: no floor", r.Scenario, r.Case, r.Metric)
		}
	}
	for _, s := range []string{"floor", "1 graceful handoff", "2 node crash", "3 leader crash", "3 leader stop",
		"4 cold start", "5 steady state", "6 rolling restart", "7 whole restart", "8 fence", "9 rolling update", "11 status reads", "12 move budget", "13 history cost", "14 scale"} {
		if !seen[s] {
			t.Errorf("no result for scenario %q", s)
		}
	}
	for _, want := range []string{"scenario", "median", "× floor", "SIGKILL → its keys live elsewhere",
		"last Start returned → every key live", "fence → last disconnect returned"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

// TestFlags checks that bad command lines are refused with exit code 2.
func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-scenarios", "nope"},
		{"-cold", "3x"},
		{"-crash-ttls", "soon"},
		{"-restart", "100"},
		{"-fence", "0"},
		{"-budget-moves", "0"},
		{"-budget", "10"},
		{"-fence-hook", "1s"}, // beyond the fence margin of the default -fence-ttl
		{"extra"},
	} {
		var out, errOut bytes.Buffer
		if code := run(t.Context(), args, &out, &errOut); code != 2 {
			t.Errorf("%q: exit code %d, want 2 (stderr %q)", args, code, errOut.String())
		}
	}
}

func TestSummarise(t *testing.T) {
	r := &Result{Unit: "ms", Samples: []float64{5, 1, 3, 2, 4}}
	r.withFloor("PING p50", 0.5).withTarget("p99", 4.5)
	r.summarise()
	if r.Median != 3 || r.Min != 1 || r.Max != 5 || r.P99 != 5 || r.Ratio != 6 || r.Met == nil || *r.Met {
		t.Errorf("got %+v", r)
	}
	r = &Result{Samples: []float64{1, 2, 3, 4}}
	r.summarise()
	if r.Median != 2.5 {
		t.Errorf("median of 1..4 = %v, want 2.5", r.Median)
	}
}
