package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
	"github.com/modproxy/modproxy/sumdb"
)

// eventLog records what fake servers saw, in order.
type eventLog struct {
	mu      sync.Mutex
	list    []string
	changed chan struct{}
}

func newEventLog() *eventLog { return &eventLog{changed: make(chan struct{})} }

func (l *eventLog) add(ev string) {
	l.mu.Lock()
	l.list = append(l.list, ev)
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// index returns the position of the first event with prefix, or -1.
func (l *eventLog) index(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.IndexFunc(l.list, func(s string) bool { return strings.HasPrefix(s, prefix) })
}

func (l *eventLog) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.list {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}

func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.list, "\n")
}

// waitFor waits until n events with prefix are recorded or ctx ends.
func (l *eventLog) waitFor(ctx context.Context, prefix string, n int) bool {
	for {
		l.mu.Lock()
		ch := l.changed
		l.mu.Unlock()
		if l.count(prefix) >= n {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// recordingFront serves what backend serves, recording "<name> start
// <path>" when a request arrives and "<name> answer <path>" just before it
// is answered; hold, when set, runs between the two.
func recordingFront(t *testing.T, name, backend string, log *eventLog, hold func(r *http.Request)) *httptest.Server {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.add(name + " start " + r.URL.Path)
		if hold != nil {
			hold(r)
		}
		req, err := http.NewRequestWithContext(r.Context(), r.Method, backend+r.URL.Path, nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		log.add(name + " answer " + r.URL.Path)
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		w.Write(body)
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		client.CloseIdleConnections()
	})
	return srv
}

// The checksum-database lookup of a module version starts while its
// artifact is still being fetched, not after it: the upstream holds the
// artifact's answer until the database has received the lookup (or 10 s
// have passed), and the lookup must be seen to start before the artifact
// is answered. One lookup then serves both the go.mod and the zip.
func TestLookupOverlapsArtifactFetch(t *testing.T) {
	const path, version = "example.com/hello", "v1.0.0"
	for _, kind := range []string{"mod", "zip"} {
		t.Run(kind, func(t *testing.T) {
			up := newUpstream(t)
			db := testsumdb.New(t, "sum.example.test")
			db.AddModule(path, version, up.GoMod(path, version), up.Zip(path, version))
			log := newEventLog()
			dbFront := recordingFront(t, "db", db.URL(), log, nil)
			artifact := "/" + path + "/@v/" + version + "." + kind
			upFront := recordingFront(t, "up", up.URL(), log, func(r *http.Request) {
				if r.URL.Path != artifact {
					return
				}
				ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
				defer cancel()
				log.waitFor(ctx, "db start /lookup/", 1)
			})
			e := newEnv(t, upFront.URL, func(c *Config) {
				c.Verifier = newTestVerifier(t, db, c.Store.(*cache.Store), func(sc *sumdb.Config) { sc.URL = dbFront.URL })
				c.NoPrefetch = true
			})
			e.mustGet(artifact, 200)
			lookup, answer := log.index("db start /lookup/"), log.index("up answer "+artifact)
			if lookup < 0 || answer < 0 || lookup > answer {
				t.Fatalf("the lookup did not start before the %s was answered; events:\n%s", kind, log)
			}
			other := map[string]string{"mod": "zip", "zip": "mod"}[kind]
			e.mustGet("/"+path+"/@v/"+version+"."+other, 200)
			if n := db.LookupCount(path); n != 1 {
				t.Errorf("the database got %d lookups of %s for its go.mod and zip, want 1: %v", n, path, db.Requests())
			}
		})
	}
}

// Concurrent lookups of many module versions share the tiles they need:
// each tile is fetched once.
func TestConcurrentLookupsShareTiles(t *testing.T) {
	var mods []testupstream.Module
	for i := range 40 {
		mods = append(mods, testupstream.Module{Path: fmt.Sprintf("example.com/m%02d", i), Version: "v1.0.0"})
	}
	up := newUpstream(t, mods...)
	db := testsumdb.New(t, "sum.example.test")
	for _, m := range mods {
		db.AddModule(m.Path, m.Version, up.GoMod(m.Path, m.Version), up.Zip(m.Path, m.Version))
	}
	e := newEnv(t, up.URL(), func(c *Config) {
		c.Verifier = newTestVerifier(t, db, c.Store.(*cache.Store), nil)
		c.NoPrefetch = true
	})
	var wg sync.WaitGroup
	for _, m := range mods {
		wg.Go(func() { e.mustGet("/"+m.Path+"/@v/"+m.Version+".mod", 200) })
	}
	wg.Wait()
	for p, n := range db.Requests() {
		if strings.HasPrefix(p, "/tile/") && n != 1 {
			t.Errorf("tile %s fetched %d times, want once", p, n)
		}
	}
	if db.RequestCount("/tile/") == 0 {
		t.Fatalf("no tile fetched at all; requests: %v", db.Requests())
	}
}

// prefetchEnv is a proxy whose Fetcher signals every finished prefetch
// trigger on done.
func prefetchEnv(t *testing.T, list string, cfg func(*Config)) (*env, chan struct{}) {
	t.Helper()
	e := newEnv(t, list, cfg)
	done := make(chan struct{}, 100)
	e.f.pf.triggerHook = func() { done <- struct{}{} }
	return e, done
}

func waitTrigger(t *testing.T, done chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("prefetch did not finish within 10s")
	}
}

func prefetchCount(e *env, kind, result string) int {
	return int(counter(e.t, e.f.m.prefetch.WithLabelValues(kind, result)))
}

// After an .info miss the version's .mod is fetched, with its lookup; the
// go command's .mod request that follows is a hit and counts as used.
func TestPrefetchModAfterInfoMiss(t *testing.T) {
	const path, version = "example.com/hello", "v1.0.0"
	up := newUpstream(t)
	db := testsumdb.New(t, "sum.example.test")
	db.AddModule(path, version, up.GoMod(path, version), up.Zip(path, version))
	e, done := prefetchEnv(t, up.URL(), func(c *Config) { c.Verifier = newTestVerifier(t, db, c.Store.(*cache.Store), nil) })
	e.mustGet("/"+path+"/@v/"+version+".info", 200)
	waitTrigger(t, done)
	if n := up.Count("/" + path + "/@v/" + version + ".mod"); n != 1 {
		t.Fatalf("upstream got %d .mod requests after the .info miss, want 1 (the prefetch)", n)
	}
	if n := db.LookupCount(path); n != 1 {
		t.Fatalf("database got %d lookups, want 1 (with the prefetch)", n)
	}
	waitFlights(t, e.f)
	r := e.mustGet("/"+path+"/@v/"+version+".mod", 200)
	if c := r.header.Get(headerCache); c != "hit" {
		t.Errorf(".mod after the prefetch: cache %q, want hit", c)
	}
	if n := up.Count(".mod"); n != 1 {
		t.Errorf("upstream got %d .mod requests, want 1", n)
	}
	if got := prefetchCount(e, prefetchMod, prefetchUsed); got != 1 {
		t.Errorf("prefetch{mod,used} = %d, want 1", got)
	}
	if n := up.Count(".zip"); n != 0 {
		t.Errorf("a zip was fetched (%d requests): prefetch must never fetch zips", n)
	}
}

// requiringModule returns a module requiring each of deps at v1.0.0.
func requiringModule(path string, deps []testupstream.Module) testupstream.Module {
	var b strings.Builder
	fmt.Fprintf(&b, "module %s\n\ngo 1.21\n\nrequire (\n", path)
	for _, d := range deps {
		fmt.Fprintf(&b, "\t%s %s\n", d.Path, d.Version)
	}
	b.WriteString(")\n")
	return testupstream.Module{Path: path, Version: "v1.0.0", Files: map[string]string{"go.mod": b.String(), "a.go": "package a\n"}}
}

func depModules(prefix string, n int) []testupstream.Module {
	var deps []testupstream.Module
	for i := range n {
		deps = append(deps, testupstream.Module{Path: fmt.Sprintf("%s/d%02d", prefix, i), Version: "v1.0.0"})
	}
	return deps
}

// A served go.mod prefetches the .mod of what it requires, one level deep,
// within the per-request count and the concurrency budget, and never a zip;
// the requirements beyond the count are counted as dropped.
func TestPrefetchRequiresBounded(t *testing.T) {
	deps := depModules("example.com/dep", 10)
	// d00 requires more modules: one level deep means they are not fetched.
	deps[0] = requiringModule(deps[0].Path, depModules("example.com/deeper", 3))
	root := requiringModule("example.com/root", deps)
	up := newUpstream(t, append(append(deps, root), depModules("example.com/deeper", 3)...)...)
	var inflight, peak atomic.Int32
	log := newEventLog()
	front := recordingFront(t, "up", up.URL(), log, func(r *http.Request) {
		n := inflight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond) // let concurrent prefetches overlap
		inflight.Add(-1)
	})
	e, done := prefetchEnv(t, front.URL, func(c *Config) {
		c.PrefetchPerRequest = 4
		c.PrefetchConcurrency = 2
	})
	e.mustGet("/example.com/root/@v/v1.0.0.mod", 200)
	waitTrigger(t, done)
	if n := log.count("up start /example.com/dep/"); n != 4 {
		t.Errorf("prefetched %d required .mod files, want 4 (the per-request budget); events:\n%s", n, log)
	}
	if p := peak.Load(); p > 2 {
		t.Errorf("%d prefetches in flight at once, want at most 2", p)
	}
	if n := log.count("up start /example.com/deeper/"); n != 0 {
		t.Errorf("prefetch went two levels deep: %d requests for example.com/deeper", n)
	}
	if got := prefetchCount(e, prefetchRequire, prefetchDropped); got != 6 {
		t.Errorf("prefetch{require,dropped} = %d, want 6", got)
	}
	if n := up.Count(".zip"); n != 0 {
		t.Errorf("a zip was fetched (%d requests): prefetch must never fetch zips", n)
	}
	// The go command now asks for d00: used, and its own requirements are
	// prefetched in turn (it is served to a client for the first time).
	e.mustGet("/"+deps[0].Path+"/@v/v1.0.0.mod", 200)
	waitTrigger(t, done)
	if got := prefetchCount(e, prefetchRequire, prefetchUsed); got != 1 {
		t.Errorf("prefetch{require,used} = %d, want 1", got)
	}
	if n := log.count("up start /example.com/deeper/"); n != 3 {
		t.Errorf("after the client asked for d00, %d of its 3 requirements were prefetched", n)
	}
	// Nobody asks for the rest: wasted when the Fetcher closes.
	e.f.Close()
	if got := prefetchCount(e, prefetchRequire, prefetchWasted); got != 3+3 {
		t.Errorf("prefetch{require,wasted} = %d, want 6 (d01-d03 and the three deeper ones)", got)
	}
}

