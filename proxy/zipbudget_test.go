package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// bigTestModule is a module whose zip is about size bytes of incompressible
// content.
func bigTestModule(path, version string, size int) testupstream.Module {
	var big []byte
	for i := 0; len(big) < size; i++ {
		big = fmt.Appendf(big, "// %x\n", sha256.Sum256([]byte{byte(i), byte(i >> 8), byte(i >> 16)}))
	}
	return testupstream.Module{Path: path, Version: version, Files: map[string]string{"big.go": "package big\n" + string(big)}}
}

// value reads a gauge or counter.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Gauge != nil {
		return d.Gauge.GetValue()
	}
	return d.Counter.GetValue()
}

func isZip(p string) bool { return strings.HasSuffix(p, ".zip") }

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func spoolFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, spoolPrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestZipDownloadLimitQueuesThenRefuses: over --max-zip-downloads a
// download waits in the queue; a full queue and a wait past
// --zip-queue-wait answer 503 with Retry-After, never an upstream error.
func TestZipDownloadLimitQueuesThenRefuses(t *testing.T) {
	mods := []testupstream.Module{
		{Path: "example.com/a", Version: "v1.0.0"}, {Path: "example.com/b", Version: "v1.0.0"},
		{Path: "example.com/c", Version: "v1.0.0"},
	}
	up := newUpstream(t, mods...)
	up.SetFaults(testupstream.Fault{Match: func(p string) bool { return p == "/example.com/a/@v/v1.0.0.zip" }, Delay: 3 * time.Second})
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	e := newEnv(t, up.URL(), func(c *Config) {
		c.MaxZipDownloads, c.ZipQueue, c.ZipQueueWait, c.Metrics = 1, 1, 300*time.Millisecond, m
	})
	aDone := make(chan response, 1)
	go func() { aDone <- e.get("/example.com/a/@v/v1.0.0.zip") }()
	waitFor(t, "download a to hold the slot", func() bool { return value(m.zipInFlight) == 1 })

	bDone := make(chan response, 1)
	go func() { bDone <- e.get("/example.com/b/@v/v1.0.0.zip") }()
	waitFor(t, "download b to queue", func() bool { return value(m.zipQueued) == 1 })

	c := e.get("/example.com/c/@v/v1.0.0.zip")
	if c.status != http.StatusServiceUnavailable || c.header.Get("Retry-After") == "" || !strings.Contains(c.body, "queued") {
		t.Errorf("queue full: %d %q Retry-After=%q, want 503 with Retry-After", c.status, c.body, c.header.Get("Retry-After"))
	}
	b := <-bDone
	if b.status != http.StatusServiceUnavailable || b.header.Get("Retry-After") == "" || !strings.Contains(b.body, "no download slot") {
		t.Errorf("queue timeout: %d %q Retry-After=%q, want 503 with Retry-After", b.status, b.body, b.header.Get("Retry-After"))
	}
	if a := <-aDone; a.status != 200 {
		t.Errorf("the download holding the slot: %d %q", a.status, a.body)
	}
	for reason, want := range map[string]float64{"queue_full": 1, "queue_timeout": 1} {
		if got := value(m.zipRejected.WithLabelValues(reason)); got != want {
			t.Errorf("rejected{%s} = %v, want %v", reason, got, want)
		}
	}
	// A refusal is not remembered: the slot is free now.
	e.mustGet("/example.com/b/@v/v1.0.0.zip", 200)
	if got := value(m.zipInFlight); got != 0 {
		t.Errorf("in flight after all downloads = %v", got)
	}
	if got := value(m.zipCanceled); got != 0 {
		t.Errorf("canceled = %v after downloads whose clients stayed, want 0", got)
	}
}

