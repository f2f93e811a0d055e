package netprobe

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modproxy/modproxy/bpf"
)

// Kernel-side timing (package bpf) of a Probe's own sockets.
//
// Once attached ([Kernel.Attach]), the Probe's dialers register every
// upstream TCP socket and every UDP socket of the DNS resolver by socket
// cookie, from net.Dialer.Control (after socket(), before connect()); no
// other socket on the host produces a sample. Kernel events become:
//
//   - modproxy_upstream_phase_seconds{source="kernel"} for the phases dns
//     (one sample per DNS query and response, so resolver retries show
//     individually), connect (SYN to ESTABLISHED), tls (ClientHello to the
//     end of the handshake, comparable to the userspace tls phase) and ttfb
//     (HTTP/1.1 only: request's first byte sent to response's first byte
//     received). The kind label is that of the request that dialed the
//     connection (connect, tls) or that used it (ttfb); DNS queries are
//     shared by every request waiting for a name and carry kind "other".
//     DNS samples are labelled with the upstream whose host name was
//     queried (as last dialed), or "dns://<server>" for a name no dial asked
//     for.
//   - modproxy_kernel_tls_hello_seconds{upstream,version}: ClientHello to
//     ServerHello (the server's think time plus one round trip), by the
//     negotiated version. It is a separate histogram rather than a phase so
//     that the phases of a request still add up.
//   - modproxy_kernel_dns_queries_total{server,rcode},
//     modproxy_kernel_connect_failures_total{upstream,reason} (refused,
//     timeout, cancelled), modproxy_tcp_retransmits_total{upstream},
//     modproxy_tcp_srtt_seconds{upstream} (at close),
//     modproxy_tls_alerts_total{upstream,type} (plaintext alerts in either
//     direction), modproxy_runtime_delay_seconds{upstream} (userspace first
//     byte minus kernel first byte: scheduling and decryption),
//     modproxy_kernel_ttfb_dropped_total{upstream},
//     modproxy_ebpf_events_dropped_total and modproxy_ebpf_parse_errors_total.
//
// A kernel TTFB sample is kept only when it matches a userspace request: the
// connection's socket cookie plus the request's number on the connection
// (the kernel counts requests per connection, so does the transport), and
// the kernel interval must lie inside the userspace one (GotConn → first
// byte). Anything else — a TLS 1.3 session ticket mistaken for a response,
// a request that failed — is counted as dropped. HTTP/2 connections give no
// kernel TTFB at all (the server's SETTINGS frames arrive first).

// KernelConfig configures [NewKernel].
type KernelConfig struct {
	// CgroupPath is the cgroup v2 directory the programs attach to
	// (default: this process's own cgroup).
	CgroupPath string
	// PollInterval bounds how late events arrive (default 100 ms).
	PollInterval time.Duration
	// Registerer receives the kernel collectors (nil: a private registry).
	Registerer prometheus.Registerer
	// Logger receives diagnostics (nil: discard).
	Logger *slog.Logger

	// tap and onRegister see every event and every registered cookie (tests).
	tap        func(bpf.Event)
	onRegister func(cookie uint64)
}

// Kernel feeds eBPF measurements of one Probe's sockets into its metrics,
// debug page and probe reports. It is safe for concurrent use.
type Kernel struct {
	probes     *bpf.Probes
	m          *kernelMetrics
	registry   *prometheus.Registry // non-nil when KernelConfig.Registerer was nil
	logger     *slog.Logger
	probe      atomic.Pointer[Probe]
	tap        func(bpf.Event)
	onRegister func(cookie uint64)

	mu        sync.Mutex
	ids       map[string]uint32 // upstream label or DNS server → id given to the programs
	names     []string          // id-1 → upstream label or DNS server
	socks     map[uint64]*ksock // registered sockets by cookie
	hosts     map[string]string // host name dialed → upstream label
	lastSweep time.Time
	closed    bool
}

// kernelConn is the kernel identity of a connection, carried by its
// dialInfo: the transport numbers the requests sent on it like the kernel
// does.
type kernelConn struct {
	cookie uint64
	raw    syscall.RawConn // the socket, for LastIngress (nil: unknown)
	reqs   atomic.Uint32
	h2     atomic.Bool
}

