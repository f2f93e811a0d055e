package netprobe

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestResolverAAndAAAA(t *testing.T) {
	f := newFakeDNS(t)
	f.set(func(f *fakeDNS) {
		f.a["upstream.test."] = []string{"127.0.0.1"}
		f.aaaa["upstream.test."] = []string{"::1"}
	})
	cfg, reg := testConfig(t, f.Addr)
	p := newTestProbe(t, cfg)
	addrs, err := p.Resolver().LookupNetIP(context.Background(), "Upstream.Test")
	if err != nil {
		t.Fatal(err)
	}
	mustAddrs(t, addrs, "::1", "127.0.0.1")
	if _, err := p.Resolver().LookupNetIP(context.Background(), "upstream.test."); err != nil {
		t.Fatal(err)
	}
	if n := f.count("upstream.test", dns.TypeA); n != 1 {
		t.Errorf("A queries = %d, want 1 (second lookup from cache)", n)
	}
	if got := counter(t, reg, "modproxy_dns_lookups_total", map[string]string{"cache": "hit", "rcode": "NOERROR"}); got != 2 {
		t.Errorf("cache hits = %v, want 2 (A and AAAA)", got)
	}
	if n, _ := histogram(t, reg, "modproxy_dns_lookup_seconds", map[string]string{"source": "userspace"}); n != 2 {
		t.Errorf("lookup_seconds count = %d, want 2", n)
	}
}

