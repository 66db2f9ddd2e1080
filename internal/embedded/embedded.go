// Package embedded runs an in-process Redis (miniredis) that dim can use,
// for the demo and the runnable examples: nothing to install.
//
// miniredis differs from a real server in two ways that matter here. Its
// key TTLs only pass when told to, so a pump advances them in step with the
// wall clock (scripts read TIME from the wall clock already). And it has no
// client-side caching, so clients must set DisableCache; rueidislock then
// polls for a released lock instead of waiting for an invalidation.
package embedded

import (
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"
)

// pumpEvery is how often key TTLs are advanced.
const pumpEvery = 10 * time.Millisecond

// Server is a running in-process Redis.
type Server struct {
	mr   *miniredis.Miniredis
	stop chan struct{}
	wg   sync.WaitGroup
}

// Start runs a server on a free loopback port.
func Start() (*Server, error) {
	mr, err := miniredis.Run()
	if err != nil {
		return nil, err
	}
	s := &Server{mr: mr, stop: make(chan struct{})}
	s.wg.Go(s.pump)
	return s, nil
}

// pump moves key TTLs forward with the wall clock.
func (s *Server) pump() {
	t := time.NewTicker(pumpEvery)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.mr.FastForward(now.Sub(last))
			last = now
		}
	}
}

// Addr returns the server's host:port.
func (s *Server) Addr() string { return s.mr.Addr() }

// ClientOption returns the rueidis options a client of this server needs.
func (s *Server) ClientOption() rueidis.ClientOption {
	return rueidis.ClientOption{
		InitAddress:       []string{s.mr.Addr()},
		DisableCache:      true,
		ForceSingleClient: true,
	}
}

// Close stops the server.
func (s *Server) Close() {
	close(s.stop)
	s.wg.Wait()
	s.mr.Close()
}