// ksock is a registered socket.
type ksock struct {
	purpose  bpf.Purpose
	upstream string    // label of its samples
	server   string    // DNS: the server queried
	kind     string    // TCP: kind of the request that dialed it
	rec      *recorder // TCP: that request's probe recorder (RunProbe), or nil
	// alarm is the dialing request's WithKernelAlarm function, called at
	// most once (alarmed) when the connect shows trouble.
	alarm   func(reason string)
	alarmed bool
	conn    *kernelConn
	seen    time.Time // last registration, event or request
	closed  bool
	reqs    map[uint32]*kreq // TTFB halves waiting for each other, by request number
}

// kreq joins the kernel and userspace halves of one HTTP/1.1 request.
type kreq struct {
	user, kern bool
	kind       string
	rec        *recorder
	gotConn    uint64 // userspace, CLOCK_MONOTONIC ns
	firstByte  uint64 // userspace; 0 when no response came
	start, end uint64 // kernel: request's first byte sent, response's first byte received
}

const (
	// closedGrace keeps a closed socket's state for late userspace halves.
	closedGrace = 5 * time.Second
	// idleSockLimit forgets sockets without any activity (lost close
	// events, DNS queries that got no answer).
	idleSockLimit = 10 * time.Minute
	dnsSockLimit  = time.Minute
	sweepEvery    = 10 * time.Second
	// maxPendingReqs bounds the unmatched TTFB halves kept per connection.
	maxPendingReqs = 32
	maxHosts       = 1024
)

// KernelAvailable reports whether the eBPF probes can run here (nil) or
// why not: no BTF, no cgroup v2, missing CAP_BPF or CAP_NET_ADMIN, not Linux.
func KernelAvailable() error { return bpf.Available() }