// The per-request budget counts prefetches started: requirements already
// stored do not use it up, and are not counted as dropped.
func TestPrefetchBudgetSkipsStored(t *testing.T) {
	deps := depModules("example.com/dep", 10)
	root := requiringModule("example.com/root", deps)
	up := newUpstream(t, append(deps, root)...)
	log := newEventLog()
	front := recordingFront(t, "up", up.URL(), log, nil)
	e, done := prefetchEnv(t, front.URL, func(c *Config) { c.PrefetchPerRequest = 4 })
	for _, d := range deps[:4] {
		e.mustGet("/"+d.Path+"/@v/v1.0.0.mod", 200)
	}
	e.mustGet("/example.com/root/@v/v1.0.0.mod", 200)
	waitTrigger(t, done)
	for _, d := range deps[4:8] {
		if n := log.count("up start /" + d.Path + "/"); n != 1 {
			t.Errorf("%s fetched %d times, want 1 (prefetched: the first four requirements were stored)", d.Path, n)
		}
	}
	for _, d := range deps[8:] {
		if n := log.count("up start /" + d.Path + "/"); n != 0 {
			t.Errorf("%s fetched %d times: over the budget of 4", d.Path, n)
		}
	}
	if got := prefetchCount(e, prefetchRequire, prefetchDropped); got != 2 {
		t.Errorf("prefetch{require,dropped} = %d, want 2 (d08, d09; the stored ones are not dropped)", got)
	}
}

