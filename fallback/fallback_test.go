package fallback

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeHealth scripts the breaker and hedge delays.
type fakeHealth struct {
	mu        sync.Mutex
	open      map[string]bool
	trial     map[string]bool
	score     map[string]float64
	hedge     map[string]time.Duration
	decisions []string
}

func newHealth() *fakeHealth {
	return &fakeHealth{open: map[string]bool{}, trial: map[string]bool{}, score: map[string]float64{}, hedge: map[string]time.Duration{}}
}

func (h *fakeHealth) Allow(u string) (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.trial[u] {
		return true, "half_open_trial"
	}
	if h.open[u] {
		return false, "circuit_open"
	}
	return true, "healthy"
}
func (h *fakeHealth) Score(u string) float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s, ok := h.score[u]; ok {
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
func (h *fakeHealth) RecordDecision(u, d, r string) {
	h.mu.Lock()
	h.decisions = append(h.decisions, u+" "+d+" "+r)
	h.mu.Unlock()
}
func (h *fakeHealth) has(s string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Contains(h.decisions, s)
}

var (
	errNotFound = errors.New("404")
	errServer   = errors.New("500")
	errFinal    = errors.New("final")
)

func classify(err error) Class {
	switch {
	case errors.Is(err, errNotFound):
		return Absent
	case errors.Is(err, errFinal):
		return Final
	}
	return Failed
}

// parse turns "a|b,c" into entries.
func parse(list string) []Entry {
	var out []Entry
	for list != "" {
		i := strings.IndexAny(list, ",|")
		var name string
		anyErr := false
		if i < 0 {
			name, list = list, ""
		} else {
			name, anyErr, list = list[:i], list[i] == '|', list[i+1:]
		}
		out = append(out, Entry{Name: name, AnyError: anyErr, Off: name == "off", Direct: name == "direct"})
	}
	return out
}

// behaviour of one upstream in a test: answer after delay with err (nil:
// success).
type behaviour struct {
	delay time.Duration
	err   error
}

func TestRun(t *testing.T) {
	tests := []struct {
		name   string
		list   string
		up     map[string]behaviour
		hedge  map[string]time.Duration
		open   []string
		scores map[string]float64
		want   string // upstream that answers, "" for none
		reason string
		asked  []string // upstreams sent a request, sorted
		errHas string
	}{
		{name: "first answers", list: "a,b", up: map[string]behaviour{"a": {}}, want: "a", reason: ReasonListOrder, asked: []string{"a"}},
		{name: "comma: not found goes on", list: "a,b", up: map[string]behaviour{"a": {err: errNotFound}, "b": {}}, want: "b", reason: ReasonFallback, asked: []string{"a", "b"}},
		{name: "comma: error stops", list: "a,b", up: map[string]behaviour{"a": {err: errServer}, "b": {}}, asked: []string{"a"}, errHas: "500"},
		{name: "pipe: error goes on", list: "a|b", up: map[string]behaviour{"a": {err: errServer}, "b": {}}, want: "b", reason: ReasonFallback, asked: []string{"a", "b"}},
		{name: "final stops a pipe", list: "a|b", up: map[string]behaviour{"a": {err: errFinal}, "b": {}}, asked: []string{"a"}, errHas: "final"},
		// The case: A|B,C with A slow, hedged to B; B answers 500
		// (the go command stops there), then A fails: C is never asked.
		{name: "hedge with comma: B's 500 ends the walk", list: "a|b,c",
			up:    map[string]behaviour{"a": {delay: 200 * time.Millisecond, err: errServer}, "b": {err: errServer}, "c": {}},
			hedge: map[string]time.Duration{"a": 20 * time.Millisecond}, asked: []string{"a", "b"}, errHas: "500"},
		// ... but while A may still answer, B's failure does not end it.
		{name: "hedge with comma: slow A still wins", list: "a|b,c",
			up:    map[string]behaviour{"a": {delay: 150 * time.Millisecond}, "b": {err: errServer}, "c": {}},
			hedge: map[string]time.Duration{"a": 20 * time.Millisecond}, want: "a", reason: ReasonListOrder, asked: []string{"a", "b"}},
		{name: "hedge wins", list: "a|b", up: map[string]behaviour{"a": {delay: time.Second}, "b": {}},
			hedge: map[string]time.Duration{"a": 20 * time.Millisecond}, want: "b", reason: ReasonHedgeWon, asked: []string{"a", "b"}},
		{name: "no hedge across a comma", list: "a,b", up: map[string]behaviour{"a": {delay: 100 * time.Millisecond}, "b": {}},
			hedge: map[string]time.Duration{"a": 10 * time.Millisecond}, want: "a", reason: ReasonListOrder, asked: []string{"a"}},
		{name: "no hedge onto off", list: "a|off", up: map[string]behaviour{"a": {delay: 100 * time.Millisecond}},
			hedge: map[string]time.Duration{"a": 10 * time.Millisecond}, want: "a", reason: ReasonListOrder, asked: []string{"a"}},
		{name: "no hedge onto direct", list: "a|direct", up: map[string]behaviour{"a": {delay: 100 * time.Millisecond}},
			hedge: map[string]time.Duration{"a": 10 * time.Millisecond}, want: "a", reason: ReasonListOrder, asked: []string{"a"}},
		{name: "no hedge off direct", list: "direct|a", up: map[string]behaviour{"direct": {delay: 100 * time.Millisecond, err: errNotFound}, "a": {}},
			hedge: map[string]time.Duration{"direct": 10 * time.Millisecond}, want: "a", reason: ReasonFallback, asked: []string{"a", "direct"}},
		{name: "off ends the walk", list: "a,off,b", up: map[string]behaviour{"a": {err: errNotFound}, "off": {err: errNotFound}, "b": {}}, asked: []string{"a", "off"}, errHas: "404"},
		{name: "pipe skips an open circuit", list: "a|b", open: []string{"a"}, up: map[string]behaviour{"b": {}}, want: "b", reason: ReasonFallback, asked: []string{"b"}},
		{name: "single upstream open: last resort", list: "a", open: []string{"a"}, up: map[string]behaviour{"a": {}}, want: "a", reason: ReasonLastResort, asked: []string{"a"}},
		{name: "comma behind an open circuit: last resort", list: "a,b", open: []string{"a"}, up: map[string]behaviour{"a": {}, "b": {}}, want: "a", reason: ReasonLastResort, asked: []string{"a"}},
		{name: "all open: healthiest", list: "a|b", open: []string{"a", "b"}, scores: map[string]float64{"a": 0.1, "b": 0.4}, up: map[string]behaviour{"a": {}, "b": {}}, want: "b", reason: ReasonLastResort, asked: []string{"b"}},
		{name: "last resort not found goes on", list: "a,b", open: []string{"a"}, up: map[string]behaviour{"a": {err: errNotFound}, "b": {}}, want: "b", reason: ReasonFallback, asked: []string{"a", "b"}},
		// a failed, b's circuit is open: rather than end on a prediction, b
		// is tried.
		{name: "last resort behind a failure that goes on", list: "a|b", open: []string{"b"}, up: map[string]behaviour{"a": {err: errServer}, "b": {}}, want: "b", reason: ReasonLastResort, asked: []string{"a", "b"}},
		{name: "last resort behind not found", list: "a,b", open: []string{"b"}, up: map[string]behaviour{"a": {err: errNotFound}, "b": {}}, want: "b", reason: ReasonLastResort, asked: []string{"a", "b"}},
		// A real failure that ends the walk stands.
		{name: "no last resort past a failure that ends the walk", list: "a,b", open: []string{"b"}, up: map[string]behaviour{"a": {err: errServer}, "b": {}}, asked: []string{"a"}, errHas: "500"},
		{name: "last resort failing ends the walk", list: "a|b", open: []string{"a", "b"}, up: map[string]behaviour{"a": {err: errServer}, "b": {err: errServer}}, asked: []string{"a"}, errHas: "circuit open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHealth()
			for _, u := range tt.open {
				h.open[u] = true
			}
			for u, d := range tt.hedge {
				h.hedge[u] = d
			}
			for u, s := range tt.scores {
				h.score[u] = s
			}
			var mu sync.Mutex
			var asked []string
			cfg := Config{Health: h, Hedge: true, Classify: classify}
			v, res, errs := Run(context.Background(), cfg, parse(tt.list), func(ctx context.Context, e Entry) (string, error) {
				mu.Lock()
				asked = append(asked, e.Name)
				mu.Unlock()
				b := tt.up[e.Name]
				select {
				case <-time.After(b.delay):
				case <-ctx.Done():
					return "", ctx.Err()
				}
				if b.err != nil {
					return "", fmt.Errorf("%s: %w", e.Name, b.err)
				}
				return "from " + e.Name, nil
			})
			if res.Upstream != tt.want || (tt.want != "" && (v != "from "+tt.want || res.Reason != tt.reason)) {
				t.Errorf("answer %q from %q (%s), want %q (%s); errs %v", v, res.Upstream, res.Reason, tt.want, tt.reason, errs)
			}
			mu.Lock()
			slices.Sort(asked)
			got := asked
			mu.Unlock()
			if !slices.Equal(got, tt.asked) {
				t.Errorf("asked %v, want %v", got, tt.asked)
			}
			if tt.errHas != "" && !strings.Contains(fmt.Sprint(errs), tt.errHas) {
				t.Errorf("errors %v, want one with %q", errs, tt.errHas)
			}
			if tt.reason == ReasonLastResort && !h.has(tt.want+" last_resort all_circuits_open") {
				t.Errorf("no last_resort decision: %v", h.decisions)
			}
		})
	}
}

