// Command prometheus runs one replica of a dim service and exposes its
// metrics for Prometheus to scrape, through the OpenTelemetry Prometheus
// exporter, next to the replica's health probes:
//
//	go run .                              # embedded Redis, metrics on 127.0.0.1:9464
//	go run . -redis 127.0.0.1:6379        # a real server
//	curl -s 127.0.0.1:9464/metrics | grep '^dim_'
//	curl -s 127.0.0.1:9464/readyz
//
// dim records its metrics with whatever MeterProvider it is given
// (dim.WithMeterProvider, or the global one at dim.New); the exporter is a
// reader of an SDK MeterProvider that turns OpenTelemetry names into
// Prometheus ones: dim.keys.unowned becomes dim_keys_unowned, counters get
// _total, and units a suffix (dim.rebalance.duration, in seconds, becomes
// dim_rebalance_duration_seconds).
//
// It lives in a module of its own so that dim's go.mod needs none of the
// Prometheus libraries.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-dim/dim"
	"github.com/go-dim/dim/internal/embedded"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/rueidis"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, nil); err != nil {
		fmt.Fprintln(os.Stderr, "prometheus:", err)
		os.Exit(1)
	}
}

// Feed is the config of one instance: here just a name.
type Feed struct{ Name string }

// Conn is a running instance.
type Conn struct{ Feed Feed }

// run serves until ctx ends, then stops the replica. listening, when not
// nil, is told the address the server listens on.
func run(ctx context.Context, args []string, stdout io.Writer, listening func(addr string)) error {
	fs := flag.NewFlagSet("prometheus", flag.ContinueOnError)
	redisAddr := fs.String("redis", "", "Redis host:port; empty runs an embedded Redis")
	listen := fs.String("listen", "127.0.0.1:9464", "address of /metrics, /readyz and /livez")
	service := fs.String("service", "ingest", "dim service name")
	feeds := fs.Int("feeds", 5, "configured instances")
	if err := fs.Parse(args); err != nil {
		return err
	}

	ropt := rueidis.ClientOption{InitAddress: []string{*redisAddr}}
	if *redisAddr == "" {
		srv, err := embedded.Start()
		if err != nil {
			return fmt.Errorf("embedded Redis: %w", err)
		}
		defer srv.Close()
		ropt = srv.ClientOption()
	}

	// The exporter registers with a registry of our own (the default one
	// would do as well) and is the reader of the MeterProvider dim uses.
	// The replica is the resource: its node ID is service.instance.id, so
	// that dim's series need no node label (see WithNodeMetricAttribute).
	nodeID := fmt.Sprintf("%s-%d", hostname(), os.Getpid())
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return fmt.Errorf("prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(
		sdkmetric.WithReader(exporter),
		sdkmetric.WithResource(resource.NewSchemaless(
			attribute.String("service.name", *service),
			attribute.String("service.instance.id", nodeID),
		)),
	)
	defer func() { _ = mp.Shutdown(context.WithoutCancel(ctx)) }()

	list := make([]Feed, *feeds)
	for i := range list {
		list[i] = Feed{Name: fmt.Sprintf("feed-%02d", i)}
	}
	m, err := dim.New(
		func(context.Context) ([]Feed, error) { return list, nil },
		func(_ context.Context, f Feed) (*Conn, error) { return &Conn{Feed: f}, nil },
		dim.WithService(*service),
		dim.WithRedis(ropt),
		dim.WithNodeID(nodeID),
		dim.WithKey(func(f Feed) string { return f.Name }),
		dim.WithHealthcheck(func(context.Context, *Conn) error { return nil }),
		dim.WithHealthcheckSchedule("@every 1s"),
		dim.WithMeterProvider(mp),
		dim.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))),
	)
	if err != nil {
		return err
	}

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle(dim.ReadyPath, m.HealthHandler())
	mux.Handle(dim.LivePath, m.HealthHandler())
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()

	if err := m.Start(ctx); err != nil {
		_ = hs.Close()
		<-served
		return err
	}
	fmt.Fprintf(stdout, "node %s of %q runs; metrics at http://%s/metrics\n", nodeID, *service, ln.Addr())
	if listening != nil {
		listening(ln.Addr().String())
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	stopErr := m.Stop(sctx)
	_ = hs.Shutdown(sctx)
	if serveErr == nil {
		serveErr = <-served
	}
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return errors.Join(serveErr, stopErr)
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "node"
	}
	return h
}
