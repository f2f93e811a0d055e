package netprobe

import (
	"math"
	"testing"
	"time"

	"github.com/modproxy/modproxy/bpf"
)

// kev builds kernel events for the evidence tests.
func kConnect(cookie uint64, srtt time.Duration) bpf.Event {
	return bpf.Event{Kind: bpf.EventConnect, Cookie: cookie, Purpose: bpf.PurposeTCP, SRTT: srtt}
}

func kSynRetrans(cookie uint64) bpf.Event {
	return bpf.Event{Kind: bpf.EventRetransmit, Cookie: cookie, Purpose: bpf.PurposeTCP, TCPState: tcpSynSent}
}

func kRetrans(cookie uint64) bpf.Event {
	return bpf.Event{Kind: bpf.EventRetransmit, Cookie: cookie, Purpose: bpf.PurposeTCP, TCPState: 1}
}

func kFailed(cookie uint64, r bpf.ConnectFailReason) bpf.Event {
	return bpf.Event{Kind: bpf.EventConnectFailed, Cookie: cookie, Purpose: bpf.PurposeTCP, Reason: r}
}

func kClose(cookie uint64, srtt time.Duration) bpf.Event {
	return bpf.Event{Kind: bpf.EventClose, Cookie: cookie, Purpose: bpf.PurposeTCP, SRTT: srtt}
}

func kAlert(level uint8, received bool) bpf.Event {
	return bpf.Event{Kind: bpf.EventTLSAlert, Purpose: bpf.PurposeTCP, AlertLevel: level, AlertDesc: 40, AlertReceived: received}
}

func okRequests(h *Health, up string, n int) {
	for range n {
		h.record(up, event{kind: KindInfo, outcome: OutcomeOK, ttfb: time.Millisecond})
	}
}

