package proxy

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// holdingCommit is a Config.beforeCommit seam that, once armed, holds the
// store commit of the first artifact of kind until released.
type holdingCommit struct {
	kind    Kind
	armed   atomic.Bool
	reached chan struct{}
	release chan struct{}
	after   func() // runs when released, before the commit
}

func newHoldingCommit(kind Kind) *holdingCommit {
	h := &holdingCommit{kind: kind, reached: make(chan struct{}), release: make(chan struct{})}
	h.armed.Store(true)
	return h
}

func (h *holdingCommit) beforeCommit(req Request) {
	if req.Kind == h.kind && h.armed.CompareAndSwap(true, false) {
		close(h.reached)
		<-h.release
		if h.after != nil {
			h.after()
		}
	}
}

func bigStreamingModule() testupstream.Module {
	big := make([]byte, 0, 600<<10)
	for i := 0; len(big) < 600<<10; i++ {
		big = fmt.Appendf(big, "// line %d %x\n", i, sha256.Sum256([]byte{byte(i), byte(i >> 8)}))
	}
	return testupstream.Module{Path: "example.com/big", Version: "v1.0.0", Files: map[string]string{"big.go": "package big\n" + string(big)}}
}

// A verified artifact is answered before its store commit: a .mod, a zip
// small enough to be held back (verified before its first byte) and a zip
// streamed as it arrives (its last byte withheld until verified). A
// request arriving during the commit is answered from the same fetch, and
// the commit runs to the end although every client has left.
func TestVerifiedAnswerBeforeCommit(t *testing.T) {
	const hangGuard = 2 * time.Minute
	big := bigStreamingModule()
	cases := []struct {
		name     string
		mod      testupstream.Module
		kind     Kind
		holdBack int64 // Config.HoldBackBytes; 0 is the default
	}{
		{"mod", testupstream.Module{Path: "example.com/hello", Version: "v1.0.0"}, KindMod, 0},
		{"held-back zip", testupstream.Module{Path: "example.com/hello", Version: "v1.0.0"}, KindZip, 0},
		{"streaming zip", big, KindZip, 64 << 10},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var up *testupstream.Server
			var want []byte
			if c.mod.Path == big.Path {
				up = newUpstream(t, big)
			} else {
				up = newUpstream(t)
			}
			ext := ".mod"
			if c.kind == KindZip {
				ext, want = ".zip", up.Zip(c.mod.Path, c.mod.Version)
				if c.holdBack == 0 && int64(len(want)) >= 8<<20 {
					t.Fatalf("zip of %d bytes is not held back", len(want))
				}
			} else {
				want = up.GoMod(c.mod.Path, c.mod.Version)
			}
			hold := newHoldingCommit(c.kind)
			released := false
			defer func() {
				if !released {
					close(hold.release)
				}
			}()
			e := newEnv(t, up.URL(), func(cfg *Config) {
				cfg.HoldBackBytes, cfg.NoPrefetch = c.holdBack, true
				cfg.beforeCommit = hold.beforeCommit
			})
			path := "/" + c.mod.Path + "/@v/" + c.mod.Version + ext
			get := func(what string) {
				t.Helper()
				done := make(chan response, 1)
				go func() { done <- e.get(path) }()
				select {
				case r := <-done:
					if r.status != http.StatusOK || r.body != string(want) {
						t.Fatalf("%s: %d, %d of %d bytes", what, r.status, len(r.body), len(want))
					}
				case <-time.After(hangGuard):
					t.Fatalf("%s waits for the store commit", what)
				}
			}
			get("the client")
			select {
			case <-hold.reached:
			default:
				t.Fatal("answered before the commit was reached: the test holds the wrong step")
			}
			key := cache.Key{Path: c.mod.Path, Version: c.mod.Version, Kind: cache.Kind(c.kind)}
			if _, err := e.store.Stat(key); err == nil {
				t.Fatal("stored before the commit was released: the test holds the wrong step")
			}
			get("a request during the commit")
			if n := up.Count(c.mod.Version + ext); n != 1 {
				t.Errorf("upstream asked %d times during the commit, want 1", n)
			}
			// The clients are gone; the commit must not be cancelled now.
			close(hold.release)
			released = true
			waitFlights(t, e.f)
			if _, err := e.store.Stat(key); err != nil {
				t.Fatalf("verified %s not stored after its clients left: %v", ext, err)
			}
			r := e.mustGet(path, 200)
			if r.header.Get(headerCache) != "hit" {
				t.Errorf("after the commit: cache %q, want hit", r.header.Get(headerCache))
			}
			if n := up.Count(c.mod.Version + ext); n != 1 {
				t.Errorf("upstream asked %d times, want 1", n)
			}
		})
	}
}

