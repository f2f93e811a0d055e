package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/cache/gate"
)

// leasingStore is a Store shared with other (pretend) replicas.
type leasingStore struct {
	*cache.Store
	acquire  func(k cache.Key) (stored bool, err error)
	acquired atomic.Int64
	released atomic.Int64
}

func (l *leasingStore) AcquireFetch(ctx context.Context, k cache.Key) (func(), bool, error) {
	stored, err := l.acquire(k)
	if err != nil || stored {
		return nil, stored, err
	}
	l.acquired.Add(1)
	return func() { l.released.Add(1) }, false, nil
}

func TestZipFetchLease(t *testing.T) {
	const zipPath = "/example.com/hello/@v/v1.0.0.zip"
	for _, c := range []struct {
		name       string
		acquire    func(l *leasingStore, up func() []byte) func(cache.Key) (bool, error)
		status     int
		body       string
		upstream   int // fetches of the zip at the upstream
		acquiredOK int64
	}{
		{"lease taken: fetched once, released", func(*leasingStore, func() []byte) func(cache.Key) (bool, error) {
			return func(cache.Key) (bool, error) { return false, nil }
		}, 200, "", 1, 1},
		{"another replica stored it meanwhile: served without a fetch", func(l *leasingStore, zip func() []byte) func(cache.Key) (bool, error) {
			return func(k cache.Key) (bool, error) {
				// The other replica's write lands in the shared store.
				g, err := gate.New(gate.Config{Store: l.Store})
				if err != nil {
					return false, err
				}
				tk, err := g.CheckZip(context.Background(), k, func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(zip())), nil }, gate.Origin{})
				if err != nil {
					return false, err
				}
				_, err = g.Commit(tk)
				return true, err
			}
		}, 200, "", 0, 0},
		{"lease unavailable: a clear 502, no fetch", func(*leasingStore, func() []byte) func(cache.Key) (bool, error) {
			return func(cache.Key) (bool, error) { return false, errors.New("bucket unreachable") }
		}, 502, "cannot coordinate the fetch with the other replicas", 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := newUpstream(t)
			var ls *leasingStore
			e := newEnv(t, up.URL(), func(cfg *Config) {
				ls = &leasingStore{Store: cfg.Store.(*cache.Store)}
				ls.acquire = c.acquire(ls, func() []byte { return up.Zip("example.com/hello", "v1.0.0") })
				cfg.Store = ls
			})
			up.ResetCounts()
			r := e.get(zipPath)
			if r.status != c.status || !strings.Contains(r.body, c.body) {
				t.Fatalf("GET zip: %d %q, want %d containing %q", r.status, r.body, c.status, c.body)
			}
			if c.status == 200 && r.body != string(up.Zip("example.com/hello", "v1.0.0")) {
				t.Fatal("served zip differs from the upstream's")
			}
			if n := up.Count(".zip"); n != c.upstream {
				t.Errorf("upstream zip fetches %d, want %d", n, c.upstream)
			}
			// The lease is released once the zip is committed, after its
			// client was answered.
			waitFor(t, "the fetch lease to be released", func() bool { return ls.released.Load() >= c.acquiredOK })
			if ls.acquired.Load() != c.acquiredOK || ls.released.Load() != c.acquiredOK {
				t.Errorf("leases acquired %d released %d, want %d each", ls.acquired.Load(), ls.released.Load(), c.acquiredOK)
			}
		})
	}
}

// A zip asked of a closed Fetcher starts no flight: its work would be
// counted into a WaitGroup that Close has already waited on.
func TestZipAfterCloseStartsNoFlight(t *testing.T) {
	up := newUpstream(t)
	e := newEnv(t, up.URL(), nil)
	e.f.Close()
	_, err := e.f.Zip(context.Background(), Request{Module: "example.com/hello", Version: "v1.0.0", Kind: KindZip}, ZipStream)
	if !errors.Is(err, errFetcherClosed) {
		t.Fatalf("Zip after Close: err = %v, want %v", err, errFetcherClosed)
	}
	e.f.zipMu.Lock()
	n := len(e.f.zipFlights)
	e.f.zipMu.Unlock()
	if n != 0 {
		t.Errorf("%d zip flights left after Close", n)
	}
	// A client asking a closing server gets a clear, retryable status.
	r := e.mustGet("/example.com/hello/@v/v1.0.0.zip", http.StatusServiceUnavailable)
	if !strings.Contains(r.body, "shutting down") || r.header.Get("Retry-After") == "" {
		t.Errorf("after Close: %q, Retry-After %q", r.body, r.header.Get("Retry-After"))
	}
}
