package netprobe

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func newTestHealth(t *testing.T) (*Health, *fakeClock) {
	t.Helper()
	clock := newFakeClock()
	cfg := Config{Clock: clock.Now}
	cfg.setDefaults()
	return newHealth(&cfg, newMetrics()), clock
}

func TestHealthNotFoundIsNotFailure(t *testing.T) {
	h, _ := newTestHealth(t)
	for range 50 {
		h.record("u", event{kind: KindInfo, outcome: OutcomeNotFound, ttfb: time.Millisecond})
		h.record("u", event{kind: KindInfo, outcome: OutcomeForbidden, ttfb: time.Millisecond})
	}
	if s := h.Score("u"); s != 1 {
		t.Errorf("score after 404/403s = %v, want 1", s)
	}
	if ok, reason := h.Allow("u"); !ok || reason != StateHealthy {
		t.Errorf("Allow = %v %q", ok, reason)
	}
}

func TestHealthFailuresDegrade(t *testing.T) {
	h, _ := newTestHealth(t)
	for i := range 40 {
		out := OutcomeOK
		if i%5 == 0 {
			out = OutcomeServerError // 20 %
		}
		h.record("u", event{kind: KindInfo, outcome: out, ttfb: time.Millisecond})
	}
	s := h.Score("u")
	if s >= scoreHealthy || s < scoreDegraded {
		t.Errorf("score with 20%% failures = %.2f, want degraded", s)
	}
	if st := h.State("u"); st != StateDegraded {
		t.Errorf("state = %s", st)
	}
}

func TestHealthChecksumFailuresDropScore(t *testing.T) {
	h, _ := newTestHealth(t)
	for range 20 {
		h.record("u", event{kind: KindZip, outcome: OutcomeOK, ttfb: time.Millisecond})
	}
	if s := h.Score("u"); s < 0.99 {
		t.Fatalf("score before = %v", s)
	}
	h.ReportChecksumFailure("u")
	one := h.Score("u")
	h.ReportChecksumFailure("u")
	h.ReportChecksumFailure("u")
	three := h.Score("u")
	if !(three < one && three < 0.3) {
		t.Errorf("score after 1 and 3 of 20 checksum failures: %.2f, %.2f; want a sharp drop below 0.3", one, three)
	}
	// A mismatch condemns one copy (the proxy's job), never the upstream.
	if ok, reason := h.Allow("u"); !ok || reason == "circuit_open" {
		t.Errorf("Allow after checksum failures = %v %q, want allowed", ok, reason)
	}
}

func TestHealthLatencyAgainstBaseline(t *testing.T) {
	h, clock := newTestHealth(t)
	for range 200 {
		h.record("u", event{kind: KindInfo, outcome: OutcomeOK, ttfb: 10 * time.Millisecond})
	}
	clock.Advance(10 * time.Minute) // the baseline leaves the window
	for range 30 {
		h.record("u", event{kind: KindInfo, outcome: OutcomeOK, ttfb: 100 * time.Millisecond})
	}
	if s := h.Score("u"); s > 0.7 || s < scoreDegraded {
		t.Errorf("score at 10× the baseline TTFB = %.2f, want degraded (latency term 0)", s)
	}
}

func TestHedgeAfter(t *testing.T) {
	h, clock := newTestHealth(t)
	for range 19 {
		h.record("u", event{kind: KindInfo, outcome: OutcomeOK, ttfb: time.Millisecond})
	}
	if _, ok := h.HedgeAfter("u"); ok {
		t.Error("HedgeAfter ok with 19 samples")
	}
	h.record("u", event{kind: KindInfo, outcome: OutcomeOK, ttfb: time.Millisecond})
	if d, ok := h.HedgeAfter("u"); !ok || d != DefaultHedgeFloor {
		t.Errorf("HedgeAfter = %v %v, want the 50ms floor", d, ok)
	}
	for i := range 100 {
		h.record("v", event{kind: KindInfo, outcome: OutcomeOK, ttfb: time.Duration(i+1) * 10 * time.Millisecond})
	}
	if d, ok := h.HedgeAfter("v"); !ok || d != 950*time.Millisecond {
		t.Errorf("HedgeAfter = %v %v, want p95 950ms", d, ok)
	}
	clock.Advance(6 * time.Minute)
	if _, ok := h.HedgeAfter("v"); ok {
		t.Error("HedgeAfter ok with only old samples")
	}
}

