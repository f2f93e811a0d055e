package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
	"github.com/modproxy/modproxy/sumdb"
)

// newTestVerifier returns a Verifier of db whose state lives in st.
func newTestVerifier(t *testing.T, db *testsumdb.DB, st *cache.Store, edit func(*sumdb.Config)) *sumdb.Verifier {
	t.Helper()
	cfg := sumdb.Config{
		VerifierKey: db.VerifierKey(),
		URL:         db.URL(),
		Timeout:     time.Minute, // a hang guard: no test waits it out
		Client:      &http.Client{Transport: &http.Transport{}},
		Logger:      slog.New(slog.DiscardHandler),
	}
	if edit != nil {
		edit(&cfg)
	}
	v, err := sumdb.New(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cfg.Client.CloseIdleConnections)
	return v
}

// forgeStoredRecord changes the go.mod hash in the stored lookup record of
// path@version, keeping the record well-formed and its tree note signed.
func forgeStoredRecord(t *testing.T, st *cache.Store, db *testsumdb.DB, path, version string) {
	t.Helper()
	key := db.Name() + "/lookup/" + path + "@" + version
	rec, err := st.GetKV(sumdb.BucketVerified, key)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(rec, []byte("/go.mod h1:"))
	if i < 0 {
		t.Fatalf("record without go.mod line:\n%s", rec)
	}
	rec[i+len("/go.mod h1:")] ^= 0x01
	if err := st.PutKV(sumdb.BucketVerified, key, rec); err != nil {
		t.Fatal(err)
	}
}

// With --sumdb-fail-open, a cached record that fails authentication is a
// security error, not "unavailable": a tampered go.mod from the upstream is
// refused, never stored unverified. Without poisoned state, the same
// database outage does fail open (the control).
func TestFailOpenNeverStoresOverPoisonedState(t *testing.T) {
	const path, version = "example.com/hello", "v1.0.0"
	for _, poisoned := range []bool{true, false} {
		name := map[bool]string{true: "poisoned record", false: "control: record missing"}[poisoned]
		t.Run(name, func(t *testing.T) {
			up := newUpstream(t)
			db := testsumdb.New(t, "sum.example.test")
			db.AddModule(path, version, up.GoMod(path, version), up.Zip(path, version))
			e := newEnv(t, up.URL(), func(c *Config) {
				if poisoned {
					v := newTestVerifier(t, db, c.Store.(*cache.Store), nil)
					if _, err := v.VerifyMod(context.Background(), path, version, up.GoMod(path, version)); err != nil {
						t.Fatal(err)
					}
					forgeStoredRecord(t, c.Store.(*cache.Store), db, path, version)
				}
				c.Verifier = newTestVerifier(t, db, c.Store.(*cache.Store), nil) // a restarted proxy
				c.VerifyFailOpen = true
			})
			db.SetDown(true)
			up.SetFaults(testupstream.Fault{Match: func(p string) bool { return strings.HasSuffix(p, ".mod") }, Tamper: true})

			r := e.get("/" + path + "/@v/" + version + ".mod")
			waitFlights(t, e.f)
			_, _, serr := e.store.Get(cache.Key{Path: path, Version: version, Kind: cache.KindMod})
			if !poisoned {
				if r.status != 200 || serr != nil {
					t.Fatalf("control: GET = %d %q, stored err %v; want the fail-open store this test relies on", r.status, r.body, serr)
				}
				return
			}
			if r.status == 200 || !strings.Contains(r.body, "security") {
				t.Fatalf("GET over a poisoned record = %d %q; want an error naming the security problem", r.status, r.body)
			}
			if !errors.Is(serr, cache.ErrNotFound) {
				t.Fatalf("tampered go.mod stored: %v", serr)
			}
		})
	}
}

