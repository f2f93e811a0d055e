package netprobe

import (
	"slices"
	"sync"
	"time"
)

// phaseStats keeps, per (upstream, phase, source), a ring of the most
// recent durations for the debug page's percentiles. Prometheus has the
// full histograms; this is a small in-memory view.
type phaseStats struct {
	mu    sync.Mutex
	rings map[phaseKey]*ring
}

type phaseKey struct{ upstream, phase, source string }

const ringSize = 512

type ring struct {
	vals  [ringSize]time.Duration
	n     int
	next  int
	total int64
}

func newPhaseStats() *phaseStats { return &phaseStats{rings: make(map[phaseKey]*ring)} }

func (s *phaseStats) observe(upstream, phase, source string, d time.Duration) {
	k := phaseKey{upstream, phase, source}
	s.mu.Lock()
	r := s.rings[k]
	if r == nil {
		r = &ring{}
		s.rings[k] = r
	}
	r.vals[r.next] = d
	r.next = (r.next + 1) % ringSize
	r.n = min(r.n+1, ringSize)
	r.total++
	s.mu.Unlock()
}

// PhaseSummary is the recent distribution of one phase of one upstream
// from one source.
type PhaseSummary struct {
	Phase  string  `json:"phase"`
	Source string  `json:"source"` // userspace or kernel
	Count  int64   `json:"count"`  // observations since start
	Recent int     `json:"recent"` // observations in the percentiles
	P50    float64 `json:"p50_seconds"`
	P99    float64 `json:"p99_seconds"`
}

// summaries returns upstream's summaries ordered by phase then source.
func (s *phaseStats) summaries(upstream string) []PhaseSummary {
	var out []PhaseSummary
	s.mu.Lock()
	for _, src := range []string{SourceUserspace, SourceKernel} {
		for _, ph := range Phases {
			r := s.rings[phaseKey{upstream, ph, src}]
			if r == nil || r.n == 0 {
				continue
			}
			v := slices.Clone(r.vals[:r.n])
			slices.Sort(v)
			out = append(out, PhaseSummary{
				Phase: ph, Source: src, Count: r.total, Recent: r.n,
				P50: quantile(v, 0.5).Seconds(), P99: quantile(v, 0.99).Seconds(),
			})
		}
	}
	s.mu.Unlock()
	order := func(p string) int { return slices.Index(Phases, p) }
	slices.SortStableFunc(out, func(a, b PhaseSummary) int { return order(a.Phase) - order(b.Phase) })
	return out
}

func (s *phaseStats) upstreams() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k := range s.rings {
		if !slices.Contains(out, k.upstream) {
			out = append(out, k.upstream)
		}
	}
	return out
}
