package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

// Targets from the issue.
const (
	targetMetaCPU    = 40 * time.Microsecond // server CPU per warm .info/.mod request
	targetMetaP99    = 10 * time.Millisecond // at concurrency 64
	targetZipMBps    = 1000                  // warm zips, MB/s
	targetZipCPUPerG = 0.3                   // server CPU seconds per GB of warm zips
)

func init() {
	register(scenario{
		Name: "warm-meta", Order: 10, Timeout: 90 * time.Second,
		Desc: "warm .info/.mod at concurrency 1, 16, 64",
		Run:  runWarmMeta,
	})
	register(scenario{
		Name: "warm-zip", Order: 20, Timeout: 60 * time.Second,
		Desc: "warm zips (4 x 8 MB) at concurrency 8",
		Run:  runWarmZip,
	})
}

// fill fetches every url once with conc clients (store misses), so that
// the measured steps see a warm store.
func fill(ctx context.Context, env *Env, urls []string, conc int) error {
	c := newClient(conc)
	defer c.CloseIdleConnections()
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	next := make(chan string)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for u := range next {
				if _, err := fetch(ctx, c, u, buf); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, u := range urls {
		select {
		case next <- u:
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	if first != nil {
		return fmt.Errorf("fill the store: %w", first)
	}
	return nil
}

func runWarmMeta(ctx context.Context, env *Env) ([]Result, error) {
	mods := smallModules("example.com/bench/warm", 100)
	up, err := env.Upstream(mods...)
	if err != nil {
		return nil, err
	}
	srv, err := env.StartServer(ctx, up.URL())
	if err != nil {
		return nil, err
	}
	urls := artifactURLs(srv.URL, mods, "info", "mod")
	if err := fill(ctx, env, urls, 8); err != nil {
		return nil, err
	}
	c := newClient(64)
	defer c.CloseIdleConnections()
	if _, err := runLoad(ctx, c, urls, 16, env.Opts.warmup, 0, 4<<10); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	before := up.Count("/@v/")
	var res []Result
	for _, conc := range []int{1, 16, 64} {
		r, err := runLoad(ctx, c, urls, conc, env.Opts.duration, srv.Pid, 4<<10)
		if err != nil {
			return res, fmt.Errorf("concurrency %d: %w", conc, err)
		}
		if r.Errors > 0 {
			return res, fmt.Errorf("concurrency %d: %d of %d requests failed, first: %w", conc, r.Errors, r.Errors+r.Requests, r.FirstErr)
		}
		if err := srv.Alive(); err != nil {
			return res, err
		}
		fmt.Fprintf(os.Stderr, "   c=%-3d %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  server CPU %5.1f µs/req\n",
			conc, r.perSec(), ms(r.pct(50)), ms(r.pct(99)), us(r.cpuPerReq()))
		cpu := Result{Metric: fmt.Sprintf("server CPU per request, c=%d", conc), Value: us(r.cpuPerReq()), Unit: "µs"}
		p99 := Result{Metric: fmt.Sprintf("p99 latency, c=%d", conc), Value: ms(r.pct(99)), Unit: "ms"}
		if conc == 64 {
			cpu.Target = atMost(us(targetMetaCPU))
			p99.Target = atMost(ms(targetMetaP99))
		}
		res = append(res,
			Result{Metric: fmt.Sprintf("throughput, c=%d", conc), Value: r.perSec(), Unit: "req/s",
				Note: fmt.Sprintf("%d requests in %s", r.Requests, r.Elapsed.Round(time.Millisecond))},
			Result{Metric: fmt.Sprintf("p50 latency, c=%d", conc), Value: ms(r.pct(50)), Unit: "ms"},
			p99, cpu,
		)
	}
	if n := up.Count("/@v/") - before; n > 0 {
		return res, fmt.Errorf("%d upstream requests during the warm steps: the store was not warm", n)
	}
	return res, nil
}

func runWarmZip(ctx context.Context, env *Env) ([]Result, error) {
	var mods []testupstream.Module
	for i := range 4 {
		mods = append(mods, bigModule(fmt.Sprintf("example.com/bench/zip/z%d", i), 8<<20, 2<<20, uint64(i+1)))
	}
	up, err := env.Upstream(mods...)
	if err != nil {
		return nil, err
	}
	srv, err := env.StartServer(ctx, up.URL())
	if err != nil {
		return nil, err
	}
	urls := artifactURLs(srv.URL, mods, "zip")
	if err := fill(ctx, env, urls, 4); err != nil {
		return nil, err
	}
	const conc = 8
	c := newClient(conc)
	defer c.CloseIdleConnections()
	if _, err := runLoad(ctx, c, urls, conc, env.Opts.warmup, 0, 256<<10); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	r, err := runLoad(ctx, c, urls, conc, env.Opts.duration, srv.Pid, 256<<10)
	if err != nil {
		return nil, err
	}
	if r.Errors > 0 {
		return nil, fmt.Errorf("%d of %d downloads failed, first: %w", r.Errors, r.Errors+r.Requests, r.FirstErr)
	}
	if err := srv.Alive(); err != nil {
		return nil, err
	}
	mbps := float64(r.Bytes) / 1e6 / r.Elapsed.Seconds()
	cpuPerGB := r.CPU.Seconds() / (float64(r.Bytes) / 1e9)
	fmt.Fprintf(os.Stderr, "   c=%d %8.0f MB/s  server CPU %.3f s/GB  (%d zips, p50 %.1f ms)\n", conc, mbps, cpuPerGB, r.Requests, ms(r.pct(50)))
	return []Result{
		{Metric: "throughput, c=8", Value: mbps, Unit: "MB/s", Target: atLeast(targetZipMBps),
			Note: fmt.Sprintf("%d zips, %.0f MB in %s", r.Requests, float64(r.Bytes)/1e6, r.Elapsed.Round(time.Millisecond))},
		{Metric: "server CPU per GB, c=8", Value: cpuPerGB, Unit: "s/GB", Target: atMost(targetZipCPUPerG)},
		{Metric: "p50 latency per 8 MB zip, c=8", Value: ms(r.pct(50)), Unit: "ms"},
	}, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
