package prewarm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
	"github.com/modproxy/modproxy/modgraph"
	"github.com/modproxy/modproxy/proxy"
	"github.com/modproxy/modproxy/sumdb"
)

// pwModules is the prewarm tests' universe. private.example/p is exempt
// from the checksum database (and not in it).
var pwModules = []testupstream.Module{
	{Path: "example.com/a", Version: "v1.0.0", Files: map[string]string{"a.go": "package a\n"}},
	{Path: "example.com/b", Version: "v1.0.0", Files: map[string]string{"b.go": "package b\n"}},
	{Path: "example.com/b", Version: "v1.1.0", Files: map[string]string{"b.go": "package b\n// v1.1\n"}},
	{Path: "github.com/Upper/Case", Version: "v0.1.0", Files: map[string]string{"case.go": "package uppercase\n"}},
	{Path: "private.example/p", Version: "v0.0.1", Files: map[string]string{"p.go": "package p\n"}},
}

const pwPrivate = "private.example"

// pwEnv is a Fetcher over a fresh store, fetching from a fake upstream and
// verifying with a test checksum database.
type pwEnv struct {
	up     *testupstream.Server
	db     *testsumdb.DB
	store  *cache.Store
	f      *proxy.Fetcher
	sumdb  http.Handler
	flight *inFlight // counts the Fetcher's upstream requests
	spool  string
}

// fetcherBackend returns the in-process backend over e's Fetcher.
func (e *pwEnv) fetcherBackend() Backend {
	return NewFetcherBackend(e.f, e.store, e.spool, e.sumdb)
}

func newUpstream(t *testing.T, mods ...testupstream.Module) *testupstream.Server {
	t.Helper()
	up, err := testupstream.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	return up
}

