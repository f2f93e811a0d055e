package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
	"github.com/modproxy/modproxy/netprobe"
)

// With a single upstream (the default set-up), one tampered module must
// not take the proxy down: its copy is condemned, not the upstream.
func TestMismatchOnOneModuleLeavesOthersServed(t *testing.T) {
	up := newUpstream(t)
	up.SetFaults(testupstream.Fault{Tamper: true, Match: func(p string) bool { return strings.HasPrefix(p, "/example.com/hello/@v/v1.0.0") }})
	zh, err := testsumdb.HashZip(up.Zip("example.com/hello", "v1.0.0"))
	v := &hashVerifier{good: map[string]string{"example.com/hello@v1.0.0.zip": mustHash(t, zh, err)}}
	probe, err := netprobe.New(netprobe.Config{Upstreams: []string{up.URL()}, CircuitMinSamples: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { probe.Close() })
	e := newEnv(t, up.URL(), func(c *Config) {
		c.Verifier, c.Health, c.Client = v, probe.Health(), probe.Client()
	})
	const bad = "/example.com/hello/@v/v1.0.0.zip"
	for i := range 12 {
		r := e.get(bad)
		if r.status != 502 || !strings.Contains(r.body, "checksum") {
			t.Fatalf("tampered zip, try %d: %d %q", i, r.status, r.body)
		}
		e.advance(errorBackoff + errorBackoffJitter) // past the error backoff: the condemnation answers
	}
	if n := up.Count("/example.com/hello/@v/v1.0.0.zip"); n != 1 {
		t.Errorf("tampered copy fetched %d times, want 1 (condemned after the first)", n)
	}
	for _, p := range []string{"/example.com/hello/@v/v1.1.0.zip", "/github.com/!upper/!case/@v/v0.1.0.zip", "/example.com/hello/@v/v1.1.0.info"} {
		if r := e.get(p); r.status != 200 {
			t.Errorf("GET %s after the mismatches = %d %q", p, r.status, r.body)
		}
	}
	if ok, why := probe.Health().Allow(up.URL()); !ok {
		t.Errorf("upstream circuit %q after one tampered module", why)
	}
}

// Upstream errors are remembered for a short backoff only, the same for
// every kind; a not-found answer for the negative TTL.
func TestErrorsNotCachedBeyondBackoff(t *testing.T) {
	paths := map[string]string{
		"info":   "/example.com/hello/@v/v1.0.0.info",
		"mod":    "/example.com/hello/@v/v1.0.0.mod",
		"zip":    "/example.com/hello/@v/v1.0.0.zip",
		"list":   "/example.com/hello/@v/list",
		"latest": "/example.com/hello/@latest",
	}
	for kind, p := range paths {
		t.Run(kind, func(t *testing.T) {
			up := newUpstream(t)
			up.SetFaults(testupstream.Fault{Status: 503})
			e := newEnv(t, up.URL(), func(c *Config) { c.NegativeTTL = 10 * errorBackoff })
			if r := e.get(p); r.status != 502 {
				t.Fatalf("with the upstream failing: %d %q", r.status, r.body)
			}
			up.SetFaults()
			// Within the backoff the error is answered from memory...
			if r := e.get(p); r.status != 502 {
				t.Errorf("within the backoff: %d, want the remembered 502", r.status)
			}
			// ... and after it the recovered upstream is asked again.
			e.advance(errorBackoff + errorBackoffJitter)
			if r := e.get(p); r.status != 200 {
				t.Errorf("after the backoff: %d %q, want 200", r.status, r.body)
			}
		})
	}
	t.Run("not found stays for the negative TTL", func(t *testing.T) {
		up := newUpstream(t)
		e := newEnv(t, up.URL(), func(c *Config) { c.NegativeTTL = 10 * errorBackoff })
		const p = "/example.com/later/@v/v1.0.0.info"
		if r := e.get(p); r.status != 404 {
			t.Fatalf("missing module: %d", r.status)
		}
		if err := up.Add(testupstream.Module{Path: "example.com/later", Version: "v1.0.0"}); err != nil {
			t.Fatal(err)
		}
		e.advance(errorBackoff + errorBackoffJitter)
		if r := e.get(p); r.status != 404 {
			t.Errorf("within the negative TTL: %d, want the remembered 404", r.status)
		}
		e.advance(10 * errorBackoff)
		if r := e.get(p); r.status != 200 {
			t.Errorf("after the negative TTL: %d", r.status)
		}
	})
}

// An upstream 400 or 403 for a path the proxy validated is a refusal of
// that module: 404 with the upstreams' messages, so that a client's
// "GOPROXY=modproxy,next" goes on.
func TestRefusalsAnswerNotFound(t *testing.T) {
	for _, status := range []int{400, 403} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			a, b := newUpstream(t), newUpstream(t)
			a.SetFaults(testupstream.Fault{Status: status})
			b.SetFaults(testupstream.Fault{Status: 404})
			e := newEnv(t, a.URL()+","+b.URL(), nil)
			r := e.get("/example.com/hello/@v/v1.0.0.info")
			if r.status != 404 || !strings.Contains(r.body, fmt.Sprintf("injected %d", status)) || !strings.Contains(r.body, b.URL()) {
				t.Errorf("got %d %q, want 404 with both upstreams' messages", r.status, r.body)
			}
		})
	}
}

// A stored list past its TTL is answered stale at once when the upstream
// does not answer within StaleBudget, with a short max-age; the refresh
// goes on in the background and the next request sees it.
func TestStaleListWithinBudget(t *testing.T) {
	up := newUpstream(t)
	e := newEnv(t, up.URL(), func(c *Config) { c.StaleBudget = 50 * time.Millisecond })
	const p = "/example.com/hello/@v/list"
	e.mustGet(p, 200)
	before, err := e.store.GetEntry("list/example.com/hello")
	if err != nil {
		t.Fatal(err)
	}
	e.advance(2 * time.Minute) // past ListTTL
	// The upstream answers, but only after the budget: a request that
	// waited for it would get the fresh list ("miss"), not the stale one.
	up.SetFaults(testupstream.Fault{Delay: time.Second})
	r := e.get(p)
	if r.status != 200 || r.header.Get(headerCache) != "stale" || r.header.Get("Cache-Control") != staleCache {
		t.Fatalf("slow upstream: %d cache %q cc %q", r.status, r.header.Get(headerCache), r.header.Get("Cache-Control"))
	}
	// The background refresh lands in the store.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if after, err := e.store.GetEntry("list/example.com/hello"); err == nil && after.Fetched.After(before.Fetched) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Error("background refresh never stored a fresh list")
}

// A client that leaves before its answer is logged with status 499.
func TestClientGoneIs499(t *testing.T) {
	up := newUpstream(t)
	up.SetFaults(testupstream.Fault{Delay: 2 * time.Second})
	var logs syncBuf
	e := newEnv(t, up.URL(), func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/example.com/hello/@v/v1.0.0.info", nil)
	if resp, err := e.srv.Client().Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("request did not time out")
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(logs.String(), "status=499") {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "status=499") {
		t.Errorf("log has no status=499:\n%s", logs.String())
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
