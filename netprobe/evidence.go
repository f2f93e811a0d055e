package netprobe

import (
	"context"
	"slices"
	"time"

	"github.com/modproxy/modproxy/bpf"
)

// Kernel evidence in the health model.
//
// With the eBPF probes attached ([Kernel]), every event on an upstream's own
// sockets (keyed by socket cookie to the upstream and request that dialed
// the socket) also feeds that upstream's health. Without eBPF none of this
// exists and the score is the userspace one alone (see [Health]).
//
// Over the health window (5 minutes, 10 s buckets) and the SRTT ring, each
// signal gets a severity s in [0, 1] that ramps linearly from its threshold
// lo (s = 0) to hi (s = 1), and only once it has its minimum number of
// samples (a single bad connect is not "sustained", except a refusal,
// which is an answer):
//
//	signal      measure                                     min   lo     hi    weight
//	syn_retrans connects that needed ≥ 1 SYN retransmit /    5    0.10   0.50  0.5
//	            kernel-seen connect attempts
//	refused     connect attempts answered by RST, or given   1    0      0.50  0.7
//	            up after all SYN retries / attempts
//	loss        retransmits on established connections /     10   0.01   0.10  0.5
//	            requests, counted from 3 retransmits on (the
//	            probes see our own retransmits, i.e. the loss
//	            of our requests, not of the upstream's data)
//	srtt        median of the last 8 SRTT samples /          8+16 2×     6×    0.5
//	            median of the older ones (the upstream's     (and recent ≥ baseline + 1 ms)
//	            own baseline; samples at connect, at each
//	            HTTP/1.1 response's first byte, and at close)
//	tls_alert   fatal alerts received / connect attempts     3    0      0.20  0.7
//	stall       body reads aborted because no packet arrived 2    0      0.10  0.5
//	            for KernelStallAfter / requests
//
//	kernel = Π (1 - weight·s)        over the signals
//	score  = userspace score × kernel
//
// So sustained loss or an SRTT of 6× baseline alone halve the score
// (degraded: ordered after healthy members of a '|' group), the two together
// leave a quarter (unhealthy: the circuit may open, with the usual minimum of
// requests). The dominant signal names the reason: kernel_syn_retrans,
// kernel_refused, kernel_loss, kernel_srtt, kernel_tls_alert, kernel_stall. It is the
// reason of a circuit the kernel evidence opened ([Health.Allow]) and of a
// demotion ([Health.KernelReason]).
//
// Per connection, a SYN retransmit (the first comes 1 s after the connect
// started, long before a connect timeout) raises an alarm for the request
// that dialed the socket, if that request asked for one
// ([WithKernelAlarm]): the proxy hedges it to the next '|' entry at once.

// Kernel decision reasons.
const (
	ReasonKernelSynRetrans = "kernel_syn_retrans"
	ReasonKernelRefused    = "kernel_refused"
	ReasonKernelLoss       = "kernel_loss"
	ReasonKernelSRTT       = "kernel_srtt"
	ReasonKernelStall      = "kernel_stall"
	ReasonKernelTLSAlert   = "kernel_tls_alert"
)

// kernelSignal is one row of the table above.
type kernelSignal struct {
	reason     string
	minSamples int
	lo, hi     float64
	weight     float64
}

var (
	sigSynRetrans = kernelSignal{ReasonKernelSynRetrans, 5, 0.10, 0.50, 0.5}
	sigRefused    = kernelSignal{ReasonKernelRefused, 1, 0, 0.50, 0.7}
	sigLoss       = kernelSignal{ReasonKernelLoss, 10, 0.01, 0.10, 0.5}
	sigSRTT       = kernelSignal{ReasonKernelSRTT, srttRecentN, 2, 6, 0.5}
	sigTLSAlert   = kernelSignal{ReasonKernelTLSAlert, 3, 0, 0.20, 0.7}
	sigStall      = kernelSignal{ReasonKernelStall, 2, 0, 0.10, 0.5}
)

const (
	lossMinRetrans = 3
	srttRingSize   = 256
	srttRecentN    = 8
	srttBaselineN  = 16
	// srttMinExcess keeps sub-millisecond jitter on a fast path (a 50 µs
	// baseline) from ever counting as congestion.
	srttMinExcess = time.Millisecond
)

// severity of value x with n samples.
func (s kernelSignal) severity(x float64, n int) float64 {
	if n < s.minSamples || x <= s.lo {
		return 0
	}
	if x >= s.hi {
		return 1
	}
	return (x - s.lo) / (s.hi - s.lo)
}

// kcounts counts the kernel events of one health bucket (or of a window).
type kcounts struct {
	attempts   int // connect attempts seen by the kernel (established or failed)
	synRetrans int // connects with at least one SYN retransmit
	refused    int // RST in SYN_SENT, or SYN retries exhausted
	estRetrans int // retransmits on established connections
	alerts     int // fatal TLS alerts received
	stalls     int // body reads aborted by ErrKernelStall
}

