package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

// TestReplicaFigures measures warm zip requests through one replica with
// its local tier hot, and with it cold (every request an S3 read: a
// --cache-size smaller than one zip). It only logs figures (timing on a
// shared machine is noise for a pass/fail): run it with MODPROXY_FIGURES=1
// go test -run TestReplicaFigures -v ./cmd/modproxy/.
func TestReplicaFigures(t *testing.T) {
	if os.Getenv("MODPROXY_FIGURES") != "1" {
		t.Skip("figures only: set MODPROXY_FIGURES=1")
	}
	const nmods, zipKB = 8, 256
	var mods []testupstream.Module
	for i := range nmods {
		rnd := make([]byte, zipKB<<10*3/4)
		rand.Read(rnd)
		p := fmt.Sprintf("example.com/fig%d", i)
		mods = append(mods, testupstream.Module{Path: p, Version: "v1.0.0", Files: map[string]string{
			"go.mod": "module " + p + "\n\ngo 1.21\n", "data.txt": base64.StdEncoding.EncodeToString(rnd)}})
	}
	up, db := startUniverse(t, mods)
	rs := newReplicaSet(t, up, db)
	a := rs.start(up.URL(), "--log-level", "warn")
	paths := make([]string, nmods)
	for i, m := range mods {
		paths[i] = "/" + m.Path + "/@v/" + m.Version + ".zip"
		mustGet200(t, a.URL+paths[i])
	}
	hot := rs.start("off", "--log-level", "warn")
	cold := rs.start("off", "--log-level", "warn", "--cache-size", "1")
	for _, p := range paths {
		mustGet200(t, hot.URL+p) // fills hot's local tier
	}
	for _, c := range []struct {
		name string
		p    *proc
	}{{"local tier hot", hot}, {"local tier cold (S3 hit)", cold}} {
		n, p50, p99 := load(t, c.p.URL, paths, 8, 5*time.Second)
		_, metrics := c.p.get(t, "/metrics")
		t.Logf("%s: %d-KiB zips, 8 clients: %.0f req/s, p50 %v, p99 %v; %s", c.name, zipKB, n, p50, p99, tierLine(metrics))
	}
}

func mustGet200(t *testing.T, u string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", u, resp.Status)
	}
}

// load runs clients requesting paths round robin for d and returns req/s,
// p50 and p99.
func load(t *testing.T, base string, paths []string, clients int, d time.Duration) (float64, time.Duration, time.Duration) {
	var (
		mu   sync.Mutex
		lats []time.Duration
		wg   sync.WaitGroup
	)
	tr := &http.Transport{MaxIdleConnsPerHost: clients}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	end := time.Now().Add(d)
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for i := w; time.Now().Before(end); i++ {
				start := time.Now()
				resp, err := client.Get(base + paths[i%len(paths)])
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Errorf("%s: %s", paths[i%len(paths)], resp.Status)
					return
				}
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(lats)
	if len(lats) == 0 {
		t.Fatal("no request completed")
	}
	q := func(f float64) time.Duration {
		return lats[min(len(lats)-1, int(f*float64(len(lats))))].Round(10 * time.Microsecond)
	}
	return float64(len(lats)) / d.Seconds(), q(0.5), q(0.99)
}

func tierLine(metrics string) string {
	out := ""
	for _, tier := range []string{"local", "s3", "miss"} {
		out += fmt.Sprintf("%s reads %s ", tier, metricValue(metrics, `modproxy_store_tier_reads_total{tier="`+tier+`"}`))
	}
	return out
}

func metricValue(exposition, series string) string {
	for _, line := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return "?"
}
