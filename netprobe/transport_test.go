package netprobe

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// env is a probe wired to a fake DNS server that resolves upstream.test and
// upstream.example.com to 127.0.0.1, and one httptest upstream.
type env struct {
	p     *Probe
	reg   *prometheus.Registry
	dns   *fakeDNS
	srv   *httptest.Server
	base  string // upstream base URL (the label)
	clock *fakeClock
}

func newEnv(t *testing.T, h http.Handler, tlsMode string, mod func(*Config)) *env {
	t.Helper()
	e := &env{dns: newFakeDNS(t), clock: newFakeClock()}
	e.dns.set(func(f *fakeDNS) {
		f.a["upstream.test."] = []string{"127.0.0.1"}
		f.a["upstream.example.com."] = []string{"127.0.0.1"}
	})
	e.srv = httptest.NewUnstartedServer(h)
	e.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	cfg, reg := testConfig(t, e.dns.Addr)
	e.reg = reg
	cfg.Clock = e.clock.Now
	switch tlsMode {
	case "":
		e.srv.Start()
		e.base = "http://upstream.test:" + port(e.srv) + "/go"
	default:
		e.srv.EnableHTTP2 = tlsMode == "h2"
		e.srv.StartTLS()
		cfg.TLSConfig = &tls.Config{RootCAs: e.srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
		e.base = "https://upstream.example.com:" + port(e.srv) + "/go"
	}
	t.Cleanup(e.srv.Close)
	cfg.Upstreams = []string{e.base}
	if mod != nil {
		mod(&cfg)
	}
	e.p = newTestProbe(t, cfg)
	return e
}

func port(s *httptest.Server) string {
	u, _ := url.Parse(s.URL)
	return u.Port()
}

// get fetches path below the upstream and reads the body.
func (e *env) get(t *testing.T, path string) (*http.Response, []byte, error) {
	t.Helper()
	resp, err := e.p.Client().Get(e.base + path)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func (e *env) phase(t *testing.T, kind, phase string) (uint64, float64) {
	t.Helper()
	return histogram(t, e.reg, "modproxy_upstream_phase_seconds",
		map[string]string{"upstream": e.base, "kind": kind, "phase": phase, "source": "userspace"})
}

func (e *env) requests(t *testing.T, outcome string) float64 {
	return counter(t, e.reg, "modproxy_upstream_requests_total", map[string]string{"upstream": e.base, "outcome": outcome})
}

func TestClassify(t *testing.T) {
	ups := []string{"https://mirror.example.com/go/", "https://mirror.example.com", "https://sum.example.org"}
	for _, tc := range []struct{ u, upstream, kind string }{
		{"https://mirror.example.com/go/golang.org/x/text/@v/list", "https://mirror.example.com/go", "list"},
		{"https://mirror.example.com/go/golang.org/x/text/@v/v0.3.0.info", "https://mirror.example.com/go", "info"},
		{"https://mirror.example.com/go/golang.org/x/text/@v/v0.3.0.mod", "https://mirror.example.com/go", "mod"},
		{"https://MIRROR.example.com/go/golang.org/x/text/@v/v0.3.0.zip", "https://mirror.example.com/go", "zip"},
		{"https://mirror.example.com/go/golang.org/x/text/@latest", "https://mirror.example.com/go", "latest"},
		{"https://mirror.example.com/gopher/x/@latest", "https://mirror.example.com", "latest"},
		{"https://mirror.example.com/sumdb/sum.example.org/lookup/x@v1.0.0", "https://mirror.example.com", "sumdb"},
		{"https://mirror.example.com/sumdb/sum.example.org/supported", "https://mirror.example.com", "sumdb"},
		{"https://sum.example.org/lookup/golang.org/x/text@v0.3.0", "https://sum.example.org", "sumdb"},
		{"https://sum.example.org/tile/8/0/001", "https://sum.example.org", "sumdb"},
		{"https://sum.example.org/latest", "https://sum.example.org", "sumdb"},
		{"https://example.com/sumdb/x/@v/list", "https://example.com", "list"},
		{"http://other.example.net:8080/robots.txt", "http://other.example.net:8080", "other"},
	} {
		u, _ := url.Parse(tc.u)
		up, kind := Classify(ups, u)
		if up != tc.upstream || kind != tc.kind {
			t.Errorf("Classify(%s) = %s, %s; want %s, %s", tc.u, up, kind, tc.upstream, tc.kind)
		}
	}
}

func TestPhasesHTTP(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(150 * time.Millisecond) // slow first byte
		w.Write([]byte("v1.0.0\n"))
		w.(http.Flusher).Flush()
		time.Sleep(100 * time.Millisecond) // slow transfer
		w.Write([]byte("v1.1.0\n"))
	})
	e := newEnv(t, h, "", nil)
	e.dns.set(func(f *fakeDNS) { f.delay = 80 * time.Millisecond })
	resp, body, err := e.get(t, "/example.org/m/@v/list")
	if err != nil || resp.StatusCode != 200 || string(body) != "v1.0.0\nv1.1.0\n" {
		t.Fatalf("get: %v %v %q", err, resp, body)
	}
	check := func(phase string, min time.Duration) {
		t.Helper()
		n, sum := e.phase(t, "list", phase)
		if n != 1 || sum < min.Seconds() {
			t.Errorf("%s: count %d sum %.3fs, want 1 sample ≥ %v", phase, n, sum, min)
		}
	}
	check(PhaseDNS, 80*time.Millisecond)
	check(PhaseConnect, 0)
	check(PhaseTTFB, 150*time.Millisecond)
	// transfer is the difference of two client-side stamps: a late first
	// stamp (the client descheduled) takes from it what it adds to ttfb, so
	// only their sum has the server's two pauses as a lower bound.
	check(PhaseTransfer, 0)
	_, ttfb := e.phase(t, "list", PhaseTTFB)
	if _, transfer := e.phase(t, "list", PhaseTransfer); ttfb+transfer < 0.250 {
		t.Errorf("ttfb %.3fs + transfer %.3fs < the server's 250ms of pauses", ttfb, transfer)
	}
	check(PhaseTotal, 330*time.Millisecond)
	if n, _ := e.phase(t, "list", PhaseTLS); n != 0 {
		t.Errorf("tls samples on plain HTTP: %d", n)
	}
	disjoint(t, e, "list", PhaseDNS, PhaseConnect, PhaseTTFB, PhaseTransfer)
	if got := counter(t, e.reg, "modproxy_upstream_bytes_total", map[string]string{"upstream": e.base, "kind": "list"}); got != 14 {
		t.Errorf("bytes = %v, want 14", got)
	}
	if got := e.requests(t, OutcomeOK); got != 1 {
		t.Errorf("ok requests = %v", got)
	}

	// Second request: the connection is reused, so no dns/connect samples.
	e.dns.set(func(f *fakeDNS) { f.delay = 0 })
	if _, _, err := e.get(t, "/example.org/m/@v/list"); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.phase(t, "list", PhaseDNS); n != 1 {
		t.Errorf("dns samples after a reused request = %d, want 1", n)
	}
	if got := counter(t, e.reg, "modproxy_upstream_connections_total", map[string]string{"upstream": e.base, "reused": "true"}); got != 1 {
		t.Errorf("reused connections = %v, want 1", got)
	}
	if got := counter(t, e.reg, "modproxy_upstream_connections_total", map[string]string{"upstream": e.base, "reused": "false"}); got != 1 {
		t.Errorf("new connections = %v, want 1", got)
	}
}

