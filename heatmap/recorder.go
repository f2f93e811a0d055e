// Package heatmap keeps a short in-memory history of upstream phase latencies
// and fallback decisions and serves it as a self-contained HTML page
// (/debug/heatmap) with server-rendered SVG heatmaps: no JavaScript and no
// external assets, so it works air-gapped.
//
// Memory is bounded: a fixed ring of Window/Interval slots per series, a fixed
// set of phases, sources and decisions, at most Options.MaxUpstreams upstreams
// (an upstream idle for a whole window is evicted to make room for a new one;
// otherwise observations for new upstreams are dropped and counted).
package heatmap

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Phases in display order. "total" is recorded but shown only when asked for
// with ?phase=total.
var phases = [...]string{"dns", "connect", "tls", "ttfb", "transfer", "total"}

var phaseDescriptions = [...]string{
	"DNS lookup", "TCP connect", "TLS handshake", "time to first byte", "body transfer", "whole request",
}

const (
	numPhases   = len(phases)
	phaseTotal  = numPhases - 1
	numSources  = 2
	maxReasons  = 8 // distinct decision reasons per upstream; the rest count as "other"
	maxSlots    = 4096
	numDecision = len(decisions)
)

var sources = [numSources]string{"userspace", "kernel"}

// decisions as named by netprobe's modproxy_upstream_decisions_total; anything
// else is counted as "other".
var decisions = [...]string{"chosen", "skipped", "fallthrough", "hedged", "hedge_won", "half_open_trial", "demoted", "abandoned", "other"}

func phaseIndex(p string) int {
	switch p {
	case "dns":
		return 0
	case "connect":
		return 1
	case "tls":
		return 2
	case "ttfb":
		return 3
	case "transfer":
		return 4
	case "total":
		return 5
	}
	return -1
}

func sourceIndex(s string) int {
	switch s {
	case "userspace":
		return 0
	case "kernel":
		return 1
	}
	return -1
}

func decisionIndex(d string) int {
	switch d {
	case "chosen":
		return 0
	case "skipped":
		return 1
	case "fallthrough":
		return 2
	case "hedged":
		return 3
	case "hedge_won":
		return 4
	case "half_open_trial":
		return 5
	case "demoted":
		return 6
	case "abandoned":
		return 7
	}
	return numDecision - 1
}

// Options configure a Recorder. Zero values take the defaults.
type Options struct {
	// Interval is the width of one time column (default 10s).
	Interval time.Duration
	// Window is how much history is kept (default 1h). Window/Interval is
	// capped at 4096 slots by widening Interval.
	Window time.Duration
	// Now is the clock (default time.Now); tests pass a fake one.
	Now func() time.Time
	// MaxUpstreams bounds the number of upstreams tracked (default 16).
	MaxUpstreams int
}

// Recorder is safe for concurrent use. Observe and ObserveDecision take no
// lock in the common case: a lock is taken once per interval per series to
// recycle a ring slot, and when an upstream is seen for the first time.
type Recorder struct {
	interval     time.Duration
	slots        int
	now          func() time.Time
	maxUpstreams int

	mu        sync.Mutex                                // serialises changes to upstreams
	upstreams atomic.Pointer[map[string]*upstreamState] // copy on write

	dropped atomic.Uint64 // observations with unknown labels or beyond the upstream cap
}

type upstreamState struct {
	name     string
	lastSeen atomic.Int64 // interval number of the latest observation
	series   [numPhases][numSources]atomic.Pointer[ring]
	decided  atomic.Pointer[decisionRing]
}

// ring is one series: per slot, the interval it holds and its counters.
type ring struct {
	width  int            // counters per slot
	mu     sync.Mutex     // held while a slot is recycled, and by readers
	epochs []atomic.Int64 // interval number + 1 held by each slot; 0 = never used
	counts []atomic.Uint32
}

func newRing(slots, width int) *ring {
	return &ring{width: width, epochs: make([]atomic.Int64, slots), counts: make([]atomic.Uint32, slots*width)}
}

// add counts one event at column col of interval e. It returns false when the
// interval is already outside the ring (a straggler older than the window).
func (g *ring) add(e int64, col int) bool {
	slot := int(e % int64(len(g.epochs)))
	want := e + 1
	if have := g.epochs[slot].Load(); have != want {
		if have > want {
			return false
		}
		g.mu.Lock()
		have = g.epochs[slot].Load()
		if have > want {
			g.mu.Unlock()
			return false
		}
		if have < want {
			// Zero before publishing the new interval so that no writer that
			// sees the new interval number can have its count wiped.
			c := g.counts[slot*g.width : (slot+1)*g.width]
			for i := range c {
				c[i].Store(0)
			}
			g.epochs[slot].Store(want)
		}
		g.mu.Unlock()
	}
	g.counts[slot*g.width+col].Add(1)
	return true
}

