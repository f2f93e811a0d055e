package proxy

import (
	"context"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/modproxy/modproxy/internal/testupstream"
)

// fakeHealth is a scripted Health.
type fakeHealth struct {
	mu        sync.Mutex
	scores    map[string]float64
	closed    map[string]string // upstream -> Allow reason when not allowed
	trial     map[string]bool   // upstream -> a half-open trial is due
	hedge     map[string]time.Duration
	decisions []string // "upstream decision reason"
	checksums map[string]int
}

func newFakeHealth() *fakeHealth {
	return &fakeHealth{scores: map[string]float64{}, closed: map[string]string{}, trial: map[string]bool{}, hedge: map[string]time.Duration{}, checksums: map[string]int{}}
}

func (h *fakeHealth) Allow(u string) (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.trial[u] {
		delete(h.trial, u) // granted once
		return true, "half_open_trial"
	}
	if why, ok := h.closed[u]; ok {
		return false, why
	}
	return true, "healthy"
}

func (h *fakeHealth) Score(u string) float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s, ok := h.scores[u]; ok {
		return s
	}
	return 1
}

func (h *fakeHealth) HedgeAfter(u string) (time.Duration, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.hedge[u]
	return d, ok
}

func (h *fakeHealth) ReportChecksumFailure(u string) {
	h.mu.Lock()
	h.checksums[u]++
	h.mu.Unlock()
}

func (h *fakeHealth) RecordDecision(u, decision, reason string) {
	h.mu.Lock()
	h.decisions = append(h.decisions, u+" "+decision+" "+reason)
	h.mu.Unlock()
}

func (h *fakeHealth) has(u, decision, reason string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range h.decisions {
		if d == u+" "+decision+" "+reason {
			return true
		}
	}
	return false
}

func TestHedgeStalledPrimaryLoses(t *testing.T) {
	slow, fast := newUpstream(t), newUpstream(t)
	// The primary stalls until its request is abandoned: only the hedge can
	// answer, and a proxy that waited for the primary would run into the
	// client's hang guard.
	const hangGuard = 2 * time.Minute
	slow.SetFaults(testupstream.Fault{Delay: 10 * hangGuard})
	h := newFakeHealth()
	h.hedge[slow.URL()] = 50 * time.Millisecond
	e := newEnv(t, slow.URL()+"|"+fast.URL(), func(c *Config) { c.Health = h })

	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/example.com/hello/@v/v1.0.0.info", nil)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("hedged request: %v (it waited for the stalled primary)", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("hedged request: status %d", resp.StatusCode)
	}
	r := response{status: resp.StatusCode, header: resp.Header}
	if r.header.Get(headerUpstream) != fast.URL() || r.header.Get(headerDecision) != "hedge_won" {
		t.Errorf("answered by %q (%q)", r.header.Get(headerUpstream), r.header.Get(headerDecision))
	}
	if !h.has(slow.URL(), "hedged", "no_first_byte_by_p95") || !h.has(fast.URL(), "hedge_won", "hedge_won") {
		t.Errorf("decisions: %v", h.decisions)
	}
}

func TestNoHedge(t *testing.T) {
	tests := []struct {
		name, list, path string
		private          bool
	}{
		{"comma list", ",", "/example.com/hello/@v/v1.0.0.info", false},
		{"zip", "|", "/example.com/hello/@v/v1.0.0.zip", false},
		{"private path", "|", "/example.com/hello/@v/v1.0.0.info", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			slow, other := newUpstream(t), newUpstream(t)
			slow.SetFaults(testupstream.Fault{Delay: 300 * time.Millisecond})
			h := newFakeHealth()
			h.hedge[slow.URL()] = 10 * time.Millisecond
			list := slow.URL() + tt.list + other.URL()
			e := newEnv(t, list, func(c *Config) {
				c.Health = h
				if tt.private {
					c.Private = "example.com"
					c.PrivateUpstreams, _ = ParseUpstreams(list)
				}
			})
			r := e.mustGet(tt.path, 200)
			if r.header.Get(headerUpstream) != slow.URL() || other.Count("example.com/hello") != 0 {
				t.Errorf("answered by %q; other upstream saw %d requests", r.header.Get(headerUpstream), other.Count("example.com/hello"))
			}
		})
	}
}

