package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-dim/dim"
	"github.com/redis/rueidis"
)

// The page's files, served as they are; index.html is a template that gets
// the service's name and, with -allow-actions, the process's token.
//
//go:embed web
var webFiles embed.FS

var indexTemplate = template.Must(template.ParseFS(webFiles, "web/index.html"))

// tokenHeader carries the per-process token of an action request.
const tokenHeader = "X-Dimctl-Token"

// defaultListen is where dimctl web listens without -listen: loopback only.
const defaultListen = "127.0.0.1:8080"

// webWriteTimeout bounds each write to a page; a page that takes longer is
// dropped, and its browser reconnects.
const webWriteTimeout = 10 * time.Second

// webServer serves one service's page. One poller reads the service every
// -interval while a page is open, and a broadcaster hands each snapshot to
// every page.
type webServer struct {
	o      *options
	client rueidis.Client
	log    *lockedWriter
	hub    *broadcaster
	token  string // "" without -allow-actions
	// listenIP and port are what the Host header must name.
	listenIP net.IP
	port     string

	// full is the poller's own: whether the last read found few enough
	// keys to read them all.
	full bool
}

// web serves the page until ctx ends. The first read must succeed, so that
// a wrong name or address fails at once; later failures are shown on the
// page and retried.
func (o *options) web(ctx context.Context, client rueidis.Client, stdout, stderr io.Writer) error {
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", o.listen, err)
	}
	defer ln.Close()
	addr := ln.Addr().(*net.TCPAddr)
	w := &webServer{o: o, client: client, log: &lockedWriter{w: stderr}, hub: newBroadcaster(),
		listenIP: addr.IP, port: fmt.Sprint(addr.Port)}
	if o.allowActions {
		w.token = rand.Text()
	}
	if err := w.refresh(ctx); err != nil {
		return err
	}

	srv := &http.Server{
		Handler:           w.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		// Pages' event streams end with ctx, so that Shutdown does not
		// wait for them.
		BaseContext: func(net.Listener) context.Context { return ctx },
		ErrorLog:    log.New(w.log, "dimctl web: ", 0),
	}
	var wg sync.WaitGroup
	wg.Go(func() { w.poll(ctx) })
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	mode := "read-only"
	if o.allowActions {
		mode = "actions allowed"
	}
	fmt.Fprintf(stdout, "dimctl web: %q at http://%s/ (%s); Ctrl-C to quit\n", o.service, hostPort(addr), mode)

	select {
	case <-ctx.Done():
		err = nil
	case err = <-served:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if serr := srv.Shutdown(sctx); err == nil && serr != nil && !errors.Is(serr, context.DeadlineExceeded) {
		err = serr
	}
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// hostPort is the address to open the page at: localhost's IP for a
// wildcard listener.
func hostPort(a *net.TCPAddr) string {
	if a.IP.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", fmt.Sprint(a.Port))
	}
	return a.String()
}

// poll refreshes the snapshot every -interval while a page is open, and at
// once when a page opens or an action ran.
func (w *webServer) poll(ctx context.Context) {
	ticker := time.NewTicker(w.o.interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if w.hub.count() == 0 {
				continue
			}
		case <-w.hub.wake:
		}
		_ = w.refresh(ctx) // a failure is published to the pages
	}
}

// refresh reads the service and publishes the snapshot, or the error.
func (w *webServer) refresh(ctx context.Context) error {
	v, err := w.read(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		msg, _ := json.Marshal(webView{Service: w.o.service, Error: w.o.describe(err), At: time.Now().UTC()})
		w.hub.publish(msg)
		return err
	}
	hctx, cancel := context.WithTimeout(ctx, w.o.timeout)
	entries, err := dim.ReadHistory(hctx, w.client, w.o.dimService(), dim.HistoryFilter{Limit: w.o.limit})
	cancel()
	if err != nil {
		v.HistoryError = w.o.describe(err)
	}
	v.History = historyView(entries)
	v.Actions = w.o.allowActions
	v.At = time.Now().UTC()
	msg, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.hub.publish(msg)
	return nil
}