// read copies the counters of interval e into dst (len width) and reports
// whether the ring holds that interval.
func (g *ring) read(e int64, dst []uint32) bool {
	slot := int(e % int64(len(g.epochs)))
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.epochs[slot].Load() != e+1 {
		return false
	}
	c := g.counts[slot*g.width : (slot+1)*g.width]
	for i := range c {
		dst[i] = c[i].Load()
	}
	return true
}

// decisionRing counts decisions per interval, split by reason.
type decisionRing struct {
	ring    *ring // width numDecision*(maxReasons+1)
	mu      sync.Mutex
	reasons atomic.Pointer[[]string] // copy on write, at most maxReasons
}

func (d *decisionRing) reasonIndex(reason string) int {
	if p := d.reasons.Load(); p != nil {
		for i, r := range *p {
			if r == reason {
				return i
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var cur []string
	if p := d.reasons.Load(); p != nil {
		cur = *p
	}
	for i, r := range cur {
		if r == reason {
			return i
		}
	}
	if len(cur) >= maxReasons {
		return maxReasons // "other"
	}
	next := append(append(make([]string, 0, len(cur)+1), cur...), reason)
	d.reasons.Store(&next)
	return len(next) - 1
}

// NewRecorder returns an empty Recorder.
func NewRecorder(opts Options) *Recorder {
	if opts.Interval <= 0 {
		opts.Interval = 10 * time.Second
	}
	if opts.Window <= 0 {
		opts.Window = time.Hour
	}
	if opts.Window < opts.Interval {
		opts.Window = opts.Interval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxUpstreams <= 0 {
		opts.MaxUpstreams = 16
	}
	slots := int((opts.Window + opts.Interval - 1) / opts.Interval)
	if slots > maxSlots {
		opts.Interval = (opts.Window + maxSlots - 1) / maxSlots
		slots = int((opts.Window + opts.Interval - 1) / opts.Interval)
	}
	r := &Recorder{interval: opts.Interval, slots: slots, now: opts.Now, maxUpstreams: opts.MaxUpstreams}
	empty := map[string]*upstreamState{}
	r.upstreams.Store(&empty)
	return r
}

// Interval returns the width of one time column.
func (r *Recorder) Interval() time.Duration { return r.interval }

// Window returns how much history the Recorder keeps.
func (r *Recorder) Window() time.Duration { return time.Duration(r.slots) * r.interval }

// Dropped returns how many observations were discarded: unknown phase or
// source, upstreams beyond MaxUpstreams, or stragglers older than the window.
func (r *Recorder) Dropped() uint64 { return r.dropped.Load() }

func (r *Recorder) epoch(t time.Time) int64 {
	n := t.UnixNano()
	if n < 0 {
		n = 0
	}
	return n / int64(r.interval)
}

// Observe records one phase duration of an upstream request. kind is accepted
// for symmetry with netprobe's observer hook (the page does not split by
// kind). Unknown phases or sources are dropped. It does not allocate.
func (r *Recorder) Observe(upstream, kind, phase, source string, d time.Duration) {
	p, s := phaseIndex(phase), sourceIndex(source)
	if p < 0 || s < 0 {
		r.dropped.Add(1)
		return
	}
	e := r.epoch(r.now())
	u := r.upstream(upstream, e)
	if u == nil {
		r.dropped.Add(1)
		return
	}
	g := u.series[p][s].Load()
	if g == nil {
		g = newRing(r.slots, NumBuckets)
		if !u.series[p][s].CompareAndSwap(nil, g) {
			g = u.series[p][s].Load()
		}
	}
	if d < 0 {
		d = 0
	}
	if !g.add(e, bucketIndex(d)) {
		r.dropped.Add(1)
	}
}

// ObserveDecision records one upstream selection decision (netprobe's and
// proxy's modproxy_upstream_decisions_total labels). Unknown decisions are
// shown as "other"; beyond 8 distinct reasons per upstream, reasons are
// shown as "other".
func (r *Recorder) ObserveDecision(upstream, decision, reason string) {
	e := r.epoch(r.now())
	u := r.upstream(upstream, e)
	if u == nil {
		r.dropped.Add(1)
		return
	}
	d := u.decided.Load()
	if d == nil {
		d = &decisionRing{ring: newRing(r.slots, numDecision*(maxReasons+1))}
		if !u.decided.CompareAndSwap(nil, d) {
			d = u.decided.Load()
		}
	}
	col := decisionIndex(decision)*(maxReasons+1) + d.reasonIndex(reason)
	if !d.ring.add(e, col) {
		r.dropped.Add(1)
	}
}

// upstream returns the state of name, creating it if there is room. It
// returns nil when MaxUpstreams upstreams are active.
func (r *Recorder) upstream(name string, e int64) *upstreamState {
	if u := (*r.upstreams.Load())[name]; u != nil {
		if u.lastSeen.Load() != e {
			u.lastSeen.Store(e)
		}
		return u
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := *r.upstreams.Load()
	if u := cur[name]; u != nil {
		return u
	}
	next := make(map[string]*upstreamState, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	if len(next) >= r.maxUpstreams {
		// Evict the upstream idle the longest, if idle for a whole window.
		var victim string
		oldest := e - int64(r.slots)
		for k, v := range next {
			if ls := v.lastSeen.Load(); ls <= oldest {
				oldest, victim = ls, k
			}
		}
		if victim == "" {
			return nil
		}
		delete(next, victim)
	}
	u := &upstreamState{name: name}
	u.lastSeen.Store(e)
	next[name] = u
	r.upstreams.Store(&next)
	return u
}

// Upstreams returns the names of the upstreams tracked, sorted.
func (r *Recorder) Upstreams() []string {
	m := *r.upstreams.Load()
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// seriesData is a snapshot of one series over a window: Counts[col][bucket].
type seriesData struct {
	Phase, Source string
	Counts        [][NumBuckets]uint32
	Total         uint64
	Max           uint32
	ByBucket      [NumBuckets]uint64
}

type decisionData struct {
	Counts  [][numDecision]uint32 // per column
	Reasons [][numDecision][maxReasons + 1]uint32
	Names   []string // reason names by index; index maxReasons is "other"
	Totals  [numDecision]uint64
	Max     uint32 // largest per-column sum
}

type upstreamData struct {
	Name      string
	Series    []*seriesData // in phase order, userspace before kernel
	Decisions *decisionData // nil when no decisions in the window
	activity  uint64        // observations in the window, for ordering
}

// snapshot reads the last cols intervals ending with the one holding now.
// Columns are oldest first; the last column is the current (partial) interval.
func (r *Recorder) snapshot(now time.Time, cols int) (first int64, ups []*upstreamData) {
	if cols > r.slots {
		cols = r.slots
	}
	cur := r.epoch(now)
	first = cur - int64(cols) + 1
	var buf [NumBuckets]uint32
	dbuf := make([]uint32, numDecision*(maxReasons+1))
	for _, name := range r.Upstreams() {
		u := (*r.upstreams.Load())[name]
		if u == nil {
			continue
		}
		ud := &upstreamData{Name: name}
		for p := range numPhases {
			for s := range numSources {
				g := u.series[p][s].Load()
				if g == nil {
					continue
				}
				sd := &seriesData{Phase: phases[p], Source: sources[s], Counts: make([][NumBuckets]uint32, cols)}
				for c := range cols {
					if !g.read(first+int64(c), buf[:]) {
						continue
					}
					sd.Counts[c] = buf
					for b, n := range buf {
						sd.Total += uint64(n)
						sd.ByBucket[b] += uint64(n)
						sd.Max = max(sd.Max, n)
					}
				}
				if sd.Total > 0 {
					ud.activity += sd.Total
					ud.Series = append(ud.Series, sd)
				}
			}
		}
		if d := u.decided.Load(); d != nil {
			dd := &decisionData{Counts: make([][numDecision]uint32, cols), Reasons: make([][numDecision][maxReasons + 1]uint32, cols)}
			if p := d.reasons.Load(); p != nil {
				dd.Names = *p
			}
			var any bool
			for c := range cols {
				if !d.ring.read(first+int64(c), dbuf) {
					continue
				}
				var sum uint32
				for k := range numDecision {
					for j := range maxReasons + 1 {
						n := dbuf[k*(maxReasons+1)+j]
						dd.Reasons[c][k][j] = n
						dd.Counts[c][k] += n
						dd.Totals[k] += uint64(n)
						sum += n
					}
				}
				if sum > 0 {
					any = true
				}
				dd.Max = max(dd.Max, sum)
			}
			if any {
				for _, n := range dd.Totals {
					ud.activity += n
				}
				ud.Decisions = dd
			}
		}
		if len(ud.Series) > 0 || ud.Decisions != nil {
			ups = append(ups, ud)
		}
	}
	// Busiest upstream first: usually the primary.
	sort.SliceStable(ups, func(i, j int) bool { return ups[i].activity > ups[j].activity })
	return first, ups
}