func TestCircuitBreaker(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	e := newEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}), "", func(c *Config) { c.CircuitCooldown = 30 * time.Second })
	h := e.p.Health()
	for i := range 10 {
		if ok, _ := h.Allow(e.base); !ok {
			t.Fatalf("circuit open after %d failures, want ≥ 10 (CircuitMinSamples)", i)
		}
		e.get(t, fmt.Sprintf("/m%d/@v/list", i)) // failures on many modules
	}
	if ok, reason := h.Allow(e.base); ok || reason != "circuit_open" {
		t.Fatalf("Allow after 10 failures = %v %q, want circuit_open", ok, reason)
	}
	if got := counter(t, e.reg, "modproxy_upstream_state", map[string]string{"upstream": e.base, "state": StateOpen}); got != 1 {
		t.Errorf("state{open} = %v", got)
	}
	e.clock.Advance(29 * time.Second)
	if ok, _ := h.Allow(e.base); ok {
		t.Fatal("allowed before the cool-down")
	}
	e.clock.Advance(2 * time.Second)

	trial := func() {
		t.Helper()
		var wg sync.WaitGroup
		var granted atomic.Int32
		for range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if ok, reason := h.Allow(e.base); ok {
					if reason != "half_open_trial" {
						t.Errorf("reason %q", reason)
					}
					granted.Add(1)
				}
			}()
		}
		wg.Wait()
		if granted.Load() != 1 {
			t.Fatalf("%d half-open trials granted, want exactly 1", granted.Load())
		}
	}
	// The trial fails: the circuit re-opens.
	trial()
	e.get(t, "/trial1/@v/list")
	if ok, reason := h.Allow(e.base); ok || reason != "circuit_open" {
		t.Fatalf("after a failed trial Allow = %v %q", ok, reason)
	}
	// The next trial succeeds: the circuit closes.
	e.clock.Advance(31 * time.Second)
	fail.Store(false)
	trial()
	e.get(t, "/trial2/@v/list")
	if ok, reason := h.Allow(e.base); !ok || reason == "half_open_trial" {
		t.Fatalf("after a successful trial Allow = %v %q", ok, reason)
	}
	if s := h.Score(e.base); s < scoreHealthy {
		t.Errorf("score after closing = %.2f", s)
	}
	h.RecordDecision(e.base, "skipped", "circuit_open")
	if got := counter(t, e.reg, "modproxy_upstream_decisions_total", map[string]string{"upstream": e.base, "decision": "skipped", "reason": "circuit_open"}); got != 1 {
		t.Errorf("decisions = %v", got)
	}
}

func TestFaultsOnOnePathAreScoped(t *testing.T) {
	h, _ := newTestHealth(t)
	// Ten 500s for versions of one broken module: the module's fault.
	for range 10 {
		h.record("u", event{kind: KindInfo, outcome: OutcomeServerError, path: "/broken/mod", err: errors.New("HTTP 500")})
	}
	if ok, reason := h.Allow("u"); !ok {
		t.Fatalf("one module's failures opened the circuit: %q", reason)
	}
	// The same failures spread over many modules are the upstream's.
	for i := range 10 {
		h.record("v", event{kind: KindInfo, outcome: OutcomeServerError, path: fmt.Sprintf("/m%d", i), err: errors.New("HTTP 500")})
	}
	if ok, reason := h.Allow("v"); ok || reason != "circuit_open" {
		t.Fatalf("failures on ten modules: Allow = %v %q, want circuit_open", ok, reason)
	}
}

