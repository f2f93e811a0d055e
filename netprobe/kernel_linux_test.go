//go:build linux

package netprobe

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/modproxy/modproxy/bpf"
)

// These tests attach the eBPF programs to the test process's cgroup, which
// other processes (tests of other packages, say) may share; each Kernel
// only reports the sockets it registered, and the tests check that.
//
// Timings are checked against what load cannot break: a lower bound where
// the fake servers inject a delay, and, from above, the userspace interval
// that causally encloses the kernel's (the kernel sees a DNS query, SYN or
// ClientHello leave after userspace started the step, and the answer arrive
// before userspace returns from it). Load stretches both sides alike; no
// wall-clock window decides a test.

// requireKernel skips the test when the probes cannot run here, or fails it
// when MODPROXY_REQUIRE_EBPF=1.
func requireKernel(t testing.TB) {
	t.Helper()
	if err := KernelAvailable(); err != nil {
		if os.Getenv("MODPROXY_REQUIRE_EBPF") == "1" {
			t.Fatalf("eBPF required (MODPROXY_REQUIRE_EBPF=1) but unavailable: %v", err)
		}
		t.Skipf("eBPF unavailable: %v", err)
	}
}

// kernelTap records what the kernel telemetry saw.
type kernelTap struct {
	mu         sync.Mutex
	events     []bpf.Event
	registered map[uint64]bool
	phases     []phaseObs
}

type phaseObs struct {
	upstream, kind, phase, source string
	d                             time.Duration
}

func (c *kernelTap) samples(upstream, phase, source string) []phaseObs {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []phaseObs
	for _, o := range c.phases {
		if o.upstream == upstream && o.phase == phase && o.source == source {
			out = append(out, o)
		}
	}
	return out
}

// startKernel loads the probes, attaches them to p and taps them; cleanup
// closes them and checks that none of their programs stays attached.
func startKernel(t *testing.T, p *Probe, reg prometheus.Registerer) (*Kernel, *kernelTap) {
	t.Helper()
	requireKernel(t)
	tap := &kernelTap{registered: map[uint64]bool{}}
	k, err := NewKernel(KernelConfig{
		Registerer:   reg,
		PollInterval: 20 * time.Millisecond,
		tap: func(ev bpf.Event) {
			tap.mu.Lock()
			tap.events = append(tap.events, ev)
			tap.mu.Unlock()
		},
		onRegister: func(cookie uint64) {
			tap.mu.Lock()
			tap.registered[cookie] = true
			tap.mu.Unlock()
		},
	})
	if err != nil {
		t.Fatalf("NewKernel: %v", err)
	}
	p.AddPhaseObserver(func(upstream, kind, phase, source string, d time.Duration) {
		tap.mu.Lock()
		tap.phases = append(tap.phases, phaseObs{upstream, kind, phase, source, d})
		tap.mu.Unlock()
	})
	if err := k.Attach(p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := k.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		// Queried from the kernel (BPF_PROG_QUERY on the cgroup).
		if left, err := k.probes.Attached(); err != nil || len(left) != 0 {
			t.Errorf("programs %v still attached to %s after Close (%v)", left, k.CgroupPath(), err)
		}
		if p.kernel.Load() != nil {
			t.Error("Probe still has kernel telemetry after Close")
		}
		if st := k.Stats(); st.Dropped != 0 || st.ParseErrors != 0 {
			t.Errorf("stats %+v: want no drops or parse errors", st)
		}
	})
	return k, tap
}

func get(t *testing.T, c *http.Client, url string) (int, error) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

// atLeast checks that there are at least want samples, each no shorter
// than the injected delay lo, and logs them.
func atLeast(t *testing.T, what string, obs []phaseObs, want int, lo time.Duration) {
	t.Helper()
	if len(obs) < want {
		t.Errorf("%s: %d samples, want at least %d", what, len(obs), want)
	}
	for _, o := range obs {
		t.Logf("%s: %s kind=%s %v (injected %v, excess %v)", what, o.source, o.kind, o.d, lo, o.d-lo)
		if o.d < lo {
			t.Errorf("%s: %s sample %v shorter than the injected %v", what, o.source, o.d, lo)
		}
	}
}