// TestZipCancelledWhenEveryClientLeaves: a download whose clients all went
// away stops (upstream connection closed, spool removed, quota returned);
// one a prewarm asked for goes on and is stored.
func TestZipCancelledWhenEveryClientLeaves(t *testing.T) {
	mod := bigTestModule("example.com/big", "v1.0.0", 400<<10)
	mod2 := bigTestModule("example.com/big", "v1.1.0", 400<<10)
	up := newUpstream(t, mod, mod2)
	up.SetFaults(testupstream.Fault{Match: isZip, SlowBody: 20 * time.Millisecond})
	m := NewMetrics(nil)
	spoolDir := t.TempDir()
	e := newEnv(t, up.URL(), func(c *Config) { c.Metrics, c.SpoolDir, c.HoldBackBytes = m, spoolDir, 32<<10 })

	for _, mode := range []string{"waiting", "streaming"} {
		t.Run(mode, func(t *testing.T) {
			before := value(m.zipCanceled)
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/example.com/big/@v/v1.0.0.zip", nil)
			if mode == "waiting" {
				// HEAD waits for the committed zip without streaming.
				req.Method = http.MethodHead
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				resp, err := e.srv.Client().Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}()
			waitFor(t, "the download to spool", func() bool { return value(m.spoolBytes) > 0 })
			if mode == "streaming" {
				waitFor(t, "the client to follow the stream", func() bool {
					e.f.zipMu.Lock()
					defer e.f.zipMu.Unlock()
					fl := e.f.zipFlights[cache.Key{Path: mod.Path, Version: mod.Version, Kind: cache.KindZip}]
					return fl != nil && fl.following == 1
				})
			}
			cancel()
			<-done
			waitFor(t, "the download to be cancelled", func() bool { return value(m.zipCanceled) == before+1 })
			waitFor(t, "the slot and spool to be released", func() bool {
				return value(m.zipInFlight) == 0 && value(m.spoolBytes) == 0 && len(spoolFiles(t, spoolDir)) == 0
			})
			if _, err := e.store.Stat(cache.Key{Path: mod.Path, Version: mod.Version, Kind: cache.KindZip}); err == nil {
				t.Error("a cancelled download was stored")
			}
		})
	}

	// A new request after a cancellation starts afresh and succeeds.
	up.SetFaults()
	r := e.mustGet("/example.com/big/@v/v1.0.0.zip", 200)
	if r.body != string(up.Zip(mod.Path, mod.Version)) {
		t.Error("zip after a cancelled download differs from upstream's")
	}

	// A prewarm's download survives its caller leaving.
	up.SetFaults(testupstream.Fault{Match: isZip, SlowBody: 30 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(100 * time.Millisecond)
		cancel()
	}()
	if _, err := e.f.Zip(ctx, Request{Module: mod2.Path, Version: mod2.Version, Kind: KindZip}, ZipPrewarm); err == nil {
		t.Fatal("the prewarm call returned before the slow download could finish; the test proves nothing")
	}
	waitFor(t, "the prewarm's download to be stored", func() bool {
		_, err := e.store.Stat(cache.Key{Path: mod2.Path, Version: mod2.Version, Kind: cache.KindZip})
		return err == nil
	})
}

// TestSpoolQuota: a zip larger than the whole quota gets 507; one that does
// not fit beside a running download gets 503 with Retry-After.
func TestSpoolQuota(t *testing.T) {
	small := bigTestModule("example.com/small", "v1.0.0", 200<<10)
	small2 := bigTestModule("example.com/small2", "v1.0.0", 200<<10)
	huge := bigTestModule("example.com/huge", "v1.0.0", 900<<10)
	up := newUpstream(t, small, small2, huge)
	up.SetFaults(testupstream.Fault{Match: func(p string) bool { return strings.HasPrefix(p, "/example.com/small/") && isZip(p) }, SlowBody: 100 * time.Millisecond})
	n1, n2 := len(up.Zip(small.Path, small.Version)), len(up.Zip(small2.Path, small2.Version))
	quota := int64(n1 + n2 - 1) // either fits, not both
	if len(up.Zip(huge.Path, huge.Version)) <= int(quota) {
		t.Fatal("the huge zip fits the quota; the test proves nothing")
	}
	m := NewMetrics(nil)
	e := newEnv(t, up.URL(), func(c *Config) { c.Metrics, c.SpoolQuota = m, quota })

	r := e.get("/example.com/huge/@v/v1.0.0.zip")
	if r.status != http.StatusInsufficientStorage || !strings.Contains(r.body, "spool quota") {
		t.Errorf("zip over the whole quota: %d %q, want 507", r.status, r.body)
	}
	done := make(chan response, 1)
	go func() { done <- e.get("/example.com/small/@v/v1.0.0.zip") }()
	waitFor(t, "the first download to reserve its size", func() bool { return value(m.spoolBytes) == float64(n1) })
	r = e.get("/example.com/small2/@v/v1.0.0.zip")
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Errorf("zip beside a running download over the quota: %d %q, want 503 with Retry-After", r.status, r.body)
	}
	if r := <-done; r.status != 200 {
		t.Errorf("first download: %d %q", r.status, r.body)
	}
	e.mustGet("/example.com/small2/@v/v1.0.0.zip", 200)
	// Released once each zip is committed, after its client was answered.
	waitFor(t, "the spool quota to be released", func() bool { return value(m.spoolBytes) == 0 })
	if got := value(m.spoolBytes); got != 0 {
		t.Errorf("spool bytes after every download = %v, want 0", got)
	}
}

