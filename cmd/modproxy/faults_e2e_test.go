//go:build unix

package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/modproxy/modproxy/internal/testsumdb"
	"github.com/modproxy/modproxy/internal/testupstream"
)

// The fault matrix: the real go command ("go mod download" of a generated
// project, fresh GOMODCACHE) through the built binary, for the upstream
// lists A, "A,B" and "A|B", each crossed with one fault of upstream A. The
// go command must succeed or fail as the list's GOPROXY semantics promise,
// and every module the fault does not touch must be served.

// faultMods are the matrix's modules; faultVictim is the one that the
// per-module faults (403, tampering) hit.
var faultMods = []testupstream.Module{
	{Path: "example.com/fa", Version: "v1.0.0", Files: map[string]string{"go.mod": "module example.com/fa\n\ngo 1.21\n", "a.go": "package fa\n"}},
	{Path: "example.com/fb", Version: "v1.0.0", Files: map[string]string{"go.mod": "module example.com/fb\n\ngo 1.21\n", "b.go": "package fb\n"}},
	{Path: "example.com/fc", Version: "v1.0.0", Files: map[string]string{"go.mod": "module example.com/fc\n\ngo 1.21\n", "c.go": "package fc\n"}},
	{Path: "example.com/fd", Version: "v1.0.0", Files: map[string]string{"go.mod": "module example.com/fd\n\ngo 1.21\n", "d.go": "package fd\n"}},
}

const faultVictim = "example.com/fc"

// matrixDNS is a DNS server on 127.0.0.1 answering A queries for its names
// with 127.0.0.1, with a per-name fault: "servfail" (SERVFAIL to every
// query) or "noaaaa" (AAAA queries dropped without an answer).
type matrixDNS struct {
	addr  string
	mu    sync.Mutex
	fault map[string]string // fqdn → fault
	srv   *dns.Server
}

func startMatrixDNS(t *testing.T) *matrixDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &matrixDNS{addr: pc.LocalAddr().String(), fault: map[string]string{}}
	started := make(chan struct{})
	d.srv = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(d.serve), NotifyStartedFunc: func() { close(started) }}
	done := make(chan struct{})
	go func() { defer close(done); d.srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { d.srv.Shutdown(); <-done })
	return d
}

func (d *matrixDNS) set(name, fault string) {
	d.mu.Lock()
	d.fault[dns.Fqdn(name)] = fault
	d.mu.Unlock()
}

func (d *matrixDNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	q := req.Question[0]
	d.mu.Lock()
	fault := d.fault[q.Name]
	d.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(req)
	switch {
	case fault == "servfail":
		m.Rcode = dns.RcodeServerFailure
	case fault == "noaaaa" && q.Qtype == dns.TypeAAAA:
		return // dropped
	case q.Qtype == dns.TypeA && strings.HasSuffix(q.Name, ".test."):
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("127.0.0.1")})
	case strings.HasSuffix(q.Name, ".test."):
		// NODATA for AAAA
	default:
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}

// hangListener accepts connections and never answers on them.
func hangListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go io.Copy(io.Discard, c) // read the requests, answer nothing
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return "http://" + ln.Addr().String()
}

