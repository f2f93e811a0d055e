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
// A lookup returns once both families answered, or DNSResolutionDelay after
// the first family answered with addresses (RFC 8305 section 3), so a server
// that drops AAAA queries does not cost every new connection the full query
// timeout; the slower query goes on and its answer is cached.
//
// Answers are taken only along the CNAME chain from the queried name:
// address records of any other owner name in a response are ignored (a
// server, or an attacker racing it, cannot slip in records for names that
// were not asked). A chain that ends in an alias the response does not
// resolve is followed with a new query, at most maxCNAMEHops aliases deep.
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
//   - a failed lookup (SERVFAIL, REFUSED, timeout, …) of a name with no
//     usable answer is remembered for DNSFailureTTL, so new connections
//     fail fast instead of each asking a failing server again;
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
	rcode      int   // dns.RcodeSuccess (possibly NODATA) or dns.RcodeNameError
	err        error // a remembered failure (DNSFailureTTL); addrs and rcode unused
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

func (e *rrEntry) answer() answer {
	if e.err != nil {
		return answer{err: e.err}
	}
	return answer{addrs: e.addrs, rcode: e.rcode}
}

// label is the rcode label under which a cache hit on e is counted.
func (e *rrEntry) label() string {
	if e.err != nil {
		return e.failRcode
	}
	return dns.RcodeToString[e.rcode]
}

// maxCNAMEHops bounds the aliases followed from one queried name.
const maxCNAMEHops = 8

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

	a6, a4 := r.lookupBoth(ctx, fqdn)
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

