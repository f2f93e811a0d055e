//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// Tests in this file attach programs to the test process's own cgroup. They
// must not call t.Parallel: one test's probes would see the others' sockets
// only if registered, but the timing assertions assume an otherwise idle
// process.

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// eventWait is a hang guard for events that must come, not a latency bound.
const eventWait = time.Minute

// requireEBPF skips the test when the probes cannot run here, or fails it
// when MODPROXY_REQUIRE_EBPF=1.
func requireEBPF(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("MODPROXY_REQUIRE_EBPF") == "1" {
			t.Fatalf("eBPF required (MODPROXY_REQUIRE_EBPF=1) but unavailable: %v", err)
		}
		t.Skipf("eBPF unavailable: %v", err)
	}
}

// collector records every event delivered by the probes.
type collector struct {
	mu  sync.Mutex
	evs []Event
}

func (c *collector) add(e Event) {
	c.mu.Lock()
	c.evs = append(c.evs, e)
	c.mu.Unlock()
}

func (c *collector) find(cookie uint64, kind EventKind) []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Event
	for _, e := range c.evs {
		if e.Cookie == cookie && e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

func (c *collector) all() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.evs)
}

// wait returns the first n events of kind on cookie, flushing the ring
// buffer until they arrive or eventWait passes.
func (c *collector) wait(t *testing.T, p *Probes, cookie uint64, kind EventKind, n int) []Event {
	t.Helper()
	deadline := time.Now().Add(eventWait)
	for {
		if err := p.Flush(); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		if evs := c.find(cookie, kind); len(evs) >= n {
			return evs[:n]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d %s event(s) for cookie %d after %s; have %v", n, kind, cookie, eventWait, c.all())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startProbes loads the probes on the process's cgroup; cleanup closes
// them and checks that none of their programs stays attached.
func startProbes(t *testing.T) (*Probes, *collector) {
	t.Helper()
	requireEBPF(t)
	c := &collector{}
	p, err := Load(Options{OnEvent: c.add})
	if err != nil {
		if os.Getenv("MODPROXY_REQUIRE_EBPF") == "1" {
			t.Fatalf("Load: %v", err)
		}
		t.Skipf("Load: %v", err)
	}
	t.Cleanup(func() {
		ids := p.ProgramIDs()
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := p.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		left, err := p.Attached()
		if err != nil {
			t.Errorf("Attached after Close: %v", err)
		}
		all, err := AttachedPrograms(p.CgroupPath())
		if err != nil {
			t.Errorf("AttachedPrograms: %v", err)
		}
		for _, id := range ids {
			if slices.Contains(all, id) {
				t.Errorf("program %d still attached to %s after Close", id, p.CgroupPath())
			}
		}
		if len(left) != 0 {
			t.Errorf("programs still attached after Close: %v", left)
		}
		st := p.Stats()
		t.Logf("stats: %+v", st)
		if st.ParseErrors != 0 || st.Dropped != 0 || st.Delivered != st.Events {
			t.Errorf("stats %+v: want no parse errors, no drops, every event delivered", st)
		}
	})
	return p, c
}

// cookies collects the cookies of registered sockets.
type cookies struct {
	mu sync.Mutex
	cs []uint64
}

func (k *cookies) list() []uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.cs)
}

// dialer returns a dialer whose sockets are registered with the probes.
func dialer(t *testing.T, p *Probes, upstream uint32, purpose Purpose, k *cookies) *net.Dialer {
	return &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var rerr error
		err := c.Control(func(fd uintptr) {
			var ck uint64
			ck, rerr = p.RegisterSocket(fd, upstream, purpose)
			if rerr == nil && k != nil {
				k.mu.Lock()
				k.cs = append(k.cs, ck)
				k.mu.Unlock()
			}
		})
		if err != nil {
			return err
		}
		if rerr != nil {
			t.Errorf("RegisterSocket: %v", rerr)
		}
		return rerr
	}}
}