// A store that fails the commit of a verified zip (here: closed) does not
// fail the client that already has it, nor refetch it from the upstream:
// the zip is passed through unstored and counted.
func TestVerifiedZipStoreFailure(t *testing.T) {
	mod := bigStreamingModule()
	up := newUpstream(t, mod)
	want := up.Zip(mod.Path, mod.Version)
	m := NewMetrics(prometheus.NewRegistry())
	hold := newHoldingCommit(KindZip)
	e := newEnv(t, up.URL(), func(c *Config) {
		c.HoldBackBytes = 64 << 10
		c.Metrics = m
		c.beforeCommit = hold.beforeCommit
	})
	hold.after = func() {
		if err := e.store.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	}
	resp, err := e.srv.Client().Get(e.srv.URL + "/example.com/big/@v/v1.0.0.zip")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	close(hold.release)
	if err != nil || resp.StatusCode != http.StatusOK || string(got) != string(want) {
		t.Fatalf("status %d, %d of %d bytes, err %v", resp.StatusCode, len(got), len(want), err)
	}
	waitFlights(t, e.f)
	if n := counter(t, m.servedUnstored.WithLabelValues("zip")); n != 1 {
		t.Errorf("served unstored = %v, want 1", n)
	}
	if n := up.Count(".zip"); n != 1 {
		t.Errorf("upstream asked for the zip %d times, want 1 (a store failure is not an upstream failure)", n)
	}
}

// An upstream that stalls after sending a few more bytes than the
// followers were last told of must not hold those bytes back: followers
// are woken per 256 KiB, and a timer announces the rest.
func TestStalledUpstreamBytesReachFollower(t *testing.T) {
	const hangGuard = 2 * time.Minute
	mod := bigStreamingModule()
	up := newUpstream(t, mod)
	zip := up.Zip(mod.Path, mod.Version)
	const holdBack = 64 << 10
	const sent = 110 << 10 // the hold-back, then a short tail, then nothing
	if len(zip) <= sent {
		t.Fatalf("zip of %d bytes is too small for the test", len(zip))
	}
	stallingURL, clientHasByte := pausingZipUpstream(t, up, zip, 100<<10, sent)
	e := newEnv(t, stallingURL, func(c *Config) { c.HoldBackBytes = holdBack })

	got := make(chan error, 1)
	go func() {
		resp, err := e.srv.Client().Get(e.srv.URL + "/example.com/big/@v/v1.0.0.zip")
		if err == nil {
			defer resp.Body.Close()
			buf := make([]byte, sent)
			if _, err = io.ReadFull(resp.Body, buf[:1]); err != nil {
				got <- err
				return
			}
			close(clientHasByte)
			if _, err = io.ReadFull(resp.Body, buf[1:]); err == nil && string(buf) != string(zip[:sent]) {
				err = fmt.Errorf("the %d bytes received differ from the zip's", sent)
			}
		}
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(hangGuard):
		t.Fatalf("the follower did not get the %d bytes the upstream sent before it stalled", sent)
	}
}