// NewKernel checks that the eBPF probes can run, loads and attaches them and
// registers the kernel collectors. The error says why they cannot run.
// Attach connects the result to a Probe; Close detaches the programs.
func NewKernel(cfg KernelConfig) (*Kernel, error) {
	if err := bpf.Available(); err != nil {
		return nil, err
	}
	k := &Kernel{
		logger:     cfg.Logger,
		tap:        cfg.tap,
		onRegister: cfg.onRegister,
		ids:        make(map[string]uint32),
		socks:      make(map[uint64]*ksock),
		hosts:      make(map[string]string),
	}
	if k.logger == nil {
		k.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	probes, err := bpf.Load(bpf.Options{CgroupPath: cfg.CgroupPath, PollInterval: cfg.PollInterval, OnEvent: k.onEvent})
	if err != nil {
		return nil, err
	}
	k.probes = probes
	reg := cfg.Registerer
	if reg == nil {
		k.registry = prometheus.NewRegistry()
		reg = k.registry
	}
	k.m = newKernelMetrics(probes)
	if err := k.m.register(reg); err != nil {
		probes.Close()
		return nil, err
	}
	return k, nil
}

// Attach makes p's dialers register their sockets and feeds p's phase
// histogram, debug page and probe reports. A Kernel serves one Probe and a
// Probe one Kernel.
func (k *Kernel) Attach(p *Probe) error {
	k.mu.Lock()
	closed := k.closed
	k.mu.Unlock()
	if closed {
		return errorf("kernel telemetry: %w", bpf.ErrClosed)
	}
	if !k.probe.CompareAndSwap(nil, p) {
		return errorf("kernel telemetry is already attached to a Probe")
	}
	if !p.kernel.CompareAndSwap(nil, k) {
		k.probe.Store(nil)
		return errorf("the Probe already has kernel telemetry")
	}
	// Export zeros for the configured upstreams, so that alerts on
	// increase() see the series before the first retransmit.
	for _, u := range p.upstreams {
		k.m.retransmits.WithLabelValues(u.name)
	}
	return nil
}

// Flush delivers every event the programs submitted before the call.
func (k *Kernel) Flush() error { return k.probes.Flush() }

// Stats returns the probes' counters.
func (k *Kernel) Stats() bpf.Stats { return k.probes.Stats() }

// CgroupPath is the cgroup v2 directory the programs are attached to.
func (k *Kernel) CgroupPath() string { return k.probes.CgroupPath() }

// Gatherer returns the private registry when KernelConfig.Registerer was
// nil, and nil otherwise.
func (k *Kernel) Gatherer() prometheus.Gatherer {
	if k.registry == nil {
		return nil
	}
	return k.registry
}

// Close stops registering sockets, detaches the programs (delivering the
// events still pending) and frees them. It is idempotent.
func (k *Kernel) Close() error {
	k.mu.Lock()
	k.closed = true
	k.mu.Unlock()
	if p := k.probe.Load(); p != nil {
		p.kernel.CompareAndSwap(k, nil)
	}
	if err := k.probes.Close(); err != nil {
		return errorf("kernel telemetry: %w", err)
	}
	return nil
}

// id returns the upstream id of name, allocating one. k.mu must be held.
func (k *Kernel) idLocked(name string) uint32 {
	if id, ok := k.ids[name]; ok {
		return id
	}
	k.names = append(k.names, name)
	id := uint32(len(k.names))
	k.ids[name] = id
	return id
}

// nameOf returns the name of an upstream id (events of forgotten sockets).
// k.mu must be held.
func (k *Kernel) nameOfLocked(id uint32) string {
	if id == 0 || int(id) > len(k.names) {
		return "unknown"
	}
	return k.names[id-1]
}

// register hands one socket to the programs; called from net.Dialer.Control.
// It returns the socket's cookie, or 0 if it is not registered. Failures
// never fail the dial: telemetry must not break traffic.
func (k *Kernel) register(fd uintptr, name string, s *ksock) uint64 {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return 0
	}
	id := k.idLocked(name)
	k.mu.Unlock()
	// The system calls run without k.mu, which the event reader takes.
	// Events of the socket cannot arrive before connect(), which follows.
	cookie, err := k.probes.RegisterSocket(fd, id, s.purpose)
	if err != nil {
		k.logger.Debug("netprobe: kernel telemetry cannot register a socket", "upstream", name, "err", err)
		return 0
	}
	now := time.Now()
	s.seen = now
	k.mu.Lock()
	defer k.mu.Unlock()
	k.socks[cookie] = s
	if k.onRegister != nil {
		k.onRegister(cookie)
	}
	if now.Sub(k.lastSweep) >= sweepEvery {
		k.lastSweep = now
		k.sweepLocked(now)
	}
	return cookie
}

// registerTCP registers an upstream TCP socket dialed by a request of kind
// and returns its cookie (0: not registered).
func (k *Kernel) registerTCP(fd uintptr, upstream, kind string, rec *recorder, alarm func(string)) uint64 {
	return k.register(fd, upstream, &ksock{purpose: bpf.PurposeTCP, upstream: upstream, kind: kind, rec: rec, alarm: alarm})
}

// registerDNS registers a resolver UDP socket about to query server for
// qname.
func (k *Kernel) registerDNS(fd uintptr, server, qname string) {
	host := strings.TrimSuffix(strings.ToLower(qname), ".")
	k.mu.Lock()
	up, ok := k.hosts[host]
	k.mu.Unlock()
	if !ok {
		up = "dns://" + server
	}
	k.register(fd, server, &ksock{purpose: bpf.PurposeDNS, upstream: up, server: server})
}

// noteHost remembers which upstream dials host, to label DNS samples.
func (k *Kernel) noteHost(host, upstream string) {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	k.mu.Lock()
	if k.hosts[host] != upstream {
		if len(k.hosts) >= maxHosts {
			clear(k.hosts)
		}
		k.hosts[host] = upstream
	}
	k.mu.Unlock()
}

// connOf returns the kernel identity of a freshly dialed connection whose
// socket was registered with cookie (as returned by registerTCP, so no
// SO_COOKIE system call per connection), or nil when it is not known.
func (k *Kernel) connOf(cookie uint64) *kernelConn {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := k.socks[cookie]
	if s == nil {
		return nil
	}
	if s.conn == nil {
		s.conn = &kernelConn{cookie: cookie}
	}
	return s.conn
}

