package netprobe

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modproxy/modproxy/bpf"
)

// ErrBodyIdle is wrapped by the error of a response body Read that made no
// progress for Config.IdleBodyTimeout; the request has been aborted. It
// reports Timeout() == true.
var ErrBodyIdle error = idleBodyError{}

type idleBodyError struct{}

func (idleBodyError) Error() string   { return "response body idle timeout" }
func (idleBodyError) Timeout() bool   { return true }
func (idleBodyError) Temporary() bool { return true }

// ErrKernelStall is wrapped by the error of a response body Read aborted
// because the kernel saw no packet with payload arrive on the connection for
// Config.KernelStallAfter (decision reason "kernel_stall"). It reports
// Timeout() == true.
var ErrKernelStall error = kernelStallError{}

type kernelStallError struct{}

func (kernelStallError) Error() string   { return "kernel saw the flow stall" }
func (kernelStallError) Timeout() bool   { return true }
func (kernelStallError) Temporary() bool { return true }

// DecisionReason names the fallback decision this error causes.
func (kernelStallError) DecisionReason() string { return ReasonKernelStall }

// newBaseTransport builds the one http.Transport shared by every upstream.
func newBaseTransport(cfg *Config, d *dialer) *http.Transport {
	t := &http.Transport{
		Proxy:                 cfg.Proxy,
		DialContext:           d.DialContext,
		DialTLSContext:        d.DialTLSContext,
		ForceAttemptHTTP2:     !cfg.HTTP1Only,
		MaxIdleConns:          cfg.MaxIdleConns,
		MaxIdleConnsPerHost:   cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:       cfg.IdleConnTimeout,
		TLSHandshakeTimeout:   cfg.TLSTimeout, // TLS through an HTTP proxy
		TLSClientConfig:       cfg.TLSConfig,
		ResponseHeaderTimeout: cfg.FirstByteTimeout,
		ExpectContinueTimeout: time.Second,
		HTTP2: &http.HTTP2Config{
			// Detect dead HTTP/2 connections instead of hanging on them.
			SendPingTimeout: 30 * time.Second,
			PingTimeout:     15 * time.Second,
		},
	}
	if cfg.HTTP1Only {
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return t
}

// transport is the instrumented RoundTripper in front of the shared
// http.Transport.
type transport struct {
	p    *Probe
	base *http.Transport
}

type reqStateKey struct{}

// reqState follows one request from RoundTrip to body EOF or Close. The
// trace hooks run on transport goroutines, hence the mutex.
type reqState struct {
	p        *Probe
	upstream string
	kind     string
	path     string // moduleKey of the request path
	start    time.Time
	rec      *recorder           // set by RunProbe
	alarm    func(reason string) // WithKernelAlarm of the request, or nil
	// suspected: the hang detector already counted this request as a
	// timeout while it waited (Health.suspect); its final timeout must not
	// count a second time.
	suspected atomic.Bool

	mu sync.Mutex
	t  timings // guarded by mu
}

// timings are the trace observations of one request.
type timings struct {
	gotConn           bool
	gotConnAt         time.Time
	reused            bool
	info              dialInfo
	hasInfo           bool
	tlsStart          time.Time     // TLS done by the transport (HTTP proxy case)
	tlsProxied        time.Duration // its duration
	tlsProxiedVersion uint16
	wrote             time.Time
	firstByte         time.Time
	status            int
	proto             string
	// Kernel TTFB correlation (HTTP/1.1 connections registered with the
	// eBPF telemetry): the connection, this request's number on it, and
	// CLOCK_MONOTONIC readings (the kernel's clock) at GotConn and first byte.
	kc                   *kernelConn
	kseq                 uint32
	kGotConn, kFirstByte uint64
}

func (st *reqState) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		GotConn: func(ci httptrace.GotConnInfo) {
			info, ok := dialInfoOf(ci.Conn)
			st.mu.Lock()
			st.t.gotConn, st.t.gotConnAt, st.t.reused = true, time.Now(), ci.Reused
			st.t.info, st.t.hasInfo = info, ok && !ci.Reused
			if kc := info.kc; kc != nil && !kc.h2.Load() {
				st.t.kc, st.t.kseq, st.t.kGotConn = kc, kc.reqs.Add(1), bpf.MonotonicNow()
			}
			st.mu.Unlock()
			reused := "false"
			if ci.Reused {
				reused = "true"
			}
			st.p.metrics.conns.WithLabelValues(st.upstream, reused).Inc()
		},
		TLSHandshakeStart: func() {
			st.mu.Lock()
			st.t.tlsStart = time.Now()
			st.mu.Unlock()
		},
		// With our DialTLSContext these fire around a no-op handshake
		// (the dialer already did it); complete uses them only for TLS
		// the transport did itself (through an HTTP proxy).
		TLSHandshakeDone: func(cs tls.ConnectionState, err error) {
			st.mu.Lock()
			if !st.t.tlsStart.IsZero() && err == nil {
				st.t.tlsProxied = time.Since(st.t.tlsStart)
				st.t.tlsProxiedVersion = cs.Version
			}
			st.mu.Unlock()
		},
		WroteRequest: func(httptrace.WroteRequestInfo) {
			st.mu.Lock()
			st.t.wrote = time.Now()
			st.mu.Unlock()
		},
		GotFirstResponseByte: func() {
			st.mu.Lock()
			st.t.firstByte = time.Now()
			if st.t.kc != nil {
				st.t.kFirstByte = bpf.MonotonicNow()
			}
			st.mu.Unlock()
		},
	}
}