func TestKernelEvidenceSignals(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name       string
		requests   int
		events     func() []bpf.Event
		wantReason string  // "" : no kernel reason
		maxFactor  float64 // factor must be ≤ this (1: no evidence against)
		minFactor  float64
	}{
		{
			name: "clean connects", requests: 20,
			events: func() (evs []bpf.Event) {
				for i := range 20 {
					evs = append(evs, kConnect(uint64(i+1), ms))
				}
				return
			},
			maxFactor: 1, minFactor: 1,
		},
		{
			name: "every connect needs a SYN retransmit", requests: 10,
			events: func() (evs []bpf.Event) {
				for i := range 10 {
					c := uint64(i + 1)
					// Three SYN retransmits of one connect count once.
					evs = append(evs, kSynRetrans(c), kSynRetrans(c), kSynRetrans(c), kConnect(c, ms))
				}
				return
			},
			wantReason: ReasonKernelSynRetrans, maxFactor: 0.5, minFactor: 0.5,
		},
		{
			name: "connects still retrying their SYNs count at once", requests: 5,
			events: func() (evs []bpf.Event) {
				for i := range 5 {
					evs = append(evs, kSynRetrans(uint64(i+1)))
				}
				return
			},
			wantReason: ReasonKernelSynRetrans, maxFactor: 0.5, minFactor: 0.5,
		},
		{
			name: "too few connects are not sustained", requests: 10,
			events: func() []bpf.Event {
				return []bpf.Event{kSynRetrans(1), kConnect(1, ms), kSynRetrans(2), kConnect(2, ms)}
			},
			maxFactor: 1, minFactor: 1,
		},
		{
			name: "refused connects", requests: 4,
			events: func() (evs []bpf.Event) {
				for i := range 4 {
					evs = append(evs, kFailed(uint64(i+1), bpf.ReasonRefused))
				}
				return
			},
			wantReason: ReasonKernelRefused, maxFactor: 0.31, minFactor: 0.29,
		},
		{
			name: "one refusal is an answer", requests: 1,
			events:     func() []bpf.Event { return []bpf.Event{kFailed(1, bpf.ReasonRefused)} },
			wantReason: ReasonKernelRefused, maxFactor: 0.31, minFactor: 0.29,
		},
		{
			name: "3% of requests retransmitted", requests: 100,
			events: func() (evs []bpf.Event) {
				return []bpf.Event{kConnect(1, ms), kRetrans(1), kRetrans(1), kRetrans(1)}
			},
			// Mild: still healthy, but ordered behind a clean peer, and
			// the kernel names why.
			wantReason: ReasonKernelLoss, maxFactor: 0.89, minFactor: 0.88,
		},
		{
			name: "two retransmits are not sustained loss", requests: 10,
			events:    func() []bpf.Event { return []bpf.Event{kConnect(1, ms), kRetrans(1), kRetrans(1)} },
			maxFactor: 1, minFactor: 1,
		},
		{
			name: "connects cancelled by modproxy are not the upstream's fault", requests: 4,
			events: func() (evs []bpf.Event) {
				for i := range 4 {
					evs = append(evs, kFailed(uint64(i+1), bpf.ReasonClosed))
				}
				return
			},
			maxFactor: 1, minFactor: 1,
		},
		{
			name: "10% of requests retransmitted", requests: 40,
			events: func() (evs []bpf.Event) {
				evs = append(evs, kConnect(1, ms))
				for range 4 {
					evs = append(evs, kRetrans(1))
				}
				return
			},
			wantReason: ReasonKernelLoss, maxFactor: 0.5, minFactor: 0.5,
		},
		{
			name: "SRTT 10x baseline", requests: 30,
			events: func() (evs []bpf.Event) {
				for i := range srttBaselineN {
					evs = append(evs, kConnect(uint64(i+1), 10*ms))
				}
				for i := range srttRecentN {
					evs = append(evs, kClose(uint64(100+i), 100*ms))
				}
				return
			},
			wantReason: ReasonKernelSRTT, maxFactor: 0.5, minFactor: 0.5,
		},
		{
			name: "SRTT 10x of a 50us baseline is jitter, not congestion", requests: 30,
			events: func() (evs []bpf.Event) {
				for i := range srttBaselineN {
					evs = append(evs, kConnect(uint64(i+1), 50*time.Microsecond))
				}
				for i := range srttRecentN {
					evs = append(evs, kClose(uint64(100+i), 500*time.Microsecond))
				}
				return
			},
			maxFactor: 1, minFactor: 1,
		},
		{
			name: "zero SRTT samples are ignored", requests: 30,
			events: func() (evs []bpf.Event) {
				for i := range 40 {
					evs = append(evs, kClose(uint64(i+1), 0))
				}
				return
			},
			maxFactor: 1, minFactor: 1,
		},
		{
			name: "fatal alerts received", requests: 5,
			events: func() (evs []bpf.Event) {
				for i := range 5 {
					evs = append(evs, kConnect(uint64(i+1), ms), kAlert(2, true))
				}
				return
			},
			wantReason: ReasonKernelTLSAlert, maxFactor: 0.31, minFactor: 0.29,
		},
		{
			name: "alerts we sent or warnings do not count", requests: 5,
			events: func() (evs []bpf.Event) {
				for i := range 5 {
					evs = append(evs, kConnect(uint64(i+1), ms), kAlert(2, false), kAlert(1, true))
				}
				return
			},
			maxFactor: 1, minFactor: 1,
		},
		{
			name: "loss and SRTT together", requests: 30,
			events: func() (evs []bpf.Event) {
				for i := range srttBaselineN {
					evs = append(evs, kConnect(uint64(i+1), 10*ms))
				}
				for i := range srttRecentN {
					evs = append(evs, kClose(uint64(100+i), 100*ms))
				}
				for range 10 {
					evs = append(evs, kRetrans(1))
				}
				return
			},
			// Equal weights: the first signal of the table names it.
			wantReason: ReasonKernelLoss, maxFactor: 0.26, minFactor: 0.24,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := newTestHealth(t)
			okRequests(h, "u", tt.requests)
			for _, ev := range tt.events() {
				h.kernelEvent("u", ev)
			}
			snap := h.snapshot("u")
			if snap.Kernel == nil {
				t.Fatal("no kernel evidence in the snapshot")
			}
			f := snap.Kernel.Factor
			if f > tt.maxFactor+1e-9 || f < tt.minFactor-1e-9 {
				t.Errorf("factor = %.3f, want in [%.2f, %.2f]; signals %+v", f, tt.minFactor, tt.maxFactor, snap.Kernel.Signals)
			}
			if tt.wantReason != "" && snap.Kernel.Reason != tt.wantReason {
				t.Errorf("reason = %q, want %q", snap.Kernel.Reason, tt.wantReason)
			}
			if math.Abs(snap.Score-f) > 1e-9 {
				t.Errorf("score %.3f with a perfect userspace record, want the factor %.3f", snap.Score, f)
			}
			wantDemoted := f < 1 && tt.wantReason != ""
			if got := h.KernelReason("u"); (got != "") != wantDemoted || (wantDemoted && got != tt.wantReason) {
				t.Errorf("KernelReason = %q, want demoted=%v (%q)", got, wantDemoted, tt.wantReason)
			}
		})
	}
}