// userRequest is the userspace half of request seq on kc (called when the
// request completes; firstByte is 0 when no response arrived).
func (k *Kernel) userRequest(kc *kernelConn, seq uint32, upstream, kind string, rec *recorder, gotConn, firstByte uint64) {
	k.mu.Lock()
	s := k.socks[kc.cookie]
	if s == nil {
		k.mu.Unlock()
		return
	}
	s.seen = time.Now()
	r := k.reqLocked(s, seq)
	r.user, r.kind, r.rec, r.gotConn, r.firstByte = true, kind, rec, gotConn, firstByte
	done := r.kern
	if done {
		delete(s.reqs, seq)
	}
	k.mu.Unlock()
	if done {
		k.matched(upstream, r)
	}
}

// reqLocked returns the join record of request seq on s, forgetting records
// far behind it.
func (k *Kernel) reqLocked(s *ksock, seq uint32) *kreq {
	if s.reqs == nil {
		s.reqs = make(map[uint32]*kreq)
	}
	if r := s.reqs[seq]; r != nil {
		return r
	}
	for n, old := range s.reqs {
		if n+maxPendingReqs < seq {
			delete(s.reqs, n)
			if old.kern {
				k.m.ttfbDropped.WithLabelValues(s.upstream).Inc()
			}
		}
	}
	r := &kreq{}
	s.reqs[seq] = r
	return r
}

// matched records a TTFB sample whose halves met, if the kernel interval
// lies inside the userspace one.
func (k *Kernel) matched(upstream string, r *kreq) {
	p := k.probe.Load()
	if p == nil {
		return
	}
	if r.firstByte == 0 || r.start < r.gotConn || r.end > r.firstByte || r.end < r.start {
		k.m.ttfbDropped.WithLabelValues(upstream).Inc()
		return
	}
	d := time.Duration(r.end - r.start)
	p.ObservePhase(upstream, r.kind, PhaseTTFB, SourceKernel, d)
	k.m.runtimeDelay.WithLabelValues(upstream).Observe(time.Duration(r.firstByte - r.end).Seconds())
	if r.rec != nil {
		r.rec.kernelPhase(PhaseTTFB, d)
	}
}

// sweepLocked forgets sockets that are gone or silent.
func (k *Kernel) sweepLocked(now time.Time) {
	for cookie, s := range k.socks {
		age := now.Sub(s.seen)
		switch {
		case s.closed && age >= closedGrace,
			s.purpose == bpf.PurposeDNS && age >= dnsSockLimit,
			age >= idleSockLimit:
		default:
			continue
		}
		for _, r := range s.reqs {
			if r.kern {
				k.m.ttfbDropped.WithLabelValues(s.upstream).Inc()
			}
		}
		delete(k.socks, cookie)
	}
}