// disjoint checks that the phases of the one request of kind recorded so
// far add up to no more than its total: a phase that also counted another's
// time (ttfb including the handshake, say) would make them exceed it.
func disjoint(t *testing.T, e *env, kind string, phases ...string) {
	t.Helper()
	_, total := e.phase(t, kind, PhaseTotal)
	var sum float64
	for _, ph := range phases {
		_, d := e.phase(t, kind, ph)
		sum += d
	}
	if sum > total {
		t.Errorf("%s: phases %v add up to %.4fs, more than the total %.4fs", kind, phases, sum, total)
	}
}

func TestPhasesTLS(t *testing.T) {
	for _, mode := range []string{"h1", "h2", "h2-http1only"} {
		t.Run(mode, func(t *testing.T) {
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Proto) })
			srvMode := "h2"
			if mode == "h1" {
				srvMode = "h1"
			}
			var hooked atomic.Int32
			var hookMu sync.Mutex
			var purposes []string
			e := newEnv(t, h, srvMode, func(c *Config) {
				c.HTTP1Only = mode == "h2-http1only"
				c.SocketHook = func(fd uintptr, upstream, purpose string) {
					hooked.Add(1)
					hookMu.Lock()
					purposes = append(purposes, purpose+" "+upstream)
					hookMu.Unlock()
				}
			})
			e.srv.TLS.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
				time.Sleep(120 * time.Millisecond) // slow handshake
				return nil, nil
			}
			_, body, err := e.get(t, "/example.org/m/@v/v1.0.0.mod")
			if err != nil {
				t.Fatal(err)
			}
			wantProto := "HTTP/2.0"
			if mode != "h2" {
				wantProto = "HTTP/1.1"
			}
			if string(body) != wantProto {
				t.Errorf("protocol %q, want %q", body, wantProto)
			}
			n, tlsSum := e.phase(t, "mod", PhaseTLS)
			if n != 1 || tlsSum < 0.120 {
				t.Errorf("tls: count %d sum %.3f, want 1 sample ≥ 120ms", n, tlsSum)
			}
			// The slow handshake belongs to tls, not to ttfb: the phases
			// are disjoint parts of the request (a relation, not a
			// threshold, so a loaded machine does not fail it).
			if n, _ := e.phase(t, "mod", PhaseTTFB); n != 1 {
				t.Errorf("ttfb: count %d, want 1", n)
			}
			disjoint(t, e, "mod", PhaseDNS, PhaseConnect, PhaseTLS, PhaseTTFB, PhaseTransfer)
			if got := counter(t, e.reg, "modproxy_upstream_tls_handshakes_total", map[string]string{"upstream": e.base, "version": "TLS 1.3"}); got != 1 {
				t.Errorf("TLS 1.3 handshakes = %v", got)
			}
			hookMu.Lock()
			defer hookMu.Unlock()
			var up, dnsSock bool
			for _, p := range purposes {
				up = up || p == "upstream "+e.base
				dnsSock = dnsSock || p == "dns "+e.dns.Addr
			}
			if !up || !dnsSock {
				t.Errorf("socket hook calls %q: want upstream and dns sockets", purposes)
			}
		})
	}
}