func connCookie(t *testing.T, c net.Conn) uint64 {
	t.Helper()
	sc, ok := c.(syscall.Conn)
	if !ok {
		t.Fatalf("%T is not a syscall.Conn", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ck uint64
	var cerr error
	if err := raw.Control(func(fd uintptr) { ck, cerr = SocketCookie(fd) }); err != nil {
		t.Fatal(err)
	}
	if cerr != nil {
		t.Fatal(cerr)
	}
	return ck
}

// onlyFrom fails if any event belongs to a socket that was not registered.
func onlyFrom(t *testing.T, c *collector, registered ...uint64) {
	t.Helper()
	for _, e := range c.all() {
		if !slices.Contains(registered, e.Cookie) {
			t.Errorf("event from unregistered socket: %v", e)
		}
	}
}

// echoServer accepts connections and echoes them until closed.
func echoServer(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln
}

func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read: %v (cgroup_skb must pass every packet)", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo: got %q, want %q", buf, msg)
	}
}

func TestDecodeMatchesGenerated(t *testing.T) {
	if got := unsafe.Sizeof(modproxyEvent{}); got != eventSize {
		t.Fatalf("sizeof(struct event) = %d, decoder expects %d", got, eventSize)
	}
	if _, ok := decodeEvent(make([]byte, eventSize-1)); ok {
		t.Error("short record decoded")
	}
	if _, ok := decodeEvent(make([]byte, eventSize)); ok {
		t.Error("record of kind 0 decoded")
	}
}