// Prefetches in flight are cancelled when the Fetcher closes; those that
// could not start within the window are dropped.
func TestPrefetchCancelled(t *testing.T) {
	deps := depModules("example.com/dep", 3)
	root := requiringModule("example.com/root", deps)
	up := newUpstream(t, append(deps, root)...)
	log := newEventLog()
	front := recordingFront(t, "up", up.URL(), log, func(r *http.Request) {
		if strings.Contains(r.URL.Path, "/dep/") {
			<-r.Context().Done() // hangs until the client gives up
			log.add("cancelled " + r.URL.Path)
		}
	})
	e, done := prefetchEnv(t, front.URL, func(c *Config) {
		c.PrefetchConcurrency = 1
		c.PrefetchWindow = 200 * time.Millisecond
	})
	e.mustGet("/example.com/root/@v/v1.0.0.mod", 200)
	waitTrigger(t, done) // the window ended with d00 hanging
	if got := prefetchCount(e, prefetchRequire, prefetchDropped); got != 2 {
		t.Errorf("prefetch{require,dropped} = %d, want 2 (waiting for the one slot when the window ended); events:\n%s", got, log)
	}
	closed := make(chan struct{})
	go func() { e.f.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Fetcher.Close did not return with a prefetch hanging")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !log.waitFor(ctx, "cancelled /example.com/dep/d00/", 1) {
		t.Fatalf("the hanging prefetch was never cancelled; events:\n%s", log)
	}
	if n := log.count("up start /example.com/dep/"); n != 1 {
		t.Errorf("%d prefetches started, want 1", n)
	}
}