// Without kernel events the model is exactly the userspace one.
func TestKernelEvidenceAbsentKeepsUserspaceScore(t *testing.T) {
	h, _ := newTestHealth(t)
	for i := range 40 {
		out := OutcomeOK
		if i%5 == 0 {
			out = OutcomeServerError
		}
		h.record("u", event{kind: KindInfo, outcome: out, ttfb: time.Millisecond})
	}
	h.mu.Lock()
	u := h.getLocked("u")
	user, _ := h.userScoreLocked(u, h.now())
	h.mu.Unlock()
	if s := h.Score("u"); s != user {
		t.Errorf("score %v, userspace score %v: want equal without kernel evidence", s, user)
	}
	if snap := h.snapshot("u"); snap.Kernel != nil {
		t.Errorf("kernel evidence %+v without eBPF", snap.Kernel)
	}
	if r := h.KernelReason("u"); r != "" {
		t.Errorf("KernelReason = %q without eBPF", r)
	}
}

// Loss and SRTT together make the upstream unhealthy: the circuit opens
// with the kernel reason, a successful trial closes it and starts afresh.
func TestKernelEvidenceOpensCircuitWithReason(t *testing.T) {
	h, clock := newTestHealth(t)
	okRequests(h, "u", 30)
	for i := range srttBaselineN {
		h.kernelEvent("u", kConnect(uint64(i+1), 10*time.Millisecond))
	}
	for i := range srttRecentN {
		h.kernelEvent("u", kClose(uint64(100+i), 80*time.Millisecond))
	}
	for range 8 {
		h.kernelEvent("u", kRetrans(1))
	}
	ok, why := h.Allow("u")
	if ok {
		t.Fatalf("Allow = true (%s), want the circuit open; evidence %+v", why, h.snapshot("u").Kernel)
	}
	if why != ReasonKernelLoss && why != ReasonKernelSRTT {
		t.Errorf("Allow reason = %q, want a kernel reason", why)
	}
	clock.Advance(h.cfg.CircuitCooldown + time.Second)
	if ok, why := h.Allow("u"); !ok || why != "half_open_trial" {
		t.Fatalf("after the cool-down Allow = %v %q, want a trial", ok, why)
	}
	h.record("u", event{kind: KindInfo, outcome: OutcomeOK, ttfb: time.Millisecond})
	if ok, why := h.Allow("u"); !ok {
		t.Errorf("after a good trial Allow = false %q: old kernel evidence re-opened the circuit", why)
	}
}

// A userspace-unhealthy upstream keeps the userspace reason even when the
// kernel also has evidence.
func TestKernelEvidenceDoesNotRelabelUserspaceFailures(t *testing.T) {
	h, _ := newTestHealth(t)
	for range 30 {
		h.record("u", event{kind: KindInfo, outcome: OutcomeServerError})
	}
	for i := range 5 {
		h.kernelEvent("u", kSynRetrans(uint64(i+1)))
		h.kernelEvent("u", kConnect(uint64(i+1), time.Millisecond))
	}
	if ok, why := h.Allow("u"); ok || why != "circuit_open" {
		t.Errorf("Allow = %v %q, want circuit_open", ok, why)
	}
}

// The evidence window ages out like the userspace one.
func TestKernelEvidenceAgesOut(t *testing.T) {
	h, clock := newTestHealth(t)
	okRequests(h, "u", 10)
	for i := range 10 {
		h.kernelEvent("u", kSynRetrans(uint64(i+1)))
		h.kernelEvent("u", kConnect(uint64(i+1), time.Millisecond))
	}
	if r := h.KernelReason("u"); r != ReasonKernelSynRetrans {
		t.Fatalf("KernelReason = %q", r)
	}
	clock.Advance(healthWindow + bucketWidth)
	if r := h.KernelReason("u"); r != "" {
		t.Errorf("KernelReason after the window = %q, want none", r)
	}
}

// Decisions reach observers, netprobe's own (a kernel stall) included.
func TestDecisionObserver(t *testing.T) {
	h, _ := newTestHealth(t)
	var got []string
	h.AddDecisionObserver(func(u, d, r string) { got = append(got, u+" "+d+" "+r) })
	h.RecordDecision("u", "abandoned", ReasonKernelStall)
	if len(got) != 1 || got[0] != "u abandoned kernel_stall" {
		t.Errorf("observed %v", got)
	}
}
