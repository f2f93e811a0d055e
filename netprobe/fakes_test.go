package netprobe

import (
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// fakeDNS is a DNS server on 127.0.0.1 (UDP and TCP, same random port) with
// fault switches.
type fakeDNS struct {
	Addr string

	mu       sync.Mutex
	a        map[string][]string // fqdn → IPv4
	aaaa     map[string][]string // fqdn → IPv6
	nx       map[string]bool     // fqdn → NXDOMAIN with SOA
	cname    map[string]string   // fqdn → alias target (followed in answers)
	partial  bool                // answers stop after the first CNAME
	extra    []dns.RR            // appended to every NOERROR answer section
	drop     map[uint16]bool     // query types never answered
	ttl      uint32
	soaMin   uint32
	delay    time.Duration
	rcode    int // non-zero: answer every query with this rcode
	silent   bool
	hold     chan struct{}  // non-nil: answers wait until it is closed
	truncate bool           // UDP answers are empty and truncated
	counts   map[string]int // "name TYPE proto" → queries

	udp, tcp *dns.Server
}

func newFakeDNS(t *testing.T) *fakeDNS {
	t.Helper()
	f := &fakeDNS{
		a: map[string][]string{}, aaaa: map[string][]string{}, nx: map[string]bool{},
		cname: map[string]string{}, drop: map[uint16]bool{},
		ttl: 60, soaMin: 60, counts: map[string]int{},
	}
	var pc net.PacketConn
	var ln net.Listener
	for i := 0; ; i++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if i > 20 {
			t.Fatalf("no free port pair: %v", err)
		}
	}
	f.Addr = pc.LocalAddr().String()
	var started sync.WaitGroup
	started.Add(2)
	f.udp = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(f.serve), NotifyStartedFunc: started.Done}
	f.tcp = &dns.Server{Listener: ln, Handler: dns.HandlerFunc(f.serve), NotifyStartedFunc: started.Done}
	var done sync.WaitGroup
	done.Add(2)
	go func() { defer done.Done(); f.udp.ActivateAndServe() }()
	go func() { defer done.Done(); f.tcp.ActivateAndServe() }()
	started.Wait()
	t.Cleanup(func() {
		f.udp.Shutdown()
		f.tcp.Shutdown()
		done.Wait()
	})
	return f
}

func (f *fakeDNS) set(fn func(f *fakeDNS)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeDNS) count(name string, qtype uint16) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for k, v := range f.counts {
		if strings.HasPrefix(k, dns.Fqdn(name)+" "+dns.TypeToString[qtype]+" ") {
			n += v
		}
	}
	return n
}

func (f *fakeDNS) countProto(proto string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for k, v := range f.counts {
		if strings.HasSuffix(k, " "+proto) {
			n += v
		}
	}
	return n
}

func (f *fakeDNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	q := req.Question[0]
	proto := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		proto = "tcp"
	}
	f.mu.Lock()
	f.counts[q.Name+" "+dns.TypeToString[q.Qtype]+" "+proto]++
	delay, silent, rcode, trunc := f.delay, f.silent, f.rcode, f.truncate
	ttl, soaMin := f.ttl, f.soaMin
	var chain []dns.RR
	name := q.Name
	for hops := 0; f.cname[name] != "" && hops < 16; hops++ {
		chain = append(chain, &dns.CNAME{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: f.ttl}, Target: f.cname[name]})
		name = f.cname[name]
		if f.partial {
			break
		}
	}
	a, aaaa, nx := f.a[name], f.aaaa[name], f.nx[name]
	extra, drop := f.extra, f.drop[q.Qtype]
	if f.partial && len(chain) > 0 {
		a, aaaa = nil, nil
	}
	hold := f.hold
	f.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
	}
	if hold != nil {
		<-hold
	}
	if silent || drop {
		return
	}
	m := new(dns.Msg)
	m.SetReply(req)
	soa := &dns.SOA{Hdr: dns.RR_Header{Name: "test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 3600},
		Ns: "ns.test.", Mbox: "admin.test.", Serial: 1, Refresh: 60, Retry: 60, Expire: 60, Minttl: soaMin}
	switch {
	case rcode != 0:
		m.Rcode = rcode
	case proto == "udp" && trunc:
		m.Truncated = true
	case nx:
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, soa)
	default:
		m.Answer = append(m.Answer, chain...)
		hdr := func(t uint16) dns.RR_Header {
			return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
		}
		switch q.Qtype {
		case dns.TypeA:
			for _, ip := range a {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: net.ParseIP(ip)})
			}
		case dns.TypeAAAA:
			for _, ip := range aaaa {
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: net.ParseIP(ip)})
			}
		}
		if len(m.Answer) == 0 {
			m.Ns = append(m.Ns, soa) // NODATA
		}
		m.Answer = append(m.Answer, extra...)
	}
	w.WriteMsg(m)
}

// fakeClock is an injectable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testConfig is a hermetic Config: the fake DNS server, no hosts file, a
// private registry, short timeouts.
func testConfig(t *testing.T, dnsAddr string) (Config, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	return Config{
		DNSServers:     []string{dnsAddr},
		HostsFile:      filepath.Join(t.TempDir(), "hosts"),
		DNSTimeout:     5 * time.Second, // answers come; tests of timeouts set their own
		DNSAttempts:    1,
		DNSMinTTL:      time.Second,
		ConnectTimeout: 10 * time.Second,
		Registerer:     reg,
	}, reg
}

func newTestProbe(t *testing.T, cfg Config) *Probe {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// metricFamily finds a family in reg.
func gather(t *testing.T, reg prometheus.Gatherer, name string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	return nil
}

func matches(m *dto.Metric, labels map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := labels[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(labels)
}

// histogram returns count and sum of the matching histogram series.
func histogram(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) (count uint64, sum float64) {
	t.Helper()
	for _, m := range gather(t, reg, name) {
		if matches(m, labels) {
			count += m.GetHistogram().GetSampleCount()
			sum += m.GetHistogram().GetSampleSum()
		}
	}
	return count, sum
}

// counter sums the matching counter (or gauge) series.
func counter(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	v := 0.0
	for _, m := range gather(t, reg, name) {
		if matches(m, labels) {
			v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return v
}

func mustAddrs(t *testing.T, got []netip.Addr, want ...string) {
	t.Helper()
	var s []string
	for _, a := range got {
		s = append(s, a.String())
	}
	if strings.Join(s, ",") != strings.Join(want, ",") {
		t.Fatalf("addresses = %v, want %v", s, want)
	}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}
