package netprobe

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Default values applied by [New] to zero fields of [Config].
const (
	DefaultConnectTimeout      = 10 * time.Second
	DefaultTLSTimeout          = 10 * time.Second
	DefaultFirstByteTimeout    = 30 * time.Second
	DefaultIdleBodyTimeout     = 30 * time.Second
	DefaultFallbackDelay       = 300 * time.Millisecond
	DefaultMaxIdleConns        = 100
	DefaultMaxIdleConnsPerHost = 16
	DefaultIdleConnTimeout     = 90 * time.Second

	DefaultDNSTimeout            = 2 * time.Second
	DefaultDNSAttempts           = 2
	DefaultDNSMinTTL             = 5 * time.Second
	DefaultDNSMaxTTL             = time.Hour
	DefaultDNSNegativeMaxTTL     = 5 * time.Minute
	DefaultDNSStaleWindow        = 6 * time.Hour
	DefaultDNSStaleAnswerTimeout = 1800 * time.Millisecond
	DefaultDNSStaleRetry         = 30 * time.Second
	DefaultDNSPrefetchIdle       = 5 * time.Minute
	DefaultDNSFailureTTL         = 5 * time.Second
	DefaultDNSResolutionDelay    = 50 * time.Millisecond

	DefaultCircuitCooldown   = 30 * time.Second
	DefaultCircuitMinSamples = 10
	DefaultHedgeFloor        = 50 * time.Millisecond
	DefaultHedgeMinSamples   = 20
)

// Config configures a [Probe]. The zero value is usable: every zero field
// takes the default documented beside it.
type Config struct {
	// Upstreams lists every configured upstream base URL (GOPROXY entries
	// and checksum-database URLs). Requests are labelled with the longest
	// matching base URL; see [Classify].
	Upstreams []string
	// NamedUpstreams are configured upstreams that are not URLs ("direct":
	// version control), whose requests are reported with RecordRequest.
	NamedUpstreams []string

	// DNSServers are "host:port" (or bare IP, port 53) DNS servers. Empty
	// means the nameservers of ResolvConf.
	DNSServers []string
	// ResolvConf is the resolv.conf read when DNSServers is empty
	// (default /etc/resolv.conf).
	ResolvConf string
	// HostsFile is consulted before DNS (default /etc/hosts). A missing
	// file is not an error.
	HostsFile string
	// DNSTimeout bounds one query to one server (default 2s).
	DNSTimeout time.Duration
	// DNSAttempts is how many rounds over all servers a query makes
	// before failing (default 2).
	DNSAttempts int
	// DNSMinTTL and DNSMaxTTL clamp the TTL of cached answers
	// (defaults 5s and 1h). DNSNegativeMaxTTL caps negative answers
	// (default 5m; their floor is DNSMinTTL).
	DNSMinTTL, DNSMaxTTL, DNSNegativeMaxTTL time.Duration
	// DNSStaleWindow is how long after expiry an answer may still be served
	// when every server fails (RFC 8767; default 6h).
	DNSStaleWindow time.Duration
	// DNSStaleAnswerTimeout is how long a lookup for an expired name waits
	// for fresh data before answering stale while resolution continues
	// (RFC 8767 client response timer; default 1.8s).
	DNSStaleAnswerTimeout time.Duration
	// DNSStaleRetry is how long stale data is served without asking the
	// servers again after a failed refresh (default 30s).
	DNSStaleRetry time.Duration
	// DNSPrefetchIdle: a name looked up within this period is refreshed in
	// the background shortly before it expires (default 5m).
	DNSPrefetchIdle time.Duration
	// DisableDNSPrefetch turns background refreshes off.
	DisableDNSPrefetch bool
	// DNSFailureTTL is how long a failed lookup (SERVFAIL, REFUSED,
	// timeout, …) of a name with no usable cached answer is remembered, so
	// that a failing server is not asked again by every new connection
	// (RFC 9520; default 5s).
	DNSFailureTTL time.Duration
	// DNSResolutionDelay is how long a lookup waits for the other address
	// family once the first family answered with addresses (RFC 8305
	// section 3; default 50ms). An AAAA answer arriving first is returned
	// at once.
	DNSResolutionDelay time.Duration

	// ConnectTimeout bounds resolving plus TCP connect (default 10s).
	ConnectTimeout time.Duration
	// TLSTimeout bounds the TLS handshake (default 10s).
	TLSTimeout time.Duration
	// FirstByteTimeout bounds request written → response headers
	// (http.Transport.ResponseHeaderTimeout; default 30s).
	FirstByteTimeout time.Duration
	// IdleBodyTimeout aborts a response whose body read makes no progress
	// for this long (default 30s). Negative disables it.
	IdleBodyTimeout time.Duration
	// FallbackDelay is how long one address may try to connect before the
	// next one is started (Happy Eyeballs; default 300ms).
	FallbackDelay time.Duration
	// MaxIdleConns and MaxIdleConnsPerHost bound the idle pool
	// (defaults 100 and 16); IdleConnTimeout closes idle connections
	// (default 90s).
	MaxIdleConns, MaxIdleConnsPerHost int
	IdleConnTimeout                   time.Duration
	// HTTP1Only disables HTTP/2 (kernel TTFB timing works only on HTTP/1.1).
	HTTP1Only bool
	// TLSConfig is the base TLS client configuration (nil: defaults).
	TLSConfig *tls.Config
	// Proxy selects an HTTP proxy per request (nil: no proxy).
	Proxy func(*http.Request) (*url.URL, error)
	// SocketHook, if set, is called from net.Dialer.Control (after
	// socket(), before connect()) for every upstream TCP socket
	// (purpose "upstream", upstream = the upstream label) and every DNS
	// socket (purpose "dns", upstream = the DNS server address).
	SocketHook func(fd uintptr, upstream, purpose string)

	// CircuitCooldown is how long an open circuit rejects requests before
	// one half-open trial is allowed (default 30s).
	CircuitCooldown time.Duration
	// CircuitMinSamples is the number of requests in the window below
	// which the circuit never opens (default 10).
	CircuitMinSamples int
	// HedgeFloor is the smallest HedgeAfter (default 50ms); HedgeMinSamples
	// the number of recent TTFB samples needed to hedge (default 20).
	HedgeFloor      time.Duration
	HedgeMinSamples int

	// Registerer receives the collectors (nil: a private registry).
	Registerer prometheus.Registerer
	// Logger receives diagnostics (nil: discard).
	Logger *slog.Logger
	// Clock is the health scorer's and resolver cache's clock (nil: time.Now).
	// Durations of network phases are always measured with the monotonic
	// clock.
	Clock func() time.Time
}