func TestTLSHandshakeTimeout(t *testing.T) {
	e := newEnv(t, http.NotFoundHandler(), "h1", func(c *Config) { c.TLSTimeout = 100 * time.Millisecond })
	release := make(chan struct{})
	e.srv.TLS.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		select {
		case <-release:
		case <-time.After(hangGuard):
		}
		return nil, nil
	}
	defer close(release)
	_, _, err := e.get(t, "/x/@v/list")
	if err == nil || !strings.Contains(err.Error(), "TLS handshake timeout") {
		t.Fatalf("err = %v, want TLS handshake timeout", err)
	}
	if got := e.requests(t, OutcomeConnectError); got != 1 {
		t.Errorf("connect_error = %v", got)
	}
}

func TestOutcomes(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/404/@v/list"):
			http.NotFound(w, r)
		case strings.HasSuffix(r.URL.Path, "/410/@v/list"):
			w.WriteHeader(http.StatusGone)
		case strings.HasSuffix(r.URL.Path, "/403/@v/list"):
			w.WriteHeader(http.StatusForbidden)
		case strings.HasSuffix(r.URL.Path, "/400/@v/list"):
			w.WriteHeader(http.StatusBadRequest)
		case strings.HasSuffix(r.URL.Path, "/503/@v/list"):
			w.WriteHeader(http.StatusServiceUnavailable)
		case strings.HasSuffix(r.URL.Path, "/reset/@v/list"):
			c, _, _ := w.(http.Hijacker).Hijack()
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		case strings.HasSuffix(r.URL.Path, "/slow/@v/list"):
			select {
			case <-r.Context().Done():
			case <-time.After(hangGuard):
			}
		}
	})
	// Long enough for every prompt answer on a loaded machine; only the
	// slow path, which never answers, waits it out.
	e := newEnv(t, h, "", func(c *Config) { c.FirstByteTimeout = 2 * time.Second })
	for path, want := range map[string]string{
		"404": OutcomeNotFound, "410": OutcomeNotFound, "403": OutcomeForbidden,
		"400": OutcomeClientError, "503": OutcomeServerError, "reset": OutcomeReset, "slow": OutcomeTimeout,
	} {
		before := e.requests(t, want)
		e.get(t, "/example.org/"+path+"/@v/list")
		if got := e.requests(t, want); got != before+1 {
			t.Errorf("%s: %s count %v → %v", path, want, before, got)
		}
	}

	// Connection refused.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	resp, err := e.p.Client().Get("http://upstream.test:" + port + "/x/@v/list")
	if err == nil {
		resp.Body.Close()
		t.Fatal("request to a closed port succeeded")
	}
	if got := counter(t, e.reg, "modproxy_upstream_requests_total", map[string]string{"upstream": "http://upstream.test:" + port, "outcome": OutcomeConnectError}); got != 1 {
		t.Errorf("connect_error = %v", got)
	}

	// NXDOMAIN is a connect error too.
	e.dns.set(func(f *fakeDNS) { f.nx["gone.test."] = true })
	if resp, err := e.p.Client().Get("http://gone.test/x/@v/list"); err == nil {
		resp.Body.Close()
		t.Fatal("request to an unknown host succeeded")
	} else if de := (*net.DNSError)(nil); !errors.As(err, &de) || !de.IsNotFound {
		t.Errorf("err = %v, want a not-found DNSError", err)
	}

	// Cancelled by the caller.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.base+"/example.org/slow/@v/list", nil)
	time.AfterFunc(50*time.Millisecond, cancel)
	if resp, err := e.p.Client().Do(req); err == nil {
		resp.Body.Close()
	}
	if got := e.requests(t, OutcomeCanceled); got != 1 {
		t.Errorf("canceled = %v", got)
	}
}

