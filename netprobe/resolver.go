package netprobe

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// A Resolver resolves host names to addresses for the dialer. One Resolver
// (and one cache) is shared by all upstreams.
//
// Lookup order: IP literals, the hosts file, "localhost" (RFC 6761), then
// DNS: A and AAAA are asked in parallel, each answer cached per (name, type).
//
// Cache semantics:
//   - positive answers live for the smallest TTL of the answer section,
//     clamped to [DNSMinTTL, DNSMaxTTL];
//   - NXDOMAIN and NODATA answers live for min(SOA TTL, SOA MINIMUM)
//     clamped to [DNSMinTTL, DNSNegativeMaxTTL] (RFC 2308); without an SOA
//     they are not cached;
//   - an expired answer (positive or negative) stays usable for
//     DNSStaleWindow: when
//     refreshing it fails (SERVFAIL, REFUSED, timeout, …) or takes longer
//     than DNSStaleAnswerTimeout the stale answer is returned, and the
//     servers are not asked again for DNSStaleRetry (RFC 8767);
//   - names looked up within DNSPrefetchIdle are refreshed in the
//     background shortly before they expire, so lookups in steady use never
//     wait for DNS;
//   - at most one query per (name, type) is in flight; concurrent lookups
//     join it. Queries run on the Resolver's own context, so a caller that
//     gives up does not cancel the query for the others.
//
// Names are treated as fully qualified (no search-list expansion).
type Resolver struct {
	cfg     *Config
	m       *metrics
	servers []string
	hosts   *hostsFile
	udp     *dns.Client
	tcp     *dns.Client
	now     func() time.Time

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	cache   map[qkey]*rrEntry
	flights map[qkey]*flight
	closed  bool
}

type qkey struct {
	name  string // lower-case FQDN
	qtype uint16
}

// rrEntry is one cached answer. Its addrs slice is never modified.
type rrEntry struct {
	addrs      []netip.Addr
	rcode      int // dns.RcodeSuccess (possibly NODATA) or dns.RcodeNameError
	ttl        time.Duration
	expires    time.Time
	lastUsed   time.Time
	retryAfter time.Time // after a failed refresh, serve stale until then
	failRcode  string    // rcode label of the last failed refresh
}

// answer is the result of one question.
type answer struct {
	addrs []netip.Addr
	rcode int
	err   error // no usable answer: every server failed
}

func (e *rrEntry) answer() answer { return answer{addrs: e.addrs, rcode: e.rcode} }

type flight struct {
	done  chan struct{}
	ans   answer
	label string // rcode label
}

// prefetchTick is the period of the maintenance loop (prefetch and sweep).
const prefetchTick = 250 * time.Millisecond

func newResolver(cfg *Config, m *metrics, kernel *atomic.Pointer[Kernel]) (*Resolver, error) {
	servers, err := dnsServers(cfg)
	if err != nil {
		return nil, err
	}
	if len(servers) == 0 {
		cfg.Logger.Warn("netprobe: no DNS servers configured; only IP literals and the hosts file resolve", "resolv_conf", cfg.ResolvConf)
	}
	r := &Resolver{
		cfg:     cfg,
		m:       m,
		servers: servers,
		hosts:   newHostsFile(cfg.HostsFile),
		now:     cfg.Clock,
		cache:   make(map[qkey]*rrEntry),
		flights: make(map[qkey]*flight),
	}
	hook := cfg.SocketHook
	nd := &net.Dialer{
		// The query name rides in the context (see exchange) so that the
		// kernel telemetry can attribute its per-query timings.
		ControlContext: func(ctx context.Context, network, address string, c syscall.RawConn) error {
			k := kernel.Load()
			if hook == nil && k == nil {
				return nil
			}
			return c.Control(func(fd uintptr) {
				if hook != nil {
					hook(fd, address, "dns")
				}
				if k != nil && strings.HasPrefix(network, "udp") {
					qname, _ := ctx.Value(dnsQueryKey{}).(string)
					k.registerDNS(fd, address, qname)
				}
			})
		},
	}
	r.udp = &dns.Client{Net: "udp", Dialer: nd}
	r.tcp = &dns.Client{Net: "tcp", Dialer: nd}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.wg.Add(1)
	go r.loop()
	return r, nil
}

