package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, redistest.GoleakOptions()...)
}

// scrape reads /metrics and returns each metric family's type by name, and
// the samples' lines.
func scrape(t *testing.T, addr string) (types map[string]string, samples []string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	types = map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			types[f[2]] = f[3]
		} else if line != "" && !strings.HasPrefix(line, "#") {
			samples = append(samples, line)
		}
	}
	require.NoError(t, sc.Err())
	return types, samples
}

// TestScrape runs the example, scrapes it as Prometheus would, and checks
// that dim's metrics are there under their Prometheus names, with their
// values once the replica runs every feed and leads.
func TestScrape(t *testing.T) {
	for _, tt := range []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"on the embedded Redis", func(*testing.T) []string { return nil }},
		{"on a real redis-server", func(t *testing.T) []string { return []string{"-redis", redistest.Start(t).Addr()} }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			addrCh := make(chan string, 1)
			done := make(chan error, 1)
			var out bytes.Buffer
			args := append(tt.args(t), "-listen", "127.0.0.1:0", "-feeds", "5", "-service", "scraped")
			go func() { done <- run(ctx, args, &out, func(addr string) { addrCh <- addr }) }()
			var addr string
			select {
			case addr = <-addrCh:
			case err := <-done:
				t.Fatalf("run returned before listening: %v", err)
			}

			// The leader's gauges come with its first rebalance, the
			// instances once the feeds run: poll, with a deadline.
			want := map[string]string{
				"dim_instances":                    "gauge",
				"dim_leader":                       "gauge",
				"dim_epoch":                        "gauge",
				"dim_keys_unowned":                 "gauge",
				"dim_keys_misplaced":               "gauge",
				"dim_keys_unknown":                 "gauge",
				"dim_rebalances_total":             "counter",
				"dim_rebalance_duration_seconds":   "histogram",
				"dim_reconcile_duration_seconds":   "histogram",
				"dim_create_duration_seconds":      "histogram",
				"dim_healthcheck_duration_seconds": "histogram",
			}
			var (
				types   map[string]string
				samples []string
			)
			ready := func() bool {
				types, samples = scrape(t, addr)
				for name, typ := range want {
					if types[name] != typ {
						return false
					}
				}
				return slices.ContainsFunc(samples, func(s string) bool {
					return strings.HasPrefix(s, "dim_instances{") && strings.HasSuffix(s, " 5")
				}) && slices.ContainsFunc(samples, func(s string) bool {
					return strings.HasPrefix(s, "dim_keys_unowned{") && strings.HasSuffix(s, " 0")
				})
			}
			deadline := time.Now().Add(30 * time.Second)
			for !ready() {
				if time.Now().After(deadline) {
					t.Fatalf("not every metric scraped within 30s; want %v\ngot types %v\nsamples:\n%s", want, types, strings.Join(samples, "\n"))
				}
				time.Sleep(50 * time.Millisecond)
			}
			var names []string
			for name := range types {
				if strings.HasPrefix(name, "dim_") {
					names = append(names, name+" ("+types[name]+")")
				}
			}
			slices.Sort(names)
			t.Logf("dim's metrics as scraped:\n%s", strings.Join(names, "\n"))
			documented := readmeNames(t)
			for name := range types {
				if strings.HasPrefix(name, "dim_") {
					require.Contains(t, documented, name, "scraped but not in the README's Metrics section")
				}
			}

			// Labels: the service is an attribute; the node is the
			// resource (target_info), not a label of every series.
			for _, s := range samples {
				if strings.HasPrefix(s, "dim_instances{") {
					require.Contains(t, s, `dim_service="scraped"`)
					require.NotContains(t, s, "dim_node=")
				}
			}
			require.Equal(t, "gauge", types["target_info"])
			require.True(t, slices.ContainsFunc(samples, func(s string) bool {
				return strings.HasPrefix(s, "target_info{") && strings.Contains(s, `service_name="scraped"`) &&
					strings.Contains(s, "service_instance_id=")
			}), "target_info names the replica")

			// The probes are served beside the metrics.
			for _, path := range []string{"/readyz", "/livez"} {
				resp, err := http.Get("http://" + addr + path)
				require.NoError(t, err)
				_ = resp.Body.Close()
				require.Equal(t, http.StatusOK, resp.StatusCode, path)
			}

			cancel()
			select {
			case err := <-done:
				require.NoError(t, err, out.String())
			case <-time.After(30 * time.Second):
				t.Fatal("run did not return after its context ended")
			}
			require.Contains(t, out.String(), "metrics at http://")
		})
	}
}

// readmeNames returns the Prometheus names the README's Metrics section
// lists: the words of the code block after "the names become".
func readmeNames(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(data), "the names become")
	require.True(t, ok, "README.md: no list of scraped names")
	_, rest, ok = strings.Cut(rest, "```\n")
	require.True(t, ok)
	block, _, ok := strings.Cut(rest, "```")
	require.True(t, ok)
	names := map[string]bool{}
	for _, f := range strings.Fields(block) {
		names[f] = true
	}
	return names
}