// refusedURL is an address that refuses connections: a TCP socket bound
// to a port but never listening, so that no other process can take the
// port while the test runs (a closed listener's port could be reused).
func refusedURL(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

func writeFaultProject(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("module example.com/faultapp\n\ngo 1.21\n\nrequire (\n")
	for _, m := range faultMods {
		fmt.Fprintf(&b, "\t%s %s\n", m.Path, m.Version)
	}
	b.WriteString(")\n")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

type faultKind string

const (
	faultDown     faultKind = "down"
	faultHang     faultKind = "hang"
	faultFlap     faultKind = "flapping 5xx"
	fault403      faultKind = "403 for one module"
	faultTamper   faultKind = "one tampered module"
	faultSlow     faultKind = "slow first byte"
	faultServfail faultKind = "DNS SERVFAIL"
	faultNoAAAA   faultKind = "AAAA dropped"
)

// flapping answers 503 to every other request, starting with the first.
func flapping() testupstream.Fault {
	var n atomic.Int64
	return testupstream.Fault{Status: 503, Match: func(string) bool { return n.Add(1)%2 == 1 }}
}

func TestFaultMatrixEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and runs the go command")
	}
	modproxyBin(t)
	db := testsumdb.New(t, "sum.modproxy.test")
	{
		up, err := testupstream.New(faultMods...)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range up.Modules() {
			db.AddModule(m.Path, m.Version, up.GoMod(m.Path, m.Version), up.Zip(m.Path, m.Version))
		}
		up.Close()
	}
	// ok: the go command succeeds. Otherwise it fails, and the modules
	// named in served are still served (all but the victim for faults
	// that hit one module).
	type cell struct {
		list  string
		fault faultKind
		ok    bool
	}
	var cells []cell
	for _, f := range []faultKind{faultDown, faultHang, faultFlap, fault403, faultTamper, faultSlow, faultServfail, faultNoAAAA} {
		for _, list := range []string{"A", "A,B", "A|B"} {
			ok := false
			switch f {
			case faultSlow, faultNoAAAA:
				ok = true // slower, never wrong
			case fault403, faultTamper:
				ok = list != "A" // not found and a bad copy go on after ',' too
			default:
				ok = list == "A|B" // errors go on only after '|'
			}
			cells = append(cells, cell{list, f, ok})
		}
	}
	for _, c := range cells {
		t.Run(fmt.Sprintf("%s/%s", c.fault, c.list), func(t *testing.T) {
			t.Parallel()
			var dnsSrv *matrixDNS
			var extra []string
			b, err := testupstream.New(faultMods...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(b.Close)
			bURL := b.URL()
			var aURL string
			var a *testupstream.Server
			switch c.fault {
			case faultDown:
				aURL = refusedURL(t)
			case faultHang:
				aURL = hangListener(t)
			default:
				if a, err = testupstream.New(faultMods...); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(a.Close)
				aURL = a.URL()
			}
			victim := func(p string) bool { return strings.HasPrefix(p, "/"+faultVictim+"/") }
			switch c.fault {
			case faultFlap:
				a.SetFaults(flapping())
			case fault403:
				a.SetFaults(testupstream.Fault{Status: 403, Match: victim})
			case faultTamper:
				a.SetFaults(testupstream.Fault{Tamper: true, Match: func(p string) bool { return victim(p) && strings.HasSuffix(p, ".zip") }})
			case faultSlow:
				a.SetFaults(testupstream.Fault{Delay: 700 * time.Millisecond})
			case faultServfail, faultNoAAAA:
				dnsSrv = startMatrixDNS(t)
				aURL = strings.Replace(aURL, "127.0.0.1", "a.test", 1)
				bURL = strings.Replace(bURL, "127.0.0.1", "b.test", 1)
				fault := "servfail"
				if c.fault == faultNoAAAA {
					fault = "noaaaa"
				}
				dnsSrv.set("a.test", fault)
				extra = append(extra, "--dns-server", dnsSrv.addr)
			}
			list := strings.NewReplacer("A", aURL, "B", bURL).Replace(c.list)
			args := append([]string{"--db", filepath.Join(t.TempDir(), "modproxy.db"), "--upstream", list,
				"--sumdb", db.VerifierKey() + " " + db.URL(), "--private", "", "--nosumdb", "",
				"--first-byte-timeout", "3s"}, extra...)
			mp := startModproxy(t, args...)
			g := newGoEnv(t, mp.URL, db)
			start := time.Now()
			out, err := g.try(writeFaultProject(t), "mod", "download")
			took := time.Since(start).Round(10 * time.Millisecond)
			if (err == nil) != c.ok {
				t.Fatalf("go mod download: err = %v after %v, want success = %v\n%s\nmodproxy log:\n%s", err, took, c.ok, out, tail(mp.logs.String(), 40))
			}
			t.Logf("go mod download: success=%v in %v", err == nil, took)
			if err != nil && (c.fault == fault403 || c.fault == faultTamper) {
				if !strings.Contains(out, faultVictim) {
					t.Errorf("go command failed, but not on the faulty module %s:\n%s", faultVictim, out)
				}
				// Every other module is served.
				for _, m := range faultMods {
					if m.Path == faultVictim {
						continue
					}
					for _, file := range []string{".info", ".mod", ".zip"} {
						p := "/" + m.Path + "/@v/" + m.Version + file
						resp, body := mp.get(t, p)
						if resp.StatusCode != 200 {
							t.Errorf("GET %s beside the faulty module: %d %q", p, resp.StatusCode, body)
						}
					}
				}
			}
		})
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// quantiles of ds: p50 and p99 (nearest rank).
func quantiles(ds []time.Duration) (p50, p99 time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, max(0, int(q*float64(len(s))+0.5)-1))] }
	return at(0.5), at(0.99)
}

