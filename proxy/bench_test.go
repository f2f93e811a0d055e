package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modproxy/modproxy/cache"
	"github.com/modproxy/modproxy/internal/testupstream"
	"github.com/modproxy/modproxy/netprobe"
)

// The benchmarks serve warm artifacts (already in the store) the way
// "modproxy serve" does: request logging through a text slog handler
// (to io.Discard) and metrics in a Prometheus registry. Profile with e.g.
//
//	go test -run '^$' -bench WarmInfo -cpuprofile cpu.out ./proxy/
//	go tool pprof -top proxy.test cpu.out

// benchServer is a Server over a fresh store, warmed with mods.
type benchServer struct {
	s     *Server
	f     *Fetcher
	store *cache.Store
	up    *testupstream.Server
}

func newBenchServer(b *testing.B, mods []testupstream.Module, exts ...string) (*benchServer, []string) {
	b.Helper()
	return newBenchServerWith(b, mods, nil, exts...)
}

// newBenchServerWith is newBenchServer with the Config adjusted by cfg.
func newBenchServerWith(b *testing.B, mods []testupstream.Module, cfg func(*Config), exts ...string) (*benchServer, []string) {
	b.Helper()
	up, err := testupstream.New(mods...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(up.Close)
	st, err := cache.Open(filepath.Join(b.TempDir(), "modproxy.db"), cache.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ups, err := ParseUpstreams(up.URL())
	if err != nil {
		b.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{}}
	c := Config{
		Store: st, Upstreams: ups, Client: client, SpoolDir: b.TempDir(),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Metrics: NewMetrics(prometheus.NewRegistry()),
	}
	if cfg != nil {
		cfg(&c)
	}
	f, err := NewFetcher(c)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		f.Close()
		client.CloseIdleConnections()
		if err := st.Close(); err != nil {
			b.Error(err)
		}
	})
	bs := &benchServer{s: NewServer(f, ServerOptions{}), f: f, store: st, up: up}
	var paths []string
	for _, m := range mods {
		for _, ext := range exts {
			paths = append(paths, fmt.Sprintf("/%s/@v/%s.%s", m.Path, m.Version, ext))
		}
	}
	for _, p := range paths { // fill the store
		w := httptest.NewRecorder()
		bs.s.ServeHTTP(w, httptest.NewRequest(http.MethodGet, p, nil))
		if w.Code != http.StatusOK {
			b.Fatalf("GET %s: %d %s", p, w.Code, w.Body)
		}
	}
	return bs, paths
}

func benchSmallModules(n int) []testupstream.Module {
	mods := make([]testupstream.Module, n)
	for i := range mods {
		mods[i] = testupstream.Module{
			Path: fmt.Sprintf("example.com/bench/m%03d", i), Version: "v1.0.0",
			Files: map[string]string{"m.go": fmt.Sprintf("package m%03d\n", i)},
		}
	}
	return mods
}

// BenchmarkWarmInfo measures the handler alone: ServeHTTP into a recorder.
func BenchmarkWarmInfo(b *testing.B) {
	bs, paths := newBenchServer(b, benchSmallModules(100), "info", "mod")
	serveWarm(b, bs, paths)
}

// serveWarm runs ServeHTTP into recorders over paths, round robin.
func serveWarm(b *testing.B, bs *benchServer, paths []string) {
	reqs := make([]*http.Request, len(paths))
	for i, p := range paths {
		reqs[i] = httptest.NewRequest(http.MethodGet, p, nil)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		w := httptest.NewRecorder()
		bs.s.ServeHTTP(w, reqs[i%len(reqs)])
		if w.Code != http.StatusOK {
			b.Fatalf("status %d", w.Code)
		}
	}
}

// BenchmarkWarmInfoTelemetry compares warm hits with the network layer's
// telemetry (netprobe's instrumented client and health scorer) against a
// plain client and no health: warm hits never reach the upstream path, so
// the ratio should be 1 within noise.
//
//	go test -run '^$' -bench WarmInfoTelemetry -count 6 ./proxy/ | benchstat -col /telemetry -
func BenchmarkWarmInfoTelemetry(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("telemetry=%v", on), func(b *testing.B) {
			bs, paths := newBenchServerWith(b, benchSmallModules(100), func(c *Config) {
				if !on {
					return
				}
				p, err := netprobe.New(netprobe.Config{Upstreams: URLs(c.Upstreams), Registerer: prometheus.NewRegistry()})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { p.Close() })
				c.Client, c.Health = p.Client(), p.Health()
			}, "info", "mod")
			serveWarm(b, bs, paths)
		})
	}
}

// BenchmarkWarmInfoLoopback adds net/http's server and a keep-alive
// client over loopback (the client's CPU is included in the profile).
func BenchmarkWarmInfoLoopback(b *testing.B) {
	bs, paths := newBenchServer(b, benchSmallModules(100), "info", "mod")
	srv := httptest.NewServer(bs.s)
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 4<<10)
		i := rand.IntN(len(paths))
		for pb.Next() {
			i++
			if _, err := getAll(c, srv.URL+paths[i%len(paths)], buf); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkWarmZip serves 8 MB stored zips over loopback to 8 parallel
// keep-alive clients; throughput is reported as MB/s.
func BenchmarkWarmZip(b *testing.B) {
	var mods []testupstream.Module
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 4 {
		files := map[string]string{"z.go": "package z\n"}
		for j := range 4 {
			var sb strings.Builder
			for sb.Len() < 2<<20 {
				fmt.Fprintf(&sb, "%016x", r.Uint64())
			}
			files[fmt.Sprintf("data/f%d.txt", j)] = sb.String()
		}
		mods = append(mods, testupstream.Module{Path: fmt.Sprintf("example.com/bench/z%d", i), Version: "v1.0.0", Files: files})
	}
	bs, paths := newBenchServer(b, mods, "zip")
	size := int64(len(bs.up.Zip(mods[0].Path, "v1.0.0")))
	srv := httptest.NewServer(bs.s)
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true, ReadBufferSize: 64 << 10}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	b.SetBytes(size)
	b.SetParallelism(4) // 8 clients on 2 CPUs
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 256<<10)
		i := rand.IntN(len(paths))
		for pb.Next() {
			i++
			n, err := getAll(c, srv.URL+paths[i%len(paths)], buf)
			if err != nil || n < size/2 {
				b.Errorf("%d bytes, %v", n, err)
				return
			}
		}
	})
}

// getAll GETs url and reads the body through buf, returning its length;
// a status other than 200 is an error.
func getAll(c *http.Client, url string, buf []byte) (int64, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var n int64
	for {
		m, err := resp.Body.Read(buf)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, err
		}
	}
	if resp.StatusCode != http.StatusOK {
		return n, fmt.Errorf("status %d", resp.StatusCode)
	}
	return n, nil
}