// Prefetch keeps private paths private: a private requirement is fetched
// from the private upstream only and never looked up in the checksum
// database; the public one goes to the public upstream and is looked up.
func TestPrefetchRespectsPrivatePaths(t *testing.T) {
	pub := testupstream.Module{Path: "example.com/pub", Version: "v1.0.0"}
	priv := testupstream.Module{Path: "corp.example/secret", Version: "v1.0.0"}
	root := requiringModule("example.com/root", []testupstream.Module{pub, priv})
	public := newUpstream(t, root, pub, priv)
	private := newUpstream(t, priv)
	db := testsumdb.New(t, "sum.example.test")
	for _, m := range []testupstream.Module{root, pub} {
		db.AddModule(m.Path, m.Version, public.GoMod(m.Path, m.Version), public.Zip(m.Path, m.Version))
	}
	e, done := prefetchEnv(t, public.URL(), func(c *Config) {
		c.Private = "corp.example"
		c.PrivateUpstreams, _ = ParseUpstreams(private.URL())
		c.Verifier = newTestVerifier(t, db, c.Store.(*cache.Store), func(sc *sumdb.Config) { sc.Private = "corp.example" })
	})
	e.mustGet("/example.com/root/@v/v1.0.0.mod", 200)
	waitTrigger(t, done)
	if n := private.Count("/corp.example/secret/@v/v1.0.0.mod"); n != 1 {
		t.Errorf("private upstream got %d prefetches of the private .mod, want 1", n)
	}
	if n := public.Count("corp.example"); n != 0 {
		t.Errorf("public upstream got %d requests for the private path", n)
	}
	if n := db.RequestCount("/lookup/corp.example"); n != 0 {
		t.Errorf("checksum database got %d lookups of the private path", n)
	}
	if n := public.Count("/example.com/pub/@v/v1.0.0.mod"); n != 1 {
		t.Errorf("public requirement prefetched %d times, want 1", n)
	}
	if n := db.LookupCount("example.com/pub"); n != 1 {
		t.Errorf("public requirement looked up %d times, want 1", n)
	}
}

// Hostile go.mod files: garbage, non-canonical versions, bad paths and
// duplicates prefetch nothing they should not.
func TestRequiredMods(t *testing.T) {
	tests := []struct {
		name, gomod string
		want        []string
	}{
		{"garbage", "<html>not a go.mod</html>", nil},
		{"empty", "", nil},
		{"canonical", "module a\nrequire (\n\tb.example/x v1.2.3\n\tc.example/y v0.0.0-20240102030405-abcdefabcdef // indirect\n)\n", []string{"b.example/x@v1.2.3", "c.example/y@v0.0.0-20240102030405-abcdefabcdef"}},
		{"non-canonical", "module a\nrequire b.example/x v1.2\n", nil},
		{"bad path", "module a\nrequire ../../etc v1.0.0\n", nil},
		{"duplicate", "module a\nrequire b.example/x v1.0.0\nrequire b.example/x v1.0.0\n", []string{"b.example/x@v1.0.0"}},
		{"incompatible", "module a\nrequire b.example/x v2.0.0+incompatible\n", []string{"b.example/x@v2.0.0+incompatible"}},
		{"pruned", "module a\n\ngo 1.21\n\nrequire b.example/x v1.0.0\n", []string{"b.example/x@v1.0.0"}},
		{"unpruned", "module a\n\ngo 1.16\n\nrequire b.example/x v1.0.0\n", []string{"b.example/x@v1.0.0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			reqs, pruned := requiredMods([]byte(tt.gomod))
			if want := strings.Contains(tt.gomod, "go 1.21"); pruned != want {
				t.Errorf("pruned = %v, want %v", pruned, want)
			}
			for _, r := range reqs {
				if r.Kind != KindMod {
					t.Errorf("%s: kind %s, want mod", r, r.Kind)
				}
				got = append(got, r.Module+"@"+r.Version)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("requiredMods = %v, want %v", got, tt.want)
			}
		})
	}
}