// onEvent runs on the probes' reader goroutine.
func (k *Kernel) onEvent(ev bpf.Event) {
	if k.tap != nil {
		k.tap(ev)
	}
	p := k.probe.Load()
	if p == nil {
		return
	}
	k.mu.Lock()
	s := k.socks[ev.Cookie]
	var up, kind, server string
	var rec *recorder
	if s != nil {
		s.seen = time.Now()
		up, kind, server, rec = s.upstream, s.kind, s.server, s.rec
	} else {
		name := k.nameOfLocked(ev.UpstreamID)
		up, kind, server = name, KindOther, name
		if ev.Purpose == bpf.PurposeDNS {
			up = "dns://" + name
		}
	}
	if kind == "" {
		kind = KindOther
	}
	var ttfb *kreq
	var alarm func(string)
	alarmReason := ""
	switch ev.Kind {
	case bpf.EventRetransmit:
		if s != nil && ev.TCPState == tcpSynSent {
			alarmReason = ReasonKernelSynRetrans
		}
	case bpf.EventConnectFailed:
		if s != nil {
			s.closed = true
			if ev.Reason == bpf.ReasonRefused || ev.Reason == bpf.ReasonTimeout {
				alarmReason = ReasonKernelRefused
			}
		}
	case bpf.EventClose:
		if s != nil {
			s.closed = true
		}
	case bpf.EventDNS:
		delete(k.socks, ev.Cookie) // one query per resolver socket
	case bpf.EventTTFB:
		switch {
		case s == nil || s.conn == nil:
			// Not dialed through the transport (or forgotten): no
			// userspace request can match it.
			k.m.ttfbDropped.WithLabelValues(up).Inc()
		case s.conn.h2.Load():
			// HTTP/2: not a time to first byte; ignored by design.
		default:
			r := k.reqLocked(s, ev.ReqSeq)
			r.kern, r.start, r.end = true, ev.Start(), ev.KernelTime
			if r.user {
				delete(s.reqs, ev.ReqSeq)
				ttfb = r
			}
		}
	}
	if alarmReason != "" && s.alarm != nil && !s.alarmed {
		s.alarmed, alarm = true, s.alarm
	}
	k.mu.Unlock()
	if alarm != nil {
		alarm(alarmReason)
	}
	if ev.Purpose == bpf.PurposeTCP && (s != nil || ev.UpstreamID != 0) {
		p.health.kernelEvent(up, ev)
	}

	obs := func(phase string) {
		p.ObservePhase(up, kind, phase, SourceKernel, ev.Dur)
		if rec != nil {
			rec.kernelPhase(phase, ev.Dur)
		}
	}
	switch ev.Kind {
	case bpf.EventConnect:
		obs(PhaseConnect)
	case bpf.EventConnectFailed:
		k.m.connectFailures.WithLabelValues(up, failReason(ev.Reason)).Inc()
	case bpf.EventTLSServerHello:
		k.m.tlsHello.WithLabelValues(up, tlsVersionName(ev.TLSVersion)).Observe(ev.Dur.Seconds())
		if rec != nil {
			rec.kernelPhase(KernelPhaseTLSHello, ev.Dur)
		}
	case bpf.EventTLSHandshakeDone:
		obs(PhaseTLS)
	case bpf.EventTLSAlert:
		k.m.alerts.WithLabelValues(up, alertType(ev.AlertDesc)).Inc()
	case bpf.EventTTFB:
		if ttfb != nil {
			k.matched(up, ttfb)
		}
	case bpf.EventDNS:
		k.m.dnsQueries.WithLabelValues(server, rcodeName(ev.Rcode)).Inc()
		p.ObservePhase(up, KindOther, PhaseDNS, SourceKernel, ev.Dur)
	case bpf.EventRetransmit:
		k.m.retransmits.WithLabelValues(up).Inc()
	case bpf.EventClose:
		if ev.SRTT > 0 {
			k.m.srtt.WithLabelValues(up).Observe(ev.SRTT.Seconds())
		}
	}
}

// KernelPhaseTLSHello names the kernel's ClientHello → ServerHello time in
// probe reports (ProbeResult.KernelPhases); in Prometheus it is
// modproxy_kernel_tls_hello_seconds.
const KernelPhaseTLSHello = "tls_hello"

func failReason(r bpf.ConnectFailReason) string {
	switch r {
	case bpf.ReasonRefused:
		return "refused"
	case bpf.ReasonTimeout:
		return "timeout"
	case bpf.ReasonClosed:
		// The application gave up first (dial timeout, cancelled context,
		// a lost Happy Eyeballs race) or an ICMP error ended it.
		return "cancelled"
	}
	return "unknown"
}

func rcodeName(rc uint8) string {
	if s, ok := dns.RcodeToString[int(rc)]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(int(rc))
}

func tlsVersionName(v uint16) string {
	if v == 0 {
		return "unknown"
	}
	return tls.VersionName(v)
}

// alertType names a TLS alert description: "handshake_failure",
// "bad_certificate", … or "alert_<n>".
func alertType(desc uint8) string {
	s := tls.AlertError(desc).Error()
	if strings.HasPrefix(s, "tls: ") {
		return "alert_" + strconv.Itoa(int(desc))
	}
	return strings.ReplaceAll(s, " ", "_")
}