// RoundTrip sends req through the shared transport, timing its phases.
// The response body is wrapped: reading it to EOF or closing it completes
// the measurement, and a read without progress for IdleBodyTimeout aborts
// the request.
func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	upstream, kind := classify(t.p.upstreams, req.URL)
	st := &reqState{p: t.p, upstream: upstream, kind: kind, path: moduleKey(req.URL.Path), start: time.Now()}
	if rec, ok := req.Context().Value(recorderKey{}).(*recorder); ok {
		st.rec = rec
	}
	if a, ok := req.Context().Value(kernelAlarmKey{}).(func(string)); ok {
		st.alarm = a
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	ctx = httptrace.WithClientTrace(ctx, st.trace())
	ctx = context.WithValue(ctx, reqStateKey{}, st)

	// Until its first byte, the request can be released by the hang
	// detector, is watched against the upstream's latency baseline and,
	// after a hang, gets only a short first-byte budget.
	h := t.p.health
	id, suspectAfter, budget := h.waitFirstByte(upstream, cancel)
	if req.Context().Value(trialKey{}) != nil {
		budget = 0 // nobody waits on a background trial: let it tell a slow upstream from a hung one
	}
	var timers []*time.Timer
	if suspectAfter > 0 {
		timers = append(timers, time.AfterFunc(suspectAfter, func() {
			st.suspected.Store(true)
			h.suspect(upstream, st.path)
		}))
	}
	if budget > 0 {
		timers = append(timers, time.AfterFunc(budget, func() { cancel(ErrUpstreamHung) }))
	}
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	for _, tm := range timers {
		tm.Stop()
	}
	h.gotFirstByte(upstream, id, err == nil)
	if err != nil {
		if errors.Is(context.Cause(ctx), ErrUpstreamHung) && req.Context().Err() == nil {
			err = fmt.Errorf("netprobe: %s %s: %w (%v)", upstream, kind, ErrUpstreamHung, err)
		}
		cancel(nil)
		st.complete(time.Now(), st.outcomeOf(req.Context(), err), err, false, 0)
		return nil, err
	}
	st.mu.Lock()
	st.t.status, st.t.proto = resp.StatusCode, resp.Proto
	st.mu.Unlock()
	b := newBody(resp.Body, st, req.Context(), cancel, t.p.cfg.IdleBodyTimeout)
	b.watchStall(t.p, t.p.cfg.KernelStallAfter)
	resp.Body = b
	resp.Request = req
	return resp, nil
}

type trialKey struct{}

