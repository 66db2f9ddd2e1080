package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/go-dim/dim"
	"github.com/go-dim/dim/internal/redistest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, redistest.GoleakOptions()...)
}

// The parts of the manifests the test reads.
type (
	object struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   struct {
			Name string `yaml:"name"`
		} `yaml:"metadata"`
		Spec spec `yaml:"spec"`
	}
	spec struct {
		// Deployment
		Replicas int `yaml:"replicas"`
		Strategy struct {
			Type          string `yaml:"type"`
			RollingUpdate struct {
				MaxSurge       any `yaml:"maxSurge"`
				MaxUnavailable any `yaml:"maxUnavailable"`
			} `yaml:"rollingUpdate"`
		} `yaml:"strategy"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				TerminationGracePeriodSeconds *int        `yaml:"terminationGracePeriodSeconds"`
				Containers                    []container `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
		// Deployment and PodDisruptionBudget
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		// PodDisruptionBudget
		MaxUnavailable             any    `yaml:"maxUnavailable"`
		MinAvailable               any    `yaml:"minAvailable"`
		UnhealthyPodEvictionPolicy string `yaml:"unhealthyPodEvictionPolicy"`
	}
	container struct {
		Name string `yaml:"name"`
		Env  []struct {
			Name      string `yaml:"name"`
			Value     string `yaml:"value"`
			ValueFrom *struct {
				FieldRef *struct {
					FieldPath string `yaml:"fieldPath"`
				} `yaml:"fieldRef"`
			} `yaml:"valueFrom"`
		} `yaml:"env"`
		Ports []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
		} `yaml:"ports"`
		ReadinessProbe *probe `yaml:"readinessProbe"`
		LivenessProbe  *probe `yaml:"livenessProbe"`
		Lifecycle      struct {
			PreStop *struct {
				Sleep *struct {
					Seconds int `yaml:"seconds"`
				} `yaml:"sleep"`
			} `yaml:"preStop"`
		} `yaml:"lifecycle"`
	}
	probe struct {
		HTTPGet *struct {
			Path string `yaml:"path"`
			Port any    `yaml:"port"`
		} `yaml:"httpGet"`
		PeriodSeconds    int `yaml:"periodSeconds"`
		TimeoutSeconds   int `yaml:"timeoutSeconds"`
		FailureThreshold int `yaml:"failureThreshold"`
	}
)

// load parses every YAML document of the directory's manifests, by kind.
func load(t *testing.T) map[string]object {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	byKind := map[string]object{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var o object
			err := dec.Decode(&o)
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err, f)
			require.NotEmpty(t, o.Kind, "%s: a document without kind", f)
			require.NotContains(t, byKind, o.Kind, "%s: a second %s", f, o.Kind)
			byKind[o.Kind] = o
		}
	}
	return byKind
}

// env returns the container's environment as getenv would see it in the
// pod, with the downward API's metadata.name as podName.
func env(t *testing.T, c container, podName string) func(string) string {
	t.Helper()
	vars := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			require.Equal(t, "metadata.name", e.ValueFrom.FieldRef.FieldPath, "%s: only the pod name comes from the downward API", e.Name)
			vars[e.Name] = podName
		default:
			vars[e.Name] = e.Value
		}
	}
	return func(k string) string { return vars[k] }
}