func TestOwnCgroup(t *testing.T) {
	cg, err := OwnCgroup()
	if err != nil {
		if os.Getenv("MODPROXY_REQUIRE_EBPF") == "1" {
			t.Fatalf("no cgroup v2 (MODPROXY_REQUIRE_EBPF=1): %v", err)
		}
		t.Skipf("no cgroup v2: %v", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(cg, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Fatalf("%s is not a cgroup2 file system (type %#x)", cg, st.Type)
	}
}

func TestConnectAndClose(t *testing.T) {
	p, c := startProbes(t)
	if ids, err := p.Attached(); err != nil || len(ids) != 3 {
		t.Fatalf("Attached() = %v, %v; want 3 programs", ids, err)
	}
	ln := echoServer(t)

	var k cookies
	dialStart := MonotonicNow()
	conn, err := dialer(t, p, 7, PurposeTCP, &k).Dial("tcp4", ln.Addr().String())
	dialEnd := MonotonicNow()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ck := connCookie(t, conn)
	if got := k.list(); len(got) != 1 || got[0] != ck {
		t.Fatalf("registered cookies %v, conn cookie %d", got, ck)
	}

	// An unregistered control connection: traffic flows, no events.
	ctl, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	ctlCookie := connCookie(t, ctl)

	echo(t, conn, "hello")
	echo(t, ctl, "control")

	ev := c.wait(t, p, ck, EventConnect, 1)[0]
	t.Logf("connect: %v", ev)
	// The handshake happened inside Dial, on MonotonicNow's clock.
	if ev.Dur <= 0 || ev.Start() < dialStart || ev.KernelTime > dialEnd {
		t.Errorf("connect %v: interval [%d, %d], want a positive one inside Dial's [%d, %d]", ev.Dur, ev.Start(), ev.KernelTime, dialStart, dialEnd)
	}
	if ev.UpstreamID != 7 || ev.Purpose != PurposeTCP {
		t.Errorf("upstream %d purpose %v", ev.UpstreamID, ev.Purpose)
	}

	conn.Close()
	closed := MonotonicNow()
	cl := c.wait(t, p, ck, EventClose, 1)[0]
	t.Logf("close: %v", cl)
	// A round trip of this connection fits in its lifetime (a unit error
	// would not).
	if life := time.Duration(closed - dialStart); cl.SRTT <= 0 || cl.SRTT > life {
		t.Errorf("srtt at close %v, want positive and within the connection's lifetime %v", cl.SRTT, life)
	}
	if cl.BytesAcked < 5 || cl.BytesReceived < 5 {
		t.Errorf("bytes acked %d received %d", cl.BytesAcked, cl.BytesReceived)
	}
	ctl.Close()
	p.Flush()
	if evs := c.find(ctlCookie, EventConnect); len(evs) > 0 {
		t.Errorf("unregistered connection produced events: %v", evs)
	}
	onlyFrom(t, c, ck)
	if st := p.Stats(); st.Events == 0 || st.Delivered != st.Events {
		t.Errorf("stats %+v: want events delivered", st)
	}
}

func TestConnectRefused(t *testing.T) {
	p, c := startProbes(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	var k cookies
	if _, err := dialer(t, p, 3, PurposeTCP, &k).Dial("tcp4", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial closed port: %v, want ECONNREFUSED", err)
	}
	ck := k.list()[0]
	ev := c.wait(t, p, ck, EventConnectFailed, 1)[0]
	t.Logf("%v", ev)
	if ev.Reason != ReasonRefused {
		t.Errorf("reason %v, want refused", ev.Reason)
	}
	onlyFrom(t, c, ck)
}

// slowHandler delays the response's first byte by the duration in the
// query parameter d.
func slowHandler(w http.ResponseWriter, r *http.Request) {
	d, _ := time.ParseDuration(r.URL.Query().Get("d"))
	time.Sleep(d)
	io.WriteString(w, "ok\n")
}

// get does a GET and returns the monotonic time at which httptrace saw the
// first response byte.
func get(t *testing.T, client *http.Client, url string) uint64 {
	t.Helper()
	var first uint64
	trace := &httptrace.ClientTrace{GotFirstResponseByte: func() { first = MonotonicNow() }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "ok\n" {
		t.Fatalf("body %q, %v", b, err)
	}
	return first
}

// checkInside checks a kernel interval against what load cannot break: it
// is no shorter than the delay the fake server injected, and it lies inside
// [lo, hi], monotonic times userspace took before it started the step and
// after it saw the step's result (the kernel sees the packets in between).
func checkInside(t *testing.T, what string, ev Event, want time.Duration, lo, hi uint64) {
	t.Helper()
	t.Logf("%s: kernel %v, injected %v (+%v), userspace %v", what, ev.Dur, want, ev.Dur-want, time.Duration(hi-lo))
	if ev.Dur < want {
		t.Errorf("%s = %v, shorter than the injected %v", what, ev.Dur, want)
	}
	if ev.Start() < lo || ev.KernelTime > hi {
		t.Errorf("%s: kernel interval [%d, %d] not inside userspace's [%d, %d]", what, ev.Start(), ev.KernelTime, lo, hi)
	}
}

func TestHTTPTTFB(t *testing.T) {
	p, c := startProbes(t)
	srv := httptest.NewServer(http.HandlerFunc(slowHandler))
	t.Cleanup(srv.Close)

	var k cookies
	tr := &http.Transport{DialContext: dialer(t, p, 11, PurposeTCP, &k).DialContext, MaxIdleConnsPerHost: 1}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}

	delays := []time.Duration{150 * time.Millisecond, 60 * time.Millisecond}
	var starts, firsts []uint64
	for _, d := range delays {
		starts = append(starts, MonotonicNow())
		firsts = append(firsts, get(t, client, srv.URL+"/?d="+d.String()))
	}
	cks := k.list()
	if len(cks) != 1 {
		t.Fatalf("%d connections, want 1 (keep-alive)", len(cks))
	}
	evs := c.wait(t, p, cks[0], EventTTFB, len(delays))
	for i, ev := range evs {
		if ev.ReqSeq != uint32(i+1) {
			t.Errorf("event %d: ReqSeq %d", i, ev.ReqSeq)
		}
		checkInside(t, fmt.Sprintf("TTFB request %d", ev.ReqSeq), ev, delays[i], starts[i], firsts[i])
		t.Logf("runtime delay (httptrace first byte - kernel first byte): %v",
			time.Duration(int64(firsts[i])-int64(ev.KernelTime)))
	}
	if n := len(c.find(cks[0], EventConnect)); n != 1 {
		t.Errorf("%d connect events", n)
	}
	if n := len(c.find(cks[0], EventTLSServerHello)); n != 0 {
		t.Errorf("plain HTTP produced TLS events")
	}
	onlyFrom(t, c, cks...)
}

func TestTLS(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version uint16
	}{
		{"TLS1.3", tls.VersionTLS13},
		{"TLS1.2", tls.VersionTLS12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, c := startProbes(t)
			const helloDelay = 100 * time.Millisecond
			const ttfbDelay = 50 * time.Millisecond
			srv := httptest.NewUnstartedServer(http.HandlerFunc(slowHandler))
			srv.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
				time.Sleep(helloDelay)
				return nil, nil
			}}
			srv.StartTLS()
			t.Cleanup(srv.Close)

			pool := x509.NewCertPool()
			pool.AddCert(srv.Certificate())
			var k cookies
			tr := &http.Transport{
				DialContext:     dialer(t, p, 21, PurposeTCP, &k).DialContext,
				TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tc.version, MaxVersion: tc.version},
			}
			t.Cleanup(tr.CloseIdleConnections)
			start := MonotonicNow()
			first := get(t, &http.Client{Transport: tr}, srv.URL+"/?d="+ttfbDelay.String())
			ck := k.list()[0]

			sh := c.wait(t, p, ck, EventTLSServerHello, 1)[0]
			checkInside(t, "ClientHello→ServerHello", sh, helloDelay, start, first)
			if sh.TLSVersion != tc.version {
				t.Errorf("ServerHello version %#04x, want %#04x", sh.TLSVersion, tc.version)
			}
			done := c.wait(t, p, ck, EventTLSHandshakeDone, 1)[0]
			checkInside(t, "ClientHello→handshake done", done, helloDelay, start, first)
			if done.Dur < sh.Dur || done.TLSVersion != tc.version {
				t.Errorf("handshake done %v, version %#04x; ServerHello %v", done.Dur, done.TLSVersion, sh.Dur)
			}
			ttfb := c.wait(t, p, ck, EventTTFB, 1)[0]
			if ttfb.ReqSeq != 1 {
				t.Errorf("ReqSeq %d", ttfb.ReqSeq)
			}
			checkInside(t, "TTFB over TLS", ttfb, ttfbDelay, start, first)
			t.Logf("runtime delay (httptrace first byte - kernel first byte): %v", time.Duration(int64(first)-int64(ttfb.KernelTime)))
			if ttfb.Start() < done.KernelTime {
				t.Errorf("request started (%d) before the handshake finished (%d)", ttfb.Start(), done.KernelTime)
			}
			if n := len(c.find(ck, EventTLSAlert)); n != 0 {
				t.Errorf("%d alerts", n)
			}
			onlyFrom(t, c, ck)
		})
	}
}