func TestHalfOpenTrialRunsInBackground(t *testing.T) {
	h := newHealth()
	h.trial["a"] = true
	var trials []string
	cfg := Config{Health: h, Classify: classify, Trial: func(e Entry) { trials = append(trials, e.Name) }}
	var asked []string
	_, res, _ := Run(context.Background(), cfg, parse("a|b"), func(ctx context.Context, e Entry) (string, error) {
		asked = append(asked, e.Name)
		return "ok", nil
	})
	if res.Upstream != "b" || !slices.Equal(asked, []string{"b"}) || !slices.Equal(trials, []string{"a"}) {
		t.Errorf("answered by %q, asked %v, trials %v: the request must not wait on a's trial", res.Upstream, asked, trials)
	}
	if !h.has("a half_open_trial background") {
		t.Errorf("decisions %v", h.decisions)
	}
}

func TestRunWithoutHealthIsListOrder(t *testing.T) {
	_, res, errs := Run(context.Background(), Config{Classify: classify}, parse("a|b,c"), func(ctx context.Context, e Entry) (string, error) {
		if e.Name == "c" {
			return "ok", nil
		}
		return "", errNotFound
	})
	if res.Upstream != "c" || len(errs) != 0 {
		t.Errorf("res %+v errs %v", res, errs)
	}
}

func TestOrderKeepsSeparatorsAndKeywords(t *testing.T) {
	h := newHealth()
	h.score["a"], h.score["b"], h.score["c"], h.score["d"] = 0.2, 0.9, 0.5, 1
	tests := []struct{ list, want string }{
		{"a|b,c", "b|a,c"},
		{"a|b|c", "b|c|a"},
		{"a,b", "a,b"},
		{"direct|a|b", "direct|b|a"},
		{"a|off|b", "a|off|b"},
		{"a|b|direct|c|d", "b|a|direct|d|c"},
	}
	for _, tt := range tests {
		got, _ := Order(h, parse(tt.list))
		var b strings.Builder
		for i, e := range got {
			if i > 0 {
				if got[i-1].AnyError {
					b.WriteByte('|')
				} else {
					b.WriteByte(',')
				}
			}
			b.WriteString(e.Name)
		}
		if b.String() != tt.want {
			t.Errorf("Order(%q) = %q, want %q", tt.list, b.String(), tt.want)
		}
	}
}