func (s *kcounts) add(b *kcounts) {
	s.attempts += b.attempts
	s.synRetrans += b.synRetrans
	s.refused += b.refused
	s.estRetrans += b.estRetrans
	s.alerts += b.alerts
	s.stalls += b.stalls
}

// kernelEvidence is one upstream's kernel evidence beside the counts it
// keeps in the upstream's health buckets.
type kernelEvidence struct {
	srtt    [srttRingSize]time.Duration
	srttN   int
	srttPos int
	seen    bool // any kernel event at all
	// srttStat caches srttRatio until the next sample.
	srttStat  srttStat
	srttClean bool
	// synSeen: connections (by cookie) already counted for a SYN
	// retransmit, so that a connect with 3 retransmitted SYNs counts once.
	synSeen map[uint64]struct{}
}

type srttStat struct {
	ratio        float64
	recent, base time.Duration
	ok           bool
}

func (e *kernelEvidence) addSRTT(d time.Duration) {
	if d <= 0 {
		return
	}
	e.srttClean = false
	e.srtt[e.srttPos] = d
	e.srttPos = (e.srttPos + 1) % srttRingSize
	e.srttN = min(e.srttN+1, srttRingSize)
}

// srttRatio returns the median of the last srttRecentN samples over the
// median of the older ones, and whether there are enough of both and the
// excess is at least srttMinExcess.
func (e *kernelEvidence) srttRatio() (ratio float64, recent, base time.Duration, ok bool) {
	if !e.srttClean {
		r, rec, b, k := e.computeSRTT()
		e.srttStat, e.srttClean = srttStat{r, rec, b, k}, true
	}
	c := e.srttStat
	return c.ratio, c.recent, c.base, c.ok
}

func (e *kernelEvidence) computeSRTT() (ratio float64, recent, base time.Duration, ok bool) {
	if e.srttN < srttRecentN+srttBaselineN {
		return 0, 0, 0, false
	}
	ordered := make([]time.Duration, 0, e.srttN) // oldest first
	for i := range e.srttN {
		ordered = append(ordered, e.srtt[(e.srttPos-e.srttN+i+srttRingSize)%srttRingSize])
	}
	// ordered is this call's own copy: its two halves sort in place.
	old, rec := ordered[:len(ordered)-srttRecentN], ordered[len(ordered)-srttRecentN:]
	slices.Sort(old)
	slices.Sort(rec)
	base, recent = quantile(old, 0.5), quantile(rec, 0.5)
	if base <= 0 {
		return 0, recent, base, false
	}
	if recent-base < srttMinExcess {
		return 1, recent, base, true
	}
	return float64(recent) / float64(base), recent, base, true
}

// KernelSignal is one signal's current value in /debug/upstreams.
type KernelSignal struct {
	Reason   string  `json:"reason"`
	Value    float64 `json:"value"`
	Samples  int     `json:"samples"`
	Severity float64 `json:"severity"`
	Weight   float64 `json:"weight"`
}

// KernelEvidence is an upstream's kernel evidence in /debug/upstreams
// (absent without eBPF).
type KernelEvidence struct {
	// Factor multiplies the userspace score (1: no evidence against).
	Factor float64 `json:"factor"`
	// Reason is the dominant signal when Factor < 1.
	Reason              string         `json:"reason,omitempty"`
	SRTTRecentSeconds   float64        `json:"srtt_recent_seconds,omitempty"`
	SRTTBaselineSeconds float64        `json:"srtt_baseline_seconds,omitempty"`
	Signals             []KernelSignal `json:"signals"`
}

// assess computes the kernel factor and its dominant reason from the
// health window's kernel counts w; requests is the userspace request count
// of the same window (the loss denominator). With detail, Signals lists
// every signal (the debug page); without, only Factor and Reason are set
// (every Score call: no allocation).
func (e *kernelEvidence) assess(w kcounts, requests int, detail bool) KernelEvidence {
	out := KernelEvidence{Factor: 1}
	best := 0.0
	add := func(s kernelSignal, x float64, n int) {
		sev := s.severity(x, n)
		if detail {
			out.Signals = append(out.Signals, KernelSignal{Reason: s.reason, Value: x, Samples: n, Severity: sev, Weight: s.weight})
		}
		out.Factor *= 1 - s.weight*sev
		if p := s.weight * sev; p > best {
			best, out.Reason = p, s.reason
		}
	}
	ratio := func(a, b int) float64 {
		if b <= 0 {
			return 0
		}
		return float64(a) / float64(b)
	}
	add(sigSynRetrans, ratio(w.synRetrans, w.attempts), w.attempts)
	add(sigRefused, ratio(w.refused, w.attempts), w.attempts)
	// Loss is sustained only from lossMinRetrans retransmits on: a queue
	// that suddenly fills makes one or two spurious ones, which is the
	// SRTT signal's business.
	lossN := requests
	if w.estRetrans < lossMinRetrans {
		lossN = 0
	}
	add(sigLoss, ratio(w.estRetrans, requests), lossN)
	r, recent, base, ok := e.srttRatio()
	n := 0
	if ok {
		n = srttRecentN
		out.SRTTRecentSeconds, out.SRTTBaselineSeconds = recent.Seconds(), base.Seconds()
	}
	add(sigSRTT, r, n)
	add(sigTLSAlert, ratio(w.alerts, w.attempts), w.attempts)
	add(sigStall, ratio(w.stalls, requests), w.stalls)
	return out
}

