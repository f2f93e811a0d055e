package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modproxy/modproxy/bpf"
	"github.com/modproxy/modproxy/deploy"
	"github.com/modproxy/modproxy/heatmap/heatmaptest"
	"github.com/modproxy/modproxy/internal/testsumdb"
)

// TestDeployedTelemetryEndToEnd drives go command traffic through modproxy,
// scrapes it with a real Prometheus using the shipped configuration and
// rules, checks every metric the rules and dashboard use, and looks at the
// heatmap page in a real browser.
func TestDeployedTelemetryEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	// A TLS upstream reached by name through modproxy's resolver, so that
	// every phase (dns, connect, tls, ttfb, transfer) is exercised.
	up, upstream, dnsAddr := startTLSUpstream(t)
	db := testsumdb.New(t, "sum.modproxy.test")
	for _, m := range up.Modules() {
		db.AddModule(m.Path, m.Version, up.GoMod(m.Path, m.Version), up.Zip(m.Path, m.Version))
	}
	ebpfMode := "--ebpf=auto"
	kernel := bpf.Available() == nil
	if !kernel && os.Getenv("MODPROXY_REQUIRE_EBPF") == "1" {
		t.Fatalf("eBPF required (MODPROXY_REQUIRE_EBPF=1) but unavailable: %v", bpf.Available())
	}
	mp := startModproxy(t, ebpfMode, "--db", filepath.Join(t.TempDir(), "modproxy.db"), "--upstream", upstream,
		"--dns-server", dnsAddr,
		"--sumdb", db.VerifierKey()+" "+db.URL(), "--private", "", "--nosumdb", "", "--list-ttl", "1s",
		"--dns-min-ttl", "0s", "--dns-max-ttl", "1s")

	prom := startPrometheus(t, strings.TrimPrefix(mp.URL, "http://"))
	project := writeProject(t)
	newGoEnv(t, mp.URL, db).run(project, "mod", "download")
	// Keep upstream traffic flowing (list answers and DNS answers expire
	// after 1s, and the upstream drops its connections), so that rate()
	// over the scrapes sees every phase's counters move.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			up.CloseClientConnections()
			for _, m := range []string{"example.com/lib/v2", "example.com/dep", "github.com/!upper/!case"} {
				if resp, err := http.Get(mp.URL + "/" + m + "/@v/list"); err == nil {
					resp.Body.Close()
				}
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	// Every metric the shipped rules and dashboard use is exposed.
	_, exposition := mp.get(t, "/metrics")
	names, err := deploy.MetricNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if !kernel && kernelOnly[n] {
			continue // exported only while the eBPF probes are attached
		}
		if !strings.Contains(exposition, "\n# TYPE "+n+" ") {
			t.Errorf("deploy/ uses %s, which modproxy does not expose", n)
		}
	}

	// The recording rules produce per-phase quantiles.
	q := "upstream_phase_source:modproxy_upstream_phase_seconds:p99"
	var got map[string]float64
	promPhases := []string{"dns/userspace", "connect/userspace", "tls/userspace", "ttfb/userspace", "transfer/userspace", "total/userspace"}
	// Wait for every phase checked below, not some: the rule evaluations
	// that give each its first value need not come together. The bound is a
	// hang guard.
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		got = prom.query(t, q)
		if !slices.ContainsFunc(promPhases, func(ph string) bool { v, ok := got[ph]; return !ok || math.IsNaN(v) || v <= 0 }) {
			break
		}
		time.Sleep(time.Second)
	}
	for _, phase := range promPhases {
		v, ok := got[phase]
		if !ok || math.IsNaN(v) || v <= 0 || v > 60 {
			t.Errorf("Prometheus %s for %s = %v (have %v)", q, phase, v, got)
		}
	}

	// The heatmap page shows cells for the phases the traffic went through.
	ctx := heatmaptest.Browser(t)
	page := heatmaptest.Load(t, ctx, mp.URL+"/debug/heatmap", "heatmap-e2e")
	phases := []string{"dns/userspace", "connect/userspace", "tls/userspace", "ttfb/userspace", "transfer/userspace"}
	if kernel {
		phases = append(phases, "connect/kernel", "tls/kernel")
	}
	heatmaptest.RequirePhases(t, page, upstream, phases...)
}

// kernelOnly are the metrics exported only while eBPF probes are attached.
var kernelOnly = map[string]bool{"modproxy_tcp_retransmits_total": true}

type promServer struct {
	url string
}

// startPrometheus runs the Debian-packaged Prometheus with the shipped
// configuration and rules, pointed at target and scraping every second.
func startPrometheus(t *testing.T, target string) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("MODPROXY_REQUIRE_TOOLS") == "1" {
			t.Fatal("prometheus not installed (MODPROXY_REQUIRE_TOOLS=1)")
		}
		t.Skip("prometheus not installed (apt-get install prometheus)")
	}
	dir := t.TempDir()
	cfg, err := os.ReadFile(filepath.Join("..", "..", "deploy", "prometheus", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(cfg)
	for old, repl := range map[string]string{
		`"localhost:8080"`:         strconv.Quote(target),
		"scrape_interval: 15s":     "scrape_interval: 1s",
		"evaluation_interval: 30s": "evaluation_interval: 1s",
	} {
		if !strings.Contains(s, old) {
			t.Fatalf("shipped prometheus.yml no longer contains %q", old)
		}
		s = strings.Replace(s, old, repl, 1)
	}
	rules, err := os.ReadFile(filepath.Join("..", "..", "deploy", "prometheus", "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	// Evaluate the recording rules every second too.
	rules = []byte(strings.ReplaceAll(string(rules), "interval: 30s", "interval: 1s"))
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(s), 0o644)
	os.WriteFile(filepath.Join(dir, "rules.yml"), rules, 0o644)
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs)
		}
	})
	p := &promServer{url: "http://" + addr}
	// Wait for the first scrape, so that the traffic lands between samples.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if v := p.query(t, "up"); v[""] == 1 {
			return p
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("prometheus never scraped %s\n%s", target, logs)
	return nil
}

// query runs an instant query and returns the values by "phase/source"
// (or "" for series without those labels). Errors before Prometheus is
// ready return nothing.
func (p *promServer) query(t *testing.T, q string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(p.url + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var r struct {
		Status string
		Data   struct {
			Result []struct {
				Metric map[string]string
				Value  [2]any
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" {
		return nil
	}
	out := map[string]float64{}
	for _, s := range r.Data.Result {
		key := ""
		if s.Metric["phase"] != "" {
			key = s.Metric["phase"] + "/" + s.Metric["source"]
		}
		v, err := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
		if err == nil && !math.IsNaN(v) {
			out[key] = math.Max(out[key], v)
		}
	}
	return out
}