// A version the module policy denies is never prefetched.
func TestPrefetchFilterDenies(t *testing.T) {
	deps := depModules("example.com/dep", 3)
	root := requiringModule("example.com/root", deps)
	up := newUpstream(t, append(deps, root)...)
	e, done := prefetchEnv(t, up.URL(), nil)
	e.f.SetPrefetchFilter(func(path, version string) bool { return path != deps[1].Path })
	e.mustGet("/example.com/root/@v/v1.0.0.mod", 200)
	waitTrigger(t, done)
	if n := up.Count("/" + deps[1].Path + "/"); n != 0 {
		t.Errorf("denied module prefetched (%d requests)", n)
	}
	for _, d := range []testupstream.Module{deps[0], deps[2]} {
		if n := up.Count("/" + d.Path + "/@v/v1.0.0.mod"); n != 1 {
			t.Errorf("%s prefetched %d times, want 1", d.Path, n)
		}
	}
	if got := prefetchCount(e, prefetchRequire, prefetchDropped); got != 1 {
		t.Errorf("prefetch{require,dropped} = %d, want 1 (the denied one)", got)
	}
}

// The bytes a served go.mod may prefetch are bounded: with one slot and a
// 1-byte budget, the first .mod uses it up and the rest are dropped.
func TestPrefetchBytesBudget(t *testing.T) {
	deps := depModules("example.com/dep", 3)
	root := requiringModule("example.com/root", deps)
	up := newUpstream(t, append(deps, root)...)
	e, done := prefetchEnv(t, up.URL(), func(c *Config) {
		c.PrefetchConcurrency = 1
		c.PrefetchBytes = 1
	})
	e.mustGet("/example.com/root/@v/v1.0.0.mod", 200)
	waitTrigger(t, done)
	if n := up.Count("/example.com/dep/"); n != 1 {
		t.Errorf("%d .mod files prefetched, want 1 (the byte budget)", n)
	}
	if got := prefetchCount(e, prefetchRequire, prefetchDropped); got != 2 {
		t.Errorf("prefetch{require,dropped} = %d, want 2", got)
	}
}

// With PrefetchInfo, a .mod served for the first time prefetches its
// version's .info, and the go command's .info request that follows is a
// hit counted as used; without it, no .info is fetched unasked.
func TestPrefetchInfoAfterMod(t *testing.T) {
	const path, version = "example.com/hello", "v1.0.0"
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprint("PrefetchInfo=", on), func(t *testing.T) {
			up := newUpstream(t)
			e, done := prefetchEnv(t, up.URL(), func(c *Config) { c.PrefetchInfo = on })
			e.mustGet("/"+path+"/@v/"+version+".mod", 200)
			if !on {
				if n := up.Count(".info"); n != 0 {
					t.Fatalf("upstream got %d .info requests without PrefetchInfo", n)
				}
				return
			}
			waitTrigger(t, done)
			if n := up.Count("/" + path + "/@v/" + version + ".info"); n != 1 {
				t.Fatalf("upstream got %d .info requests, want 1 (the prefetch)", n)
			}
			waitFlights(t, e.f)
			r := e.mustGet("/"+path+"/@v/"+version+".info", 200)
			if c := r.header.Get(headerCache); c != "hit" {
				t.Errorf(".info after the prefetch: cache %q, want hit", c)
			}
			if got := prefetchCount(e, prefetchInfo, prefetchUsed); got != 1 {
				t.Errorf("prefetch{info,used} = %d, want 1", got)
			}
			if n := up.Count(".zip"); n != 0 {
				t.Errorf("a zip was fetched (%d requests)", n)
			}
		})
	}
}

