//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// progRuntime sums the kernel's run time and run count of the probes'
// programs (counted while BPF stats are enabled).
func progRuntime(p *Probes) (time.Duration, uint64) {
	var d time.Duration
	var n uint64
	for _, prog := range []*ebpf.Program{p.objs.ModproxySockops, p.objs.ModproxyEgress, p.objs.ModproxyIngress} {
		if prog == nil {
			continue
		}
		if st, err := prog.Stats(); err == nil {
			d += st.Runtime
			n += st.RunCount
		}
	}
	return d, n
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkKeepAlive measures warm HTTP/1.1 keep-alive requests to a local
// server without and with the probes attached (client socket registered, so
// every request produces a TTFB event). cpu-ns/op is the process's user+sys
// CPU per request (client, server, and the softirq work charged to it,
// which includes the BPF programs on loopback).
//
//	go test -run '^$' -bench KeepAlive -count 5 ./bpf/
func BenchmarkKeepAlive(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	defer srv.Close()

	run := func(b *testing.B, d *net.Dialer, p *Probes) {
		tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 1}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr}
		do := func() {
			resp, err := client.Get(srv.URL)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		do() // warm: connection established
		var bpf0 time.Duration
		var runs0 uint64
		if p != nil {
			// Kernel accounting of the programs' own run time.
			if st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err == nil {
				defer st.Close()
			}
			bpf0, runs0 = progRuntime(p)
		}
		b.ReportAllocs()
		cpu0 := cpuTime()
		b.ResetTimer()
		for b.Loop() {
			do()
		}
		b.StopTimer()
		b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		if p != nil {
			bpf1, runs1 := progRuntime(p)
			b.ReportMetric(float64(bpf1-bpf0)/float64(b.N), "bpf-ns/op")
			b.ReportMetric(float64(runs1-runs0)/float64(b.N), "bpf-runs/op")
		}
	}

	b.Run("probes=off", func(b *testing.B) { run(b, &net.Dialer{}, nil) })
	b.Run("probes=on", func(b *testing.B) {
		requireEBPF(b)
		p, err := Load(Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer func() {
			st := p.Stats()
			p.Close()
			b.Logf("stats: %+v", st)
		}()
		run(b, &net.Dialer{Control: p.Control(1, PurposeTCP)}, p)
	})
	// The cost of waking the reader for every event.
	b.Run("probes=on-wake-every-event", func(b *testing.B) {
		requireEBPF(b)
		p, err := Load(Options{WakeupEvents: 1})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		run(b, &net.Dialer{Control: p.Control(1, PurposeTCP)}, p)
	})
	// Calibration: programs that only return 1, to separate the cost of
	// running a cgroup program at all (and of the run-time accounting) from
	// the probes' own work.
	b.Run("noop-programs", func(b *testing.B) {
		requireEBPF(b)
		cg, err := OwnCgroup()
		if err != nil {
			b.Fatal(err)
		}
		var noop Probes
		for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInetEgress, ebpf.AttachCGroupInetIngress} {
			prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
				Type:         ebpf.CGroupSKB,
				Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
				License:      "Dual BSD/GPL",
			})
			if err != nil {
				b.Fatal(err)
			}
			defer prog.Close()
			l, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: at, Program: prog})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			if at == ebpf.AttachCGroupInetEgress {
				noop.objs.ModproxyEgress = prog
			} else {
				noop.objs.ModproxyIngress = prog
			}
		}
		run(b, &net.Dialer{}, &noop)
	})
	b.Run("probes=on-unregistered", func(b *testing.B) {
		requireEBPF(b)
		p, err := Load(Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		run(b, &net.Dialer{}, p)
	})
}

// BenchmarkRegisterSocket measures RegisterSocket (SO_COOKIE and one map
// update) on a fresh, unconnected TCP socket per iteration.
func BenchmarkRegisterSocket(b *testing.B) {
	requireEBPF(b)
	p, err := Load(Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := p.RegisterSocket(uintptr(fd), 1, PurposeTCP); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		unix.Close(fd)
		b.StartTimer()
	}
}
