package netprobe

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Phase names (the phase label).
const (
	PhaseDNS      = "dns"
	PhaseConnect  = "connect"
	PhaseTLS      = "tls"
	PhaseTTFB     = "ttfb"
	PhaseTransfer = "transfer"
	PhaseTotal    = "total"
)

// Phases lists the phases in request order.
var Phases = []string{PhaseDNS, PhaseConnect, PhaseTLS, PhaseTTFB, PhaseTransfer, PhaseTotal}

// Sources of phase timings (the source label).
const (
	SourceUserspace = "userspace"
	SourceKernel    = "kernel"
)

// Request outcomes (the outcome label of modproxy_upstream_requests_total).
const (
	OutcomeOK           = "ok"
	OutcomeNotFound     = "not_found"
	OutcomeForbidden    = "forbidden"
	OutcomeClientError  = "client_error"
	OutcomeServerError  = "server_error"
	OutcomeTimeout      = "timeout"
	OutcomeConnectError = "connect_error"
	OutcomeReset        = "reset"
	OutcomeCanceled     = "canceled"
)

// Health states (the state label of modproxy_upstream_state).
const (
	StateHealthy   = "healthy"
	StateDegraded  = "degraded"
	StateUnhealthy = "unhealthy"
	StateOpen      = "open"
)

var allStates = []string{StateHealthy, StateDegraded, StateUnhealthy, StateOpen}

// PhaseBuckets are the classic buckets of the phase histogram, beside its
// native buckets: 20 exponential buckets from 0.5 ms to 60 s.
var PhaseBuckets = prometheus.ExponentialBucketsRange(0.0005, 60, 20)

// metrics holds every collector netprobe owns.
type metrics struct {
	phase       *prometheus.HistogramVec
	requests    *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	conns       *prometheus.CounterVec
	tls         *prometheus.CounterVec
	dnsLookups  *prometheus.CounterVec
	dnsSeconds  *prometheus.HistogramVec
	score       *prometheus.GaugeVec
	state       *prometheus.GaugeVec
	decisions   *prometheus.CounterVec
	checksumErr *prometheus.CounterVec
}

func newMetrics() *metrics {
	native := func(opts prometheus.HistogramOpts) prometheus.HistogramOpts {
		opts.NativeHistogramBucketFactor = 1.1
		opts.NativeHistogramMaxBucketNumber = 160
		opts.NativeHistogramMinResetDuration = time.Hour
		opts.NativeHistogramZeroThreshold = 1e-6
		return opts
	}
	return &metrics{
		phase: prometheus.NewHistogramVec(native(prometheus.HistogramOpts{
			Name:    "modproxy_upstream_phase_seconds",
			Help:    "Duration of each phase of upstream requests (dns, connect, tls, ttfb, transfer, total) by source (userspace httptrace or kernel eBPF).",
			Buckets: PhaseBuckets,
		}), []string{"upstream", "kind", "phase", "source"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_upstream_requests_total",
			Help: "Upstream requests by outcome.",
		}, []string{"upstream", "kind", "outcome"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_upstream_bytes_total",
			Help: "Upstream response body bytes read.",
		}, []string{"upstream", "kind"}),
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_upstream_connections_total",
			Help: "Connections obtained for upstream requests, new (reused=false) or from the idle pool (reused=true).",
		}, []string{"upstream", "reused"}),
		tls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_upstream_tls_handshakes_total",
			Help: "Completed TLS handshakes with upstreams by negotiated version.",
		}, []string{"upstream", "version"}),
		dnsLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_dns_lookups_total",
			Help: "DNS lookups per question (A, AAAA) by response code and cache result (hit, miss, stale, prefetch).",
		}, []string{"rcode", "cache"}),
		dnsSeconds: prometheus.NewHistogramVec(native(prometheus.HistogramOpts{
			Name:    "modproxy_dns_lookup_seconds",
			Help:    "Duration of host name lookups (A and AAAA in parallel, cache included).",
			Buckets: prometheus.ExponentialBucketsRange(0.00001, 10, 20),
		}), []string{"source"}),
		score: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "modproxy_upstream_health_score",
			Help: "Upstream health score in [0, 1].",
		}, []string{"upstream"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "modproxy_upstream_state",
			Help: "1 for the upstream's current state (healthy, degraded, unhealthy, open), 0 for the others.",
		}, []string{"upstream", "state"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_upstream_decisions_total",
			Help: "Upstream selection decisions by reason.",
		}, []string{"upstream", "decision", "reason"}),
		checksumErr: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "modproxy_upstream_checksum_failures_total",
			Help: "Artifacts from the upstream that disagreed with the checksum database.",
		}, []string{"upstream"}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.phase, m.requests, m.bytes, m.conns, m.tls,
		m.dnsLookups, m.dnsSeconds, m.score, m.state, m.decisions, m.checksumErr}
}

func (m *metrics) register(reg prometheus.Registerer) error {
	var done []prometheus.Collector
	for _, c := range m.collectors() {
		if err := reg.Register(c); err != nil {
			for _, d := range done {
				reg.Unregister(d)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return errorf("register collectors: another Probe already uses this registerer: %w", err)
			}
			return errorf("register collectors: %w", err)
		}
		done = append(done, c)
	}
	return nil
}