// An upstream that fails while a prefetch runs (a blip) does not make the
// go command's own request fail from the negative cache once it is back:
// prefetch failures other than not-found are not remembered.
func TestPrefetchFailureNotNegativelyCached(t *testing.T) {
	deps := depModules("example.com/dep", 1)
	root := requiringModule("example.com/root", deps)
	up := newUpstream(t, append(deps, root)...)
	e, done := prefetchEnv(t, up.URL(), nil)
	up.SetFaults(testupstream.Fault{Match: func(p string) bool { return strings.Contains(p, "/dep/") }, Status: http.StatusServiceUnavailable})
	e.mustGet("/example.com/root/@v/v1.0.0.mod", 200)
	waitTrigger(t, done)
	if got := prefetchCount(e, prefetchRequire, prefetchError); got != 1 {
		t.Fatalf("prefetch{require,error} = %d, want 1 (the blip)", got)
	}
	up.SetFaults() // the upstream is back
	e.mustGet("/"+deps[0].Path+"/@v/v1.0.0.mod", 200)
}

func TestPrunes(t *testing.T) {
	for v, want := range map[string]bool{
		"1.16": false, "1.9": false, "1.16.15": false, "1.17": true, "1.17.0": true,
		"1.21": true, "1.21rc1": true, "1.100": true, "2.0": true, "": false, "x": false, "1.": false,
	} {
		if got := prunes(v); got != want {
			t.Errorf("prunes(%q) = %v, want %v", v, got, want)
		}
	}
}

// The requirements of a pruned go.mod (go 1.17+) are prefetched while the
// recent .mod misses are expensive, not once they are cheap; those of an
// unpruned go.mod always are. Counted as pruned when skipped.
func TestPrefetchPrunedAdapts(t *testing.T) {
	deps := depModules("example.com/pd", 4)
	unprunedDeps := depModules("example.com/ud", 2)
	var mods []testupstream.Module
	mods = append(mods, deps...)
	mods = append(mods, unprunedDeps...)
	pruned := requiringModule("example.com/pruned", deps)
	unpruned := requiringModule("example.com/unpruned", unprunedDeps)
	unpruned.Files["go.mod"] = strings.Replace(unpruned.Files["go.mod"], "go 1.21", "go 1.16", 1)
	var fillers []testupstream.Module
	for i := range minMissSamples {
		fillers = append(fillers, testupstream.Module{Path: fmt.Sprintf("example.com/f%d", i), Version: "v1.0.0"})
	}
	mods = append(mods, pruned, unpruned)
	mods = append(mods, fillers...)
	for _, c := range []struct {
		name    string
		minMiss time.Duration
		want    bool // pruned requirements prefetched
	}{
		{"misses cheaper than the threshold", time.Hour, false},
		{"misses dearer than the threshold", time.Nanosecond, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := newUpstream(t, mods...)
			e := newEnv(t, up.URL(), func(cfg *Config) { cfg.PrefetchPrunedMinMiss = c.minMiss })
			// Misses to learn from.
			for _, m := range fillers {
				e.mustGet("/"+m.Path+"/@v/v1.0.0.mod", 200)
			}
			waitFlights(t, e.f)
			e.mustGet("/example.com/pruned/@v/v1.0.0.mod", 200)
			e.mustGet("/example.com/unpruned/@v/v1.0.0.mod", 200)
			stored := func(ms []testupstream.Module) bool {
				for _, d := range ms {
					if _, err := e.store.Stat(cache.Key{Path: d.Path, Version: d.Version, Kind: cache.KindMod}); err != nil {
						return false
					}
				}
				return true
			}
			// The unpruned go.mod was served last: once its requirements
			// are stored, the pruned one's prefetch has started if it was
			// to start.
			waitFor(t, "the requirements of the unpruned go.mod prefetched", func() bool { return stored(unprunedDeps) })
			if c.want {
				waitFor(t, "the requirements of the pruned go.mod prefetched", func() bool { return stored(deps) })
			} else {
				waitFlights(t, e.f)
				for _, d := range deps {
					if _, err := e.store.Stat(cache.Key{Path: d.Path, Version: d.Version, Kind: cache.KindMod}); err == nil {
						t.Errorf("requirement %s of a pruned go.mod prefetched while misses are cheap", d.Path)
					}
				}
				if n := up.Count("/example.com/pd/"); n != 0 {
					t.Errorf("the upstream was asked %d times for requirements of the pruned go.mod", n)
				}
			}
			wantPruned := 0
			if !c.want {
				wantPruned = len(deps)
			}
			if got := prefetchCount(e, prefetchRequire, prefetchPruned); got != wantPruned {
				t.Errorf("prefetch{require,pruned} = %d, want %d", got, wantPruned)
			}
		})
	}
}