func dnsServers(cfg *Config) ([]string, error) {
	list := cfg.DNSServers
	port := "53"
	if len(list) == 0 {
		cc, err := dns.ClientConfigFromFile(cfg.ResolvConf)
		if err != nil {
			cfg.Logger.Warn("netprobe: cannot read resolver configuration", "file", cfg.ResolvConf, "err", err)
			return nil, nil
		}
		list = cc.Servers
		if cc.Port != "" {
			port = cc.Port
		}
	}
	out := make([]string, 0, len(list))
	for _, s := range list {
		if _, _, err := net.SplitHostPort(s); err == nil {
			out = append(out, s)
			continue
		}
		ip, err := netip.ParseAddr(strings.Trim(s, "[]"))
		if err != nil {
			return nil, errorf("DNS server %q: want IP or IP:port", s)
		}
		out = append(out, net.JoinHostPort(ip.String(), port))
	}
	return out, nil
}

// Servers returns the DNS servers queried, in order.
func (r *Resolver) Servers() []string { return append([]string(nil), r.servers...) }

// LookupNetIP returns the addresses of host, IPv6 first then IPv4 (the
// dialer interleaves them). Failures are *net.DNSError values.
func (r *Resolver) LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error) {
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	if name == "" {
		return nil, &net.DNSError{Err: "empty host name", Name: host, IsNotFound: true}
	}
	if ip, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
		return []netip.Addr{ip.Unmap()}, nil
	}
	if addrs := r.hosts.lookup(name); len(addrs) > 0 {
		return append([]netip.Addr(nil), addrs...), nil
	}
	if name == "localhost" || strings.HasSuffix(name, ".localhost") {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}, nil
	}
	fqdn := dns.Fqdn(name)
	if _, ok := dns.IsDomainName(fqdn); !ok {
		return nil, &net.DNSError{Err: "invalid domain name", Name: host, IsNotFound: true}
	}
	start := time.Now()
	defer func() { r.m.dnsSeconds.WithLabelValues(SourceUserspace).Observe(time.Since(start).Seconds()) }()

	ch := make(chan answer, 1)
	go func() { ch <- r.lookupType(ctx, fqdn, dns.TypeAAAA) }()
	a4 := r.lookupType(ctx, fqdn, dns.TypeA)
	a6 := <-ch

	addrs := make([]netip.Addr, 0, len(a6.addrs)+len(a4.addrs))
	addrs = append(append(addrs, a6.addrs...), a4.addrs...)
	if len(addrs) > 0 {
		return addrs, nil
	}
	err := a4.err
	if err == nil {
		err = a6.err
	}
	if err == nil {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return nil, &net.DNSError{
		Err:         err.Error(),
		Name:        host,
		IsTimeout:   IsTimeout(err),
		IsTemporary: true,
		UnwrapErr:   err,
	}
}

// lookupType answers one question from the cache, a (shared) query, or
// stale data.
func (r *Resolver) lookupType(ctx context.Context, name string, qtype uint16) answer {
	k := qkey{name, qtype}
	now := r.now()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return answer{err: errClosed}
	}
	e := r.cache[k]
	if e != nil {
		e.lastUsed = now
		if now.Before(e.expires) {
			a := e.answer()
			r.mu.Unlock()
			r.count(dns.RcodeToString[a.rcode], "hit")
			return a
		}
		if !now.Before(e.expires.Add(r.cfg.DNSStaleWindow)) {
			e = nil
		}
	}
	var stale answer
	if e != nil {
		stale = e.answer()
		if now.Before(e.retryAfter) {
			label := e.failRcode
			r.mu.Unlock()
			r.count(label, "stale")
			return stale
		}
	}
	f := r.startFlightLocked(k, false)
	r.mu.Unlock()

	var staleTimer <-chan time.Time
	if e != nil {
		t := time.NewTimer(r.cfg.DNSStaleAnswerTimeout)
		defer t.Stop()
		staleTimer = t.C
	}
	select {
	case <-f.done:
		if f.ans.err != nil && e != nil {
			r.count(f.label, "stale")
			return stale
		}
		r.count(f.label, "miss")
		return f.ans
	case <-staleTimer:
		r.count("timeout", "stale")
		return stale
	case <-ctx.Done():
		return answer{err: ctx.Err()}
	}
}