// A request with HeaderWantStored (prewarm through a server) is answered
// only once the artifact is stored: while its commit is held, a plain
// request for the same artifact is answered, this one is not; on a full
// disk it gets 507 instead of an unstored answer.
func TestWantStoredAnswersOnlyStored(t *testing.T) {
	const hangGuard = 2 * time.Minute
	for _, c := range []struct {
		name string
		kind Kind
		ext  string
	}{{"mod", KindMod, ".mod"}, {"held-back zip", KindZip, ".zip"}} {
		t.Run(c.name, func(t *testing.T) {
			up := newUpstream(t)
			hold := newHoldingCommit(c.kind)
			e := newEnv(t, up.URL(), func(cfg *Config) { cfg.NoPrefetch, cfg.beforeCommit = true, hold.beforeCommit })
			path := "/example.com/hello/@v/v1.0.0" + c.ext
			key := cache.Key{Path: "example.com/hello", Version: "v1.0.0", Kind: cache.Kind(c.kind)}
			type answer struct {
				status int
				stored bool // at the moment the answer arrived
			}
			done := make(chan answer, 1)
			go func() {
				r := e.get(path, HeaderWantStored, "1")
				_, err := e.store.Stat(key)
				done <- answer{r.status, err == nil}
			}()
			select {
			case <-hold.reached:
			case <-time.After(hangGuard):
				close(hold.release)
				t.Fatal("the commit was never reached")
			}
			// The answer is published: a plain request gets it now.
			if r := e.get(path); r.status != http.StatusOK {
				t.Errorf("plain request during the commit: %d", r.status)
			}
			close(hold.release)
			select {
			case a := <-done:
				if a.status != http.StatusOK || !a.stored {
					t.Errorf("answer %d, stored when answered: %v; want 200 once stored", a.status, a.stored)
				}
			case <-time.After(hangGuard):
				t.Fatal("no answer after the commit")
			}
		})
	}
	t.Run("full disk", func(t *testing.T) {
		up := newUpstream(t)
		disk := &fakeDisk{}
		e := newEnv(t, up.URL(), func(c *Config) { c.NoPrefetch, c.DiskFree, c.MinFreeSpace = true, disk.DiskFree, 1<<20 })
		for _, ext := range []string{".mod", ".zip"} {
			disk.free.Store(0)
			if ext == ".zip" {
				n := int64(len(up.Zip("example.com/hello", "v1.0.0")))
				disk.free.Store(1<<20 + n + n/32) // room for the spool, not for the store
			}
			r := e.get("/example.com/hello/@v/v1.0.0"+ext, HeaderWantStored, "1")
			if r.status != http.StatusInsufficientStorage {
				t.Errorf("%s on a full disk with %s: %d %q, want 507", ext, HeaderWantStored, r.status, r.body)
			}
			kind := cache.KindMod
			if ext == ".zip" {
				kind = cache.KindZip
			}
			if _, err := e.store.Stat(cache.Key{Path: "example.com/hello", Version: "v1.0.0", Kind: kind}); err == nil {
				t.Errorf("%s stored on a full disk", ext)
			}
		}
	})
}

// At most maxZipCommits zip commits run at once, each with a staging
// buffer; the other answered zips wait for a slot, and their clients do
// not wait for any of it.
func TestZipCommitsBounded(t *testing.T) {
	const hangGuard = 2 * time.Minute
	const n = maxZipCommits + 2
	var mods []testupstream.Module
	for i := range n {
		mods = append(mods, testupstream.Module{Path: fmt.Sprintf("example.com/c%d", i), Version: "v1.0.0"})
	}
	up := newUpstream(t, mods...)
	var inside, most atomic.Int32
	entered := make(chan struct{}, n)
	release := make(chan struct{})
	var once sync.Once
	releaseAll := func() { once.Do(func() { close(release) }) }
	defer releaseAll()
	e := newEnv(t, up.URL(), func(c *Config) {
		c.NoPrefetch = true
		c.beforeCommit = func(req Request) {
			if req.Kind != KindZip {
				return
			}
			cur := inside.Add(1)
			for {
				m := most.Load()
				if cur <= m || most.CompareAndSwap(m, cur) {
					break
				}
			}
			entered <- struct{}{}
			<-release
			inside.Add(-1)
		}
	})
	answers := make(chan error, n)
	for _, m := range mods {
		go func() {
			want := up.Zip(m.Path, m.Version)
			r := e.get("/" + m.Path + "/@v/" + m.Version + ".zip")
			if r.status != http.StatusOK || r.body != string(want) {
				answers <- fmt.Errorf("%s: %d, %d of %d bytes", m.Path, r.status, len(r.body), len(want))
				return
			}
			answers <- nil
		}()
	}
	for range n {
		select {
		case err := <-answers:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(hangGuard):
			t.Fatal("a client waits for a zip commit slot")
		}
	}
	for range maxZipCommits {
		<-entered
	}
	// The others are answered and wait for a slot; give them time to
	// (wrongly) take one.
	time.Sleep(200 * time.Millisecond)
	if got := inside.Load(); got != maxZipCommits {
		t.Errorf("%d zip commits run at once, want %d", got, maxZipCommits)
	}
	releaseAll()
	waitFlights(t, e.f)
	if got := most.Load(); got != maxZipCommits {
		t.Errorf("at most %d zip commits ran at once, want %d", got, maxZipCommits)
	}
	for _, m := range mods {
		if _, err := e.store.Stat(cache.Key{Path: m.Path, Version: m.Version, Kind: cache.KindZip}); err != nil {
			t.Errorf("%s not stored: %v", m.Path, err)
		}
	}
}