// enclosed checks that every sample is no longer than the interval that
// encloses it (outer, described by outerWhat).
func enclosed(t *testing.T, what string, obs []phaseObs, outer time.Duration, outerWhat string) {
	t.Helper()
	for _, o := range obs {
		if o.d > outer {
			t.Errorf("%s: %s sample %v longer than the enclosing %s %v", what, o.source, o.d, outerWhat, outer)
		}
	}
}

// longest returns the longest sample, or 0 if there is none.
func longest(obs []phaseObs) time.Duration {
	var d time.Duration
	for _, o := range obs {
		d = max(d, o.d)
	}
	return d
}

func TestKernelTelemetry(t *testing.T) {
	requireKernel(t)
	const (
		dnsDelay   = 60 * time.Millisecond
		helloDelay = 50 * time.Millisecond
		fbDelay    = 70 * time.Millisecond
	)
	fd := newFakeDNS(t)
	fd.set(func(f *fakeDNS) {
		f.a["tls.test."] = []string{"127.0.0.1"}
		f.nx["nx.test."] = true
		f.delay = dnsDelay
	})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(fbDelay)
		io.WriteString(w, "v1.0.0\n")
	}))
	srv.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		time.Sleep(helloDelay) // before the ServerHello
		return nil, nil
	}}
	srv.StartTLS()
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	upstream := "https://tls.test:" + port

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusing := "http://" + closed.Addr().String()
	closed.Close()

	cfg, reg := testConfig(t, fd.Addr)
	cfg.Upstreams = []string{upstream, refusing}
	cfg.HTTP1Only = true
	cfg.TLSConfig = &tls.Config{InsecureSkipVerify: true}
	cfg.DisableDNSPrefetch = true
	p := newTestProbe(t, cfg)
	k, tap := startKernel(t, p, reg)

	// Two requests on one HTTP/1.1 connection over TLS, reached by name.
	for range 2 {
		if code, err := get(t, p.Client(), upstream+"/example.com/m/@v/list"); err != nil || code != 200 {
			t.Fatalf("GET with probes attached: %d, %v (the programs must pass every packet)", code, err)
		}
	}
	// NXDOMAIN, then SERVFAIL.
	ctx := context.Background()
	if _, err := p.Resolver().LookupNetIP(ctx, "nx.test"); err == nil {
		t.Error("nx.test resolved")
	}
	fd.set(func(f *fakeDNS) { f.rcode = dns.RcodeServerFailure; f.delay = 0 })
	if _, err := p.Resolver().LookupNetIP(ctx, "fail.test"); err == nil {
		t.Error("fail.test resolved")
	}
	// A refused connect.
	if _, err := get(t, p.Client(), refusing+"/example.com/m/@v/list"); err == nil {
		t.Error("GET to a closed port succeeded")
	}
	// An unregistered control connection doing the same kind of exchange.
	control, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(control, "GET /x/@v/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	io.Copy(io.Discard, control)
	var controlCookie uint64
	if raw, err := control.NetConn().(*net.TCPConn).SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) { controlCookie, _ = bpf.SocketCookie(fd) })
	}
	control.Close()
	if err := k.Flush(); err != nil {
		t.Fatal(err)
	}

	kDNS := tap.samples(upstream, PhaseDNS, SourceKernel)
	uDNS := tap.samples(upstream, PhaseDNS, SourceUserspace)
	kConnect := tap.samples(upstream, PhaseConnect, SourceKernel)
	uConnect := tap.samples(upstream, PhaseConnect, SourceUserspace)
	kTLS := tap.samples(upstream, PhaseTLS, SourceKernel)
	uTLS := tap.samples(upstream, PhaseTLS, SourceUserspace)
	kTTFB := tap.samples(upstream, PhaseTTFB, SourceKernel)
	uTTFB := tap.samples(upstream, PhaseTTFB, SourceUserspace)
	uTotal := tap.samples(upstream, PhaseTotal, SourceUserspace)
	atLeast(t, "dns (kernel)", kDNS, 2, dnsDelay) // A and AAAA
	atLeast(t, "dns (userspace)", uDNS, 1, dnsDelay)
	atLeast(t, "connect (kernel)", kConnect, 1, 0)
	atLeast(t, "tls (kernel)", kTLS, 1, helloDelay)
	atLeast(t, "tls (userspace)", uTLS, 1, helloDelay)
	atLeast(t, "ttfb (kernel)", kTTFB, 2, fbDelay)
	atLeast(t, "ttfb (userspace)", uTTFB, 2, fbDelay)
	atLeast(t, "total (userspace)", uTotal, 2, fbDelay)
	// Each kernel exchange happened inside the userspace step that caused it.
	enclosed(t, "dns (kernel)", kDNS, longest(uDNS), "userspace lookup")
	enclosed(t, "connect (kernel)", kConnect, longest(uConnect), "userspace connect")
	enclosed(t, "tls (kernel)", kTLS, longest(uTLS), "userspace handshake")
	// The kernel TTFB lies inside [GotConn, GotFirstResponseByte] (or it is
	// dropped: checked below), so inside the request.
	enclosed(t, "ttfb (kernel)", kTTFB, longest(uTotal), "userspace request")
	// The userspace phases of the first request are disjoint parts of it: a
	// phase that also counted another's time would make them add up to more
	// than the whole.
	if len(uDNS) > 0 && len(uConnect) > 0 && len(uTLS) > 0 && len(uTTFB) > 0 && len(uTotal) > 0 {
		parts := uDNS[0].d + uConnect[0].d + uTLS[0].d + uTTFB[0].d
		if parts > uTotal[0].d {
			t.Errorf("first request: dns %v + connect %v + tls %v + ttfb %v = %v, more than its total %v",
				uDNS[0].d, uConnect[0].d, uTLS[0].d, uTTFB[0].d, parts, uTotal[0].d)
		}
	}
	for _, o := range kTTFB {
		if o.kind != KindList {
			t.Errorf("kernel ttfb sample has kind %q, want %q", o.kind, KindList)
		}
	}
	for _, o := range kConnect {
		if o.kind != KindList {
			t.Errorf("kernel connect sample has kind %q, want %q", o.kind, KindList)
		}
	}
	// ClientHello→ServerHello is part of the handshake.
	if n, sum := histogram(t, reg, "modproxy_kernel_tls_hello_seconds", map[string]string{"upstream": upstream, "version": "TLS 1.3"}); n != 1 || sum < helloDelay.Seconds() || sum > longest(uTLS).Seconds() {
		t.Errorf("tls_hello: %d samples, sum %.4fs; want 1 in [%v, userspace handshake %v]", n, sum, helloDelay, longest(uTLS))
	} else {
		t.Logf("tls_hello (kernel): %.4fs (injected %v)", sum, helloDelay)
	}
	// From the kernel's first byte to the runtime's: positive, and inside
	// the request.
	var totals time.Duration
	for _, o := range uTotal {
		totals += o.d
	}
	if n, sum := histogram(t, reg, "modproxy_runtime_delay_seconds", map[string]string{"upstream": upstream}); n != 2 || sum <= 0 || sum > totals.Seconds() {
		t.Errorf("runtime delay: %d samples, sum %.6fs; want 2 positive, in all within the requests' %v", n, sum, totals)
	} else {
		t.Logf("runtime delay: mean %v", time.Duration(sum/float64(n)*float64(time.Second)))
	}
	if n := counter(t, reg, "modproxy_kernel_ttfb_dropped_total", nil); n != 0 {
		t.Errorf("%v kernel ttfb samples dropped, want 0", n)
	}
	for rcode, want := range map[string]float64{"NOERROR": 2, "NXDOMAIN": 2, "SERVFAIL": 2} {
		if got := counter(t, reg, "modproxy_kernel_dns_queries_total", map[string]string{"server": fd.Addr, "rcode": rcode}); got != want {
			t.Errorf("kernel DNS queries %s = %v, want %v", rcode, got, want)
		}
	}
	if n := len(tap.samples("dns://"+fd.Addr, PhaseDNS, SourceKernel)); n != 4 {
		t.Errorf("%d kernel dns samples for names no upstream dialed, want 4", n)
	}
	if got := counter(t, reg, "modproxy_kernel_connect_failures_total", map[string]string{"upstream": refusing, "reason": "refused"}); got != 1 {
		t.Errorf("refused connects = %v, want 1", got)
	}
	if n, _ := histogram(t, reg, "modproxy_tcp_srtt_seconds", nil); n == 0 {
		// The TLS connection is still open; the refused one never
		// established. Close the pool to see one.
		p.CloseIdleConnections()
		srtt := func() uint64 {
			if err := k.Flush(); err != nil {
				t.Fatal(err)
			}
			n, _ := histogram(t, reg, "modproxy_tcp_srtt_seconds", map[string]string{"upstream": upstream})
			return n
		}
		n := srtt()
		for deadline := time.Now().Add(hangGuard); n == 0 && time.Now().Before(deadline); n = srtt() {
			time.Sleep(20 * time.Millisecond)
		}
		if n != 1 {
			t.Errorf("srtt samples after close = %d, want 1", n)
		}
	}

	// Scope: only registered sockets produce events.
	tap.mu.Lock()
	for _, ev := range tap.events {
		if ev.Cookie == controlCookie {
			t.Errorf("unregistered control connection produced %v", ev)
		}
		if !tap.registered[ev.Cookie] {
			t.Errorf("event from a socket this Kernel did not register: %v", ev)
		}
	}
	t.Logf("%d events from %d registered sockets", len(tap.events), len(tap.registered))
	tap.mu.Unlock()

	// The debug page has kernel rows beside the userspace ones.
	var kernelRows []string
	for _, u := range p.Snapshot().Upstreams {
		if u.Upstream != upstream {
			continue
		}
		for _, ps := range u.Phases {
			if ps.Source == SourceKernel {
				kernelRows = append(kernelRows, ps.Phase)
			}
		}
	}
	if !slices.Equal(kernelRows, []string{PhaseDNS, PhaseConnect, PhaseTLS, PhaseTTFB}) {
		t.Errorf("debug snapshot kernel phases = %v", kernelRows)
	}

	// After Close, traffic still flows and nothing is registered.
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if code, err := get(t, p.Client(), upstream+"/example.com/m/@v/list"); err != nil || code != 200 {
		t.Fatalf("GET after Close: %d, %v", code, err)
	}
}

