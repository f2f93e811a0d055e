package proxy

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

// kernelHealth is a fakeHealth with scripted kernel evidence: the first
// attempt (to A) gets alarm (after alarmAfter) when set.
type kernelHealth struct {
	*fakeHealth
	alarm      string
	alarmAfter time.Duration
	reasons    map[string]string // upstream -> KernelReason

	mu      sync.Mutex
	armed   int
	pending sync.WaitGroup
}

func newKernelHealth() *kernelHealth {
	return &kernelHealth{fakeHealth: newFakeHealth(), reasons: map[string]string{}}
}

func (h *kernelHealth) WithKernelAlarm(ctx context.Context, alarm func(string)) context.Context {
	h.mu.Lock()
	h.armed++
	first := h.armed == 1 // each test sends one request: its first attempt is to A
	h.mu.Unlock()
	if h.alarm != "" && first {
		h.pending.Add(1)
		go func() {
			defer h.pending.Done()
			select {
			case <-time.After(h.alarmAfter):
				alarm(h.alarm)
			case <-ctx.Done():
			}
		}()
	}
	return ctx
}

func (h *kernelHealth) KernelReason(u string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reasons[u]
}

func TestKernelAlarmHedgesOrAbandons(t *testing.T) {
	tests := []struct {
		name, path, sep       string
		decision, winDecision string // on A; on B ("" none)
		header                string
		wantB                 bool
	}{
		{"metadata is hedged", "/example.com/hello/@v/v1.0.0.info", "|", "hedged", "hedge_won", "kernel_syn_retrans", true},
		{"zip is abandoned and falls through", "/example.com/hello/@v/v1.0.0.zip", "|", "abandoned", "chosen", "kernel_syn_retrans", true},
		{"never past a comma", "/example.com/hello/@v/v1.0.0.info", ",", "", "", "list_order", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := newUpstream(t), newUpstream(t)
			a.SetFaults(testupstream.Fault{Delay: 700 * time.Millisecond}) // "connect" still in SYN retries
			h := newKernelHealth()
			h.alarm, h.alarmAfter = "kernel_syn_retrans", 20*time.Millisecond
			e := newEnv(t, a.URL()+tt.sep+b.URL(), func(c *Config) { c.Health = h })
			r := e.mustGet(tt.path, 200)
			h.pending.Wait()
			got := r.header.Get(headerUpstream)
			if (got == b.URL()) != tt.wantB {
				t.Errorf("answered by %q, want B=%v", got, tt.wantB)
			}
			if r.header.Get(headerDecision) != tt.header {
				t.Errorf("decision header %q, want %q", r.header.Get(headerDecision), tt.header)
			}
			if tt.decision != "" && !h.has(a.URL(), tt.decision, "kernel_syn_retrans") {
				t.Errorf("no %q kernel_syn_retrans decision on A: %v", tt.decision, h.decisions)
			}
			if tt.winDecision != "" && !h.has(b.URL(), tt.winDecision, "kernel_syn_retrans") {
				t.Errorf("no %q kernel_syn_retrans decision on B: %v", tt.winDecision, h.decisions)
			}
		})
	}
}

// An alarm that comes after the answer changes nothing.
func TestKernelAlarmAfterAnswerIgnored(t *testing.T) {
	a, b := newUpstream(t), newUpstream(t)
	h := newKernelHealth()
	h.alarm, h.alarmAfter = "kernel_syn_retrans", 300*time.Millisecond
	e := newEnv(t, a.URL()+"|"+b.URL(), func(c *Config) { c.Health = h })
	r := e.mustGet("/example.com/hello/@v/v1.0.0.info", 200)
	h.pending.Wait()
	if r.header.Get(headerUpstream) != a.URL() || b.Count("example.com") != 0 {
		t.Errorf("answered by %q, B asked %d times", r.header.Get(headerUpstream), b.Count("example.com"))
	}
}

// A kernel-demoted member of a '|' group goes last, and the decision names
// the kernel signal.
func TestKernelDemotionNamesReason(t *testing.T) {
	a, b := newUpstream(t), newUpstream(t)
	h := newKernelHealth()
	h.scores[a.URL()] = 0.5
	h.reasons[a.URL()] = "kernel_loss"
	e := newEnv(t, a.URL()+"|"+b.URL(), func(c *Config) { c.Health = h })
	r := e.mustGet("/example.com/hello/@v/v1.0.0.info", 200)
	if r.header.Get(headerUpstream) != b.URL() || r.header.Get(headerDecision) != "kernel_loss" {
		t.Errorf("answered by %q (%q), want B for kernel_loss", r.header.Get(headerUpstream), r.header.Get(headerDecision))
	}
	if !h.has(a.URL(), "demoted", "kernel_loss") || !h.has(b.URL(), "chosen", "kernel_loss") {
		t.Errorf("decisions %v", h.decisions)
	}
	if a.Count("example.com") != 0 {
		t.Error("the demoted upstream was asked")
	}
}

// Last option: demotion only orders. When the healthy member fails, the
// kernel-demoted one is still tried and answers.
func TestKernelDemotedStillTried(t *testing.T) {
	a, b := newUpstream(t), newUpstream(t)
	b.SetFaults(testupstream.Fault{Status: 500})
	h := newKernelHealth()
	h.scores[a.URL()] = 0.3
	h.reasons[a.URL()] = "kernel_srtt"
	e := newEnv(t, a.URL()+"|"+b.URL(), func(c *Config) { c.Health = h })
	r := e.mustGet("/example.com/hello/@v/v1.0.0.info", 200)
	if r.header.Get(headerUpstream) != a.URL() {
		t.Errorf("answered by %q, want the demoted %q after the healthy one failed", r.header.Get(headerUpstream), a.URL())
	}
	if !h.has(a.URL(), "demoted", "kernel_srtt") || !h.has(b.URL(), "fallthrough", "status_5xx") {
		t.Errorf("decisions %v", h.decisions)
	}
}

type reasonedErr struct{}

func (reasonedErr) Error() string          { return "stalled" }
func (reasonedErr) Timeout() bool          { return true }
func (reasonedErr) DecisionReason() string { return "kernel_stall" }

// An error that names its decision (netprobe's kernel stall) is counted by
// that name, not as a plain timeout.
func TestFallthroughReasonNamedByError(t *testing.T) {
	err := &UpstreamError{Upstream: "u", Err: fmt.Errorf("read zip: %w", reasonedErr{})}
	if got := fallthroughReason(err); got != "kernel_stall" {
		t.Errorf("fallthroughReason = %q, want kernel_stall", got)
	}
}