func TestTLSAlert(t *testing.T) {
	p, c := startProbes(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(slowHandler))
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)

	var k cookies
	conn, err := dialer(t, p, 5, PurposeTCP, &k).Dial("tcp4", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12})
	if err := tc.Handshake(); err == nil {
		t.Fatal("handshake with a TLS 1.3-only server succeeded at TLS 1.2")
	} else {
		t.Logf("handshake: %v", err)
	}
	ev := c.wait(t, p, k.list()[0], EventTLSAlert, 1)[0]
	t.Logf("%v", ev)
	if !ev.AlertReceived || ev.AlertLevel != 2 || ev.AlertDesc != 70 {
		t.Errorf("alert %v: want received fatal protocol_version (70)", ev)
	}
	onlyFrom(t, c, k.list()...)
}

func TestDNS(t *testing.T) {
	p, c := startProbes(t)
	const delay = 80 * time.Millisecond
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			time.Sleep(delay)
			m := new(dns.Msg)
			rcode := dns.RcodeNameError
			if r.Question[0].Name == "fail.test." {
				rcode = dns.RcodeServerFailure
			}
			m.SetRcode(r, rcode)
			w.WriteMsg(m)
		})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	<-started

	var k cookies
	client := &dns.Client{Net: "udp", Dialer: dialer(t, p, 9, PurposeDNS, &k), Timeout: 2 * time.Second}
	for _, q := range []struct {
		name  string
		rcode int
	}{{"nx.test.", dns.RcodeNameError}, {"fail.test.", dns.RcodeServerFailure}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, dns.TypeAAAA)
		lo := MonotonicNow()
		r, rtt, err := client.Exchange(m, pc.LocalAddr().String())
		hi := MonotonicNow()
		if err != nil {
			t.Fatal(err)
		}
		if r.Rcode != q.rcode {
			t.Fatalf("rcode %d", r.Rcode)
		}
		cks := k.list()
		ev := c.wait(t, p, cks[len(cks)-1], EventDNS, 1)[0]
		t.Logf("%v (userspace rtt %v)", ev, rtt)
		if int(ev.Rcode) != q.rcode || ev.DNSID != m.Id || ev.UpstreamID != 9 || ev.Purpose != PurposeDNS {
			t.Errorf("event %v: want rcode %d id %d", ev, q.rcode, m.Id)
		}
		checkInside(t, "DNS "+q.name, ev, delay, lo, hi)
		if ev.Dur > rtt {
			t.Errorf("kernel DNS latency %v > userspace %v", ev.Dur, rtt)
		}
	}
	onlyFrom(t, c, k.list()...)
}