// BackgroundTrial marks the requests sent with the returned context as a
// background half-open trial of an upstream's circuit: no client waits on
// them, so they keep the full first-byte timeout even while the upstream is
// held for hung (a slow upstream can then close its circuit again).
func BackgroundTrial(ctx context.Context) context.Context {
	return context.WithValue(ctx, trialKey{}, true)
}

// moduleKey names the module a GOPROXY request path is about (the path up
// to "/@v/" or "/@latest", with any upstream base path still in front,
// which keeps it unique per module), or "" for other requests.
func moduleKey(p string) string {
	if i := strings.Index(p, "/@v/"); i > 0 {
		return p[:i]
	}
	if i := strings.Index(p, "/@latest"); i > 0 {
		return p[:i]
	}
	return ""
}

// CloseIdleConnections closes the shared transport's idle connections.
func (t *transport) CloseIdleConnections() { t.base.CloseIdleConnections() }

// outcomeOf classifies a request error.
func (st *reqState) outcomeOf(callerCtx context.Context, err error) string {
	st.mu.Lock()
	gotConn := st.t.gotConn
	st.mu.Unlock()
	switch {
	case errors.Is(err, ErrBodyIdle), errors.Is(err, ErrKernelStall), errors.Is(err, ErrUpstreamHung):
		return OutcomeTimeout
	case callerCtx.Err() != nil:
		if errors.Is(callerCtx.Err(), context.DeadlineExceeded) {
			return OutcomeTimeout
		}
		return OutcomeCanceled
	case !gotConn:
		return OutcomeConnectError // DNS, TCP connect or TLS handshake
	case IsTimeout(err):
		return OutcomeTimeout
	default:
		return OutcomeReset // connection reset, closed or broken mid-request
	}
}

func statusOutcome(code int) string {
	switch {
	case code == http.StatusNotFound || code == http.StatusGone:
		return OutcomeNotFound
	case code == http.StatusForbidden:
		return OutcomeForbidden
	case code >= 500:
		return OutcomeServerError
	case code >= 400:
		return OutcomeClientError
	default:
		return OutcomeOK
	}
}

// complete records the request: phases, counters, health, probe recorder.
// headers says whether a response was received; n is body bytes read.
func (st *reqState) complete(end time.Time, outcome string, err error, headers bool, n int64) {
	st.mu.Lock()
	s := st.t
	st.mu.Unlock()
	p := st.p
	up, kind := st.upstream, st.kind
	obs := func(phase string, d time.Duration) {
		p.ObservePhase(up, kind, phase, SourceUserspace, d)
		if st.rec != nil {
			st.rec.phase(phase, d)
		}
	}
	if s.hasInfo {
		obs(PhaseDNS, s.info.dns)
		obs(PhaseConnect, s.info.connect)
		if s.info.tlsVersion != 0 {
			obs(PhaseTLS, s.info.tls)
		}
	}
	if s.tlsProxied > 0 && !(s.hasInfo && s.info.tlsVersion != 0) && !s.reused {
		obs(PhaseTLS, s.tlsProxied)
		p.metrics.tls.WithLabelValues(up, tls.VersionName(s.tlsProxiedVersion)).Inc()
	}
	var ttfb time.Duration
	if headers {
		// From the request written; failing that, from the connection in
		// hand, so that a trace without WroteRequest never counts dial and
		// handshake time as time to first byte.
		from := s.wrote
		if from.IsZero() {
			from = s.gotConnAt
		}
		if from.IsZero() {
			from = st.start
		}
		if !s.firstByte.IsZero() {
			ttfb = s.firstByte.Sub(from)
			obs(PhaseTTFB, ttfb)
			obs(PhaseTransfer, end.Sub(s.firstByte))
		}
		obs(PhaseTotal, end.Sub(st.start))
		p.metrics.bytes.WithLabelValues(up, kind).Add(float64(n))
	}
	p.metrics.requests.WithLabelValues(up, kind, outcome).Inc()
	if s.kc != nil {
		if k := p.kernel.Load(); k != nil {
			k.userRequest(s.kc, s.kseq, up, kind, st.rec, s.kGotConn, s.kFirstByte)
		}
	}
	if headers && err == nil && outcome == OutcomeServerError {
		err = fmt.Errorf("HTTP %d", s.status)
	}
	p.health.record(up, event{
		kind:    kind,
		outcome: outcome,
		newConn: s.gotConn && !s.reused,
		reused:  s.gotConn && s.reused,
		ttfb:    ttfb,
		err:     err,
		path:    st.path,

		suspected: st.suspected.Load(),
	})
	if st.rec != nil {
		st.rec.finish(s.status, s.proto, outcome, s.gotConn && s.reused, n, err)
	}
}

