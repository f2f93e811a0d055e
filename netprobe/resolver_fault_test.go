package netprobe

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestResolverCNAMEChain: only address records on the CNAME chain from the
// queried name are taken; records of other owner names (out of bailiwick,
// injected) are ignored, and a chain the response leaves unresolved is
// followed with a new query.
func TestResolverCNAMEChain(t *testing.T) {
	injected := func(name, ip string) dns.RR {
		return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(ip)}
	}
	tests := []struct {
		name    string
		setup   func(f *fakeDNS)
		host    string
		want    []string
		wantErr bool
	}{
		{"chain with out-of-bailiwick A", func(f *fakeDNS) {
			f.cname["www.upstream.test."] = "edge.cdn.test."
			f.cname["edge.cdn.test."] = "node1.cdn.test."
			f.a["node1.cdn.test."] = []string{"127.0.0.2"}
			f.extra = []dns.RR{injected("victim.test.", "10.6.6.6"), injected("edge.cdn.test.", "10.6.6.7")}
		}, "www.upstream.test", []string{"127.0.0.2"}, false},
		{"no chain, foreign A only", func(f *fakeDNS) {
			f.a["upstream.test."] = []string{"127.0.0.3"}
			f.extra = []dns.RR{injected("other.test.", "10.6.6.6")}
		}, "upstream.test", []string{"127.0.0.3"}, false},
		{"foreign A only is NODATA", func(f *fakeDNS) {
			f.extra = []dns.RR{injected("other.test.", "10.6.6.6")}
		}, "empty.test", nil, true},
		{"alias loop", func(f *fakeDNS) {
			f.cname["loop1.test."] = "loop2.test."
			f.cname["loop2.test."] = "loop1.test."
		}, "loop1.test", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeDNS(t)
			f.set(tt.setup)
			cfg, _ := testConfig(t, f.Addr)
			p := newTestProbe(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			addrs, err := p.Resolver().LookupNetIP(ctx, tt.host)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("addrs = %v, want an error", addrs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			mustAddrs(t, addrs, tt.want...)
		})
	}
}

// TestResolverFollowsUnresolvedAlias: a response that stops at an alias
// makes the resolver ask for the alias's target.
func TestResolverFollowsUnresolvedAlias(t *testing.T) {
	f := newFakeDNS(t)
	f.set(func(f *fakeDNS) {
		f.partial = true
		f.cname["alias.test."] = "target.test."
		f.a["target.test."] = []string{"127.0.0.4"}
	})
	cfg, _ := testConfig(t, f.Addr)
	p := newTestProbe(t, cfg)
	addrs, err := p.Resolver().LookupNetIP(context.Background(), "alias.test")
	if err != nil {
		t.Fatal(err)
	}
	mustAddrs(t, addrs, "127.0.0.4")
	if n := f.count("target.test", dns.TypeA); n != 1 {
		t.Errorf("A queries for the alias target = %d, want 1", n)
	}
}

// TestResolverDroppedAAAA: against a server that never answers AAAA, a
// lookup returns the A answer after the resolution delay, not after the
// AAAA query timeout; the failed AAAA is then remembered, so the next
// lookup does not wait at all.
func TestResolverDroppedAAAA(t *testing.T) {
	f := newFakeDNS(t)
	f.set(func(f *fakeDNS) {
		f.a["upstream.test."] = []string{"127.0.0.1"}
		f.drop[dns.TypeAAAA] = true
	})
	cfg, _ := testConfig(t, f.Addr)
	cfg.DNSTimeout = 3 * time.Second
	cfg.DNSResolutionDelay = 50 * time.Millisecond
	p := newTestProbe(t, cfg)
	r := p.Resolver()
	start := time.Now()
	addrs, err := r.LookupNetIP(context.Background(), "upstream.test")
	if err != nil {
		t.Fatal(err)
	}
	mustAddrs(t, addrs, "127.0.0.1")
	// Not a timing threshold on a loaded machine, only the structural
	// difference: the AAAA query needs 3 s to time out.
	if el := time.Since(start); el >= cfg.DNSTimeout {
		t.Errorf("lookup took %v: it waited for the dropped AAAA query (timeout %v)", el, cfg.DNSTimeout)
	}
	// The abandoned AAAA query still finishes and its failure is cached.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		e := r.cache[qkey{"upstream.test.", dns.TypeAAAA}]
		r.mu.Unlock()
		if e != nil && e.err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the timed-out AAAA query was not remembered")
		}
		time.Sleep(50 * time.Millisecond)
	}
	before := f.count("upstream.test", dns.TypeAAAA)
	if _, err := r.LookupNetIP(context.Background(), "upstream.test"); err != nil {
		t.Fatal(err)
	}
	if n := f.count("upstream.test", dns.TypeAAAA); n != before {
		t.Errorf("AAAA asked again within the failure TTL (%d → %d queries)", before, n)
	}
}

