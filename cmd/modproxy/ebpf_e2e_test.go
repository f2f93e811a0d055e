package main

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/modproxy/modproxy/bpf"
	"github.com/modproxy/modproxy/internal/testupstream"
	"github.com/modproxy/modproxy/netprobe"
)

// startNameServer answers name → 127.0.0.1 (A; AAAA is empty) and NXDOMAIN
// for anything else, over UDP on 127.0.0.1.
func startNameServer(t *testing.T, name string) string {
	t.Helper()
	return serveDNS(t, func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		q := req.Question[0]
		switch {
		case !strings.EqualFold(q.Name, dns.Fqdn(name)):
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   net.IPv4(127, 0, 0, 1),
			})
		}
		w.WriteMsg(m)
	})
}

// startTLSUpstream starts the fake upstream over TLS, reached by name
// (testupstream.TLSHost) through a name server it also starts, and makes
// processes started afterwards trust its certificate. It returns the
// upstream, its URL by name and the name server's address.
func startTLSUpstream(t *testing.T) (*testupstream.Server, string, string) {
	t.Helper()
	modproxyBin(t) // built before SSL_CERT_FILE narrows the trusted roots
	up, err := testupstream.NewTLS(e2eModules...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	certFile := filepath.Join(t.TempDir(), "upstream.pem")
	if err := os.WriteFile(certFile, up.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SSL_CERT_FILE", certFile) // inherited by modproxy: Go reads it on Linux
	return up, up.HostURL(testupstream.TLSHost), startNameServer(t, testupstream.TLSHost)
}

// TestEBPFEndToEnd drives go mod download through modproxy with --ebpf=on,
// reaching a TLS upstream by name through modproxy's own resolver, and
// finds kernel-side samples for every phase in /metrics and on
// /debug/upstreams.
func TestEBPFEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds the binary and runs the go command")
	}
	if err := bpf.Available(); err != nil {
		if os.Getenv("MODPROXY_REQUIRE_EBPF") == "1" {
			t.Fatalf("eBPF required (MODPROXY_REQUIRE_EBPF=1) but unavailable: %v", err)
		}
		t.Skipf("eBPF unavailable: %v", err)
	}
	_, upstream, dnsAddr := startTLSUpstream(t)

	mp := startModproxy(t, "--ebpf=on", "--db", filepath.Join(t.TempDir(), "modproxy.db"),
		"--upstream", upstream, "--sumdb", "off", "--private", "", "--nosumdb", "",
		"--dns-server", dnsAddr, "--upstream-http1")
	if !strings.Contains(mp.logs.String(), "kernel telemetry enabled") {
		t.Errorf("no 'kernel telemetry enabled' log line:\n%s", mp.logs)
	}
	g := newGoEnv(t, mp.URL, nil)
	g.run(writeProject(t), "mod", "download")

	// Events reach userspace within the probes' poll interval.
	want := []string{"dns", "connect", "tls", "ttfb"}
	var metrics string
	var missing []string
	for deadline := time.Now().Add(time.Minute); ; { // a hang guard
		_, metrics = mp.get(t, "/metrics")
		missing = missing[:0]
		for _, phase := range want {
			if !hasKernelPhase(metrics, upstream, phase) {
				missing = append(missing, phase)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(missing) > 0 {
		t.Errorf("no source=\"kernel\" samples for phases %v of %s in /metrics:\n%s", missing, upstream, grepLines(metrics, "source=\"kernel\""))
	}
	for _, series := range []string{
		`modproxy_ebpf_enabled`,
		`modproxy_kernel_dns_queries_total{rcode="NOERROR",server="` + dnsAddr + `"}`,
		`modproxy_kernel_tls_hello_seconds_count{upstream="` + upstream + `",version="TLS 1.3"}`,
		`modproxy_runtime_delay_seconds_count{upstream="` + upstream + `"}`,
	} {
		if !hasNonZero(metrics, series) {
			t.Errorf("metrics lack a non-zero %s", series)
		}
	}
	for _, name := range []string{"modproxy_ebpf_events_dropped_total", "modproxy_ebpf_parse_errors_total"} {
		if !strings.Contains(metrics, "\n"+name+" 0\n") {
			t.Errorf("%s missing or non-zero:\n%s", name, grepLines(metrics, name))
		}
	}

	// /debug/upstreams shows both sources side by side.
	_, body := mp.get(t, "/debug/upstreams?format=json")
	var snap netprobe.Snapshot
	if err := json.Unmarshal([]byte(body), &snap); err != nil {
		t.Fatalf("debug JSON: %v\n%s", err, body)
	}
	sources := map[string]map[string]bool{}
	for _, u := range snap.Upstreams {
		if u.Upstream != upstream {
			continue
		}
		for _, ps := range u.Phases {
			if sources[ps.Phase] == nil {
				sources[ps.Phase] = map[string]bool{}
			}
			sources[ps.Phase][ps.Source] = true
		}
	}
	for _, phase := range want {
		if !sources[phase]["kernel"] || !sources[phase]["userspace"] {
			t.Errorf("/debug/upstreams phase %s has sources %v, want kernel and userspace", phase, sources[phase])
		}
	}
	mp.stop(t)
}

// hasKernelPhase reports whether the exposition has a non-zero kernel
// sample count for upstream and phase (any kind).
func hasKernelPhase(exposition, upstream, phase string) bool {
	sc := bufio.NewScanner(strings.NewReader(exposition))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "modproxy_upstream_phase_seconds_count{") &&
			strings.Contains(line, `phase="`+phase+`"`) && strings.Contains(line, `source="kernel"`) &&
			strings.Contains(line, `upstream="`+upstream+`"`) && !strings.HasSuffix(line, " 0") {
			return true
		}
	}
	return false
}

func grepLines(s, sub string) string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