func (c *Config) setDefaults() {
	dur := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	dur(&c.ConnectTimeout, DefaultConnectTimeout)
	dur(&c.TLSTimeout, DefaultTLSTimeout)
	dur(&c.FirstByteTimeout, DefaultFirstByteTimeout)
	dur(&c.IdleBodyTimeout, DefaultIdleBodyTimeout)
	dur(&c.FallbackDelay, DefaultFallbackDelay)
	dur(&c.IdleConnTimeout, DefaultIdleConnTimeout)
	dur(&c.DNSTimeout, DefaultDNSTimeout)
	dur(&c.DNSMinTTL, DefaultDNSMinTTL)
	dur(&c.DNSMaxTTL, DefaultDNSMaxTTL)
	dur(&c.DNSNegativeMaxTTL, DefaultDNSNegativeMaxTTL)
	dur(&c.DNSStaleWindow, DefaultDNSStaleWindow)
	dur(&c.DNSStaleAnswerTimeout, DefaultDNSStaleAnswerTimeout)
	dur(&c.DNSStaleRetry, DefaultDNSStaleRetry)
	dur(&c.DNSPrefetchIdle, DefaultDNSPrefetchIdle)
	dur(&c.DNSFailureTTL, DefaultDNSFailureTTL)
	dur(&c.DNSResolutionDelay, DefaultDNSResolutionDelay)
	dur(&c.CircuitCooldown, DefaultCircuitCooldown)
	dur(&c.HedgeFloor, DefaultHedgeFloor)
	if c.DNSAttempts <= 0 {
		c.DNSAttempts = DefaultDNSAttempts
	}
	if c.MaxIdleConns <= 0 {
		c.MaxIdleConns = DefaultMaxIdleConns
	}
	if c.MaxIdleConnsPerHost <= 0 {
		c.MaxIdleConnsPerHost = DefaultMaxIdleConnsPerHost
	}
	if c.CircuitMinSamples <= 0 {
		c.CircuitMinSamples = DefaultCircuitMinSamples
	}
	if c.HedgeMinSamples <= 0 {
		c.HedgeMinSamples = DefaultHedgeMinSamples
	}
	if c.ResolvConf == "" {
		c.ResolvConf = "/etc/resolv.conf"
	}
	if c.HostsFile == "" {
		c.HostsFile = "/etc/hosts"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
}

// A Probe owns the resolver, the shared transport, the collectors and the
// health scorer. It is safe for concurrent use.
type Probe struct {
	cfg       Config
	upstreams []baseURL
	metrics   *metrics
	registry  *prometheus.Registry // non-nil when Config.Registerer was nil
	resolver  *Resolver
	dialer    *dialer
	base      *http.Transport
	rt        *transport
	client    *http.Client
	health    *Health
	stats     *phaseStats
	// kernel is the attached eBPF telemetry (nil: userspace timing only);
	// the dialers register their sockets with it.
	kernel atomic.Pointer[Kernel]

	obsMu     sync.RWMutex
	observers []func(upstream, kind, phase, source string, d time.Duration)

	closeOnce sync.Once
}

// New builds a Probe. It reads resolv.conf when no DNS servers are
// configured, registers the collectors and starts the resolver's prefetch
// loop; Close stops it.
func New(cfg Config) (*Probe, error) {
	cfg.setDefaults()
	ups, err := parseUpstreams(cfg.Upstreams)
	if err != nil {
		return nil, err
	}
	p := &Probe{cfg: cfg, upstreams: ups}
	reg := cfg.Registerer
	if reg == nil {
		p.registry = prometheus.NewRegistry()
		reg = p.registry
	}
	p.metrics = newMetrics()
	if err := p.metrics.register(reg); err != nil {
		return nil, err
	}
	p.stats = newPhaseStats()
	p.health = newHealth(&p.cfg, p.metrics)
	for _, u := range ups {
		p.health.get(u.name) // the debug page lists every configured upstream
	}
	for _, n := range cfg.NamedUpstreams {
		p.health.get(n)
	}
	p.resolver, err = newResolver(&p.cfg, p.metrics, &p.kernel)
	if err != nil {
		return nil, err
	}
	p.dialer = newDialer(&p.cfg, p.resolver, p.metrics, &p.kernel)
	p.base = newBaseTransport(&p.cfg, p.dialer)
	p.rt = &transport{p: p, base: p.base}
	p.client = &http.Client{Transport: p.rt}
	return p, nil
}

// Client returns the shared client. Its transport times, labels and scores
// every request; it has no whole-request timeout (see the package doc).
func (p *Probe) Client() *http.Client { return p.client }

// Transport returns the instrumented round tripper used by Client.
func (p *Probe) Transport() http.RoundTripper { return p.rt }

// Resolver returns the caching resolver shared by all upstreams.
func (p *Probe) Resolver() *Resolver { return p.resolver }

// Health returns the health scorer (the proxy's Health interface).
func (p *Probe) Health() *Health { return p.health }

// Gatherer returns the private registry when Config.Registerer was nil, and
// nil otherwise.
func (p *Probe) Gatherer() prometheus.Gatherer {
	if p.registry == nil {
		return nil
	}
	return p.registry
}

// CloseIdleConnections closes the shared transport's idle connections.
func (p *Probe) CloseIdleConnections() { p.base.CloseIdleConnections() }

// Close stops the resolver's background work and closes idle connections.
// In-flight requests are not interrupted. Close is idempotent.
func (p *Probe) Close() error {
	p.closeOnce.Do(func() {
		p.resolver.close()
		p.base.CloseIdleConnections()
	})
	return nil
}

// AddPhaseObserver registers fn to receive every phase observation (both
// sources). fn is called synchronously on the request path: it must be
// fast and must not block.
func (p *Probe) AddPhaseObserver(fn func(upstream, kind, phase, source string, d time.Duration)) {
	if fn == nil {
		return
	}
	p.obsMu.Lock()
	p.observers = append(p.observers, fn)
	p.obsMu.Unlock()
}

// ObservePhase records one phase duration: the phase histogram, the debug
// page's per-phase summaries and the phase observers. The transport calls it
// with source "userspace"; the eBPF integration with source "kernel".
func (p *Probe) ObservePhase(upstream, kind, phase, source string, d time.Duration) {
	p.metrics.phase.WithLabelValues(upstream, kind, phase, source).Observe(d.Seconds())
	p.stats.observe(upstream, phase, source, d)
	p.obsMu.RLock()
	obs := p.observers
	p.obsMu.RUnlock()
	for _, fn := range obs {
		fn(upstream, kind, phase, source, d)
	}
}

// RecordRequest accounts for one request made outside the shared
// transport (the direct upstream's git processes): the request counter,
// the total phase and the upstream's health score and circuit, as the
// transport does for HTTP requests.
func (p *Probe) RecordRequest(upstream, kind, outcome string, d time.Duration, err error) {
	p.ObservePhase(upstream, kind, PhaseTotal, SourceUserspace, d)
	p.metrics.requests.WithLabelValues(upstream, kind, outcome).Inc()
	p.health.record(upstream, event{kind: kind, outcome: outcome, err: err})
}

// errorf wraps err with the package prefix.
func errorf(format string, args ...any) error {
	return fmt.Errorf("netprobe: "+format, args...)
}

var errClosed = errors.New("netprobe: closed")
