package main

import (
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/modproxy/modproxy/internal/testupstream"
)

// faultyNameServer answers name → 127.0.0.1 (A, TTL 1 s) over UDP on
// 127.0.0.1, never answers AAAA (a resolver that drops them), and answers
// every query SERVFAIL while servfail is set.
type faultyNameServer struct {
	addr     string
	servfail atomic.Bool
	aaaa     atomic.Int64 // AAAA queries seen
}

func startFaultyNameServer(t *testing.T, name string) *faultyNameServer {
	t.Helper()
	ns := &faultyNameServer{}
	ns.addr = serveDNS(t, func(w dns.ResponseWriter, req *dns.Msg) {
		q := req.Question[0]
		m := new(dns.Msg)
		m.SetReply(req)
		switch {
		case ns.servfail.Load():
			m.Rcode = dns.RcodeServerFailure
		case q.Qtype == dns.TypeAAAA:
			ns.aaaa.Add(1)
			return // dropped
		case !strings.EqualFold(q.Name, dns.Fqdn(name)):
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
				A:   net.IPv4(127, 0, 0, 1),
			})
		}
		w.WriteMsg(m)
	})
	return ns
}

// serveDNS serves handler over UDP on 127.0.0.1 until the test ends and
// returns its address.
func serveDNS(t *testing.T, handler dns.HandlerFunc) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: handler}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// metricSum sums the samples of the series whose line starts with
// prefix in a /metrics exposition.
func metricSum(exposition, prefix string) float64 {
	var sum float64
	for _, line := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			v, _ := strconv.ParseFloat(line[i+1:], 64)
			sum += v
		}
	}
	return sum
}

// TestDNSFaultsEndToEnd: the go command through modproxy, whose upstream is
// reached by name through a name server that drops AAAA queries, succeeds;
// when the name server then answers SERVFAIL and the answer has expired,
// new upstream connections use the last good answer (served stale).
func TestDNSFaultsEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and runs the go command")
	}
	up, err := testupstream.New(e2eModules...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(up.URL(), "http://"))
	ns := startFaultyNameServer(t, "upstream.test")
	mp := startModproxy(t, "--db", filepath.Join(t.TempDir(), "modproxy.db"),
		"--upstream", "http://upstream.test:"+port, "--sumdb", "off", "--private", "", "--nosumdb", "",
		"--dns-server", ns.addr, "--dns-min-ttl", "1s")

	// AAAA dropped.
	project := writeProject(t)
	newGoEnv(t, mp.URL, nil).run(project, "mod", "download")
	if ns.aaaa.Load() == 0 {
		t.Fatal("modproxy never asked AAAA; the test proves nothing")
	}

	// SERVFAIL after the answer expired, on new connections.
	ns.servfail.Store(true)
	time.Sleep(1500 * time.Millisecond) // past the 1 s TTL
	up.CloseClientConnections()
	newGoEnv(t, mp.URL, nil).run(t.TempDir(), "mod", "download", "example.com/dep@v1.2.0", "example.com/tool@v1.0.0")

	_, metrics := mp.get(t, "/metrics")
	if metricSum(metrics, `modproxy_dns_lookups_total{cache="stale"`) == 0 {
		t.Errorf("no lookup was served stale while the name server failed:\n%s", grepLines(metrics, "modproxy_dns_lookups_total"))
	}
	// For the record (no timing assertion): lookups did not wait for the
	// dropped AAAA queries' timeouts.
	sumRE := regexp.MustCompile(`modproxy_dns_lookup_seconds_(sum|count)\{source="userspace"\} (\S+)`)
	vals := map[string]float64{}
	for _, m := range sumRE.FindAllStringSubmatch(metrics, -1) {
		vals[m[1]], _ = strconv.ParseFloat(m[2], 64)
	}
	if vals["count"] > 0 {
		t.Logf("%v lookups, mean %.1f ms (a lookup waiting for AAAA would take the 2 s query timeout)", vals["count"], 1000*vals["sum"]/vals["count"])
	}
}
