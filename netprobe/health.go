package netprobe

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Health scores upstreams from the outcomes the transport observes and the
// checksum failures the proxy reports, runs a circuit breaker per upstream
// and suggests hedging delays. It implements the proxy package's Health
// interface. All methods are safe for concurrent use; unknown upstreams are
// healthy.
//
// # Score
//
// Over a sliding window of the last 5 minutes (30 buckets of 10 s):
//
//	R  requests (cancelled ones excluded)
//	F  failures: 5xx, timeouts, resets, connect errors
//	   (404, 410, 403 and other 4xx are answers, not failures)
//	C  new-connection attempts (new connections + connect errors), CF connect errors
//	A  artifact responses (ok .mod and .zip), K checksum failures
//
//	fail     = max(F/R, ewma)       ewma: EWMA (α = 0.1) of the per-request failure
//	                                indicator, so a burst counts at once
//	connect  = 1 - CF/C             (1 without attempts)
//	latency  = clamp(1 - (ρ-1.5)/3.5, 0, 1), ρ = recent median TTFB (window) /
//	           baseline median TTFB (last 1024 samples); 1 up to 1.5× the
//	           upstream's own baseline, 0 from 5×; 1 with < 20 samples
//	base     = (1 - fail)² × (0.6·connect + 0.4·latency)
//	           (10 % failures → 0.81, 20 % → 0.64, 30 % → 0.49)
//	k        = K / max(A, K)        checksum-failure rate
//	wk       = min(0.9, 5k)         the checksum weight grows with the rate
//	score    = (1 - wk)·base + wk·(1 - min(1, 10k))
//
// A 10 % checksum-failure rate halves the score at best; 20 % leaves at most
// 0.1. With the eBPF probes attached, the score and the transport score are
// further multiplied by the kernel evidence factor (SYN retransmits,
// refused connects, loss, SRTT against the upstream's own baseline, stalls,
// TLS alerts; weights and thresholds in evidence.go); without them they are
// exactly the above. States: healthy ≥ 0.8, degraded ≥ 0.5, unhealthy below. Checksum
// failures only order upstreams: they never open a circuit (the proxy
// condemns the one bad copy, not the upstream).
//
// # Scoped faults
//
// Failures concentrated on one module path count against that path, not
// the upstream: after pathScopeAfter consecutive failures of one path (no
// answer for it in between), its further failures count as requests but
// not as failures, so one broken module cannot open the circuit for all.
//
// # Hangs
//
// hangTimeouts consecutive timeouts (no first byte from the upstream in
// between, for any request) on at least two
// module paths mark the upstream hung: the circuit opens at once and every
// request still waiting for its first byte from it is released together
// (its error wraps ErrUpstreamHung). A request is counted as a timeout
// sooner, once it has waited 10× the upstream's recent p95 time to first
// byte (at least hangFloor), when there is such a baseline. While the
// circuit is open after a hang, a request sent anyway (a trial, a last
// resort) gets at most hungFirstByte (or the suspicion delay, if shorter)
// for its first byte.
//
// # Circuit breaker
//
// With at least CircuitMinSamples requests in the window and a transport
// score (base) below degraded, the circuit opens: Allow returns false,
// "circuit_open" (or the kernel reason, e.g. "kernel_loss", when the
// kernel evidence alone made it unhealthy). After CircuitCooldown exactly one caller gets true,
// "half_open_trial"; the outcome of the next request to that upstream
// observed by the transport closes the circuit (and clears the window's
// failure counts: a fresh start) or re-opens it. A trial with no outcome
// within another cool-down is granted again.
type Health struct {
	cfg *Config
	m   *metrics
	now func() time.Time

	mu          sync.Mutex
	ups         map[string]*upHealth
	decisionObs []func(upstream, decision, reason string)
}

const (
	bucketWidth   = 10 * time.Second
	windowBuckets = 30 // 5 minutes
	healthWindow  = bucketWidth * windowBuckets
	ewmaAlpha     = 0.1
	ttfbRingSize  = 1024
	maxErrors     = 5

	pathScopeAfter = 2    // consecutive failures of one path that still count against the upstream
	maxPathStreaks = 4096 // bound on the per-path streak map
	hangTimeouts   = 3    // consecutive timeouts that mark an upstream hung
	hangFloor      = 2 * time.Second
	hungFirstByte  = 2 * time.Second

	scoreHealthy  = 0.8
	scoreDegraded = 0.5
)