func TestResolverSingleflight(t *testing.T) {
	f := newFakeDNS(t)
	f.set(func(f *fakeDNS) {
		f.a["upstream.test."] = []string{"127.0.0.1"}
		f.delay = 150 * time.Millisecond
	})
	cfg, _ := testConfig(t, f.Addr)
	p := newTestProbe(t, cfg)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addrs, err := p.Resolver().LookupNetIP(context.Background(), "upstream.test")
			if err == nil && (len(addrs) != 1 || addrs[0].String() != "127.0.0.1") {
				err = errors.New("wrong addresses")
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if a, aaaa := f.count("upstream.test", dns.TypeA), f.count("upstream.test", dns.TypeAAAA); a != 1 || aaaa != 1 {
		t.Errorf("queries A=%d AAAA=%d, want 1 each", a, aaaa)
	}
}

func TestResolverServeStale(t *testing.T) {
	for _, fault := range []string{"silent", "servfail", "refused"} {
		t.Run(fault, func(t *testing.T) {
			f := newFakeDNS(t)
			f.set(func(f *fakeDNS) { f.a["upstream.test."] = []string{"127.0.0.1"}; f.ttl = 1 })
			cfg, reg := testConfig(t, f.Addr)
			clock := newFakeClock()
			cfg.Clock = clock.Now
			cfg.DisableDNSPrefetch = true
			// Long enough for the answers that do come on a loaded
			// machine; the silent case waits it out once or twice.
			cfg.DNSTimeout = time.Second
			p := newTestProbe(t, cfg)
			r := p.Resolver()
			if _, err := r.LookupNetIP(context.Background(), "upstream.test"); err != nil {
				t.Fatal(err)
			}
			f.set(func(f *fakeDNS) {
				switch fault {
				case "silent":
					f.silent = true
				case "servfail":
					f.rcode = dns.RcodeServerFailure
				case "refused":
					f.rcode = dns.RcodeRefused
				}
			})
			clock.Advance(10 * time.Second) // expired, within the stale window
			before := f.count("upstream.test", dns.TypeA)
			addrs, err := r.LookupNetIP(context.Background(), "upstream.test")
			if err != nil {
				t.Fatalf("stale lookup: %v", err)
			}
			mustAddrs(t, addrs, "127.0.0.1")
			if f.count("upstream.test", dns.TypeA) == before {
				t.Error("expired entry was not refreshed")
			}
			if got := counter(t, reg, "modproxy_dns_lookups_total", map[string]string{"cache": "stale"}); got < 1 {
				t.Errorf("stale lookups = %v, want ≥ 1", got)
			}
			// Within DNSStaleRetry the servers are not asked again.
			before = f.count("upstream.test", dns.TypeA)
			if _, err := r.LookupNetIP(context.Background(), "upstream.test"); err != nil {
				t.Fatal(err)
			}
			if n := f.count("upstream.test", dns.TypeA); n != before {
				t.Errorf("queries during stale retry interval: %d, want %d", n, before)
			}
			// Beyond the stale window the name fails.
			clock.Advance(cfg.DNSStaleWindow + DefaultDNSStaleWindow)
			if _, err := r.LookupNetIP(context.Background(), "upstream.test"); err == nil {
				t.Error("lookup beyond the stale window succeeded")
			}
		})
	}
}

func TestResolverStaleAnswerTimeout(t *testing.T) {
	f := newFakeDNS(t)
	f.set(func(f *fakeDNS) { f.a["upstream.test."] = []string{"127.0.0.1"} })
	cfg, _ := testConfig(t, f.Addr)
	clock := newFakeClock()
	cfg.Clock = clock.Now
	cfg.DisableDNSPrefetch = true
	// A refresh that failed by timing out would be served stale too: the
	// query timeout lies beyond the hang guard, so that only the stale
	// answer timeout can end the lookup below.
	cfg.DNSTimeout = 2 * hangGuard
	cfg.DNSStaleAnswerTimeout = 100 * time.Millisecond
	p := newTestProbe(t, cfg)
	if _, err := p.Resolver().LookupNetIP(context.Background(), "upstream.test"); err != nil {
		t.Fatal(err)
	}
	// The refresh gets no answer until the lookup has returned, and the
	// answer it would get differs: the lookup can only return, and return
	// 127.0.0.1, by giving up on the refresh and serving the stale answer.
	hold := make(chan struct{})
	defer close(hold)
	f.set(func(f *fakeDNS) { f.hold = hold; f.a["upstream.test."] = []string{"127.0.0.2"} })
	clock.Advance(2 * time.Minute)
	type result struct {
		addrs []netip.Addr
		err   error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		addrs, err := p.Resolver().LookupNetIP(context.Background(), "upstream.test")
		done <- result{addrs, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		mustAddrs(t, r.addrs, "127.0.0.1")
	case <-time.After(hangGuard):
		t.Fatal("lookup waited for the unanswered refresh instead of serving the stale answer")
	}
	if el := time.Since(start); el < cfg.DNSStaleAnswerTimeout {
		t.Errorf("stale answer after %v, before the %v stale answer timeout", el, cfg.DNSStaleAnswerTimeout)
	}
}

func TestResolverNegativeCache(t *testing.T) {
	f := newFakeDNS(t)
	f.set(func(f *fakeDNS) { f.nx["missing.test."] = true; f.soaMin = 30 })
	cfg, reg := testConfig(t, f.Addr)
	clock := newFakeClock()
	cfg.Clock = clock.Now
	p := newTestProbe(t, cfg)
	for range 3 {
		_, err := p.Resolver().LookupNetIP(context.Background(), "missing.test")
		var de *net.DNSError
		if !errors.As(err, &de) || !de.IsNotFound {
			t.Fatalf("err = %v, want not-found DNSError", err)
		}
	}
	if n := f.count("missing.test", dns.TypeA); n != 1 {
		t.Errorf("A queries = %d, want 1 (negative caching)", n)
	}
	if got := counter(t, reg, "modproxy_dns_lookups_total", map[string]string{"cache": "hit", "rcode": "NXDOMAIN"}); got != 4 {
		t.Errorf("NXDOMAIN hits = %v, want 4", got)
	}
	clock.Advance(31 * time.Second) // SOA minimum passed
	p.Resolver().LookupNetIP(context.Background(), "missing.test")
	if n := f.count("missing.test", dns.TypeA); n != 2 {
		t.Errorf("A queries after the negative TTL = %d, want 2", n)
	}
}

func TestResolverTTLClamps(t *testing.T) {
	f := newFakeDNS(t)
	f.set(func(f *fakeDNS) {
		f.a["short.test."] = []string{"127.0.0.1"}
		f.a["long.test."] = []string{"127.0.0.1"}
		f.nx["nx.test."] = true
		f.soaMin = 86400
	})
	cfg, _ := testConfig(t, f.Addr)
	cfg.DNSMinTTL = 5 * time.Second
	cfg.DNSMaxTTL = time.Minute
	cfg.DNSNegativeMaxTTL = 10 * time.Second
	cfg.DisableDNSPrefetch = true
	p := newTestProbe(t, cfg)
	r := p.Resolver()
	ttl := func(name string) time.Duration {
		r.mu.Lock()
		defer r.mu.Unlock()
		e := r.cache[qkey{name, dns.TypeA}]
		if e == nil {
			t.Fatalf("%s not cached", name)
		}
		return e.ttl
	}
	f.set(func(f *fakeDNS) { f.ttl = 1 })
	r.LookupNetIP(context.Background(), "short.test")
	f.set(func(f *fakeDNS) { f.ttl = 86400 })
	r.LookupNetIP(context.Background(), "long.test")
	r.LookupNetIP(context.Background(), "nx.test")
	if got := ttl("short.test."); got != 5*time.Second {
		t.Errorf("short TTL = %v, want min clamp 5s", got)
	}
	if got := ttl("long.test."); got != time.Minute {
		t.Errorf("long TTL = %v, want max clamp 1m", got)
	}
	if got := ttl("nx.test."); got != 10*time.Second {
		t.Errorf("negative TTL = %v, want negative max clamp 10s", got)
	}
}

func TestResolverPrefetch(t *testing.T) {
	f := newFakeDNS(t)
	f.set(func(f *fakeDNS) { f.a["hot.test."] = []string{"127.0.0.1"}; f.ttl = 1 })
	cfg, reg := testConfig(t, f.Addr)
	// The resolver's clock moves only when the test says: the entry is
	// brought within the prefetch lead and never expires, so the second
	// lookup below is a hit however late the prefetch runs.
	clock := newFakeClock()
	cfg.Clock = clock.Now
	p := newTestProbe(t, cfg)
	r := p.Resolver()
	if _, err := r.LookupNetIP(context.Background(), "hot.test"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(600 * time.Millisecond) // 400 ms left of the 1 s TTL: within the lead
	deadline := time.Now().Add(hangGuard)
	for f.count("hot.test", dns.TypeA) < 2 || counter(t, reg, "modproxy_dns_lookups_total", map[string]string{"cache": "prefetch"}) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no prefetch before expiry")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := r.LookupNetIP(context.Background(), "hot.test"); err != nil {
		t.Fatal(err)
	}
	if got := counter(t, reg, "modproxy_dns_lookups_total", map[string]string{"cache": "prefetch"}); got < 1 {
		t.Errorf("prefetch lookups = %v, want ≥ 1", got)
	}
	if got := counter(t, reg, "modproxy_dns_lookups_total", map[string]string{"cache": "miss", "rcode": "NOERROR"}); got != 2 {
		t.Errorf("misses = %v, want 2 (first lookup only: A and AAAA)", got)
	}
}

func TestResolverTCPFallback(t *testing.T) {
	f := newFakeDNS(t)
	f.set(func(f *fakeDNS) { f.a["big.test."] = []string{"127.0.0.1"}; f.truncate = true })
	cfg, _ := testConfig(t, f.Addr)
	p := newTestProbe(t, cfg)
	addrs, err := p.Resolver().LookupNetIP(context.Background(), "big.test")
	if err != nil {
		t.Fatal(err)
	}
	mustAddrs(t, addrs, "127.0.0.1")
	if n := f.countProto("tcp"); n < 1 {
		t.Errorf("TCP queries = %d, want ≥ 1", n)
	}
}

func TestResolverRetriesNextServer(t *testing.T) {
	dead := newFakeDNS(t)
	dead.set(func(f *fakeDNS) { f.silent = true })
	good := newFakeDNS(t)
	good.set(func(f *fakeDNS) { f.a["upstream.test."] = []string{"127.0.0.1"} })
	cfg, _ := testConfig(t, dead.Addr)
	cfg.DNSServers = []string{dead.Addr, good.Addr}
	cfg.DNSTimeout = time.Second // the good server's answer must fit in it
	p := newTestProbe(t, cfg)
	addrs, err := p.Resolver().LookupNetIP(context.Background(), "upstream.test")
	if err != nil {
		t.Fatal(err)
	}
	mustAddrs(t, addrs, "127.0.0.1")
	if dead.count("upstream.test", dns.TypeA) != 1 {
		t.Error("first server was not tried")
	}
}

func TestResolverFailureWithoutCache(t *testing.T) {
	f := newFakeDNS(t)
	f.set(func(f *fakeDNS) { f.rcode = dns.RcodeServerFailure })
	cfg, reg := testConfig(t, f.Addr)
	cfg.DNSAttempts = 2
	p := newTestProbe(t, cfg)
	_, err := p.Resolver().LookupNetIP(context.Background(), "upstream.test")
	var de *net.DNSError
	if !errors.As(err, &de) || de.IsNotFound {
		t.Fatalf("err = %v, want a temporary DNSError", err)
	}
	if n := f.count("upstream.test", dns.TypeA); n != 2 {
		t.Errorf("A queries = %d, want 2 (DNSAttempts)", n)
	}
	if got := counter(t, reg, "modproxy_dns_lookups_total", map[string]string{"rcode": "SERVFAIL", "cache": "miss"}); got != 2 {
		t.Errorf("SERVFAIL misses = %v, want 2", got)
	}
}

func TestResolverHostsAndLiterals(t *testing.T) {
	f := newFakeDNS(t)
	cfg, _ := testConfig(t, f.Addr)
	if err := os.WriteFile(cfg.HostsFile, []byte("# comment\n10.1.2.3 myhost.internal alias # trailing\n::1 v6host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := newTestProbe(t, cfg)
	r := p.Resolver()
	for host, want := range map[string][]string{
		"localhost":        {"127.0.0.1", "::1"},
		"127.0.0.1":        {"127.0.0.1"},
		"[::1]":            {"::1"},
		"MyHost.internal.": {"10.1.2.3"},
		"alias":            {"10.1.2.3"},
		"v6host":           {"::1"},
	} {
		addrs, err := r.LookupNetIP(context.Background(), host)
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		mustAddrs(t, addrs, want...)
	}
	if n := f.countProto("udp") + f.countProto("tcp"); n != 0 {
		t.Errorf("DNS queries = %d, want 0", n)
	}
}

func TestResolverSystemConfig(t *testing.T) {
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	os.WriteFile(rc, []byte("nameserver 127.0.0.1\nnameserver ::1\n"), 0o644)
	cfg, _ := testConfig(t, "")
	cfg.DNSServers = nil
	cfg.ResolvConf = rc
	p := newTestProbe(t, cfg)
	got := p.Resolver().Servers()
	if len(got) != 2 || got[0] != "127.0.0.1:53" || got[1] != "[::1]:53" {
		t.Errorf("servers = %v", got)
	}
}
