package netprobe

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A body whose flow goes silent mid-transfer is aborted by the kernel stall
// watch long before the idle timeout; one that keeps trickling is not.
func TestKernelStallAbortsSilentBody(t *testing.T) {
	requireKernel(t)
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "4096")
		switch r.URL.Path {
		case "/go/silent":
			w.Write([]byte(strings.Repeat("x", 1024)))
			w.(http.Flusher).Flush()
			select { // nothing more: no packet at all
			case <-release:
			case <-r.Context().Done():
			}
		case "/go/trickle":
			for i := range 8 {
				w.Write([]byte(strings.Repeat("y", 512)))
				w.(http.Flusher).Flush()
				if i < 7 {
					time.Sleep(150 * time.Millisecond)
				}
			}
		}
	})
	e := newEnv(t, h, "", func(c *Config) {
		c.KernelStallAfter = 400 * time.Millisecond
		c.IdleBodyTimeout = 20 * time.Second
		c.HTTP1Only = true
	})
	defer close(release)
	startKernel(t, e.p, e.reg)

	for _, tt := range []struct {
		path      string
		wantStall bool
	}{
		{"/silent", true},
		{"/trickle", false},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.base+tt.path, nil)
		start := time.Now()
		resp, err := e.p.Client().Do(req)
		if err != nil {
			cancel()
			t.Fatalf("%s: %v", tt.path, err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		cancel()
		took := time.Since(start)
		t.Logf("%s: %d bytes in %v, err %v", tt.path, n, took, err)
		if got := errors.Is(err, ErrKernelStall); got != tt.wantStall {
			t.Errorf("%s: stall = %v (err %v), want %v", tt.path, got, err, tt.wantStall)
		}
		if !tt.wantStall && (err != nil || n != 4096) {
			t.Errorf("%s: %d bytes, %v: a trickling flow must complete", tt.path, n, err)
		}
	}
	found := false
	for _, d := range e.p.Health().snapshot(e.base).Decisions {
		if d.Decision == "abandoned" && d.Reason == ReasonKernelStall && d.Count == 1 {
			found = true
		}
	}
	if !found {
		t.Errorf("decisions %+v: want one abandoned kernel_stall", e.p.Health().snapshot(e.base).Decisions)
	}
}

// A connect whose SYN is dropped raises the dialing request's alarm at its
// first SYN retransmit, long before the connect timeout; the evidence
// counts it for the upstream. Another request without an alarm is not
// bothered.
func TestKernelAlarmOnSynRetransmit(t *testing.T) {
	requireKernel(t)
	if _, err := exec.LookPath("nft"); err != nil {
		if os.Getenv("MODPROXY_REQUIRE_EBPF") == "1" {
			t.Fatal("nft not found (needed to drop SYNs)")
		}
		t.Skip("nft not found (needed to drop SYNs)")
	}
	e := newEnv(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), "", func(c *Config) {
		c.ConnectTimeout = 4 * time.Second
	})
	startKernel(t, e.p, e.reg)
	const table = "modproxy13alarm"
	nft := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("nft", args...).CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
	}
	exec.Command("nft", "delete", "table", "inet", table).Run()
	nft("add", "table", "inet", table)
	t.Cleanup(func() { exec.Command("nft", "delete", "table", "inet", table).Run() })
	nft("add", "chain", "inet", table, "out", "{ type filter hook output priority 0 ; }")
	nft("add", "rule", "inet", table, "out", "ip", "daddr", "127.0.0.1", "tcp", "dport", port(e.srv),
		"tcp", "flags", "&", "(syn|ack)", "==", "syn", "drop")

	alarms := make(chan string, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = WithKernelAlarm(ctx, func(reason string) { alarms <- reason })
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.base+"/m/@v/list", nil)
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		resp, err := e.p.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	select {
	case reason := <-alarms:
		t.Logf("alarm %q after %v (connect timeout %v)", reason, time.Since(start), 4*time.Second)
		if reason != ReasonKernelSynRetrans {
			t.Errorf("alarm reason %q, want %q", reason, ReasonKernelSynRetrans)
		}
	case err := <-done:
		t.Fatalf("request ended (%v) before any alarm", err)
	case <-time.After(8 * time.Second):
		t.Fatal("no alarm")
	}
	cancel()
	<-done
	if err := e.p.kernel.Load().Flush(); err != nil {
		t.Fatal(err)
	}
	snap := e.p.Health().snapshot(e.base)
	if snap.Kernel == nil || snap.Kernel.Signals[0].Reason != ReasonKernelSynRetrans || snap.Kernel.Signals[0].Value == 0 {
		t.Errorf("kernel evidence %+v: want the SYN retransmit counted", snap.Kernel)
	}
}