// A body that stops making progress is aborted once its Read has waited
// IdleBodyTimeout; a body that keeps flowing is not, however long it takes
// in all.
//
// Load can only make a stall longer, so the stalled case is decided by the
// error alone (the server holds the connection open until the client gives
// up, so nothing but the idle timer can end it) plus a lower bound the
// timeout guarantees. The flowing case needs pauses shorter than the
// timeout: they are a twentieth of it, a margin no scheduling delay on a
// loaded machine comes near, and in all the body takes longer than the
// timeout, so a timer over the whole body (not each Read) would fail it.
func TestIdleBodyTimeout(t *testing.T) {
	const (
		idle   = time.Second
		pause  = idle / 20
		chunks = 30 // 30 pauses of 50 ms: 1.5 s, longer than idle
	)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.Contains(r.URL.Path, "stall"):
			w.Header().Set("Content-Length", "100")
			w.Write(make([]byte, 10))
			w.(http.Flusher).Flush()
			select { // stall until the client gives up
			case <-r.Context().Done():
			case <-time.After(hangGuard):
			}
		default: // slow but flowing
			w.Header().Set("Content-Length", strconv.Itoa(10*chunks))
			for range chunks {
				w.Write(make([]byte, 10))
				w.(http.Flusher).Flush()
				time.Sleep(pause)
			}
		}
	})
	e := newEnv(t, h, "", func(c *Config) { c.IdleBodyTimeout = idle })

	start := time.Now()
	_, body, err := e.get(t, "/m/@v/v1.0.0-stall.zip")
	if !errors.Is(err, ErrBodyIdle) {
		t.Fatalf("stalled body: err = %v, want ErrBodyIdle", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("err %v is not a timeout net.Error", err)
	}
	if len(body) != 10 {
		t.Errorf("read %d bytes before the stall, want 10", len(body))
	}
	if el := time.Since(start); el < idle {
		t.Errorf("stalled body aborted after %v, before the %v idle timeout", el, idle)
	}
	if got := e.requests(t, OutcomeTimeout); got != 1 {
		t.Errorf("timeout outcomes = %v", got)
	}
	// The aborted request's transfer phase ran from the first byte to the
	// abort, which came at least idle after the Read it ended had started.
	if n, sum := e.phase(t, "zip", PhaseTransfer); n != 1 || sum < idle.Seconds() {
		t.Errorf("transfer after the stall: count %d sum %.3fs, want 1 and at least %v", n, sum, idle)
	}

	_, body, err = e.get(t, "/m/@v/v1.0.0.zip")
	if err != nil || len(body) != 10*chunks {
		t.Fatalf("slow flowing body: %d bytes, err %v", len(body), err)
	}
	if n, _ := e.phase(t, "zip", PhaseTransfer); n != 2 {
		t.Errorf("transfer after the flowing body: count %d, want 2", n)
	}
	if got := e.requests(t, OutcomeOK); got != 1 {
		t.Errorf("ok outcomes = %v", got)
	}
}