func newPWEnv(t *testing.T, mods ...testupstream.Module) *pwEnv {
	t.Helper()
	if len(mods) == 0 {
		mods = pwModules
	}
	e := &pwEnv{up: newUpstream(t, mods...), db: testsumdb.New(t, "sum.prewarm.test")}
	for _, m := range mods {
		if !strings.HasPrefix(m.Path, pwPrivate) {
			e.db.AddModule(m.Path, m.Version, e.up.GoMod(m.Path, m.Version), e.up.Zip(m.Path, m.Version))
		}
	}
	st, err := cache.Open(filepath.Join(t.TempDir(), "modproxy.db"), cache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.store = st
	sumClient := &http.Client{Transport: &http.Transport{}}
	v, err := sumdb.New(sumdb.Config{VerifierKey: e.db.VerifierKey(), URL: e.db.URL(), Client: sumClient, Private: pwPrivate}, st)
	if err != nil {
		t.Fatal(err)
	}
	e.sumdb = v.Handler()
	ups, err := proxy.ParseUpstreams(e.up.URL())
	if err != nil {
		t.Fatal(err)
	}
	e.flight = &inFlight{next: &http.Transport{}}
	client := &http.Client{Transport: e.flight}
	e.spool = t.TempDir()
	// No prefetch: the server would fetch a .mod on its own after the
	// .info miss, and the tests count which files prewarm itself added.
	e.f, err = proxy.NewFetcher(proxy.Config{Store: st, Client: client, Upstreams: ups, Verifier: v, SpoolDir: e.spool, NoPrefetch: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.f.Close()
		client.CloseIdleConnections()
		sumClient.CloseIdleConnections()
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	return e
}

// options returns the options of a prewarm through backend that mirrors
// the test checksum database.
func (e *pwEnv) options(backend Backend) Options {
	return Options{
		Backend:  backend,
		Jobs:     4,
		SumDB:    e.db.Name(),
		SumDBKey: e.db.VerifierKey(),
		Exempt:   func(path string) bool { return strings.HasPrefix(path, pwPrivate) },
	}
}

// keys lists the store's artifacts as "path@version.kind", sorted.
func (e *pwEnv) keys(t *testing.T) []string {
	t.Helper()
	var keys []string
	if err := e.store.Walk(func(k cache.Key, _ cache.Meta) error {
		keys = append(keys, k.Path+"@"+k.Version+"."+string(k.Kind))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	return keys
}

// needKeys lists the artifacts that needs call for, as keys does.
func needKeys(needs []modgraph.Need) []string {
	var keys []string
	for _, n := range needs {
		keys = append(keys, n.Path+"@"+n.Version+".info", n.Path+"@"+n.Version+".mod")
		if n.Zip {
			keys = append(keys, n.Path+"@"+n.Version+".zip")
		}
	}
	slices.Sort(keys)
	return keys
}

// goSumNeeds returns a Need per module, with the go.sum hashes of the
// upstream's content; zip says which need their zip.
func (e *pwEnv) goSumNeeds(t *testing.T, zip func(testupstream.Module) bool) []modgraph.Need {
	t.Helper()
	var needs []modgraph.Need
	for _, m := range e.up.Modules() {
		modHash, err := testsumdb.HashMod(e.up.GoMod(m.Path, m.Version))
		if err != nil {
			t.Fatal(err)
		}
		n := modgraph.Need{Path: m.Path, Version: m.Version, ModHash: modHash}
		if zip(m) {
			n.Zip = true
			if n.ZipHash, err = testsumdb.HashZip(e.up.Zip(m.Path, m.Version)); err != nil {
				t.Fatal(err)
			}
		}
		needs = append(needs, n)
	}
	return needs
}

// allButOldB needs every zip except example.com/b v1.0.0's (a go.mod-only
// dependency, as in a graph where a newer version is selected).
func allButOldB(m testupstream.Module) bool { return m.Path+"@"+m.Version != "example.com/b@v1.0.0" }

// httpBackend serves e's Fetcher on an httptest server and returns a
// backend that prewarms through it.
func (e *pwEnv) httpBackend(t *testing.T) Backend {
	t.Helper()
	srv := httptest.NewServer(proxy.NewServer(e.f, proxy.ServerOptions{SumDB: e.sumdb}))
	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(func() {
		client.CloseIdleConnections()
		srv.CloseClientConnections()
		srv.Close()
	})
	return NewHTTPBackend(client, srv.URL+"/", t.TempDir())
}

// backends are the two ways to run the pipeline, over the same env.
var backends = []struct {
	name string
	new  func(t *testing.T, e *pwEnv) Backend
}{
	{"fetcher", func(t *testing.T, e *pwEnv) Backend { return e.fetcherBackend() }},
	{"http", func(t *testing.T, e *pwEnv) Backend { return e.httpBackend(t) }},
}

func TestPrewarmStoresNeedsThenFindsThemCached(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			e := newPWEnv(t)
			needs := e.goSumNeeds(t, allButOldB)
			opts := e.options(b.new(t, e))
			var last Progress
			var calls atomic.Int32
			opts.Progress = func(p Progress) {
				calls.Add(1)
				if p.Done < last.Done || p.Bytes < last.Bytes {
					t.Errorf("progress went back: %+v after %+v", p, last)
				}
				last = p
			}
			rep, err := Run(context.Background(), needs, opts)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Modules != 5 || rep.Added != 5 || rep.Stored != 0 || rep.Failed != 0 || len(rep.Failures) != 0 {
				t.Fatalf("first run: %+v", rep)
			}
			if rep.Records != 4 { // all but the exempt private module
				t.Errorf("first run verified and stored %d checksum-database records, want 4", rep.Records)
			}
			if rep.SumDB != e.db.Name() || rep.Bytes <= 0 || rep.Seconds <= 0 {
				t.Errorf("first run: %+v", rep)
			}
			if last.Modules != 5 || last.Done != 5 || last.Bytes != rep.Bytes || calls.Load() != 5+14 {
				t.Errorf("last progress %+v after %d calls; report %+v", last, calls.Load(), rep)
			}
			if got, want := e.keys(t), needKeys(needs); !slices.Equal(got, want) {
				t.Errorf("stored:\n%v\nwant:\n%v", got, want)
			}
			if files := len(needKeys(needs)); rep.FilesAdded != files || rep.FilesStored != 0 {
				t.Errorf("first run: %d files added, %d already stored; want %d, 0", rep.FilesAdded, rep.FilesStored, files)
			}

			e.up.ResetCounts()
			e.db.ResetRequests()
			last = Progress{}
			again, err := Run(context.Background(), needs, opts)
			if err != nil {
				t.Fatal(err)
			}
			if again.Added != 0 || again.Stored != 5 || again.Failed != 0 || again.Records != 4 || again.Bytes != rep.Bytes ||
				again.FilesAdded != 0 || again.FilesStored != rep.FilesAdded {
				t.Errorf("rerun: %+v", again)
			}
			if n := e.up.Count("/"); n != 0 {
				t.Errorf("rerun sent %d upstream requests: %v", n, e.up.Requests())
			}
			if n := e.db.RequestCount(""); n != 0 {
				t.Errorf("rerun sent %d checksum database requests: %v", n, e.db.Requests())
			}
		})
	}
}

func TestPrewarmGoSumMismatch(t *testing.T) {
	const bad = "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	tests := []struct {
		name   string
		tamper func(*modgraph.Need)
		what   string // in the reason
	}{
		{"mod", func(n *modgraph.Need) { n.ModHash = bad }, "example.com/a@v1.0.0/go.mod, the fetched go.mod hashes to "},
		{"zip", func(n *modgraph.Need) { n.ZipHash = bad }, "example.com/a@v1.0.0, the fetched zip hashes to "},
	}
	for _, b := range backends {
		for _, tt := range tests {
			t.Run(b.name+"/"+tt.name, func(t *testing.T) {
				e := newPWEnv(t)
				needs := e.goSumNeeds(t, allButOldB)
				i := slices.IndexFunc(needs, func(n modgraph.Need) bool { return n.Path == "example.com/a" })
				good := needs[i]
				tt.tamper(&needs[i])
				rep, err := Run(context.Background(), needs, e.options(b.new(t, e)))
				if err != nil {
					t.Fatal(err)
				}
				if rep.Failed != 1 || rep.Added != 4 || rep.Records != 3 || len(rep.Failures) != 1 {
					t.Fatalf("report: %+v", rep)
				}
				f := rep.Failures[0]
				real := good.ModHash
				if tt.name == "zip" {
					real = good.ZipHash
				}
				want := "go.sum mismatch: go.sum has " + bad + " for " + tt.what + real
				if f.Module != "example.com/a" || f.Version != "v1.0.0" || f.Error != want {
					t.Errorf("failure %+v\nwant error %q", f, want)
				}
				// What the store holds for it is what the checksum
				// database vouches for, never the go.sum's claim.
				for _, kind := range []cache.Kind{cache.KindMod, cache.KindZip} {
					m, err := e.store.Stat(cache.Key{Path: "example.com/a", Version: "v1.0.0", Kind: kind})
					if err == nil && m.Hash == bad {
						t.Errorf("stored %s with the go.sum's hash", kind)
					}
				}
			})
		}
	}
}

func TestPrewarmUpstreamFaultFailsOnlyThatModule(t *testing.T) {
	isZipOf := func(mod string) func(string) bool {
		return func(p string) bool { return strings.HasPrefix(p, "/"+mod+"/@v/") && strings.HasSuffix(p, ".zip") }
	}
	tests := []struct {
		name   string
		fault  testupstream.Fault
		reason string // in the failure's error
		stored []string
	}{
		{"500", testupstream.Fault{Match: isZipOf("example.com/a"), Status: 500}, "zip: ",
			[]string{"example.com/a@v1.0.0.info", "example.com/a@v1.0.0.mod"}},
		{"404 mod", testupstream.Fault{Match: func(p string) bool { return p == "/example.com/a/@v/v1.0.0.mod" }, Status: 404}, "mod: ",
			[]string{"example.com/a@v1.0.0.info"}},
		{"reset", testupstream.Fault{Match: isZipOf("example.com/a"), Reset: true}, "zip: ",
			[]string{"example.com/a@v1.0.0.info", "example.com/a@v1.0.0.mod"}},
		{"tampered zip", testupstream.Fault{Match: isZipOf("example.com/a"), Tamper: true}, "checksum mismatch",
			[]string{"example.com/a@v1.0.0.info", "example.com/a@v1.0.0.mod"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newPWEnv(t)
			e.up.SetFaults(tt.fault)
			needs := e.goSumNeeds(t, allButOldB)
			rep, err := Run(context.Background(), needs, e.options(e.fetcherBackend()))
			if err != nil {
				t.Fatal(err)
			}
			if rep.Failed != 1 || rep.Added != 4 || len(rep.Failures) != 1 {
				t.Fatalf("report: %+v", rep)
			}
			if f := rep.Failures[0]; f.Module != "example.com/a" || f.Version != "v1.0.0" || !strings.Contains(f.Error, tt.reason) {
				t.Errorf("failure %+v, want one of example.com/a@v1.0.0 saying %q", f, tt.reason)
			}
			var others []modgraph.Need
			for _, n := range needs {
				if n.Path != "example.com/a" {
					others = append(others, n)
				}
			}
			want := append(needKeys(others), tt.stored...)
			slices.Sort(want)
			if got := e.keys(t); !slices.Equal(got, want) {
				t.Errorf("stored:\n%v\nwant:\n%v", got, want)
			}
		})
	}
}

func TestPrewarmThroughServerFillsItsStore(t *testing.T) {
	e := newPWEnv(t)
	needs := e.goSumNeeds(t, allButOldB)
	rep, err := Run(context.Background(), needs, e.options(e.httpBackend(t)))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Added != 5 || rep.Failed != 0 || rep.Records != 4 {
		t.Fatalf("report: %+v", rep)
	}
	if got, want := e.keys(t), needKeys(needs); !slices.Equal(got, want) {
		t.Errorf("server store:\n%v\nwant:\n%v", got, want)
	}
	// The checksum-database records and tiles are in the server's store:
	// an offline verifier over it serves every lookup and proves it.
	v, err := sumdb.New(sumdb.Config{VerifierKey: e.db.VerifierKey(), Offline: true, Private: pwPrivate}, e.store)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range needs {
		if strings.HasPrefix(n.Path, pwPrivate) {
			continue
		}
		if _, err := v.VerifyMod(context.Background(), n.Path, n.Version, e.up.GoMod(n.Path, n.Version)); err != nil {
			t.Errorf("offline verification: %v", err)
		}
	}
}

func TestPrewarmHonoursJobs(t *testing.T) {
	var mods []testupstream.Module
	for i := range 6 {
		mods = append(mods, testupstream.Module{Path: fmt.Sprintf("example.com/m%d", i), Version: "v1.0.0"})
	}
	for _, jobs := range []int{1, 3} {
		t.Run(fmt.Sprint(jobs), func(t *testing.T) {
			e := newPWEnv(t, mods...)
			e.flight.holdUntil(jobs)
			opts := e.options(e.fetcherBackend())
			opts.Jobs = jobs
			rep, err := Run(context.Background(), e.goSumNeeds(t, func(testupstream.Module) bool { return true }), opts)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Added != 6 || rep.Failed != 0 {
				t.Fatalf("report: %+v", rep)
			}
			if e.flight.starved.Load() {
				t.Errorf("%d upstream requests were never in flight at once", jobs)
			}
			if got := e.flight.max.Load(); got != int64(jobs) {
				t.Errorf("at most %d upstream requests in flight, want %d", got, jobs)
			}
		})
	}
}

func TestPrewarmCancelStopsPromptly(t *testing.T) {
	var mods []testupstream.Module
	for i := range 20 {
		mods = append(mods, testupstream.Module{Path: fmt.Sprintf("example.com/m%02d", i), Version: "v1.0.0"})
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			const hangGuard = 2 * time.Minute
			e := newPWEnv(t, mods...)
			// The first module asked for is served; every other one hangs
			// until its request is abandoned. So one module completes, and
			// Prewarm can only return after the cancellation that follows
			// by abandoning the fetches in flight, not by waiting for them.
			var free atomic.Pointer[string]
			e.up.SetFaults(testupstream.Fault{Delay: 10 * hangGuard, Match: func(p string) bool {
				mod, _, ok := strings.Cut(p, "/@v/")
				if !ok {
					return false
				}
				free.CompareAndSwap(nil, &mod)
				return *free.Load() != mod
			}})
			errStop := errors.New("stop requested")
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			opts := e.options(b.new(t, e))
			opts.Jobs = 2
			opts.Progress = func(p Progress) {
				if p.Done == 1 {
					cancel(errStop)
				}
			}
			needs := e.goSumNeeds(t, func(testupstream.Module) bool { return true })
			type result struct {
				rep *Report
				err error
			}
			done := make(chan result, 1)
			go func() {
				rep, err := Run(ctx, needs, opts)
				done <- result{rep, err}
			}()
			var rep *Report
			select {
			case r := <-done:
				rep = r.rep
				if !errors.Is(r.err, errStop) {
					t.Fatalf("err = %v, want the cancellation cause", r.err)
				}
			case <-time.After(hangGuard):
				cancel(errStop)
				t.Fatalf("Prewarm still running %v after it was cancelled with fetches hanging", hangGuard)
			}
			if rep == nil || rep.Modules != 20 || rep.Added+rep.Stored+rep.Failed != 20 || rep.Added < 1 || rep.Failed < 10 {
				t.Fatalf("report: %+v", rep)
			}
			// Every module reported fetched is whole in the store, and
			// whatever else is stored is whole and verified.
			failed := map[string]bool{}
			for _, f := range rep.Failures {
				failed[f.Module] = true
			}
			stored := map[string]bool{}
			for _, k := range e.keys(t) {
				stored[k] = true
			}
			for _, n := range needs {
				if failed[n.Path] {
					continue
				}
				for _, k := range needKeys([]modgraph.Need{n}) {
					if !stored[k] {
						t.Errorf("%s reported fetched, %s not stored", n.Path, k)
					}
				}
			}
			e.f.Close() // stop the background downloads before reading
			checkStoreWhole(t, e)
		})
	}
}

