package netprobe

import (
	"context"
	"errors"
	"io"
	"net/http"
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
