package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

const targetRSS = 150e6 // bytes, while 8 clients download a 100 MB zip

func init() {
	register(scenario{
		Name: "rss", Order: 30, Timeout: 90 * time.Second,
		Desc: "server peak RSS while 8 clients download a big zip, cold then warm",
		Run:  runRSS,
	})
}

// rssPhase is one round of concurrent downloads of the same zip.
type rssPhase struct {
	peak, peakAnon, peakFile int64
	took                     time.Duration
	cpu                      time.Duration
	bytes                    int64
}

// downloadAll has n clients GET url at once and measures the server's
// peak RSS meanwhile: VmHWM after resetting it, and the maxima of VmRSS
// sampled every 50 ms (which also splits anonymous from file-backed
// memory: bbolt's mmap shows up as the latter).
func downloadAll(ctx context.Context, srv *Server, url string, n int) (rssPhase, error) {
	hwmOK := resetHWM(srv.Pid) == nil
	s := sampleRSS(srv.Pid, 50*time.Millisecond)
	cpu0, err := cpuTime(srv.Pid)
	if err != nil {
		s.stop()
		return rssPhase{}, err
	}
	c := newClient(n)
	defer c.CloseIdleConnections()
	start := time.Now()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		errs  []error
		total int64
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := fetch(ctx, c, url, make([]byte, 256<<10))
			mu.Lock()
			total += got
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	p := rssPhase{took: time.Since(start), bytes: total}
	cpu1, cerr := cpuTime(srv.Pid)
	m := s.stop()
	final, merr := readMem(srv.Pid)
	if err := errors.Join(append(errs, cerr, merr)...); err != nil {
		return p, err
	}
	p.cpu = cpu1 - cpu0
	p.peak, p.peakAnon, p.peakFile = max(m.RSS, final.RSS), m.RSSAnon, m.RSSFile
	if hwmOK {
		p.peak = max(p.peak, final.HWM)
	}
	return p, nil
}

func runRSS(ctx context.Context, env *Env) ([]Result, error) {
	size := env.Opts.bigZipMB * 1e6
	t0 := time.Now()
	mod := bigModule("example.com/bench/big", size, 2<<20, 42)
	up, err := env.Upstream(mod)
	if err != nil {
		return nil, err
	}
	zipLen := len(up.Zip(mod.Path, mod.Version))
	fmt.Fprintf(os.Stderr, "   built a %.0f MB zip in %s\n", float64(zipLen)/1e6, time.Since(t0).Round(100*time.Millisecond))
	srv, err := env.StartServer(ctx, up.URL())
	if err != nil {
		return nil, err
	}
	idle, err := readMem(srv.Pid)
	if err != nil {
		return nil, err
	}
	url := artifactURLs(srv.URL, []testupstream.Module{mod}, "zip")[0]
	const clients = 8
	var res []Result
	for _, phase := range []string{"cold", "warm"} {
		p, err := downloadAll(ctx, srv, url, clients)
		if err != nil {
			return res, fmt.Errorf("%s downloads: %w", phase, err)
		}
		if want := int64(clients * zipLen); p.bytes != want {
			return res, fmt.Errorf("%s downloads: got %d bytes, want %d", phase, p.bytes, want)
		}
		fmt.Fprintf(os.Stderr, "   %s: peak RSS %.0f MB (anon %.0f, file %.0f), %d x %.0f MB in %s, server CPU %.2f s\n",
			phase, float64(p.peak)/1e6, float64(p.peakAnon)/1e6, float64(p.peakFile)/1e6,
			clients, float64(zipLen)/1e6, p.took.Round(time.Millisecond), p.cpu.Seconds())
		res = append(res,
			Result{Metric: fmt.Sprintf("peak RSS, 8 clients, %s", phase), Value: float64(p.peak) / 1e6, Unit: "MB",
				Target: atMost(targetRSS / 1e6),
				Note:   fmt.Sprintf("sampled max anon %.0f MB + file %.0f MB", float64(p.peakAnon)/1e6, float64(p.peakFile)/1e6)},
			Result{Metric: fmt.Sprintf("8 x %.0f MB downloads, %s", float64(zipLen)/1e6, phase), Value: p.took.Seconds(), Unit: "s",
				Note: fmt.Sprintf("server CPU %.2f s", p.cpu.Seconds())},
		)
	}
	res = append([]Result{{Metric: "idle RSS after start", Value: float64(idle.RSS) / 1e6, Unit: "MB"}}, res...)
	return res, nil
}
