package main

import (
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modproxy/modproxy/netprobe"
)

// kernelTelemetry is the eBPF half of the telemetry; nil when off or
// unavailable. Its methods are nil-safe.
type kernelTelemetry struct {
	logger *slog.Logger
}

// startKernelTelemetry loads the eBPF probes per --ebpf: "off" never
// tries, "auto" runs without them when they cannot load, "on" fails.
func startKernelTelemetry(mode string, reg prometheus.Registerer, logger *slog.Logger) (*kernelTelemetry, error) {
	enabled := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "modproxy_ebpf_enabled",
		Help: "1 when the eBPF probes are attached to modproxy's upstream sockets, else 0.",
	})
	reg.MustRegister(enabled)
	if mode == "off" {
		return nil, nil
	}
	err := fmt.Errorf("eBPF probes are not wired in this build yet")
	if mode == "on" {
		return nil, fmt.Errorf("--ebpf=on: %w", err)
	}
	logger.Info("kernel telemetry disabled; userspace timing only", "reason", err)
	return nil, nil
}

func (k *kernelTelemetry) socketHook(fd uintptr, upstream, purpose string) {}

func (k *kernelTelemetry) attach(p *netprobe.Probe) {}

func (k *kernelTelemetry) Close() {}
