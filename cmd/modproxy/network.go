package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/modproxy/modproxy/heatmap"
	"github.com/modproxy/modproxy/netprobe"
	"github.com/modproxy/modproxy/proxy"
)

// netConfig holds the network-layer flags shared by serve and probe.
type netConfig struct {
	dnsServers       []string
	dnsMinTTL        time.Duration
	dnsMaxTTL        time.Duration
	connectTimeout   time.Duration
	firstByteTimeout time.Duration
	idleTimeout      time.Duration
	http1            bool
	ebpf             string
}

func addNetFlags(f *pflag.FlagSet, c *netConfig) {
	f.StringSliceVar(&c.dnsServers, "dns-server", nil, "DNS servers (host:port), repeatable (default: /etc/resolv.conf)")
	f.DurationVar(&c.dnsMinTTL, "dns-min-ttl", netprobe.DefaultDNSMinTTL, "lower clamp of cached DNS answers' TTL")
	f.DurationVar(&c.dnsMaxTTL, "dns-max-ttl", netprobe.DefaultDNSMaxTTL, "upper clamp of cached DNS answers' TTL")
	f.DurationVar(&c.connectTimeout, "connect-timeout", netprobe.DefaultConnectTimeout, "upstream DNS+TCP connect timeout")
	f.DurationVar(&c.firstByteTimeout, "first-byte-timeout", netprobe.DefaultFirstByteTimeout, "upstream request-sent to first-response-byte timeout")
	f.DurationVar(&c.idleTimeout, "idle-timeout", netprobe.DefaultIdleBodyTimeout, "abort an upstream body that makes no progress for this long")
	f.BoolVar(&c.http1, "upstream-http1", false, "use HTTP/1.1 to upstreams (kernel first-byte timing needs it)")
	f.StringVar(&c.ebpf, "ebpf", "auto", "kernel-side telemetry: auto, on or off")
}

func (c netConfig) validate() error {
	switch {
	case c.dnsMinTTL < 0 || c.dnsMaxTTL <= 0 || c.dnsMinTTL > c.dnsMaxTTL:
		return usagef("invalid --dns-min-ttl %s / --dns-max-ttl %s: want 0 <= min <= max, max > 0", c.dnsMinTTL, c.dnsMaxTTL)
	case c.connectTimeout <= 0:
		return usagef("invalid --connect-timeout %s: must be positive", c.connectTimeout)
	case c.firstByteTimeout <= 0:
		return usagef("invalid --first-byte-timeout %s: must be positive", c.firstByteTimeout)
	case c.idleTimeout <= 0:
		return usagef("invalid --idle-timeout %s: must be positive", c.idleTimeout)
	}
	switch c.ebpf {
	case "auto", "on", "off":
	default:
		return usagef("invalid --ebpf %q: want auto, on or off", c.ebpf)
	}
	return nil
}

// network is the wired network layer: netprobe plus, when enabled, the
// kernel probes feeding it.
type network struct {
	probe   *netprobe.Probe
	kernel  *kernelTelemetry
	heatmap *heatmap.Recorder
}

// newNetwork starts the network layer for the upstream URLs; named are
// upstreams that are not URLs ("direct").
func newNetwork(ctx context.Context, c netConfig, upstreams []string, reg prometheus.Registerer, logger *slog.Logger, named ...string) (*network, error) {
	kernel, err := startKernelTelemetry(c.ebpf, reg, logger)
	if err != nil {
		return nil, err
	}
	cfg := netprobe.Config{
		Upstreams:        upstreams,
		NamedUpstreams:   named,
		DNSServers:       c.dnsServers,
		DNSMinTTL:        c.dnsMinTTL,
		DNSMaxTTL:        c.dnsMaxTTL,
		ConnectTimeout:   c.connectTimeout,
		FirstByteTimeout: c.firstByteTimeout,
		IdleBodyTimeout:  c.idleTimeout,
		HTTP1Only:        c.http1,
		Registerer:       reg,
		Logger:           logger,
	}
	p, err := netprobe.New(cfg)
	if err != nil {
		kernel.Close()
		return nil, fmt.Errorf("network layer: %w", err)
	}
	kernel.attach(p)
	rec := heatmap.NewRecorder(heatmap.Options{})
	p.AddPhaseObserver(rec.Observe)
	return &network{probe: p, kernel: kernel, heatmap: rec}, nil
}

func (n *network) Client() *http.Client { return n.probe.Client() }

// Health is netprobe's health scorer, with fallback decisions also drawn
// on the heatmap page's time line.
func (n *network) Health() proxy.Health {
	return observedHealth{Health: n.probe.Health(), rec: n.heatmap}
}

type observedHealth struct {
	*netprobe.Health
	rec *heatmap.Recorder
}

func (h observedHealth) RecordDecision(upstream, decision, reason string) {
	h.Health.RecordDecision(upstream, decision, reason)
	h.rec.ObserveDecision(upstream, decision, reason)
}

// DebugHandlers are the network layer's pages, by mux pattern.
func (n *network) DebugHandlers() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /debug/upstreams": n.probe.DebugHandler(),
		"GET /debug/heatmap":   n.heatmap.Handler(),
	}
}

func (n *network) Close() {
	n.kernel.Close()
	n.probe.Close()
}