type circuitState int

const (
	circuitClosed circuitState = iota
	circuitOpen
	circuitHalfOpen
)

func (c circuitState) String() string {
	switch c {
	case circuitOpen:
		return "open"
	case circuitHalfOpen:
		return "half_open"
	default:
		return "closed"
	}
}

// event is one finished request as seen by the transport.
type event struct {
	kind    string
	outcome string
	newConn bool
	reused  bool
	ttfb    time.Duration // 0 without a response
	err     error
	path    string // module path of the request ("" when not a module request)
	// suspected: Health.suspect already counted the request as a timeout.
	suspected bool
}

type bucket struct {
	slot                   int64 // time / bucketWidth
	requests, failures     int
	connects, connectFails int
	artifacts, checksum    int
	k                      kcounts // kernel evidence (evidence.go)
}

type sample struct {
	d  time.Duration
	at time.Time
}

// ErrorRecord is one recent upstream error (debug page).
type ErrorRecord struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`
	Outcome string    `json:"outcome"`
	Error   string    `json:"error"`
}

type upHealth struct {
	name    string
	buckets [windowBuckets]bucket
	ewma    float64

	ttfb     [ttfbRingSize]sample
	ttfbN    int // samples stored (≤ ttfbRingSize)
	ttfbNext int

	// cached latency statistics, recomputed when dirty
	statsDirty         bool
	statsAt            time.Time
	latency            float64
	p95                time.Duration
	recentN            int
	recentP50, baseP50 time.Duration

	circuit  circuitState
	openedAt time.Time
	trialAt  time.Time
	trialOut bool
	// openedByKernel is the kernel reason (kernel_loss, …) when the
	// kernel evidence, not the userspace score, made the upstream
	// unhealthy (see evidence.go).
	openedByKernel string

	// pathStreak counts consecutive failures per module path.
	pathStreak map[string]int
	// Hang detection: consecutive timeouts, the paths they were on, and
	// whether the circuit is open because of a hang.
	timeoutStreak int
	timeoutPaths  map[string]bool
	hung          bool
	// waiting are the requests still waiting for their first byte.
	waiting map[uint64]context.CancelCauseFunc

	state string

	outcomes   map[string]int64
	newConns   int64
	reuseConns int64
	errors     []ErrorRecord // newest last, at most maxErrors
	decisions  map[[2]string]int64

	kev kernelEvidence
}

func newHealth(cfg *Config, m *metrics) *Health {
	return &Health{cfg: cfg, m: m, now: cfg.Clock, ups: make(map[string]*upHealth)}
}

// get returns the state of upstream, creating it.
func (h *Health) get(upstream string) *upHealth {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.getLocked(upstream)
}

func (h *Health) getLocked(upstream string) *upHealth {
	u := h.ups[upstream]
	if u == nil {
		u = &upHealth{
			name:         upstream,
			latency:      1,
			outcomes:     make(map[string]int64),
			decisions:    make(map[[2]string]int64),
			pathStreak:   make(map[string]int),
			timeoutPaths: make(map[string]bool),
			waiting:      make(map[uint64]context.CancelCauseFunc),
		}
		h.ups[upstream] = u
		// Export the zero, so that alerts on increase() see the series
		// before the first mismatch.
		h.m.checksumErr.WithLabelValues(upstream)
		h.setStateLocked(u, StateHealthy)
		h.m.score.WithLabelValues(upstream).Set(1)
	}
	return u
}

func isFailure(outcome string) bool {
	switch outcome {
	case OutcomeServerError, OutcomeTimeout, OutcomeConnectError, OutcomeReset:
		return true
	}
	return false
}

func (u *upHealth) bucket(now time.Time) *bucket {
	slot := now.UnixNano() / int64(bucketWidth)
	b := &u.buckets[slot%windowBuckets]
	if b.slot != slot {
		*b = bucket{slot: slot}
	}
	return b
}

// window sums the buckets of the last healthWindow.
func (u *upHealth) window(now time.Time) bucket {
	slot := now.UnixNano() / int64(bucketWidth)
	var s bucket
	for _, b := range u.buckets {
		if b.slot > slot-windowBuckets && b.slot <= slot {
			s.requests += b.requests
			s.failures += b.failures
			s.connects += b.connects
			s.connectFails += b.connectFails
			s.artifacts += b.artifacts
			s.checksum += b.checksum
			s.k.add(&b.k)
		}
	}
	return s
}

// record feeds one finished request into upstream's health.
func (h *Health) record(upstream string, ev event) {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.getLocked(upstream)
	u.outcomes[ev.outcome]++
	if ev.newConn {
		u.newConns++
	} else if ev.reused {
		u.reuseConns++
	}
	if ev.err != nil && ev.outcome != OutcomeCanceled {
		u.errors = append(u.errors, ErrorRecord{Time: now, Kind: ev.kind, Outcome: ev.outcome, Error: ev.err.Error()})
		if len(u.errors) > maxErrors {
			u.errors = slices.Delete(u.errors, 0, len(u.errors)-maxErrors)
		}
	}
	if ev.outcome == OutcomeCanceled {
		if u.circuit == circuitHalfOpen && u.trialOut {
			u.trialOut = false // the trial did not happen; grant another
		}
		return
	}
	failed := isFailure(ev.outcome)
	if !ev.suspected || ev.outcome != OutcomeTimeout {
		h.trackHangLocked(u, ev.outcome == OutcomeTimeout, ev.path, now) // a suspected timeout is already counted
	}
	if ev.path != "" {
		if failed {
			if u.pathStreak[ev.path] >= pathScopeAfter {
				failed = false // this path's fault, not the upstream's
			}
			if len(u.pathStreak) >= maxPathStreaks {
				clear(u.pathStreak)
			}
			u.pathStreak[ev.path]++
		} else {
			delete(u.pathStreak, ev.path)
		}
	}
	b := u.bucket(now)
	b.requests++
	if failed {
		b.failures++
	}
	if ev.newConn {
		b.connects++
	}
	if ev.outcome == OutcomeConnectError {
		b.connects++
		b.connectFails++
	}
	if ev.outcome == OutcomeOK && (ev.kind == KindMod || ev.kind == KindZip) {
		b.artifacts++
	}
	x := 0.0
	if failed {
		x = 1
	}
	u.ewma += ewmaAlpha * (x - u.ewma)
	if ev.ttfb > 0 {
		u.ttfb[u.ttfbNext] = sample{ev.ttfb, now}
		u.ttfbNext = (u.ttfbNext + 1) % ttfbRingSize
		u.ttfbN = min(u.ttfbN+1, ttfbRingSize)
		u.statsDirty = true
	}

	switch u.circuit {
	case circuitHalfOpen:
		if !u.trialOut {
			break
		}
		if failed {
			h.openLocked(u, now)
		} else {
			h.closeLocked(u)
		}
	case circuitOpen:
		// A straggler that started before the circuit opened: no effect.
	}
	h.evaluateLocked(u, now)
}

func (h *Health) openLocked(u *upHealth, now time.Time) {
	u.circuit, u.openedAt, u.trialOut = circuitOpen, now, false
	u.openedByKernel = ""
	if f, reason := h.kernelFactorLocked(u, now); f < 1 && !u.hung {
		if _, base := h.userScoreLocked(u, now); stateOf(base) != StateUnhealthy {
			u.openedByKernel = reason
		}
	}
	h.cfg.Logger.Warn("netprobe: upstream circuit open", "upstream", u.name, "hung", u.hung)
}

// ErrUpstreamHung is wrapped by the error of a request released because
// its upstream was recognised as hanging. It reports Timeout() == true.
var ErrUpstreamHung error = hungError{}

type hungError struct{}

func (hungError) Error() string {
	return "upstream hangs: released without waiting for the first-byte timeout"
}
func (hungError) Timeout() bool   { return true }
func (hungError) Temporary() bool { return true }

// trackHangLocked follows the streak of timeouts of u; see the type's doc
// comment. An answer of any kind ends the streak.
func (h *Health) trackHangLocked(u *upHealth, timeout bool, path string, now time.Time) {
	if !timeout {
		u.timeoutStreak = 0
		clear(u.timeoutPaths)
		return
	}
	u.timeoutStreak++
	if path != "" && len(u.timeoutPaths) < 16 {
		u.timeoutPaths[path] = true
	}
	if u.timeoutStreak < hangTimeouts || len(u.timeoutPaths) < 2 || u.circuit != circuitClosed {
		return
	}
	u.hung = true
	h.openLocked(u, now)
	h.cfg.Logger.Warn("netprobe: upstream hangs; releasing the requests waiting on it", "upstream", u.name, "waiting", len(u.waiting))
	if n := len(u.waiting); n > 0 {
		h.m.decisions.WithLabelValues(u.name, "released", "hang").Add(float64(n))
		u.decisions[[2]string{"released", "hang"}] += int64(n)
	}
	for id, cancel := range u.waiting {
		cancel(ErrUpstreamHung)
		delete(u.waiting, id)
	}
	h.evaluateLocked(u, now)
}

var waitSeq atomic.Uint64

// waitFirstByte registers a request waiting for its first byte from
// upstream: cancel is called with ErrUpstreamHung if the upstream is
// recognised as hanging meanwhile. It returns the registration's id, a
// delay after which the request counts as a suspected timeout (0: no
// baseline yet), and a first-byte budget shorter than the configured
// timeout while the circuit is open after a hang (0: none).
func (h *Health) waitFirstByte(upstream string, cancel context.CancelCauseFunc) (id uint64, suspectAfter, budget time.Duration) {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.getLocked(upstream)
	id = waitSeq.Add(1)
	u.waiting[id] = cancel
	h.latencyStatsLocked(u, now)
	if u.recentN >= h.cfg.HedgeMinSamples {
		suspectAfter = max(hangFloor, 10*u.p95)
		if suspectAfter >= h.cfg.FirstByteTimeout {
			suspectAfter = 0
		}
	}
	if u.hung && u.circuit != circuitClosed {
		budget = hungFirstByte
		if suspectAfter > 0 {
			budget = min(budget, suspectAfter)
		}
	}
	return id, suspectAfter, budget
}

// gotFirstByte ends a waitFirstByte registration; answered says the
// upstream sent response headers, which proves it alive and ends a streak
// of (suspected) timeouts.
func (h *Health) gotFirstByte(upstream string, id uint64, answered bool) {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.getLocked(upstream)
	delete(u.waiting, id)
	if answered {
		h.trackHangLocked(u, false, "", now)
	}
}

// suspect counts a request that has waited suspiciously long for its
// first byte as a timeout of the hang detector (the request goes on).
func (h *Health) suspect(upstream, path string) {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.trackHangLocked(h.getLocked(upstream), true, path, now)
}

// closeLocked closes the circuit after a successful trial and clears the
// window's failure history so that the old failures do not re-open it.
func (h *Health) closeLocked(u *upHealth) {
	u.circuit, u.trialOut, u.hung = circuitClosed, false, false
	u.buckets = [windowBuckets]bucket{}
	u.ewma = 0
	clear(u.pathStreak)
	u.kev.freshStart()
	h.cfg.Logger.Info("netprobe: upstream circuit closed after a successful trial", "upstream", u.name)
}

// scoreLocked computes the score (see the type's doc comment) and the
// transport-only base score, which alone may open the circuit.
// scoreLocked is userScoreLocked times the kernel evidence factor
// (evidence.go; 1 without eBPF), for both the score and the transport
// score that opens circuits.
func (h *Health) scoreLocked(u *upHealth, now time.Time) (score, base float64) {
	f, _ := h.kernelFactorLocked(u, now)
	score, base = h.userScoreLocked(u, now)
	return score * f, base * f
}

// userScoreLocked computes the userspace score and transport score (see
// the type's doc comment).
func (h *Health) userScoreLocked(u *upHealth, now time.Time) (score, base float64) {
	w := u.window(now)
	fail := u.ewma
	if w.requests > 0 {
		fail = max(fail, float64(w.failures)/float64(w.requests))
	}
	connect := 1.0
	if w.connects > 0 {
		connect = 1 - float64(w.connectFails)/float64(w.connects)
	}
	h.latencyStatsLocked(u, now)
	base = (1 - fail) * (1 - fail) * (0.6*connect + 0.4*u.latency)
	score = base
	if w.checksum > 0 {
		k := float64(w.checksum) / float64(max(w.artifacts, w.checksum))
		wk := min(0.9, 5*k)
		score = (1-wk)*base + wk*(1-min(1, 10*k))
	}
	return min(1, max(0, score)), min(1, max(0, base))
}

// latencyStatsLocked refreshes the cached TTFB statistics: at most once a
// second under load, immediately while samples are few.
func (h *Health) latencyStatsLocked(u *upHealth, now time.Time) {
	if !u.statsDirty && now.Sub(u.statsAt) < bucketWidth {
		return
	}
	if u.ttfbN >= 100 && now.Sub(u.statsAt) < time.Second && now.After(u.statsAt) {
		return
	}
	u.statsDirty, u.statsAt = false, now
	all := make([]time.Duration, 0, u.ttfbN)
	recent := make([]time.Duration, 0, u.ttfbN)
	for _, s := range u.ttfb[:u.ttfbN] {
		all = append(all, s.d)
		if now.Sub(s.at) < healthWindow {
			recent = append(recent, s.d)
		}
	}
	slices.Sort(all)
	slices.Sort(recent)
	u.recentN = len(recent)
	u.p95, u.recentP50, u.baseP50, u.latency = 0, 0, 0, 1
	if len(recent) > 0 {
		u.p95 = quantile(recent, 0.95)
		u.recentP50 = quantile(recent, 0.5)
	}
	if len(all) > 0 {
		u.baseP50 = quantile(all, 0.5)
	}
	if len(all) >= 20 && len(recent) >= 5 && u.baseP50 > 0 {
		rho := float64(u.recentP50) / float64(u.baseP50)
		u.latency = min(1, max(0, 1-(rho-1.5)/3.5))
	}
}

// quantile of sorted values (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(len(sorted)-1, max(0, i))]
}

func stateOf(score float64) string {
	switch {
	case score >= scoreHealthy:
		return StateHealthy
	case score >= scoreDegraded:
		return StateDegraded
	default:
		return StateUnhealthy
	}
}

// evaluateLocked recomputes the score, opens the circuit when warranted and
// updates the gauges. It returns the score.
func (h *Health) evaluateLocked(u *upHealth, now time.Time) float64 {
	score, base := h.scoreLocked(u, now)
	state := stateOf(score)
	if u.circuit == circuitClosed && stateOf(base) == StateUnhealthy {
		w := u.window(now)
		if w.requests >= h.cfg.CircuitMinSamples {
			h.openLocked(u, now)
		}
	}
	if u.circuit != circuitClosed {
		state = StateOpen
	}
	h.m.score.WithLabelValues(u.name).Set(score)
	h.setStateLocked(u, state)
	return score
}

func (h *Health) setStateLocked(u *upHealth, state string) {
	if u.state == state {
		return
	}
	u.state = state
	for _, s := range allStates {
		v := 0.0
		if s == state {
			v = 1
		}
		h.m.state.WithLabelValues(u.name, s).Set(v)
	}
}

// Allow reports whether a request may be sent to upstream now; see the
// type's doc comment. reason is "circuit_open", "half_open_trial" or the
// upstream's state ("healthy", "degraded", "unhealthy").
func (h *Health) Allow(upstream string) (ok bool, reason string) {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.getLocked(upstream)
	closed := "circuit_open"
	if u.openedByKernel != "" {
		closed = u.openedByKernel
	}
	switch u.circuit {
	case circuitOpen:
		if now.Sub(u.openedAt) < h.cfg.CircuitCooldown {
			return false, closed
		}
		u.circuit, u.trialAt, u.trialOut = circuitHalfOpen, now, true
		return true, "half_open_trial"
	case circuitHalfOpen:
		if u.trialOut && now.Sub(u.trialAt) < h.cfg.CircuitCooldown {
			return false, closed
		}
		u.trialAt, u.trialOut = now, true
		return true, "half_open_trial"
	}
	return true, stateOf(h.evaluateLocked(u, now))
}

// Score is upstream's health score in [0, 1].
func (h *Health) Score(upstream string) float64 {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.evaluateLocked(h.getLocked(upstream), now)
}

// State is upstream's state: healthy, degraded, unhealthy or open (circuit
// open or half-open).
func (h *Health) State(upstream string) string {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.getLocked(upstream)
	h.evaluateLocked(u, now)
	return u.state
}

// HedgeAfter is upstream's p95 time to first byte over the window, at least
// HedgeFloor; ok is false with fewer than HedgeMinSamples recent samples.
func (h *Health) HedgeAfter(upstream string) (d time.Duration, ok bool) {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.getLocked(upstream)
	h.latencyStatsLocked(u, now)
	if u.recentN < h.cfg.HedgeMinSamples {
		return 0, false
	}
	return max(u.p95, h.cfg.HedgeFloor), true
}

// ReportChecksumFailure counts an artifact from upstream that disagreed
// with the checksum database; it weighs heavily on the score.
func (h *Health) ReportChecksumFailure(upstream string) {
	now := h.now()
	h.m.checksumErr.WithLabelValues(upstream).Inc()
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.getLocked(upstream)
	u.bucket(now).checksum++
	u.errors = append(u.errors, ErrorRecord{Time: now, Outcome: "checksum_failure", Error: errChecksum.Error()})
	if len(u.errors) > maxErrors {
		u.errors = slices.Delete(u.errors, 0, len(u.errors)-maxErrors)
	}
	h.evaluateLocked(u, now)
}

var errChecksum = errors.New("artifact disagreed with the checksum database")

// RecordDecision counts one fallback decision of the proxy
// (modproxy_upstream_decisions_total{upstream,decision,reason}).
func (h *Health) RecordDecision(upstream, decision, reason string) {
	h.m.decisions.WithLabelValues(upstream, decision, reason).Inc()
	h.mu.Lock()
	h.getLocked(upstream).decisions[[2]string{decision, reason}]++
	obs := h.decisionObs
	h.mu.Unlock()
	for _, fn := range obs {
		fn(upstream, decision, reason)
	}
}

// AddDecisionObserver makes every recorded decision, the proxy's and
// netprobe's own (a kernel stall abandoning a body), also go to fn (the
// heatmap's time line). fn must not block.
func (h *Health) AddDecisionObserver(fn func(upstream, decision, reason string)) {
	h.mu.Lock()
	h.decisionObs = append(slices.Clip(h.decisionObs), fn)
	h.mu.Unlock()
}

// healthSnapshot is the debug page's view of one upstream.
type healthSnapshot struct {
	Score      float64
	State      string
	Circuit    string
	HedgeAfter time.Duration
	HedgeOK    bool
	NewConns   int64
	Reused     int64
	Outcomes   map[string]int64
	Errors     []ErrorRecord
	Decisions  []DecisionCount
	Window     WindowCounts
	Kernel     *KernelEvidence
}

// DecisionCount is one (decision, reason) counter.
type DecisionCount struct {
	Decision string `json:"decision"`
	Reason   string `json:"reason"`
	Count    int64  `json:"count"`
}

// WindowCounts are the sliding-window counts behind the score.
type WindowCounts struct {
	Requests         int `json:"requests"`
	Failures         int `json:"failures"`
	Connects         int `json:"connects"`
	ConnectFailures  int `json:"connect_failures"`
	Artifacts        int `json:"artifacts"`
	ChecksumFailures int `json:"checksum_failures"`
}

func (h *Health) upstreams() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	names := make([]string, 0, len(h.ups))
	for n := range h.ups {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func (h *Health) snapshot(upstream string) healthSnapshot {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	u := h.getLocked(upstream)
	s := healthSnapshot{
		Score:    h.evaluateLocked(u, now),
		State:    u.state,
		Circuit:  u.circuit.String(),
		NewConns: u.newConns,
		Reused:   u.reuseConns,
		Outcomes: make(map[string]int64, len(u.outcomes)),
		Errors:   slices.Clone(u.errors),
	}
	if u.recentN >= h.cfg.HedgeMinSamples {
		s.HedgeAfter, s.HedgeOK = max(u.p95, h.cfg.HedgeFloor), true
	}
	for k, v := range u.outcomes {
		s.Outcomes[k] = v
	}
	for k, v := range u.decisions {
		s.Decisions = append(s.Decisions, DecisionCount{Decision: k[0], Reason: k[1], Count: v})
	}
	slices.SortFunc(s.Decisions, func(a, b DecisionCount) int {
		if a.Decision != b.Decision {
			if a.Decision < b.Decision {
				return -1
			}
			return 1
		}
		if a.Reason < b.Reason {
			return -1
		}
		if a.Reason > b.Reason {
			return 1
		}
		return 0
	})
	w := u.window(now)
	s.Kernel = h.kernelSnapshotLocked(u, now)
	s.Window = WindowCounts{w.requests, w.failures, w.connects, w.connectFails, w.artifacts, w.checksum}
	return s
}