// TestManifests checks what the manifests promise against the program and
// dim: probe paths and port, the node ID from the pod name, a grace period
// longer than the preStop sleep plus the Stop timeout, a rollout that never
// removes a pod before its replacement is ready, and a disruption budget
// over the same pods.
func TestManifests(t *testing.T) {
	objs := load(t)
	d, ok := objs["Deployment"]
	require.True(t, ok, "a Deployment")
	require.Equal(t, "apps/v1", d.APIVersion)
	require.Len(t, d.Spec.Template.Spec.Containers, 1)
	c := d.Spec.Template.Spec.Containers[0]

	s, err := settingsFromEnv(env(t, c, "ingest-7d9f8-x2k4q"))
	require.NoError(t, err)
	require.Equal(t, "ingest-7d9f8-x2k4q", s.nodeID, "node ID is the pod name")

	// Probes: dim's paths, on the port the program serves them on.
	_, port, err := splitPort(s.healthAddr)
	require.NoError(t, err)
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for _, pr := range []struct {
		name string
		p    *probe
		path string
	}{{"readinessProbe", c.ReadinessProbe, dim.ReadyPath}, {"livenessProbe", c.LivenessProbe, dim.LivePath}} {
		require.NotNil(t, pr.p, pr.name)
		require.NotNil(t, pr.p.HTTPGet, pr.name)
		require.Equal(t, pr.path, pr.p.HTTPGet.Path, pr.name)
		got := 0
		switch v := pr.p.HTTPGet.Port.(type) {
		case int:
			got = v
		case string:
			got = ports[v]
		}
		require.Equal(t, port, got, "%s: port %v is not HEALTH_ADDR's", pr.name, pr.p.HTTPGet.Port)
	}
	// Liveness gives a wedged Manager its full WedgedAfter before any
	// verdict counts (Live itself waits that long): the probe only must
	// not be quicker than a scrape can answer.
	require.GreaterOrEqual(t, c.LivenessProbe.FailureThreshold, 2, "one slow answer must not restart the pod")

	// The grace period covers the preStop sleep and the whole Stop budget.
	grace := d.Spec.Template.Spec.TerminationGracePeriodSeconds
	require.NotNil(t, grace, "terminationGracePeriodSeconds is set")
	preStop := 0
	if ps := c.Lifecycle.PreStop; ps != nil && ps.Sleep != nil {
		preStop = ps.Sleep.Seconds
	}
	budget := time.Duration(preStop)*time.Second + s.stopTimeout
	require.Greater(t, time.Duration(*grace)*time.Second, budget+time.Second,
		"terminationGracePeriodSeconds %d must exceed preStop %ds + DIM_STOP_TIMEOUT %v, with a second to spare", *grace, preStop, s.stopTimeout)

	// A rollout replaces pods one at a time and never goes below the count.
	require.Equal(t, "RollingUpdate", d.Spec.Strategy.Type)
	require.EqualValues(t, 0, d.Spec.Strategy.RollingUpdate.MaxUnavailable)
	require.EqualValues(t, 1, d.Spec.Strategy.RollingUpdate.MaxSurge)
	require.Equal(t, d.Spec.Selector.MatchLabels, subset(d.Spec.Template.Metadata.Labels, d.Spec.Selector.MatchLabels))

	pdb, ok := objs["PodDisruptionBudget"]
	require.True(t, ok, "a PodDisruptionBudget")
	require.Equal(t, "policy/v1", pdb.APIVersion)
	require.Equal(t, pdb.Spec.Selector.MatchLabels, subset(d.Spec.Template.Metadata.Labels, pdb.Spec.Selector.MatchLabels),
		"the budget selects the Deployment's pods")
	require.True(t, pdb.Spec.MaxUnavailable != nil || pdb.Spec.MinAvailable != nil)
	require.Equal(t, "AlwaysAllow", pdb.Spec.UnhealthyPodEvictionPolicy, "a Redis outage makes every pod unready; it must not block drains")
}

// TestProgramInAPod runs the program with the manifest's environment
// against a real redis-server: its readiness probe passes once it has
// joined, liveness passes, and SIGTERM (the context ending) stops it well
// within its stop timeout.
func TestProgramInAPod(t *testing.T) {
	srv := redistest.Start(t)
	objs := load(t)
	c := objs["Deployment"].Spec.Template.Spec.Containers[0]
	getenv := env(t, c, "ingest-0")
	s, err := settingsFromEnv(func(k string) string {
		switch k {
		case "REDIS_ADDR":
			return srv.Addr()
		case "HEALTH_ADDR":
			return "127.0.0.1:0"
		}
		return getenv(k)
	})
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	addrCh := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, s, slog.New(slog.DiscardHandler), func(addr string) { addrCh <- addr })
	}()
	var addr string
	select {
	case addr = <-addrCh:
	case err := <-done:
		t.Fatalf("run returned before it joined: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("not joined within 30s")
	}
	for _, path := range []string{c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path} {
		resp, err := http.Get("http://" + addr + path)
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
	}

	cancel() // SIGTERM
	start := time.Now()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(s.stopTimeout):
		t.Fatalf("not stopped within DIM_STOP_TIMEOUT %v", s.stopTimeout)
	}
	t.Logf("stopped in %v", time.Since(start))
}

func TestSettingsFromEnv(t *testing.T) {
	_, err := settingsFromEnv(func(string) string { return "" })
	require.ErrorContains(t, err, "POD_NAME")
	_, err = settingsFromEnv(func(k string) string {
		return map[string]string{"POD_NAME": "p", "DIM_SERVICE": "s", "DIM_STOP_TIMEOUT": "soon"}[k]
	})
	require.ErrorContains(t, err, "DIM_STOP_TIMEOUT")
	s, err := settingsFromEnv(func(k string) string { return map[string]string{"POD_NAME": "p", "DIM_SERVICE": "s"}[k] })
	require.NoError(t, err)
	require.Equal(t, settings{nodeID: "p", service: "s", redis: "redis:6379", healthAddr: ":8081", stopTimeout: 20 * time.Second}, s)
}

// subset returns the entries of labels whose keys are in keys.
func subset(labels, keys map[string]string) map[string]string {
	out := map[string]string{}
	for k := range keys {
		if v, ok := labels[k]; ok {
			out[k] = v
		}
	}
	return out
}

// splitPort returns the host and numeric port of host:port.
func splitPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(port)
	return host, p, err
}