func (r *Resolver) count(rcode, cache string) {
	if rcode == "" {
		rcode = "error"
	}
	r.m.dnsLookups.WithLabelValues(rcode, cache).Inc()
}

// startFlightLocked returns the in-flight query for k, starting one if
// needed. r.mu must be held and r.closed false.
func (r *Resolver) startFlightLocked(k qkey, prefetch bool) *flight {
	if f := r.flights[k]; f != nil {
		return f
	}
	f := &flight{done: make(chan struct{})}
	r.flights[k] = f
	r.wg.Add(1)
	go r.runFlight(k, f, prefetch)
	return f
}

func (r *Resolver) runFlight(k qkey, f *flight, prefetch bool) {
	defer r.wg.Done()
	e, label, err := r.resolve(r.ctx, k.name, k.qtype)
	now := r.now()
	r.mu.Lock()
	old := r.cache[k]
	switch {
	case err == nil && now.Before(e.expires):
		e.lastUsed = now
		if prefetch && old != nil {
			e.lastUsed = old.lastUsed
		}
		r.cache[k] = e
	case err == nil:
		delete(r.cache, k) // authoritative but uncacheable (no SOA)
	case old != nil:
		old.retryAfter = now.Add(r.cfg.DNSStaleRetry)
		old.failRcode = label
	}
	delete(r.flights, k)
	r.mu.Unlock()
	if err != nil {
		f.ans = answer{err: err}
	} else {
		f.ans = e.answer()
	}
	f.label = label
	close(f.done)
	if prefetch {
		r.count(label, "prefetch")
	}
}

// resolve asks the servers in turn, DNSAttempts rounds, until one gives an
// authoritative result (NOERROR or NXDOMAIN). label is the rcode label of
// the result or of the last failure ("timeout", "error", "SERVFAIL", …).
func (r *Resolver) resolve(ctx context.Context, name string, qtype uint16) (e *rrEntry, label string, err error) {
	if len(r.servers) == 0 {
		return nil, "error", errorf("resolve %s: no DNS servers configured", name)
	}
	label = "error"
	for attempt := 0; attempt < r.cfg.DNSAttempts; attempt++ {
		for _, srv := range r.servers {
			if ctx.Err() != nil {
				return nil, "error", errorf("resolve %s: %w", name, ctx.Err())
			}
			in, xerr := r.exchange(ctx, name, qtype, srv)
			if xerr != nil {
				label = "error"
				if IsTimeout(xerr) {
					label = "timeout"
				}
				err = errorf("resolve %s %s via %s: %w", name, dns.TypeToString[qtype], srv, xerr)
				continue
			}
			switch in.Rcode {
			case dns.RcodeSuccess:
				return r.positive(in, qtype), dns.RcodeToString[in.Rcode], nil
			case dns.RcodeNameError:
				return r.negative(in, dns.RcodeNameError), dns.RcodeToString[in.Rcode], nil
			default:
				label = dns.RcodeToString[in.Rcode]
				if label == "" {
					label = "error"
				}
				err = errorf("resolve %s %s via %s: server answered %s", name, dns.TypeToString[qtype], srv, label)
			}
		}
	}
	return nil, label, err
}

// dnsQueryKey is the context key of the name a DNS socket is dialed for.
type dnsQueryKey struct{}

