package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// newClient returns a keep-alive HTTP/1.1 client for conns concurrent
// connections to one host.
func newClient(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        conns + 16,
		MaxIdleConnsPerHost: conns + 16,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		// Large reads for zips; the default 4 KiB costs client CPU that
		// the server then lacks on a small machine.
		ReadBufferSize: 64 << 10,
	}}
}

// loadResult is one load step, measured at the client and, when pid is
// set, in the server's CPU time.
type loadResult struct {
	Conc     int
	Requests int
	Errors   int
	FirstErr error
	Bytes    int64
	Elapsed  time.Duration
	Lat      []time.Duration // sorted
	CPU      time.Duration   // server user+system time in the window
}

func (r loadResult) perSec() float64 { return float64(r.Requests) / r.Elapsed.Seconds() }

// pct returns the p-th percentile latency (0 < p <= 100).
func (r loadResult) pct(p float64) time.Duration {
	if len(r.Lat) == 0 {
		return 0
	}
	i := int(float64(len(r.Lat))*p/100+0.5) - 1
	return r.Lat[min(max(i, 0), len(r.Lat)-1)]
}

// cpuPerReq is server CPU time per successful request.
func (r loadResult) cpuPerReq() time.Duration {
	if r.Requests == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Requests)
}

// fetch GETs url and reads the whole body into buf-sized pieces, checking
// status 200 and Content-Length. It returns the body size.
func fetch(ctx context.Context, c *http.Client, url string, buf []byte) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, fmt.Errorf("request %s: %w", url, err)
	}
	resp, err := c.Do(req)
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
			return n, fmt.Errorf("read %s: %w", url, err)
		}
	}
	if resp.StatusCode != http.StatusOK {
		return n, fmt.Errorf("GET %s: %w %s", url, errStatus, resp.Status)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, fmt.Errorf("GET %s: %d of %d bytes", url, n, resp.ContentLength)
	}
	return n, nil
}

// runLoad keeps conc clients busy GETting urls (each client walks the list
// from its own offset) for d, and measures the server pid's CPU time over
// the window (pid 0: not measured).
func runLoad(ctx context.Context, c *http.Client, urls []string, conc int, d time.Duration, pid int, bufSize int) (loadResult, error) {
	if len(urls) == 0 || conc <= 0 {
		return loadResult{}, errors.New("runLoad: no urls or clients")
	}
	type worker struct {
		lat    []time.Duration
		n, bad int
		bytes  int64
		err    error
	}
	ws := make([]worker, conc)
	start := make(chan struct{})
	var deadline time.Time
	var wg sync.WaitGroup
	for i := range ws {
		wg.Add(1)
		go func(w *worker, off int) {
			defer wg.Done()
			buf := make([]byte, bufSize)
			w.lat = make([]time.Duration, 0, 4096)
			<-start
			for j := off; ctx.Err() == nil; j++ {
				t0 := time.Now()
				if !t0.Before(deadline) {
					return
				}
				n, err := fetch(ctx, c, urls[j%len(urls)], buf)
				w.bytes += n
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					w.bad++
					if w.err == nil {
						w.err = err
					}
					continue
				}
				w.lat = append(w.lat, time.Since(t0))
				w.n++
			}
		}(&ws[i], i*len(urls)/conc)
	}
	var cpu0 time.Duration
	if pid != 0 {
		var err error
		if cpu0, err = cpuTime(pid); err != nil {
			deadline = time.Now()
			close(start)
			wg.Wait()
			return loadResult{}, err
		}
	}
	t0 := time.Now()
	deadline = t0.Add(d)
	close(start)
	wg.Wait()
	r := loadResult{Conc: conc, Elapsed: time.Since(t0)}
	if pid != 0 {
		cpu1, err := cpuTime(pid)
		if err != nil {
			return loadResult{}, err
		}
		r.CPU = cpu1 - cpu0
	}
	for _, w := range ws {
		r.Requests += w.n
		r.Errors += w.bad
		r.Bytes += w.bytes
		r.Lat = append(r.Lat, w.lat...)
		if r.FirstErr == nil {
			r.FirstErr = w.err
		}
	}
	slices.Sort(r.Lat)
	if err := ctx.Err(); err != nil {
		return r, err
	}
	return r, nil
}