// checkStoreWhole reads every stored .mod and .zip and compares its hash
// with the upstream's content.
func checkStoreWhole(t *testing.T, e *pwEnv) {
	t.Helper()
	err := e.store.Walk(func(k cache.Key, m cache.Meta) error {
		var want, got string
		switch k.Kind {
		case cache.KindMod:
			want, _ = testsumdb.HashMod(e.up.GoMod(k.Path, k.Version))
			data, _, err := e.store.Get(k)
			if err != nil {
				return err
			}
			got, _ = testsumdb.HashMod(data)
		case cache.KindZip:
			want, _ = testsumdb.HashZip(e.up.Zip(k.Path, k.Version))
			r, err := e.store.Open(k)
			if err != nil {
				return err
			}
			data, err := io.ReadAll(r)
			r.Close()
			if err != nil {
				return fmt.Errorf("read %s: %w", k, err)
			}
			if got, err = testsumdb.HashZip(data); err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
		default:
			return nil
		}
		if got != want || m.Hash != want {
			t.Errorf("%s: content hashes to %s, recorded %s, want %s", k, got, m.Hash, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// inFlight is a RoundTripper that records the most requests it had in
// flight at once: from the request until its response body is closed.
//
// With holdUntil(n), the first requests wait until n are in flight at once
// (then none waits again), so that reaching n depends on how many the
// caller runs concurrently, not on how the scheduler overlaps them.
type inFlight struct {
	next     http.RoundTripper
	now, max atomic.Int64

	wave     int64         // holdUntil's n; 0: no holding
	full     chan struct{} // closed once wave requests were in flight
	fullOnce sync.Once
	starved  atomic.Bool // the hang guard opened the gate, not the wave
}

// holdUntil makes the first requests wait until n are in flight at once.
func (c *inFlight) holdUntil(n int) {
	c.wave, c.full = int64(n), make(chan struct{})
}

func (c *inFlight) RoundTrip(req *http.Request) (*http.Response, error) {
	n := c.now.Add(1)
	for {
		m := c.max.Load()
		if n <= m || c.max.CompareAndSwap(m, n) {
			break
		}
	}
	if c.wave > 0 {
		if n >= c.wave {
			c.fullOnce.Do(func() { close(c.full) })
		}
		select {
		case <-c.full:
		case <-req.Context().Done():
		case <-time.After(2 * time.Minute): // hang guard
			c.starved.Store(true)
			c.fullOnce.Do(func() { close(c.full) })
		}
	}
	resp, err := c.next.RoundTrip(req)
	if err != nil {
		c.now.Add(-1)
		return nil, err
	}
	resp.Body = &doneBody{ReadCloser: resp.Body, done: func() { c.now.Add(-1) }}
	return resp, nil
}

func (c *inFlight) CloseIdleConnections() {
	if t, ok := c.next.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
}

// doneBody calls done once when closed.
type doneBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *doneBody) Close() error {
	b.once.Do(b.done)
	return b.ReadCloser.Close()
}

// TestFetcherBackendSumDBAnswers checks the in-process checksum-database
// reads: an error status becomes an error naming the path, an endless
// answer is cut at the bound, and no backend means verification is off.
func TestFetcherBackendSumDBAnswers(t *testing.T) {
	tests := []struct {
		name    string
		h       http.Handler
		want    string
		wantErr string
	}{
		{"ok", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) }), "/sumdb/db.test/supported", ""},
		{"404", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no such record\nmore", 404) }), "",
			"/sumdb/db.test/supported: 404 no such record"},
		{"endless", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			chunk := strings.Repeat("x", 1<<20)
			for range maxSmall/len(chunk) + 2 {
				if _, err := io.WriteString(w, chunk); err != nil {
					return
				}
			}
		}), "", "answer larger than"},
		{"off", nil, "", "verification is off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewFetcherBackend(nil, nil, "", tt.h)
			got, err := b.SumDB(context.Background(), "db.test", "supported")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestRunReportsGraphFailures checks that go.mod files the resolution could
// not read are failures of the run, once per module version, and that the
// rest is prewarmed.
func TestRunReportsGraphFailures(t *testing.T) {
	e := newPWEnv(t)
	needs := e.goSumNeeds(t, allButOldB)
	opts := e.options(e.fetcherBackend())
	opts.GraphFailures = []modgraph.Failure{
		{Path: "example.com/a", Version: "v1.0.0", Err: errors.New("parsing go.mod:\n\tmodule declares its path as: x")},
		{Path: "example.com/gone", Version: "v1.0.0", Err: errors.New("go.mod of example.com/gone@v1.0.0: 404")},
	}
	rep, err := Run(context.Background(), needs, opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Modules != 6 || rep.Failed != 2 || rep.Added != 4 || len(rep.Failures) != 2 {
		t.Fatalf("report: %+v", rep)
	}
	if f := rep.Failures[0]; f.Module != "example.com/a" || !strings.Contains(f.Error, "go.mod unreadable") || !strings.Contains(f.Error, "module declares its path as: x") {
		t.Errorf("failure %+v", f)
	}
	if f := rep.Failures[1]; f.Module != "example.com/gone" || !strings.Contains(f.Error, "404") {
		t.Errorf("failure %+v", f)
	}
}