func TestHangReleasesWaitingRequests(t *testing.T) {
	h, _ := newTestHealth(t)
	released := make([]error, 0, 2)
	var mu sync.Mutex
	for range 2 {
		h.waitFirstByte("u", func(cause error) {
			mu.Lock()
			released = append(released, cause)
			mu.Unlock()
		})
	}
	// Timeouts on one module only: not a hang.
	for range 3 {
		h.record("u", event{kind: KindInfo, outcome: OutcomeTimeout, path: "/one", err: errors.New("timeout")})
	}
	if len(released) != 0 {
		t.Fatal("timeouts on one module released the waiters")
	}
	h.record("u", event{kind: KindInfo, outcome: OutcomeOK, path: "/one"})
	for i := range 3 {
		h.record("u", event{kind: KindInfo, outcome: OutcomeTimeout, path: fmt.Sprintf("/m%d", i), err: errors.New("timeout")})
	}
	mu.Lock()
	defer mu.Unlock()
	if len(released) != 2 || !errors.Is(released[0], ErrUpstreamHung) {
		t.Fatalf("released %v, want both waiters with ErrUpstreamHung", released)
	}
	if ok, _ := h.Allow("u"); ok {
		t.Error("circuit not open after a hang")
	}
	if got := h.snapshot("u").Decisions; !slices.Contains(got, DecisionCount{Decision: "released", Reason: "hang", Count: 2}) {
		t.Errorf("decisions %v, want 2 released", got)
	}
	if _, _, budget := h.waitFirstByte("u", func(error) {}); budget != hungFirstByte {
		t.Errorf("first-byte budget after a hang = %v, want %v", budget, hungFirstByte)
	}
}

func TestCircuitTrialExpires(t *testing.T) {
	h, clock := newTestHealth(t)
	for range 10 {
		h.record("u", event{kind: KindInfo, outcome: OutcomeTimeout, err: errors.New("timeout")})
	}
	clock.Advance(DefaultCircuitCooldown)
	if ok, _ := h.Allow("u"); !ok {
		t.Fatal("no trial after the cool-down")
	}
	if ok, _ := h.Allow("u"); ok {
		t.Fatal("second trial granted")
	}
	// The trial was cancelled by its caller: another one may go.
	h.record("u", event{kind: KindInfo, outcome: OutcomeCanceled})
	if ok, reason := h.Allow("u"); !ok || reason != "half_open_trial" {
		t.Fatalf("after a cancelled trial Allow = %v %q", ok, reason)
	}
	// No outcome within a cool-down: granted again.
	clock.Advance(DefaultCircuitCooldown)
	if ok, reason := h.Allow("u"); !ok || reason != "half_open_trial" {
		t.Fatalf("after an expired trial Allow = %v %q", ok, reason)
	}
}

// proxyHealth mirrors the Health interface of package proxy (proxy/deps.go),
// which netprobe cannot import; the assertion keeps the two in step.
type proxyHealth interface {
	Allow(upstream string) (ok bool, reason string)
	Score(upstream string) float64
	HedgeAfter(upstream string) (d time.Duration, ok bool)
	ReportChecksumFailure(upstream string)
	RecordDecision(upstream, decision, reason string)
}

var _ proxyHealth = (*Health)(nil)