// lookupBoth asks AAAA and A in parallel and returns when both answered,
// or DNSResolutionDelay after one answered with addresses (the other then
// counts as no answer). RFC 8305 starts connecting at once on a positive
// AAAA; the dialer takes one address list and cannot add the IPv4 addresses
// later, so the short delay applies to whichever family is first, sparing
// IPv4-only networks a connection attempt with no fallback.
func (r *Resolver) lookupBoth(ctx context.Context, fqdn string) (a6, a4 answer) {
	type famAnswer struct {
		qtype uint16
		ans   answer
	}
	// Buffered: a lookup abandoned after the resolution delay finishes
	// (bounded by the query timeouts) and caches its answer without a
	// reader.
	ch := make(chan famAnswer, 2)
	for _, qt := range []uint16{dns.TypeAAAA, dns.TypeA} {
		go func() { ch <- famAnswer{qt, r.lookupType(ctx, fqdn, qt)} }()
	}
	var delay <-chan time.Time
	for got := 0; got < 2; {
		select {
		case fa := <-ch:
			got++
			if fa.qtype == dns.TypeAAAA {
				a6 = fa.ans
			} else {
				a4 = fa.ans
			}
			if got == 1 && len(fa.ans.addrs) > 0 {
				t := time.NewTimer(r.cfg.DNSResolutionDelay)
				defer t.Stop()
				delay = t.C
			}
		case <-delay:
			return a6, a4
		}
	}
	return a6, a4
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
			a, label := e.answer(), e.label()
			r.mu.Unlock()
			r.count(label, "hit")
			return a
		}
		if e.err != nil || !now.Before(e.expires.Add(r.cfg.DNSStaleWindow)) {
			e = nil // a remembered failure is never served stale
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
	case old != nil && old.err == nil && now.Before(old.expires.Add(r.cfg.DNSStaleWindow)):
		// Keep serving the last good answer; ask again after DNSStaleRetry.
		old.retryAfter = now.Add(r.cfg.DNSStaleRetry)
		old.failRcode = label
	case r.ctx.Err() == nil:
		r.cache[k] = &rrEntry{err: err, failRcode: label, ttl: r.cfg.DNSFailureTTL,
			expires: now.Add(r.cfg.DNSFailureTTL), lastUsed: now}
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

// resolve answers one (name, type) question, following the CNAME chain
// through further queries when a response leaves it unresolved. label is
// the rcode label of the result or of the last failure ("timeout",
// "error", "SERVFAIL", …).
func (r *Resolver) resolve(ctx context.Context, name string, qtype uint16) (*rrEntry, string, error) {
	if len(r.servers) == 0 {
		return nil, "error", errorf("resolve %s: no DNS servers configured", name)
	}
	qname := name
	var chainTTL uint32 = 1<<32 - 1 // smallest TTL of the aliases followed so far
	for hops := 0; ; {
		in, label, err := r.query(ctx, qname, qtype)
		if err != nil {
			return nil, label, err
		}
		var e *rrEntry
		next := ""
		if in.Rcode == dns.RcodeNameError {
			e = r.negative(in, dns.RcodeNameError)
		} else {
			var ttl uint32
			e, next, ttl, hops = r.positive(in, qname, qtype, hops)
			chainTTL = min(chainTTL, ttl)
		}
		if next == "" || hops >= maxCNAMEHops {
			if chainTTL < 1<<32-1 && e.rcode == dns.RcodeSuccess && len(e.addrs) > 0 {
				// An answer is only as fresh as the aliases leading to it.
				ttl := clampDur(time.Duration(chainTTL)*time.Second, r.cfg.DNSMinTTL, r.cfg.DNSMaxTTL)
				if ttl < e.ttl {
					e.ttl, e.expires = ttl, r.now().Add(ttl)
				}
			}
			return e, label, nil
		}
		qname = next
	}
}

// query asks the servers in turn, DNSAttempts rounds, until one gives an
// authoritative result (NOERROR or NXDOMAIN), and returns that response.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) (_ *dns.Msg, label string, err error) {
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
			case dns.RcodeSuccess, dns.RcodeNameError:
				return in, dns.RcodeToString[in.Rcode], nil
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

// positive reads a NOERROR response to a qtype question for qname. It
// follows the CNAME chain from qname through the answer section and takes
// only the address records owned by the chain's last name; hops counts the
// aliases followed, across queries. When the chain ends in an alias with no
// address records in this response, next is that alias (to be asked) and
// cnameTTL the smallest TTL of the aliases followed here.
func (r *Resolver) positive(in *dns.Msg, qname string, qtype uint16, hops int) (e *rrEntry, next string, cnameTTL uint32, _ int) {
	cnameTTL = 1<<32 - 1
	owner := qname
	seen := map[string]bool{strings.ToLower(owner): true}
	for hops < maxCNAMEHops {
		target := ""
		for _, rr := range in.Answer {
			if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, owner) {
				target = strings.ToLower(dns.Fqdn(c.Target))
				cnameTTL = min(cnameTTL, c.Hdr.Ttl)
				break
			}
		}
		if target == "" || seen[target] {
			break
		}
		seen[target] = true
		owner = target
		hops++
	}
	var addrs []netip.Addr
	var minTTL uint32 = 1<<32 - 1
	for _, rr := range in.Answer {
		if !strings.EqualFold(rr.Header().Name, owner) {
			continue // not on the chain from the queried name
		}
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
		}
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			continue
		}
		minTTL = min(minTTL, rr.Header().Ttl)
		if a = a.Unmap(); !containsAddr(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		if !strings.EqualFold(owner, qname) && !hasSOA(in) {
			// The response stops at an alias it does not resolve; a
			// response that says so (NODATA with an SOA) is believed.
			next = owner
		}
		return r.negative(in, dns.RcodeSuccess), next, cnameTTL, hops // NODATA
	}
	ttl := clampDur(time.Duration(min(minTTL, cnameTTL))*time.Second, r.cfg.DNSMinTTL, r.cfg.DNSMaxTTL)
	return &rrEntry{addrs: addrs, rcode: dns.RcodeSuccess, ttl: ttl, expires: r.now().Add(ttl)}, "", cnameTTL, hops
}

func hasSOA(in *dns.Msg) bool {
	for _, rr := range in.Ns {
		if _, ok := rr.(*dns.SOA); ok {
			return true
		}
	}
	return false
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
		if e.err != nil {
			if !now.Before(e.expires) {
				delete(r.cache, k) // a remembered failure is never refreshed
			}
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
