package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

func init() {
	register(scenario{
		Name: "disconnect", Order: 35, Timeout: 2 * time.Minute,
		Desc: "50 clients each ask for a different 100 MB zip and disconnect: server peak RSS and spool bytes",
		Run:  runDisconnect,
	})
}

// scrape reads the values of the named unlabelled (or summed) series from
// a server's /metrics.
func scrape(c *http.Client, base string, names ...string) (map[string]float64, error) {
	resp, err := c.Get(base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, n := range names {
			sel, _, _ := strings.Cut(n, "{") // name, or name{labels} to match a prefix
			if !strings.HasPrefix(line, n) || len(line) <= len(sel) {
				continue
			}
			if i := strings.LastIndexByte(line, ' '); i > 0 {
				if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
					out[n] += v
				}
			}
		}
	}
	return out, sc.Err()
}

// spoolOnDisk is the space the spool files in dir take.
func spoolOnDisk(dir string) int64 {
	m, _ := filepath.Glob(filepath.Join(dir, "modproxy-zip-*"))
	var n int64
	for _, f := range m {
		if fi, err := os.Stat(f); err == nil {
			n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
	}
	return n
}

func runDisconnect(ctx context.Context, env *Env) ([]Result, error) {
	const clients = 50
	const readBeforeLeaving = 1 << 20
	size := int64(env.Opts.bigZipMB) * 1e6
	up, err := env.Upstream()
	if err != nil {
		return nil, err
	}
	// 50 different zips of 100 MB, generated as they are sent.
	up.SetFaults(testupstream.Fault{Match: func(p string) bool { return strings.HasSuffix(p, ".zip") }, Synthetic: size})
	srv, err := env.StartServer(ctx, up.URL())
	if err != nil {
		return nil, err
	}
	spoolDir := filepath.Join(filepath.Dir(srv.DB), "spool")
	mc := &http.Client{Timeout: 2 * time.Second}
	const (
		mSpool    = "modproxy_spool_bytes"
		mInFlight = "modproxy_zip_downloads_in_flight"
		mQueued   = "modproxy_zip_downloads_queued"
		mCanceled = "modproxy_zip_downloads_canceled_total"
		mUpBytes  = `modproxy_upstream_bytes_total{kind="zip"`
	)

	hwmOK := resetHWM(srv.Pid) == nil
	rss := sampleRSS(srv.Pid, 20*time.Millisecond)
	var (
		peakMu                                        sync.Mutex
		peakDisk, peakSpool, peakInFlight, peakQueued float64
	)
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			d := float64(spoolOnDisk(spoolDir))
			m, _ := scrape(mc, srv.URL, mSpool, mInFlight, mQueued)
			peakMu.Lock()
			peakDisk, peakSpool = max(peakDisk, d), max(peakSpool, m[mSpool])
			peakInFlight, peakQueued = max(peakInFlight, m[mInFlight]), max(peakQueued, m[mQueued])
			peakMu.Unlock()
			select {
			case <-stopSampling:
				return
			case <-t.C:
			}
		}
	}()

	c := newClient(clients)
	defer c.CloseIdleConnections()
	start := time.Now()
	var wg sync.WaitGroup
	var got sync.Map
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel() // disconnect
			url := fmt.Sprintf("%s/example.com/big/@v/v1.0.%d.zip", srv.URL, i)
			req, _ := http.NewRequestWithContext(cctx, http.MethodGet, url, nil)
			resp, err := c.Do(req)
			if err != nil {
				got.Store(i, "error: "+err.Error())
				return
			}
			n, _ := io.CopyN(io.Discard, resp.Body, readBeforeLeaving)
			got.Store(i, fmt.Sprintf("%d %d", resp.StatusCode, n))
			resp.Body.Close()
		}()
	}
	wg.Wait()
	left := time.Since(start)

	// Released: no spool file, no spool bytes, no download running.
	var released time.Duration
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := scrape(mc, srv.URL, mSpool, mInFlight, mQueued)
		if err == nil && m[mSpool] == 0 && m[mInFlight] == 0 && m[mQueued] == 0 && spoolOnDisk(spoolDir) == 0 {
			released = time.Since(start) - left
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			close(stopSampling)
			<-sampled
			rss.stop()
			return nil, fmt.Errorf("downloads not released 30 s after every client left: %v", m)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stopSampling)
	<-sampled
	mem := rss.stop()
	final, err := readMem(srv.Pid)
	if err != nil {
		return nil, err
	}
	peak := max(mem.RSS, final.RSS)
	if hwmOK {
		peak = max(peak, final.HWM)
	}
	m, err := scrape(mc, srv.URL, mCanceled, mUpBytes)
	if err != nil {
		return nil, err
	}
	statuses := map[string]int{}
	got.Range(func(_, v any) bool {
		s := v.(string)
		st, _, _ := strings.Cut(s, " ")
		statuses[st]++
		return true
	})
	fmt.Fprintf(os.Stderr, "   %d clients left after %s; released %s later; peak RSS %.0f MB; peak spool %.0f MB on disk (metric %.0f MB); peak in flight %.0f, queued %.0f; statuses %v\n",
		clients, left.Round(time.Millisecond), released.Round(time.Millisecond), float64(peak)/1e6, peakDisk/1e6, peakSpool/1e6, peakInFlight, peakQueued, statuses)
	requested := float64(clients) * float64(size)
	return []Result{
		{Metric: "peak RSS, 50 clients leave 50 different 100 MB zips", Value: float64(peak) / 1e6, Unit: "MB",
			Note: fmt.Sprintf("sampled max anon %.0f MB + file %.0f MB", float64(mem.RSSAnon)/1e6, float64(mem.RSSFile)/1e6)},
		{Metric: "peak spool bytes on disk", Value: peakDisk / 1e6, Unit: "MB",
			Note: fmt.Sprintf("modproxy_spool_bytes peak %.0f MB; %.0f downloads in flight, %.0f queued at most", peakSpool/1e6, peakInFlight, peakQueued)},
		{Metric: "upstream zip bytes downloaded", Value: m[mUpBytes] / 1e6, Unit: "MB",
			Note: fmt.Sprintf("of %.0f MB asked for; %.0f downloads cancelled", requested/1e6, m[mCanceled])},
		{Metric: "spool and slots released after the last client left", Value: released.Seconds(), Unit: "s"},
	}, nil
}