// body wraps a response body: it counts bytes, enforces the idle-body
// timeout and completes the request's measurement at EOF or Close.
type body struct {
	rc     io.ReadCloser
	st     *reqState
	caller context.Context
	cancel context.CancelCauseFunc
	idle   time.Duration

	timer   *time.Timer // armed only while a Read is in progress
	epoch   time.Time
	reading atomic.Int64 // 1 + start of the current Read (ns since epoch); 0 when not reading
	fired   atomic.Bool
	n       atomic.Int64
	once    sync.Once

	// Kernel stall watch (stall.go); nil stallTimer without eBPF.
	stallAfter   time.Duration
	stallTimer   *time.Timer
	stallK       *Kernel
	stallConn    *kernelConn
	stallReading atomic.Uint64 // 1 + kernel time the current Read began; 0 when not reading
	stalled      atomic.Bool
}

func newBody(rc io.ReadCloser, st *reqState, caller context.Context, cancel context.CancelCauseFunc, idle time.Duration) *body {
	b := &body{rc: rc, st: st, caller: caller, cancel: cancel, idle: idle}
	if idle > 0 {
		b.epoch = time.Now()
		b.timer = time.AfterFunc(idle, b.onIdle)
		b.timer.Stop()
	}
	return b
}

// onIdle aborts the request if the Read in progress started at least
// b.idle ago. A late firing of a timer meant for an earlier Read finds a
// younger Read (or none) and does nothing; that Read armed its own timer.
func (b *body) onIdle() {
	s := b.reading.Load()
	if s == 0 || time.Since(b.epoch)-time.Duration(s-1) < b.idle {
		return
	}
	b.fired.Store(true)
	b.cancel(ErrBodyIdle)
}

func (b *body) Read(p []byte) (int, error) {
	if b.timer != nil {
		b.reading.Store(int64(time.Since(b.epoch)) + 1)
		b.timer.Reset(b.idle)
	}
	if b.stallTimer != nil {
		b.stallReading.Store(bpf.MonotonicNow() + 1)
		b.stallTimer.Reset(b.stallAfter)
	}
	n, err := b.rc.Read(p)
	if b.timer != nil {
		b.reading.Store(0)
		b.timer.Stop()
	}
	if b.stallTimer != nil {
		b.stallReading.Store(0)
		b.stallTimer.Stop()
	}
	b.n.Add(int64(n))
	switch {
	case err == nil:
	case err == io.EOF:
		b.finish(nil)
	default:
		if b.stalled.Load() {
			err = fmt.Errorf("netprobe: %s %s: no packet arrived for %v during the body: %w", b.st.upstream, b.st.kind, b.stallAfter, ErrKernelStall)
		} else if b.fired.Load() {
			err = fmt.Errorf("netprobe: %s %s: no response body progress for %v: %w", b.st.upstream, b.st.kind, b.idle, ErrBodyIdle)
		}
		b.finish(err)
	}
	return n, err
}

// Close closes the body and completes the measurement if EOF was not seen
// (the outcome then reflects the status: the caller chose to stop).
func (b *body) Close() error {
	err := b.rc.Close()
	b.finish(nil)
	if b.timer != nil {
		b.timer.Stop()
	}
	if b.stallTimer != nil {
		b.stallTimer.Stop()
	}
	b.cancel(nil)
	return err
}

func (b *body) finish(err error) {
	b.once.Do(func() {
		b.st.mu.Lock()
		outcome := statusOutcome(b.st.t.status)
		b.st.mu.Unlock()
		if err != nil {
			outcome = b.st.outcomeOf(b.caller, err)
		}
		b.st.complete(time.Now(), outcome, err, true, b.n.Load())
	})
}