func TestCircuitOpenSkipsWithinSyntax(t *testing.T) {
	tests := []struct {
		name, sep      string
		bothOpen       bool
		deadAsked      bool
		otherAsked     bool
		wantDecision   string
		wantSkipped    bool
		wantLastResort bool
	}{
		// '|' lets the request go on past an open circuit.
		{name: "pipe skips", sep: "|", otherAsked: true, wantDecision: "fallback", wantSkipped: true},
		// After ',' the open circuit would end the request: rather than
		// strand it, the upstream is tried anyway.
		{name: "comma tries the last resort", sep: ",", deadAsked: true, wantDecision: "last_resort", wantSkipped: true, wantLastResort: true},
		// Every circuit open: the healthiest is tried.
		{name: "pipe all open", sep: "|", bothOpen: true, otherAsked: true, wantDecision: "last_resort", wantSkipped: true, wantLastResort: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dead, other := newUpstream(t), newUpstream(t)
			h := newFakeHealth()
			h.closed[dead.URL()] = "circuit_open"
			if tt.bothOpen {
				h.closed[other.URL()] = "circuit_open"
				h.scores[dead.URL()], h.scores[other.URL()] = 0.1, 0.3
			}
			e := newEnv(t, dead.URL()+tt.sep+other.URL(), func(c *Config) { c.Health = h })
			r := e.get("/example.com/hello/@v/v1.0.0.mod")
			if r.status != 200 {
				t.Fatalf("status %d %q, want 200", r.status, r.body)
			}
			if got := r.header.Get(headerDecision); got != tt.wantDecision {
				t.Errorf("decision %q, want %q", got, tt.wantDecision)
			}
			if (dead.Count("example.com") > 0) != tt.deadAsked {
				t.Errorf("open upstream asked = %v, want %v", !tt.deadAsked, tt.deadAsked)
			}
			if (other.Count("example.com") > 0) != tt.otherAsked {
				t.Errorf("other upstream asked = %v, want %v", !tt.otherAsked, tt.otherAsked)
			}
			if h.has(dead.URL(), "skipped", "circuit_open") != tt.wantSkipped {
				t.Errorf("decisions: %v", h.decisions)
			}
			lastResort := h.has(dead.URL(), "last_resort", "all_circuits_open") || h.has(other.URL(), "last_resort", "all_circuits_open")
			if lastResort != tt.wantLastResort {
				t.Errorf("last_resort decision = %v, want %v: %v", lastResort, tt.wantLastResort, h.decisions)
			}
		})
	}
}

func TestHealthOrdersPipeGroups(t *testing.T) {
	a, b, c := newUpstream(t), newUpstream(t), newUpstream(t)
	h := newFakeHealth()
	h.scores[a.URL()] = 0.6
	h.scores[b.URL()] = 0.95
	// "a|b,c": a and b may be reordered; c stays last after ','.
	h.scores[c.URL()] = 1
	e := newEnv(t, a.URL()+"|"+b.URL()+","+c.URL(), func(cfg *Config) { cfg.Health = h })
	r := e.mustGet("/example.com/hello/@v/v1.0.0.info", 200)
	if r.header.Get(headerUpstream) != b.URL() || r.header.Get(headerDecision) != "health_order" {
		t.Errorf("answered by %q (%q), want the healthier %q", r.header.Get(headerUpstream), r.header.Get(headerDecision), b.URL())
	}
	if a.Count("example.com") != 0 || c.Count("example.com") != 0 {
		t.Errorf("less healthy or later upstreams asked: a=%d c=%d", a.Count("example.com"), c.Count("example.com"))
	}
	// b failing with a 500 falls through to a (a '|' group), never past ','.
	b.SetFaults(testupstream.Fault{Status: 500})
	r = e.mustGet("/example.com/hello/@v/v1.1.0.info", 200)
	if r.header.Get(headerUpstream) != a.URL() {
		t.Errorf("after b failed answered by %q, want %q", r.header.Get(headerUpstream), a.URL())
	}
}

// The case: "A|B,C" with A slow, hedged to B. B answers 500 (where
// the go command would stop); A then fails too. C must not be asked: the
// answer is the one a sequential walk of the list gives.
func TestHedgeNeverStepsOverComma(t *testing.T) {
	a, b, c := newUpstream(t), newUpstream(t), newUpstream(t)
	a.SetFaults(testupstream.Fault{Delay: 300 * time.Millisecond, Status: 503})
	b.SetFaults(testupstream.Fault{Status: 500})
	h := newFakeHealth()
	h.hedge[a.URL()] = 10 * time.Millisecond
	e := newEnv(t, a.URL()+"|"+b.URL()+","+c.URL(), func(cfg *Config) { cfg.Health = h })
	r := e.get("/example.com/hello/@v/v1.0.0.info")
	if r.status != 502 {
		t.Errorf("status %d %q, want 502", r.status, r.body)
	}
	if b.Count("example.com/hello") != 1 || a.Count("example.com/hello") != 1 {
		t.Errorf("a asked %d, b asked %d; want one each (b as the hedge)", a.Count("example.com/hello"), b.Count("example.com/hello"))
	}
	if n := c.Count("example.com/hello"); n != 0 {
		t.Errorf("c asked %d times past the ','", n)
	}
	if !h.has(a.URL(), "hedged", "no_first_byte_by_p95") {
		t.Errorf("no hedge: %v", h.decisions)
	}
}

// A due half-open trial runs in the background: the client's request is
// answered by the next upstream without waiting on the trial, which asks
// the failing upstream for the module's list.
func TestHalfOpenTrialInBackground(t *testing.T) {
	sick, other := newUpstream(t), newUpstream(t)
	sick.SetFaults(testupstream.Fault{Delay: time.Second})
	h := newFakeHealth()
	h.closed[sick.URL()] = "circuit_open"
	h.trial[sick.URL()] = true
	e := newEnv(t, sick.URL()+"|"+other.URL(), func(c *Config) { c.Health = h })
	r := e.mustGet("/example.com/hello/@v/v1.0.0.info", 200)
	if r.header.Get(headerUpstream) != other.URL() {
		t.Errorf("answered by %q, want %q", r.header.Get(headerUpstream), other.URL())
	}
	if sick.Count("/example.com/hello/@v/v1.0.0.info") != 0 {
		t.Error("the client's request was sent to the upstream under trial")
	}
	deadline := time.Now().Add(5 * time.Second)
	for sick.Count("/example.com/hello/@v/list") == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if sick.Count("/example.com/hello/@v/list") != 1 {
		t.Errorf("trial requests: %v", sick.Requests())
	}
	if !h.has(sick.URL(), "half_open_trial", "background") {
		t.Errorf("decisions %v", h.decisions)
	}
}