func TestKernelProbeReport(t *testing.T) {
	requireKernel(t)
	const fbDelay = 30 * time.Millisecond
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(fbDelay)
		io.WriteString(w, "x")
	}))
	defer srv.Close()
	cfg, reg := testConfig(t, "127.0.0.1:1")
	cfg.Upstreams = []string{srv.URL}
	cfg.HTTP1Only = true
	p := newTestProbe(t, cfg)
	startKernel(t, p, reg)
	rep, err := RunProbe(context.Background(), p, ProbeOptions{Modules: []string{"example.com/m@v1.0.0"}, Rounds: 2})
	if err != nil {
		t.Fatal(err)
	}
	reqs := rep.Upstreams[0].Requests
	if _, ok := reqs[0].KernelPhases[PhaseConnect]; !ok {
		t.Errorf("first request has no kernel connect phase: %v", reqs[0].KernelPhases)
	}
	for _, q := range reqs {
		if d := q.KernelPhases[PhaseTTFB]; d < fbDelay.Seconds() {
			t.Errorf("%s: kernel ttfb %vs, want >= %v", q.URL, d, fbDelay)
		}
	}
	var b strings.Builder
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", b.String())
	if !strings.Contains(b.String(), "kernel min") {
		t.Error("report has no kernel columns")
	}
}