// read reads one snapshot: the full status while the service has at most
// -max-keys keys, else the summary, whose cost does not grow with the keys.
func (w *webServer) read(ctx context.Context) (*webView, error) {
	ctx, cancel := context.WithTimeout(ctx, w.o.timeout)
	defer cancel()
	if !w.full {
		sum, err := dim.ReadSummary(ctx, w.client, w.o.dimService())
		if err != nil {
			return nil, err
		}
		if sum.Assigned+sum.Quarantined > w.o.maxKeys {
			return summaryView(sum, w.o.maxKeys), nil
		}
		w.full = true
	}
	st, err := dim.ReadStatus(ctx, w.client, w.o.dimService())
	if err != nil {
		return nil, err
	}
	v := statusView(st, w.o.maxKeys)
	w.full = v.Full
	return v, nil
}

// handler routes the page's requests, each after the Host check.
func (w *webServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", w.index)
	mux.HandleFunc("GET /app.js", w.asset("web/app.js", "text/javascript; charset=utf-8"))
	mux.HandleFunc("GET /style.css", w.asset("web/style.css", "text/css; charset=utf-8"))
	mux.HandleFunc("GET /events", w.events)
	mux.HandleFunc("GET /snapshot", w.snapshot)
	mux.HandleFunc("POST /api/drain", w.action("drain"))
	mux.HandleFunc("POST /api/undrain", w.action("undrain"))
	mux.HandleFunc("POST /api/rebalance", w.action("rebalance"))
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		h := rw.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "+
			"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		// A page of an attacker's DNS name that resolves to this address
		// (DNS rebinding) sends its own name as Host: refuse every request
		// that does not name this listener.
		if !w.hostAllowed(r.Host) {
			http.Error(rw, "dimctl web: unknown Host "+quote(r.Host)+"; open the page by IP address or as localhost", http.StatusMisdirectedRequest)
			return
		}
		mux.ServeHTTP(rw, r)
	})
}

// hostAllowed reports whether a Host header names this listener: localhost
// or a loopback address, the address listened on, or (listening on every
// address, with -allow-remote) any IP address; always with the port. DNS
// names other than localhost are refused.
func (w *webServer) hostAllowed(host string) bool {
	name, port, err := net.SplitHostPort(host)
	if err != nil {
		name, port = host, "80"
	}
	if port != w.port {
		return false
	}
	if strings.EqualFold(name, "localhost") {
		return true
	}
	ip := net.ParseIP(name)
	switch {
	case ip == nil:
		return false
	case ip.IsLoopback(), ip.Equal(w.listenIP):
		return true
	default:
		return w.listenIP.IsUnspecified()
	}
}

func (w *webServer) index(rw http.ResponseWriter, _ *http.Request) {
	var buf bytes.Buffer
	err := indexTemplate.Execute(&buf, struct {
		Service, Token string
		Actions        bool
	}{w.o.service, w.token, w.o.allowActions})
	if err != nil {
		http.Error(rw, err.Error(), http.StatusInternalServerError)
		return
	}
	rw.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = rw.Write(buf.Bytes())
}

func (w *webServer) asset(name, contentType string) http.HandlerFunc {
	return func(rw http.ResponseWriter, _ *http.Request) {
		data, err := webFiles.ReadFile(name)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		rw.Header().Set("Content-Type", contentType)
		_, _ = rw.Write(data)
	}
}

// snapshot returns the latest snapshot as JSON, for scripts and tests.
func (w *webServer) snapshot(rw http.ResponseWriter, _ *http.Request) {
	rw.Header().Set("Content-Type", "application/json")
	_, _ = rw.Write(w.hub.latest())
}

// events streams snapshots to one page as server-sent events, the latest
// first, until the page goes away or dimctl ends.
func (w *webServer) events(rw http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(rw)
	h := rw.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	rw.WriteHeader(http.StatusOK)
	sub, leave := w.hub.subscribe()
	defer leave()
	send := func(s string) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(webWriteTimeout))
		if _, err := io.WriteString(rw, s); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send("retry: 2000\n\n") {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case msg := <-sub.ch:
			// JSON has no raw newline, so one data line holds it.
			if !send("event: snapshot\ndata: " + string(msg) + "\n\n") {
				return
			}
		}
	}
}