// kernelEvent feeds one kernel event on a socket of upstream into its
// health.
func (h *Health) kernelEvent(upstream string, ev bpf.Event) {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.getLocked(upstream)
	e := &u.kev
	e.seen = true
	b := &u.bucket(now).k
	switch ev.Kind {
	case bpf.EventConnect:
		e.attempt(b, ev.Cookie)
		e.addSRTT(ev.SRTT)
	case bpf.EventConnectFailed:
		e.attempt(b, ev.Cookie)
		if ev.Reason == bpf.ReasonRefused || ev.Reason == bpf.ReasonTimeout {
			b.refused++
		}
	case bpf.EventRetransmit:
		if ev.TCPState == tcpSynSent {
			if _, dup := e.synSeen[ev.Cookie]; dup {
				break
			}
			if e.synSeen == nil {
				e.synSeen = make(map[uint64]struct{})
			}
			if len(e.synSeen) >= maxSynSeen {
				clear(e.synSeen)
			}
			e.synSeen[ev.Cookie] = struct{}{}
			// The connect counts as an attempt now, not when it ends
			// (up to the connect timeout later): the evidence acts
			// while the SYNs are still being retried.
			b.attempts++
			b.synRetrans++
		} else {
			b.estRetrans++
		}
	case bpf.EventClose, bpf.EventTTFB:
		e.addSRTT(ev.SRTT)
	case bpf.EventTLSAlert:
		if ev.AlertReceived && ev.AlertLevel == 2 {
			b.alerts++
		}
	default:
		return
	}
	h.evaluateLocked(u, now)
}

// attempt counts a connect attempt that ended (established or failed),
// unless its first SYN retransmit already counted it.
func (e *kernelEvidence) attempt(b *kcounts, cookie uint64) {
	if _, counted := e.synSeen[cookie]; counted {
		delete(e.synSeen, cookie)
		return
	}
	b.attempts++
}

const (
	// tcpSynSent is the kernel's TCP_SYN_SENT state.
	tcpSynSent = 2
	maxSynSeen = 4096
)

// kernelStall counts one body read of upstream aborted by ErrKernelStall.
func (h *Health) kernelStall(upstream string) {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.getLocked(upstream)
	u.kev.seen = true
	u.bucket(now).k.stalls++
	h.evaluateLocked(u, now)
}

// kernelFactorLocked is u's kernel factor and reason (1, "" without
// evidence). h.mu must be held.
func (h *Health) kernelFactorLocked(u *upHealth, now time.Time) (float64, string) {
	if !u.kev.seen {
		return 1, ""
	}
	w := u.window(now)
	a := u.kev.assess(w.k, w.requests, false)
	return a.Factor, a.Reason
}

// KernelReason is the dominant kernel signal that currently lowers
// upstream's score ("" when none does, or without eBPF): the reason named
// when a '|' group puts it after healthier members. Userspace failures may
// lower the score as well; the kernel reason says what the kernel saw.
func (h *Health) KernelReason(upstream string) string {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.getLocked(upstream)
	if f, reason := h.kernelFactorLocked(u, now); f < 1 {
		return reason
	}
	return ""
}

// kernelSnapshotLocked is the debug view of u's kernel evidence, nil
// without any.
func (h *Health) kernelSnapshotLocked(u *upHealth, now time.Time) *KernelEvidence {
	if !u.kev.seen {
		return nil
	}
	w := u.window(now)
	a := u.kev.assess(w.k, w.requests, true)
	return &a
}

// freshStart forgets the SRTT samples of the bad spell after a successful
// half-open trial, keeping the older baseline, so that old evidence does
// not re-open the circuit at once (closeLocked clears the window's counts).
func (e *kernelEvidence) freshStart() {
	drop := min(e.srttN, srttRecentN)
	e.srttN -= drop
	e.srttPos = (e.srttPos - drop + srttRingSize) % srttRingSize
	e.srttClean = false
	clear(e.synSeen)
}

type kernelAlarmKey struct{}

// WithKernelAlarm returns a context whose upstream requests call alarm, at
// most once per connection the request dialed, when the kernel sees that
// connection in trouble before userspace could: reason
// ReasonKernelSynRetrans (a SYN was retransmitted: the connect is at least
// a second late) or ReasonKernelRefused (RST or SYN retries exhausted).
// alarm runs on the kernel event reader and must not block. Without eBPF it
// is never called.
func WithKernelAlarm(ctx context.Context, alarm func(reason string)) context.Context {
	return context.WithValue(ctx, kernelAlarmKey{}, alarm)
}

// WithKernelAlarm is [WithKernelAlarm], as a method for the proxy's
// KernelEvidence interface.
func (h *Health) WithKernelAlarm(ctx context.Context, alarm func(reason string)) context.Context {
	return WithKernelAlarm(ctx, alarm)
}
