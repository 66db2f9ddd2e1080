// Command kubernetes is the main of a dim service as it runs in a pod of
// the manifests beside it (deployment.yaml, pdb.yaml); docs/KUBERNETES.md
// explains each choice. It reads its settings from the environment the
// manifest sets:
//
//	POD_NAME          the node ID: the pod's name, from the downward API (required)
//	DIM_SERVICE       the service name (required)
//	REDIS_ADDR        Redis host:port (default redis:6379)
//	HEALTH_ADDR       where /readyz and /livez are served (default :8081)
//	DIM_STOP_TIMEOUT  how long Stop may take after SIGTERM (default 20s); the
//	                  pod's terminationGracePeriodSeconds must exceed it
//
// On SIGTERM it calls Stop, which hands every instance to the other pods in
// milliseconds, and exits. The instances here are stand-ins: each one
// "polls" its feed until its context ends.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-dim/dim"
	"github.com/redis/rueidis"
)

func main() {
	s, err := settingsFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubernetes:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, s, slog.Default(), nil); err != nil {
		fmt.Fprintln(os.Stderr, "kubernetes:", err)
		os.Exit(1)
	}
}

// settings is what the pod's environment says.
type settings struct {
	nodeID      string
	service     string
	redis       string
	healthAddr  string
	stopTimeout time.Duration
}

// settingsFromEnv reads the settings with getenv (os.Getenv in main).
func settingsFromEnv(getenv func(string) string) (settings, error) {
	s := settings{
		nodeID:      getenv("POD_NAME"),
		service:     getenv("DIM_SERVICE"),
		redis:       getenv("REDIS_ADDR"),
		healthAddr:  getenv("HEALTH_ADDR"),
		stopTimeout: 20 * time.Second,
	}
	if s.nodeID == "" {
		return s, errors.New("POD_NAME is not set: give the pod's name with the downward API (fieldRef metadata.name)")
	}
	if s.service == "" {
		return s, errors.New("DIM_SERVICE is not set")
	}
	if s.redis == "" {
		s.redis = "redis:6379"
	}
	if s.healthAddr == "" {
		s.healthAddr = ":8081"
	}
	if v := getenv("DIM_STOP_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return s, fmt.Errorf("DIM_STOP_TIMEOUT=%q: want a positive duration such as 20s", v)
		}
		s.stopTimeout = d
	}
	return s, nil
}

// Feed is the config of one instance.
type Feed struct{ Name string }

// Poller is a running instance.
type Poller struct {
	feed Feed
	done chan struct{}
}

// run serves the probes, runs the replica until ctx ends (SIGTERM), then
// stops it within the stop timeout. listening, when not nil, is told the
// probes' address once the replica has joined.
func run(ctx context.Context, s settings, log *slog.Logger, listening func(addr string)) error {
	feeds := make([]Feed, 12)
	for i := range feeds {
		feeds[i] = Feed{Name: fmt.Sprintf("feed-%02d", i)}
	}
	m, err := dim.New(
		func(context.Context) ([]Feed, error) { return feeds, nil },
		func(ictx context.Context, f Feed) (*Poller, error) {
			p := &Poller{feed: f, done: make(chan struct{})}
			go func() { // polls until dim cancels the instance
				defer close(p.done)
				<-ictx.Done()
			}()
			return p, nil
		},
		dim.WithService(s.service),
		dim.WithNodeID(s.nodeID),
		dim.WithRedis(rueidis.ClientOption{InitAddress: []string{s.redis}}),
		dim.WithKey(func(f Feed) string { return f.Name }),
		dim.WithDisconnect(func(ctx context.Context, p *Poller) error {
			select { // the instance's context is cancelled already: wait for it to stop
			case <-p.done:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}),
		dim.WithLogger(log),
	)
	if err != nil {
		return err
	}

	// The probes answer from the start: /livez 200 at once, /readyz 503
	// until Start has joined the service.
	ln, err := net.Listen("tcp", s.healthAddr)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: m.HealthHandler(), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	defer func() {
		_ = hs.Close()
		<-served
	}()

	// Start waits while a previous pod of the same name (a StatefulSet's)
	// still holds its lease. When Redis cannot be reached it fails, the
	// process exits, and the kubelet restarts it with a backoff: only pods
	// that start during an outage restart; running ones wait it out.
	if err := m.Start(ctx); err != nil {
		return err
	}
	log.Info("joined", "node", s.nodeID, "service", s.service)
	if listening != nil {
		listening(ln.Addr().String())
	}
	<-ctx.Done()

	// SIGTERM: hand everything off within the stop timeout, which the pod's
	// terminationGracePeriodSeconds exceeds.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.stopTimeout)
	defer cancel()
	start := time.Now()
	err = m.Stop(sctx)
	log.Info("stopped", "took", time.Since(start), "err", err)
	return err
}