// A case variant of a private path is private: it goes to the private
// upstream only, never to the public upstream or the checksum database.
func TestPrivateCaseVariantStaysPrivate(t *testing.T) {
	mods := []testupstream.Module{
		{Path: "example.com/Private/foo", Version: "v1.0.0"},
		{Path: "example.com/private/foo", Version: "v1.0.0"},
	}
	public := newUpstream(t, mods...)
	private := newUpstream(t, mods...)
	db := testsumdb.New(t, "sum.example.test")
	const patterns = "example.com/private"
	var v *sumdb.Verifier
	e := newEnv(t, public.URL(), func(c *Config) {
		c.Private = patterns
		c.PrivateUpstreams, _ = ParseUpstreams(private.URL())
		v = newTestVerifier(t, db, c.Store.(*cache.Store), func(sc *sumdb.Config) { sc.Private = patterns })
		c.Verifier = v
	})
	sumSrv := httptest.NewServer(v.Handler())
	t.Cleanup(sumSrv.Close)
	for _, p := range []string{"example.com/!private/foo", "example.com/private/foo"} {
		for _, f := range []string{"@v/list", "@v/v1.0.0.info", "@v/v1.0.0.mod", "@v/v1.0.0.zip", "@latest"} {
			e.mustGet("/"+p+"/"+f, 200)
		}
		resp, err := http.Get(sumSrv.URL + "/sumdb/" + db.Name() + "/lookup/" + p + "@v1.0.0")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		code, body := resp.StatusCode, string(b)
		if code != 404 || !strings.Contains(body, "private") {
			t.Errorf("checksum database lookup of %s through the proxy: %d %q, want 404 private", p, code, body)
		}
	}
	if n := public.Count("rivate"); n != 0 {
		t.Errorf("public upstream got %d requests for private paths: %v", n, public.Requests())
	}
	if n := db.RequestCount(""); n != 0 {
		t.Errorf("checksum database got %d requests: %v", n, db.Requests())
	}
	if n := private.Count("/example.com/!private/foo/"); n == 0 {
		t.Errorf("private upstream never asked for the case variant: %v", private.Requests())
	}
}

