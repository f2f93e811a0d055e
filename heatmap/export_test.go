package heatmap

import (
	"math"
	"math/rand/v2"
	"sync"
	"time"
)

// FakeClock is a settable clock for Options.Now.
type FakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func NewFakeClock(t time.Time) *FakeClock { return &FakeClock{t: t} }

func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *FakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Synthetic upstream names used by FeedSynthetic.
const (
	SyntheticPrimary = "https://mirror.example.com/go"
	SyntheticBackup  = "https://backup.example.net"
)

// FeedSynthetic fills r with an hour of plausible traffic ending at end:
// a primary upstream with userspace and kernel phases and a slow-TTFB incident
// between -35m and -25m, during which requests fall through and are hedged to
// a backup upstream. The clock is left at end.
func FeedSynthetic(r *Recorder, clk *FakeClock, end time.Time) {
	rng := rand.New(rand.NewPCG(1, 2))
	// lognormal around median m with spread s (in natural-log units)
	ln := func(m time.Duration, s float64) time.Duration {
		return time.Duration(float64(m) * math.Exp(rng.NormFloat64()*s))
	}
	start := end.Add(-time.Hour)
	for t := start; !t.After(end); t = t.Add(10 * time.Second) {
		clk.Set(t)
		ago := end.Sub(t)
		incident := ago <= 35*time.Minute && ago >= 25*time.Minute
		n := 12 + rng.IntN(16)
		for range n {
			up := SyntheticPrimary
			if incident && rng.IntN(3) == 0 {
				r.ObserveDecision(SyntheticPrimary, "fallthrough", "timeout")
				r.ObserveDecision(SyntheticBackup, "chosen", "fallthrough")
				up = SyntheticBackup
			} else if incident && rng.IntN(4) == 0 {
				r.ObserveDecision(SyntheticPrimary, "hedged", "slow_ttfb")
				r.ObserveDecision(SyntheticBackup, "hedge_won", "slow_ttfb")
				up = SyntheticBackup
			} else {
				r.ObserveDecision(SyntheticPrimary, "chosen", "healthy")
			}
			kind := [...]string{"info", "mod", "zip", "list"}[rng.IntN(4)]
			if rng.IntN(8) == 0 { // new connection: DNS (mostly cached), connect, TLS
				dns := ln(150*time.Microsecond, 0.5)
				if rng.IntN(5) == 0 {
					dns = ln(3*time.Millisecond, 0.6)
				}
				r.Observe(up, kind, "dns", "userspace", dns)
				c := ln(12*time.Millisecond, 0.3)
				r.Observe(up, kind, "connect", "userspace", c)
				r.Observe(up, kind, "tls", "userspace", ln(30*time.Millisecond, 0.3))
				if up == SyntheticPrimary {
					r.Observe(up, kind, "connect", "kernel", c*9/10)
				}
			}
			ttfb := ln(45*time.Millisecond, 0.4)
			if incident && up == SyntheticPrimary {
				ttfb = ln(1500*time.Millisecond, 0.5)
			}
			r.Observe(up, kind, "ttfb", "userspace", ttfb)
			if up == SyntheticPrimary {
				r.Observe(up, kind, "ttfb", "kernel", ttfb*95/100)
			}
			tr := ln(2*time.Millisecond, 0.8)
			if kind == "zip" {
				tr = ln(300*time.Millisecond, 1.0)
			}
			r.Observe(up, kind, "transfer", "userspace", tr)
			r.Observe(up, kind, "total", "userspace", ttfb+tr)
		}
	}
	clk.Set(end)
}