// TestResolverBothFamiliesWhenFast: when both families answer, both are
// returned (the resolution delay is only a cap).
func TestResolverBothFamiliesWhenFast(t *testing.T) {
	f := newFakeDNS(t)
	f.set(func(f *fakeDNS) {
		f.a["upstream.test."] = []string{"127.0.0.1"}
		f.aaaa["upstream.test."] = []string{"::1"}
	})
	cfg, _ := testConfig(t, f.Addr)
	cfg.DNSResolutionDelay = 2 * time.Second
	p := newTestProbe(t, cfg)
	addrs, err := p.Resolver().LookupNetIP(context.Background(), "upstream.test")
	if err != nil {
		t.Fatal(err)
	}
	mustAddrs(t, addrs, "::1", "127.0.0.1")
}

// TestResolverFailureCache: SERVFAIL and timeouts of a name without a usable
// answer are remembered for DNSFailureTTL, then asked again.
func TestResolverFailureCache(t *testing.T) {
	for _, fault := range []string{"servfail", "timeout"} {
		t.Run(fault, func(t *testing.T) {
			f := newFakeDNS(t)
			f.set(func(f *fakeDNS) {
				if fault == "servfail" {
					f.rcode = dns.RcodeServerFailure
				} else {
					f.silent = true
				}
			})
			cfg, reg := testConfig(t, f.Addr)
			clock := newFakeClock()
			cfg.Clock = clock.Now
			cfg.DNSTimeout = 100 * time.Millisecond
			cfg.DNSFailureTTL = 5 * time.Second
			p := newTestProbe(t, cfg)
			r := p.Resolver()
			for i := range 3 {
				_, err := r.LookupNetIP(context.Background(), "upstream.test")
				var de *net.DNSError
				if !errors.As(err, &de) || de.IsNotFound {
					t.Fatalf("lookup %d: err = %v, want a temporary DNSError", i, err)
				}
				if fault == "timeout" && !de.IsTimeout {
					t.Errorf("lookup %d: IsTimeout = false for a timed-out query", i)
				}
			}
			if n := f.count("upstream.test", dns.TypeA); n != 1 {
				t.Errorf("A queries = %d, want 1 (failure remembered)", n)
			}
			label := "SERVFAIL"
			if fault == "timeout" {
				label = "timeout"
			}
			if got := counter(t, reg, "modproxy_dns_lookups_total", map[string]string{"rcode": label, "cache": "hit"}); got != 4 {
				t.Errorf("%s hits = %v, want 4 (two lookups × two families)", label, got)
			}
			clock.Advance(cfg.DNSFailureTTL + time.Second)
			f.set(func(f *fakeDNS) { f.rcode, f.silent = 0, false; f.a["upstream.test."] = []string{"127.0.0.1"} })
			addrs, err := r.LookupNetIP(context.Background(), "upstream.test")
			if err != nil {
				t.Fatalf("after the failure TTL: %v", err)
			}
			mustAddrs(t, addrs, "127.0.0.1")
		})
	}
}

// TestResolverStaleBeatsFailureCache: while the server fails, the last good
// answer is served (RFC 8767), not the remembered failure.
func TestResolverStaleBeatsFailureCache(t *testing.T) {
	f := newFakeDNS(t)
	f.set(func(f *fakeDNS) { f.a["upstream.test."] = []string{"127.0.0.1"}; f.ttl = 1 })
	cfg, _ := testConfig(t, f.Addr)
	clock := newFakeClock()
	cfg.Clock = clock.Now
	cfg.DisableDNSPrefetch = true
	p := newTestProbe(t, cfg)
	r := p.Resolver()
	if _, err := r.LookupNetIP(context.Background(), "upstream.test"); err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fakeDNS) { f.rcode = dns.RcodeServerFailure })
	for _, step := range []time.Duration{10 * time.Second, cfg.DNSFailureTTL + DefaultDNSFailureTTL, DefaultDNSStaleRetry + time.Second} {
		clock.Advance(step)
		addrs, err := r.LookupNetIP(context.Background(), "upstream.test")
		if err != nil {
			t.Fatalf("after %v more: %v (want the stale answer)", step, err)
		}
		mustAddrs(t, addrs, "127.0.0.1")
	}
}