// kernelMetrics are the collectors of the eBPF integration.
type kernelMetrics struct {
	dnsQueries      *prometheus.CounterVec
	connectFailures *prometheus.CounterVec
	tlsHello        *prometheus.HistogramVec
	alerts          *prometheus.CounterVec
	retransmits     *prometheus.CounterVec
	srtt            *prometheus.HistogramVec
	runtimeDelay    *prometheus.HistogramVec
	ttfbDropped     *prometheus.CounterVec
	eventsDropped   prometheus.CounterFunc
	parseErrors     prometheus.CounterFunc
}

func newKernelMetrics(probes *bpf.Probes) *kernelMetrics {
	native := func(opts prometheus.HistogramOpts) prometheus.HistogramOpts {
		opts.NativeHistogramBucketFactor = 1.1
		opts.NativeHistogramMaxBucketNumber = 160
		opts.NativeHistogramMinResetDuration = time.Hour
		opts.NativeHistogramZeroThreshold = 1e-7
		return opts
	}
	return &kernelMetrics{
		dnsQueries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_kernel_dns_queries_total",
			Help: "DNS queries of modproxy's resolver seen by the kernel probes, by server and response code.",
		}, []string{"server", "rcode"}),
		connectFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_kernel_connect_failures_total",
			Help: "Upstream TCP connects that never established, seen by the kernel probes: refused (RST), timeout (SYN retries exhausted), cancelled (closed first by modproxy or by an ICMP error).",
		}, []string{"upstream", "reason"}),
		tlsHello: prometheus.NewHistogramVec(native(prometheus.HistogramOpts{
			Name:    "modproxy_kernel_tls_hello_seconds",
			Help:    "ClientHello sent to ServerHello received on upstream connections, seen by the kernel probes, by negotiated TLS version.",
			Buckets: PhaseBuckets,
		}), []string{"upstream", "version"}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_tls_alerts_total",
			Help: "Plaintext TLS alerts (sent or received during the handshake) on upstream connections, by alert description.",
		}, []string{"upstream", "type"}),
		retransmits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_tcp_retransmits_total",
			Help: "TCP segments retransmitted on upstream connections (SYNs included).",
		}, []string{"upstream"}),
		srtt: prometheus.NewHistogramVec(native(prometheus.HistogramOpts{
			Name:    "modproxy_tcp_srtt_seconds",
			Help:    "Smoothed TCP round-trip time of upstream connections when they close.",
			Buckets: prometheus.ExponentialBucketsRange(0.00001, 10, 20),
		}), []string{"upstream"}),
		runtimeDelay: prometheus.NewHistogramVec(native(prometheus.HistogramOpts{
			Name:    "modproxy_runtime_delay_seconds",
			Help:    "Time from the kernel receiving an HTTP/1.1 response's first byte to modproxy's code seeing it (scheduling, TLS decryption).",
			Buckets: prometheus.ExponentialBucketsRange(0.000001, 1, 20),
		}), []string{"upstream"}),
		ttfbDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_kernel_ttfb_dropped_total",
			Help: "Kernel first-byte samples on HTTP/1.1 connections dropped because they matched no userspace request.",
		}, []string{"upstream"}),
		eventsDropped: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "modproxy_ebpf_events_dropped_total",
			Help: "eBPF events lost because the ring buffer was full.",
		}, func() float64 { return float64(probes.Stats().Dropped) }),
		parseErrors: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "modproxy_ebpf_parse_errors_total",
			Help: "eBPF ring buffer records that could not be decoded.",
		}, func() float64 { return float64(probes.Stats().ParseErrors) }),
	}
}

func (m *kernelMetrics) register(reg prometheus.Registerer) error {
	cs := []prometheus.Collector{m.dnsQueries, m.connectFailures, m.tlsHello, m.alerts,
		m.retransmits, m.srtt, m.runtimeDelay, m.ttfbDropped, m.eventsDropped, m.parseErrors}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, d := range cs[:i] {
				reg.Unregister(d)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return errorf("register kernel collectors: already registered: %w", err)
			}
			return fmt.Errorf("netprobe: register kernel collectors: %w", err)
		}
	}
	return nil
}
