package proxy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
	"github.com/modproxy/modproxy/sumdb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// httptest servers' idle keep-alive connections close lazily.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}

var testModules = []testupstream.Module{
	{Path: "example.com/hello", Version: "v1.0.0", Files: map[string]string{"hello.go": "package hello\n"}},
	{Path: "example.com/hello", Version: "v1.1.0", Files: map[string]string{"hello.go": "package hello\n// v1.1\n"}},
	{Path: "github.com/Upper/Case", Version: "v0.1.0", Files: map[string]string{"case.go": "package uppercase\n"}},
}

func newUpstream(t *testing.T, mods ...testupstream.Module) *testupstream.Server {
	t.Helper()
	if len(mods) == 0 {
		mods = testModules
	}
	up, err := testupstream.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	return up
}

type env struct {
	t     *testing.T
	store *cache.Store
	f     *Fetcher
	srv   *httptest.Server
	now   atomic.Pointer[time.Time]
}

// newEnv starts a proxy Server over a fresh store with the given upstream
// list (GOPROXY syntax); cfg adjusts the Config.
func newEnv(t *testing.T, list string, cfg func(*Config)) *env {
	t.Helper()
	e := &env{t: t}
	st, err := cache.Open(filepath.Join(t.TempDir(), "modproxy.db"), cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.store = st
	now := time.Now()
	e.now.Store(&now)
	c := Config{Store: st, ListTTL: time.Minute, Now: func() time.Time { return *e.now.Load() }, SpoolDir: t.TempDir(),
		// The fake upstreams answer in well under a millisecond: without
		// this, the requirements of their go 1.21 go.mod files would not be
		// prefetched after five misses (TestPrefetchPrunedAdapts).
		PrefetchPrunedMinMiss: -1}
	if list != "" {
		ups, err := ParseUpstreams(list)
		if err != nil {
			t.Fatal(err)
		}
		c.Upstreams = ups
	}
	c.Client = &http.Client{Transport: &http.Transport{}}
	if cfg != nil {
		cfg(&c)
	}
	e.f, err = NewFetcher(c)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(NewServer(e.f, ServerOptions{}))
	t.Cleanup(func() {
		e.srv.CloseClientConnections()
		e.srv.Close()
		e.f.Close()
		c.Client.CloseIdleConnections()
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	return e
}

func (e *env) advance(d time.Duration) {
	n := e.now.Load().Add(d)
	e.now.Store(&n)
}

type response struct {
	status int
	body   string
	header http.Header
}

func (e *env) get(path string, hdr ...string) response {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("GET %s: read body: %v", path, err)
	}
	return response{resp.StatusCode, string(b), resp.Header}
}

func (e *env) mustGet(path string, wantStatus int) response {
	e.t.Helper()
	r := e.get(path)
	if r.status != wantStatus {
		e.t.Fatalf("GET %s = %d %q, want %d", path, r.status, r.body, wantStatus)
	}
	return r
}

func TestLazyArtifactsAndHits(t *testing.T) {
	up := newUpstream(t)
	// Without prefetch, which fetches the .mod after an .info miss (see
	// TestPrefetchModAfterInfoMiss); no setting ever fetches a zip unasked.
	e := newEnv(t, up.URL(), func(c *Config) { c.NoPrefetch = true })

	r := e.mustGet("/example.com/hello/@v/v1.0.0.info", 200)
	if !strings.Contains(r.body, `"Version":"v1.0.0"`) || r.header.Get("Content-Type") != "application/json" {
		t.Errorf("info = %q (%s)", r.body, r.header.Get("Content-Type"))
	}
	if up.Count(".zip") != 0 || up.Count(".mod") != 0 {
		t.Errorf(".info miss fetched more than .info: %v", up.Requests())
	}
	e.mustGet("/example.com/hello/@v/v1.0.0.mod", 200)
	if up.Count(".zip") != 0 {
		t.Errorf(".mod miss fetched the zip: %v", up.Requests())
	}
	// Hits never go upstream again.
	waitFlights(t, e.f)
	for range 3 {
		r = e.mustGet("/example.com/hello/@v/v1.0.0.mod", 200)
	}
	if n := up.Count("v1.0.0.mod"); n != 1 {
		t.Errorf("upstream saw %d .mod requests, want 1", n)
	}
	if r.header.Get(headerCache) != "hit" || !strings.Contains(r.header.Get("Cache-Control"), "immutable") || r.header.Get("ETag") == "" {
		t.Errorf("hit headers: %v", r.header)
	}
	// Case-encoded paths.
	r = e.mustGet("/github.com/!upper/!case/@v/v0.1.0.mod", 200)
	if r.body != "module github.com/Upper/Case\n" {
		t.Errorf("mod = %q", r.body)
	}
}

func TestStatusSemantics(t *testing.T) {
	up := newUpstream(t)
	e := newEnv(t, up.URL(), nil)
	tests := []struct {
		path   string
		status int
		body   string
	}{
		{"/example.com/nosuch/@v/list", 404, "not found: "},
		{"/example.com/hello/@v/v9.9.9.info", 404, "not found: "},
		{"/example.com/hello/@v/v2.0.0.mod", 404, "not found: "},
		{"/Bad.Path/@v/list", 400, "invalid"},
		{"/example.com/hello", 400, "invalid request path"},
		{"/example.com/hello/@v/master.zip", 404, "not canonical"},
	}
	for _, tt := range tests {
		r := e.get(tt.path)
		if r.status != tt.status || !strings.HasPrefix(r.body, tt.body) && !strings.Contains(r.body, tt.body) {
			t.Errorf("GET %s = %d %q, want %d containing %q", tt.path, r.status, r.body, tt.status, tt.body)
		}
		if strings.Count(strings.TrimSpace(r.body), "\n") != 0 {
			t.Errorf("GET %s: body is not one line: %q", tt.path, r.body)
		}
	}
	resp, err := http.Post(e.srv.URL+"/example.com/hello/@v/list", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST = %d", resp.StatusCode)
	}
}

func TestUpstreamListSemantics(t *testing.T) {
	const path = "/example.com/hello/@v/v1.0.0.info"
	tests := []struct {
		name      string
		sep       string
		fault     testupstream.Fault
		status    int
		secondHit bool
	}{
		{"comma 404 falls through", ",", testupstream.Fault{Status: 404}, 200, true},
		{"comma 410 falls through", ",", testupstream.Fault{Status: 410}, 200, true},
		{"comma 403 falls through", ",", testupstream.Fault{Status: 403}, 200, true},
		{"comma 500 stops", ",", testupstream.Fault{Status: 500}, 502, false},
		{"comma reset stops", ",", testupstream.Fault{Reset: true}, 502, false},
		{"comma garbage stops", ",", testupstream.Fault{Garbage: true}, 502, false},
		{"pipe 500 falls through", "|", testupstream.Fault{Status: 500}, 200, true},
		{"pipe reset falls through", "|", testupstream.Fault{Reset: true}, 200, true},
		{"pipe garbage falls through", "|", testupstream.Fault{Garbage: true}, 200, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, second := newUpstream(t), newUpstream(t)
			first.SetFaults(tt.fault)
			e := newEnv(t, first.URL()+tt.sep+second.URL(), nil)
			r := e.get(path)
			if r.status != tt.status {
				t.Fatalf("status %d %q, want %d", r.status, r.body, tt.status)
			}
			if got := second.Count("v1.0.0.info") > 0; got != tt.secondHit {
				t.Errorf("second upstream asked = %v, want %v", got, tt.secondHit)
			}
			if tt.status == 200 && r.header.Get(headerUpstream) != second.URL() {
				t.Errorf("%s = %q, want %q", headerUpstream, r.header.Get(headerUpstream), second.URL())
			}
			if tt.status == 502 && !strings.Contains(r.body, first.URL()) {
				t.Errorf("502 body does not name the upstream: %q", r.body)
			}
		})
	}
}

func TestAllNotFoundIs404AndNegativeCached(t *testing.T) {
	a, b := newUpstream(t), newUpstream(t)
	a.SetFaults(testupstream.Fault{Status: 403})
	e := newEnv(t, a.URL()+","+b.URL(), nil)
	for range 3 {
		r := e.get("/example.com/missing/@v/list")
		if r.status != 404 || !strings.HasPrefix(r.body, "not found: ") {
			t.Fatalf("got %d %q", r.status, r.body)
		}
	}
	if n := b.Count("/example.com/missing/"); n != 1 {
		t.Errorf("upstream asked %d times within the negative TTL, want 1", n)
	}
	e.advance(2 * time.Minute)
	e.get("/example.com/missing/@v/list")
	if n := b.Count("/example.com/missing/"); n != 2 {
		t.Errorf("upstream asked %d times after the negative TTL, want 2", n)
	}
}

func TestListFreshStaleAndOffline(t *testing.T) {
	up := newUpstream(t)
	e := newEnv(t, up.URL(), nil)
	r := e.mustGet("/example.com/hello/@v/list", 200)
	if r.body != "v1.0.0\nv1.1.0\n" {
		t.Errorf("list = %q", r.body)
	}
	e.mustGet("/example.com/hello/@v/list", 200)
	if n := up.Count("/@v/list"); n != 1 {
		t.Errorf("fresh list refetched: %d upstream requests", n)
	}
	e.mustGet("/example.com/hello/@latest", 200)

	// Past the TTL with the upstream gone: stale, and it says so.
	up.Close()
	e.advance(2 * time.Minute)
	r = e.mustGet("/example.com/hello/@v/list", 200)
	if r.header.Get(headerCache) != "stale" || r.header.Get("X-Modproxy-Stale") == "" || r.body != "v1.0.0\nv1.1.0\n" {
		t.Errorf("stale list: %q %v", r.body, r.header)
	}
	r = e.mustGet("/example.com/hello/@latest", 200)
	if r.header.Get(headerCache) != "stale" || !strings.Contains(r.body, "v1.1.0") {
		t.Errorf("stale latest: %q %v", r.body, r.header)
	}
}

func TestOfflineSynthesizesFromStore(t *testing.T) {
	up := newUpstream(t)
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "db")
	st, err := cache.Open(dbPath, cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ups, _ := ParseUpstreams(up.URL())
	f, err := NewFetcher(Config{Store: st, Upstreams: ups, Client: &http.Client{Transport: &http.Transport{}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, v := range []string{"v1.0.0", "v1.1.0"} {
		if _, err := f.Small(ctx, Request{Module: "example.com/hello", Kind: KindInfo, Version: v}); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()

	off, err := NewFetcher(Config{Store: st, Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	defer st.Close()
	a, err := off.Mutable(ctx, Request{Module: "example.com/hello", Kind: KindList})
	if err != nil || string(a.Data) != "v1.0.0\nv1.1.0\n" {
		t.Fatalf("offline list = %v, %v", a, err)
	}
	a, err = off.Mutable(ctx, Request{Module: "example.com/hello", Kind: KindLatest})
	if err != nil || !strings.Contains(string(a.Data), "v1.1.0") {
		t.Fatalf("offline latest = %v, %v", a, err)
	}
	_, err = off.Small(ctx, Request{Module: "example.com/hello", Kind: KindMod, Version: "v1.0.0"})
	var herr *HTTPError
	if !errors.As(err, &herr) || herr.Status != 404 || !strings.Contains(herr.Msg, "offline") {
		t.Fatalf("offline miss = %v", err)
	}
	if up.Count("") != 2 {
		t.Errorf("offline fetcher reached the upstream: %v", up.Requests())
	}
}

func TestQueriesPassThroughUnstored(t *testing.T) {
	up := newUpstream(t)
	e := newEnv(t, up.URL(), nil)
	r := e.mustGet("/example.com/hello/@v/master.info", 200)
	if !strings.Contains(r.body, "v1.1.0") || r.header.Get(headerCache) != "bypass" {
		t.Errorf("query: %q %v", r.body, r.header)
	}
	e.mustGet("/example.com/hello/@v/master.info", 200)
	if n := up.Count("master.info"); n != 2 {
		t.Errorf("query answered from store: %d upstream requests", n)
	}
	err := e.store.Walk(func(k cache.Key, m cache.Meta) error {
		return fmt.Errorf("stored %v", k)
	})
	if err != nil {
		t.Error(err)
	}
}

func TestConcurrentMissesShareOneFetch(t *testing.T) {
	up := newUpstream(t)
	up.SetFaults(testupstream.Fault{Delay: 200 * time.Millisecond})
	e := newEnv(t, up.URL(), nil)
	paths := []string{"/example.com/hello/@v/v1.0.0.mod", "/example.com/hello/@v/v1.0.0.zip", "/example.com/hello/@v/list"}
	var wg sync.WaitGroup
	for range 10 {
		for _, p := range paths {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := e.srv.Client().Get(e.srv.URL + p)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Errorf("GET %s = %d", p, resp.StatusCode)
				}
			}()
		}
	}
	wg.Wait()
	for _, p := range paths {
		if n := up.Requests()[p]; n != 1 {
			t.Errorf("%s fetched %d times, want 1", p, n)
		}
	}
}

func TestZipHTTPDetails(t *testing.T) {
	up := newUpstream(t)
	e := newEnv(t, up.URL(), nil)
	const p = "/example.com/hello/@v/v1.0.0.zip"
	want := string(up.Zip("example.com/hello", "v1.0.0"))
	r := e.mustGet(p, 200)
	if r.body != want || r.header.Get("Content-Type") != "application/zip" || r.header.Get(headerCache) != "miss" {
		t.Fatalf("zip miss: %d bytes, headers %v", len(r.body), r.header)
	}
	waitFlights(t, e.f)
	r = e.mustGet(p, 200)
	if r.body != want || r.header.Get(headerCache) != "hit" || r.header.Get("Content-Length") != fmt.Sprint(len(want)) {
		t.Fatalf("zip hit: %d bytes, headers %v", len(r.body), r.header)
	}
	etag := r.header.Get("ETag")
	if r := e.get(p, "Range", "bytes=10-19"); r.status != 206 || r.body != want[10:20] {
		t.Errorf("range: %d %q", r.status, r.body)
	}
	if r := e.get(p, "If-None-Match", etag); r.status != 304 {
		t.Errorf("If-None-Match: %d", r.status)
	}
	if r := e.get(p, "If-Modified-Since", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)); r.status != 304 {
		t.Errorf("If-Modified-Since: %d", r.status)
	}
	req, _ := http.NewRequest(http.MethodHead, e.srv.URL+"/example.com/hello/@v/v1.1.0.zip", nil)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(up.Zip("example.com/hello", "v1.1.0"))) {
		t.Errorf("HEAD of a missing zip: %d, length %d", resp.StatusCode, resp.ContentLength)
	}
}

func TestBadZipsCommitNothing(t *testing.T) {
	tests := []struct {
		name  string
		fault testupstream.Fault
	}{
		{"truncated", testupstream.Fault{Truncate: true}},
		{"garbage", testupstream.Fault{Garbage: true}},
		{"reset", testupstream.Fault{Reset: true}},
		{"server error", testupstream.Fault{Status: 503}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newUpstream(t)
			tt.fault.Match = func(p string) bool { return strings.HasSuffix(p, ".zip") }
			up.SetFaults(tt.fault)
			e := newEnv(t, up.URL(), nil)
			const p = "/example.com/hello/@v/v1.0.0.zip"
			if r := e.get(p); r.status < 500 {
				t.Fatalf("bad zip answered %d", r.status)
			}
			if _, err := e.store.Stat(cache.Key{Path: "example.com/hello", Version: "v1.0.0", Kind: cache.KindZip}); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("bad zip stored: %v", err)
			}
			up.SetFaults()
			// An error is remembered only for a short backoff.
			e.advance(errorBackoff + errorBackoffJitter)
			if r := e.get(p); r.status != 200 || r.body != string(up.Zip("example.com/hello", "v1.0.0")) {
				t.Fatalf("after the fault cleared: %d", r.status)
			}
		})
	}
}

// hashVerifier is a Verifier that knows the good "h1:" hash of each file.
type hashVerifier struct {
	good map[string]string // path@version.kind
}

func (v *hashVerifier) Exempt(path string) bool { return strings.HasPrefix(path, "private.example") }

func (v *hashVerifier) VerifyHash(_ context.Context, kind, path, version, hash string) (string, error) {
	if want, ok := v.good[path+"@"+version+"."+kind]; ok && want != hash {
		return "", &sumdb.MismatchError{Path: path, Version: version, Kind: kind, Want: want, Got: hash}
	}
	return "test record", nil
}

func mustHash(t *testing.T, h string, err error) string {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestChecksumMismatchFallsThroughToGoodCopy(t *testing.T) {
	bad, good := newUpstream(t), newUpstream(t)
	bad.SetFaults(testupstream.Fault{Tamper: true})
	zh, err := testsumdb.HashZip(good.Zip("example.com/hello", "v1.0.0"))
	mh, err2 := testsumdb.HashMod([]byte("module example.com/hello\n"))
	v := &hashVerifier{good: map[string]string{
		"example.com/hello@v1.0.0.zip": mustHash(t, zh, err),
		"example.com/hello@v1.0.0.mod": mustHash(t, mh, err2),
	}}
	for _, sep := range []string{",", "|"} {
		t.Run(sep, func(t *testing.T) {
			e := newEnv(t, bad.URL()+sep+good.URL(), func(c *Config) { c.Verifier = v })
			r := e.mustGet("/example.com/hello/@v/v1.0.0.zip", 200)
			if r.body != string(good.Zip("example.com/hello", "v1.0.0")) || r.header.Get(headerUpstream) != good.URL() {
				t.Fatalf("served %d bytes from %q", len(r.body), r.header.Get(headerUpstream))
			}
			r = e.mustGet("/example.com/hello/@v/v1.0.0.mod", 200)
			if r.body != "module example.com/hello\n" {
				t.Fatalf("mod = %q", r.body)
			}
		})
	}
	t.Run("only bad", func(t *testing.T) {
		e := newEnv(t, bad.URL(), func(c *Config) { c.Verifier = v })
		for _, p := range []string{"/example.com/hello/@v/v1.0.0.zip", "/example.com/hello/@v/v1.0.0.mod"} {
			r := e.get(p)
			if r.status != 502 || !strings.Contains(r.body, "checksum mismatch") || !strings.Contains(r.body, bad.URL()) || !strings.Contains(r.body, "example.com/hello@v1.0.0") {
				t.Errorf("GET %s = %d %q", p, r.status, r.body)
			}
		}
		n := 0
		e.store.Walk(func(cache.Key, cache.Meta) error { n++; return nil })
		if n != 0 {
			t.Errorf("%d artifacts stored after mismatches", n)
		}
	})
}

// downVerifier is a Verifier whose checksum database cannot be reached.
type downVerifier struct{}

func (downVerifier) Exempt(string) bool { return false }
func (downVerifier) VerifyHash(context.Context, string, string, string, string) (string, error) {
	return "", fmt.Errorf("lookup: %w", sumdb.ErrUnavailable)
}

func TestChecksumDatabaseDownFailsClosedUnlessFailOpen(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(fmt.Sprint("failOpen=", failOpen), func(t *testing.T) {
			up := newUpstream(t)
			e := newEnv(t, up.URL(), func(c *Config) { c.Verifier, c.VerifyFailOpen = downVerifier{}, failOpen })
			for _, p := range []string{"/example.com/hello/@v/v1.0.0.mod", "/example.com/hello/@v/v1.0.0.zip"} {
				r := e.get(p)
				if !failOpen {
					if r.status != 502 || !strings.Contains(r.body, "checksum database unavailable") {
						t.Errorf("GET %s = %d %q, want 502 naming the database", p, r.status, r.body)
					}
					continue
				}
				if r.status != 200 {
					t.Errorf("GET %s = %d %q, want 200 (fail-open)", p, r.status, r.body)
				}
			}
			waitFlights(t, e.f)
			n := 0
			e.store.Walk(func(k cache.Key, m cache.Meta) error {
				n++
				if m.State != cache.StateUnverified || m.Proof != "" {
					t.Errorf("%v stored as %q (proof %q), want unverified", k, m.State, m.Proof)
				}
				return nil
			})
			if want := map[bool]int{false: 0, true: 2}[failOpen]; n != want {
				t.Errorf("%d artifacts stored, want %d", n, want)
			}
		})
	}
}

// The client gets the first bytes of a large zip while the upstream is
// still sending it. The upstream sends the first half (far more than the
// hold-back), then holds the rest until the client has its first byte: a
// proxy that waited for the whole download would never answer, and the
// hang guard would fail the test. Ordering decides, not timing.
func TestLargeZipStreamsBeforeDownloadEnds(t *testing.T) {
	const hangGuard = 2 * time.Minute
	mod := bigStreamingModule()
	up := newUpstream(t, mod)
	zip := up.Zip(mod.Path, mod.Version)
	const holdBack = 64 << 10
	half := len(zip) / 2
	if half < 2*holdBack {
		t.Fatalf("zip of %d bytes: its first half does not get past the %d-byte hold-back", len(zip), holdBack)
	}
	gatedURL, clientHasByte := pausingZipUpstream(t, up, zip, half, len(zip))
	e := newEnv(t, gatedURL, func(c *Config) { c.HoldBackBytes = holdBack })

	type first struct {
		resp *http.Response
		err  error
	}
	got := make(chan first, 1)
	go func() {
		resp, err := e.srv.Client().Get(e.srv.URL + "/example.com/big/@v/v1.0.0.zip")
		if err == nil {
			_, err = io.ReadFull(resp.Body, make([]byte, 1))
		}
		got <- first{resp, err}
	}()
	var resp *http.Response
	select {
	case f := <-got:
		if f.resp != nil {
			defer f.resp.Body.Close()
		}
		if f.err != nil {
			t.Fatal(f.err)
		}
		resp = f.resp
	case <-time.After(hangGuard):
		t.Fatalf("no first byte in %v while the upstream held back the second half: the client waited for the whole download", hangGuard)
	}
	close(clientHasByte)
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if len(body)+1 != len(zip) {
		t.Fatalf("got %d bytes, want %d", len(body)+1, len(zip))
	}
	waitFlights(t, e.f)
	if _, err := e.store.Stat(cache.Key{Path: mod.Path, Version: mod.Version, Kind: cache.KindZip}); err != nil {
		t.Errorf("streamed zip not stored: %v", err)
	}
}

func mustParseURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestStreamedBadZipAbortsClient(t *testing.T) {
	// Incompressible content, so that the half the upstream sends before
	// resetting is far past the 1 KiB hold-back: streaming has begun.
	var big []byte
	for i := 0; len(big) < 200<<10; i++ {
		big = fmt.Appendf(big, "// %x\n", sha256.Sum256([]byte{byte(i), byte(i >> 8)}))
	}
	mod := testupstream.Module{Path: "example.com/big", Version: "v1.0.0", Files: map[string]string{"big.go": "package big\n" + string(big)}}
	up := newUpstream(t, mod)
	// Half the zip, a pause in which the client gets those bytes, a reset.
	up.SetFaults(testupstream.Fault{Truncate: true, SlowBody: 200 * time.Millisecond, Match: func(p string) bool { return strings.HasSuffix(p, ".zip") }})
	e := newEnv(t, up.URL(), func(c *Config) { c.HoldBackBytes = 1 << 10 })
	resp, err := e.srv.Client().Get(e.srv.URL + "/example.com/big/@v/v1.0.0.zip")
	if err != nil {
		t.Fatalf("no response: %v (the zip should have been streaming)", err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 || n == 0 {
		t.Fatalf("status %d with %d bytes: the zip never streamed", resp.StatusCode, n)
	}
	if err == nil {
		t.Fatal("client got a clean end of a truncated zip")
	}
	if _, err := e.store.Stat(cache.Key{Path: mod.Path, Version: mod.Version, Kind: cache.KindZip}); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("truncated zip stored: %v", err)
	}
}

func TestPrivateModulesUsePrivateUpstreamsOnly(t *testing.T) {
	public := newUpstream(t)
	private := newUpstream(t, testupstream.Module{Path: "private.example/secret", Version: "v1.0.0"})
	e := newEnv(t, public.URL(), func(c *Config) {
		c.Private = "private.example"
		c.PrivateUpstreams, _ = ParseUpstreams(private.URL())
	})
	e.mustGet("/private.example/secret/@v/v1.0.0.mod", 200)
	e.mustGet("/private.example/secret/@v/v1.0.0.zip", 200)
	e.mustGet("/private.example/secret/@v/list", 200)
	e.mustGet("/private.example/other/@v/list", 404)
	if n := public.Count("private.example"); n != 0 {
		t.Errorf("public upstream saw %d private requests", n)
	}
	e2 := newEnv(t, public.URL(), func(c *Config) { c.Private = "private.example" })
	r := e2.mustGet("/private.example/secret/@v/v1.0.0.info", 404)
	if !strings.Contains(r.body, "private") {
		t.Errorf("body %q", r.body)
	}
	if n := public.Count("private.example"); n != 0 {
		t.Errorf("public upstream saw %d private requests", n)
	}
}

func TestPanicIsGeneric500(t *testing.T) {
	up := newUpstream(t)
	e := newEnv(t, up.URL(), nil)
	srv := httptest.NewServer(NewServer(e.f, ServerOptions{Extra: map[string]http.Handler{
		"/boom": http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("secret detail") }),
	}}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/boom")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 500 || strings.Contains(string(b), "secret") {
		t.Errorf("panic answered %d %q", resp.StatusCode, b)
	}
}

func TestHealthAndReady(t *testing.T) {
	up := newUpstream(t)
	e := newEnv(t, up.URL(), nil)
	e.mustGet("/healthz", 200)
	e.mustGet("/readyz", 200)
}

func TestCleanList(t *testing.T) {
	tests := []struct {
		in, want string
		bad      bool
	}{
		{in: "", want: ""},
		{in: "v1.0.0\nv1.1.0\n", want: "v1.0.0\nv1.1.0\n"},
		{in: "v1.0.0 2024-01-02T03:04:05Z\n\n  v1.1.0-rc.1\r\n", want: "v1.0.0\nv1.1.0-rc.1\n"},
		{in: "v1.0.0\nnot-a-version\nv2.0.0+incompatible\n", want: "v1.0.0\nv2.0.0+incompatible\n"},
		{in: "<html>\n<body>oops</body>\n</html>\n", bad: true},
	}
	for _, tt := range tests {
		got, err := cleanList([]byte(tt.in))
		if tt.bad {
			if err == nil {
				t.Errorf("cleanList(%q) = %q, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || string(got) != tt.want {
			t.Errorf("cleanList(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// A missing --spool-dir is created; one that cannot hold spool files is
// refused at start, not discovered by every zip miss answering 502.
func TestSpoolDirPrepared(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	readOnly := filepath.Join(base, "read-only")
	if err := os.Mkdir(readOnly, 0o500); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, dir string
		wantErr   bool
	}{
		{"missing, created", filepath.Join(base, "new", "spool"), false},
		{"existing", base, false},
		{"a regular file", file, true},
		{"below a regular file", filepath.Join(file, "spool"), true},
		{"read-only", readOnly, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.dir == readOnly && os.Geteuid() == 0 {
				t.Skip("root writes to a read-only directory")
			}
			st, err := cache.Open(filepath.Join(t.TempDir(), "db"), cache.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			f, err := NewFetcher(Config{Store: st, Offline: true, SpoolDir: tc.dir})
			if tc.wantErr {
				if err == nil {
					f.Close()
					t.Fatalf("NewFetcher with spool dir %s: no error", tc.dir)
				}
				if !strings.Contains(err.Error(), "spool directory") {
					t.Errorf("error %q does not name the spool directory", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
			entries, err := os.ReadDir(tc.dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), spoolPrefix) {
					t.Errorf("probe left behind: %s", e.Name())
				}
			}
		})
	}
}

// pausingZipUpstream serves up's files, but a zip (zip, with its length)
// in two parts: zip[:cut], then, once resume is closed, zip[cut:end]. With
// end short of the zip, it then stalls until the test ends.
func pausingZipUpstream(t *testing.T, up *testupstream.Server, zip []byte, cut, end int) (url string, resume chan struct{}) {
	t.Helper()
	resume = make(chan struct{})
	testDone := make(chan struct{})
	rest := httputil.NewSingleHostReverseProxy(mustParseURL(t, up.URL()))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, ".zip") {
			rest.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(zip)))
		w.Write(zip[:cut])
		w.(http.Flusher).Flush()
		select { // the next part comes in a read of its own
		case <-resume:
		case <-testDone:
			return
		case <-r.Context().Done():
			return
		}
		w.Write(zip[cut:end])
		w.(http.Flusher).Flush()
		if end < len(zip) {
			select { // stall until the test ends
			case <-testDone:
			case <-r.Context().Done():
			}
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(testDone) }) // before srv.Close: a held handler returns
	return srv.URL, resume
}

// waitFlights waits until f has no zip download or metadata fetch in
// flight: a client is answered once the artifact is verified, before the
// store commit ends.
func waitFlights(t *testing.T, f *Fetcher) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second) // hang guard only
	for {
		f.zipMu.Lock()
		n := len(f.zipFlights)
		f.zipMu.Unlock()
		f.metaMu.Lock()
		m := len(f.metaFlights)
		f.metaMu.Unlock()
		if n+m == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d zip downloads and %d metadata fetches still in flight", n, m)
		}
		time.Sleep(time.Millisecond)
	}
}
