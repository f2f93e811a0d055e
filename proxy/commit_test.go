package proxy

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// holdingDisk is a DiskFree seam that, once armed, holds the store commit
// of a verified zip (its free-space check, the step before the commit)
// until released.
type holdingDisk struct {
	storeDir string
	armed    atomic.Bool
	reached  chan struct{}
	release  chan struct{}
	after    func() // runs when released, before the commit
}

func (d *holdingDisk) DiskFree(dir string) (uint64, error) {
	if dir == d.storeDir && d.armed.CompareAndSwap(true, false) {
		close(d.reached)
		<-d.release
		if d.after != nil {
			d.after()
		}
	}
	return 1 << 40, nil
}

func bigStreamingModule() testupstream.Module {
	big := make([]byte, 0, 600<<10)
	for i := 0; len(big) < 600<<10; i++ {
		big = fmt.Appendf(big, "// line %d %x\n", i, sha256.Sum256([]byte{byte(i), byte(i >> 8)}))
	}
	return testupstream.Module{Path: "example.com/big", Version: "v1.0.0", Files: map[string]string{"big.go": "package big\n" + string(big)}}
}

// A client following a download gets the last byte once the zip is
// verified, while the store commit has not begun; the commit then runs to
// the end although every client has left.
func TestVerifiedZipServedBeforeCommit(t *testing.T) {
	mod := bigStreamingModule()
	up := newUpstream(t, mod)
	want := up.Zip(mod.Path, mod.Version)
	disk := &holdingDisk{reached: make(chan struct{}), release: make(chan struct{})}
	e := newEnv(t, up.URL(), func(c *Config) {
		c.HoldBackBytes = 64 << 10
		c.DiskFree = disk.DiskFree
		disk.storeDir = filepath.Dir(c.Store.(*cache.Store).Path())
	})
	disk.armed.Store(true)
	released := false
	defer func() {
		if !released {
			close(disk.release)
		}
	}()
	type result struct {
		status int
		body   []byte
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := e.srv.Client().Get(e.srv.URL + "/example.com/big/@v/v1.0.0.zip")
		if err != nil {
			done <- result{err: err}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp.StatusCode, body, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(2 * time.Minute): // hang guard only
		t.Fatal("the client waits for the store commit")
	}
	if r.err != nil || r.status != http.StatusOK || string(r.body) != string(want) {
		t.Fatalf("status %d, %d of %d bytes, err %v", r.status, len(r.body), len(want), r.err)
	}
	select {
	case <-disk.reached:
	default:
		t.Fatal("the client had the whole zip before the gate had verified it")
	}
	key := cache.Key{Path: mod.Path, Version: mod.Version, Kind: cache.KindZip}
	if _, err := e.store.Stat(key); err == nil {
		t.Fatal("stored before the commit was released: the test holds the wrong step")
	}
	// The client is gone; the flight must not be cancelled now.
	close(disk.release)
	released = true
	waitFlights(t, e.f)
	if _, err := e.store.Stat(key); err != nil {
		t.Fatalf("verified zip not stored after its client left: %v", err)
	}
	if n := up.Count(".zip"); n != 1 {
		t.Errorf("upstream asked for the zip %d times, want 1", n)
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
	disk := &holdingDisk{reached: make(chan struct{}), release: make(chan struct{})}
	e := newEnv(t, up.URL(), func(c *Config) {
		c.HoldBackBytes = 64 << 10
		c.DiskFree = disk.DiskFree
		c.Metrics = m
		disk.storeDir = filepath.Dir(c.Store.(*cache.Store).Path())
	})
	disk.after = func() {
		if err := e.store.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	}
	disk.armed.Store(true)
	resp, err := e.srv.Client().Get(e.srv.URL + "/example.com/big/@v/v1.0.0.zip")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	close(disk.release)
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
	testDone := make(chan struct{})
	clientHasByte := make(chan struct{})
	rest := httputil.NewSingleHostReverseProxy(mustParseURL(t, up.URL()))
	stalling := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, ".zip") {
			rest.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(zip)))
		w.Write(zip[:100<<10])
		w.(http.Flusher).Flush()
		select { // the tail comes in a read of its own
		case <-clientHasByte:
		case <-testDone:
			return
		}
		w.Write(zip[100<<10 : sent])
		w.(http.Flusher).Flush()
		select { // stall until the test ends
		case <-testDone:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(stalling.Close)
	t.Cleanup(func() { close(testDone) })
	e := newEnv(t, stalling.URL, func(c *Config) { c.HoldBackBytes = holdBack })

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