// A consumer that pauses between reads is not the upstream stalling.
func TestIdleBodyTimeoutIgnoresSlowConsumer(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(make([]byte, 64<<10)) })
	e := newEnv(t, h, "", func(c *Config) { c.IdleBodyTimeout = 100 * time.Millisecond })
	resp, err := e.p.Client().Get(e.base + "/m/@v/v1.0.0.zip")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 1024)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if n, err := io.Copy(io.Discard, resp.Body); err != nil || n != 63<<10 {
		t.Fatalf("after a pause: %d bytes, %v", n, err)
	}
}

func TestDialerFallsBackToNextAddress(t *testing.T) {
	e := newEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), "", nil)
	// ::1 first (nothing listens there on this port, or no IPv6 at all), then 127.0.0.1.
	e.dns.set(func(f *fakeDNS) { f.aaaa["upstream.test."] = []string{"::1"} })
	if _, _, err := e.get(t, "/m/@v/list"); err != nil {
		t.Fatal(err)
	}
}

func TestOrderAddrs(t *testing.T) {
	in := addrs("2001:db8::1", "2001:db8::2", "192.0.2.1", "192.0.2.2", "192.0.2.3")
	got := orderAddrs(in, "tcp")
	mustAddrs(t, got, "2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2", "192.0.2.3")
	mustAddrs(t, orderAddrs(in, "tcp4"), "192.0.2.1", "192.0.2.2", "192.0.2.3")
	mustAddrs(t, orderAddrs(addrs("192.0.2.1", "2001:db8::1"), "tcp"), "192.0.2.1", "2001:db8::1")
}

func TestPhaseObserverAndKernelSource(t *testing.T) {
	e := newEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), "", nil)
	var mu sync.Mutex
	seen := map[string]bool{}
	e.p.AddPhaseObserver(func(upstream, kind, phase, source string, d time.Duration) {
		mu.Lock()
		seen[upstream+" "+kind+" "+phase+" "+source] = true
		mu.Unlock()
	})
	if _, _, err := e.get(t, "/m/@v/v1.0.0.info"); err != nil {
		t.Fatal(err)
	}
	e.p.ObservePhase(e.base, "info", PhaseTTFB, SourceKernel, 3*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{"dns userspace", "connect userspace", "ttfb userspace", "transfer userspace", "total userspace", "ttfb kernel"} {
		phase, src, _ := strings.Cut(want, " ")
		if !seen[e.base+" info "+phase+" "+src] {
			t.Errorf("observer missed %s", want)
		}
	}
	if n, _ := histogram(t, e.reg, "modproxy_upstream_phase_seconds", map[string]string{"source": "kernel"}); n != 1 {
		t.Errorf("kernel samples = %d", n)
	}
}