// TestHangFigures measures, for the closing note, client request
// latencies while one upstream of A|B hangs (before and after its circuit
// opens), and the time to the first 502/504 for cold misses while the only
// upstream hangs. It asserts the answers, never the timings.
func TestHangFigures(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary")
	}
	const fbt = 5 * time.Second
	mods := make([]testupstream.Module, 60)
	for i := range mods {
		p := fmt.Sprintf("example.com/h%02d", i)
		mods[i] = testupstream.Module{Path: p, Version: "v1.0.0", Files: map[string]string{"h.go": "package h\n"}}
	}
	b, err := testupstream.New(mods...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)

	// get fetches one .info per module, conc at a time, and returns each
	// request's latency and status in start order.
	type res struct {
		d      time.Duration
		status int
		at     time.Duration // since the run began
	}
	// gatewayErrors checks that every request of a run at a hanging
	// upstream failed with 502/504, and returns when the first failed and
	// the latencies of those after the first eight.
	gatewayErrors := func(t *testing.T, rs []res) (firstErr time.Duration, late []time.Duration) {
		t.Helper()
		firstErr = -1
		for i, r := range rs {
			if r.status != 502 && r.status != 504 {
				t.Errorf("request %d: status %d, want 502/504", i, r.status)
				continue
			}
			if firstErr < 0 || r.at < firstErr {
				firstErr = r.at
			}
			if i >= 8 {
				late = append(late, r.d)
			}
		}
		return firstErr, late
	}
	// okLatencies checks that every request of a run succeeded and returns
	// their latencies; phase names the run in errors.
	okLatencies := func(t *testing.T, phase string, rs []res) []time.Duration {
		t.Helper()
		var ds []time.Duration
		for _, r := range rs {
			ds = append(ds, r.d)
			if r.status != 200 {
				t.Errorf("%s: status %d", phase, r.status)
			}
		}
		return ds
	}
	run := func(base string, first, n, conc int) []res {
		out := make([]res, n)
		var wg sync.WaitGroup
		sem := make(chan struct{}, conc)
		begin := time.Now()
		for i := range n {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				s := time.Now()
				resp, err := http.Get(fmt.Sprintf("%s/example.com/h%02d/@v/v1.0.0.info", base, first+i))
				st := 0
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					st = resp.StatusCode
				}
				out[i] = res{time.Since(s), st, time.Since(begin)}
			}()
		}
		wg.Wait()
		return out
	}

	t.Run("A|B with A hanging", func(t *testing.T) {
		a := hangListener(t)
		mp := startModproxy(t, "--db", filepath.Join(t.TempDir(), "m.db"), "--upstream", a+"|"+b.URL(),
			"--sumdb", "off", "--private", "", "--nosumdb", "", "--first-byte-timeout", fbt.String())
		before := run(mp.URL, 0, 8, 8) // the first wave waits on A
		after := run(mp.URL, 8, 40, 8) // A's circuit is open by now
		bd := okLatencies(t, "before the circuit opened", before)
		ad := okLatencies(t, "after the circuit opened", after)
		b50, b99 := quantiles(bd)
		a50, a99 := quantiles(ad)
		t.Logf("FIGURE A|B, A hangs (first-byte timeout %v): before the circuit opens p50 %v p99 %v (n=%d); after p50 %v p99 %v (n=%d)",
			fbt, b50.Round(time.Millisecond), b99.Round(time.Millisecond), len(bd), a50.Round(time.Millisecond), a99.Round(time.Millisecond), len(ad))
	})
	t.Run("A|B with A hanging after a baseline", func(t *testing.T) {
		a, err := testupstream.New(mods...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.Close)
		mp := startModproxy(t, "--db", filepath.Join(t.TempDir(), "m.db"), "--upstream", a.URL()+"|"+b.URL(),
			"--sumdb", "off", "--private", "", "--nosumdb", "", "--first-byte-timeout", fbt.String())
		for _, r := range run(mp.URL, 0, 30, 2) { // A's baseline
			if r.status != 200 {
				t.Fatalf("warm-up: %d", r.status)
			}
		}
		a.SetFaults(testupstream.Fault{Delay: time.Minute}) // accepts, reads, never answers
		before := run(mp.URL, 30, 8, 8)
		after := run(mp.URL, 38, 20, 8)
		bd := okLatencies(t, "before the circuit opened", before)
		ad := okLatencies(t, "after the circuit opened", after)
		b50, b99 := quantiles(bd)
		a50, a99 := quantiles(ad)
		t.Logf("FIGURE A|B, A hangs after 30 requests of baseline: first wave p50 %v p99 %v (n=%d); later p50 %v p99 %v (n=%d)",
			b50.Round(time.Millisecond), b99.Round(time.Millisecond), len(bd), a50.Round(time.Millisecond), a99.Round(time.Millisecond), len(ad))
	})
	t.Run("only upstream hanging after a baseline", func(t *testing.T) {
		a, err := testupstream.New(mods...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.Close)
		mp := startModproxy(t, "--db", filepath.Join(t.TempDir(), "m.db"), "--upstream", a.URL(),
			"--sumdb", "off", "--private", "", "--nosumdb", "", "--first-byte-timeout", fbt.String())
		for _, r := range run(mp.URL, 0, 30, 2) {
			if r.status != 200 {
				t.Fatalf("warm-up: %d", r.status)
			}
		}
		a.SetFaults(testupstream.Fault{Delay: time.Minute})
		rs := run(mp.URL, 30, 24, 4)
		firstErr, late := gatewayErrors(t, rs)
		l50, l99 := quantiles(late)
		t.Logf("FIGURE only upstream hangs after 30 requests of baseline: first 502/504 after %v; later cold misses p50 %v p99 %v (n=%d)",
			firstErr.Round(time.Millisecond), l50.Round(time.Millisecond), l99.Round(time.Millisecond), len(late))
	})
	t.Run("only upstream hanging", func(t *testing.T) {
		a := hangListener(t)
		mp := startModproxy(t, "--db", filepath.Join(t.TempDir(), "m.db"), "--upstream", a,
			"--sumdb", "off", "--private", "", "--nosumdb", "", "--first-byte-timeout", fbt.String())
		rs := run(mp.URL, 0, 24, 4)
		firstErr, late := gatewayErrors(t, rs)
		l50, l99 := quantiles(late)
		t.Logf("FIGURE only upstream hangs (first-byte timeout %v): first 502/504 after %v; later cold misses p50 %v p99 %v (n=%d)",
			fbt, firstErr.Round(time.Millisecond), l50.Round(time.Millisecond), l99.Round(time.Millisecond), len(late))
	})
}
