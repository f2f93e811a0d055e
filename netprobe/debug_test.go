package netprobe

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/modproxy/modproxy/bpf"
)

func TestDebugHandler(t *testing.T) {
	e := newEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "bad") {
			w.WriteHeader(http.StatusBadGateway)
		}
	}), "", nil)
	for range 3 {
		e.get(t, "/m/@v/list")
	}
	e.get(t, "/bad/@v/list")
	e.p.ObservePhase(e.base, "list", PhaseTTFB, SourceKernel, 2*time.Millisecond)
	e.p.Health().RecordDecision(e.base, "chosen", "healthy")

	rec := httptest.NewRecorder()
	e.p.DebugHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/upstreams?format=json", nil))
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	var snap Snapshot
	if err := json.Unmarshal(rec.Body.Bytes(), &snap); err != nil {
		t.Fatal(err)
	}
	if len(snap.Upstreams) != 1 {
		t.Fatalf("upstreams: %+v", snap.Upstreams)
	}
	u := snap.Upstreams[0]
	if u.Upstream != e.base || !u.Configured || u.Circuit != "closed" || u.Score <= 0 {
		t.Errorf("status %+v", u)
	}
	if u.Connections.New != 1 || u.Connections.Reused != 3 || u.Connections.ReuseRatio != 0.75 {
		t.Errorf("connections %+v", u.Connections)
	}
	if u.Requests[OutcomeOK] != 3 || u.Requests[OutcomeServerError] != 1 {
		t.Errorf("requests %v", u.Requests)
	}
	if len(u.Errors) != 1 || !strings.Contains(u.Errors[0].Error, "502") {
		t.Errorf("errors %+v", u.Errors)
	}
	if len(u.Decisions) != 1 || u.Decisions[0].Count != 1 {
		t.Errorf("decisions %+v", u.Decisions)
	}
	var user, kernel bool
	for _, ph := range u.Phases {
		if ph.Phase == PhaseTTFB && ph.Source == SourceUserspace && ph.Count == 4 && ph.P50 > 0 && ph.P99 >= ph.P50 {
			user = true
		}
		if ph.Phase == PhaseTTFB && ph.Source == SourceKernel && ph.P50 == 0.002 {
			kernel = true
		}
	}
	if !user || !kernel {
		t.Errorf("phases %+v", u.Phases)
	}

	rec = httptest.NewRecorder()
	e.p.DebugHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/upstreams", nil))
	page, _ := io.ReadAll(rec.Body)
	for _, want := range []string{"<table", e.base, "kernel (eBPF)", "HTTP 502", "closed"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("page lacks %q", want)
		}
	}
	for _, bad := range []string{"<script", "<link", "src="} {
		if strings.Contains(string(page), bad) {
			t.Errorf("page has external asset marker %q", bad)
		}
	}
}

// The kernel section appears with kernel evidence only, in JSON and HTML.
func TestDebugKernelEvidence(t *testing.T) {
	e := newEnv(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), "", nil)
	e.get(t, "/m/@v/list")
	snapOf := func() UpstreamStatus {
		rec := httptest.NewRecorder()
		e.p.DebugHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/upstreams?format=json", nil))
		var snap Snapshot
		if err := json.Unmarshal(rec.Body.Bytes(), &snap); err != nil {
			t.Fatal(err)
		}
		return snap.Upstreams[0]
	}
	if u := snapOf(); u.Kernel != nil {
		t.Fatalf("kernel section without eBPF: %+v", u.Kernel)
	}
	e.p.Health().kernelEvent(e.base, kFailed(1, bpf.ReasonRefused))
	u := snapOf()
	if u.Kernel == nil || u.Kernel.Reason != ReasonKernelRefused || u.Kernel.Factor >= 1 {
		t.Fatalf("kernel section %+v, want kernel_refused", u.Kernel)
	}
	rec := httptest.NewRecorder()
	e.p.DebugHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/upstreams", nil))
	if body := rec.Body.String(); !strings.Contains(body, "kernel signal") || !strings.Contains(body, ReasonKernelRefused) {
		t.Error("HTML page lacks the kernel evidence table")
	}
}