// BenchmarkKernelColdFetch compares cold fetches (a new TCP connection, one
// 64 KiB response) through the instrumented client with the eBPF probes off
// and on:
//
//	go test -run '^$' -bench KernelColdFetch -count 3 -benchtime 2000x ./netprobe/
//
// cpu-ns/op is the process's user+sys CPU per fetch (getrusage: client,
// server, and the softirq work charged to the process, which includes the
// programs on loopback). "ratio" and "cpu-ratio" relate time and CPU per
// fetch to those of the preceding "off" run. Sub-benchmarks: off (no
// programs); on (programs attached, every upstream socket registered);
// on-unregistered (programs attached, a Kernel not attached to the Probe, so
// nothing registered: what every other socket in the cgroup pays, here both
// the client and the server end); on-stats and on-unregistered-stats (the
// same with the kernel's BPF run-time accounting enabled through
// BPF_ENABLE_STATS, released at the end: bpf-ns/op and bpf-runs/op, also per
// program). Both ends of the loopback connection are in the probed cgroup;
// in production the server is remote.
func BenchmarkKernelColdFetch(b *testing.B) {
	requireKernel(b)
	payload := make([]byte, 64<<10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(payload) }))
	defer srv.Close()
	url := srv.URL + "/example.com/m/@v/v1.0.0.zip"
	type result struct{ wall, cpu time.Duration }
	run := func(b *testing.B, kernel, attach, stats bool) result {
		p, err := New(Config{Upstreams: []string{srv.URL}, DNSServers: []string{"127.0.0.1:1"}, HTTP1Only: true, Registerer: prometheus.NewRegistry()})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		var progs []*ebpf.Program
		if kernel {
			k, err := NewKernel(KernelConfig{Registerer: prometheus.NewRegistry()})
			if err != nil {
				b.Fatal(err)
			}
			defer k.Close()
			if attach {
				if err := k.Attach(p); err != nil {
					b.Fatal(err)
				}
			}
			if stats {
				st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
				if err != nil {
					b.Skipf("BPF run-time stats: %v", err)
				}
				defer st.Close()
				for _, id := range k.probes.ProgramIDs() {
					prog, err := ebpf.NewProgramFromID(id)
					if err != nil {
						b.Fatal(err)
					}
					defer prog.Close()
					progs = append(progs, prog)
				}
			}
		}
		fetch := func() {
			p.CloseIdleConnections()
			resp, err := p.Client().Get(url)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		fetch() // warm: first-use allocations, metric series
		progStats := func() (d []time.Duration, n []uint64) {
			for _, prog := range progs {
				st, err := prog.Stats()
				if err != nil {
					b.Fatal(err)
				}
				d, n = append(d, st.Runtime), append(n, st.RunCount)
			}
			return d, n
		}
		d0, n0 := progStats()
		cpu0 := processCPU()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			fetch()
		}
		b.StopTimer()
		cpu := (processCPU() - cpu0) / time.Duration(b.N)
		b.ReportMetric(float64(cpu), "cpu-ns/op")
		if len(progs) > 0 {
			d1, n1 := progStats()
			var dt time.Duration
			var nt uint64
			for i, name := range []string{"sockops", "egress", "ingress"}[:len(progs)] {
				dt += d1[i] - d0[i]
				nt += n1[i] - n0[i]
				b.ReportMetric(float64(d1[i]-d0[i])/float64(b.N), name+"-ns/op")
				b.ReportMetric(float64(n1[i]-n0[i])/float64(b.N), name+"-runs/op")
			}
			b.ReportMetric(float64(dt)/float64(b.N), "bpf-ns/op")
			b.ReportMetric(float64(nt)/float64(b.N), "bpf-runs/op")
		}
		return result{b.Elapsed() / time.Duration(b.N), cpu}
	}
	var off result
	ratios := func(b *testing.B, r result) {
		if off.wall > 0 && off.cpu > 0 {
			b.ReportMetric(float64(r.wall)/float64(off.wall), "ratio")
			b.ReportMetric(float64(r.cpu)/float64(off.cpu), "cpu-ratio")
		}
	}
	b.Run("off", func(b *testing.B) { off = run(b, false, false, false) })
	b.Run("on", func(b *testing.B) { ratios(b, run(b, true, true, false)) })
	b.Run("on-unregistered", func(b *testing.B) { ratios(b, run(b, true, false, false)) })
	b.Run("on-stats", func(b *testing.B) { run(b, true, true, true) })
	b.Run("on-unregistered-stats", func(b *testing.B) { run(b, true, false, true) })
}

// processCPU is the user+sys CPU time of this process so far.
func processCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