// TestSpoolQuotaUnsized: an upstream that sends no Content-Length is held
// to the quota on the bytes as they arrive.
func TestSpoolQuotaUnsized(t *testing.T) {
	mod := bigTestModule("example.com/big", "v1.0.0", 300<<10)
	zip, err := testupstream.MakeZip(mod.Path, mod.Version, map[string]string{"big.go": mod.Files["big.go"], "go.mod": "module example.com/big\n"})
	if err != nil {
		t.Fatal(err)
	}
	up := unsizedUpstream(t, zip, 0)
	m := NewMetrics(nil)
	e := newEnv(t, up.URL, func(c *Config) { c.Metrics, c.SpoolQuota = m, int64(len(zip)/2) })
	r := e.get("/example.com/big/@v/v1.0.0.zip")
	if r.status == 200 {
		t.Fatalf("a zip of %d bytes passed a %d-byte spool quota", len(zip), len(zip)/2)
	}
	if r.status != http.StatusInsufficientStorage || !strings.Contains(r.body, "spool quota") {
		t.Errorf("got %d %q, want 507 naming the spool quota", r.status, r.body)
	}
	if got := value(m.spoolBytes); got != 0 {
		t.Errorf("spool bytes after the refusal = %v, want 0", got)
	}
	if files := spoolFiles(t, e.f.cfg.SpoolDir); len(files) != 0 {
		t.Errorf("spool files left: %v", files)
	}
}