// exchange sends one query over UDP, repeating it over TCP when the answer
// is truncated.
func (r *Resolver) exchange(ctx context.Context, name string, qtype uint16, srv string) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, false)
	qctx, cancel := context.WithTimeout(context.WithValue(ctx, dnsQueryKey{}, name), r.cfg.DNSTimeout)
	in, _, err := r.udp.ExchangeContext(qctx, m, srv)
	cancel()
	if err != nil || !in.Truncated {
		return in, err
	}
	m.Id = dns.Id()
	qctx, cancel = context.WithTimeout(ctx, r.cfg.DNSTimeout)
	defer cancel()
	in, _, err = r.tcp.ExchangeContext(qctx, m, srv)
	if err != nil {
		return nil, errorf("TCP retry after truncated UDP answer: %w", err)
	}
	return in, nil
}

func (r *Resolver) positive(in *dns.Msg, qtype uint16) *rrEntry {
	var addrs []netip.Addr
	var minTTL uint32 = 1<<32 - 1
	for _, rr := range in.Answer {
		var ip net.IP
		switch v := rr.(type) {
		case *dns.A:
			if qtype == dns.TypeA {
				ip = v.A
			}
		case *dns.AAAA:
			if qtype == dns.TypeAAAA {
				ip = v.AAAA
			}
		case *dns.CNAME:
		default:
			continue
		}
		minTTL = min(minTTL, rr.Header().Ttl)
		if a, ok := netip.AddrFromSlice(ip); ok {
			a = a.Unmap()
			if !containsAddr(addrs, a) {
				addrs = append(addrs, a)
			}
		}
	}
	if len(addrs) == 0 {
		return r.negative(in, dns.RcodeSuccess) // NODATA
	}
	ttl := clampDur(time.Duration(minTTL)*time.Second, r.cfg.DNSMinTTL, r.cfg.DNSMaxTTL)
	return &rrEntry{addrs: addrs, rcode: dns.RcodeSuccess, ttl: ttl, expires: r.now().Add(ttl)}
}

// negative builds the entry for NXDOMAIN or NODATA: cached for the SOA
// minimum (RFC 2308 §5), not at all without an SOA.
func (r *Resolver) negative(in *dns.Msg, rcode int) *rrEntry {
	e := &rrEntry{rcode: rcode, expires: r.now()}
	for _, rr := range in.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			ttl := time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
			e.ttl = clampDur(ttl, r.cfg.DNSMinTTL, r.cfg.DNSNegativeMaxTTL)
			e.expires = e.expires.Add(e.ttl)
			break
		}
	}
	return e
}

func clampDur(d, lo, hi time.Duration) time.Duration {
	return max(lo, min(d, hi))
}

// loop refreshes names in use before they expire and sweeps dead entries.
func (r *Resolver) loop() {
	defer r.wg.Done()
	t := time.NewTicker(prefetchTick)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
			r.maintain()
		}
	}
}

// prefetchLead is how long before expiry a name in use is refreshed.
func prefetchLead(ttl time.Duration) time.Duration { return max(ttl/10, 2*prefetchTick) }

func (r *Resolver) maintain() {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	for k, e := range r.cache {
		if r.flights[k] != nil {
			continue
		}
		if !now.Before(e.expires) {
			if !now.Before(e.expires.Add(r.cfg.DNSStaleWindow)) {
				delete(r.cache, k)
			}
			continue
		}
		if r.cfg.DisableDNSPrefetch || now.Sub(e.lastUsed) > r.cfg.DNSPrefetchIdle {
			continue
		}
		if e.expires.Sub(now) <= prefetchLead(e.ttl) {
			r.startFlightLocked(k, true)
		}
	}
}

// close stops the maintenance loop and in-flight queries and waits for them.
func (r *Resolver) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
}

// IsTimeout reports whether err is a timeout: a context deadline or a
// net.Error that says so. It is the one timeout test of modproxy.
func IsTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
