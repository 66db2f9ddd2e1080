package dim_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/go-dim/dim"
	"github.com/redis/rueidis"
)

// HealthHandler serves the probes of an orchestrator such as Kubernetes:
// /readyz follows the replica's membership (and so Redis), /livez only
// whether the Manager itself is stuck.
func ExampleManager_HealthHandler() {
	redis, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer redis.Close()

	m, err := dim.New(
		func(ctx context.Context) ([]Feed, error) { return []Feed{{Name: "prices"}}, nil },
		func(ctx context.Context, f Feed) (*Conn, error) { return &Conn{Feed: f}, nil },
		dim.WithService("probed"),
		dim.WithRedis(rueidis.ClientOption{InitAddress: []string{redis.Addr()}, DisableCache: true}),
		dim.WithNodeTTL(500*time.Millisecond),
		dim.WithHeartbeat(100*time.Millisecond),
	)
	if err != nil {
		panic(err)
	}
	// In a pod: go http.ListenAndServe(":8081", m.HealthHandler())
	srv := httptest.NewServer(m.HealthHandler())
	defer srv.Close()
	get := func(path string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			panic(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Printf("%s %d %s", path, resp.StatusCode, body)
	}

	get(dim.ReadyPath)
	if err := m.Start(context.Background()); err != nil {
		panic(err)
	}
	fmt.Println("Ready:", m.Ready(), "Live:", m.Live())
	get(dim.ReadyPath)
	get(dim.LivePath)

	if err := m.Stop(context.Background()); err != nil {
		panic(err)
	}
	get(dim.ReadyPath)
	get(dim.LivePath)
	// Output:
	// /readyz 503 not started
	// Ready: true Live: true
	// /readyz 200 ok
	// /livez 200 ok
	// /readyz 503 stopped
	// /livez 200 ok
}