// unsizedUpstream serves a zip without Content-Length (chunked); with
// dieAt > 0 it aborts the connection after that many bytes.
func unsizedUpstream(t *testing.T, body []byte, dieAt int) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isZip(r.URL.Path) {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/zip")
		out := body
		if dieAt > 0 {
			out = body[:dieAt]
		}
		for len(out) > 0 {
			n := min(len(out), 16<<10)
			w.Write(out[:n])
			w.(http.Flusher).Flush()
			out = out[n:]
			time.Sleep(5 * time.Millisecond)
		}
		if dieAt > 0 {
			time.Sleep(100 * time.Millisecond) // clients get the bytes first
			panic(http.ErrAbortHandler)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// http10Get sends an HTTP/1.0 request and reads the answer to the close.
func http10Get(t *testing.T, base, path string) (status int, header http.Header, body []byte, readErr error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(base, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: proxy\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, readErr = io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body, readErr
}

// TestUnsizedZipNeverLooksCompleteToHTTP10: an upstream streams a zip without
// Content-Length and dies midway. An HTTP/1.0 client (no chunked encoding:
// the end of the body is the close) gets an error status, never 200 with a
// clean close; HTTP/1.1 clients get their stream aborted; a whole unsized zip
// reaches an HTTP/1.0 client complete.
func TestUnsizedZipNeverLooksCompleteToHTTP10(t *testing.T) {
	mod := bigTestModule("example.com/big", "v1.0.0", 300<<10)
	zip, err := testupstream.MakeZip(mod.Path, mod.Version, map[string]string{"big.go": mod.Files["big.go"], "go.mod": "module example.com/big\n"})
	if err != nil {
		t.Fatal(err)
	}
	const path = "/example.com/big/@v/v1.0.0.zip"
	t.Run("dies midway", func(t *testing.T) {
		up := unsizedUpstream(t, zip, len(zip)/2)
		e := newEnv(t, up.URL, func(c *Config) { c.HoldBackBytes, c.HoldBackTime = 1<<10, 10*time.Millisecond })
		status, _, body, rerr := http10Get(t, e.srv.URL, path)
		if status == 200 && rerr == nil {
			t.Fatalf("HTTP/1.0 client got 200 and a clean close after %d of %d bytes", len(body), len(zip))
		}
		if status < 500 {
			t.Errorf("HTTP/1.0 status = %d, want an error status", status)
		}
		// HTTP/1.1 (chunked): streamed, then aborted.
		resp, err := e.srv.Client().Get(e.srv.URL + path)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && err == nil {
				t.Error("HTTP/1.1 client got a clean end of a truncated zip")
			}
		}
	})
	t.Run("whole", func(t *testing.T) {
		up := unsizedUpstream(t, zip, 0)
		e := newEnv(t, up.URL, func(c *Config) { c.HoldBackBytes, c.HoldBackTime = 1<<10, 10*time.Millisecond })
		status, hdr, body, rerr := http10Get(t, e.srv.URL, path)
		if status != 200 || rerr != nil || string(body) != string(zip) {
			t.Fatalf("HTTP/1.0: %d, %d of %d bytes, err %v", status, len(body), len(zip), rerr)
		}
		if hdr.Get("Content-Length") == "" {
			t.Error("HTTP/1.0 answer after commit has no Content-Length")
		}
	})
}

// fakeDisk is a DiskFree seam whose free space the test sets.
type fakeDisk struct{ free atomic.Int64 }

func (d *fakeDisk) DiskFree(string) (uint64, error) { return uint64(d.free.Load()), nil }

// TestUnstoredZipBeforeFlightEnds: clients of a zip verified with no room
// in the store, asking before its download has ended (the first client,
// woken by the verification, and one arriving then), get the whole zip
// from the spool with the not-stored Warning. Following it as a stream
// gave them an empty 200.
func TestUnstoredZipBeforeFlightEnds(t *testing.T) {
	mod := bigTestModule("example.com/big", "v1.0.0", 200<<10)
	up := newUpstream(t, mod)
	zip := up.Zip(mod.Path, mod.Version)
	disk := &fakeDisk{}
	disk.free.Store(1<<20 + int64(len(zip)) + int64(len(zip))/32) // room for the spool, not for the store
	released, hold := make(chan struct{}), make(chan struct{})
	e := newEnv(t, up.URL(), func(c *Config) {
		c.DiskFree, c.MinFreeSpace = disk.DiskFree, 1<<20
		c.afterRelease = func(Request) {
			close(released)
			<-hold
		}
	})
	const path = "/example.com/big/@v/v1.0.0.zip"
	first := make(chan response, 1)
	go func() {
		// Not e.get: its Fatal must not run off the test's goroutine.
		resp, err := e.srv.Client().Get(e.srv.URL + path)
		if err != nil {
			first <- response{body: err.Error()}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			b = []byte(err.Error())
		}
		first <- response{resp.StatusCode, string(b), resp.Header}
	}()
	<-released
	for i, r := range []response{e.get(path), <-first} {
		if r.status != 200 || r.body != string(zip) {
			t.Errorf("client %d while the download had not ended: %d, %d of %d bytes", i, r.status, len(r.body), len(zip))
		}
		if !strings.Contains(r.header.Get("Warning"), "not stored") {
			t.Errorf("client %d: Warning = %q, want the not-stored warning", i, r.header.Get("Warning"))
		}
	}
	close(hold)
}

// TestFullDiskPassesThroughUnstored: with no room on the store's disk a
// verified miss is served unstored (Warning, counted), /readyz answers 503
// with the reason, and both recover when space is freed.
func TestFullDiskPassesThroughUnstored(t *testing.T) {
	mod := bigTestModule("example.com/big", "v1.0.0", 200<<10)
	up := newUpstream(t, mod)
	m := NewMetrics(nil)
	disk := &fakeDisk{}
	disk.free.Store(1 << 40)
	e := newEnv(t, up.URL(), func(c *Config) { c.Metrics, c.DiskFree, c.MinFreeSpace = m, disk.DiskFree, 1<<20 })
	e.mustGet("/readyz", 200)

	zipLen := int64(len(up.Zip(mod.Path, mod.Version)))
	disk.free.Store(1<<20 + zipLen + zipLen/32) // room for the spool, not for the store
	const path = "/example.com/big/@v/v1.0.0.zip"
	r := e.mustGet(path, 200)
	if r.body != string(up.Zip(mod.Path, mod.Version)) {
		t.Fatalf("unstored zip differs from upstream's: %d bytes, want %d, status %d, headers %v", len(r.body), zipLen, r.status, r.header)
	}
	if !strings.Contains(r.header.Get("Warning"), "not stored") {
		t.Errorf("Warning = %q, want the not-stored warning", r.header.Get("Warning"))
	}
	if _, err := e.store.Stat(cache.Key{Path: mod.Path, Version: mod.Version, Kind: cache.KindZip}); err == nil {
		t.Error("zip stored although the disk had no room")
	}
	if got := value(m.servedUnstored.WithLabelValues("zip")); got != 1 {
		t.Errorf("served_unstored{zip} = %v, want 1", got)
	}
	if len(spoolFiles(t, e.f.cfg.SpoolDir)) != 0 {
		t.Error("the unstored zip's spool file was left behind")
	}
	disk.free.Store(100 << 10) // below MinFreeSpace
	r = e.get("/readyz")
	if r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "disk full") {
		t.Errorf("/readyz on a full disk: %d %q, want 503 with the reason", r.status, r.body)
	}
	disk.free.Store(1 << 40)
	e.mustGet("/readyz", 200)
	r = e.mustGet(path, 200)
	if r.header.Get("Warning") != "" {
		t.Errorf("Warning after space was freed: %q", r.header.Get("Warning"))
	}
	waitFlights(t, e.f)
	if _, err := e.store.Stat(cache.Key{Path: mod.Path, Version: mod.Version, Kind: cache.KindZip}); err != nil {
		t.Errorf("zip not stored after space was freed: %v", err)
	}
}

// TestNoSpaceErrorIsNot500: an error that is the disk running out of space
// reaches the client as 507 with its reason, not "500 internal error".
func TestNoSpaceErrorIsNot500(t *testing.T) {
	s := &Server{log: slog.New(slog.DiscardHandler)}
	w := httptest.NewRecorder()
	s.fail(w, fmt.Errorf("store x: %w", &os.PathError{Op: "write", Path: "modproxy.db", Err: syscall.ENOSPC}))
	if w.Code != http.StatusInsufficientStorage || !strings.Contains(w.Body.String(), "no space left") {
		t.Errorf("got %d %q, want 507 with the reason", w.Code, w.Body.String())
	}
}

// TestLeftoverSpoolRemovedAtStart: spool files nobody holds (a crash) are
// removed when a Fetcher starts; one a live process holds is kept.
func TestLeftoverSpoolRemovedAtStart(t *testing.T) {
	dir := t.TempDir()
	dead := filepath.Join(dir, spoolPrefix+"123456")
	if err := os.WriteFile(dead, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	live, err := os.CreateTemp(dir, spoolPrefix+"*")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if held, err := lockSpool(live); err != nil || !held {
		t.Skipf("file locks unavailable here (%v): cannot tell live spool files", err)
	}
	other := filepath.Join(dir, "unrelated-file")
	os.WriteFile(other, []byte("x"), 0o600)
	newEnv(t, "http://127.0.0.1:1", func(c *Config) { c.SpoolDir = dir })
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("leftover spool file still there (%v)", err)
	}
	if _, err := os.Stat(live.Name()); err != nil {
		t.Errorf("a live process's spool file was removed: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("an unrelated file was removed: %v", err)
	}
}

// TestQueuedZipLeftByItsClientNeverStarts: a download waiting for a slot
// whose every client left leaves the queue and never reaches the upstream.
func TestQueuedZipLeftByItsClientNeverStarts(t *testing.T) {
	up := newUpstream(t, testupstream.Module{Path: "example.com/a", Version: "v1.0.0"}, testupstream.Module{Path: "example.com/b", Version: "v1.0.0"})
	up.SetFaults(testupstream.Fault{Match: func(p string) bool { return p == "/example.com/a/@v/v1.0.0.zip" }, Delay: 2 * time.Second})
	m := NewMetrics(nil)
	e := newEnv(t, up.URL(), func(c *Config) { c.MaxZipDownloads, c.Metrics = 1, m })
	aDone := make(chan response, 1)
	go func() { aDone <- e.get("/example.com/a/@v/v1.0.0.zip") }()
	waitFor(t, "download a to hold the slot", func() bool { return value(m.zipInFlight) == 1 })

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/example.com/b/@v/v1.0.0.zip", nil)
	bDone := make(chan struct{})
	go func() {
		defer close(bDone)
		if resp, err := e.srv.Client().Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, "download b to queue", func() bool { return value(m.zipQueued) == 1 })
	cancel()
	<-bDone
	waitFor(t, "download b to leave the queue", func() bool { return value(m.zipQueued) == 0 && value(m.zipCanceled) == 1 })
	if r := <-aDone; r.status != 200 {
		t.Fatalf("download a: %d %q", r.status, r.body)
	}
	if n := up.Count("/example.com/b/@v/v1.0.0.zip"); n != 0 {
		t.Errorf("the abandoned queued download reached the upstream %d times", n)
	}
}
