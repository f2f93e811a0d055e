package main

import (
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modproxy/modproxy/netprobe"
)

// kernelTelemetry is the eBPF half of the telemetry (netprobe.Kernel); nil
// when off or unavailable. Its methods are nil-safe.
type kernelTelemetry struct {
	k       *netprobe.Kernel
	enabled prometheus.Gauge
	logger  *slog.Logger
}

// startKernelTelemetry loads the eBPF probes per --ebpf: "off" never
// tries, "auto" runs without them when they cannot load (one log line says
// why), "on" fails with the reason.
func startKernelTelemetry(mode string, reg prometheus.Registerer, logger *slog.Logger) (*kernelTelemetry, error) {
	enabled := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "modproxy_ebpf_enabled",
		Help: "1 when the eBPF probes are attached to modproxy's upstream sockets, else 0.",
	})
	reg.MustRegister(enabled)
	if mode == "off" {
		return nil, nil
	}
	k, err := netprobe.NewKernel(netprobe.KernelConfig{Registerer: reg, Logger: logger})
	if err != nil {
		if mode == "on" {
			return nil, fmt.Errorf("--ebpf=on: kernel telemetry cannot start: %w", err)
		}
		logger.Info("kernel telemetry disabled; userspace timing only", "reason", err.Error())
		return nil, nil
	}
	enabled.Set(1)
	logger.Info("kernel telemetry enabled", "cgroup", k.CgroupPath())
	return &kernelTelemetry{k: k, enabled: enabled, logger: logger}, nil
}

// attach feeds p with the kernel measurements; its dialers register their
// sockets from then on.
func (t *kernelTelemetry) attach(p *netprobe.Probe) {
	if t == nil {
		return
	}
	if err := t.k.Attach(p); err != nil {
		// Only possible through a wiring bug; keep serving without it.
		t.logger.Error("kernel telemetry not attached", "err", err)
		t.Close()
	}
}

// Close detaches the eBPF programs.
func (t *kernelTelemetry) Close() {
	if t == nil {
		return
	}
	t.enabled.Set(0)
	if err := t.k.Close(); err != nil {
		t.logger.Warn("detaching kernel telemetry", "err", err)
	}
}