// nft runs nft with args.
func nft(args ...string) error {
	out, err := exec.Command("nft", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft %v: %v: %s", args, err, out)
	}
	return nil
}

// nftTablePrefix names the SYN-drop test's nft tables; the owner's pid
// follows.
const nftTablePrefix = "modproxytest"

// removeStaleTables deletes the SYN-drop tables of processes that no longer
// exist.
func removeStaleTables(t *testing.T) {
	out, err := exec.Command("nft", "list", "tables", "inet").CombinedOutput()
	if err != nil {
		t.Logf("nft list tables: %v: %s", err, out)
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, ok := strings.CutPrefix(strings.TrimSpace(line), "table inet "+nftTablePrefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(name)
		if err == nil && syscall.Kill(pid, 0) == syscall.ESRCH {
			nft("delete", "table", "inet", nftTablePrefix+name)
		}
	}
}

// nftDrops returns the packet count of the SYN-drop rule's counter in table.
func nftDrops(t *testing.T, table string) int {
	out, err := exec.Command("nft", "list", "chain", "inet", table, "out").CombinedOutput()
	if err != nil {
		t.Errorf("nft list: %v: %s", err, out)
		return -1
	}
	_, after, ok := strings.Cut(string(out), "counter packets ")
	if !ok {
		t.Errorf("no counter in the rule:\n%s", out)
		return -1
	}
	n, err := strconv.Atoi(strings.Fields(after)[0])
	if err != nil {
		t.Errorf("counter %q: %v", after, err)
		return -1
	}
	return n
}

func TestSYNDrop(t *testing.T) {
	p, c := startProbes(t)
	if _, err := exec.LookPath("nft"); err != nil {
		if os.Getenv("MODPROXY_REQUIRE_EBPF") == "1" {
			t.Fatal("nft not found (needed to drop SYNs)")
		}
		t.Skip("nft not found (needed to drop SYNs)")
	}
	ln := echoServer(t)
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	// One table per process: test binaries of other worktrees or packages
	// may run this test at the same time, and a shared name would let one
	// delete the other's rule. Tables of processes that are gone (aborted
	// runs) are removed.
	table := nftTablePrefix + strconv.Itoa(os.Getpid())
	removeStaleTables(t)
	var once sync.Once
	deleteTable := func() { once.Do(func() { nft("delete", "table", "inet", table) }) }
	if err := nft("add", "table", "inet", table); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(deleteTable)
	if err := nft("add", "chain", "inet", table, "out", "{ type filter hook output priority 0 ; }"); err != nil {
		t.Fatal(err)
	}
	if err := nft("add", "rule", "inet", table, "out", "ip", "daddr", "127.0.0.1", "tcp", "dport", port,
		"tcp", "flags", "&", "(syn|ack)", "==", "syn", "counter", "drop"); err != nil {
		t.Fatal(err)
	}

	// The application gives up first: closed before established, no
	// earlier than the dial's deadline (set after lo).
	var k cookies
	d := dialer(t, p, 13, PurposeTCP, &k)
	d.Timeout = 200 * time.Millisecond
	lo := MonotonicNow()
	if _, err := d.Dial("tcp4", ln.Addr().String()); err == nil {
		t.Fatal("dial through the SYN drop succeeded")
	}
	hi := MonotonicNow()
	failed := c.wait(t, p, k.list()[0], EventConnectFailed, 1)[0]
	t.Logf("%v", failed)
	if failed.Reason != ReasonClosed || failed.KernelTime < lo+uint64(d.Timeout) || failed.Start() < lo || failed.KernelTime > hi {
		t.Errorf("connect failure %v: want reason closed, after the %v dial timeout and inside Dial", failed, d.Timeout)
	}

	// The kernel gives up: TCP_SYNCNT=1 → one SYN retransmit after 1 s, then
	// ETIMEDOUT 2 s later.
	var k3 cookies
	d3 := dialer(t, p, 13, PurposeTCP, &k3)
	register := d3.Control
	d3.Control = func(network, address string, c syscall.RawConn) error {
		c.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_SYNCNT, 1) })
		return register(network, address, c)
	}
	if _, err := d3.Dial("tcp4", ln.Addr().String()); !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("dial with TCP_SYNCNT=1 through the SYN drop: %v, want ETIMEDOUT", err)
	}
	timedOut := c.wait(t, p, k3.list()[0], EventConnectFailed, 1)[0]
	t.Logf("%v", timedOut)
	if timedOut.Reason != ReasonTimeout || timedOut.Retransmits < 1 || timedOut.Dur < 2900*time.Millisecond {
		t.Errorf("connect failure %v: want reason timeout after >= 1 retransmit and ~3s", timedOut)
	}

	// The first SYN is dropped, a retransmitted one passes: the table goes
	// once the rule's counter shows a drop (not after a fixed time, which a
	// slow dial could outlast), and the first retransmission (1 s later) or
	// a later one gets through.
	dropsBefore := nftDrops(t, table)
	var k2 cookies
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		defer deleteTable()
		for nftDrops(t, table) == dropsBefore {
			select {
			case <-stopWatch:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	start := MonotonicNow()
	conn, err := dialer(t, p, 13, PurposeTCP, &k2).Dial("tcp4", ln.Addr().String())
	connected := MonotonicNow()
	close(stopWatch)
	<-watched
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Logf("userspace connect %v", time.Duration(connected-start))
	echo(t, conn, "after syn retransmit")
	ck := k2.list()[0]
	ev := c.wait(t, p, ck, EventConnect, 1)[0]
	t.Logf("%v", ev)
	// The initial retransmission timeout is 1 s; kernel timers fire late
	// under load, never early.
	if ev.Dur < 900*time.Millisecond || ev.Start() < start || ev.KernelTime > connected {
		t.Errorf("connect %v, want at least 1s (a SYN retransmit) and inside Dial", ev.Dur)
	}
	if ev.Retransmits < 1 {
		t.Errorf("connect event counts %d retransmits", ev.Retransmits)
	}
	re := c.wait(t, p, ck, EventRetransmit, 1)[0]
	if re.TCPState != 2 { // SYN_SENT
		t.Errorf("retransmit in state %d, want SYN_SENT", re.TCPState)
	}
	onlyFrom(t, c, k.list()[0], k3.list()[0], ck)
}

func TestAvailableAndClosed(t *testing.T) {
	requireEBPF(t)
	p, err := Load(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.RegisterSocket(0, 1, PurposeTCP); !errors.Is(err, ErrClosed) {
		t.Errorf("RegisterSocket after Close: %v", err)
	}
	if err := p.Flush(); !errors.Is(err, ErrClosed) {
		t.Errorf("Flush after Close: %v", err)
	}
	ids, err := p.Attached()
	if err != nil || len(ids) != 0 {
		t.Errorf("Attached after Close: %v, %v", ids, err)
	}
	var _ ebpf.ProgramID = p.ProgramIDs()[0]
}