// syncLog collects log output for tests.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Artifacts stored unverified under fail-open are verified in the
// background once the database answers again: the good ones stay, a
// tampered one is quarantined (counted, logged at Error) and the next
// request fetches and verifies it anew.
func TestFailOpenArtifactsAreVerifiedInTheBackground(t *testing.T) {
	const path = "example.com/hello"
	up := newUpstream(t)
	db := testsumdb.New(t, "sum.example.test")
	for _, v := range []string{"v1.0.0", "v1.1.0"} {
		db.AddModule(path, v, up.GoMod(path, v), up.Zip(path, v))
	}
	logs := &syncLog{}
	e := newEnv(t, up.URL(), func(c *Config) {
		c.Verifier = newTestVerifier(t, db, c.Store.(*cache.Store), nil)
		c.VerifyFailOpen = true
		c.ReverifyRetry = 20 * time.Millisecond
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	db.SetDown(true)
	up.SetFaults(testupstream.Fault{Match: func(p string) bool { return strings.HasSuffix(p, "v1.1.0.mod") }, Tamper: true})
	for _, p := range []string{"v1.0.0.mod", "v1.0.0.zip", "v1.1.0.mod"} {
		e.mustGet("/"+path+"/@v/"+p, 200) // fail-open
	}
	up.SetFaults()
	// While the database stays down, nothing is quarantined: wait for a
	// pass that saw all three artifacts and paused on the database.
	waitLog(t, logs, "background verification paused\" done=0 left=3")
	tampered := cache.Key{Path: path, Version: "v1.1.0", Kind: cache.KindMod}
	if _, err := e.store.Stat(tampered); err != nil {
		t.Fatalf("quarantined while the database was down: %v", err)
	}
	db.SetDown(false)

	// The pass is over only once it says so: the quarantine, its counter
	// and its Error line come one after another, and the test must not look
	// in between.
	waitLog(t, logs, "background verification pass done")
	if _, err := e.store.Stat(tampered); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("tampered go.mod after the pass: %v, want it quarantined", err)
	}
	for _, kind := range []string{"mod", "zip"} {
		if got := counterValue(t, e.f.m.reverified.WithLabelValues(kind, "ok")); got != 1 {
			t.Errorf("reverified{%s,ok} = %v, want 1", kind, got)
		}
	}
	if got := counterValue(t, e.f.m.reverified.WithLabelValues("mod", "mismatch")); got != 1 {
		t.Errorf("reverified{mod,mismatch} = %v, want 1", got)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "quarantined") {
		t.Errorf("mismatch not logged at Error:\n%s", logs)
	}
	n := 0
	e.store.WalkQuarantine(func(k cache.Key, _ cache.Meta, reason string) error {
		n++
		if k != tampered || !strings.Contains(reason, "checksum mismatch") {
			t.Errorf("quarantined %v: %s", k, reason)
		}
		return nil
	})
	// Nothing left to verify: the next start need not walk the store.
	waitFor(t, "the store to be marked clean of unverified artifacts", func() bool { return markerValue(t, e.store) == gate.MarkerClean })
	if n != 1 {
		t.Errorf("%d quarantined artifacts, want 1", n)
	}
	// The good ones stay, and the tampered one is fetched again, verified.
	for _, k := range []cache.Key{{Path: path, Version: "v1.0.0", Kind: cache.KindMod}, {Path: path, Version: "v1.0.0", Kind: cache.KindZip}} {
		if _, err := e.store.Stat(k); err != nil {
			t.Errorf("%v: %v", k, err)
		}
	}
	r := e.mustGet("/"+path+"/@v/v1.1.0.mod", 200)
	if r.body != string(up.GoMod(path, "v1.1.0")) {
		t.Errorf("refetched go.mod = %q", r.body)
	}
	waitFlights(t, e.f)
	if m, err := e.store.Stat(tampered); err != nil || m.State != cache.StateVerified {
		t.Errorf("refetched go.mod: %+v, %v; want it verified", m, err)
	}
	// A later pass does not verify again what it verified.
	lookups := db.RequestCount("/lookup/")
	okMod, okZip := counterValue(t, e.f.m.reverified.WithLabelValues("mod", "ok")), counterValue(t, e.f.m.reverified.WithLabelValues("zip", "ok"))
	e.f.reverify.notify()
	time.Sleep(100 * time.Millisecond)
	// The sleep may end before the background pass ran; a pass run here
	// surely did.
	if done, err := e.f.reverify.pass(context.Background()); !done || err != nil {
		t.Errorf("a later pass: done %v, err %v; want done", done, err)
	}
	if n := db.RequestCount("/lookup/"); n != lookups {
		t.Errorf("a later pass asked the database %d more times", n-lookups)
	}
	// The verifier may answer from its cache: count the verifications too.
	if m, z := counterValue(t, e.f.m.reverified.WithLabelValues("mod", "ok")), counterValue(t, e.f.m.reverified.WithLabelValues("zip", "ok")); m != okMod || z != okZip {
		t.Errorf("a later pass verified again: mod ok %v -> %v, zip ok %v -> %v", okMod, m, okZip, z)
	}
}

// waitLog waits until logs contain want. The bound is only a hang guard.
func waitLog(t *testing.T, logs *syncLog, want string) {
	t.Helper()
	const hangGuard = 2 * time.Minute
	for deadline := time.Now().Add(hangGuard); !strings.Contains(logs.String(), want); {
		if time.Now().After(deadline) {
			t.Fatalf("no %q logged in %v:\n%s", want, hangGuard, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// blockingVerifier never answers until its context is done.
type blockingVerifier struct{ started chan struct{} }

func (blockingVerifier) Exempt(string) bool { return false }

func (v blockingVerifier) VerifyHash(ctx context.Context, _, _, _, _ string) (string, error) {
	select {
	case v.started <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return "", ctx.Err()
}

// The background verification has an owner: Fetcher.Close stops it even
// while a verification hangs.
func TestBackgroundVerificationStopsOnClose(t *testing.T) {
	up := newUpstream(t)
	v := blockingVerifier{started: make(chan struct{}, 1)}
	e := newEnv(t, up.URL(), func(c *Config) {
		// An artifact stored unverified by an earlier run.
		g, _ := gate.New(gate.Config{Store: c.Store, Verifier: downVerifier{}, FailOpen: true})
		tk, err := g.CheckSmall(context.Background(), cache.Key{Path: "example.com/hello", Version: "v1.0.0", Kind: cache.KindMod}, []byte("module example.com/hello\n"), gate.Origin{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := g.Commit(tk); err != nil {
			t.Fatal(err)
		}
		c.Verifier = v
	})
	select {
	case <-v.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the start-up pass never verified the unverified artifact")
	}
	done := make(chan struct{})
	go func() {
		e.f.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Fetcher.Close did not stop a hanging background verification")
	}
	// Nothing was decided about the artifact: it stays, unverified.
	if m, err := e.store.Stat(cache.Key{Path: "example.com/hello", Version: "v1.0.0", Kind: cache.KindMod}); err != nil || m.State != cache.StateUnverified {
		t.Errorf("artifact after an interrupted verification: %+v, %v", m, err)
	}
}