// Requests waiting on an upstream that stops answering are released
// together once the hang is recognised (sooner than the first-byte timeout,
// from the latency baseline); afterwards a request gets only a short
// first-byte budget, except a background trial, which may be slow.
func TestHangReleaseEndToEnd(t *testing.T) {
	var mode atomic.Int32 // 0 answer, 1 hang, 2 answer after 3 s
	e := newEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch mode.Load() {
		case 1:
			<-r.Context().Done()
			return
		case 2:
			select {
			case <-time.After(3 * time.Second):
			case <-r.Context().Done():
				return
			}
		}
		w.Write([]byte("v1.0.0\n"))
	}), "", func(c *Config) { c.FirstByteTimeout = 20 * time.Second })
	for i := range 25 { // the baseline
		if _, _, err := e.get(t, fmt.Sprintf("/w%d/@v/list", i)); err != nil {
			t.Fatal(err)
		}
	}
	mode.Store(1)
	errs := make(chan error, 3)
	for i := range 3 {
		go func() {
			_, _, err := e.get(t, fmt.Sprintf("/h%d/@v/list", i))
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; !errors.Is(err, ErrUpstreamHung) {
			t.Errorf("waiting request ended with %v, want ErrUpstreamHung", err)
		}
	}
	if ok, _ := e.p.Health().Allow(e.base); ok {
		t.Fatal("circuit not open after the hang")
	}
	mode.Store(2) // slow, not hung
	if _, _, err := e.get(t, "/late/@v/list"); !errors.Is(err, ErrUpstreamHung) {
		t.Errorf("request after the hang: %v, want the short budget's ErrUpstreamHung", err)
	}
	req, _ := http.NewRequestWithContext(BackgroundTrial(context.Background()), http.MethodGet, e.base+"/trial/@v/list", nil)
	resp, err := e.p.Client().Do(req)
	if err != nil {
		t.Fatalf("background trial of a slow upstream: %v, want its answer", err)
	}
	resp.Body.Close()
}

func TestAnswersEndASuspectedHang(t *testing.T) {
	h, _ := newTestHealth(t)
	h.suspect("u", "/a")
	h.suspect("u", "/b")
	h.record("u", event{kind: KindInfo, outcome: OutcomeOK, path: "/c"}) // alive
	h.suspect("u", "/a")
	h.suspect("u", "/b")
	if ok, _ := h.Allow("u"); !ok {
		t.Error("an upstream that answered between slow requests was held for hung")
	}
	// A first byte (a zip still streaming, say) proves it alive too.
	id, _, _ := h.waitFirstByte("v", func(error) {})
	h.suspect("v", "/a")
	h.suspect("v", "/b")
	h.gotFirstByte("v", id, true)
	h.suspect("v", "/a")
	h.suspect("v", "/b")
	if ok, _ := h.Allow("v"); !ok {
		t.Error("an upstream that sent a first byte between slow requests was held for hung")
	}
}

// TestRecordRequest: requests made outside the transport (the direct
// upstream's git processes) are counted and open the circuit like any
// upstream's.
func TestRecordRequest(t *testing.T) {
	cfg, reg := testConfig(t, "127.0.0.1:1")
	p := newTestProbe(t, cfg)
	for range 10 {
		p.RecordRequest("direct", KindZip, OutcomeServerError, time.Second, errors.New("git fetch: early EOF"))
	}
	if ok, reason := p.Health().Allow("direct"); ok || reason != "circuit_open" {
		t.Errorf("Allow after 10 failures = %v %q", ok, reason)
	}
	if got := counter(t, reg, "modproxy_upstream_requests_total", map[string]string{"upstream": "direct", "kind": KindZip, "outcome": OutcomeServerError}); got != 10 {
		t.Errorf("requests_total = %v", got)
	}
}

// TestHangCountsASuspectedRequestOnce: a request the hang detector already
// counted as a timeout while it waited does not count again when it then
// times out, so two slow requests are not taken for the three of a hang.
func TestHangCountsASuspectedRequestOnce(t *testing.T) {
	h, _ := newTestHealth(t)
	for _, path := range []string{"/a", "/b"} {
		h.suspect("u", path)
		h.record("u", event{kind: KindInfo, outcome: OutcomeTimeout, path: path, err: errors.New("timeout"), suspected: true})
	}
	if ok, _ := h.Allow("u"); !ok {
		t.Fatal("two suspected requests that then timed out were counted as a hang")
	}
	h.record("u", event{kind: KindInfo, outcome: OutcomeTimeout, path: "/c", err: errors.New("timeout")})
	if ok, _ := h.Allow("u"); ok {
		t.Error("a third timeout did not mark the upstream hung")
	}
}