// actionRequest is the body of a POST to /api/….
type actionRequest struct {
	Node string `json:"node"`
	For  string `json:"for"`
}

// action runs drain, undrain or rebalance for the page, as the dimctl
// command of the same name would, once checkAction lets the request
// through.
func (w *webServer) action(kind string) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		if !w.o.allowActions {
			writeResult(rw, http.StatusForbidden, "", "actions are off: start dimctl web with -allow-actions")
			return
		}
		if err := w.checkAction(r); err != nil {
			writeResult(rw, http.StatusForbidden, "", err.Error())
			return
		}
		var req actionRequest
		dec := json.NewDecoder(http.MaxBytesReader(rw, r.Body, 4096))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeResult(rw, http.StatusBadRequest, "", "bad request body: "+err.Error())
			return
		}
		o := *w.o // the request's own copy
		o.node = req.Node
		o.holdFor = 0
		if req.For != "" {
			d, err := time.ParseDuration(req.For)
			if err != nil || d <= 0 {
				writeResult(rw, http.StatusBadRequest, "", fmt.Sprintf("bad duration %q", req.For))
				return
			}
			o.holdFor = d
		}
		if kind != "rebalance" && o.node == "" {
			writeResult(rw, http.StatusBadRequest, "", kind+" needs a node")
			return
		}
		var out bytes.Buffer
		var err error
		switch kind {
		case "drain":
			err = o.drain(r.Context(), w.client, &out)
		case "undrain":
			err = o.undrain(r.Context(), w.client, &out)
		case "rebalance":
			err = o.rebalance(r.Context(), w.client, &out)
		}
		select {
		case w.hub.wake <- struct{}{}: // show the outcome at once
		default:
		}
		what := strings.TrimSpace(kind + " " + quote(req.Node))
		if err != nil {
			msg := o.describe(err)
			fmt.Fprintf(w.log, "dimctl web: %s from %s failed: %s\n", what, r.RemoteAddr, msg)
			writeResult(rw, http.StatusConflict, "", msg)
			return
		}
		msg := strings.TrimSpace(out.String())
		fmt.Fprintf(w.log, "dimctl web: %s from %s: %s\n", what, r.RemoteAddr, msg)
		writeResult(rw, http.StatusOK, msg, "")
	}
}

// checkAction lets through only what the page itself sends: a same-origin
// JSON request carrying the process's token. A form or script of another
// site cannot send the token, and the browser names that site in Origin.
func (w *webServer) checkAction(r *http.Request) error {
	origin := r.Header.Get("Origin")
	switch {
	case origin == "":
		return errors.New("refused: no Origin header (actions are for the page's buttons)")
	case origin != "http://"+r.Host:
		return fmt.Errorf("refused: request from another origin %s", quote(origin))
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return fmt.Errorf("refused: request from a %s site", quote(site))
	}
	if subtle.ConstantTimeCompare([]byte(r.Header.Get(tokenHeader)), []byte(w.token)) != 1 {
		return errors.New("refused: missing or wrong " + tokenHeader + " (reload the page: each dimctl web has its own)")
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return errors.New("refused: the body must be application/json")
	}
	return nil
}

// writeResult answers an action with {"message": …} or {"error": …}.
func writeResult(rw http.ResponseWriter, code int, message, errMsg string) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(code)
	_ = json.NewEncoder(rw).Encode(struct {
		Message string `json:"message,omitempty"`
		Error   string `json:"error,omitempty"`
	}{message, errMsg})
}

// lockedWriter serializes the log lines of concurrent requests.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// loopbackHost reports whether a -listen host is loopback only.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkWeb checks web's flags.
func (o *options) checkWeb() error {
	if o.json {
		return errors.New("-json does not apply to web: the page gets its snapshots as JSON, also at /snapshot")
	}
	if o.maxKeys < 1 {
		return fmt.Errorf("-max-keys %d is below 1", o.maxKeys)
	}
	host, _, err := net.SplitHostPort(o.listen)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", o.listen, err)
	}
	if !o.allowRemote && !loopbackHost(host) {
		return fmt.Errorf("-listen %s is not a loopback address: the page has no login, so serving it beyond this machine needs -allow-remote", o.listen)
	}
	return nil
}
